//! The report of one run: rates, percentiles, verification; as JSON and as a human
//! summary.
//!
//! Owns the arithmetic from merged [`Stats`] to figures. It does no I/O besides
//! formatting strings.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procfs::CpuUsage;
use crate::stats::{LabelStats, Stats};

/// Latency percentiles of one label, in microseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest recorded value.
    pub max_us: u64,
    /// Arithmetic mean.
    pub mean_us: f64,
}

impl Percentiles {
    /// The percentiles of `h` (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self {
                p50_us: 0,
                p90_us: 0,
                p99_us: 0,
                p999_us: 0,
                max_us: 0,
                mean_us: 0.0,
            };
        }
        Self {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }

    /// p50, p90, p99, p99.9 and max, in milliseconds (the summary's columns).
    pub fn tail_ms(&self) -> [f64; 5] {
        [
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
        ]
    }
}

/// Figures of one operation label.
#[derive(Debug, Clone, Serialize)]
pub struct LabelReport {
    /// Operation kind (`append-if`, `read`, `decision`, ...).
    pub label: String,
    /// Operations, any outcome.
    pub requests: u64,
    /// Successful operations.
    pub ok: u64,
    /// Conditional appends rejected by their condition.
    pub conflicts: u64,
    /// Failures by label (`http_503`, `timeout`, ...).
    pub errors: BTreeMap<String, u64>,
    /// The first few failure messages, verbatim.
    pub error_samples: Vec<String>,
    /// Events written or read by successful operations.
    pub items: u64,
    /// `requests / elapsed`.
    pub requests_per_s: f64,
    /// `ok / elapsed`.
    pub ok_per_s: f64,
    /// `(ok + conflicts) / elapsed`: decisions taken, accepted or rejected.
    pub decisions_per_s: f64,
    /// `items / elapsed`.
    pub items_per_s: f64,
    /// Latency of every operation; in open-loop mode measured from the intended
    /// send time (coordinated omission corrected).
    pub latency_us: Percentiles,
    /// Open loop only: latency from the actual send (service time).
    pub service_us: Option<Percentiles>,
}

impl LabelReport {
    /// Figures of `s` over `elapsed_s` seconds.
    pub fn of(label: &str, s: &LabelStats, elapsed_s: f64) -> Self {
        let rate = |n: u64| per_second(n, elapsed_s);
        Self {
            label: label.to_string(),
            requests: s.total(),
            ok: s.ok,
            conflicts: s.conflicts,
            errors: s.errors.clone(),
            error_samples: s.error_samples.clone(),
            items: s.items,
            requests_per_s: rate(s.total()),
            ok_per_s: rate(s.ok),
            decisions_per_s: rate(s.ok + s.conflicts),
            items_per_s: rate(s.items),
            latency_us: Percentiles::of(&s.latency),
            service_us: s.service.as_ref().map(Percentiles::of),
        }
    }

    /// Failed operations, all labels.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// `n / seconds`, 0 for an empty interval.
pub fn per_second(n: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

/// What a post-run verification found.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Verification {
    /// Which invariant was checked.
    pub invariant: String,
    /// Events read back and checked.
    pub events_checked: u64,
    /// Keys (hot-keys) checked.
    pub keys_checked: u64,
    /// Events accepted against their condition (must be 0).
    pub violations: u64,
    /// Events whose data could not be parsed back (must be 0).
    pub unparsable: u64,
    /// Acknowledged appends (their `lastPosition`) looked up in the log: without
    /// it, 0 missing could mean that nothing was checked.
    pub acknowledged_checked: u64,
    /// Acknowledged appends whose position is missing from the log (must be 0).
    pub lost_acknowledged: u64,
    /// The first violations, described.
    pub details: Vec<String>,
}

impl Verification {
    /// True when nothing was wrong.
    pub fn passed(&self) -> bool {
        self.violations == 0 && self.unparsable == 0 && self.lost_acknowledged == 0
    }
}

/// The report of one `run`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// `closed` (N clients send-await-repeat) or `open` (constant rate).
    pub mode: String,
    /// Virtual clients (= connections).
    pub clients: usize,
    /// Target rate of the open loop, requests per second.
    pub rate_per_s: Option<f64>,
    /// Configured duration.
    pub duration_s: f64,
    /// Measured duration, from the start to the last completed operation.
    pub elapsed_s: f64,
    /// The run's id, part of every tag it wrote.
    pub run_id: String,
    /// The label whose rate is the scenario's headline figure.
    pub primary_label: String,
    /// Figures per label.
    pub labels: Vec<LabelReport>,
    /// Open loop: operations scheduled before the deadline but never sent because
    /// every client was still busy (the server could not keep the rate).
    pub unsent: u64,
    /// CPU used during the load window (None where `/proc` is missing).
    pub cpu: Option<CpuUsage>,
    /// Load-generator CPU per operation, µs: what the generator costs the machine.
    pub generator_cpu_us_per_op: Option<f64>,
    /// Post-run verification, for scenarios that have one.
    pub verification: Option<Verification>,
}

