//! The private PostgreSQL cluster crablet runs when it is given no database URL.
//!
//! This module owns one data directory and everything under it:
//!
//! ```text
//! <data_dir>/pgdata/          the cluster (initdb on first use)
//! <data_dir>/socket/          the unix socket directory, mode 0700 (or /tmp/crablet-<hash>
//!                             when that path would be too long for a unix socket)
//! <data_dir>/postgresql.log   the server log (appended to by `pg_ctl -l`)
//! <data_dir>/holders.lock     flock'ed shared by every crablet using the cluster
//! <data_dir>/pgdata/crablet.conf  crablet's server settings, included by postgresql.conf
//! ```
//!
//! It finds the PostgreSQL binaries, runs `initdb` once, starts the server with
//! `pg_ctl` (or adopts a server already running on the same data directory), makes
//! sure the database `crablet` exists, and stops the server it started.
//!
//! It also offers the two pieces other PostgreSQL drivers need (the load tester
//! uses them to find `psql` and `pgbench` and to build connection strings):
//! [`postgres_bindir`] and [`postgres_tool`] find an installation and its
//! programs, and [`conninfo_value`] quotes a libpq key-value value.
//!
//! What it must not do: speak SQL beyond creating crablet's role and the `crablet`
//! database (schema belongs to `store/`), open any TCP port, or run PostgreSQL as root. It
//! drives the stock PostgreSQL tools as child processes; it contains no `unsafe`
//! and links no extra crate for user lookup or privilege dropping.
//!
//! Hardening, written at initdb and re-applied at every start (so clusters made by
//! older versions get it too): `crablet.conf` sets `listen_addresses = ''` and a
//! private socket directory (mode 0700), and `pg_hba.conf` has only `local` lines,
//! so even a plain `pg_ctl start -D <data_dir>/pgdata` by an operator opens no TCP
//! port. crablet connects as the role `crablet`, which is not a superuser and owns
//! the database `crablet`; the bootstrap superuser is `crablet_admin` (clusters made
//! by older versions, whose bootstrap superuser is `crablet`, keep working).
//!
//! Lifetime: several crablet processes may use one data directory at once (a
//! rolling restart starts the new one before stopping the old one). Each is a
//! *holder*: it keeps a shared flock on `holders.lock` from before it checks or
//! starts the server until it exits. At exit a holder tries to turn its lock
//! exclusive without waiting; only the last holder gets it, and it stops the
//! server. The kernel drops the lock of a process killed with SIGKILL, so a killed
//! holder never keeps the server running nor blocks the others; the server itself
//! daemonizes and survives it, and the next start adopts it once it accepts
//! connections. A server killed too (or a power cut) leaves a stale
//! `postmaster.pid`: the next start sees that no live PostgreSQL process has
//! that pid (pg_ctl alone would take a zombie for a server) and starts the
//! server, which recovers from the crash.
//!
//! The parts:
//!
//! - this file: [`EmbeddedPostgres`] (start, connection strings, holders and
//!   stop) and [`conninfo_value`];
//! - `foreground`: [`run_foreground`], for `crablet postgres`;
//! - `binaries`: finding the PostgreSQL installation and its programs;
//! - `cluster`: the cluster's files (initdb, settings, `pg_hba.conf`, the
//!   socket directory);
//! - `server`: the server process (running or not, start, adopt, stop, log);
//! - `role`: crablet's role and database inside the cluster;
//! - `replica`: a hot standby of a cluster, in a data directory of its own;
//! - `process`: running the tools, and the server's user when run as root.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

mod binaries;
mod cluster;
mod foreground;
mod process;
mod replica;
mod role;
mod server;
#[cfg(test)]
mod testing;

pub use binaries::{postgres_bindir, postgres_tool};
pub use foreground::run_foreground;

use binaries::DEBIAN_PG_LIB_DIR;
use cluster::{check_shell_safe, log_file, socket_dir_for};
use process::SERVER_USER_CANDIDATES;
use process::{check_traversable, choose_server_user, chown, running_as_root, ServerUser};

/// The database crablet uses inside the cluster.
const DATABASE: &str = "crablet";

/// The cluster's bootstrap superuser, created by `initdb -U`; used only to create
/// crablet's role and databases.
const ADMIN_USER: &str = "crablet_admin";

/// The role crablet connects as: not a superuser, owner of [`DATABASE`]. In a
/// cluster made by an older version it is the bootstrap superuser.
const CRABLET_ROLE: &str = "crablet";

/// The lock file every holder of the cluster keeps a shared flock on.
const HOLDERS_LOCK_FILE: &str = "holders.lock";

/// The server's port. With no TCP listener it only names the socket file
/// (`.s.PGSQL.5432`), so it never collides with another server on the machine.
const PORT: u16 = 5432;

