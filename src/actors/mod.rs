//! Supervised writer and reader actors behind a small typed facade.
//!
//! [`EventStore`] is what the HTTP layer and the subscriptions see of the
//! store, one per thread ([`EventStore::on_this_thread`]) over the writer
//! lanes they share ([`Writers`]):
//! - writes: [`EventStore::append`] (waits for the batch carrying the append
//!   to commit), [`EventStore::clear`] (go-crablet's `/cleanup`) and
//!   [`EventStore::import`] (an exported log at its own positions);
//! - reads: [`EventStore::read_page`], [`EventStore::read_page_with_head`]
//!   (also answers a head position a client may append after) and
//!   [`EventStore::project`] (projector states at one head);
//! - health: [`EventStore::lanes_down`] names the writer lanes that are not
//!   running, for readiness.
//!
//! Behind the facade, writer lanes ([`writer`]) each own one pooled connection and commit what is waiting in their queue as one batch;
//! conditional appends are routed to a lane by the first key of their
//! condition, so appends that may conflict meet in one lane (and are decided
//! in order inside one batch) while disjoint ones run in parallel; appends
//! with ids and no condition by their first id, so a retry meets its original;
//! appends whose decision may scan (requirements, filtering condition items)
//! go to the decision lane, the last one. Reader actors ([`reader`]) own the
//! reader pools and run page queries and projections concurrently; each HTTP
//! worker thread gets its own reader, so a read is handed to no other actor
//! thread (the pooled connection's I/O task may still run on the worker
//! thread that opened it).
//!
//! Actix types stay in this module: the facade speaks in [`crate::dcb`] and
//! [`crate::store`] types. Every actor is supervised and catches its own
//! panics: it restarts with a fresh connection, answers what it held with
//! the error class its progress allows (503 when nothing can have been
//! written, `OutcomeUnknown` when a batch may have committed), and counts the
//! restart in `crablet_actor_restarts_total`. A client is never left waiting
//! on an actor that is gone.

pub mod reader;
pub mod writer;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::{Addr, Arbiter, Supervisor};
use tokio::sync::oneshot;

use crate::config::{ReaderSettings, WriterSettings};
use crate::dcb::projection::{Projection, ProjectorSpec};
use crate::dcb::{
    AppendOutcome, CheckedAppend, CheckedImport, ImportOutcome, OverBudget, Page, Position, Query,
};
use crate::head::Head;
use crate::metrics::Metrics;
use crate::replicas::{Route, Source, Sources};
use crate::store::{Failure, PageRows, Pool, ProjectionStates, StoreError};

pub use reader::{Reader, ReaderPools};
pub use writer::{LaneHealth, WriterLane};

/// Why the event store could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum EventStoreError {
    /// Too much waiting already; nothing was written; back off and retry.
    #[error("overloaded: too many appends waiting")]
    Overloaded,
    /// Nothing was written and a retry may succeed: the actor serving the
    /// request is restarting or gone, or a read lost its connection.
    #[error("{0}")]
    Unavailable(String),
    /// The append may or may not have been written: the actor or the
    /// connection failed after the batch carrying it was sent.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// Nothing was read or written: the request would cost more than its
    /// budget allows (the message names the budget).
    #[error("{0}")]
    OverBudget(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The batch that carried the append failed; shared by its appends.
    #[error(transparent)]
    Batch(Arc<StoreError>),
}

impl EventStoreError {
    /// The underlying store error, if any.
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            EventStoreError::Store(e) => Some(e),
            EventStoreError::Batch(e) => Some(e),
            _ => None,
        }
    }

    /// What the failed request may have written; see [`Failure`].
    pub fn failure(&self) -> Failure {
        match self {
            EventStoreError::Overloaded | EventStoreError::Unavailable(_) => Failure::Unavailable,
            EventStoreError::OutcomeUnknown(_) => Failure::OutcomeUnknown,
            EventStoreError::OverBudget(_) => Failure::Refused,
            EventStoreError::Store(e) => e.failure(),
            EventStoreError::Batch(e) => e.failure(),
        }
    }
}

