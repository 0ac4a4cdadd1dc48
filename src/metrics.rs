//! Every Prometheus metric crablet exports, with its help text and buckets.
//!
//! One [`Metrics`] value is built by [`crate::app`] and passed down to the
//! HTTP layer and the actors; nothing registers metrics anywhere else and
//! there is no global registry. Labels are route templates, outcomes, pool
//! names and lane numbers, never tags or positions.
//!
//! crablet's own metrics carry the `crablet_` prefix; the standard process
//! metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...)
//! keep their usual names, from a second registry gathered with the first.
//! Values that are cheap to read but costly to track on every request (pool
//! usage, the head position) are sampled when `/metrics` renders.

use std::sync::{Arc, Mutex, OnceLock};

use crate::head::Head;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds, 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// Appends per batch.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Subscriber lag, in positions.
const LAG_BUCKETS: &[f64] = &[
    0.0,
    1.0,
    10.0,
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
];

/// Events per batch (up to `writer.max_batch_events`, 4,096 by default).
const BATCH_EVENTS_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// What a connection pool reports at scrape time; filled by whoever owns the
/// pool (see [`Metrics::watch_pool`]), so this module needs no pool type.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolSample {
    /// Largest number of connections the pool opens.
    pub max_size: u32,
    /// Connections open, idle or in use.
    pub connections: u32,
    /// Open connections nobody holds.
    pub idle: u32,
    /// Callers waiting for a connection right now.
    pub waiting: u64,
    /// Callers that gave up waiting (their request failed with 503), ever.
    pub timed_out: u64,
}

/// Samples one pool; called on every render of `/metrics`.
type PoolSampler = Box<dyn Fn() -> PoolSample + Send + Sync>;

/// Every metric handle, shared: cloning [`Metrics`] (once per request in the
/// middleware, once per read page in a reader) costs one reference count,
/// not one per metric.
#[derive(Clone)]
pub struct Metrics(Arc<MetricHandles>);

impl std::ops::Deref for Metrics {
    type Target = MetricHandles;
    fn deref(&self) -> &MetricHandles {
        &self.0
    }
}

pub struct MetricHandles {
    registry: Registry,
    /// HTTP requests by route template, method and status code.
    pub http_requests_total: IntCounterVec,
    /// HTTP request latency by route template, until the response head.
    pub http_request_duration_seconds: HistogramVec,
    /// Appends by outcome: appended, condition_failed, requirement_failed,
    /// duplicate, id_conflict, overloaded, unavailable (nothing written),
    /// outcome_unknown, failed (refused).
    pub appends_total: IntCounterVec,
    /// Events written.
    pub events_appended_total: IntCounter,
    /// Appends committed together in one writer transaction.
    pub writer_batch_appends: Histogram,
    /// Time from starting a writer batch to the database's answer: the
    /// connection checkout when the lane needs a new one, then the batch
    /// call, which returns after the commit.
    pub writer_batch_duration_seconds: Histogram,
    /// Appends waiting in each writer lane.
    pub writer_pending_appends: IntGaugeVec,
    /// Configured writer lanes and batch limit, for dashboards.
    pub writer_lanes: IntGauge,
    pub writer_max_batch_appends: IntGauge,
    /// Configured cap on a lane's queue, so alerts can compare depth to it.
    pub writer_max_pending_appends: IntGauge,
    /// Actor restarts by actor kind (writer, reader); both series exist
    /// from start-up, at 0.
    pub actor_restarts_total: IntCounterVec,
    /// Requests refused for going over a cost budget, by what went over:
    /// an append's `condition` or `requirement` (decision budget), a costly
    /// `read` or `projection` (time budget); every series from start-up.
    pub budget_refusals_total: IntCounterVec,
    /// 1 while a writer lane runs, 0 while it is restarting or gone.
    pub writer_lane_up: IntGaugeVec,
    /// Events returned by reads.
    pub read_events_total: IntCounter,
    /// Queries run by reads (a long read runs one per page).
    pub read_pages_total: IntCounter,
    /// Open subscriptions (GET/POST /subscribe), live or catching up.
    pub subscriptions_active: IntGauge,
    /// Events sent to subscribers.
    pub subscription_events_delivered_total: IntCounter,
    /// How far behind the tailer's head a subscriber is when it is sent a
    /// chunk of events, in positions.
    pub subscription_lag_events: Histogram,
    /// Subscribers detached from the live feed because their buffer was full,
    /// in events or in bytes (they catch up from the store on their own).
    pub subscription_detached_total: IntCounter,
    /// Bytes of events waiting in the live buffers of all subscribers (an
    /// event buffered for several subscribers counts once for each).
    pub subscription_buffered_bytes: IntGauge,
    /// Subscriptions ended by crablet, by reason: shutdown, lagging, unavailable.
    pub subscription_ended_total: IntCounterVec,
    /// Store queries the tailer ran (one per poll and per page of new events).
    pub subscription_tailer_reads_total: IntCounter,