/// Why the private cluster could not be prepared, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No directory with `initdb` and `pg_ctl` was found.
    #[error(
        "no PostgreSQL server binaries found (looked for initdb and pg_ctl on PATH, in \
         `pg_config --bindir` and in {DEBIAN_PG_LIB_DIR}/*/bin): install PostgreSQL, e.g. \
         `apt-get install postgresql`, or set DATABASE_URL to use an existing server"
    )]
    NoBinaries,

    /// A file-system operation or process spawn failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path or program.
        context: String,
        source: io::Error,
    },

    /// A PostgreSQL tool ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}):\n{output}")]
    CommandFailed {
        /// The command line, for the operator to rerun by hand.
        command: String,
        status: ExitStatus,
        /// The tool's stderr and stdout, plus the tail of the server log for a
        /// failed start.
        output: String,
    },

    /// crablet runs as root and no unprivileged account exists to run PostgreSQL.
    #[error(
        "PostgreSQL refuses to run as root and none of the users {SERVER_USER_CANDIDATES:?} \
         exists in /etc/passwd; create a `postgres` user or run crablet as a normal user"
    )]
    NoServerUser,

    /// The account PostgreSQL runs as cannot reach the data directory.
    #[error(
        "PostgreSQL runs as user `{user}`, which cannot traverse {path} on the way to the \
         data directory; choose a data directory under /tmp or /var/lib, or run crablet as \
         a normal user"
    )]
    NotTraversable { user: String, path: PathBuf },

    /// The data or socket directory cannot be used safely.
    #[error("cannot use {path}: {reason}")]
    UnusablePath { path: PathBuf, reason: String },

    /// A server runs on the cluster but does not accept connections.
    #[error(
        "PostgreSQL (pid {pid}) runs on {pgdata} but did not accept connections on \
         {socket_dir} within {seconds} seconds; see {log}"
    )]
    NotAnswering {
        pid: u32,
        pgdata: PathBuf,
        socket_dir: PathBuf,
        seconds: u32,
        log: PathBuf,
    },
}

/// A running private PostgreSQL cluster, stopped on drop if this value started it.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    /// Directory holding `initdb`, `pg_ctl`, `psql` and `createdb` of one version.
    bindir: PathBuf,
    /// Absolute, canonical data directory; the working directory of every tool.
    data_dir: PathBuf,
    /// The cluster, `<data_dir>/pgdata`.
    pgdata: PathBuf,
    /// Where the server puts its socket; `host=` of the connection string.
    socket_dir: PathBuf,
    /// Port naming the socket file; `port=` of the connection string.
    port: u16,
    /// Who the tools run as: `Some` when crablet runs as root, since PostgreSQL
    /// refuses to; `None` runs them as the current user.
    server_user: Option<ServerUser>,
    /// The shared flock on `holders.lock` while this value holds the cluster;
    /// `None` once stopped (see the module doc).
    holder: Option<fs::File>,
    /// The superuser used to create roles and databases: [`ADMIN_USER`], or
    /// [`CRABLET_ROLE`] in a cluster made by an older version.
    admin_user: &'static str,
}

impl EmbeddedPostgres {
    /// Finds the binaries, runs initdb on first use, starts the server (or adopts
    /// one already running on this data dir), ensures database `crablet` exists.
    pub fn start(data_dir: &Path) -> Result<Self, EmbeddedError> {
        let bindir = postgres_bindir().ok_or(EmbeddedError::NoBinaries)?;
        log::debug!("using PostgreSQL binaries in {}", bindir.display());

        fs::create_dir_all(data_dir)
            .map_err(|e| io_error(e, format!("creating data directory {}", data_dir.display())))?;
        let data_dir = fs::canonicalize(data_dir).map_err(|e| {
            io_error(
                e,
                format!("resolving data directory {}", data_dir.display()),
            )
        })?;
        check_shell_safe(&data_dir)?;
        let pgdata = data_dir.join("pgdata");

        let server_user = if running_as_root(&data_dir)? {
            let user = choose_server_user(&pgdata)?;
            check_traversable(&data_dir, &user)?;
            chown(&data_dir, &user)?;
            let log_file = log_file(&data_dir);
            if log_file.exists() {
                chown(&log_file, &user)?;
            }
            Some(user)
        } else {
            None
        };

        // Become a holder before looking at the server: a last holder that is
        // stopping it holds the lock exclusive, and this waits for it to finish.
        let lock_path = data_dir.join(HOLDERS_LOCK_FILE);
        let holder = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error(e, format!("opening {}", lock_path.display())))?;
        holder
            .lock_shared()
            .map_err(|e| io_error(e, format!("locking {}", lock_path.display())))?;

