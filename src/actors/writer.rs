//! Writer lanes: group commit over one owned connection.
//!
//! A lane queues the appends it receives and, whenever no batch is in flight,
//! takes what is waiting (up to the batch limits) and commits it as one
//! transaction with [`store::append_batch`]. Batches form only from what is
//! already waiting: at low load an append is committed alone, at once; under
//! load the appends that arrive during a commit ride in the next one.
//!
//! Supervision. Everything the lane runs (its message handler, the batch
//! future, the batch's completion) runs under `catch_unwind`: a panic stops
//! the lane, and its supervisor restarts it after `writer.restart_backoff_ms`,
//! empty and without a connection (the one it held is discarded, never
//! handed out again). While stopped the lane is reported down
//! ([`LaneHealth`]). Every append is answered exactly once whatever happens,
//! because its [`Reply`] answers when dropped: 503 `Unavailable` while the
//! append cannot have reached the database, `OutcomeUnknown` once the batch
//! call that carries it was sent.
//!
//! A failed batch is answered by what the failure says was written (see
//! [`store::Failure`]): a batch the database refused is retried one append
//! at a time (nothing of it was written); a batch whose outcome is unknown
//! is never retried.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, ResponseFuture,
    Supervised, WrapFuture,
};
use futures_util::FutureExt;
use tokio::sync::oneshot;

use super::EventStoreError;
use crate::config::WriterSettings;
use crate::dcb::{CheckedAppend, CheckedImport, ImportOutcome};
use crate::faults::FaultPoint;
use crate::head::Head;
use crate::metrics::Metrics;
use crate::store::{self, AppendOutcome, Failure, Pool, ProjectionStates, StoreError};

type OwnedConnection = store::LiveConnection;

/// The answer channel of one append. Answered exactly once: explicitly, or
/// when dropped unanswered (a panic unwinding, a restart clearing the lane),
/// with the error class that the append's progress allows.
pub struct Reply {
    tx: Option<oneshot::Sender<Result<AppendOutcome, EventStoreError>>>,
    /// Set once the batch call carrying the append may have reached the
    /// database; from then on nothing but the database's answer tells
    /// whether the append was written.
    sent: bool,
}

impl Reply {
    pub fn new(tx: oneshot::Sender<Result<AppendOutcome, EventStoreError>>) -> Self {
        Reply {
            tx: Some(tx),
            sent: false,
        }
    }

    fn send(mut self, result: Result<AppendOutcome, EventStoreError>) {
        if let Some(tx) = self.tx.take() {
            // The client may have gone; nothing to do then.
            let _ = tx.send(result);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let error = if self.sent {
                EventStoreError::OutcomeUnknown(
                    "the writer lane failed after the batch carrying the append was sent".into(),
                )
            } else {
                EventStoreError::Unavailable(
                    "the writer lane restarted before the append reached the database; \
                     nothing was written; retry"
                        .into(),
                )
            };
            let _ = tx.send(Err(error));
        }
    }
}

/// Append `append` and answer on `reply` once its batch has committed.
pub struct Append {
    pub append: CheckedAppend,
    pub reply: Reply,
}

impl Message for Append {
    type Result = ();
}

/// Whether a lane is running, shared by the lane and the facade (readiness)
/// and exported as `crablet_writer_lane_up`.
pub struct LaneHealth {
    up: AtomicBool,
    gauge: prometheus::IntGauge,
}

