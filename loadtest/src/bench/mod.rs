//! The one-command benchmark: every performance goal (P1–P12, listed in [`Goal`]) measured
//! beside its baseline (raw PostgreSQL, or crablet itself in another setting), in one
//! invocation, on one PostgreSQL.
//!
//! Owns the plan (which workload, how long, in which database), the sequence of
//! phases, and the verdicts. It starts what it needs — a private cluster through
//! `crablet postgres` unless given a database URL, and `crablet serve` on a free
//! loopback port — and stops all of it, by pid, when it is done.
//!
//! Databases (created fresh on each run): `crablet_bench_raw` (the baselines'
//! plain tables), `crablet_bench_empty` (P1–P3, P6–P8), `crablet_bench_1m` (P4, P5,
//! P9, P11, P12, preloaded), `crablet_bench_history` (P10: hot keys with long
//! histories), `crablet_bench_soak` (`--soak`).
//!
//! - [`postgres`]: connection strings, psql/pgbench, the baselines' SQL.
//! - [`server`]: the cluster and server processes, RSS sampling.
//! - [`table`]: the printed table.
//! - `subscriptions`: P7–P9; `expensive`: P12.

mod expensive;
pub mod postgres;
pub mod server;
mod subscriptions;
pub mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::ValueEnum;
use serde::Serialize;

use crate::driver::{self, LiveCounters, RunConfig};
use crate::http::Target;
use crate::preload::{self, PreloadConfig, PreloadResult, EVENTS_PER_TAG};
use crate::procfs;
use crate::report::{ms, LabelReport, Report};
use crate::scenario::{Decision, ScenarioConfig, ScenarioKind};
use crate::wire::payload;
use postgres::{ConnInfo, PgbenchResult, PgbenchRun, Tools};
use server::{CrabletServer, PrivatePostgres, RssSample, RssSampler};
use table::{thousands, Row};

/// Length of the throughput phases (P1, P3, P5 and the insert baseline).
const THROUGHPUT_PHASE: Duration = Duration::from_secs(20);
/// Length of the latency phases (P2).
const LATENCY_PHASE: Duration = Duration::from_secs(10);
/// Length of the read phases (P4).
const READ_PHASE: Duration = Duration::from_secs(15);
/// Length of every phase with `--quick`.
const QUICK_PHASE: Duration = Duration::from_secs(5);
/// Warm-up load on a freshly started server before it is measured (pgbench, for
/// its part, excludes its connection time).
const WARMUP: Duration = Duration::from_secs(2);
/// Length of the `GET /health` runs that measure the HTTP floor (P2, P4 notes).
const HTTP_FLOOR_PHASE: Duration = Duration::from_secs(3);
/// Events stored for P4/P5.
const VOLUME_EVENTS: u64 = 1_000_000;
/// Events stored for P4/P5 with `--quick`.
const QUICK_VOLUME_EVENTS: u64 = 100_000;
/// Clients of the write goals (P1, P3, P5).
const WRITE_CLIENTS: usize = 64;
/// Clients of the read goal (P4).
const READ_CLIENTS: usize = 16;
/// pgbench threads (`-j`): the machine has 2 cores.
const PGBENCH_JOBS: usize = 2;
/// Events per preload append.
const PRELOAD_BATCH: u64 = 1000;
/// Concurrent preload appends.
const PRELOAD_CONCURRENCY: usize = 4;
/// Size of every event's data, bytes, on both sides.
const DATA_BYTES: usize = 64;
/// Hot keys of P3.
const HOT_KEYS: usize = 100;
/// Zipf exponent of P3.
const HOT_KEYS_ZIPF: f64 = 1.0;
/// RSS sampling interval.
const RSS_INTERVAL: Duration = Duration::from_secs(1);
/// RSS lines printed during a soak, every...
const SOAK_PRINT_INTERVAL: Duration = Duration::from_secs(30);
/// Default soak length.
pub const DEFAULT_SOAK: Duration = Duration::from_secs(600);

/// P1: conditional appends/s over raw INSERT tx/s, at least.
const P1_GOAL: f64 = 1.5;
/// P2: conditional append p50 over raw INSERT p50, at most.
const P2_GOAL: f64 = 2.0;
/// P3: decisions/s over raw INSERT tx/s, at least.
const P3_GOAL: f64 = 1.0;
/// P4: reads/s over pgbench GIN reads/s, at least.
const P4_GOAL: f64 = 1.0;
/// P5: P1 at volume over P1 on an empty store, at least.
const P5_GOAL: f64 = 0.8;

/// P10: require decisions on keys holding a long history over the same on
/// fresh keys, at least.
const P10_GOAL: f64 = 0.8;
/// P11: `/project` counts over the whole volume per second over P4's
/// reads/s, at least.
const P11_GOAL: f64 = 0.5;
/// Events each hot key holds before P10's decisions.
const HISTORY_EVENTS_PER_KEY: u64 = 20_000;

/// P6: server RSS under P1 load, MiB, at most.
const P6_GOAL_MIB: f64 = 100.0;

/// Database of the baselines' tables.
const DB_RAW: &str = "crablet_bench_raw";
/// crablet's empty store.
const DB_EMPTY: &str = "crablet_bench_empty";
/// crablet's preloaded store.
const DB_VOLUME: &str = "crablet_bench_1m";
/// crablet's store of hot keys with long histories (P10).
const DB_HISTORY: &str = "crablet_bench_history";
/// crablet's soak store.
const DB_SOAK: &str = "crablet_bench_soak";