    /// `crablet_build_info{version}`, always 1: which build runs.
    pub build_info: IntGaugeVec,
    /// A whole append as the facade sees it: handed to its lane until answered.
    pub append_duration_seconds: Histogram,
    /// Time an append waits in its lane's queue before its batch starts.
    pub append_queue_wait_seconds: Histogram,
    /// The batch call alone (locks, checks, inserts, commit): database time.
    pub writer_batch_database_seconds: Histogram,
    /// Events committed together in one writer transaction.
    pub writer_batch_events: Histogram,
    /// Decided conditional appends by lane and outcome (accepted, rejected).
    pub append_conditions_total: IntCounterVec,
    /// Remembered projector states looked up (hit, miss) and dropped
    /// (evicted) (see `store::states`).
    pub projection_states_total: IntCounterVec,
    /// Pool connections by pool and state (in_use, idle), set at render.
    pub pool_connections: IntGaugeVec,
    /// Configured pool sizes, set at render.
    pub pool_max_connections: IntGaugeVec,
    /// Callers waiting for a pooled connection, set at render.
    pub pool_waiting: IntGaugeVec,
    /// Waits for a pooled connection that timed out, set at render from the
    /// pool's own count (an IntGaugeVec exported as a counter would lie
    /// about its type, hence a counter advanced by the difference).
    pub pool_wait_timeouts_total: IntCounterVec,
    /// The highest position this process has written or read; a gauge set
    /// at render from the process's [`Head`] (see [`Metrics::watch_head`]).
    pub head_position: IntGauge,
    /// 1 while a replica is in rotation, 0 while it is out (down, lagging,
    /// or not a standby of the primary), by replica (`host:port`).
    pub replica_up: IntGaugeVec,
    /// How far a replica is behind the primary, in positions and in seconds
    /// (how long ago the primary first held an event the replica has not
    /// replayed), by replica; set by its checks.
    pub replica_lag_positions: IntGaugeVec,
    pub replica_lag_seconds: GaugeVec,
    /// Requests served by a replica, by replica.
    pub replica_requests_total: IntCounterVec,
    /// Requests that could go to a replica but were served by the primary,
    /// by reason: down, lagging (no replica in rotation), min_position (no
    /// replica replayed through it in time), failed (the replica failed the
    /// request, which the primary then served).
    pub replica_fallbacks_total: IntCounterVec,
    head: Arc<OnceLock<Head>>,
    /// The pools sampled at render.
    pools: Arc<Mutex<Vec<(&'static str, PoolSampler)>>>,
    /// The standard process metrics, without the `crablet_` prefix.
    process_registry: Registry,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("crablet".into()), None).expect("valid prefix");
        let http_requests_total = counter_vec(
            "http_requests_total",
            "HTTP requests by route, method and status",
            &["route", "method", "status"],
        );
        let http_request_duration_seconds = histogram_vec(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            LATENCY_BUCKETS,
            &["route"],
        );
        let appends_total = counter_vec("appends_total", "Appends by outcome", &["outcome"]);
        let events_appended_total = counter("events_appended_total", "Events written");
        let writer_batch_appends = histogram(
            "writer_batch_appends",
            "Appends committed in one transaction",
            BATCH_SIZE_BUCKETS,
        );
        let writer_batch_duration_seconds = histogram(
            "writer_batch_duration_seconds",
            "Time of one writer batch, from its start (connection checkout included) to the answer after its commit",
            LATENCY_BUCKETS,
        );
        let writer_pending_appends = gauge_vec(
            "writer_pending_appends",
            "Appends waiting in a writer lane",
            &["lane"],
        );
        let writer_lanes = gauge(
            "writer_lanes",
            "Writer lanes (the configured ones and the decision lane)",
        );
        let writer_max_batch_appends = gauge(
            "writer_max_batch_appends",
            "Configured maximum appends per batch",
        );
        let writer_max_pending_appends = gauge(
            "writer_max_pending_appends",
            "Configured maximum appends waiting in one lane before 503",
        );
        let actor_restarts_total = counter_vec(
            "actor_restarts_total",
            "Supervised actor restarts by actor",
            &["actor"],
        );
        let budget_refusals_total = counter_vec(
            "budget_refusals_total",
            "Requests refused for going over a cost budget, by what went over",
            &["what"],
        );
        for what in ["condition", "requirement", "read", "projection"] {
            budget_refusals_total.with_label_values(&[what]);
        }
        let writer_lane_up = gauge_vec(
            "writer_lane_up",
            "1 while a writer lane runs, 0 while it restarts or is gone",
            &["lane"],
        );
        // A labelled series is exported only once touched: make both kinds
        // show 0 restarts from start-up.
        for actor in ["writer", "reader"] {
            actor_restarts_total.with_label_values(&[actor]);
        }
        let read_events_total = counter("read_events_total", "Events returned by reads");
        let read_pages_total = counter("read_pages_total", "Queries run by reads");