/// The facade over the writer lanes and a reader actor. Cheap to clone.
#[derive(Clone)]
pub struct EventStore {
    writers: Writers,
    /// The reader of the thread this facade was made for.
    reader: Addr<Reader>,
    /// Where the reader cuts a page short (`reader.page_max_bytes`).
    page_max_bytes: usize,
}

/// The writer lanes, started once and shared by every thread's facade.
#[derive(Clone)]
pub struct Writers {
    lanes: Arc<[Addr<WriterLane>]>,
    /// Whether each lane runs, set by the lane itself.
    health: Arc<[Arc<LaneHealth>]>,
    /// Round robin for appends without a condition.
    next_lane: Arc<AtomicUsize>,
    /// The committed head, raised by the lanes and the readers.
    head: Head,
    /// `append_duration_seconds`: each append, handed over to answered.
    append_duration: prometheus::Histogram,
    /// `budget_refusals_total`, for appends over their decision budget.
    budget_refusals: prometheus::IntCounterVec,
    /// The projector states this process remembers, shared by the lanes
    /// (requirements) and the readers (projections).
    states: Arc<ProjectionStates>,
    /// Kept so the writer thread lives as long as any facade.
    _writer_thread: Arc<Arbiter>,
}

impl Writers {
    /// Starts the supervised writer lanes on a writer thread of their own.
    /// Must run inside an actix system.
    pub fn start(
        pool: Pool,
        settings: &WriterSettings,
        metrics: &Metrics,
        states: Arc<ProjectionStates>,
        head: &Head,
    ) -> Self {
        let writer_thread = Arbiter::new();
        // The configured lanes, and the decision lane after them.
        let health: Vec<Arc<LaneHealth>> = (0..=settings.lanes)
            .map(|lane| Arc::new(LaneHealth::new(lane, metrics)))
            .collect();
        let lanes: Vec<Addr<WriterLane>> = health
            .iter()
            .enumerate()
            .map(|(lane, health)| {
                let (pool, settings, metrics) = (pool.clone(), settings.clone(), metrics.clone());
                let (health, states, head) = (health.clone(), states.clone(), head.clone());
                Supervisor::start_in_arbiter(&writer_thread.handle(), move |ctx| {
                    ctx.set_mailbox_capacity(settings.mailbox_capacity);
                    WriterLane::new(lane, pool, settings, metrics, health, states, head.clone())
                })
            })
            .collect();
        metrics.writer_lanes.set(settings.lanes as i64 + 1);
        metrics
            .writer_max_batch_appends
            .set(settings.max_batch_appends as i64);
        metrics
            .writer_max_pending_appends
            .set(settings.max_pending_appends as i64);
        Writers {
            lanes: lanes.into(),
            health: health.into(),
            next_lane: Arc::new(AtomicUsize::new(0)),
            head: head.clone(),
            append_duration: metrics.append_duration_seconds.clone(),
            budget_refusals: metrics.budget_refusals_total.clone(),
            states,
            _writer_thread: Arc::new(writer_thread),
        }
    }

    /// The committed head the lanes raise.
    pub fn head(&self) -> &Head {
        &self.head
    }
}

impl EventStore {
    /// A facade for the current thread: starts a supervised reader actor here,
    /// owning (a share of) the reader pools. Must run on an actix arbiter,
    /// such as an HTTP worker thread.
    pub fn on_this_thread(
        writers: &Writers,
        sources: Sources,
        reader: &ReaderSettings,
        metrics: &Metrics,
    ) -> Self {
        let (capacity, metrics) = (reader.mailbox_capacity, metrics.clone());
        let faults = reader.faults.clone();
        let page_max_bytes = reader.page_max_bytes;
        let (states, head) = (writers.states.clone(), writers.head.clone());
        let reader = Supervisor::start(move |ctx: &mut actix::Context<Reader>| {
            ctx.set_mailbox_capacity(capacity);
            Reader::new(
                sources,
                metrics,
                faults,
                page_max_bytes,
                states,
                head.clone(),
            )
        });
        EventStore {
            writers: writers.clone(),
            reader,
            page_max_bytes,
        }
    }

