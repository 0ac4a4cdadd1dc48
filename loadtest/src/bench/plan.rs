//! The plan of the benchmark: how long each phase lasts and how large the stores
//! are (from the command line, `--quick` or the defaults), the databases, and the
//! crablet load ([`Phase`]) of every goal.
//!
//! Owns sizes and names only; the runner (`runner`) runs the phases.

use std::time::Duration;

use serde::Serialize;

use super::BenchConfig;
use crate::preload::EVENTS_PER_TAG;
use crate::scenario::{Decision, ScenarioKind};

/// Length of the throughput phases (P1, P3, P5 and the insert baseline).
const THROUGHPUT_PHASE: Duration = Duration::from_secs(20);
/// Length of the latency phases (P2).
const LATENCY_PHASE: Duration = Duration::from_secs(10);
/// Length of the read phases (P4).
const READ_PHASE: Duration = Duration::from_secs(15);
/// Length of every phase with `--quick`.
const QUICK_PHASE: Duration = Duration::from_secs(5);
/// Events stored for P4/P5.
const VOLUME_EVENTS: u64 = 1_000_000;
/// Events stored for P4/P5 with `--quick`.
const QUICK_VOLUME_EVENTS: u64 = 100_000;
/// Clients of the write goals (P1, P3, P5).
const WRITE_CLIENTS: usize = 64;
/// Clients of the read goal (P4).
const READ_CLIENTS: usize = 16;
/// Size of every event's data, bytes, on both sides.
pub(super) const DATA_BYTES: usize = 64;
/// Hot keys of P3.
pub(super) const HOT_KEYS: usize = 100;
/// Zipf exponent of P3.
pub(super) const HOT_KEYS_ZIPF: f64 = 1.0;
/// Events per preload append.
pub(super) const PRELOAD_BATCH: u64 = 1000;
/// Concurrent preload appends.
pub(super) const PRELOAD_CONCURRENCY: usize = 4;

/// Database of the baselines' tables.
pub(super) const DB_RAW: &str = "crablet_bench_raw";
/// crablet's empty store.
pub(super) const DB_EMPTY: &str = "crablet_bench_empty";
/// crablet's preloaded store.
pub(super) const DB_VOLUME: &str = "crablet_bench_1m";
/// crablet's store of hot keys with long histories (P10).
pub(super) const DB_HISTORY: &str = "crablet_bench_history";
/// crablet's soak store.
pub(super) const DB_SOAK: &str = "crablet_bench_soak";

/// Phase lengths and sizes, from the config; the crablet phase of each goal is
/// built from them (`Plan::p1` to `Plan::p5`, `Plan::soak`).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// P1, P3, P5 and the insert baseline, seconds.
    pub throughput_s: f64,
    /// P2, seconds.
    pub latency_s: f64,
    /// P4, seconds.
    pub read_s: f64,
    /// Events stored for P4/P5.
    pub volume_events: u64,
    /// Clients of P1/P3/P5.
    pub write_clients: usize,
    /// Clients of P4.
    pub read_clients: usize,
    /// Soak length, seconds (0: no soak).
    pub soak_s: f64,
}

impl Plan {
    /// The number of events stored for P4/P5/P11-P14, as the table says it.
    pub fn volume_text(&self) -> String {
        super::table::thousands(self.volume_events as f64)
    }

    pub(super) fn of(cfg: &BenchConfig) -> Self {
        let pick = |normal: Duration| {
            cfg.phase_duration
                .unwrap_or(if cfg.quick { QUICK_PHASE } else { normal })
                .as_secs_f64()
        };
        Self {
            throughput_s: pick(THROUGHPUT_PHASE),
            latency_s: pick(LATENCY_PHASE),
            read_s: pick(READ_PHASE),
            volume_events: cfg.volume_events.unwrap_or(if cfg.quick {
                QUICK_VOLUME_EVENTS
            } else {
                VOLUME_EVENTS
            }),
            write_clients: WRITE_CLIENTS,
            read_clients: READ_CLIENTS,
            soak_s: if cfg.soak {
                cfg.soak_duration.as_secs_f64()
            } else {
                0.0
            },
        }
    }

    /// Tags of the stored volume, [`EVENTS_PER_TAG`] events each (what P4 reads).
    pub(super) fn read_tags(&self) -> u64 {
        (self.volume_events / EVENTS_PER_TAG).max(1)
    }

