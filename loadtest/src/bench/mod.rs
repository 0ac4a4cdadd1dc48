//! The one-command benchmark: every performance goal (P1–P14, listed in [`Goal`]) measured
//! beside its baseline (raw PostgreSQL, or crablet itself in another setting), in one
//! invocation, on one PostgreSQL.
//!
//! It starts what it needs — a private cluster through `crablet postgres` unless
//! given a database URL, and `crablet serve` on a free loopback port — and stops
//! all of it, by pid, when it is done. This module is the map: what is asked
//! ([`BenchConfig`]), what is reported ([`BenchReport`]), and which rows of the
//! table are measured in which order (`Step`, `Bench::run_all`).
//!
//! Databases (created fresh on each run): `crablet_bench_raw` (the baselines'
//! plain tables), `crablet_bench_empty` (P1–P3, P6–P8), `crablet_bench_1m` (P4, P5,
//! P9, P11-P14, preloaded; P12 and P13 also on a streaming replica of the
//! cluster), `crablet_bench_history` (P10: hot keys with long
//! histories), `crablet_bench_soak` (`--soak`).
//!
//! - `plan`: phase lengths and sizes, the databases, each goal's crablet load.
//! - `runner`: the work folder, the cluster and the servers, running phases and
//!   baselines and recording them.
//! - The goals: `appends` (P1, P2, P5, P6 and the soak), `hot_keys` (P3, P10),
//!   `volume` (the volume load, P4, P11), `subscriptions` (P7–P9), `expensive`
//!   (P14), `replica` (a streaming replica of the cluster: P12, P13).
//! - [`postgres`]: connection strings, psql/pgbench, the baselines' SQL.
//! - [`server`]: the cluster and server processes, RSS sampling.
//! - [`table`]: the printed table.

mod appends;
mod expensive;
mod hot_keys;
mod plan;
pub mod postgres;
mod replica;
mod runner;
pub mod server;
mod subscriptions;
pub mod table;
mod volume;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

use crate::preload::PreloadResult;
use crate::report::Report;
pub use plan::Plan;
use plan::{DB_EMPTY, DB_RAW};
use postgres::{ConnInfo, PgbenchResult, Tools};
pub use runner::run;
use server::{CrabletServer, RssSample};
use table::Row;

/// Default soak length.
pub const DEFAULT_SOAK: Duration = Duration::from_secs(600);

/// The performance goals the benchmark measures (P1-P14; docs/performance.md
/// states each one with its target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
pub enum Goal {
    /// Conditional appends, disjoint keys, 64 clients, vs raw INSERT.
    P1,
    /// Conditional append latency at 1 client vs raw INSERT latency.
    P2,
    /// Hot keys, 64 clients, decisions/s vs raw INSERT, 0 violations.
    P3,
    /// Read one tag at volume, 16 clients, vs pgbench on a GIN table.
    P4,
    /// P1 at volume vs P1 empty.
    P5,
    /// Server RSS under P1.
    P6,
    /// Subscription delivery: 100 own-tag + 10 everything subscribers,
    /// appends at 2,000/s, delivery p99 <= 10 ms.
    P7,
    /// Server RSS added by 1,000 idle subscriptions, at most 64 MiB.
    P8,
    /// A new subscriber catching up through the stored log (the volume
    /// store), at least 100,000 events/s.
    P9,
    /// `require` decisions on hot keys that already hold 20,000 events each,
    /// vs the same decisions on fresh keys of the same store, at least 0.8.
    P10,
    /// `POST /project` of a count over every stored event (the volume), 16
    /// clients, appends trickling in, vs P4's reads/s, at least 0.5.
    P11,
    /// P4's reads served from a streaming replica (a second server with
    /// `--replica-url`) vs the same reads served by the primary, at least 0.9.
    P12,
    /// Replica lag under P1's load: p99 of the time from an append's
    /// acknowledgement to its visibility on the replica, at most 50 ms (and
    /// the p99 of the lag in positions, reported).
    P13,
    /// P1's load on the volume store beside one client looping on `POST
    /// /project` of 10 first-evaluated sums over the whole volume, vs the same
    /// load alone, at least 0.33, and none of its requests failed.
    P14,
}

/// What `crablet-loadtest bench` was asked.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Use this PostgreSQL (its role must be able to create databases); None: start
    /// a private cluster with `crablet postgres` in a temp folder.
    pub database_url: Option<String>,
    /// The crablet binary; None: `crablet` next to this binary.
    pub crablet_bin: Option<PathBuf>,
    /// Short phases and a smaller volume (a smoke run of about two minutes).
    pub quick: bool,
    /// Run the P1 load for `soak_duration` after the goals, sampling RSS.
    pub soak: bool,
    /// Length of the soak.
    pub soak_duration: Duration,
    /// Goals to measure (empty: all).
    pub goals: Vec<Goal>,
    /// Override every phase's length.
    pub phase_duration: Option<Duration>,
    /// Override the number of events stored for P4/P5.
    pub volume_events: Option<u64>,
    /// Measure only the baselines (no crablet server needed).
    pub baselines_only: bool,
    /// Keep the temp folder (logs, cluster) and the databases.
    pub keep: bool,
    /// Seed of the clients' random streams.
    pub seed: u64,
    /// Load-generator request timeout.
    pub request_timeout: Duration,
    /// Start the servers with this one token configured (admin scope) and
    /// send it on every request: measures the cost of authentication.
    pub token: Option<String>,
}

