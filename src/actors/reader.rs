//! Reader actors: own the reader pools and run page queries and projections.
//! They write nothing (clearing the store is a writer lane's, see
//! [`super::writer::ClearStore`]).
//!
//! Each request runs as its own task on the reader's thread, so one reader
//! serves many reads at once, bounded by the pool. A read never holds a
//! connection longer than one page query.
//!
//! Two pools, by cost ([`ReaderPools`]): work whose cost is bounded by what
//! it returns (reads whose every probe is exact, warm projections, `/head`,
//! `/health`) runs on the plain pool; work that may visit many index entries
//! for few results (reads with a probe that is not exact, projectors without
//! a remembered state) runs on the small costly pool, whose statements have
//! a time budget of their own. Cheap work never waits for a connection that
//! expensive work holds; expensive work over its budget is answered
//! [`EventStoreError::OverBudget`], and a busy costly pool 503.
//!
//! Supervision: a panic in the handler or in a read task is caught; the
//! read is answered 503 (a read writes nothing, so a retry is always safe),
//! the connection it held is discarded rather than returned to the pool, and
//! the reader is restarted and counted. A read whose connection is lost
//! mid-query is likewise `Unavailable`, never "outcome unknown".

use std::future::Future;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use actix::{
    Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message, ResponseFuture, Supervised,
};
use futures_util::FutureExt;

use super::EventStoreError;
use crate::dcb::footprint;
use crate::dcb::projection::{Projection, ProjectorSpec};
use crate::dcb::{Position, Query};
use crate::faults::{FaultPoint, Faults};
use crate::head::Head;
use crate::metrics::Metrics;
use crate::replicas::{Route, Source, Sources, Target};
use crate::store::{self, Failure, Page, PageRows, Pool, ProjectionStates, StoreError};

/// The pools a reader takes connections from; see the module's header.
#[derive(Clone)]
pub struct ReaderPools {
    pub plain: Pool,
    pub costly: Pool,
    /// The costly pool's statement timeout, for the message of a refusal.
    pub costly_budget_ms: u64,
}

impl ReaderPools {
    /// The pool a read of `query` runs on.
    fn for_read(&self, query: &Query) -> (&Pool, Cost) {
        if footprint::filters(query) {
            (&self.costly, Cost::Costly)
        } else {
            (&self.plain, Cost::Plain)
        }
    }

    /// The pool a projection runs on: costly when a projector has no
    /// remembered state (its first evaluation visits its whole history).
    fn for_projection(&self, specs: &[ProjectorSpec], states: &ProjectionStates) -> (&Pool, Cost) {
        if specs.iter().all(|spec| states.remembers(spec)) {
            (&self.plain, Cost::Plain)
        } else {
            (&self.costly, Cost::Costly)
        }
    }

    /// What a failed statement of `what` on a pool of `cost` means for the
    /// client: a lost connection is only a failure (nothing is written by a
    /// reader); a costly statement past its time budget is over budget; a
    /// costly pool with no free connection is busy.
    fn failure(&self, what: &str, cost: Cost, e: StoreError, metrics: &Metrics) -> EventStoreError {
        if cost == Cost::Costly && e.is_statement_timeout() {
            metrics
                .budget_refusals_total
                .with_label_values(&[what])
                .inc();
        }
        match (e.failure(), cost) {
            (Failure::OutcomeUnknown, _) => {
                EventStoreError::Unavailable(format!("the {what} failed: {e}; retry"))
            }
            (_, Cost::Costly) if e.is_statement_timeout() => EventStoreError::OverBudget(format!(
                "the {what} ran past its budget of {} ms (reader.costly_statement_timeout_ms); \
                 narrow its query (a rarer tag, fewer items) or project fewer events",
                self.costly_budget_ms
            )),
            (_, Cost::Costly) if matches!(e, StoreError::Unavailable(_)) => {
                EventStoreError::Unavailable(format!(
                    "every connection for costly reads and projections is busy; retry ({e})"
                ))
            }
            _ => EventStoreError::Store(e),
        }
    }
}

