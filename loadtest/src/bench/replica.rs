//! P12 and P13: a streaming replica of the bench's private PostgreSQL.
//!
//! The replica is made once, when the first of them runs, after the volume is
//! stored: `pg_basebackup -R` from the primary as the cluster's superuser (a
//! `local replication` line is added to the primary's pg_hba.conf first), then
//! `pg_ctl start` on a port and socket directory of its own, as the owner of the
//! primary's data (PostgreSQL refuses to run as root). It is ready once it
//! accepts connections and has replayed every stored event.
//!
//! - P12: P4's reads served by the primary, then by a second `crablet serve`
//!   started with `--replica-url` at the replica; every reply's
//!   `X-Crablet-Source` header is counted.
//! - P13: P1's load on the volume store while the heads of both databases are
//!   sampled every few milliseconds (plain SQL connections), and probe appends
//!   measure the time from their acknowledgement to their visibility on the
//!   replica.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crablet::embedded::postgres_tool;
use crablet_model::{AppendRequest, NewEvent, Position};
use serde::Serialize;
use tokio::process::Command;

use super::plan::{Phase, DATA_BYTES, DB_VOLUME};
use super::postgres::ConnInfo;
use super::runner::primary;
use super::server::{free_port, CrabletServer};
use super::table::{thousands, Figure, Row};
use super::Bench;
use crate::driver::{self, LiveCounters};
use crate::http::{AppendOutcome, Conn, SourceCounts, SourceTally, Target};
use crate::preload::payload;
use crate::report::{ms, Report};
use crate::scenario::ScenarioKind;

/// P12: reads/s from the replica over reads/s from the primary, at least.
const P12_GOAL: f64 = 0.9;
/// P12's goal as the table states it.
pub(super) const P12_GOAL_TEXT: &str = ">= 0.9, served by the replica";
/// P13: p99 of the time from an append's acknowledgement to its visibility on
/// the replica, at most (ms).
const P13_GOAL_MS: f64 = 50.0;
/// P13's goal as the table states it.
pub(super) const P13_GOAL_TEXT: &str = "p99 <= 50 ms";

/// The line that lets the superuser replicate over the private socket.
const HBA_REPLICATION_LINE: &str = "local   replication   all   trust";
/// Bound on `pg_basebackup` (the whole volume is copied).
const BASEBACKUP_TIMEOUT: Duration = Duration::from_secs(900);
/// Bound on `pg_ctl start -w` / `stop -w`, seconds.
const PG_CTL_TIMEOUT_S: u64 = 300;
/// Bound on the replica replaying the stored volume once started.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);
/// Poll interval while the replica catches up.
const CATCH_UP_POLL: Duration = Duration::from_millis(200);
/// Read load on a freshly started server before it is measured.
const READ_WARMUP: Duration = Duration::from_secs(2);
/// P13: interval between two samples of both heads.
const HEAD_SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// P13: interval between two probe appends.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// P13: interval between two looks at the replica's head after a probe.
const VISIBILITY_POLL: Duration = Duration::from_millis(1);
/// P13: a probe not visible on the replica after this long is counted as
/// timed out (and as this long in the percentiles).
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(10);
/// The head of a store: its last position (0 when empty).
const HEAD_SQL: &str = "SELECT coalesce(max(position), 0) FROM events";

/// The running replica.
pub(super) struct Replica {
    /// Its data directory.
    pgdata: PathBuf,
    /// The uid and gid its programs run as (the owner of the primary's data),
    /// when that is not this process's user.
    owner: Option<(u32, u32)>,
    /// The superuser's connection to it (the maintenance database).
    admin: ConnInfo,
}

impl Replica {
    /// Connection to database `name` of the replica.
    pub(super) fn db(&self, name: &str) -> ConnInfo {
        self.admin.with_dbname(name)
    }

    /// `pg_ctl stop -m fast` on it.
    pub(super) async fn stop(self) -> anyhow::Result<()> {
        let mut cmd = tool("pg_ctl", self.owner)?;
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "fast", "-w", "-t"])
            .arg(PG_CTL_TIMEOUT_S.to_string());
        run_tool(
            cmd,
            "pg_ctl stop (replica)",
            Duration::from_secs(PG_CTL_TIMEOUT_S + 10),
        )
        .await
        .map(|_| ())
    }
}