    /// Appends, waiting for the batch that carries the append to commit.
    ///
    /// A requirement whose projector has no remembered state is projected
    /// first, by a reader: the full fold over the projector's history then
    /// runs on the reader pool, beside other work, and the writer lane (one
    /// batch at a time) folds only what was appended since. Nothing depends
    /// on it for correctness: if it fails, the lane computes the state itself.
    pub async fn append(&self, append: CheckedAppend) -> Result<AppendOutcome, EventStoreError> {
        let started = std::time::Instant::now();
        let states = &self.writers.states;
        let first = states
            .first_evaluations(append.requirements.iter().map(|r| &r.q))
            .await;
        // Only the first of concurrent appends on a cold projector folds its
        // history; the others find its state remembered.
        if first.is_first() && states.is_enabled() {
            let cold: Vec<ProjectorSpec> = append
                .requirements
                .iter()
                .map(|r| &r.q)
                .filter(|spec| !states.remembers(spec))
                .cloned()
                .collect();
            // On the primary: a decision never consults a replica.
            if let Err(error) = self.project_now(Arc::new(cold), Route::Primary).await {
                log::debug!("projecting a requirement's state ahead of its append: {error}");
            }
        }
        drop(first);
        let lane = self.route(&append);
        let (reply, outcome) = oneshot::channel();
        let reply = writer::Reply::new(reply);
        // try_send: the lane answers on `reply`, so there is nothing to wait
        // for on delivery (send().await would cost a second cross-thread
        // wake-up); a full mailbox is back-pressure, answered with 503.
        self.writers.lanes[lane]
            .try_send(writer::Append { append, reply })
            .map_err(|e| match e {
                actix::prelude::SendError::Full(_) => EventStoreError::Overloaded,
                actix::prelude::SendError::Closed(_) => EventStoreError::Unavailable(format!(
                    "writer lane {lane} is gone; nothing was written"
                )),
            })?;
        let answer = outcome.await;
        self.writers
            .append_duration
            .observe(started.elapsed().as_secs_f64());
        // A `Reply` answers even when dropped, so the channel closing
        // unanswered would mean a lost reply: assume the worst.
        let outcome = answer.map_err(|_| {
            EventStoreError::OutcomeUnknown("the writer lane dropped the append unanswered".into())
        })??;
        if let AppendOutcome::OverBudget { over, .. } = outcome {
            let what = match over {
                OverBudget::ConditionItem { .. } => "condition",
                OverBudget::Requirement { .. } => "requirement",
            };
            self.writers
                .budget_refusals
                .with_label_values(&[what])
                .inc();
        }
        Ok(outcome)
    }

    /// Bytes at which a page read is cut short (at least one event per
    /// page): a page that reaches them may not be the last.
    pub fn page_max_bytes(&self) -> usize {
        self.page_max_bytes
    }

    /// The writer lanes that are not running: restarting after a panic, or
    /// gone for good. Empty when every lane can take appends.
    pub fn lanes_down(&self) -> Vec<usize> {
        let writers = &self.writers;
        (0..writers.lanes.len())
            .filter(|&lane| !writers.health[lane].is_up() || !writers.lanes[lane].connected())
            .collect()
    }

    /// Reads one page of the events matching `query`, as decoded events or
    /// as the JSON a response sends (see [`PageRows`]), on a database
    /// `route` allows (see [`crate::replicas`]).
    pub async fn read_page<R: PageRows>(
        &self,
        query: Arc<Query>,
        page: Page,
        route: Route,
    ) -> Result<(R, Source), EventStoreError> {
        let read = self.send_read(query, page, false, route).await?;
        Ok((read.events, read.source))
    }