/// The performance goals the benchmark measures (P1-P12; the README's Performance
/// section states each one with its target).
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
    /// P1's load on the volume store beside one client looping on `POST
    /// /project` of 10 first-evaluated sums over the whole volume, vs the same
    /// load alone, at least 0.33, and none of its requests failed.
    P12,
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
    fn of(cfg: &BenchConfig) -> Self {
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
    fn read_tags(&self) -> u64 {
        (self.volume_events / EVENTS_PER_TAG).max(1)
    }

    /// P1 (and P6 beside it): conditional appends on disjoint keys, empty store.
    fn p1(&self) -> Phase {
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
    fn p2(&self) -> Phase {
        Phase {
            name: "p2-append-if-1",
            tag: "p2",
            clients: 1,
            duration: secs(self.latency_s),
            ..self.p1()
        }
    }

    /// P3: read-decide-append on the hot keys, empty store.
    fn p3(&self) -> Phase {
        Phase {
            name: "p3-hot-keys-64",
            kind: ScenarioKind::HotKeys,
            tag: "p3",
            ..self.p1()
        }
    }

    /// P3's decisions as one request each: `require` instead of a read.
    fn p3_require(&self) -> Phase {
        Phase {
            name: "p3-hot-keys-require-64",
            tag: "p3r",
            decision: Decision::Require,
            ..self.p3()
        }
    }

    /// P10: P3's one-request decisions on keys that hold a long history.
    fn p10(&self) -> Phase {
        Phase {
            name: "p10-hot-keys-require-history-64",
            db: DB_HISTORY,
            tag: "p10",
            ..self.p3_require()
        }
    }

    /// P11: projections over the whole volume, appends trickling in.
    fn p11(&self) -> Phase {
        Phase {
            name: "p11-project-volume-16",
            kind: ScenarioKind::Project,
            tag: "p11",
            ..self.p4()
        }
    }

    /// P4: reads of one stored tag each, at volume.
    fn p4(&self) -> Phase {
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

    /// P12's innocent load: P1 at volume, measured alone (then beside the
    /// expensive client, under another name).
    fn p12(&self) -> Phase {
        Phase {
            name: "p12-append-if-64-volume-alone",
            tag: "p12",
            ..self.p5()
        }
    }

    /// P5: P1 at volume.
    fn p5(&self) -> Phase {
        Phase {
            name: "p5-append-if-64-volume",
            db: DB_VOLUME,
            tag: "p5",
            ..self.p1()
        }
    }

    /// The soak: P1's load for `duration`, on a store of its own.
    fn soak(&self, duration: Duration) -> Phase {
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
struct Phase {
    /// Name of the run in the report's `runs` and in the notes.
    name: &'static str,
    /// The store the server serves.
    db: &'static str,
    /// The workload.
    kind: ScenarioKind,
    /// Start of the run id, which every tag the run writes contains.
    tag: &'static str,
    /// Virtual clients.
    clients: usize,
    /// Length of the load.
    duration: Duration,
    /// How a hot-keys decision is sent.
    decision: Decision,
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
    /// Remarks printed under the table (errors, conflicts, anomalies).
    pub notes: Vec<String>,
    /// Wall time of the whole bench, seconds.
    pub elapsed_s: f64,
}

/// Runs the benchmark, prints progress to stderr, and returns the report. The
/// caller prints [`table::render`] of its rows and the notes.
pub async fn run(cfg: BenchConfig) -> anyhow::Result<BenchReport> {
    let started = Instant::now();
    let tmp = std::env::temp_dir().join(format!(
        "crablet-bench-{}-{}",
        std::process::id(),
        cfg.seed & 0xffff_ffff
    ));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    // The private cluster may run as an unprivileged user: let it into the folder.
    set_world_accessible(&tmp);
    eprintln!("bench: work folder {}", tmp.display());

    let tools = Tools::find()?;
    let crablet = if cfg.baselines_only && cfg.database_url.is_some() {
        None
    } else {
        Some(crablet_binary(cfg.crablet_bin.as_deref())?)
    };
    let mut cluster = None;
    let admin_url = match (&cfg.database_url, &crablet) {
        (Some(url), _) => url.clone(),
        (None, Some(bin)) => {
            eprintln!(
                "bench: starting a private PostgreSQL ({} postgres)",
                bin.display()
            );
            let pg =
                PrivatePostgres::start(bin, &tmp.join("pgdata"), &tmp.join("postgres.log")).await?;
            let url = pg
                .admin_url
                .clone()
                .unwrap_or_else(|| pg.database_url.clone());
            cluster = Some(pg);
            url
        }
        (None, None) => anyhow::bail!("no database URL and no crablet binary"),
    };

    let mut bench = Bench {
        plan: Plan::of(&cfg),
        tools,
        crablet,
        admin: ConnInfo::parse(&admin_url)?,
        tmp: tmp.clone(),
        server: None,
        server_starts: 0,
        p1_baseline: None,
        p1_crablet: None,
        p4_reads: None,
        report: BenchReport::default(),
        cfg,
    };
    let outcome = bench.run_all().await;
    if let Err(e) = &outcome {
        bench.report.notes.push(format!("bench aborted: {e:#}"));
    }
    bench.stop_server().await;
    if !bench.cfg.keep {
        for db in [DB_RAW, DB_EMPTY, DB_VOLUME, DB_SOAK] {
            if let Err(e) = postgres::drop_database(&bench.tools, &bench.admin, db).await {
                eprintln!("bench: could not drop {db}: {e:#}");
            }
        }
    }
    if let Some(pg) = cluster {
        if let Err(e) = pg.stop().await {
            eprintln!("bench: stopping the private PostgreSQL: {e:#}");
        }
    }
    if bench.cfg.keep {
        eprintln!("bench: kept {}", tmp.display());
    } else if let Err(e) = std::fs::remove_dir_all(&tmp) {
        eprintln!("bench: could not remove {}: {e}", tmp.display());
    }
    bench.report.elapsed_s = started.elapsed().as_secs_f64();
    outcome?;
    Ok(bench.report)
}

/// Best effort: mode 0777 on the work folder (the cluster may run as another user).
fn set_world_accessible(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    const WORLD_RWX: u32 = 0o777;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(WORLD_RWX));
}

/// The crablet binary: the given path, or `crablet` beside this executable.
fn crablet_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .parent()
            .context("executable has no folder")?
            .join("crablet"),
    };
    anyhow::ensure!(
        path.is_file(),
        "crablet binary not found at {} (build it: cargo build --release -p crablet, or pass --crablet-bin)",
        path.display()
    );
    Ok(path)
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
    /// P4 reads/s (P11's reference).
    p4_reads: Option<f64>,
    /// What has been measured.
    report: BenchReport,
}

impl Bench {
    fn wants(&self, goal: Goal) -> bool {
        self.cfg.goals.is_empty() || self.cfg.goals.contains(&goal)
    }

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

        if self.wants(Goal::P1) || self.wants(Goal::P6) {
            let r = self.goal_p1().await;
            self.row_or_failure(r, "P1", "append-if, disjoint keys, 64 clients", ">= 1.5x");
        }
        if self.wants(Goal::P2) {
            let r = self.goal_p2().await;
            self.row_or_failure(r, "P2", "append-if p50 latency, 1 client", "<= 2x");
        }
        if self.wants(Goal::P3) {
            let r = self.goal_p3(self.plan.p3(), "P3").await;
            self.row_or_failure(
                r,
                "P3",
                "hot keys (100, Zipf), 64 clients, read-append",
                ">= 1x, 0 violations",
            );
            let r = self.goal_p3(self.plan.p3_require(), "P3 one-request").await;
            self.row_or_failure(
                r,
                "P3 one-request",
                "hot keys (100, Zipf), 64 clients, require",
                ">= 1x, 0 violations",
            );
        }
        if self.wants(Goal::P10) && !self.cfg.baselines_only {
            let r = self.goal_p10().await;
            self.row_or_failure(
                r,
                "P10",
                "require on 100 hot keys holding 20,000 events each vs fresh keys",
                ">= 0.8",
            );
        }
        if self.wants(Goal::P7) && !self.cfg.baselines_only {
            let r = self.goal_p7().await;
            self.row_or_failure(
                r,
                "P7",
                "subscriptions: 100 own-tag + 10 all, 2,000 appends/s",
                "p99 <= 10 ms",
            );
        }
        if self.wants(Goal::P8) && !self.cfg.baselines_only {
            let r = self.goal_p8().await;
            self.row_or_failure(r, "P8", "1,000 idle subscriptions", "<= 64 MiB");
        }
        if [Goal::P4, Goal::P5, Goal::P9, Goal::P11, Goal::P12]
            .iter()
            .any(|&g| self.wants(g))
        {
            if let Err(e) = self.load_volume().await {
                let msg = format!("{e:#}");
                self.report.notes.push(format!("volume load failed: {msg}"));
                for (id, w, g) in [
                    (Goal::P4, "P4", ">= 1x"),
                    (Goal::P5, "P5", ">= 0.8"),
                    (Goal::P9, "P9", ">= 100,000 events/s"),
                    (Goal::P11, "P11", ">= 0.5x P4"),
                    (Goal::P12, "P12", expensive::P12_GOAL_TEXT),
                ] {
                    if self.wants(id) {
                        self.report.rows.push(Row::failed(w, "volume", g, &msg));
                    }
                }
            } else {
                if self.wants(Goal::P4) {
                    let r = self.goal_p4().await;
                    self.row_or_failure(
                        r,
                        "P4",
                        "read one tag (10 events) @volume, 16 clients",
                        ">= 1x",
                    );
                }
                if self.wants(Goal::P5) {
                    let r = self.goal_p5().await;
                    self.row_or_failure(r, "P5", "P1 @volume vs P1 empty", ">= 0.8");
                }
                if self.wants(Goal::P9) && !self.cfg.baselines_only {
                    let r = self.goal_p9().await;
                    self.row_or_failure(
                        r,
                        "P9",
                        "new subscriber catching up @volume",
                        ">= 100,000 events/s",
                    );
                }
                if self.wants(Goal::P11) && !self.cfg.baselines_only {
                    let r = self.goal_p11().await;
                    self.row_or_failure(
                        r,
                        "P11",
                        "POST /project count over the volume, 16 clients",
                        ">= 0.5x P4",
                    );
                }
                if self.wants(Goal::P12) && !self.cfg.baselines_only {
                    let r = self.goal_p12().await;
                    self.row_or_failure(
                        r,
                        "P12",
                        "P1 @volume beside one client's cold projections",
                        expensive::P12_GOAL_TEXT,
                    );
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

    fn row_or_failure(
        &mut self,
        r: anyhow::Result<Option<Row>>,
        id: &str,
        workload: &str,
        goal: &str,
    ) {
        match r {
            Ok(Some(row)) => self.report.rows.push(row),
            Ok(None) => {}
            Err(e) => {
                let msg = format!("{e:#}");
                eprintln!("bench: {id} failed: {msg}");
                self.report.notes.push(format!("{id} failed: {msg}"));
                self.report.rows.push(Row::failed(id, workload, goal, &msg));
            }
        }
    }

    fn db(&self, name: &str) -> ConnInfo {
        self.admin.with_dbname(name)
    }

    fn run_id(&self, phase: &str) -> String {
        // Distinct per invocation and phase, short enough for tags.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{phase}{:x}", (self.cfg.seed as u32) ^ nanos)
    }

    /// The server, running against database `db` (restarted if it died).
    async fn server_on(&mut self, db: &str) -> anyhow::Result<Target> {
        if let Some((server, current)) = &mut self.server {
            if current == db {
                match server.exited() {
                    None => return Ok(server.target.clone()),
                    Some(status) => {
                        let msg = format!(
                            "crablet serve exited ({status}) during the bench; log: {}",
                            server.log.display()
                        );
                        eprintln!("bench: {msg}");
                        self.report.notes.push(msg);
                    }
                }
            }
        }
        self.stop_server().await;
        let crablet = self.crablet.clone().context("no crablet binary")?;
        self.server_starts += 1;
        let log = self
            .tmp
            .join(format!("server-{}-{db}.log", self.server_starts));
        let url = self.db(db).to_conn_string();
        let server = CrabletServer::start(&crablet, &url, &log, self.cfg.token.as_deref()).await?;
        eprintln!(
            "bench: crablet serve pid {} on {} -> {db} (log {})",
            server.pid,
            server.target.url(),
            log.display()
        );
        let target = server.target.clone();
        self.server = Some((server, db.to_string()));
        Ok(target)
    }

    /// [`Self::server_on`], warmed up by a short load before it is measured.
    async fn warm_server_on(&mut self, db: &str) -> anyhow::Result<Target> {
        let target = self.server_on(db).await?;
        self.warm_up(&target).await?;
        Ok(target)
    }

    async fn stop_server(&mut self) {
        if let Some((server, _)) = self.server.take() {
            if let Err(e) = server.stop().await {
                eprintln!("bench: stopping crablet serve: {e:#}");
            }
        }
    }

    fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(|(s, _)| s.pid)
    }

    fn scenario(&self, kind: ScenarioKind, phase: &str) -> ScenarioConfig {
        ScenarioConfig {
            kind,
            run_id: self.run_id(phase),
            read_tags: self.plan.read_tags(),
            tag_prefix: "t".into(),
            hot_keys: HOT_KEYS,
            zipf_exponent: HOT_KEYS_ZIPF,
            decision: Decision::ReadAppend,
            data_bytes: DATA_BYTES,
            seed_reads: false,
        }
    }

    /// A closed-loop load of `kind` from `clients` for `duration`, as the warm-up
    /// and the HTTP floor run it: no setup, no verification, no progress lines.
    fn run_config(
        &self,
        target: &Target,
        kind: ScenarioKind,
        tag: &str,
        clients: usize,
        duration: Duration,
    ) -> RunConfig {
        RunConfig {
            target: target.clone(),
            scenario: self.scenario(kind, tag),
            clients,
            duration,
            rate: None,
            seed: self.cfg.seed,
            request_timeout: self.cfg.request_timeout,
            progress: false,
            setup: false,
            verify: false,
        }
    }

    /// Runs `phase` on the server of its store, as the server is (no warm-up);
    /// returns the server's target and the run's report.
    async fn run_phase(&mut self, phase: &Phase) -> anyhow::Result<(Target, Report)> {
        let target = self.server_on(phase.db).await?;
        let run = self.crablet_run(&target, phase, Arc::default()).await?;
        Ok((target, run))
    }

    /// [`Self::crablet_run`] while the server's RSS is sampled every
    /// [`RSS_INTERVAL`], for at most `max_sampling` (with a line printed every
    /// `print_every`, if given). The samples are returned even when the run fails.
    async fn crablet_run_sampling_rss(
        &mut self,
        target: &Target,
        phase: &Phase,
        max_sampling: Duration,
        print_every: Option<Duration>,
    ) -> anyhow::Result<(anyhow::Result<Report>, Vec<RssSample>)> {
        let pid = self.server_pid().context("no server")?;
        let live = Arc::new(LiveCounters::default());
        let sampler = RssSampler::start(pid, RSS_INTERVAL, max_sampling, live.clone(), print_every);
        let run = self.crablet_run(target, phase, live).await;
        Ok((run, sampler.finish().await))
    }

    /// Runs `phase` on `target` and records its report under the phase's name.
    async fn crablet_run(
        &mut self,
        target: &Target,
        phase: &Phase,
        live: Arc<LiveCounters>,
    ) -> anyhow::Result<Report> {
        self.crablet_run_as(target, phase, live, None).await
    }

    /// [`Self::crablet_run`], with the scenario's run id given (its keys were
    /// preloaded under it): such a run is not verified afterwards, since its
    /// keys hold events it did not write.
    async fn crablet_run_as(
        &mut self,
        target: &Target,
        phase: &Phase,
        live: Arc<LiveCounters>,
        run_id: Option<String>,
    ) -> anyhow::Result<Report> {
        let name = phase.name;
        eprintln!(
            "bench: {name}: crablet {} x{} for {:.0} s",
            phase.kind,
            phase.clients,
            phase.duration.as_secs_f64()
        );
        let server_pid = self.server_pid().map(|p| p.to_string());
        let server_cpu_before = server_pid.as_deref().and_then(procfs::process_cpu_s);
        let mut cfg = RunConfig {
            progress: phase.duration >= Duration::from_secs(60),
            setup: true,
            verify: true,
            ..self.run_config(target, phase.kind, phase.tag, phase.clients, phase.duration)
        };
        cfg.scenario.decision = phase.decision;
        if let Some(run_id) = run_id {
            cfg.scenario.run_id = run_id;
            cfg.verify = false;
        }
        let report = driver::run(&cfg, live).await?;
        eprint!("{}", report.summary());
        let server_cpu = server_pid
            .as_deref()
            .and_then(procfs::process_cpu_s)
            .zip(server_cpu_before)
            .map(|(after, before)| after - before);
        let ops: u64 = report.labels.iter().map(|l| l.requests).sum();
        if let (Some(server_s), Some(cpu)) = (server_cpu, report.cpu) {
            self.report.notes.push(format!(
                "{name}: machine {:.0}% busy; CPU per operation: crablet {:.1} us, load generator {:.1} us",
                cpu.machine_busy_pct,
                server_s * 1e6 / ops.max(1) as f64,
                report.generator_cpu_us_per_op.unwrap_or(0.0)
            ));
        }
        let errors = report.error_count();
        if errors > 0 {
            self.report.notes.push(format!(
                "{name}: {errors} failed requests {:?}; e.g. {:?}",
                report.labels.iter().map(|l| &l.errors).collect::<Vec<_>>(),
                report
                    .labels
                    .iter()
                    .flat_map(|l| l.error_samples.first())
                    .next()
            ));
        }
        if let Some(status) = self.server.as_mut().and_then(|(s, _)| s.exited()) {
            anyhow::bail!("crablet serve exited ({status}) during {name}");
        }
        self.report.runs.insert(name.to_string(), report.clone());
        Ok(report)
    }

    /// A short untimed load on a fresh server.
    async fn warm_up(&mut self, target: &Target) -> anyhow::Result<()> {
        let cfg = self.run_config(
            target,
            ScenarioKind::AppendIf,
            "w",
            self.plan.write_clients,
            WARMUP,
        );
        driver::run(&cfg, Arc::default()).await.map(|_| ())
    }

    /// `GET /health` for a few seconds: the HTTP round trip without the store, so
    /// a figure can be split into "HTTP" and "store".
    async fn http_floor(&mut self, target: &Target, clients: usize) -> anyhow::Result<Report> {
        let cfg = self.run_config(target, ScenarioKind::Health, "h", clients, HTTP_FLOOR_PHASE);
        let report = driver::run(&cfg, Arc::default()).await?;
        self.report
            .runs
            .insert(format!("http-floor-health-{clients}"), report.clone());
        Ok(report)
    }

    async fn pgbench(
        &mut self,
        name: &str,
        db: &str,
        script: &str,
        clients: usize,
        duration: Duration,
        log: bool,
    ) -> anyhow::Result<PgbenchResult> {
        eprintln!(
            "bench: {name}: pgbench -M prepared -c {clients} -j {} for {:.0} s",
            PGBENCH_JOBS.min(clients),
            duration.as_secs_f64()
        );
        let script_path = self.tmp.join(format!("{name}.sql"));
        std::fs::write(&script_path, script)
            .with_context(|| format!("writing {}", script_path.display()))?;
        let log_prefix = self.tmp.join(format!("{name}-log"));
        let result = self
            .tools
            .pgbench(
                &self.db(db),
                &PgbenchRun {
                    script: &script_path,
                    clients,
                    jobs: PGBENCH_JOBS,
                    duration,
                    log_prefix: log.then_some(log_prefix.as_path()),
                },
            )
            .await?;
        eprintln!(
            "bench: {name}: {:.0} tx/s, latency avg {:.3} ms, {} failed",
            result.tps, result.latency_avg_ms, result.failed
        );
        if result.failed > 0 {
            self.report.notes.push(format!(
                "{name}: pgbench reported {} failed transactions",
                result.failed
            ));
        }
        self.report
            .baselines
            .insert(name.to_string(), result.clone());
        Ok(result)
    }

    /// Raw 1-row INSERT tx/s with P1's clients and duration (the P1/P3 baseline), on
    /// a truncated table.
    async fn insert_baseline(&mut self, name: &str) -> anyhow::Result<f64> {
        self.tools
            .psql(&self.db(DB_RAW), "TRUNCATE bench_insert; CHECKPOINT")
            .await?;
        let script = postgres::insert_script(&payload(DATA_BYTES));
        let p1 = self.plan.p1();
        let r = self
            .pgbench(name, DB_RAW, &script, p1.clients, p1.duration, false)
            .await?;
        Ok(r.tps)
    }

    /// The P1/P3 baseline: measured once, by whichever goal comes first.
    async fn p1_baseline(&mut self) -> anyhow::Result<f64> {
        match self.p1_baseline {
            Some(b) => Ok(b),
            None => {
                let b = self.insert_baseline("p1-baseline-insert-64").await?;
                self.p1_baseline = Some(b);
                Ok(b)
            }
        }
    }

    /// crablet's P1 events/s on the empty store (P5's reference): P1's figure, or
    /// measured now on a fresh store when P1 did not run or failed.
    async fn p1_crablet(&mut self) -> anyhow::Result<f64> {
        if let Some(rate) = self.p1_crablet {
            return Ok(rate);
        }
        let phase = self.plan.p1();
        postgres::recreate_database(&self.tools, &self.admin, phase.db).await?;
        let target = self.warm_server_on(phase.db).await?;
        let run = self.crablet_run(&target, &phase, Arc::default()).await?;
        let rate = primary(&run)?.ok_per_s;
        self.p1_crablet = Some(rate);
        Ok(rate)
    }

    async fn goal_p1(&mut self) -> anyhow::Result<Option<Row>> {
        let base = self.p1_baseline().await?;
        if self.cfg.baselines_only {
            return Ok(Some(baseline_only_row(
                "P1",
                "raw INSERT, 64 clients",
                base,
                "tx/s",
            )));
        }
        // Warmed up, with the server's RSS sampled throughout for P6.
        let phase = self.plan.p1();
        let target = self.warm_server_on(phase.db).await?;
        let max_sampling = phase.duration * 2 + Duration::from_secs(60);
        let (run, rss) = self
            .crablet_run_sampling_rss(&target, &phase, max_sampling, None)
            .await?;
        self.report.rss_p1 = rss;
        let run = run?;
        let p = primary(&run)?;
        if p.conflicts > 0 {
            self.report.notes.push(format!(
                "P1: {} FALSE CONFLICTS (appends on disjoint keys rejected; must be 0)",
                p.conflicts
            ));
        }
        let rate = p.ok_per_s;
        self.p1_crablet = Some(rate);
        if !self.wants(Goal::P1) {
            return Ok(None);
        }
        let ratio = rate / base;
        self.report.notes.push(format!(
            "P1: crablet p50 {:.2} ms, p99 {:.2} ms; raw INSERT at 64 clients {:.0} tx/s",
            ms(p.latency_us.p50_us),
            ms(p.latency_us.p99_us),
            base
        ));
        Ok(Some(Row {
            id: "P1".into(),
            workload: "append-if, disjoint keys, 64 clients".into(),
            crablet: format!("{} events/s", thousands(rate)),
            baseline: format!("{} tx/s (INSERT)", thousands(base)),
            ratio: Some(ratio),
            goal: format!(">= {P1_GOAL}x"),
            met: Some(ratio >= P1_GOAL && p.conflicts == 0),
            crablet_value: Some(rate),
            baseline_value: Some(base),
        }))
    }

    async fn goal_p2(&mut self) -> anyhow::Result<Option<Row>> {
        let phase = self.plan.p2();
        self.tools
            .psql(&self.db(DB_RAW), "TRUNCATE bench_insert")
            .await?;
        let script = postgres::insert_script(&payload(DATA_BYTES));
        let base = self
            .pgbench(
                "p2-baseline-insert-1",
                DB_RAW,
                &script,
                phase.clients,
                phase.duration,
                true,
            )
            .await?;
        let base_p50 = base
            .latency
            .context("pgbench wrote no per-transaction log")?
            .p50_us;
        if self.cfg.baselines_only {
            return Ok(Some(baseline_only_row(
                "P2",
                "raw INSERT p50, 1 client",
                ms(base_p50),
                "ms",
            )));
        }
        let (target, run) = self.run_phase(&phase).await?;
        let p = primary(&run)?;
        let ratio = p.latency_us.p50_us as f64 / base_p50.max(1) as f64;
        if let Some(floor) = self.http_floor(&target, phase.clients).await?.primary() {
            self.report.notes.push(format!(
                "P2: HTTP floor (GET /health, 1 client): p50 {:.3} ms",
                ms(floor.latency_us.p50_us)
            ));
        }
        self.report.notes.push(format!(
            "P2: crablet p50/p99 {:.3}/{:.3} ms at {:.0} appends/s; raw INSERT p50/p99 {:.3}/{:.3} ms at {:.0} tx/s",
            ms(p.latency_us.p50_us),
            ms(p.latency_us.p99_us),
            p.ok_per_s,
            ms(base_p50),
            ms(base.latency.map_or(0, |l| l.p99_us)),
            base.tps
        ));
        Ok(Some(Row {
            id: "P2".into(),
            workload: "append-if p50 latency, 1 client".into(),
            crablet: format!("{:.3} ms", ms(p.latency_us.p50_us)),
            baseline: format!("{:.3} ms (INSERT)", ms(base_p50)),
            ratio: Some(ratio),
            goal: format!("<= {P2_GOAL}x"),
            met: Some(ratio <= P2_GOAL),
            crablet_value: Some(ms(p.latency_us.p50_us)),
            baseline_value: Some(ms(base_p50)),
        }))
    }

    /// P3 with `phase` (read-then-append, or one request with `require`),
    /// reported as row `id`.
    async fn goal_p3(&mut self, phase: Phase, id: &str) -> anyhow::Result<Option<Row>> {
        let base = self.p1_baseline().await?;
        if self.cfg.baselines_only {
            return Ok(None);
        }
        let (_, run) = self.run_phase(&phase).await?;
        let p = primary(&run)?;
        let v = run
            .verification
            .clone()
            .context("hot-keys run was not verified")?;
        let rate = p.decisions_per_s;
        let ratio = rate / base;
        self.report.notes.push(format!(
            "{id}: {:.0} accepted + {:.0} rejected decisions/s, p50 {:.2} ms, p99 {:.2} ms; verification: {} events on {} keys, {} violations, {} unparsable, {} of {} acknowledged missing",
            p.ok_per_s,
            p.decisions_per_s - p.ok_per_s,
            ms(p.latency_us.p50_us),
            ms(p.latency_us.p99_us),
            v.events_checked,
            v.keys_checked,
            v.violations,
            v.unparsable,
            v.lost_acknowledged,
            v.acknowledged_checked
        ));
        for d in &v.details {
            self.report.notes.push(format!("{id} violation: {d}"));
        }
        Ok(Some(Row {
            id: id.into(),
            workload: format!(
                "hot keys (100, Zipf 1.0), 64 clients, {}",
                phase.decision.name()
            ),
            crablet: format!(
                "{} decisions/s, {} violations",
                thousands(rate),
                v.violations
            ),
            baseline: format!("{} tx/s (INSERT)", thousands(base)),
            ratio: Some(ratio),
            goal: format!(">= {P3_GOAL}x, 0 violations"),
            met: Some(ratio >= P3_GOAL && v.passed()),
            crablet_value: Some(rate),
            baseline_value: Some(base),
        }))
    }

    /// Stores the volume on both sides: crablet's preload (batched appends) and the
    /// GIN table, each vacuumed and analyzed.
    async fn load_volume(&mut self) -> anyhow::Result<()> {
        let events = self.plan.volume_events;
        let data = payload(DATA_BYTES);
        if !self.cfg.baselines_only {
            postgres::recreate_database(&self.tools, &self.admin, DB_VOLUME).await?;
            let target = self.server_on(DB_VOLUME).await?;
            eprintln!(
                "bench: preloading {events} events ({PRELOAD_BATCH} per append, {PRELOAD_CONCURRENCY} concurrent)"
            );
            let result = preload::preload(
                &target,
                &PreloadConfig {
                    events,
                    batch: PRELOAD_BATCH,
                    concurrency: PRELOAD_CONCURRENCY,
                    tag_prefix: "t".into(),
                    events_per_tag: EVENTS_PER_TAG,
                    data_bytes: DATA_BYTES,
                    quiet: false,
                },
            )
            .await?;
            eprintln!(
                "bench: preloaded {} events in {:.1} s ({:.0} events/s)",
                result.events, result.elapsed_s, result.events_per_s
            );
            self.report.notes.push(format!(
                "preload: {} events in {:.1} s = {:.0} events/s ({} batches retried after 429/503)",
                result.events, result.elapsed_s, result.events_per_s, result.retries
            ));
            self.report.preload = Some(result);
            self.tools
                .psql(&self.db(DB_VOLUME), "VACUUM ANALYZE")
                .await?;
        }
        if self.wants(Goal::P4) {
            eprintln!("bench: building the GIN baseline table ({events} rows)");
            let t = Instant::now();
            for sql in postgres::gin_table_sql(events, &data) {
                self.tools.psql(&self.db(DB_RAW), &sql).await?;
            }
            self.report.gin_load_s = Some(t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn goal_p4(&mut self) -> anyhow::Result<Option<Row>> {
        let phase = self.plan.p4();
        let clients = phase.clients;
        let base = self
            .pgbench(
                "p4-baseline-gin-read-16",
                DB_RAW,
                &postgres::gin_read_script(self.plan.read_tags()),
                clients,
                phase.duration,
                false,
            )
            .await?;
        let volume = self.plan.volume_events;
        if self.cfg.baselines_only {
            return Ok(Some(baseline_only_row(
                "P4",
                "GIN read, 16 clients",
                base.tps,
                "tx/s",
            )));
        }
        let (target, run) = self.run_phase(&phase).await?;
        let p = primary(&run)?;
        if let Some(floor) = self.http_floor(&target, clients).await?.primary() {
            self.report.notes.push(format!(
                "P4: HTTP floor (GET /health, {clients} clients): {:.0} req/s, p50 {:.3} ms",
                floor.ok_per_s,
                ms(floor.latency_us.p50_us)
            ));
        }
        let per_read = if p.ok > 0 {
            p.items as f64 / p.ok as f64
        } else {
            0.0
        };
        let off_by = (per_read - EVENTS_PER_TAG as f64).abs();
        if off_by > f64::EPSILON {
            self.report.notes.push(format!(
                "P4: reads returned {per_read:.2} events on average, expected {EVENTS_PER_TAG}"
            ));
        }
        let rate = p.ok_per_s;
        self.p4_reads = Some(rate);
        let ratio = rate / base.tps;
        self.report.notes.push(format!(
            "P4: crablet p50 {:.2} ms, p99 {:.2} ms; pgbench latency avg {:.2} ms",
            ms(p.latency_us.p50_us),
            ms(p.latency_us.p99_us),
            base.latency_avg_ms
        ));
        Ok(Some(Row {
            id: "P4".into(),
            workload: format!(
                "read one tag (10 events), {} stored, 16 clients",
                thousands(volume as f64)
            ),
            crablet: format!("{} reads/s", thousands(rate)),
            baseline: format!("{} tx/s (GIN)", thousands(base.tps)),
            ratio: Some(ratio),
            goal: format!(">= {P4_GOAL}x"),
            met: Some(ratio >= P4_GOAL && off_by < f64::EPSILON),
            crablet_value: Some(rate),
            baseline_value: Some(base.tps),
        }))
    }

    /// P10: the one-request decisions of P3 on keys that already hold
    /// [`HISTORY_EVENTS_PER_KEY`] events each, against the same decisions on
    /// fresh keys of the same store, measured just before on the same server
    /// (so both sides see the same store size and the same disk).
    async fn goal_p10(&mut self) -> anyhow::Result<Option<Row>> {
        postgres::recreate_database(&self.tools, &self.admin, DB_HISTORY).await?;
        let target = self.server_on(DB_HISTORY).await?;
        let run_id = self.run_id("p10");
        let events = HISTORY_EVENTS_PER_KEY * HOT_KEYS as u64;
        eprintln!("bench: P10: preloading {events} events on {HOT_KEYS} hot keys");
        let loaded = preload::preload(
            &target,
            &PreloadConfig {
                events,
                batch: PRELOAD_BATCH,
                concurrency: PRELOAD_CONCURRENCY,
                tag_prefix: format!("hot:{run_id}"),
                events_per_tag: HISTORY_EVENTS_PER_KEY,
                data_bytes: DATA_BYTES,
                quiet: true,
            },
        )
        .await?;
        // The load's dirty pages written out before anything is measured.
        self.tools
            .psql(&self.db(DB_HISTORY), "VACUUM ANALYZE")
            .await?;
        self.tools.psql(&self.db(DB_HISTORY), "CHECKPOINT").await?;
        let fresh_phase = Phase {
            name: "p10-hot-keys-require-fresh-64",
            ..self.plan.p10()
        };
        let fresh_run = self
            .crablet_run_as(&target, &fresh_phase, Arc::default(), None)
            .await?;
        let fresh = primary(&fresh_run)?.decisions_per_s;
        let phase = self.plan.p10();
        let run = self
            .crablet_run_as(&target, &phase, Arc::default(), Some(run_id))
            .await?;
        let p = primary(&run)?;
        let rate = p.decisions_per_s;
        let ratio = rate / fresh;
        self.report.notes.push(format!(
            "P10: {:.0} decisions/s on keys holding {HISTORY_EVENTS_PER_KEY} events each (preloaded in {:.1} s), p50 {:.2} ms, p99 {:.2} ms; {fresh:.0}/s on fresh keys",
            rate,
            loaded.elapsed_s,
            ms(p.latency_us.p50_us),
            ms(p.latency_us.p99_us),
        ));
        Ok(Some(Row {
            id: "P10".into(),
            workload: format!(
                "require, 100 hot keys holding {} events each, 64 clients",
                thousands(HISTORY_EVENTS_PER_KEY as f64)
            ),
            crablet: format!("{} decisions/s", thousands(rate)),
            baseline: format!("{} decisions/s (fresh keys)", thousands(fresh)),
            ratio: Some(ratio),
            goal: format!(">= {P10_GOAL}"),
            met: Some(ratio >= P10_GOAL),
            crablet_value: Some(rate),
            baseline_value: Some(fresh),
        }))
    }

    /// P11: `POST /project` of a count over every stored event, appends
    /// trickling in, against P4's reads/s (measured now if P4 did not run).
    async fn goal_p11(&mut self) -> anyhow::Result<Option<Row>> {
        let reads = match self.p4_reads {
            Some(rate) => rate,
            None => {
                let (_, run) = self.run_phase(&self.plan.p4()).await?;
                primary(&run)?.ok_per_s
            }
        };
        let (_, run) = self.run_phase(&self.plan.p11()).await?;
        let p = primary(&run)?;
        let rate = p.ok_per_s;
        let ratio = rate / reads;
        let appended = run
            .labels
            .iter()
            .find(|l| l.label == crate::scenario::LABEL_APPEND)
            .map_or(0.0, |l| l.ok_per_s);
        self.report.notes.push(format!(
            "P11: {rate:.0} projections/s over {} events, p50 {:.2} ms, p99 {:.2} ms, with {appended:.0} appends/s trickling in; P4 {reads:.0} reads/s",
            thousands(self.plan.volume_events as f64),
            ms(p.latency_us.p50_us),
            ms(p.latency_us.p99_us),
        ));
        Ok(Some(Row {
            id: "P11".into(),
            workload: format!(
                "POST /project count over {} events, 16 clients",
                thousands(self.plan.volume_events as f64)
            ),
            crablet: format!("{} projections/s", thousands(rate)),
            baseline: format!("{} reads/s (P4)", thousands(reads)),
            ratio: Some(ratio),
            goal: format!(">= {P11_GOAL}x"),
            met: Some(ratio >= P11_GOAL),
            crablet_value: Some(rate),
            baseline_value: Some(reads),
        }))
    }

    async fn goal_p5(&mut self) -> anyhow::Result<Option<Row>> {
        if self.cfg.baselines_only {
            return Ok(None);
        }
        let empty = self.p1_crablet().await?;
        let (_, run) = self.run_phase(&self.plan.p5()).await?;
        let p = primary(&run)?;
        let rate = p.ok_per_s;
        let ratio = rate / empty;
        if p.conflicts > 0 {
            self.report
                .notes
                .push(format!("P5: {} FALSE CONFLICTS (must be 0)", p.conflicts));
        }
        // The disk may have slowed down since P1 (it does on these machines): measure
        // the raw INSERT again so a drop can be told apart from crablet's own.
        if let Ok(again) = self.insert_baseline("p5-baseline-insert-64-again").await {
            if let Some(first) = self.p1_baseline {
                self.report.notes.push(format!(
                    "P5: raw INSERT at 64 clients re-measured now: {again:.0} tx/s (was {first:.0} at P1, ratio {:.2})",
                    again / first
                ));
            }
        }
        Ok(Some(Row {
            id: "P5".into(),
            workload: format!(
                "P1 with {} events stored vs empty",
                thousands(self.plan.volume_events as f64)
            ),
            crablet: format!("{} events/s", thousands(rate)),
            baseline: format!("{} events/s (empty)", thousands(empty)),
            ratio: Some(ratio),
            goal: format!(">= {P5_GOAL}"),
            met: Some(ratio >= P5_GOAL && p.conflicts == 0),
            crablet_value: Some(rate),
            baseline_value: Some(empty),
        }))
    }

    async fn soak(&mut self) -> anyhow::Result<()> {
        let phase = self.plan.soak(self.cfg.soak_duration);
        postgres::recreate_database(&self.tools, &self.admin, phase.db).await?;
        let target = self.server_on(phase.db).await?;
        let max_sampling = phase.duration + Duration::from_secs(120);
        let (run, samples) = self
            .crablet_run_sampling_rss(&target, &phase, max_sampling, Some(SOAK_PRINT_INTERVAL))
            .await?;
        let run = run?;
        let flatness = server::flatness(&samples);
        if let Some(f) = flatness {
            self.report.notes.push(format!(
                "soak: RSS {:.1} MiB in the first minute, {:.1} MiB in the last ({:+.1} MiB): {}",
                f.warm_mib,
                f.final_mib,
                f.growth_mib,
                if f.flat { "flat" } else { "GROWING" }
            ));
        }
        self.report.soak = Some(SoakReport {
            run,
            samples,
            flatness,
        });
        Ok(())
    }

    fn p6_row(&self) -> Row {
        let max = self
            .report
            .rss_p1
            .iter()
            .map(|s| s.rss_mib)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let Some(max) = max else {
            return Row::failed(
                "P6",
                "server RSS under P1 load",
                "<= 100 MiB",
                "no RSS samples",
            );
        };
        let soak = self.report.soak.as_ref().and_then(|s| {
            let f = s.flatness?;
            let max = s.samples.iter().map(|x| x.rss_mib).fold(0.0, f64::max);
            Some((f, max))
        });
        let (crablet, met, goal) = match soak {
            Some((f, soak_max)) => (
                format!(
                    "{max:.1} MiB max (soak: {soak_max:.1} max, {:+.1} MiB)",
                    f.growth_mib
                ),
                max.max(soak_max) <= P6_GOAL_MIB && f.flat,
                format!("<= {P6_GOAL_MIB:.0} MiB, flat"),
            ),
            None => (
                format!("{max:.1} MiB max"),
                max <= P6_GOAL_MIB,
                format!("<= {P6_GOAL_MIB:.0} MiB"),
            ),
        };
        Row {
            id: "P6".into(),
            workload: "server RSS under the P1 load".into(),
            crablet,
            baseline: "-".into(),
            ratio: None,
            goal,
            met: Some(met),
            crablet_value: Some(max),
            baseline_value: None,
        }
    }
}

/// The run's headline figures; an error when it has none.
fn primary(run: &Report) -> anyhow::Result<&LabelReport> {
    run.primary()
        .with_context(|| format!("no {} figures", run.primary_label))
}

/// A row that shows only a baseline (`--baselines-only`).
fn baseline_only_row(id: &str, workload: &str, value: f64, unit: &str) -> Row {
    Row {
        id: id.into(),
        workload: workload.into(),
        crablet: "-".into(),
        baseline: format!("{value:.3} {unit}"),
        ratio: None,
        goal: "-".into(),
        met: None,
        crablet_value: None,
        baseline_value: Some(value),
    }
}