impl LaneHealth {
    /// A lane that is down until it starts.
    pub fn new(lane: usize, metrics: &Metrics) -> Self {
        let gauge = metrics
            .writer_lane_up
            .with_label_values(&[&lane.to_string()]);
        gauge.set(0);
        LaneHealth {
            up: AtomicBool::new(false),
            gauge,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        self.gauge.set(up as i64);
    }
}

/// An append waiting for its batch.
struct Pending {
    append: CheckedAppend,
    reply: Reply,
    /// Set when a batch that carried this append was refused by the
    /// database: it is retried in a batch of its own, so one append that the
    /// database refuses cannot fail the appends that shared its batch.
    alone: bool,
    /// When the lane queued it: its queue wait ends when its batch starts.
    enqueued: Instant,
}

/// A lane's series of `append_conditions_total`: conditional appends
/// written, and refused by their condition.
struct ConditionCounters {
    accepted: prometheus::IntCounter,
    rejected: prometheus::IntCounter,
}

/// Delete every event (go-crablet's `/cleanup`); see [`store::clear()`].
///
/// A write, so a lane serves it, but beside its batches rather than in
/// them: on a connection of its own from the writer pool (the spare one),
/// in a task of its own. Its `TRUNCATE` waits for the batches in flight
/// (it locks both tables exclusively); the projector states this process
/// remembers are forgotten once it is done.
pub struct ClearStore;

impl Message for ClearStore {
    type Result = Result<(), EventStoreError>;
}

/// Write an exported log at its own positions (`POST /admin/import`); see
/// [`store::import()`].
///
/// Served as [`ClearStore`] is: beside the lane's batches, on a connection
/// of its own from the writer pool, in a task of its own. The import's locks
/// order it with the appends that could see its events, and the sequencing
/// lock with every commit. Once it committed, the committed head is raised
/// to its last position, before the caller hears of it (the subscription
/// tailer wakes, readers and lanes know it). The projector states this
/// process remembers stay valid: each is through a position already used,
/// and an import writes only beyond those.
pub struct ImportLog(pub CheckedImport);

impl Message for ImportLog {
    type Result = Result<ImportOutcome, EventStoreError>;
}

pub struct WriterLane {
    /// This lane's number, the label of its metrics.
    lane: usize,
    pool: Pool,
    settings: WriterSettings,
    metrics: Metrics,
    /// The lane's own connection; taken out while a batch runs, kept after
    /// a batch whose failure left it usable, discarded otherwise.
    connection: Option<OwnedConnection>,
    /// Appends waiting for the next batch, in arrival order.
    pending: VecDeque<Pending>,
    /// Whether a batch is running; at most one per lane.
    in_flight: bool,
    /// This lane's series of `writer_pending_appends`.
    pending_gauge: prometheus::IntGauge,
    /// This lane's series of `append_conditions_total`, resolved once so a
    /// batch does no label lookups.
    conditions: ConditionCounters,
    /// Up/down, read by the facade; cleared on a panic, on restart and when
    /// the lane is dropped (its supervisor gone for good).
    health: Arc<LaneHealth>,
    /// Set by a restart, so that `started` waits out the backoff first.
    restarted: bool,
    /// The projector states this process remembers (requirements).
    states: Arc<ProjectionStates>,
    /// The committed head, raised by every batch that appended.
    head: Head,
}

impl WriterLane {
    pub fn new(
        lane: usize,
        pool: Pool,
        settings: WriterSettings,
        metrics: Metrics,
        health: Arc<LaneHealth>,
        states: Arc<ProjectionStates>,
        head: Head,
    ) -> Self {
        let pending_gauge = metrics
            .writer_pending_appends
            .with_label_values(&[&lane.to_string()]);
        let condition_counter = |outcome: &str| {
            metrics
                .append_conditions_total
                .with_label_values(&[&lane.to_string(), outcome])
        };
        let conditions = ConditionCounters {
            accepted: condition_counter("accepted"),
            rejected: condition_counter("rejected"),
        };
        WriterLane {
            pending_gauge,
            conditions,
            lane,
            pool,
            settings,
            metrics,
            connection: None,
            pending: VecDeque::new(),
            in_flight: false,
            health,
            restarted: false,
            states,
            head,
        }
    }

    /// After a caught panic: the lane is down until its supervisor has
    /// restarted it.
    fn stop_after_panic(&mut self, ctx: &mut Context<Self>, place: &str) {
        log::error!(
            "writer lane {} panicked in {place}; restarting it",
            self.lane
        );
        self.health.set(false);
        ctx.stop();
    }