    /// The position of the last event in the store, 0 when it is empty, as
    /// the database `route` picks holds it: a backwards page of one event,
    /// read (and raising the head) like any page. What `/head` answers and
    /// where the subscription tailer starts.
    pub async fn last_position(&self, route: Route) -> Result<(Position, Source), EventStoreError> {
        let last = Page {
            after: 0,
            before: Position::MAX,
            backwards: true,
            limit: 1,
        };
        let (events, source): (Vec<crate::dcb::SequencedEvent>, _) =
            self.read_page(Arc::new(Query::all()), last, route).await?;
        Ok((events.first().map_or(0, |e| e.position), source))
    }

    /// Reads one page, with a head position no later than the page's
    /// snapshot on the database that served it (see [`crate::head`]): a
    /// client whose read matched nothing may append with `condition.after`
    /// set to it.
    pub async fn read_page_with_head<R: PageRows>(
        &self,
        query: Arc<Query>,
        page: Page,
        route: Route,
    ) -> Result<(R, Position, Source), EventStoreError> {
        let read = self.send_read(query, page, true, route).await?;
        Ok((read.events, read.head.unwrap_or(0), read.source))
    }

    async fn send_read<R: PageRows>(
        &self,
        query: Arc<Query>,
        page: Page,
        with_head: bool,
        route: Route,
    ) -> Result<reader::PageRead<R>, EventStoreError> {
        self.reader
            .send(reader::ReadPage {
                query,
                page,
                with_head,
                route,
                rows: std::marker::PhantomData,
            })
            .await
            .map_err(|_| {
                EventStoreError::Unavailable("the reader stopped before answering; retry".into())
            })?
    }

    /// Deletes every event (go-crablet's `/cleanup`; the HTTP layer allows
    /// it only when configured to), through the first writer lane (see
    /// [`writer::ClearStore`]). Positions are not reused afterwards.
    pub async fn clear(&self) -> Result<(), EventStoreError> {
        self.writers.lanes[0]
            .send(writer::ClearStore)
            .await
            .map_err(|_| {
                EventStoreError::Unavailable(
                    "the writer lane stopped before answering; retry".into(),
                )
            })?
    }

    /// Writes an exported log at its own positions (`POST /admin/import`),
    /// through the first writer lane (see [`writer::ImportLog`]); the head
    /// is raised to its last position before this answers.
    pub async fn import(&self, import: CheckedImport) -> Result<ImportOutcome, EventStoreError> {
        self.writers.lanes[0]
            .send(writer::ImportLog(import))
            .await
            .map_err(|_| {
                EventStoreError::Unavailable(
                    "the writer lane stopped before answering; retry".into(),
                )
            })?
    }

    /// Computes the states of projectors and the head they were computed
    /// at, from one snapshot.
    ///
    /// A projector with no remembered state is evaluated by one request at a
    /// time (see [`ProjectionStates::first_evaluations`]).
    pub async fn project(
        &self,
        specs: Arc<Vec<ProjectorSpec>>,
        route: Route,
    ) -> Result<(Projection, Source), EventStoreError> {
        let _first = self.writers.states.first_evaluations(specs.iter()).await;
        self.project_now(Arc::clone(&specs), route).await
    }

    /// [`Self::project`] without waiting for first evaluations.
    async fn project_now(
        &self,
        specs: Arc<Vec<ProjectorSpec>>,
        route: Route,
    ) -> Result<(Projection, Source), EventStoreError> {
        self.reader
            .send(reader::Project { specs, route })
            .await
            .map_err(|_| {
                EventStoreError::Unavailable("the reader stopped before answering; retry".into())
            })?
    }

