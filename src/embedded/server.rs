//! The server process: whether one runs on the cluster, starting it with
//! crablet's settings, adopting one already running, stopping it, and the tail
//! of its log when a start fails.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::cluster::{log_file, server_options};
use super::process::{describe, output_text, run};
use super::{io_error, EmbeddedError, EmbeddedPostgres};

/// How long `pg_ctl` waits for the server to start or stop.
const PG_CTL_TIMEOUT_SECONDS: u32 = 60;

/// How many lines of the server log a start failure reports.
const LOG_TAIL_LINES: usize = 30;

/// How many bytes from the end of the server log are read to find those lines.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

impl EmbeddedPostgres {
    /// Whether `pg_ctl status` sees a server running on this cluster.
    pub(super) fn is_running(&self) -> Result<bool, EmbeddedError> {
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

    /// Uses the server already running on this cluster, where it says it listens.
    pub(super) fn adopt(&mut self) {
        let pid_file = self.pgdata.join("postmaster.pid");
        match fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| parse_postmaster_pid(&text))
        {
            Some((port, socket_dir)) => {
                self.port = port;
                self.socket_dir = socket_dir;
            }
            None => log::warn!(
                "cannot read the socket from {}; assuming {}",
                pid_file.display(),
                self.socket_dir.display()
            ),
        }
        log::info!(
            "using the PostgreSQL server already running in {}",
            self.pgdata.display()
        );
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
        match run(cmd) {
            Ok(_) => {
                log::info!(
                    "started PostgreSQL in {} (socket {}, log {})",
                    self.pgdata.display(),
                    self.socket_dir.display(),
                    log_file.display()
                );
                Ok(())
            }
            // Another crablet started it between our status check and our start.
            Err(EmbeddedError::CommandFailed { .. }) if self.is_running()? => {
                self.adopt();
                Ok(())
            }
            Err(EmbeddedError::CommandFailed {
                command,
                status,
                mut output,
            }) => {
                let _ = write!(
                    output,
                    "\n--- last lines of {} ---\n{}",
                    log_file.display(),
                    log_tail(&log_file)
                );
                Err(EmbeddedError::CommandFailed {
                    command,
                    status,
                    output,
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// Port and first socket directory from a `postmaster.pid` (lines 4 and 5).
fn parse_postmaster_pid(text: &str) -> Option<(u16, PathBuf)> {
    let mut lines = text.lines().skip(3);
    let port = lines.next()?.trim().parse().ok()?;
    let socket_dir = lines.next()?.trim();
    if socket_dir.is_empty() {
        return None;
    }
    Some((port, PathBuf::from(socket_dir)))
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
    fn postmaster_pid_gives_port_and_socket_dir() {
        let text = "4242\n/d/pgdata\n1700000000\n5433\n/d/socket\n\n  1234567 0\nready   \n";
        assert_eq!(
            parse_postmaster_pid(text),
            Some((5433, PathBuf::from("/d/socket")))
        );
        assert_eq!(parse_postmaster_pid("4242\n/d/pgdata\n"), None);
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\n", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }
}