    fn update_pending_gauge(&self) {
        self.pending_gauge.set(self.pending.len() as i64);
    }

    /// Takes the next batch off the queue: at least one append, then more
    /// while the batch stays within every limit. Appends that overlap (a
    /// condition or a requirement that sees an earlier append, a reused id)
    /// share a batch: the batch function decides them in order, each
    /// against its accepted predecessors.
    fn take_batch(&mut self) -> Vec<Pending> {
        let (mut events, mut keys, mut entries) = (0, 0, 0);
        let mut batch = Vec::new();
        while let Some(next) = self.pending.front() {
            if !batch.is_empty() && next.alone {
                break;
            }
            let (e, k) = (next.append.len(), next.append.footprint.len());
            let x = next.append.index_entries();
            let fits = batch.len() < self.settings.max_batch_appends
                && events + e <= self.settings.max_batch_events
                && keys + k <= self.settings.max_batch_keys
                && entries + x <= self.settings.max_batch_index_entries;
            if !batch.is_empty() && !fits {
                break;
            }
            events += e;
            keys += k;
            entries += x;
            let alone = next.alone;
            batch.extend(self.pending.pop_front());
            if alone {
                break;
            }
        }
        self.settings.faults.hit(FaultPoint::TakeBatch);
        batch
    }

