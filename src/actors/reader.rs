//! Reader actors: own the reader pool and run page queries.
//!
//! Each request runs as its own task on the reader's thread, so one reader
//! serves many reads at once, bounded by the pool. A read never holds a
//! connection longer than one page query.

use std::sync::Arc;

use actix::{Actor, Context, Handler, Message, ResponseFuture, Supervised};

use super::EventStoreError;
use crate::dcb::{Query, SequencedEvent};
use crate::metrics::Metrics;
use crate::store::{self, Page, Pool};

/// Read one page of the events matching `query`.
pub struct ReadPage {
    /// Shared between the pages of one streamed read.
    pub query: Arc<Query>,
    pub page: Page,
}

impl Message for ReadPage {
    type Result = Result<Vec<SequencedEvent>, EventStoreError>;
}

pub struct Reader {
    pool: Pool,
    metrics: Metrics,
}

impl Reader {
    pub fn new(pool: Pool, metrics: Metrics) -> Self {
        Reader { pool, metrics }
    }
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

impl Handler<ReadPage> for Reader {
    type Result = ResponseFuture<Result<Vec<SequencedEvent>, EventStoreError>>;

    fn handle(&mut self, msg: ReadPage, _ctx: &mut Context<Self>) -> Self::Result {
        let pool = self.pool.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let conn = store::checkout(&pool).await?;
            let events = store::read_page(&conn, &msg.query, &msg.page).await?;
            metrics.read_pages_total.inc();
            metrics.read_events_total.inc_by(events.len() as u64);
            // Pages are in position order, one way or the other.
            if let (Some(first), Some(last)) = (events.first(), events.last()) {
                metrics.saw_position(first.position.max(last.position));
            }
            Ok(events)
        })
    }
}
