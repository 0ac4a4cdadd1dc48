//! Supervised writer and reader actors behind a small typed facade.
//!
//! [`EventStore`] is all the HTTP layer sees: `append` and `read_page`. Behind
//! it, writer lanes ([`writer`]) each own one pooled connection and commit
//! what is waiting in their queue as one batch; conditional appends are
//! routed to a lane by the first exclusive key of their footprint, so appends
//! that may conflict meet in one lane (and are decided in order inside one
//! batch) while disjoint ones run in parallel. Reader actors ([`reader`]) own
//! the reader pool and run page queries concurrently; each HTTP worker thread
//! gets its own reader, so a read never crosses threads on its way to the
//! database.
//!
//! Actix types stay in this module: the facade speaks in [`crate::dcb`] and
//! [`crate::store`] types. A lane that restarts fails every append it held;
//! a client is never left waiting on an actor that is gone.

pub mod reader;
pub mod writer;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::{Addr, Arbiter, Supervisor};
use tokio::sync::oneshot;

use crate::config::{ReaderSettings, WriterSettings};
use crate::dcb::{CheckedAppend, Query, SequencedEvent};
use crate::metrics::Metrics;
use crate::store::{AppendOutcome, Page, Pool, StoreError};

pub use reader::Reader;
pub use writer::WriterLane;

/// Why the event store could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum EventStoreError {
    /// Too much waiting already; the client should back off and retry.
    #[error("overloaded: too many appends waiting")]
    Overloaded,
    /// The actor serving the request stopped before answering.
    #[error("the {0} stopped before answering; retry")]
    ActorGone(&'static str),
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
}

/// The facade over the writer lanes and a reader actor. Cheap to clone.
#[derive(Clone)]
pub struct EventStore {
    writers: Writers,
    /// The reader of the thread this facade was made for.
    reader: Addr<Reader>,
}

/// The writer lanes, started once and shared by every thread's facade.
#[derive(Clone)]
pub struct Writers {
    lanes: Arc<[Addr<WriterLane>]>,
    /// Round robin for appends without a condition.
    next_lane: Arc<AtomicUsize>,
    /// `append_duration_seconds`: each append, handed over to answered.
    append_duration: prometheus::Histogram,
    /// Kept so the writer thread lives as long as any facade.
    _writer_thread: Arc<Arbiter>,
}

impl Writers {
    /// Starts the supervised writer lanes on a writer thread of their own.
    /// Must run inside an actix system.
    pub fn start(pool: Pool, settings: &WriterSettings, metrics: &Metrics) -> Self {
        let writer_thread = Arbiter::new();
        let lanes: Vec<Addr<WriterLane>> = (0..settings.lanes)
            .map(|lane| {
                let (pool, settings, metrics) = (pool.clone(), settings.clone(), metrics.clone());
                Supervisor::start_in_arbiter(&writer_thread.handle(), move |ctx| {
                    ctx.set_mailbox_capacity(settings.mailbox_capacity);
                    WriterLane::new(lane, pool, settings, metrics)
                })
            })
            .collect();
        metrics.writer_lanes.set(settings.lanes as i64);
        metrics
            .writer_max_batch_appends
            .set(settings.max_batch_appends as i64);
        metrics
            .writer_max_pending_appends
            .set(settings.max_pending_appends as i64);
        Writers {
            lanes: lanes.into(),
            next_lane: Arc::new(AtomicUsize::new(0)),
            append_duration: metrics.append_duration_seconds.clone(),
            _writer_thread: Arc::new(writer_thread),
        }
    }
}

impl EventStore {
    /// A facade for the current thread: starts a supervised reader actor here,
    /// owning (a share of) the reader pool. Must run on an actix arbiter,
    /// such as an HTTP worker thread.
    pub fn on_this_thread(
        writers: &Writers,
        reader_pool: Pool,
        reader: &ReaderSettings,
        metrics: &Metrics,
    ) -> Self {
        let (capacity, metrics) = (reader.mailbox_capacity, metrics.clone());
        let reader = Supervisor::start(move |ctx: &mut actix::Context<Reader>| {
            ctx.set_mailbox_capacity(capacity);
            Reader::new(reader_pool, metrics)
        });
        EventStore {
            writers: writers.clone(),
            reader,
        }
    }

    /// Appends, waiting for the batch that carries the append to commit.
    pub async fn append(&self, append: CheckedAppend) -> Result<AppendOutcome, EventStoreError> {
        let started = std::time::Instant::now();
        let lane = self.route(&append);
        let (reply, outcome) = oneshot::channel();
        // try_send: the lane answers on `reply`, so there is nothing to wait
        // for on delivery (send().await would cost a second cross-thread
        // wake-up); a full mailbox is back-pressure, answered with 503.
        self.writers.lanes[lane]
            .try_send(writer::Append { append, reply })
            .map_err(|e| match e {
                actix::prelude::SendError::Full(_) => EventStoreError::Overloaded,
                actix::prelude::SendError::Closed(_) => EventStoreError::ActorGone("writer"),
            })?;
        let answer = outcome.await;
        self.writers
            .append_duration
            .observe(started.elapsed().as_secs_f64());
        answer.map_err(|_| EventStoreError::ActorGone("writer"))?
    }

    /// Reads one page of the events matching `query`.
    pub async fn read_page(
        &self,
        query: Arc<Query>,
        page: Page,
    ) -> Result<Vec<SequencedEvent>, EventStoreError> {
        self.reader
            .send(reader::ReadPage { query, page })
            .await
            .map_err(|_| EventStoreError::ActorGone("reader"))?
    }

    /// The lane of an append: by its first exclusive key when it has a
    /// condition, round robin otherwise.
    fn route(&self, append: &CheckedAppend) -> usize {
        let n = self.writers.lanes.len();
        match append.footprint.exclusive_keys().next() {
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
    use crate::dcb::{AppendRequest, Limits, NewEvent};
    use crate::store::{build_pool, PoolSettings};

    /// A pool whose database does not exist: every connection attempt fails.
    fn unreachable_pool() -> Pool {
        let config: tokio_postgres::Config =
            "host=/nonexistent/crablet port=1 user=nobody dbname=none"
                .parse()
                .unwrap();
        build_pool(
            &config,
            &PoolSettings {
                max_size: 2,
                connection_timeout: Duration::from_millis(300),
                statement_timeout: Duration::ZERO,
                application_name: "crablet-test".into(),
            },
        )
    }

    #[actix_rt::test]
    async fn with_the_database_unreachable_appends_and_reads_fail_promptly() {
        let settings = Settings::defaults();
        let metrics = Metrics::new();
        let writers = Writers::start(unreachable_pool(), &settings.writer, &metrics);
        let store =
            EventStore::on_this_thread(&writers, unreachable_pool(), &settings.reader, &metrics);
        let append = CheckedAppend::new(
            AppendRequest {
                events: vec![NewEvent {
                    event_type: "E".into(),
                    tags: vec![],
                    data: String::new(),
                }],
                condition: None,
            },
            &Limits::default(),
        )
        .unwrap();

        let started = Instant::now();
        let results =
            futures_util::future::join_all((0..5).map(|_| store.append(append.clone()))).await;
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
        let read = store.read_page(Arc::new(Query::all()), page).await;
        assert!(read
            .expect_err("no read without a database")
            .store_error()
            .is_some_and(|e| e.is_unavailable()));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "clients waited {:?}",
            started.elapsed()
        );
    }
}