    /// Starts a batch if none is running and appends are waiting.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight || self.pending.is_empty() {
            return;
        }
        let batch = self.take_batch();
        self.settings.faults.hit(FaultPoint::Flush);
        let now = Instant::now();
        for pending in &batch {
            self.metrics
                .append_queue_wait_seconds
                .observe(now.duration_since(pending.enqueued).as_secs_f64());
        }
        self.update_pending_gauge();
        self.in_flight = true;
        let connection = self.connection.take();
        let pool = self.pool.clone();
        let database_seconds = self.metrics.writer_batch_database_seconds.clone();
        let faults = self.settings.faults.clone();
        let states = self.states.clone();
        // Read before the batch is sent: every position up to it committed
        // before the batch's snapshot.
        let known_head = self.head.known();
        let budget = self.settings.decision_budget_entries;
        let work = async move {
            let started = Instant::now();
            let mut batch = batch;
            // The lane's own connection, unless the server closed it while
            // it was idle (a PostgreSQL restart): then a fresh one.
            let mut conn = match connection.filter(|c| c.is_usable()) {
                Some(conn) => conn,
                None => match store::checkout(&pool).await {
                    Ok(conn) => conn,
                    Err(e) => return (None, batch, Err(e), started),
                },
            };
            // Until the lane takes the connection back, a panic or a restart
            // abandons it mid-batch: the pool must not hand it out again.
            conn.discard_on_return = true;
            faults.hit(FaultPoint::BeforeCall);
            for pending in &mut batch {
                pending.reply.sent = true;
            }
            let appends: Vec<&CheckedAppend> = batch.iter().map(|p| &p.append).collect();
            let call_started = Instant::now();
            let result =
                store::append_batch(&mut conn, &appends, &states, known_head, budget).await;
            database_seconds.observe(call_started.elapsed().as_secs_f64());
            drop(appends);
            faults.hit(FaultPoint::AfterCall);
            (Some(conn), batch, result, started)
        };
        // A panic in the future drops the batch while unwinding: each reply
        // answers its client as its `sent` flag says.
        let guarded = AssertUnwindSafe(work).catch_unwind();
        ctx.spawn(guarded.into_actor(self).map(|done, lane, ctx| {
            let finished = catch_unwind(AssertUnwindSafe(|| {
                lane.settings.faults.hit(FaultPoint::Map);
                lane.in_flight = false;
                let (conn, batch, result, started) = done.ok()?;
                lane.finish_batch(conn, batch, result, started);
                lane.flush(ctx);
                Some(())
            }));
            match finished {
                Ok(Some(())) => {}
                Ok(None) => lane.stop_after_panic(ctx, "a batch"),
                Err(_) => lane.stop_after_panic(ctx, "the completion of a batch"),
            }
        }));
    }

    fn finish_batch(
        &mut self,
        conn: Option<OwnedConnection>,
        batch: Vec<Pending>,
        result: Result<Vec<AppendOutcome>, StoreError>,
        started: Instant,
    ) {
        self.settings.faults.hit(FaultPoint::FinishBatch);
        let failure = result.as_ref().err().map(StoreError::failure);
        // No connection could be had: the database is unreachable.
        let unreachable = conn.is_none() && failure == Some(Failure::Unavailable);
        // Keep the connection unless it broke or its state is unknown (a
        // refused batch leaves it idle, its transaction rolled back); one
        // not kept goes back to the pool flagged, and is discarded.
        if failure != Some(Failure::OutcomeUnknown) {
            self.connection = conn.filter(|c| c.is_usable()).map(|mut c| {
                c.discard_on_return = false;
                c
            });
        }
        match result {
            Ok(outcomes) => {
                self.metrics
                    .writer_batch_duration_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics
                    .writer_batch_appends
                    .observe(batch.len() as f64);
                // The head moves before any client hears of the batch: a
                // client that reads after its append's answer gets a head
                // (and a metric) that includes it.
                let head = outcomes
                    .iter()
                    .filter_map(|outcome| match outcome {
                        AppendOutcome::Appended { last, .. } => Some(*last),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(0);
                self.head.saw(head);
                let mut events = 0;
                for (pending, outcome) in batch.into_iter().zip(outcomes) {
                    if pending.append.request.condition.is_some() {
                        match outcome {
                            AppendOutcome::Appended { .. } => self.conditions.accepted.inc(),
                            AppendOutcome::ConditionFailed => self.conditions.rejected.inc(),
                            _ => {}
                        }
                    }
                    self.metrics
                        .appends_total
                        .with_label_values(&[outcome.label()])
                        .inc();
                    if let AppendOutcome::Appended { .. } = outcome {
                        events += pending.append.len();
                        self.metrics
                            .events_appended_total
                            .inc_by(pending.append.len() as u64);
                    }
                    pending.reply.send(Ok(outcome));
                }
                self.metrics.writer_batch_events.observe(events as f64);
            }
            Err(error) if batch.len() > 1 && error.failure() == Failure::Refused => {
                // Nothing of the batch was written. Retry each append alone,
                // ahead of everything that arrived since, in the same order.
                log::warn!(
                    "writer lane {}: batch of {} appends refused ({error}); retrying them one by one",
                    self.lane,
                    batch.len()
                );
                for mut pending in batch.into_iter().rev() {
                    pending.alone = true;
                    pending.reply.sent = false;
                    self.pending.push_front(pending);
                }
                self.update_pending_gauge();
            }
            Err(error) => {
                // Unavailable: nothing written, retry later. Refused alone:
                // nothing written. Outcome unknown: possibly committed, so
                // never retried here; the client decides, with its event ids.
                let outcome = match error.failure() {
                    Failure::Unavailable => "unavailable",
                    Failure::Refused => "failed",
                    Failure::OutcomeUnknown => "outcome_unknown",
                };
                log::warn!(
                    "writer lane {}: batch of {} appends failed ({outcome}): {error}",
                    self.lane,
                    batch.len()
                );
                self.metrics
                    .appends_total
                    .with_label_values(&[outcome])
                    .inc_by(batch.len() as u64);
                let error = Arc::new(error);
                // With the database unreachable, the appends queued behind
                // this batch would each wait out another connection timeout:
                // they fail now too (none was sent), so no client waits
                // longer than one timeout; later arrivals try afresh.
                let queued = if unreachable {
                    let queued: Vec<Pending> = self.pending.drain(..).collect();
                    self.update_pending_gauge();
                    self.metrics
                        .appends_total
                        .with_label_values(&[outcome])
                        .inc_by(queued.len() as u64);
                    queued
                } else {
                    Vec::new()
                };
                for pending in batch.into_iter().chain(queued) {
                    pending
                        .reply
                        .send(Err(EventStoreError::Batch(error.clone())));
                }
            }
        }
    }
}

impl Actor for WriterLane {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if !std::mem::take(&mut self.restarted) {
            self.health.set(true);
            return;
        }
        // Restarted after a panic: stay down for the backoff, holding the
        // mailbox (appends sent meanwhile wait there), then come up.
        let backoff = self.settings.restart_backoff();
        ctx.wait(
            actix::clock::sleep(backoff)
                .into_actor(self)
                .map(|(), lane, _| lane.health.set(true)),
        );
    }
}

