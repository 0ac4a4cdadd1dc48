//! The runner of the benchmark: the work folder and the private cluster of one
//! invocation, the crablet server each phase needs, and the runs themselves
//! (crablet loads, pgbench baselines, warm-ups, HTTP floors), each recorded in
//! the report as it ends.
//!
//! Owns the processes' lifetime (through [`super::server`]) and the report's `runs`,
//! `baselines` and per-run notes; the goals (in their own modules) only read
//! figures and write rows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::plan::{
    Phase, Plan, DATA_BYTES, DB_EMPTY, DB_RAW, DB_SOAK, DB_VOLUME, HOT_KEYS, HOT_KEYS_ZIPF,
    PRELOAD_BATCH, PRELOAD_CONCURRENCY,
};
use super::postgres::{self, ConnInfo, PgbenchResult, PgbenchRun, Tools};
use super::server::{CrabletServer, PrivatePostgres, RssSample, RssSampler};
use super::table::Row;
use super::{Bench, BenchConfig, BenchReport, Goal};
use crate::driver::{self, LiveCounters, RunConfig};
use crate::http::Target;
use crate::preload::{self, PreloadConfig, PreloadResult};
use crate::procfs;
use crate::report::{LabelReport, Report};
use crate::scenario::{Decision, ScenarioConfig, ScenarioKind};

/// Warm-up load on a freshly started server before it is measured (pgbench, for
/// its part, excludes its connection time).
const WARMUP: Duration = Duration::from_secs(2);
/// Length of the `GET /health` runs that measure the HTTP floor (P2, P4 notes).
const HTTP_FLOOR_PHASE: Duration = Duration::from_secs(3);
/// pgbench threads (`-j`): the machine has 2 cores.
const PGBENCH_JOBS: usize = 2;
/// RSS sampling interval.
const RSS_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the benchmark, prints progress to stderr, and returns the report. The
/// caller prints [`super::table::render`] of its rows and the notes.
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
        replica: None,
        p4_reads: None,
        report: BenchReport::default(),
        cfg,
    };
    let outcome = bench.run_all().await;
    if let Err(e) = &outcome {
        bench.report.notes.push(format!("bench aborted: {e:#}"));
    }
    bench.stop_server().await;
    if let Some(replica) = bench.replica.take() {
        if let Err(e) = replica.stop().await {
            eprintln!("bench: stopping the replica: {e:#}");
        }
    }
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

impl Bench {
    /// Whether `goal` was asked for (`--only`; all by default).
    pub(super) fn wants(&self, goal: Goal) -> bool {
        self.cfg.goals.is_empty() || self.cfg.goals.contains(&goal)
    }

    /// Records the row a goal measured, or, when it failed, a failed row with
    /// `id`, `workload` and `goal` and a note.
    pub(super) fn row_or_failure(
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

    /// Connection to database `name` of the same server.
    pub(super) fn db(&self, name: &str) -> ConnInfo {
        self.admin.with_dbname(name)
    }

    /// A run id for `phase`, distinct per invocation.
    pub(super) fn run_id(&self, phase: &str) -> String {
        // Distinct per invocation and phase, short enough for tags.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{phase}{:x}", (self.cfg.seed as u32) ^ nanos)
    }

    /// The server, running against database `db` (restarted if it died).
    pub(super) async fn server_on(&mut self, db: &str) -> anyhow::Result<Target> {
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
    pub(super) async fn warm_server_on(&mut self, db: &str) -> anyhow::Result<Target> {
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

    pub(super) fn server_pid(&self) -> Option<u32> {
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
    pub(super) fn run_config(
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
    pub(super) async fn run_phase(&mut self, phase: &Phase) -> anyhow::Result<(Target, Report)> {
        let target = self.server_on(phase.db).await?;
        let run = self.crablet_run(&target, phase, Arc::default()).await?;
        Ok((target, run))
    }

    /// [`Self::crablet_run`] while the server's RSS is sampled every
    /// [`RSS_INTERVAL`], for at most `max_sampling` (with a line printed every
    /// `print_every`, if given). The samples are returned even when the run fails.
    pub(super) async fn crablet_run_sampling_rss(
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
    pub(super) async fn crablet_run(
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
    pub(super) async fn crablet_run_as(
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
    pub(super) async fn http_floor(
        &mut self,
        target: &Target,
        clients: usize,
    ) -> anyhow::Result<Report> {
        let cfg = self.run_config(target, ScenarioKind::Health, "h", clients, HTTP_FLOOR_PHASE);
        let report = driver::run(&cfg, Arc::default()).await?;
        self.report
            .runs
            .insert(format!("http-floor-health-{clients}"), report.clone());
        Ok(report)
    }

    /// Runs `script` with pgbench against `db` (per-transaction log with `log`)
    /// and records the result under `name`.
    pub(super) async fn pgbench(
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

    /// Stores `events` events on `target` in batched appends, `events_per_tag`
    /// under each tag `<tag_prefix>:<n>` (with `quiet`, no progress lines).
    pub(super) async fn preload(
        &self,
        target: &Target,
        events: u64,
        tag_prefix: String,
        events_per_tag: u64,
        quiet: bool,
    ) -> anyhow::Result<PreloadResult> {
        let cfg = PreloadConfig {
            events,
            batch: PRELOAD_BATCH,
            concurrency: PRELOAD_CONCURRENCY,
            tag_prefix,
            events_per_tag,
            data_bytes: DATA_BYTES,
            quiet,
        };
        preload::preload(target, &cfg).await
    }
}

/// The run's headline figures; an error when it has none.
pub(super) fn primary(run: &Report) -> anyhow::Result<&LabelReport> {
    run.primary()
        .with_context(|| format!("no {} figures", run.primary_label))
}
