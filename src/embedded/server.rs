//! The server process: whether one runs on the cluster, starting it with
//! crablet's settings, adopting one already running, stopping it, and the tail
//! of its log when a start fails.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cluster::{log_file, server_options};
use super::process::{describe, output_text, run};
use super::{io_error, EmbeddedError, EmbeddedPostgres};

/// How long `pg_ctl` waits for the server to start or stop.
const PG_CTL_TIMEOUT_SECONDS: u32 = 60;

/// How many lines of the server log a start failure reports.
const LOG_TAIL_LINES: usize = 30;

/// How many bytes from the end of the server log are read to find those lines.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// The server's lock file in pgdata: its pid, port and socket directory.
const POSTMASTER_PID: &str = "postmaster.pid";

/// Pause between two looks at a server that is starting or going away.
const RETRY_DELAY: Duration = Duration::from_millis(100);

impl EmbeddedPostgres {
    /// Adopts the server running on this cluster once it accepts connections,
    /// or starts one. A `postmaster.pid` left by a server that was killed (or
    /// by a power cut) is stale, not a running server: the server is started,
    /// and PostgreSQL recovers from the crash itself.
    pub(super) fn start_or_adopt(&mut self) -> Result<(), EmbeddedError> {
        let deadline = Instant::now() + Duration::from_secs(PG_CTL_TIMEOUT_SECONDS.into());
        let mut warned_stale = false;
        loop {
            if let Some(pid) = self.running_postmaster()? {
                if self.wait_until_answering(pid, deadline)? {
                    log::info!(
                        "using the PostgreSQL server already running in {}",
                        self.pgdata.display()
                    );
                    return Ok(());
                }
                continue; // It died meanwhile: start one.
            }
            let stale = self.pgdata.join(POSTMASTER_PID).exists();
            if stale && !warned_stale {
                warned_stale = true;
                log::warn!(
                    "{} names no running PostgreSQL server (it was killed or the machine \
                     went down): starting one, which recovers the cluster",
                    self.pgdata.join(POSTMASTER_PID).display()
                );
            }
            match self.start_server() {
                Ok(()) => return Ok(()),
                // Another crablet started it first, or the killed server is not
                // quite gone (a zombie not yet reaped, its children still
                // detaching from shared memory): look again.
                Err(EmbeddedError::CommandFailed { .. })
                    if Instant::now() < deadline && (stale || self.is_running()?) =>
                {
                    log::debug!(
                        "PostgreSQL did not start in {}; trying again",
                        self.pgdata.display()
                    );
                    std::thread::sleep(RETRY_DELAY);
                }
                Err(e) => return Err(self.with_log_tail(e)),
            }
        }
    }

    /// Whether a server runs on this cluster: `pg_ctl status` says so and the
    /// process its `postmaster.pid` names is a live PostgreSQL process.
    pub(super) fn is_running(&self) -> Result<bool, EmbeddedError> {
        Ok(self.running_postmaster()?.is_some())
    }

    /// The pid of the server running on this cluster. pg_ctl takes any process
    /// that signals can reach for the server, and a killed server stays a zombie
    /// until its parent (often init) reaps it: what /proc says decides.
    fn running_postmaster(&self) -> Result<Option<u32>, EmbeddedError> {
        if !self.pg_ctl_status()? {
            return Ok(None);
        }
        let Some(pid) = self.postmaster_pid().map(|p| p.pid) else {
            return Ok(None); // Removed since: stopped.
        };
        Ok(is_live_postgres(pid).then_some(pid))
    }

    /// Whether `pg_ctl status` sees a server running on this cluster.
    fn pg_ctl_status(&self) -> Result<bool, EmbeddedError> {
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("status").arg("-D").arg(&self.pgdata);
        let what = describe(&cmd);
        let output = cmd
            .output()
            .map_err(|e| io_error(e, format!("running `{what}`")))?;
        // 0: running; 3: not running; 4: no accessible data directory.
        match output.status.code() {
            Some(0) => Ok(true),
            Some(3) => Ok(false),
            _ => Err(EmbeddedError::CommandFailed {
                command: what,
                status: output.status,
                output: output_text(&output),
            }),
        }
    }

    fn postmaster_pid(&self) -> Option<PostmasterPid> {
        fs::read_to_string(self.pgdata.join(POSTMASTER_PID))
            .ok()
            .and_then(|text| parse_postmaster_pid(&text))
    }

    /// Points the connection at the socket the running server `pid` says (in
    /// its `postmaster.pid`) it listens on, and waits until it accepts connections (a server that is
    /// starting, or recovering from a crash, refuses them for a while). False
    /// when it stops running meanwhile; an error when `deadline` passes.
    fn wait_until_answering(&mut self, pid: u32, deadline: Instant) -> Result<bool, EmbeddedError> {
        loop {
            // Written by the server once it listens.
            if let Some((port, socket_dir)) = self.postmaster_pid().and_then(|p| p.listening) {
                self.port = port;
                self.socket_dir = socket_dir;
            }
            // Any role will do: the server answers the ping before logging in.
            let mut ping = self.client_tool("pg_isready", self.admin_user);
            ping.args(["-d", "postgres", "-t", "2", "-q"]);
            if run(ping).is_ok() {
                return Ok(true);
            }
            if self.running_postmaster()? != Some(pid) {
                return Ok(false);
            }
            if Instant::now() >= deadline {
                return Err(EmbeddedError::NotAnswering {
                    pid,
                    pgdata: self.pgdata.clone(),
                    socket_dir: self.socket_dir.clone(),
                    seconds: PG_CTL_TIMEOUT_SECONDS,
                    log: log_file(&self.data_dir),
                });
            }
            std::thread::sleep(RETRY_DELAY);
        }
    }