impl Supervised for WriterLane {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.settings.faults.hit(FaultPoint::Restarting);
        self.health.set(false);
        // The batch in flight, if any, was dropped with the context's
        // futures, answering its clients. Dropping the queue answers every
        // waiting client: 503, nothing of it was sent.
        self.pending.clear();
        self.in_flight = false;
        // Restart with a fresh connection: the held one is discarded.
        if let Some(mut conn) = self.connection.take() {
            conn.discard_on_return = true;
        }
        self.restarted = true;
        self.update_pending_gauge();
        self.metrics
            .actor_restarts_total
            .with_label_values(&["writer"])
            .inc();
    }
}

impl Drop for WriterLane {
    /// A lane dropped is gone for good (its supervisor stopped or its
    /// thread died): report it down. Its queue, dropped with it, answers
    /// every waiting client.
    fn drop(&mut self) {
        self.health.set(false);
        self.pending_gauge.set(0);
    }
}

impl Handler<Append> for WriterLane {
    type Result = ();

    fn handle(&mut self, msg: Append, ctx: &mut Context<Self>) {
        let handled = catch_unwind(AssertUnwindSafe(|| {
            self.settings.faults.hit(FaultPoint::Handle);
            if self.pending.len() >= self.settings.max_pending_appends {
                self.metrics
                    .appends_total
                    .with_label_values(&["overloaded"])
                    .inc();
                msg.reply.send(Err(EventStoreError::Overloaded));
                return;
            }
            self.pending.push_back(Pending {
                append: msg.append,
                reply: msg.reply,
                alone: false,
                enqueued: Instant::now(),
            });
            self.update_pending_gauge();
            self.flush(ctx);
        }));
        if handled.is_err() {
            self.stop_after_panic(ctx, "its handler");
        }
    }
}

impl Handler<ClearStore> for WriterLane {
    type Result = ResponseFuture<Result<(), EventStoreError>>;

    fn handle(&mut self, _: ClearStore, _ctx: &mut Context<Self>) -> Self::Result {
        let (pool, states) = (self.pool.clone(), self.states.clone());
        Box::pin(async move {
            let conn = store::checkout(&pool).await?;
            let cleared = store::clear(&conn).await.map_err(EventStoreError::Store);
            states.forget_all();
            cleared
        })
    }
}

impl Handler<ImportLog> for WriterLane {
    type Result = ResponseFuture<Result<ImportOutcome, EventStoreError>>;

    fn handle(&mut self, msg: ImportLog, _ctx: &mut Context<Self>) -> Self::Result {
        let (pool, head) = (self.pool.clone(), self.head.clone());
        let events = self.metrics.events_appended_total.clone();
        Box::pin(async move {
            let ImportLog(import) = msg;
            let conn = store::checkout(&pool).await?;
            let outcome = store::import(&conn, &import).await?;
            if let ImportOutcome::Imported { count, last } = outcome {
                head.saw(last);
                events.inc_by(count as u64);
            }
            Ok(outcome)
        })
    }
}