/// RSS over a soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// The load's report.
    pub run: Report,
    /// Every sample (1 s apart).
    pub samples: Vec<RssSample>,
    /// First vs last minute.
    pub flatness: Option<server::Flatness>,
}

/// Everything the bench measured, as written to `--json`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BenchReport {
    /// PostgreSQL settings in force.
    pub settings: BTreeMap<String, String>,
    /// Phase lengths and sizes.
    pub plan: Option<Plan>,
    /// The goal table.
    pub rows: Vec<Row>,
    /// crablet runs by phase name.
    pub runs: BTreeMap<String, Report>,
    /// Baselines by phase name.
    pub baselines: BTreeMap<String, PgbenchResult>,
    /// The volume preload.
    pub preload: Option<PreloadResult>,
    /// Seconds to build the GIN baseline table.
    pub gin_load_s: Option<f64>,
    /// Server RSS during the P1 run.
    pub rss_p1: Vec<RssSample>,
    /// The soak, if run.
    pub soak: Option<SoakReport>,
    /// `X-Crablet-Source` of the replies of P12's phases, by phase name.
    pub replica_sources: BTreeMap<String, crate::http::SourceCounts>,
    /// P13's lag figures.
    pub replica_lag: Option<replica::ReplicaLag>,
    /// Remarks printed under the table (errors, conflicts, anomalies).
    pub notes: Vec<String>,
    /// Wall time of the whole bench, seconds.
    pub elapsed_s: f64,
}

/// The state of one bench invocation.
struct Bench {
    /// What was asked.
    cfg: BenchConfig,
    /// Phase lengths and sizes.
    plan: Plan,
    /// psql and pgbench.
    tools: Tools,
    /// The crablet binary (None with `--baselines-only` and an external database).
    crablet: Option<PathBuf>,
    /// Connection to the maintenance database (creates the others).
    admin: ConnInfo,
    /// Work folder: logs, scripts, pgbench logs, the private cluster.
    tmp: PathBuf,
    /// The running server and the database it serves.
    server: Option<(CrabletServer, String)>,
    /// Servers started so far (names their logs).
    server_starts: u32,
    /// Raw INSERT tx/s at 64 clients (P1, P3).
    p1_baseline: Option<f64>,
    /// crablet P1 events/s on the empty store (P5).
    p1_crablet: Option<f64>,
    /// The streaming replica of the cluster (P12, P13), made when first needed.
    replica: Option<replica::Replica>,
    /// P4 reads/s (P11's reference).
    p4_reads: Option<f64>,
    /// What has been measured.
    report: BenchReport,
}

/// A row of the goal table, as the bench measures it (P3 has two), in the order
/// they are measured.
#[derive(Debug, Clone, Copy)]
enum Step {
    P1,
    P2,
    P3,
    P3OneRequest,
    P10,
    P7,
    P8,
    P4,
    P5,
    P9,
    P11,
    P12,
    P13,
    P14,
}

impl Step {
    /// The rows measured on stores of their own, in this order.
    const BEFORE_VOLUME: [Self; 7] = [
        Self::P1,
        Self::P2,
        Self::P3,
        Self::P3OneRequest,
        Self::P10,
        Self::P7,
        Self::P8,
    ];
    /// The rows measured on the volume store, once it is loaded, in this order.
    const ON_VOLUME: [Self; 7] = [
        Self::P4,
        Self::P5,
        Self::P9,
        Self::P11,
        Self::P12,
        Self::P13,
        Self::P14,
    ];

