//! The processes the benchmark starts: a private PostgreSQL (`crablet postgres`) and
//! the crablet server (`crablet serve`), and the RSS sampler of the server.
//!
//! Owns their whole lifetime: spawn, readiness, logs (files in the bench's temp
//! folder), and stopping them by their own pid. Nothing else is ever signalled.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::driver::LiveCounters;
use crate::http::{Conn, Target};

/// Bound on `crablet postgres` printing its `DATABASE_URL=` line (initdb included).
const POSTGRES_START_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on a stopping process before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on the server answering `/health` after it was spawned.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Poll interval while waiting for `/health`.
const READY_POLL: Duration = Duration::from_millis(100);
/// Bound on one `/health` probe.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Prefix of the first line `crablet postgres` prints (crablet's role).
const DATABASE_URL_PREFIX: &str = "DATABASE_URL=";
/// Prefix of the second line `crablet postgres` prints (the cluster's superuser);
/// older versions print only the first.
const ADMIN_DATABASE_URL_PREFIX: &str = "ADMIN_DATABASE_URL=";
/// Bytes per KiB.
const KIB: f64 = 1024.0;

/// A private PostgreSQL cluster run by `crablet postgres`; stops when its stdin closes.
pub struct PrivatePostgres {
    /// The `crablet postgres` process.
    child: Child,
    /// Held open for the cluster's lifetime; dropping it asks it to stop.
    stdin: Option<ChildStdin>,
    /// The connection string it printed for crablet's role.
    pub database_url: String,
    /// The superuser's connection string, when it printed one: the bench
    /// creates and drops databases with it.
    pub admin_url: Option<String>,
}

impl PrivatePostgres {
    /// Starts `crablet postgres --data-dir <data_dir>` and waits for its URL line.
    pub async fn start(crablet: &Path, data_dir: &Path, log: &Path) -> anyhow::Result<Self> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(crablet)
            .arg("postgres")
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} postgres", crablet.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        let urls = tokio::time::timeout(POSTGRES_START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.trim().strip_prefix(DATABASE_URL_PREFIX) {
                    // The admin line, if any, follows at once.
                    let admin = lines.next_line().await?.and_then(|next| {
                        next.trim()
                            .strip_prefix(ADMIN_DATABASE_URL_PREFIX)
                            .map(str::to_string)
                    });
                    return anyhow::Ok(Some((url.to_string(), admin)));
                }
            }
            Ok(None)
        })
        .await
        .context("crablet postgres did not print DATABASE_URL in time")??;
        let Some((database_url, admin_url)) = urls else {
            anyhow::bail!(
                "crablet postgres exited without printing DATABASE_URL; see {}",
                log.display()
            );
        };
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            stdin,
            database_url,
            admin_url,
        })
    }

    /// Closes its stdin and waits for the cluster to stop (killed after a bound).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        stop_child(&mut self.child, "crablet postgres").await
    }
}

/// A running `crablet serve`.
pub struct CrabletServer {
    /// The server process.
    child: Child,
    /// Its pid (for RSS).
    pub pid: u32,
    /// Where it listens.
    pub target: Target,
    /// Its log file.
    pub log: PathBuf,
}

impl CrabletServer {
    /// Starts `crablet serve` on a free loopback port against `database_url` and
    /// waits until `/health` answers 200.
    /// With `token`, the server accepts that token only (admin scope, from a
    /// tokens file beside the log) and the target sends it.
    pub async fn start(
        crablet: &Path,
        database_url: &str,
        log: &Path,
        token: Option<&str>,
    ) -> anyhow::Result<Self> {
        Self::start_with(crablet, database_url, log, token, &[]).await
    }

    /// [`Self::start`], with `extra` appended to `crablet serve`'s arguments
    /// (`--replica-url URL`).
    pub async fn start_with(
        crablet: &Path,
        database_url: &str,
        log: &Path,
        token: Option<&str>,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let log_err = log_file.try_clone()?;
        let mut cmd = Command::new(crablet);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database-url")
            .arg(database_url)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        if let Some(token) = token {
            let file = log.with_extension("tokens.toml");
            std::fs::write(
                &file,
                format!(
                    "[[tokens]]\nname = \"loadtest\"\nsha256 = \"{}\"\nscopes = [\"admin\"]\n",
                    crablet::auth::digest_hex(token.trim())
                ),
            )
            .with_context(|| format!("writing {}", file.display()))?;
            cmd.env("CRABLET_AUTH__TOKENS_FILE", &file);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} serve", crablet.display()))?;
        let pid = child.id().context("server exited at once")?;
        let target = Target::loopback(port).with_token(token);
        let mut conn = Conn::new(target.clone(), HEALTH_PROBE_TIMEOUT);
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "crablet serve exited with {status} before it was ready; log {}:\n{}",
                    log.display(),
                    tail(log)
                );
            }
            if conn.health().await.is_ok() {
                break;
            }
            if started.elapsed() > SERVER_READY_TIMEOUT {
                anyhow::bail!(
                    "crablet serve not healthy after {SERVER_READY_TIMEOUT:?}; log {}:\n{}",
                    log.display(),
                    tail(log)
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
        Ok(Self {
            child,
            pid,
            target,
            log: log.to_path_buf(),
        })
    }

    /// Whether it is still running (None: running; Some: its exit status).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Stops it with SIGTERM (by pid), SIGKILL after a bound.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            // `kill -TERM <pid>` of the process we spawned: a graceful stop without
            // unsafe code; kill_on_drop/`kill()` remain the fallback.
            let _ = Command::new("kill")
                .args(["-s", "TERM", &self.pid.to_string()])
                .status()
                .await;
        }
        stop_child(&mut self.child, "crablet serve").await
    }
}