impl Report {
    /// Assembles a report.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        scenario: &str,
        clients: usize,
        rate_per_s: Option<f64>,
        duration_s: f64,
        elapsed_s: f64,
        run_id: &str,
        primary_label: &str,
        stats: &Stats,
        unsent: u64,
    ) -> Self {
        Self {
            scenario: scenario.to_string(),
            mode: if rate_per_s.is_some() {
                "open"
            } else {
                "closed"
            }
            .to_string(),
            clients,
            rate_per_s,
            duration_s,
            elapsed_s,
            run_id: run_id.to_string(),
            primary_label: primary_label.to_string(),
            labels: stats
                .labels
                .iter()
                .map(|(label, s)| LabelReport::of(label, s, elapsed_s))
                .collect(),
            unsent,
            cpu: None,
            generator_cpu_us_per_op: None,
            verification: None,
        }
    }

    /// The headline label's figures.
    pub fn primary(&self) -> Option<&LabelReport> {
        self.labels.iter().find(|l| l.label == self.primary_label)
    }

    /// Records the CPU used during the load window.
    pub fn set_cpu(&mut self, cpu: Option<CpuUsage>) {
        let ops: u64 = self.labels.iter().map(|l| l.requests).sum();
        self.cpu = cpu;
        self.generator_cpu_us_per_op = cpu
            .filter(|_| ops > 0)
            .map(|c| c.generator_s * 1e6 / ops as f64);
    }

    /// Errors over all labels.
    pub fn error_count(&self) -> u64 {
        self.labels.iter().map(LabelReport::error_count).sum()
    }

    /// A human summary, several lines.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let mode = match self.rate_per_s {
            Some(rate) => format!("open loop at {rate:.0}/s over {} connections", self.clients),
            None => format!("closed loop, {} clients", self.clients),
        };
        let _ = writeln!(
            out,
            "scenario {} ({mode}, {:.1} s measured, run {})",
            self.scenario, self.elapsed_s, self.run_id
        );
        let _ = writeln!(
            out,
            "{:<10} {:>9} {:>9} {:>9} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "op",
            "requests",
            "ok",
            "conflicts",
            "errors",
            "req/s",
            "items/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms"
        );
        for l in &self.labels {
            let [p50, p90, p99, p999, max] = l.latency_us.tail_ms();
            let _ = writeln!(
                out,
                "{:<10} {:>9} {:>9} {:>9} {:>7} {:>10.1} {:>10.1} {p50:>8.3} {p90:>8.3} {p99:>8.3} {p999:>8.3} {max:>8.3}",
                l.label,
                l.requests,
                l.ok,
                l.conflicts,
                l.error_count(),
                l.requests_per_s,
                l.items_per_s,
            );
        }
        for l in &self.labels {
            if let Some(service) = l.service_us {
                let [p50, p90, p99, p999, max] = service.tail_ms();
                let _ = writeln!(
                    out,
                    "{:<10} service time from the actual send: p50 {p50:.3} p90 {p90:.3} p99 {p99:.3} p99.9 {p999:.3} max {max:.3} ms",
                    l.label,
                );
            }
        }
        for l in &self.labels {
            if !l.errors.is_empty() {
                let counts: Vec<String> =
                    l.errors.iter().map(|(k, v)| format!("{k} x{v}")).collect();
                let _ = writeln!(out, "{} errors: {}", l.label, counts.join(", "));
                for sample in &l.error_samples {
                    let _ = writeln!(out, "  e.g. {sample}");
                }
            }
        }
        if let Some(cpu) = self.cpu {
            let _ = writeln!(
                out,
                "cpu: machine {:.0}% busy; generator {:.1} s{}",
                cpu.machine_busy_pct,
                cpu.generator_s,
                self.generator_cpu_us_per_op
                    .map_or_else(String::new, |us| format!(" ({us:.1} us/op)"))
            );
        }
        if self.unsent > 0 {
            let _ = writeln!(
                out,
                "WARNING: {} scheduled operations were never sent: the target rate was not sustained",
                self.unsent
            );
        }
        if let Some(v) = &self.verification {
            let keys = if v.keys_checked > 0 {
                format!(" on {} keys", v.keys_checked)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "verification ({}): {} events{keys}: {} violations, {} unparsable, {} of {} acknowledged appends missing -> {}",
                v.invariant,
                v.events_checked,
                v.violations,
                v.unparsable,
                v.lost_acknowledged,
                v.acknowledged_checked,
                if v.passed() { "PASS" } else { "FAIL" }
            );
            for d in &v.details {
                let _ = writeln!(out, "  {d}");
            }
        }
        out
    }
}

/// Microseconds as milliseconds.
pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Outcome;
    use std::time::Duration;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = crate::stats::new_histogram();
        for v in 1..=1000u64 {
            crate::stats::record_us(&mut h, v);
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.p50_us, 500);
        assert_eq!(p.p90_us, 900);
        assert_eq!(p.p99_us, 990);
        assert_eq!(p.p999_us, 999);
        assert_eq!(p.max_us, 1000);
        assert!((p.mean_us - 500.5).abs() < 1.0);
    }

    #[test]
    fn rates_divide_by_elapsed_and_decisions_count_rejections() {
        let mut s = Stats::default();
        for _ in 0..30 {
            s.record(
                "decision",
                Duration::from_micros(10),
                Outcome::Ok { items: 1 },
            );
        }
        for _ in 0..10 {
            s.record("decision", Duration::from_micros(10), Outcome::Conflict);
        }
        let r = Report::build("hot-keys", 4, None, 2.0, 2.0, "r1", "decision", &s, 0);
        let p = r.primary().unwrap();
        assert_eq!(p.requests, 40);
        assert_eq!(p.ok_per_s, 15.0);
        assert_eq!(p.decisions_per_s, 20.0);
        assert_eq!(r.mode, "closed");
        assert!(r.summary().contains("decision"));
    }

    #[test]
    fn empty_intervals_have_zero_rate() {
        assert_eq!(per_second(10, 0.0), 0.0);
        assert_eq!(Percentiles::of(&crate::stats::new_histogram()).max_us, 0);
    }
}