    /// The goals asking for the row (P1's run also gives P6 its figures).
    fn goals(self) -> &'static [Goal] {
        match self {
            Self::P1 => &[Goal::P1, Goal::P6],
            Self::P2 => &[Goal::P2],
            Self::P3 | Self::P3OneRequest => &[Goal::P3],
            Self::P10 => &[Goal::P10],
            Self::P7 => &[Goal::P7],
            Self::P8 => &[Goal::P8],
            Self::P4 => &[Goal::P4],
            Self::P5 => &[Goal::P5],
            Self::P9 => &[Goal::P9],
            Self::P11 => &[Goal::P11],
            Self::P12 => &[Goal::P12],
            Self::P13 => &[Goal::P13],
            Self::P14 => &[Goal::P14],
        }
    }

    /// Whether the row has no baseline to measure alone (skipped with
    /// `--baselines-only`).
    fn crablet_only(self) -> bool {
        matches!(
            self,
            Self::P7
                | Self::P8
                | Self::P9
                | Self::P10
                | Self::P11
                | Self::P12
                | Self::P13
                | Self::P14
        )
    }

    /// The row's id, and the workload and goal the table shows when its
    /// measurement failed.
    fn failure(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::P1 => ("P1", "append-if, disjoint keys, 64 clients", ">= 1.5x"),
            Self::P2 => ("P2", "append-if p50 latency, 1 client", "<= 2x"),
            Self::P3 => (
                "P3",
                "hot keys (100, Zipf), 64 clients, read-append",
                ">= 1x, 0 violations",
            ),
            Self::P3OneRequest => (
                "P3 one-request",
                "hot keys (100, Zipf), 64 clients, require",
                ">= 1x, 0 violations",
            ),
            Self::P10 => (
                "P10",
                "require on 100 hot keys holding 20,000 events each vs fresh keys",
                ">= 0.8",
            ),
            Self::P7 => (
                "P7",
                "subscriptions: 100 own-tag + 10 all, 2,000 appends/s",
                "p99 <= 10 ms",
            ),
            Self::P8 => ("P8", "1,000 idle subscriptions", "<= 64 MiB"),
            Self::P4 => (
                "P4",
                "read one tag (10 events) @volume, 16 clients",
                ">= 1x",
            ),
            Self::P5 => ("P5", "P1 @volume vs P1 empty", ">= 0.8"),
            Self::P9 => (
                "P9",
                "new subscriber catching up @volume",
                ">= 100,000 events/s",
            ),
            Self::P11 => (
                "P11",
                "POST /project count over the volume, 16 clients",
                ">= 0.5x P4",
            ),
            Self::P12 => (
                "P12",
                "P4's reads from a streaming replica vs from the primary",
                replica::P12_GOAL_TEXT,
            ),
            Self::P13 => ("P13", "replica lag under P1's load", replica::P13_GOAL_TEXT),
            Self::P14 => (
                "P14",
                "P1 @volume beside one client's cold projections",
                expensive::P14_GOAL_TEXT,
            ),
        }
    }
}

impl Bench {
    /// Every asked goal, in order: the rows on stores of their own, the volume and
    /// the rows on it, the soak, then P6 (which reads P1's and the soak's RSS).
    async fn run_all(&mut self) -> anyhow::Result<()> {
        self.report.plan = Some(self.plan.clone());
        self.report.settings = postgres::server_settings(&self.tools, &self.admin).await?;
        eprintln!("bench: PostgreSQL settings {:?}", self.report.settings);
        let raw = self.db(DB_RAW);
        postgres::recreate_database(&self.tools, &self.admin, DB_RAW).await?;
        self.tools.psql(&raw, postgres::INSERT_TABLE_DDL).await?;
        let needs_empty = [Goal::P1, Goal::P2, Goal::P3, Goal::P6, Goal::P7, Goal::P8]
            .iter()
            .any(|&g| self.wants(g));
        if needs_empty && !self.cfg.baselines_only {
            postgres::recreate_database(&self.tools, &self.admin, DB_EMPTY).await?;
        }
        for step in Step::BEFORE_VOLUME {
            self.take(step).await;
        }
        if Step::ON_VOLUME.iter().any(|s| self.asks_for(*s)) {
            if let Err(e) = self.load_volume().await {
                let msg = format!("{e:#}");
                self.report.notes.push(format!("volume load failed: {msg}"));
                for step in Step::ON_VOLUME {
                    if self.asks_for(step) {
                        let (id, _, goal) = step.failure();
                        self.report.rows.push(Row::failed(id, "volume", goal, &msg));
                    }
                }
            } else {
                for step in Step::ON_VOLUME {
                    self.take(step).await;
                }
            }
        }
        if self.cfg.soak && !self.cfg.baselines_only {
            if let Err(e) = self.soak().await {
                self.report.notes.push(format!("soak failed: {e:#}"));
            }
        }
        if self.wants(Goal::P6) && !self.cfg.baselines_only {
            let row = self.p6_row();
            self.report.rows.push(row);
        }
        Ok(())
    }

    /// Whether one of the goals of `step` was asked for.
    fn asks_for(&self, step: Step) -> bool {
        step.goals().iter().any(|&g| self.wants(g))
    }

    /// Measures `step` if it was asked for (and can be measured), and records
    /// its row, or a failed row.
    async fn take(&mut self, step: Step) {
        if !self.asks_for(step) || (step.crablet_only() && self.cfg.baselines_only) {
            return;
        }
        let r = match step {
            Step::P1 => self.goal_p1().await,
            Step::P2 => self.goal_p2().await,
            Step::P3 => self.goal_p3(self.plan.p3(), "P3").await,
            Step::P3OneRequest => self.goal_p3(self.plan.p3_require(), "P3 one-request").await,
            Step::P10 => self.goal_p10().await,
            Step::P7 => self.goal_p7().await,
            Step::P8 => self.goal_p8().await,
            Step::P4 => self.goal_p4().await,
            Step::P5 => self.goal_p5().await,
            Step::P9 => self.goal_p9().await,
            Step::P11 => self.goal_p11().await,
            Step::P12 => self.goal_p12().await,
            Step::P13 => self.goal_p13().await,
            Step::P14 => self.goal_p14().await,
        };
        let (id, workload, goal) = step.failure();
        self.row_or_failure(r, id, workload, goal);
    }
}