/// Which pool a request runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cost {
    Plain,
    Costly,
}

/// Read one page of the events matching `query`, into `R`: decoded events
/// or the JSON of a response (see [`PageRows`]).
pub struct ReadPage<R> {
    /// Shared between the pages of one streamed read.
    pub query: Arc<Query>,
    pub page: Page,
    /// Also answer a head position no later than the page's snapshot (the
    /// first page of a read does, for the `X-Crablet-Head` header).
    pub with_head: bool,
    /// Which databases may serve it (see [`crate::replicas`]).
    pub route: Route,
    pub rows: PhantomData<R>,
}

/// A page, with its head position when it was asked for, and the database
/// that served it.
pub struct PageRead<R> {
    pub events: R,
    pub head: Option<Position>,
    pub source: Source,
}

impl<R: PageRows> Message for ReadPage<R> {
    type Result = Result<PageRead<R>, EventStoreError>;
}

/// Compute the states of projectors, and the head they were computed at.
pub struct Project {
    pub specs: Arc<Vec<ProjectorSpec>>,
    pub route: Route,
}

impl Message for Project {
    type Result = Result<(Projection, Source), EventStoreError>;
}

/// Sent by a read task that panicked: restart the reader.
struct Restart;

impl Message for Restart {
    type Result = ();
}

pub struct Reader {
    /// The primary's pools and the replicas'.
    sources: Sources,
    metrics: Metrics,
    /// Where a page is cut short (`reader.page_max_bytes`).
    page_max_bytes: usize,
    /// Test-only panics; inert unless a test arms them.
    faults: Faults,
    /// The projector states this process remembers (projections).
    states: Arc<ProjectionStates>,
    /// The committed head: raised by what a read or projection sees, on
    /// any source (a replica holds a prefix of the primary's log).
    head: Head,
}

impl Reader {
    pub fn new(
        sources: Sources,
        metrics: Metrics,
        faults: Faults,
        page_max_bytes: usize,
        states: Arc<ProjectionStates>,
        head: Head,
    ) -> Self {
        Reader {
            sources,
            metrics,
            page_max_bytes,
            faults,
            states,
            head,
        }
    }
}

fn restarted() -> EventStoreError {
    EventStoreError::Unavailable("the reader failed and restarts; retry".into())
}

/// Runs the task of one read or projection (`what`): a panic in it restarts
/// `reader` and answers 503 (a reader writes nothing, so a retry is safe).
fn supervised<T: 'static>(
    what: &'static str,
    reader: Addr<Reader>,
    work: impl Future<Output = Result<T, EventStoreError>> + 'static,
) -> ResponseFuture<Result<T, EventStoreError>> {
    Box::pin(async move {
        match AssertUnwindSafe(work).catch_unwind().await {
            Ok(result) => result,
            Err(_) => {
                log::error!("a {what} panicked; restarting its reader");
                reader.do_send(Restart);
                Err(restarted())
            }
        }
    })
}

impl Actor for Reader {
    type Context = Context<Self>;
}

impl Supervised for Reader {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        // Reads in flight are tasks of their own; they finish or fail on
        // their own and their callers get an answer either way.
        self.metrics
            .actor_restarts_total
            .with_label_values(&["reader"])
            .inc();
    }
}

impl Handler<Restart> for Reader {
    type Result = ();