        let subscriptions_active = gauge("subscriptions_active", "Open subscriptions");
        let subscription_events_delivered_total = counter(
            "subscription_events_delivered_total",
            "Events sent to subscribers",
        );
        let subscription_lag_events = histogram(
            "subscription_lag_events",
            "Positions between the head and a subscriber when it is sent events",
            LAG_BUCKETS,
        );
        let subscription_detached_total = counter(
            "subscription_detached_total",
            "Subscribers detached from the live feed with a full buffer",
        );
        let subscription_buffered_bytes = gauge(
            "subscription_buffered_bytes",
            "Bytes of events waiting in the live buffers of subscribers",
        );
        let subscription_ended_total = counter_vec(
            "subscription_ended_total",
            "Subscriptions ended by crablet, by reason",
            &["reason"],
        );
        // Exported at 0 from start-up, like the restart counters.
        for reason in ["shutdown", "lagging", "unavailable"] {
            subscription_ended_total.with_label_values(&[reason]);
        }
        let subscription_tailer_reads_total = counter(
            "subscription_tailer_reads_total",
            "Store queries run by the subscription tailer",
        );
        let build_info = gauge_vec(
            "build_info",
            "Always 1; the version label names the build",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let append_duration_seconds = histogram(
            "append_duration_seconds",
            "Whole append, from handing it to its writer lane to its answer",
            LATENCY_BUCKETS,
        );
        let append_queue_wait_seconds = histogram(
            "append_queue_wait_seconds",
            "Time an append waits in its lane's queue until its batch starts",
            LATENCY_BUCKETS,
        );
        let writer_batch_database_seconds = histogram(
            "writer_batch_database_seconds",
            "Database time of one writer batch: the batch call, commit included",
            LATENCY_BUCKETS,
        );
        let writer_batch_events = histogram(
            "writer_batch_events",
            "Events committed in one transaction",
            BATCH_EVENTS_BUCKETS,
        );
        let append_conditions_total = counter_vec(
            "append_conditions_total",
            "Conditional appends decided, by lane and outcome (accepted, rejected)",
            &["lane", "outcome"],
        );
        let projection_states_total = counter_vec(
            "projection_states_total",
            "Remembered projector states by result: hit, miss (looked up), evicted",
            &["result"],
        );
        let pool_connections = gauge_vec(
            "pool_connections",
            "Database connections by pool and state (in_use, idle)",
            &["pool", "state"],
        );
        let pool_max_connections = gauge_vec(
            "pool_max_connections",
            "Configured size of each pool",
            &["pool"],
        );
        let pool_waiting = gauge_vec(
            "pool_waiting",
            "Callers waiting for a pooled connection",
            &["pool"],
        );
        let pool_wait_timeouts_total = counter_vec(
            "pool_wait_timeouts_total",
            "Waits for a pooled connection that timed out",
            &["pool"],
        );
        let head_position = gauge(
            "head_position",
            "Highest event position this process has written or read",
        );
        let replica_up = gauge_vec(
            "replica_up",
            "1 while a replica is in rotation, 0 while it is out",
            &["replica"],
        );
        let replica_lag_positions = gauge_vec(
            "replica_lag_positions",
            "Positions the primary holds that a replica has not replayed",
            &["replica"],
        );
        let replica_lag_seconds = GaugeVec::new(
            Opts::new(
                "replica_lag_seconds",
                "How long ago the primary first held an event a replica has not replayed",
            ),
            &["replica"],
        )
        .expect("valid metric");
        let replica_requests_total = counter_vec(
            "replica_requests_total",
            "Requests served by a replica",
            &["replica"],
        );
        let replica_fallbacks_total = counter_vec(
            "replica_fallbacks_total",
            "Requests a replica could have served that the primary served, by reason",
            &["reason"],
        );
        let process_registry = Registry::new();
        process_registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registered once");

        let metrics = MetricHandles {
            registry,
            http_requests_total,
            http_request_duration_seconds,
            appends_total,
            events_appended_total,
            writer_batch_appends,
            writer_batch_duration_seconds,
            writer_pending_appends,
            writer_lanes,
            writer_max_batch_appends,
            writer_max_pending_appends,
            actor_restarts_total,
            budget_refusals_total,
            writer_lane_up,
            read_events_total,
            read_pages_total,
            subscriptions_active,
            subscription_events_delivered_total,
            subscription_lag_events,
            subscription_detached_total,
            subscription_buffered_bytes,
            subscription_ended_total,
            subscription_tailer_reads_total,
            build_info,
            append_duration_seconds,
            append_queue_wait_seconds,
            writer_batch_database_seconds,
            writer_batch_events,
            append_conditions_total,
            projection_states_total,
            pool_connections,
            pool_max_connections,
            pool_waiting,
            pool_wait_timeouts_total,
            head_position,
            replica_up,
            replica_lag_positions,
            replica_lag_seconds,
            replica_requests_total,
            replica_fallbacks_total,
            head: Arc::new(OnceLock::new()),
            pools: Arc::new(Mutex::new(Vec::new())),
            process_registry,
        };
        let metrics = Metrics(Arc::new(metrics));
        metrics.register_all();
        metrics
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.http_requests_total.clone()),
            Box::new(self.http_request_duration_seconds.clone()),
            Box::new(self.appends_total.clone()),
            Box::new(self.events_appended_total.clone()),
            Box::new(self.writer_batch_appends.clone()),
            Box::new(self.writer_batch_duration_seconds.clone()),
            Box::new(self.writer_pending_appends.clone()),
            Box::new(self.writer_lanes.clone()),
            Box::new(self.writer_max_batch_appends.clone()),
            Box::new(self.writer_max_pending_appends.clone()),
            Box::new(self.actor_restarts_total.clone()),
            Box::new(self.budget_refusals_total.clone()),
            Box::new(self.writer_lane_up.clone()),
            Box::new(self.read_events_total.clone()),
            Box::new(self.read_pages_total.clone()),
            Box::new(self.subscriptions_active.clone()),
            Box::new(self.subscription_events_delivered_total.clone()),
            Box::new(self.subscription_lag_events.clone()),
            Box::new(self.subscription_detached_total.clone()),
            Box::new(self.subscription_buffered_bytes.clone()),
            Box::new(self.subscription_ended_total.clone()),
            Box::new(self.subscription_tailer_reads_total.clone()),
            Box::new(self.build_info.clone()),
            Box::new(self.append_duration_seconds.clone()),
            Box::new(self.append_queue_wait_seconds.clone()),
            Box::new(self.writer_batch_database_seconds.clone()),
            Box::new(self.writer_batch_events.clone()),
            Box::new(self.append_conditions_total.clone()),
            Box::new(self.projection_states_total.clone()),
            Box::new(self.pool_connections.clone()),
            Box::new(self.pool_max_connections.clone()),
            Box::new(self.pool_waiting.clone()),
            Box::new(self.pool_wait_timeouts_total.clone()),
            Box::new(self.head_position.clone()),
            Box::new(self.replica_up.clone()),
            Box::new(self.replica_lag_positions.clone()),
            Box::new(self.replica_lag_seconds.clone()),
            Box::new(self.replica_requests_total.clone()),
            Box::new(self.replica_fallbacks_total.clone()),
        ];
        for c in collectors {
            self.registry.register(c).expect("metric registered once");
        }
    }

    /// Samples `head` into `crablet_head_position` on every render.
    pub fn watch_head(&self, head: &Head) {
        let _ = self.head.set(head.clone());
    }

    /// Samples `pool` (named by the `pool` label) on every render.
    pub fn watch_pool(
        &self,
        pool: &'static str,
        sample: impl Fn() -> PoolSample + Send + Sync + 'static,
    ) {
        self.pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((pool, Box::new(sample)));
    }

    /// Sets the metrics that are sampled rather than tracked.
    fn sample(&self) {
        if let Some(head) = self.head.get() {
            self.head_position.set(head.known());
        }
        let pools = self
            .pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (pool, sample) in pools.iter() {
            let s = sample();
            let in_use = s.connections.saturating_sub(s.idle);
            self.pool_connections
                .with_label_values(&[pool, "in_use"])
                .set(i64::from(in_use));
            self.pool_connections
                .with_label_values(&[pool, "idle"])
                .set(i64::from(s.idle));
            self.pool_max_connections
                .with_label_values(&[pool])
                .set(i64::from(s.max_size));
            self.pool_waiting
                .with_label_values(&[pool])
                .set(i64::try_from(s.waiting).unwrap_or(i64::MAX));
            let timeouts = self.pool_wait_timeouts_total.with_label_values(&[pool]);
            timeouts.inc_by(s.timed_out.saturating_sub(timeouts.get()));
        }
    }

    /// The Prometheus text exposition of every metric, crablet's and the
    /// process's.
    pub fn render(&self) -> String {
        self.sample();
        let mut families = self.registry.gather();
        families.extend(self.process_registry.gather());
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("text exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// One constructor per metric kind, so each metric above is one call. Names,
// help texts, labels and buckets are constants: a bad one is a bug, hence
// the `expect`.

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric")
}

fn histogram_vec(name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric")
}