        let mut pg = EmbeddedPostgres {
            bindir,
            socket_dir: socket_dir_for(&data_dir, PORT),
            data_dir,
            pgdata,
            port: PORT,
            server_user,
            holder: Some(holder),
            admin_user: ADMIN_USER,
        };
        pg.prepare_socket_dir()?;
        if !pg.pgdata.join("PG_VERSION").exists() {
            pg.initdb()?;
        }
        pg.write_hardening()?;
        pg.start_or_adopt()?;
        // A replica is a copy of its primary, roles and databases included,
        // and read-only.
        if !pg.is_replica() {
            pg.ensure_role()?;
            pg.ensure_database(DATABASE)?;
        }
        Ok(pg)
    }

    /// Connection string of the cluster's superuser, for creating and dropping
    /// databases (the test harness); crablet itself uses [`Self::connection_string`].
    pub fn admin_connection_string(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            conninfo_value(&self.socket_dir.to_string_lossy()),
            self.port,
            conninfo_value(self.admin_user),
            conninfo_value(dbname),
        )
    }

    /// libpq key-value connection string for a database of this cluster, e.g.
    /// "host=/abs/socketdir port=5432 user=crablet dbname=crablet".
    pub fn connection_string(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            conninfo_value(&self.socket_dir.to_string_lossy()),
            self.port,
            conninfo_value(CRABLET_ROLE),
            conninfo_value(dbname),
        )
    }

    /// Releases this holder; the last holder stops the server (pg_ctl stop -m
    /// fast -w). Idempotent. Returns whether this call stopped the server.
    pub fn stop(&mut self) -> Result<bool, EmbeddedError> {
        let Some(holder) = self.holder.take() else {
            return Ok(false);
        };
        // Exclusive only when no other holder is left; never waits.
        match holder.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                log::info!(
                    "another crablet still uses PostgreSQL in {}; leaving it running",
                    self.pgdata.display()
                );
                return Ok(false);
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(io_error(e, "locking holders.lock exclusively".to_owned()));
            }
        }
        let stopped = self.stop_server()?;
        // The exclusive lock is released when `holder` drops, after the stop.
        drop(holder);
        Ok(stopped)
    }

    /// The data directory (absolute).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop().map(drop) {
            log::error!("stopping PostgreSQL in {}: {e}", self.pgdata.display());
        }
    }
}

/// A value for a libpq key-value connection string (`key=value`), single-quoted
/// when it is empty or has whitespace, quotes or backslashes, with `'` and `\`
/// escaped inside the quotes: `my db` gives `'my db'`, `crablet` stays `crablet`.
pub fn conninfo_value(value: &str) -> String {
    if !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return value.to_owned();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    crate::store::quote::push_quoted(&mut quoted, value, '\'');
    quoted
}

fn io_error(source: io::Error, context: String) -> EmbeddedError {
    EmbeddedError::Io { context, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    use testing::{current_database, TempDir};

    #[test]
    fn conninfo_values_are_quoted_only_when_needed() {
        assert_eq!(conninfo_value("crablet"), "crablet");
        assert_eq!(conninfo_value("/tmp/x"), "/tmp/x");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(conninfo_value("my db"), "'my db'");
        assert_eq!(conninfo_value(r"it's\"), r"'it\'s\\'");
    }

    #[test]
    fn starts_a_cluster_and_stops_it() {
        let root = TempDir::new("cluster");
        let data_dir = root.0.join("data");

        let mut pg = EmbeddedPostgres::start(&data_dir).expect("first start runs initdb");
        assert!(pg.pgdata.join("PG_VERSION").exists());
        let expected = format!(
            "host={} port=5432 user=crablet dbname=crablet",
            pg.socket_dir.display()
        );
        assert_eq!(pg.connection_string("crablet"), expected);
        assert!(pg.socket_dir.is_absolute());
        let mode = fs::metadata(&pg.socket_dir).expect("socket dir").mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(current_database(&pg).expect("psql connects"), "crablet");

        // A second holder on the same data directory uses the running server;
        // the server outlives whichever holder stops first.
        let mut second = EmbeddedPostgres::start(&data_dir).expect("second start adopts");
        assert_eq!(second.connection_string("crablet"), expected);
        assert!(
            !second.stop().expect("second stops"),
            "another holder is left"
        );
        assert!(pg.is_running().expect("pg_ctl status"));
        let third = EmbeddedPostgres::start(&data_dir).expect("third start adopts");
        assert!(!pg.stop().expect("first stops"), "another holder is left");
        assert_eq!(current_database(&third).expect("psql connects"), "crablet");
        drop(third); // the last holder: stops the server

        assert!(!pg.is_running().expect("pg_ctl status"));
        let mut pg = EmbeddedPostgres::start(&data_dir).expect("start again");
        assert!(pg.stop().expect("stop"), "the only holder stops the server");
        assert!(!pg.is_running().expect("pg_ctl status"));
        assert!(!pg.pgdata.join("postmaster.pid").exists());
        assert!(current_database(&pg).is_err());
        pg.stop().expect("stop is idempotent");

        // Later starts reuse the cluster; dropping the value stops the server.
        let restarted = EmbeddedPostgres::start(&data_dir).expect("restart");
        assert_eq!(
            current_database(&restarted).expect("psql connects"),
            "crablet"
        );
        drop(restarted);
        assert!(!pg.is_running().expect("pg_ctl status"));
    }
}