    fn handle(&mut self, _: Restart, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl<R: PageRows> Handler<ReadPage<R>> for Reader {
    type Result = ResponseFuture<Result<PageRead<R>, EventStoreError>>;

    fn handle(&mut self, msg: ReadPage<R>, ctx: &mut Context<Self>) -> Self::Result {
        let taken = catch_unwind(AssertUnwindSafe(|| {
            self.faults.hit(FaultPoint::ReaderHandle);
            (
                self.sources.clone(),
                self.metrics.clone(),
                self.faults.clone(),
            )
        }));
        let Ok((sources, metrics, faults)) = taken else {
            log::error!("a reader panicked in its handler; restarting it");
            ctx.stop();
            return Box::pin(async { Err(restarted()) });
        };
        let reader = ctx.address();
        let page_max_bytes = self.page_max_bytes;
        let head = self.head.clone();
        let work = async move {
            let (msg, faults) = (&msg, &faults);
            let (target, read) = sources
                .serve(msg.route, |target| async move {
                    read_on::<R>(&target, msg, page_max_bytes, faults).await
                })
                .await;
            let (events, known_head) = read.map_err(|e| {
                target
                    .pools
                    .failure("read", target.cost(&msg.query), e, &metrics)
            })?;
            metrics.read_pages_total.inc();
            metrics.read_events_total.inc_by(events.count() as u64);
            // Pages are in position order, one way or the other: the greatest
            // position read is the first or the last.
            let read_up_to = events
                .first_position()
                .max(events.last_position())
                .unwrap_or(0);
            // Committed on the primary, whatever served it.
            head.saw(read_up_to);
            target.head.saw(read_up_to);
            // What the page read is committed and in its snapshot too.
            let head = known_head.map(|known| known.max(read_up_to));
            Ok(PageRead {
                events,
                head,
                source: target.source,
            })
        };
        supervised("read", reader, work)
    }
}

/// One page read on `target`, with the head of `target` known before the
/// statement was sent when the message asks for one: no later than the
/// statement's snapshot (see `crate::head`).
async fn read_on<R: PageRows>(
    target: &Target,
    msg: &ReadPage<R>,
    page_max_bytes: usize,
    faults: &Faults,
) -> Result<(R, Option<Position>), StoreError> {
    let (pool, _) = target.pools.for_read(&msg.query);
    let mut conn = store::checkout(pool).await?;
    // Discarded, not pooled, if the read is abandoned by a panic.
    conn.discard_on_return = true;
    faults.hit(FaultPoint::Read);
    let known_head = msg.with_head.then(|| target.head.known());
    let result = store::read_page::<R>(&conn, &msg.query, &msg.page, page_max_bytes).await;
    // A connection that answered a misordered page is not reused.
    conn.discard_on_return = matches!(result, Err(StoreError::Misordered { .. }));
    Ok((result?, known_head))
}

impl Target {
    /// The cost class of a read of `query` on this target's pools.
    fn cost(&self, query: &crate::dcb::Query) -> Cost {
        self.pools.for_read(query).1
    }
}

impl Handler<Project> for Reader {
    type Result = ResponseFuture<Result<(Projection, Source), EventStoreError>>;

    /// Like a page read: one statement on a pooled connection, in a task of
    /// its own; a panic restarts the reader and answers 503.
    fn handle(&mut self, msg: Project, ctx: &mut Context<Self>) -> Self::Result {
        let (sources, metrics) = (self.sources.clone(), self.metrics.clone());
        let (states, head) = (self.states.clone(), self.head.clone());
        let reader = ctx.address();
        let work = async move {
            // The cost class as it was before the projection remembered anything.
            let (_, cost) = sources.primary.for_projection(&msg.specs, &states);
            let (specs, states_ref) = (&msg.specs, &states);
            let (target, result) = sources
                .serve(msg.route, |target| async move {
                    project_on(&target, specs, states_ref).await
                })
                .await;
            let projection =
                result.map_err(|e| target.pools.failure("projection", cost, e, &metrics))?;
            head.saw(projection.position);
            target.head.saw(projection.position);
            Ok((projection, target.source))
        };
        supervised("projection", reader, work)
    }
}

/// A projection on `target`'s pools.
async fn project_on(
    target: &Target,
    specs: &[ProjectorSpec],
    states: &ProjectionStates,
) -> Result<Projection, StoreError> {
    let (pool, _) = target.pools.for_projection(specs, states);
    let mut conn = store::checkout(pool).await?;
    conn.discard_on_return = true;
    let result = store::project(&conn, specs, states).await;
    conn.discard_on_return = false;
    result
}