    /// The lane of an append. One whose decision may visit many index
    /// entries (a requirement, or a condition item that filters, see
    /// [`CheckedAppend::scans_to_decide`]) goes to the decision lane, the
    /// last one, so its bounded but real cost never lengthens the batches of
    /// the others. The rest are spread over the other lanes: by the
    /// condition's first key when there is a condition, else by the first
    /// id's key when there are ids (a retry queues behind its original, in
    /// the same lane), round robin otherwise.
    fn route(&self, append: &CheckedAppend) -> usize {
        let n = self.writers.lanes.len() - 1;
        if append.scans_to_decide() {
            return n;
        }
        match append.footprint.route() {
            Some(key) => (key as u64 % n as u64) as usize,
            None => self.writers.next_lane.fetch_add(1, Ordering::Relaxed) % n,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::Settings;
    use crate::dcb::{AppendRequest, Limits, NewEvent, SequencedEvent};
    use crate::faults::{FaultPoint, Faults};
    use crate::store::{build_pool, PoolSettings};

    /// A pool whose database does not exist: every connection attempt fails.
    /// It waits for a connection as long as the defaults say.
    fn unreachable_pool(connection_timeout: Duration) -> Pool {
        let config: tokio_postgres::Config =
            "host=/nonexistent/crablet port=1 user=nobody dbname=none"
                .parse()
                .unwrap();
        build_pool(
            &config,
            &PoolSettings {
                max_size: 2,
                connection_timeout,
                statement_timeout: Duration::ZERO,
                application_name: "crablet-test".into(),
                pooler: crate::config::Pooler::None,
            },
        )
    }

    /// Both reader pools on `pool`.
    fn reader_pools(pool: Pool) -> ReaderPools {
        ReaderPools {
            plain: pool.clone(),
            costly: pool,
            costly_budget_ms: 0,
        }
    }

    fn one_event() -> CheckedAppend {
        CheckedAppend::new(
            AppendRequest {
                events: vec![NewEvent {
                    event_type: "E".into(),
                    tags: vec![],
                    data: String::new(),
                    id: None,
                    metadata: None,
                }],
                condition: None,
                require: Vec::new(),
            },
            &Limits::default(),
        )
        .unwrap()
    }

    /// A store whose lanes panic as `faults` says; no database needed for
    /// the points before a connection is taken.
    fn store_with_faults(faults: &Faults, backoff_ms: u64) -> EventStore {
        let mut settings = Settings::defaults();
        settings.writer.lanes = 2;
        settings.writer.faults = faults.clone();
        settings.writer.restart_backoff_ms = backoff_ms;
        let metrics = Metrics::new();
        let writers = Writers::start(
            unreachable_pool(Duration::from_millis(300)),
            &settings.writer,
            &metrics,
            Arc::new(ProjectionStates::new(0, &metrics)),
            &Head::new(),
        );
        EventStore::on_this_thread(
            &writers,
            Sources::primary(
                reader_pools(unreachable_pool(Duration::from_millis(300))),
                writers.head().clone(),
            ),
            &settings.reader,
            &metrics,
        )
    }

    /// Whether `ready` holds within a second.
    async fn wait_for(ready: impl FnMut() -> bool) -> bool {
        wait_within(Duration::from_secs(1), ready).await
    }

    /// Whether `ready` holds within `limit`, asked every 5 ms.
    async fn wait_within(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
        let polls = limit.as_millis() / 5;
        for _ in 0..polls {
            if ready() {
                return true;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// A store (lanes restarted after `backoff_ms`) whose lanes are all up,
    /// and the error of its next append, which panics in its lane's handler
    /// (with `also` armed too, after the lanes came up).
    async fn a_panicked_append(
        faults: &Faults,
        backoff_ms: u64,
        also: Option<FaultPoint>,
    ) -> (EventStore, EventStoreError) {
        let store = store_with_faults(faults, backoff_ms);
        assert!(wait_for(|| store.lanes_down().is_empty()).await);
        if let Some(point) = also {
            faults.arm(point, 1);
        }
        faults.arm(FaultPoint::Handle, 1);
        let error = store.append(one_event()).await.expect_err("injected panic");
        (store, error)
    }

    #[actix_rt::test]
    async fn a_lane_is_reported_down_while_it_restarts_and_up_again_after() {
        let faults = Faults::default();
        let (store, error) = a_panicked_append(&faults, 2000, None).await;
        assert!(
            matches!(error, EventStoreError::Unavailable(_)),
            "nothing was written: {error:?}"
        );
        // The client's answer is sent while the panic unwinds, just before
        // the lane marks itself down.
        assert!(
            wait_for(|| store.lanes_down().len() == 1).await,
            "the panicked lane is down"
        );
        assert!(
            wait_within(Duration::from_secs(6), || store.lanes_down().is_empty()).await,
            "and up again after the backoff"
        );
    }

    #[actix_rt::test]
    async fn a_lane_whose_supervisor_is_gone_is_reported_down_for_good() {
        let faults = Faults::default();
        // A panic in the handler makes the supervisor restart the lane, and
        // the panic armed in `restarting` escapes supervision: the lane is
        // gone for good.
        let (store, error) = a_panicked_append(&faults, 0, Some(FaultPoint::Restarting)).await;
        assert_eq!(error.failure(), Failure::Unavailable, "{error:?}");
        assert!(wait_for(|| faults.fired() == 2).await);
        let down = store.lanes_down();
        assert_eq!(down.len(), 1, "one lane gone: {down:?}");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(store.lanes_down(), down, "and it stays down");
        // Appends routed to it are answered, 503: nothing was written.
        for _ in 0..4 {
            if let Err(error) = store.append(one_event()).await {
                assert_eq!(error.failure(), Failure::Unavailable, "{error:?}");
            }
        }
    }

    #[actix_rt::test]
    async fn with_the_database_unreachable_appends_and_reads_fail_promptly() {
        let settings = Settings::defaults();
        let metrics = Metrics::new();
        let writer_pool = unreachable_pool(settings.writer.connect_timeout());
        let reader_pool = unreachable_pool(settings.reader.pool_timeout());
        let states = Arc::new(ProjectionStates::new(0, &metrics));
        let writers = Writers::start(
            writer_pool,
            &settings.writer,
            &metrics,
            states,
            &Head::new(),
        );
        let store = EventStore::on_this_thread(
            &writers,
            Sources::primary(reader_pools(reader_pool), writers.head().clone()),
            &settings.reader,
            &metrics,
        );
        let append = one_event();

        // An append waits for its batch's connection attempt, or for two when
        // it queued behind a failing batch; a read waits for one.
        let append_bound = 2 * settings.writer.connect_timeout() + Duration::from_millis(300);
        let read_bound = settings.reader.pool_timeout() + Duration::from_millis(300);
        let started = Instant::now();
        let results =
            futures_util::future::join_all((0..5).map(|_| store.append(append.clone()))).await;
        let appends_took = started.elapsed();
        for result in results {
            let error = result.expect_err("an append cannot succeed without a database");
            assert!(
                error.store_error().is_some_and(|e| e.is_unavailable()),
                "unexpected error: {error:?}"
            );
        }
        let page = Page {
            after: 0,
            before: i64::MAX,
            backwards: false,
            limit: 10,
        };
        let started = Instant::now();
        let read = store
            .read_page::<Vec<SequencedEvent>>(Arc::new(Query::all()), page, Route::Primary)
            .await;
        let read_took = started.elapsed();
        assert!(read
            .expect_err("no read without a database")
            .store_error()
            .is_some_and(|e| e.is_unavailable()));
        assert!(
            appends_took <= append_bound && read_took <= read_bound,
            "appends waited {appends_took:?} (bound {append_bound:?}), \
             the read {read_took:?} (bound {read_bound:?})"
        );
    }
}