/// A PostgreSQL program, run as `owner` when given.
fn tool(name: &str, owner: Option<(u32, u32)>) -> anyhow::Result<Command> {
    let path = postgres_tool(name).with_context(|| format!("{name} not found"))?;
    let mut cmd = Command::new(path);
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    Ok(cmd)
}

/// Runs `cmd` to its end within `timeout`; its output, or an error with it.
async fn run_tool(mut cmd: Command, what: &str, timeout: Duration) -> anyhow::Result<String> {
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .with_context(|| format!("{what} timed out"))?
        .with_context(|| format!("running {what}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        text.trim()
    );
    Ok(text)
}

/// Adds [`HBA_REPLICATION_LINE`] to `hba` unless a replication line is there.
fn allow_local_replication(hba: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(hba).with_context(|| format!("reading {}", hba.display()))?;
    if has_local_replication(&text) {
        return Ok(());
    }
    let mut text = text;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("# Added by crablet-loadtest bench: its streaming replica (P12, P13).\n");
    text.push_str(HBA_REPLICATION_LINE);
    text.push('\n');
    // Written in place: the file keeps its owner and mode.
    std::fs::write(hba, text).with_context(|| format!("writing {}", hba.display()))
}

/// Whether a pg_hba.conf text lets local connections replicate.
fn has_local_replication(text: &str) -> bool {
    text.lines().any(|line| {
        let fields: Vec<&str> = line
            .split('#')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        fields.first() == Some(&"local") && fields.get(1) == Some(&"replication")
    })
}

/// Value at quantile `q` (0..=1) of sorted `values` (nearest rank); 0 when empty.
fn quantile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A plain SQL connection (no TLS: the private cluster is on a unix socket).
async fn connect(conn: &ConnInfo) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) =
        tokio_postgres::connect(&conn.to_conn_string(), tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {}", conn.to_conn_string()))?;
    tokio::spawn(async move {
        // Ends when the client is dropped; nothing to act on.
        let _ = connection.await;
    });
    Ok(client)
}

/// The head of the store `client` is connected to.
async fn head(client: &tokio_postgres::Client) -> anyhow::Result<Position> {
    let row = client.query_one(HEAD_SQL, &[]).await?;
    Ok(row.get(0))
}

/// What P13 measured, as written to `--json`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ReplicaLag {
    /// Samples of both heads taken during the load.
    pub samples: usize,
    /// Primary head - replica head, positions: median.
    pub lag_positions_p50: u64,
    /// Primary head - replica head, positions: p99.
    pub lag_positions_p99: u64,
    /// Primary head - replica head, positions: largest.
    pub lag_positions_max: u64,
    /// Probe appends acknowledged.
    pub probes: usize,
    /// Probes not visible on the replica within the bound.
    pub probes_timed_out: usize,
    /// Acknowledgement to visibility on the replica, ms: median.
    pub visible_ms_p50: f64,
    /// Acknowledgement to visibility on the replica, ms: p99.
    pub visible_ms_p99: f64,
    /// Acknowledgement to visibility on the replica, ms: largest.
    pub visible_ms_max: f64,
}

/// While the load runs (from its first completed operation, for `length`):
/// both heads every [`HEAD_SAMPLE_EVERY`]; returns primary - replica per sample.
async fn sample_heads(
    on_primary: tokio_postgres::Client,
    on_replica: tokio_postgres::Client,
    live: Arc<LiveCounters>,
    length: Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<u64>> {
    let mut lags = Vec::new();
    let mut started: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        if started.is_none() && live.completed.load(Ordering::Relaxed) > 0 {
            started = Some(Instant::now());
        }
        if let Some(at) = started {
            if at.elapsed() > length {
                break;
            }
            let (p, r) = tokio::join!(head(&on_primary), head(&on_replica));
            lags.push(u64::try_from(p? - r?).unwrap_or(0));
        }
        tokio::time::sleep(HEAD_SAMPLE_EVERY).await;
    }
    Ok(lags)
}