/// Waits for `child` to exit, killing it after [`STOP_TIMEOUT`].
async fn stop_child(child: &mut Child, what: &str) -> anyhow::Result<()> {
    match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(status) => {
            status.with_context(|| format!("waiting for {what}"))?;
            Ok(())
        }
        Err(_) => {
            child
                .kill()
                .await
                .with_context(|| format!("killing {what}"))?;
            anyhow::bail!("{what} did not stop within {STOP_TIMEOUT:?} and was killed")
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    const TAIL_LINES: usize = 20;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// One RSS sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RssSample {
    /// Seconds since sampling began.
    pub t_s: f64,
    /// Resident set size, MiB.
    pub rss_mib: f64,
    /// Operations completed by the load so far.
    pub ops: u64,
}

/// Samples a process's RSS at a fixed interval until stopped.
pub struct RssSampler {
    /// The sampling task; returns the samples.
    task: tokio::task::JoinHandle<Vec<RssSample>>,
    /// Tells the task to stop.
    stop: tokio::sync::oneshot::Sender<()>,
}

impl RssSampler {
    /// Starts sampling `pid` every `interval`, for at most `max_duration`; with
    /// `print_every`, prints a line (stderr) at that interval.
    pub fn start(
        pid: u32,
        interval: Duration,
        max_duration: Duration,
        live: Arc<LiveCounters>,
        print_every: Option<Duration>,
    ) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            let mut next_print = print_every.map_or(f64::INFINITY, |d| d.as_secs_f64());
            let mut printed_ops = 0;
            let mut ticker = tokio::time::interval(interval);
            while started.elapsed() <= max_duration {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = &mut stopped => break,
                }
                let Some(kib) = crate::procfs::rss_kib(pid) else {
                    break;
                };
                let sample = RssSample {
                    t_s: started.elapsed().as_secs_f64(),
                    rss_mib: kib as f64 / KIB,
                    ops: live.completed.load(Ordering::Relaxed),
                };
                if let Some(every) = print_every {
                    if sample.t_s >= next_print {
                        let rate = (sample.ops - printed_ops) as f64 / every.as_secs_f64();
                        eprintln!(
                            "rss: t={:>4.0}s {:>6.1} MiB, {rate:.0} ops/s",
                            sample.t_s, sample.rss_mib
                        );
                        next_print += every.as_secs_f64();
                        printed_ops = sample.ops;
                    }
                }
                samples.push(sample);
            }
            samples
        });
        Self { task, stop }
    }

    /// Stops sampling and returns the samples.
    pub async fn finish(self) -> Vec<RssSample> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// Whether RSS stayed flat over a soak, and how much it grew.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Flatness {
    /// Largest RSS in the warm-up window (first [`FLATNESS_WINDOW_S`] seconds), MiB.
    pub warm_mib: f64,
    /// Largest RSS in the last window, MiB.
    pub final_mib: f64,
    /// `final - warm`, MiB.
    pub growth_mib: f64,
    /// Growth within tolerance.
    pub flat: bool,
}

/// Width of the windows compared by [`flatness`], seconds.
pub const FLATNESS_WINDOW_S: f64 = 60.0;
/// Growth tolerated as "flat": this fraction of the warm RSS...
const FLAT_RELATIVE_TOLERANCE: f64 = 0.10;
/// ...or this many MiB, whichever is larger.
const FLAT_ABSOLUTE_TOLERANCE_MIB: f64 = 4.0;

/// Compares the largest RSS of the first and of the last window of `samples`.
pub fn flatness(samples: &[RssSample]) -> Option<Flatness> {
    let end = samples.last()?.t_s;
    let max_in = |lo: f64, hi: f64| {
        samples
            .iter()
            .filter(|s| s.t_s >= lo && s.t_s <= hi)
            .map(|s| s.rss_mib)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    let warm_mib = max_in(0.0, FLATNESS_WINDOW_S)?;
    let final_mib = max_in(end - FLATNESS_WINDOW_S, end)?;
    let growth_mib = final_mib - warm_mib;
    Some(Flatness {
        warm_mib,
        final_mib,
        growth_mib,
        flat: growth_mib <= (warm_mib * FLAT_RELATIVE_TOLERANCE).max(FLAT_ABSOLUTE_TOLERANCE_MIB),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: &[(f64, f64)]) -> Vec<RssSample> {
        values
            .iter()
            .map(|&(t_s, rss_mib)| RssSample {
                t_s,
                rss_mib,
                ops: 0,
            })
            .collect()
    }

    #[test]
    fn a_plateau_is_flat_and_a_climb_is_not() {
        let flat = samples(&[(1.0, 30.0), (30.0, 40.0), (300.0, 41.0), (600.0, 42.0)]);
        let f = flatness(&flat).unwrap();
        assert_eq!((f.warm_mib, f.final_mib), (40.0, 42.0));
        assert!(f.flat);
        let climb = samples(&[(1.0, 30.0), (59.0, 31.0), (300.0, 60.0), (600.0, 90.0)]);
        assert!(!flatness(&climb).unwrap().flat);
        assert!(flatness(&[]).is_none());
    }
}
