//! Every Prometheus metric crablet exports, with its help text and buckets.
//!
//! One [`Metrics`] value is built by [`crate::app`] and passed down to the
//! HTTP layer and the actors; nothing registers metrics anywhere else and
//! there is no global registry. Labels are route templates, outcomes and lane
//! numbers, never tags or positions.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
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

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route template, method and status code.
    pub http_requests_total: IntCounterVec,
    /// HTTP request latency by route template, until the response head.
    pub http_request_duration_seconds: HistogramVec,
    /// Appends by outcome: appended, condition_failed, duplicate, id_conflict,
    /// overloaded, unavailable (nothing written), outcome_unknown, failed
    /// (refused).
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
    /// Actor restarts by actor kind (writer, reader); both series exist
    /// from start-up, at 0.
    pub actor_restarts_total: IntCounterVec,
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
    /// Subscribers detached from the live feed because their buffer was full
    /// (they catch up from the store on their own).
    pub subscription_detached_total: IntCounter,
    /// Subscriptions ended by crablet, by reason: shutdown, lagging, unavailable.
    pub subscription_ended_total: IntCounterVec,
    /// Store queries the tailer ran (one per poll and per page of new events).
    pub subscription_tailer_reads_total: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("crablet".into()), None).expect("valid prefix");
        let http_requests_total = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let http_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let appends_total = IntCounterVec::new(
            Opts::new("appends_total", "Appends by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let events_appended_total =
            IntCounter::new("events_appended_total", "Events written").expect("valid metric");
        let writer_batch_appends = Histogram::with_opts(
            HistogramOpts::new(
                "writer_batch_appends",
                "Appends committed in one transaction",
            )
            .buckets(BATCH_SIZE_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let writer_batch_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "writer_batch_duration_seconds",
                "Time of one writer batch, from its start (connection checkout included) to the answer after its commit",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let writer_pending_appends = IntGaugeVec::new(
            Opts::new("writer_pending_appends", "Appends waiting in a writer lane"),
            &["lane"],
        )
        .expect("valid metric");
        let writer_lanes =
            IntGauge::new("writer_lanes", "Configured writer lanes").expect("valid metric");
        let writer_max_batch_appends = IntGauge::new(
            "writer_max_batch_appends",
            "Configured maximum appends per batch",
        )
        .expect("valid metric");
        let actor_restarts_total = IntCounterVec::new(
            Opts::new("actor_restarts_total", "Supervised actor restarts by actor"),
            &["actor"],
        )
        .expect("valid metric");
        let writer_lane_up = IntGaugeVec::new(
            Opts::new(
                "writer_lane_up",
                "1 while a writer lane runs, 0 while it restarts or is gone",
            ),
            &["lane"],
        )
        .expect("valid metric");
        // A labelled series is exported only once touched: make both kinds
        // show 0 restarts from start-up.
        for actor in ["writer", "reader"] {
            actor_restarts_total.with_label_values(&[actor]);
        }
        let read_events_total =
            IntCounter::new("read_events_total", "Events returned by reads").expect("valid metric");
        let read_pages_total =
            IntCounter::new("read_pages_total", "Queries run by reads").expect("valid metric");

        let subscriptions_active =
            IntGauge::new("subscriptions_active", "Open subscriptions").expect("valid metric");
        let subscription_events_delivered_total = IntCounter::new(
            "subscription_events_delivered_total",
            "Events sent to subscribers",
        )
        .expect("valid metric");
        let subscription_lag_events = Histogram::with_opts(
            HistogramOpts::new(
                "subscription_lag_events",
                "Positions between the head and a subscriber when it is sent events",
            )
            .buckets(LAG_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let subscription_detached_total = IntCounter::new(
            "subscription_detached_total",
            "Subscribers detached from the live feed with a full buffer",
        )
        .expect("valid metric");
        let subscription_ended_total = IntCounterVec::new(
            Opts::new(
                "subscription_ended_total",
                "Subscriptions ended by crablet, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let subscription_tailer_reads_total = IntCounter::new(
            "subscription_tailer_reads_total",
            "Store queries run by the subscription tailer",
        )
        .expect("valid metric");

        let metrics = Metrics {
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
            actor_restarts_total,
            writer_lane_up,
            read_events_total,
            read_pages_total,
            subscriptions_active,
            subscription_events_delivered_total,
            subscription_lag_events,
            subscription_detached_total,
            subscription_ended_total,
            subscription_tailer_reads_total,
        };
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
            Box::new(self.actor_restarts_total.clone()),
            Box::new(self.writer_lane_up.clone()),
            Box::new(self.read_events_total.clone()),
            Box::new(self.read_pages_total.clone()),
            Box::new(self.subscriptions_active.clone()),
            Box::new(self.subscription_events_delivered_total.clone()),
            Box::new(self.subscription_lag_events.clone()),
            Box::new(self.subscription_detached_total.clone()),
            Box::new(self.subscription_ended_total.clone()),
            Box::new(self.subscription_tailer_reads_total.clone()),
        ];
        for c in collectors {
            self.registry.register(c).expect("metric registered once");
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("text exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
