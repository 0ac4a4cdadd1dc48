//! Writer lanes: group commit over one owned connection.
//!
//! A lane queues the appends it receives and, whenever no batch is in flight,
//! takes what is waiting (up to the batch limits) and commits it as one
//! transaction with [`store::append_batch`]. Batches form only from what is
//! already waiting: at low load an append is committed alone, at once; under
//! load the appends that arrive during a commit ride in the next one.
//!
//! The lane is supervised. A panic while a batch runs fails that batch's
//! appends and restarts the lane; a restart fails everything the lane held
//! (dropping a reply channel answers its client with an error) and resets
//! the lane to empty with no connection.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, Supervised,
    WrapFuture,
};
use futures_util::FutureExt;
use tokio::sync::oneshot;

use super::EventStoreError;
use crate::config::WriterSettings;
use crate::dcb::CheckedAppend;
use crate::metrics::Metrics;
use crate::store::{self, AppendOutcome, Pool, StoreError};

type Reply = oneshot::Sender<Result<AppendOutcome, EventStoreError>>;
type OwnedConnection = store::LiveConnection;

/// Append `append` and answer on `reply` once its batch has committed.
pub struct Append {
    pub append: CheckedAppend,
    /// Answered exactly once; dropped unanswered only if the lane dies.
    pub reply: Reply,
}

impl Message for Append {
    type Result = ();
}

/// An append waiting for its batch.
struct Pending {
    append: CheckedAppend,
    reply: Reply,
    /// Set when a batch that carried this append failed with a database
    /// error: it is retried in a batch of its own, so one append that the
    /// database refuses cannot fail the appends that shared its batch.
    alone: bool,
    /// When the lane queued it: its queue wait ends when its batch starts.
    enqueued: Instant,
}

pub struct WriterLane {
    /// This lane's number, the label of its metrics.
    lane: usize,
    pool: Pool,
    settings: WriterSettings,
    metrics: Metrics,
    /// The lane's own connection; taken out while a batch runs, dropped
    /// (returned to the pool, which discards it if broken) after a failure.
    connection: Option<OwnedConnection>,
    /// Appends waiting for the next batch, in arrival order.
    pending: VecDeque<Pending>,
    /// Whether a batch is running; at most one per lane.
    in_flight: bool,
    /// This lane's series of `writer_pending_appends`.
    pending_gauge: prometheus::IntGauge,
    /// This lane's series of `append_conditions_total`, accepted and
    /// rejected, resolved once so a batch does no label lookups.
    conditions: [prometheus::IntCounter; 2],
}