    /// Stops the server if it runs (pg_ctl stop -m fast -w); whether it did.
    pub(super) fn stop_server(&self) -> Result<bool, EmbeddedError> {
        if !self.is_running()? {
            return Ok(false);
        }
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "fast", "-w", "-t"])
            .arg(PG_CTL_TIMEOUT_SECONDS.to_string());
        match run(cmd) {
            Ok(_) => {}
            // Stopped behind our back (by hand, or the machine is shutting down).
            Err(EmbeddedError::CommandFailed { .. }) if !self.is_running()? => {
                log::warn!(
                    "PostgreSQL in {} was already stopped",
                    self.pgdata.display()
                );
            }
            Err(e) => return Err(e),
        }
        log::info!("stopped PostgreSQL in {}", self.pgdata.display());
        if !self.socket_dir.starts_with(&self.data_dir) {
            // The /tmp fallback: do not leave it behind. Best effort: it is empty
            // once the server is down, and recreated on start.
            let _ = fs::remove_dir(&self.socket_dir);
        }
        Ok(true)
    }

    /// Starts the server with crablet's settings and waits until it accepts connections.
    pub(super) fn start_server(&mut self) -> Result<(), EmbeddedError> {
        let log_file = log_file(&self.data_dir);
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&log_file)
            .args(["-w", "-t"])
            .arg(PG_CTL_TIMEOUT_SECONDS.to_string())
            .arg("-o")
            .arg(server_options(&self.socket_dir, self.port));
        run(cmd)?;
        log::info!(
            "started PostgreSQL in {} (socket {}, log {})",
            self.pgdata.display(),
            self.socket_dir.display(),
            log_file.display()
        );
        Ok(())
    }

    /// A failed start's error, with the last lines of the server log.
    fn with_log_tail(&self, error: EmbeddedError) -> EmbeddedError {
        let EmbeddedError::CommandFailed {
            command,
            status,
            mut output,
        } = error
        else {
            return error;
        };
        let log_file = log_file(&self.data_dir);
        let _ = write!(
            output,
            "\n--- last lines of {} ---\n{}",
            log_file.display(),
            log_tail(&log_file)
        );
        EmbeddedError::CommandFailed {
            command,
            status,
            output,
        }
    }
}

/// What a `postmaster.pid` says: the server's pid (line 1) and, once it
/// listens, its port and first socket directory (lines 4 and 5).
#[derive(Debug, PartialEq, Eq)]
struct PostmasterPid {
    pid: u32,
    listening: Option<(u16, PathBuf)>,
}

fn parse_postmaster_pid(text: &str) -> Option<PostmasterPid> {
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let mut lines = lines.skip(2);
    let listening = (|| {
        let port = lines.next()?.trim().parse().ok()?;
        let socket_dir = lines.next()?.trim();
        (!socket_dir.is_empty()).then(|| (port, PathBuf::from(socket_dir)))
    })();
    Some(PostmasterPid { pid, listening })
}

/// Whether process `pid` is alive (not a zombie) and runs PostgreSQL (its
/// name has `postgres` or `postmaster` in it), by `/proc/<pid>/stat`. Where
/// there is no /proc, any pid counts as alive, as it does for pg_ctl.
fn is_live_postgres(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_is_live_postgres(&stat),
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

/// `stat` is `pid (name) state ...`; the name may hold spaces and parentheses.
fn stat_is_live_postgres(stat: &str) -> bool {
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let name = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next();
    (name.contains("postgres") || name.contains("postmaster"))
        && !matches!(state, None | Some('Z' | 'X' | 'x'))
}

/// The last lines of the server log, or why they cannot be read.
fn log_tail(log_file: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut file = fs::File::open(log_file)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(last_lines(&String::from_utf8_lossy(&bytes), LOG_TAIL_LINES))
    };
    read().unwrap_or_else(|e| format!("(cannot read {}: {e})", log_file.display()))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postmaster_pid_gives_pid_port_and_socket_dir() {
        let text = "4242\n/d/pgdata\n1700000000\n5433\n/d/socket\n\n  1234567 0\nready   \n";
        assert_eq!(
            parse_postmaster_pid(text),
            Some(PostmasterPid {
                pid: 4242,
                listening: Some((5433, PathBuf::from("/d/socket")))
            })
        );
        assert_eq!(
            parse_postmaster_pid("4242\n/d/pgdata\n"),
            Some(PostmasterPid {
                pid: 4242,
                listening: None
            })
        );
        assert_eq!(parse_postmaster_pid(""), None);
    }

    #[test]
    fn only_a_live_postgres_process_is_a_running_server() {
        assert!(stat_is_live_postgres("4242 (postgres) S 1 4242 4242 0 -1"));
        assert!(stat_is_live_postgres("4242 (.postgres-wrapp) R 1"));
        // Killed and not yet reaped by its parent.
        assert!(!stat_is_live_postgres("4242 (postgres) Z 1 4242 4242 0 -1"));
        // Its pid reused by another program.
        assert!(!stat_is_live_postgres("4242 (bash (x)) S 1 4242"));
        assert!(!stat_is_live_postgres("garbage"));
        assert!(!is_live_postgres(u32::MAX));
        assert!(!is_live_postgres(std::process::id()));
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\n", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }
}
