//! Latency histograms and outcome counters.
//!
//! Each virtual client owns its own [`Stats`] (no sharing, no locks on the hot
//! path); the driver merges them when the run ends. Latencies are recorded in
//! microseconds in HDR histograms with 3 significant digits.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest latency a histogram tracks without resizing (1 hour, in µs); larger
/// values are clamped to it.
const MAX_TRACKED_LATENCY_US: u64 = 3_600_000_000;
/// Significant decimal digits kept by the histograms.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Error messages kept per label, to show what the server said.
const MAX_ERROR_SAMPLES: usize = 5;

/// How one operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done; `items` counts events written or read.
    Ok {
        /// Events appended or returned.
        items: u64,
    },
    /// A conditional append whose condition failed (a conflict, or a rejected
    /// decision in the hot-keys scenario).
    Conflict,
    /// Failed: the label (`http_503`, `timeout`, ...) and a message.
    Error {
        /// Stable label used for counting.
        label: String,
        /// What happened, kept as a sample.
        message: String,
    },
}

/// Counters and latencies of one kind of operation.
#[derive(Debug, Clone)]
pub struct LabelStats {
    /// Latency of every operation (any outcome), µs; in open loop from the intended
    /// send time.
    pub latency: Histogram<u64>,
    /// Open loop only: time from the actual send to the reply, µs (the server's
    /// share, without the schedule lag and the generator's timer slack).
    pub service: Option<Histogram<u64>>,
    /// Operations that succeeded.
    pub ok: u64,
    /// Conditional appends rejected by their condition.
    pub conflicts: u64,
    /// Failed operations by error label.
    pub errors: BTreeMap<String, u64>,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Events written or read by successful operations.
    pub items: u64,
}

impl Default for LabelStats {
    fn default() -> Self {
        Self {
            latency: new_histogram(),
            service: None,
            ok: 0,
            conflicts: 0,
            errors: BTreeMap::new(),
            error_samples: Vec::new(),
            items: 0,
        }
    }
}

/// A latency histogram in µs, 1 µs to 1 hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants known to be valid (1 <= low, high >= 2*low, sigfig <= 5).
    Histogram::new_with_bounds(1, MAX_TRACKED_LATENCY_US, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Records `value_us` into `h`, clamped to the tracked range.
pub fn record_us(h: &mut Histogram<u64>, value_us: u64) {
    h.saturating_record(value_us.clamp(1, MAX_TRACKED_LATENCY_US));
}

/// A duration in whole microseconds (saturating).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Adds `from` into `into`. Both share bounds, so adding cannot fail; should it,
/// the values are re-recorded one by one.
fn add_histogram(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    if into.add(from).is_err() {
        for v in from.iter_recorded() {
            for _ in 0..v.count_at_value() {
                record_us(into, v.value_iterated_to());
            }
        }
    }
}

impl LabelStats {
    /// Operations counted, any outcome.
    pub fn total(&self) -> u64 {
        self.ok + self.conflicts + self.errors.values().sum::<u64>()
    }

    /// Errors of any kind.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn record(&mut self, latency: Duration, service: Option<Duration>, outcome: Outcome) {
        record_us(&mut self.latency, micros(latency));
        if let Some(service) = service {
            record_us(
                self.service.get_or_insert_with(new_histogram),
                micros(service),
            );
        }
        match outcome {
            Outcome::Ok { items } => {
                self.ok += 1;
                self.items += items;
            }
            Outcome::Conflict => self.conflicts += 1,
            Outcome::Error { label, message } => {
                *self.errors.entry(label).or_default() += 1;
                if self.error_samples.len() < MAX_ERROR_SAMPLES {
                    self.error_samples.push(message);
                }
            }
        }
    }

    fn merge(&mut self, other: &LabelStats) {
        add_histogram(&mut self.latency, &other.latency);
        if let Some(theirs) = &other.service {
            add_histogram(self.service.get_or_insert_with(new_histogram), theirs);
        }
        self.ok += other.ok;
        self.conflicts += other.conflicts;
        self.items += other.items;
        for (label, n) in &other.errors {
            *self.errors.entry(label.clone()).or_default() += n;
        }
        for sample in &other.error_samples {
            if self.error_samples.len() < MAX_ERROR_SAMPLES {
                self.error_samples.push(sample.clone());
            }
        }
    }
}

/// Everything one client (or, merged, one run) measured, by operation label.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Per label (`append-if`, `read`, `decision`, ...).
    pub labels: BTreeMap<&'static str, LabelStats>,
}

impl Stats {
    /// Records one operation.
    pub fn record(&mut self, label: &'static str, latency: Duration, outcome: Outcome) {
        self.labels
            .entry(label)
            .or_default()
            .record(latency, None, outcome);
    }

    /// Records one open-loop operation: `latency` from its intended send time,
    /// `service` from its actual send.
    pub fn record_open(
        &mut self,
        label: &'static str,
        latency: Duration,
        service: Duration,
        outcome: Outcome,
    ) {
        self.labels
            .entry(label)
            .or_default()
            .record(latency, Some(service), outcome);
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        for (label, s) in &other.labels {
            self.labels.entry(label).or_default().merge(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_and_latencies() {
        let mut a = Stats::default();
        a.record("x", Duration::from_micros(100), Outcome::Ok { items: 1 });
        a.record("x", Duration::from_micros(300), Outcome::Conflict);
        let mut b = Stats::default();
        b.record(
            "x",
            Duration::from_micros(200),
            Outcome::Error {
                label: "http_503".into(),
                message: "HTTP 503".into(),
            },
        );
        b.record("y", Duration::from_millis(5), Outcome::Ok { items: 10 });
        a.merge(&b);
        let x = &a.labels["x"];
        assert_eq!(
            (x.ok, x.conflicts, x.error_count(), x.total()),
            (1, 1, 1, 3)
        );
        assert_eq!(x.latency.len(), 3);
        assert_eq!(x.latency.max(), 300);
        assert_eq!(a.labels["y"].items, 10);
        assert!(a.labels["x"].service.is_none());
    }

    #[test]
    fn open_loop_records_keep_service_time_apart() {
        let mut a = Stats::default();
        a.record_open(
            "x",
            Duration::from_millis(50),
            Duration::from_millis(2),
            Outcome::Ok { items: 1 },
        );
        let mut b = Stats::default();
        b.merge(&a);
        let x = &b.labels["x"];
        assert!(x.latency.max() >= 49_000);
        assert!(x.service.as_ref().is_some_and(|s| s.max() < 3_000));
    }

    #[test]
    fn huge_latencies_are_clamped_not_lost() {
        let mut s = Stats::default();
        s.record("x", Duration::from_secs(10_000), Outcome::Ok { items: 0 });
        assert_eq!(s.labels["x"].latency.len(), 1);
    }
}