impl WriterLane {
    pub fn new(lane: usize, pool: Pool, settings: WriterSettings, metrics: Metrics) -> Self {
        let pending_gauge = metrics
            .writer_pending_appends
            .with_label_values(&[&lane.to_string()]);
        let conditions = ["accepted", "rejected"].map(|outcome| {
            metrics
                .append_conditions_total
                .with_label_values(&[&lane.to_string(), outcome])
        });
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
        }
    }

    fn update_pending_gauge(&self) {
        self.pending_gauge.set(self.pending.len() as i64);
    }

    /// Takes the next batch off the queue: at least one append, then more
    /// while the batch stays within every limit.
    fn take_batch(&mut self) -> Vec<Pending> {
        let (mut events, mut keys) = (0, 0);
        let mut batch = Vec::new();
        while let Some(next) = self.pending.front() {
            if !batch.is_empty() && next.alone {
                break;
            }
            let (e, k) = (next.append.len(), next.append.footprint.len());
            let fits = batch.len() < self.settings.max_batch_appends
                && events + e <= self.settings.max_batch_events
                && keys + k <= self.settings.max_batch_keys;
            if !batch.is_empty() && !fits {
                break;
            }
            events += e;
            keys += k;
            let alone = next.alone;
            batch.extend(self.pending.pop_front());
            if alone {
                break;
            }
        }
        batch
    }

    /// Starts a batch if none is running and appends are waiting.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight || self.pending.is_empty() {
            return;
        }
        let batch = self.take_batch();
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
        let work = async move {
            let started = Instant::now();
            // The lane's own connection, unless the server closed it while
            // it was idle (a PostgreSQL restart): then a fresh one.
            let mut conn = match connection.filter(|c| !c.client.is_closed()) {
                Some(conn) => conn,
                None => match store::checkout(&pool).await {
                    Ok(conn) => conn,
                    Err(e) => return (None, batch, Err(e), started),
                },
            };
            let appends: Vec<&CheckedAppend> = batch.iter().map(|p| &p.append).collect();
            let call_started = Instant::now();
            let result = store::append_batch(&mut conn, &appends).await;
            database_seconds.observe(call_started.elapsed().as_secs_f64());
            drop(appends);
            (Some(conn), batch, result, started)
        };
        let guarded = AssertUnwindSafe(work).catch_unwind();
        ctx.spawn(guarded.into_actor(self).map(|done, lane, ctx| {
            lane.in_flight = false;
            match done {
                Ok((conn, batch, result, started)) => {
                    lane.finish_batch(conn, batch, result, started);
                    lane.flush(ctx);
                }
                Err(_panic) => {
                    // The batch's reply channels were dropped while
                    // unwinding: its clients already have their error.
                    log::error!("writer lane {} panicked; restarting it", lane.lane);
                    ctx.stop();
                }
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
        match result {
            Ok(outcomes) => {
                self.connection = conn;
                self.metrics
                    .writer_batch_duration_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics
                    .writer_batch_appends
                    .observe(batch.len() as f64);
                let (mut head, mut events) = (0, 0);
                for (pending, outcome) in batch.into_iter().zip(outcomes) {
                    if pending.append.request.condition.is_some() {
                        let rejected = matches!(outcome, AppendOutcome::ConditionFailed);
                        self.conditions[usize::from(rejected)].inc();
                    }
                    match outcome {
                        AppendOutcome::Appended { last, .. } => {
                            head = head.max(last);
                            events += pending.append.len();
                            self.metrics
                                .appends_total
                                .with_label_values(&["appended"])
                                .inc();
                            self.metrics
                                .events_appended_total
                                .inc_by(pending.append.len() as u64);
                        }
                        AppendOutcome::ConditionFailed => {
                            self.metrics
                                .appends_total
                                .with_label_values(&["condition_failed"])
                                .inc();
                        }
                    }
                    // The client may have gone; nothing to do then.
                    let _ = pending.reply.send(Ok(outcome));
                }
                self.metrics.writer_batch_events.observe(events as f64);
                self.metrics.saw_position(head);
            }
            Err(error) if batch.len() > 1 && !error.is_unavailable() => {
                // Nothing of the batch was written. Retry each append alone,
                // ahead of everything that arrived since, in the same order.
                self.connection = conn.filter(|c| !c.client.is_closed());
                log::warn!(
                    "writer lane {}: batch of {} appends failed ({error}); retrying them one by one",
                    self.lane,
                    batch.len()
                );
                for mut pending in batch.into_iter().rev() {
                    pending.alone = true;
                    self.pending.push_front(pending);
                }
                self.update_pending_gauge();
            }
            Err(error) => {
                // Keep a healthy connection (a failed batch leaves it idle,
                // its transaction rolled back); drop a closed one.
                self.connection = conn.filter(|c| !c.client.is_closed());
                log::warn!(
                    "writer lane {}: batch of {} appends failed: {error}",
                    self.lane,
                    batch.len()
                );
                let error = std::sync::Arc::new(error);
                self.metrics
                    .appends_total
                    .with_label_values(&["failed"])
                    .inc_by(batch.len() as u64);
                for pending in batch {
                    let _ = pending
                        .reply
                        .send(Err(EventStoreError::Batch(error.clone())));
                }
            }
        }
    }
}

impl Actor for WriterLane {
    type Context = Context<Self>;
}

impl Supervised for WriterLane {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        // Dropping the queue answers every waiting client with an error.
        self.pending.clear();
        self.in_flight = false;
        self.connection = None;
        self.update_pending_gauge();
        self.metrics
            .actor_restarts_total
            .with_label_values(&["writer"])
            .inc();
    }
}

impl Handler<Append> for WriterLane {
    type Result = ();

    fn handle(&mut self, msg: Append, ctx: &mut Context<Self>) {
        if self.pending.len() >= self.settings.max_pending_appends {
            self.metrics
                .appends_total
                .with_label_values(&["overloaded"])
                .inc();
            let _ = msg.reply.send(Err(EventStoreError::Overloaded));
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
    }
}