    /// P1 (and P6 beside it): conditional appends on disjoint keys, empty store.
    pub(super) fn p1(&self) -> Phase {
        Phase {
            name: "p1-append-if-64",
            db: DB_EMPTY,
            kind: ScenarioKind::AppendIf,
            tag: "p1",
            clients: self.write_clients,
            duration: secs(self.throughput_s),
            decision: Decision::ReadAppend,
        }
    }

    /// P2: P1's append from one client, for its latency.
    pub(super) fn p2(&self) -> Phase {
        Phase {
            name: "p2-append-if-1",
            tag: "p2",
            clients: 1,
            duration: secs(self.latency_s),
            ..self.p1()
        }
    }

    /// P3: read-decide-append on the hot keys, empty store.
    pub(super) fn p3(&self) -> Phase {
        Phase {
            name: "p3-hot-keys-64",
            kind: ScenarioKind::HotKeys,
            tag: "p3",
            ..self.p1()
        }
    }

    /// P3's decisions as one request each: `require` instead of a read.
    pub(super) fn p3_require(&self) -> Phase {
        Phase {
            name: "p3-hot-keys-require-64",
            tag: "p3r",
            decision: Decision::Require,
            ..self.p3()
        }
    }

    /// P10: P3's one-request decisions on keys that hold a long history.
    pub(super) fn p10(&self) -> Phase {
        Phase {
            name: "p10-hot-keys-require-history-64",
            db: DB_HISTORY,
            tag: "p10",
            ..self.p3_require()
        }
    }

    /// P11: projections over the whole volume, appends trickling in.
    pub(super) fn p11(&self) -> Phase {
        Phase {
            name: "p11-project-volume-16",
            kind: ScenarioKind::Project,
            tag: "p11",
            ..self.p4()
        }
    }

    /// P4: reads of one stored tag each, at volume.
    pub(super) fn p4(&self) -> Phase {
        Phase {
            name: "p4-read-16",
            db: DB_VOLUME,
            kind: ScenarioKind::Read,
            tag: "p4",
            clients: self.read_clients,
            duration: secs(self.read_s),
            decision: Decision::ReadAppend,
        }
    }

    /// P12: P4's reads, served by the primary (the reference side).
    pub(super) fn p12_primary(&self) -> Phase {
        Phase {
            name: "p12-read-16-primary",
            tag: "p12p",
            ..self.p4()
        }
    }

    /// P12: P4's reads, served by a streaming replica (through a server
    /// started with `--replica-url`).
    pub(super) fn p12_replica(&self) -> Phase {
        Phase {
            name: "p12-read-16-replica",
            tag: "p12r",
            ..self.p4()
        }
    }

    /// P13: P1's load on the volume store, while the replica's lag is sampled.
    pub(super) fn p13(&self) -> Phase {
        Phase {
            name: "p13-append-if-64-replica-lag",
            tag: "p13",
            ..self.p5()
        }
    }

    /// P14's innocent load: P1 at volume, measured alone (then beside the
    /// expensive client, under another name).
    pub(super) fn p14(&self) -> Phase {
        Phase {
            name: "p14-append-if-64-volume-alone",
            tag: "p14",
            ..self.p5()
        }
    }

    /// P5: P1 at volume.
    pub(super) fn p5(&self) -> Phase {
        Phase {
            name: "p5-append-if-64-volume",
            db: DB_VOLUME,
            tag: "p5",
            ..self.p1()
        }
    }

    /// The soak: P1's load for `duration`, on a store of its own.
    pub(super) fn soak(&self, duration: Duration) -> Phase {
        Phase {
            name: "soak-append-if-64",
            db: DB_SOAK,
            tag: "soak",
            duration,
            ..self.p1()
        }
    }
}

/// Seconds of the plan as a duration.
fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// One crablet load of the bench: which workload, against which store, how many
/// clients, how long.
#[derive(Debug, Clone, Copy)]
pub(super) struct Phase {
    /// Name of the run in the report's `runs` and in the notes.
    pub(super) name: &'static str,
    /// The store the server serves.
    pub(super) db: &'static str,
    /// The workload.
    pub(super) kind: ScenarioKind,
    /// Start of the run id, which every tag the run writes contains.
    pub(super) tag: &'static str,
    /// Virtual clients.
    pub(super) clients: usize,
    /// Length of the load.
    pub(super) duration: Duration,
    /// How a hot-keys decision is sent.
    pub(super) decision: Decision,
}