/// While the load runs: one append every [`PROBE_EVERY`] under `tag`, then
/// the replica's head polled every [`VISIBILITY_POLL`] until it reaches the
/// append's position; returns each wait, and how many timed out.
async fn probe_visibility(
    mut conn: Conn,
    on_replica: tokio_postgres::Client,
    tag: String,
    live: Arc<LiveCounters>,
    length: Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let request = AppendRequest {
        events: vec![NewEvent::new("LagProbe", payload(DATA_BYTES)).tag(tag)],
        condition: None,
        require: Vec::new(),
    };
    let mut waits = Vec::new();
    let mut timed_out = 0;
    let mut started: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        if started.is_none() && live.completed.load(Ordering::Relaxed) > 0 {
            started = Some(Instant::now());
        }
        let Some(at) = started else {
            tokio::time::sleep(VISIBILITY_POLL).await;
            continue;
        };
        if at.elapsed() > length {
            break;
        }
        let position = match conn.append(&request).await {
            Ok(AppendOutcome::Appended {
                last_position: Some(p),
            }) => p,
            Ok(other) => anyhow::bail!("probe append answered {other:?}, no position"),
            // Under load a probe may be refused (429/503): try the next one.
            Err(_) => {
                tokio::time::sleep(PROBE_EVERY).await;
                continue;
            }
        };
        let acknowledged = Instant::now();
        loop {
            if head(&on_replica).await? >= position {
                waits.push(acknowledged.elapsed());
                break;
            }
            if acknowledged.elapsed() > VISIBILITY_TIMEOUT {
                timed_out += 1;
                waits.push(VISIBILITY_TIMEOUT);
                break;
            }
            tokio::time::sleep(VISIBILITY_POLL).await;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    Ok((waits, timed_out))
}

/// P13's figures from the samples and the probes.
fn replica_lag(mut lags: Vec<u64>, mut waits: Vec<Duration>, timed_out: usize) -> ReplicaLag {
    lags.sort_unstable();
    waits.sort_unstable();
    let wait_ms = |q: f64| quantile(&waits, q).as_secs_f64() * 1e3;
    ReplicaLag {
        samples: lags.len(),
        lag_positions_p50: quantile(&lags, 0.5),
        lag_positions_p99: quantile(&lags, 0.99),
        lag_positions_max: lags.last().copied().unwrap_or(0),
        probes: waits.len(),
        probes_timed_out: timed_out,
        visible_ms_p50: wait_ms(0.5),
        visible_ms_p99: wait_ms(0.99),
        visible_ms_max: wait_ms(1.0),
    }
}

impl Bench {
    /// Makes the replica unless it runs already.
    async fn ensure_replica(&mut self) -> anyhow::Result<()> {
        if self.replica.is_none() {
            self.make_replica().await?;
        }
        Ok(())
    }

    /// `pg_basebackup -R` of the cluster, started with `pg_ctl` beside it, and
    /// waited for until it has replayed the volume store. Kept in
    /// `self.replica` as soon as it runs, so it is stopped whatever happens next.
    async fn make_replica(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.cfg.database_url.is_none(),
            "the replica is made from the bench's private PostgreSQL; not with --database-url"
        );
        let started = Instant::now();
        let data_dir = self.tools.psql(&self.admin, "SHOW data_directory").await?;
        let hba = self.tools.psql(&self.admin, "SHOW hba_file").await?;
        allow_local_replication(Path::new(&hba))?;
        self.tools
            .psql(&self.admin, "SELECT pg_reload_conf()")
            .await?;
        let data_meta = std::fs::metadata(&data_dir)
            .with_context(|| format!("inspecting the primary's data directory {data_dir}"))?;
        let me = std::fs::metadata("/proc/self")
            .context("inspecting /proc/self")?
            .uid();
        let owner = (data_meta.uid() != me).then(|| (data_meta.uid(), data_meta.gid()));

        let pgdata = self.tmp.join("replica");
        let socket = self.tmp.join("replica-socket");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&socket)
            .with_context(|| format!("creating {}", socket.display()))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&socket, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", socket.display()))?;
        }
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o700))?;
        let port = free_port()?;
        eprintln!(
            "bench: making a streaming replica: pg_basebackup -R -D {}",
            pgdata.display()
        );
        let mut backup = tool("pg_basebackup", owner)?;
        backup
            .arg("-d")
            .arg(self.admin.to_conn_string())
            .arg("-D")
            .arg(&pgdata)
            .args(["-R", "-X", "stream", "-c", "fast", "-w"]);
        run_tool(backup, "pg_basebackup", BASEBACKUP_TIMEOUT).await?;
        let copied_s = started.elapsed().as_secs_f64();

        let log = self.tmp.join("replica-postgres.log");
        let mut start = tool("pg_ctl", owner)?;
        start
            .arg("start")
            .arg("-D")
            .arg(&pgdata)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t"])
            .arg(PG_CTL_TIMEOUT_S.to_string())
            .arg("-o")
            .arg(format!(
                "-c port={port} -c unix_socket_directories={} -c listen_addresses='' -c hot_standby=on",
                socket.display()
            ));
        run_tool(
            start,
            "pg_ctl start (replica)",
            Duration::from_secs(PG_CTL_TIMEOUT_S + 10),
        )
        .await
        .with_context(|| format!("replica log: {}", log.display()))?;
        let admin = self
            .admin
            .with_param("host", &socket.display().to_string())?
            .with_param("port", &port.to_string())?;
        self.replica = Some(Replica {
            pgdata,
            owner,
            admin,
        });
        eprintln!("bench: replica started (socket {})", socket.display());

        let want: u64 = self
            .tools
            .psql(&self.db(DB_VOLUME), HEAD_SQL)
            .await?
            .parse()
            .context("the primary's head")?;
        let on_replica = self.replica.as_ref().context("no replica")?.db(DB_VOLUME);
        let waiting = Instant::now();
        loop {
            let seen = self.tools.psql(&on_replica, HEAD_SQL).await;
            if let Ok(Some(head)) = seen.as_deref().map(|s| s.parse::<u64>().ok()) {
                if head >= want {
                    break;
                }
            }
            anyhow::ensure!(
                waiting.elapsed() < CATCH_UP_TIMEOUT,
                "the replica did not replay the volume ({want} events) in {CATCH_UP_TIMEOUT:?}: {seen:?}"
            );
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
        self.report.notes.push(format!(
            "replica: pg_basebackup -R of the cluster in {copied_s:.1} s; started and caught up with the \
             {want} stored positions in {:.1} s in all",
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// A short read load on `target` before it is measured.
    async fn read_warm_up(&self, target: &Target) -> anyhow::Result<()> {
        let cfg = self.run_config(
            target,
            ScenarioKind::Read,
            "w",
            self.plan.read_clients,
            READ_WARMUP,
        );
        driver::run(&cfg, Arc::default()).await.map(|_| ())
    }

    /// `phase` on `target` with every reply's `X-Crablet-Source` counted.
    async fn counted_read_run(
        &mut self,
        target: &Target,
        phase: &Phase,
    ) -> anyhow::Result<(Report, SourceCounts)> {
        self.read_warm_up(target).await?;
        let tally = Arc::new(SourceTally::default());
        let counted = target.clone().with_sources(tally.clone());
        let run = self.crablet_run(&counted, phase, Arc::default()).await?;
        Ok((run, tally.counts()))
    }

    /// P12: P4's reads on the volume store's server (the primary), then the same
    /// reads on a second server started with `--replica-url` at the replica.
    pub(super) async fn goal_p12(&mut self) -> anyhow::Result<Option<Row>> {
        let on_primary = self.plan.p12_primary();
        let on_replica = self.plan.p12_replica();
        let target = self.server_on(DB_VOLUME).await?;
        let (primary_run, primary_sources) = self.counted_read_run(&target, &on_primary).await?;

        self.ensure_replica().await?;
        let replica_url = self
            .replica
            .as_ref()
            .context("no replica")?
            .db(DB_VOLUME)
            .to_conn_string();
        let crablet = self.crablet.clone().context("no crablet binary")?;
        self.server_starts += 1;
        let log = self.tmp.join(format!(
            "server-{}-{DB_VOLUME}-replica.log",
            self.server_starts
        ));
        let server = CrabletServer::start_with(
            &crablet,
            &self.db(DB_VOLUME).to_conn_string(),
            &log,
            self.cfg.token.as_deref(),
            &["--replica-url".into(), replica_url],
        )
        .await?;
        eprintln!(
            "bench: crablet serve pid {} on {} -> {DB_VOLUME}, reads from its replica (log {})",
            server.pid,
            server.target.url(),
            log.display()
        );
        let replica_target = server.target.clone();
        // The replica's server stands in for the primary's during its phase (so
        // the run's CPU figures and exit check are its own), then is stopped.
        let own = self
            .server
            .replace((server, format!("{DB_VOLUME} with a replica")));
        let measured = self.counted_read_run(&replica_target, &on_replica).await;
        if let Some((server, _)) = std::mem::replace(&mut self.server, own) {
            if let Err(e) = server.stop().await {
                eprintln!("bench: stopping the replica's crablet serve: {e:#}");
            }
        }
        let (replica_run, replica_sources) = measured?;

        let (p, r) = (primary(&primary_run)?, primary(&replica_run)?);
        self.report
            .replica_sources
            .insert(on_primary.name.into(), primary_sources);
        self.report
            .replica_sources
            .insert(on_replica.name.into(), replica_sources);
        let failed = r.error_count() + p.error_count();
        self.report.notes.push(format!(
            "P12: reads served by the primary {:.0}/s (p50 {:.2} ms, p99 {:.2} ms), by the server with a replica \
             {:.0}/s (p50 {:.2} ms, p99 {:.2} ms), {failed} failed; X-Crablet-Source of the replies: \
             with a replica: {replica_sources}; primary only: {primary_sources}",
            p.ok_per_s,
            ms(p.latency_us.p50_us),
            ms(p.latency_us.p99_us),
            r.ok_per_s,
            ms(r.latency_us.p50_us),
            ms(r.latency_us.p99_us),
        ));
        // Replies without the header answer no read (the phase's set-up
        // and health checks); every read must say `replica`.
        let from_replica = replica_sources.replica > 0
            && replica_sources.primary == 0
            && replica_sources.other == 0;
        if !from_replica {
            self.report.notes.push(format!(
                "P12: not every read of the replica phase says `X-Crablet-Source: replica` ({replica_sources}): \
                 those reads were not served by the replica, so the ratio does not measure it"
            ));
        }
        let workload = format!(
            "P4's reads ({} stored, 16 clients) from a streaming replica vs from the primary",
            self.plan.volume_text()
        );
        let row = Row::compared(
            "P12",
            workload,
            (r.ok_per_s, "reads/s (replica)"),
            (p.ok_per_s, "reads/s (primary)"),
        );
        Ok(Some(row.ratio_at_least(
            P12_GOAL,
            P12_GOAL_TEXT,
            from_replica && failed == 0,
        )))
    }

    /// P13: P1's load on the volume store while the replica's lag is sampled
    /// (heads every few ms) and probed (append acknowledged -> visible there).
    pub(super) async fn goal_p13(&mut self) -> anyhow::Result<Option<Row>> {
        self.ensure_replica().await?;
        let phase = self.plan.p13();
        let target = self.server_on(DB_VOLUME).await?;
        let replica = self.replica.as_ref().context("no replica")?.db(DB_VOLUME);
        let on_primary = connect(&self.db(DB_VOLUME)).await?;
        let sampling_replica = connect(&replica).await?;
        let probing_replica = connect(&replica).await?;
        let live = Arc::new(LiveCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let heads = tokio::spawn(sample_heads(
            on_primary,
            sampling_replica,
            live.clone(),
            phase.duration,
            stop.clone(),
        ));
        let probes = tokio::spawn(probe_visibility(
            Conn::new(target.clone(), self.cfg.request_timeout),
            probing_replica,
            format!("lagprobe:{}", self.run_id("p13")),
            live.clone(),
            phase.duration,
            stop.clone(),
        ));
        let run = self.crablet_run(&target, &phase, live).await;
        stop.store(true, Ordering::Relaxed);
        let lags = heads.await.context("head sampler")??;
        let (waits, timed_out) = probes.await.context("probes")??;
        let run = run?;
        let load = primary(&run)?;
        let lag = replica_lag(lags, waits, timed_out);
        self.report.notes.push(format!(
            "P13: under {:.0} appends/s ({} clients): lag in positions (primary head - replica head, {} samples \
             every {} ms) p50 {}, p99 {}, max {}; append acknowledged -> visible on the replica ({} probes, \
             one every {} ms, {timed_out} not within {} s): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            load.ok_per_s,
            phase.clients,
            lag.samples,
            HEAD_SAMPLE_EVERY.as_millis(),
            lag.lag_positions_p50,
            lag.lag_positions_p99,
            lag.lag_positions_max,
            lag.probes,
            PROBE_EVERY.as_millis(),
            VISIBILITY_TIMEOUT.as_secs(),
            lag.visible_ms_p50,
            lag.visible_ms_p99,
            lag.visible_ms_max,
        ));
        let crablet = Figure {
            text: format!(
                "p99 {:.1} ms to visible (p50 {:.1}); lag p99 {} positions",
                lag.visible_ms_p99,
                lag.visible_ms_p50,
                thousands(lag.lag_positions_p99 as f64)
            ),
            value: lag.visible_ms_p99,
        };
        let met = lag.probes > 0 && timed_out == 0 && lag.visible_ms_p99 <= P13_GOAL_MS;
        let workload = format!(
            "replica lag under P1 ({} clients, {} appends/s, {} stored)",
            phase.clients,
            thousands(load.ok_per_s),
            self.plan.volume_text()
        );
        self.report.replica_lag = Some(lag);
        Ok(Some(
            Row::alone("P13", workload, crablet).goal(P13_GOAL_TEXT, met),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_replication_line_is_recognised() {
        assert!(!has_local_replication("local   all   all   trust\n"));
        assert!(has_local_replication(
            "local all all trust\nlocal replication all trust\n"
        ));
        assert!(!has_local_replication("# local replication all trust\n"));
        assert!(!has_local_replication(
            "host replication all 127.0.0.1/32 trust\n"
        ));
    }

    #[test]
    fn the_line_is_added_once() {
        let dir = std::env::temp_dir().join(format!("crablet-lt-hba-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hba = dir.join("pg_hba.conf");
        std::fs::write(&hba, "local   all   all   trust").unwrap();
        allow_local_replication(&hba).unwrap();
        allow_local_replication(&hba).unwrap();
        let text = std::fs::read_to_string(&hba).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(text.matches(HBA_REPLICATION_LINE).count(), 1, "{text}");
        assert!(text.starts_with("local   all   all   trust\n"));
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&values, 0.5), 50);
        assert_eq!(quantile(&values, 0.99), 99);
        assert_eq!(quantile(&values, 1.0), 100);
        assert_eq!(quantile(&[7u64], 0.99), 7);
        assert_eq!(quantile::<u64>(&[], 0.99), 0);
    }

    #[test]
    fn lag_figures_come_from_samples_and_probes() {
        let waits = (1..=100).map(Duration::from_millis).collect();
        let lag = replica_lag(vec![0, 3, 1, 2], waits, 0);
        assert_eq!(lag.samples, 4);
        assert_eq!(
            (
                lag.lag_positions_p50,
                lag.lag_positions_p99,
                lag.lag_positions_max
            ),
            (1, 3, 3)
        );
        assert_eq!(lag.probes, 100);
        assert!((lag.visible_ms_p99 - 99.0).abs() < 1e-9);
        assert!((lag.visible_ms_p50 - 50.0).abs() < 1e-9);
    }
}
