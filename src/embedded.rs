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
//! daemonizes and survives it, and the next start adopts it.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write as _};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

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

/// crablet's settings file inside pgdata, included at the end of postgresql.conf.
const CRABLET_CONF: &str = "crablet.conf";

/// The line appended to postgresql.conf (once) to read [`CRABLET_CONF`].
const INCLUDE_LINE: &str = "include_if_exists = 'crablet.conf'";

/// The whole pg_hba.conf: unix socket only, no TCP line at all.
const PG_HBA_CONF: &str = "\
# Written by crablet at every start: connections only over the unix socket,
# whose directory is private (mode 0700) to the server's user. No TCP lines.
# TYPE  DATABASE  USER  METHOD
local   all       all   trust
";

/// The server's port. With no TCP listener it only names the socket file
/// (`.s.PGSQL.5432`), so it never collides with another server on the machine.
const PORT: u16 = 5432;

/// Longest unix socket path the kernel accepts: `sun_path` is 108 bytes on Linux,
/// including the terminating NUL.
const SOCKET_PATH_MAX_BYTES: usize = 107;

/// Where the socket directory goes when `<data_dir>/socket` cannot hold it.
const TMP_SOCKET_PARENT: &str = "/tmp";

/// How long `pg_ctl` waits for the server to start or stop.
const PG_CTL_TIMEOUT_SECONDS: u32 = 60;

/// How many lines of the server log a start failure reports.
const LOG_TAIL_LINES: usize = 30;

/// How many bytes from the end of the server log are read to find those lines.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// Where Debian and Ubuntu install one directory per PostgreSQL major version.
const DEBIAN_PG_LIB_DIR: &str = "/usr/lib/postgresql";

/// Unprivileged accounts PostgreSQL runs as when crablet runs as root, in order.
const SERVER_USER_CANDIDATES: &[&str] = &["postgres", "nobody"];

/// Settings passed as `-c name=value` on every start, so a cluster always runs with
/// the settings of the crablet that starts it, whatever its postgresql.conf says.
/// `unix_socket_directories` and `port` are added next to these.
const SERVER_SETTINGS: &[(&str, &str)] = &[
    // No TCP at all: the only way in is the private unix socket.
    ("listen_addresses", ""),
    ("unix_socket_permissions", "0700"),
    ("max_connections", "200"),
    // crablet takes many advisory locks per append batch; the shared lock table
    // holds max_locks_per_transaction * max_connections entries.
    ("max_locks_per_transaction", "512"),
    ("shared_buffers", "256MB"),
    // Durability: an acknowledged append survives a crash.
    ("fsync", "on"),
    ("synchronous_commit", "on"),
];

/// Environment variables that would make the PostgreSQL tools talk to another
/// server or database than the one named on their command line.
const LIBPQ_ENV_VARS: &[&str] = &[
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGPASSFILE",
];

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
        if pg.is_running()? {
            pg.adopt();
        } else {
            pg.start_server()?;
        }
        pg.ensure_role()?;
        pg.ensure_database(DATABASE)?;
        Ok(pg)
    }

    /// Writes crablet's settings and the socket-only pg_hba.conf into the cluster,
    /// and makes postgresql.conf include the settings: a server started by hand
    /// with `pg_ctl start` then listens on no TCP address either.
    fn write_hardening(&self) -> Result<(), EmbeddedError> {
        let write = |path: PathBuf, text: &str| {
            fs::write(&path, text)
                .map_err(|e| io_error(e, format!("writing {}", path.display())))?;
            if let Some(user) = &self.server_user {
                chown(&path, user)?;
            }
            Ok::<(), EmbeddedError>(())
        };
        write(
            self.pgdata.join(CRABLET_CONF),
            &crablet_conf(&self.socket_dir, self.port),
        )?;
        write(self.pgdata.join("pg_hba.conf"), PG_HBA_CONF)?;
        let conf_path = self.pgdata.join("postgresql.conf");
        let conf = fs::read_to_string(&conf_path)
            .map_err(|e| io_error(e, format!("reading {}", conf_path.display())))?;
        if !conf.lines().any(|line| line.trim() == INCLUDE_LINE) {
            let mut conf = conf;
            if !conf.ends_with('\n') {
                conf.push('\n');
            }
            conf.push_str("\n# crablet's settings (no TCP listener, private socket); keep last.\n");
            conf.push_str(INCLUDE_LINE);
            conf.push('\n');
            write(conf_path, &conf)?;
        }
        Ok(())
    }

    /// Picks the superuser to administer with, and creates crablet's role.
    fn ensure_role(&mut self) -> Result<(), EmbeddedError> {
        if !self.role_can_connect(ADMIN_USER) {
            // A cluster made by an older version: `crablet` is its superuser.
            self.admin_user = CRABLET_ROLE;
            log::info!(
                "the cluster in {} was made by an older crablet: crablet connects as its \
                 bootstrap superuser `{CRABLET_ROLE}` (a new cluster uses a role that is \
                 not a superuser)",
                self.pgdata.display()
            );
            return Ok(());
        }
        let mut cmd = self.tool("psql");
        self.connection_args(&mut cmd);
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"]);
        // Concurrent starts may race to create it: either error means it exists.
        run_with_stdin(
            cmd,
            &format!(
                "DO $$ BEGIN CREATE ROLE {CRABLET_ROLE} LOGIN NOSUPERUSER NOCREATEROLE; \
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;\n"
            ),
        )?;
        Ok(())
    }

    /// Whether `role` can log in to database `postgres`.
    fn role_can_connect(&self, role: &str) -> bool {
        let mut cmd = self.tool("psql");
        cmd.arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args([
                "-U", role, "-X", "-q", "-t", "-d", "postgres", "-c", "SELECT 1",
            ]);
        run(cmd).is_ok()
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
        // The exclusive lock is released when `holder` drops, after the stop.
        drop(holder);
        Ok(true)
    }

    /// The data directory (absolute).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Creates the socket directory, private to the server's user.
    fn prepare_socket_dir(&self) -> Result<(), EmbeddedError> {
        let dir = &self.socket_dir;
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(io_error(
                    e,
                    format!("creating socket directory {}", dir.display()),
                ))
            }
        }
        // It may live in world-writable /tmp: refuse one planted by somebody else.
        let meta = fs::symlink_metadata(dir)
            .map_err(|e| io_error(e, format!("inspecting socket directory {}", dir.display())))?;
        if !meta.is_dir() {
            return Err(EmbeddedError::UnusablePath {
                path: dir.clone(),
                reason: "socket directory exists and is not a directory".to_owned(),
            });
        }
        let me = current_uid(&self.data_dir)?;
        let server_uid = self.server_user.as_ref().map_or(me, |u| u.uid);
        if meta.uid() != me && meta.uid() != server_uid {
            return Err(EmbeddedError::UnusablePath {
                path: dir.clone(),
                reason: format!(
                    "socket directory is owned by uid {}, not by crablet or the server",
                    meta.uid()
                ),
            });
        }
        if let Some(user) = &self.server_user {
            chown(dir, user)?;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_error(e, format!("setting mode 0700 on {}", dir.display())))
    }

    /// Creates the cluster.
    fn initdb(&self) -> Result<(), EmbeddedError> {
        log::info!(
            "initializing a new PostgreSQL cluster in {}",
            self.pgdata.display()
        );
        // Create it ourselves so that, as root, the server's user owns it.
        match fs::DirBuilder::new().mode(0o700).create(&self.pgdata) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(io_error(e, format!("creating {}", self.pgdata.display())));
            }
        }
        if let Some(user) = &self.server_user {
            chown(&self.pgdata, user)?;
        }
        let mut cmd = self.tool("initdb");
        cmd.arg("-D").arg(&self.pgdata).args([
            "-U",
            ADMIN_USER,
            // `trust` is acceptable only because the server listens on no TCP
            // address and its socket directory is private (0700, owned by the
            // server's user): only that user and root can connect at all.
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run(cmd)?;
        log::info!(
            "initialized PostgreSQL cluster in {}",
            self.pgdata.display()
        );
        Ok(())
    }

    /// Whether `pg_ctl status` sees a server running on this cluster.
    fn is_running(&self) -> Result<bool, EmbeddedError> {
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
    fn adopt(&mut self) {
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

    /// Starts the server with crablet's settings and waits until it accepts connections.
    fn start_server(&mut self) -> Result<(), EmbeddedError> {
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

    /// Creates `dbname` unless it exists.
    fn ensure_database(&self, dbname: &str) -> Result<(), EmbeddedError> {
        if self.database_exists(dbname)? {
            return Ok(());
        }
        let mut cmd = self.tool("createdb");
        self.connection_args(&mut cmd);
        cmd.args(["-O", CRABLET_ROLE]).arg(dbname);
        match run(cmd) {
            Ok(_) => {
                log::info!("created database {dbname}");
                Ok(())
            }
            // Created concurrently by another crablet on the same cluster.
            Err(EmbeddedError::CommandFailed { .. }) if self.database_exists(dbname)? => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn database_exists(&self, dbname: &str) -> Result<bool, EmbeddedError> {
        let mut cmd = self.tool("psql");
        self.connection_args(&mut cmd);
        // The name travels as a psql variable, quoted by psql (`:'dbname'`); psql
        // interpolates variables in scripts, not in `-c`, hence stdin.
        cmd.args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "postgres",
            "-v",
        ])
        .arg(format!("dbname={dbname}"));
        let output = run_with_stdin(
            cmd,
            "SELECT 1 FROM pg_database WHERE datname = :'dbname';\n",
        )?;
        Ok(String::from_utf8_lossy(&output.stdout).trim() == "1")
    }

    /// `-h <socket dir> -p <port> -U <admin user>`.
    fn connection_args(&self, cmd: &mut Command) {
        cmd.arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", self.admin_user]);
    }

    /// A command for one of the PostgreSQL tools, run as the server's user, in
    /// the data directory, with no stdin and no stray libpq environment.
    fn tool(&self, name: &str) -> Command {
        let program = tool_path(&self.bindir, name);
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.data_dir).stdin(Stdio::null());
        for var in LIBPQ_ENV_VARS {
            cmd.env_remove(var);
        }
        if let Some(user) = &self.server_user {
            // std drops supplementary groups (setgroups) before setuid.
            cmd.uid(user.uid).gid(user.gid).env("HOME", &self.data_dir);
        }
        cmd
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop().map(drop) {
            log::error!("stopping PostgreSQL in {}: {e}", self.pgdata.display());
        }
    }
}

/// Foreground mode for `crablet postgres --data-dir DIR`: start, print two lines
/// to stdout (flushed), `DATABASE_URL=<connection_string("crablet")>` first and
/// `ADMIN_DATABASE_URL=<admin_connection_string("postgres")>` second, then block
/// until stdin reaches EOF or SIGINT/SIGTERM arrives, then stop (as a holder: the
/// server stops if no other crablet uses it). With `remove_data_dir`, the data
/// directory is deleted after a stop that stopped the server.
///
/// Used by the test harness and the load tester, which keep the pipe to its stdin
/// open and so the cluster dies with them. Call it outside any async runtime: it
/// builds its own small one to wait for signals.
pub fn run_foreground(data_dir: &Path, remove_data_dir: bool) -> Result<(), EmbeddedError> {
    let mut pg = EmbeddedPostgres::start(data_dir)?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "DATABASE_URL={}", pg.connection_string(DATABASE))
        .and_then(|()| {
            writeln!(
                stdout,
                "ADMIN_DATABASE_URL={}",
                pg.admin_connection_string("postgres")
            )
        })
        .and_then(|()| stdout.flush())
        .map_err(|e| io_error(e, "writing DATABASE_URL to stdout".to_owned()))?;
    drop(stdout);
    let reason = wait_for_shutdown()?;
    log::info!("{reason}: shutting down");
    let stopped = pg.stop()?;
    if remove_data_dir && stopped {
        let dir = pg.data_dir().to_path_buf();
        fs::remove_dir_all(&dir).map_err(|e| io_error(e, format!("removing {}", dir.display())))?;
        log::info!("removed {}", dir.display());
    }
    Ok(())
}

/// Blocks until stdin reaches EOF, SIGINT or SIGTERM, and says which.
fn wait_for_shutdown() -> Result<&'static str, EmbeddedError> {
    use tokio::signal::unix::{signal, SignalKind};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| io_error(e, "building the signal runtime".to_owned()))?;
    runtime.block_on(async {
        let listen = |kind, name: &str| {
            signal(kind).map_err(|e| io_error(e, format!("listening for {name}")))
        };
        let mut sigint = listen(SignalKind::interrupt(), "SIGINT")?;
        let mut sigterm = listen(SignalKind::terminate(), "SIGTERM")?;
        let (eof_tx, eof_rx) = tokio::sync::oneshot::channel();
        // A plain thread: tokio's stdin would keep the runtime from shutting down
        // while a read is blocked. The thread dies with the process.
        std::thread::spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
            let _ = eof_tx.send(());
        });
        Ok(tokio::select! {
            _ = eof_rx => "stdin closed",
            _ = sigint.recv() => "SIGINT",
            _ = sigterm.recv() => "SIGTERM",
        })
    })
}

/// The account PostgreSQL runs as when crablet runs as root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerUser {
    name: String,
    uid: u32,
    gid: u32,
}

/// The directory of a PostgreSQL installation, one holding `initdb` and `pg_ctl`:
/// where the first `initdb` on PATH really lives, else `pg_config --bindir`, else
/// the newest `/usr/lib/postgresql/<version>/bin`. `None` when none is found.
pub fn postgres_bindir() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|path| bindir_on_path(&path))
        .or_else(pg_config_bindir)
        .or_else(|| newest_versioned_bindir(Path::new(DEBIAN_PG_LIB_DIR)))
}

/// The first PATH entry with `initdb`, resolved through symlinks so that the
/// other tools of the same installation are found next to it.
fn bindir_on_path(path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path).find_map(|dir| {
        let initdb = dir.join("initdb");
        if !is_executable(&initdb) {
            return None;
        }
        let resolved = fs::canonicalize(&initdb)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        resolved
            .into_iter()
            .chain([dir])
            .find(|d| has_server_binaries(d))
    })
}

fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    has_server_binaries(&dir).then_some(dir)
}

/// The `<root>/<version>/bin` with server binaries and the highest version.
fn newest_versioned_bindir(root: &Path) -> Option<PathBuf> {
    fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = version_key(&entry.file_name().to_string_lossy())?;
            let bin = entry.path().join("bin");
            has_server_binaries(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// Orders version directory names numerically ("9.6" < "10" < "15");
/// `None` for names that are not versions.
fn version_key(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn has_server_binaries(dir: &Path) -> bool {
    is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A PostgreSQL program such as `psql` or `pgbench`: the one of the installation
/// [`postgres_bindir`] finds, else the first on PATH (some packagings ship the
/// client programs apart from the server, and a machine may have only the
/// clients). `None` when neither has it.
pub fn postgres_tool(name: &str) -> Option<PathBuf> {
    postgres_bindir()
        .map(|bindir| bindir.join(name))
        .filter(|p| is_executable(p))
        .or_else(|| tool_on_path(name))
}

/// A tool of the installation in `bindir`, else the one on PATH (some packagings
/// ship the client tools apart from the server); the path in `bindir` when
/// neither has it, so that the error names it.
fn tool_path(bindir: &Path, name: &str) -> PathBuf {
    let in_bindir = bindir.join(name);
    if is_executable(&in_bindir) {
        return in_bindir;
    }
    tool_on_path(name).unwrap_or(in_bindir)
}

/// The first executable `name` on PATH.
fn tool_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    })
}

/// `<data_dir>/socket`, unless the socket path would be too long or contain
/// characters that need quoting: then `/tmp/crablet-<hash of data_dir>`.
fn socket_dir_for(data_dir: &Path, port: u16) -> PathBuf {
    let preferred = data_dir.join("socket");
    let socket_file_len = preferred.as_os_str().len() + format!("/.s.PGSQL.{port}").len();
    if socket_file_len <= SOCKET_PATH_MAX_BYTES && is_plain_path(&preferred) {
        return preferred;
    }
    let hash = xxhash_rust::xxh3::xxh3_64(data_dir.as_os_str().as_encoded_bytes());
    Path::new(TMP_SOCKET_PARENT).join(format!("crablet-{hash:016x}"))
}

/// Whether the path has only characters that need no quoting in the shell
/// command pg_ctl builds, nor in `unix_socket_directories` (a comma-separated list).
fn is_plain_path(path: &Path) -> bool {
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"/._+-".contains(b))
}

/// pg_ctl passes the data directory and log file to `/bin/sh` inside double
/// quotes; refuse the characters that would break out of them.
fn check_shell_safe(data_dir: &Path) -> Result<(), EmbeddedError> {
    let bytes = data_dir.as_os_str().as_encoded_bytes();
    if bytes.iter().any(|b| b"\"$`\\\n".contains(b)) {
        return Err(EmbeddedError::UnusablePath {
            path: data_dir.to_path_buf(),
            reason: "the data directory path must not contain \", $, `, \\ or a newline".to_owned(),
        });
    }
    Ok(())
}

/// The `-o` argument of `pg_ctl start`, which pg_ctl hands to `/bin/sh`.
/// `socket_dir` is a plain path (see [`socket_dir_for`]), so nothing needs quoting
/// except the empty `listen_addresses`.
fn server_options(socket_dir: &Path, port: u16) -> String {
    let mut options = format!(
        "-c port={port} -c unix_socket_directories={}",
        socket_dir.display()
    );
    for (name, value) in SERVER_SETTINGS {
        let value = if value.is_empty() { "''" } else { value };
        let _ = write!(options, " -c {name}={value}");
    }
    options
}

/// The text of `crablet.conf`: the settings of [`server_options`], for a server
/// started without them (by hand). `socket_dir` is a plain path.
fn crablet_conf(socket_dir: &Path, port: u16) -> String {
    let mut conf = String::from(
        "# Written by crablet at every start; edits are overwritten.\n\
         # No TCP listener: the only way in is the private unix socket.\n",
    );
    let _ = writeln!(conf, "port = {port}");
    let _ = writeln!(conf, "unix_socket_directories = '{}'", socket_dir.display());
    for (name, value) in SERVER_SETTINGS {
        let _ = writeln!(conf, "{name} = '{value}'");
    }
    conf
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
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

fn log_file(data_dir: &Path) -> PathBuf {
    data_dir.join("postgresql.log")
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

/// Whether this process is root, judged by the owner of `/proc/self` (or, where
/// there is no /proc, of a file it creates in `data_dir`).
fn running_as_root(data_dir: &Path) -> Result<bool, EmbeddedError> {
    Ok(current_uid(data_dir)? == 0)
}

fn current_uid(data_dir: &Path) -> Result<u32, EmbeddedError> {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    let probe = data_dir.join(format!(".crablet-uid-probe-{}", std::process::id()));
    let uid = fs::File::create(&probe)
        .and_then(|file| file.metadata())
        .map(|meta| meta.uid())
        .map_err(|e| io_error(e, format!("creating {}", probe.display())));
    let _ = fs::remove_file(&probe);
    uid
}

/// The owner of an existing cluster when that is not root (PostgreSQL insists on
/// running as the owner of its data), else `postgres`, else `nobody`.
fn choose_server_user(pgdata: &Path) -> Result<ServerUser, EmbeddedError> {
    let passwd = fs::read_to_string("/etc/passwd")
        .map_err(|e| io_error(e, "reading /etc/passwd".to_owned()))?;
    if let Ok(meta) = fs::metadata(pgdata.join("PG_VERSION")) {
        if meta.uid() != 0 {
            let name = passwd_entry(&passwd, |_, uid| uid == meta.uid())
                .map_or_else(|| format!("uid {}", meta.uid()), |u| u.name);
            return Ok(ServerUser {
                name,
                uid: meta.uid(),
                gid: meta.gid(),
            });
        }
    }
    SERVER_USER_CANDIDATES
        .iter()
        .find_map(|wanted| passwd_entry(&passwd, |name, _| name == *wanted))
        .ok_or(EmbeddedError::NoServerUser)
}

/// The first `/etc/passwd` entry whose name and uid satisfy `matches`.
fn passwd_entry(passwd: &str, matches: impl Fn(&str, u32) -> bool) -> Option<ServerUser> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        matches(name, uid).then(|| ServerUser {
            name: name.to_owned(),
            uid,
            gid,
        })
    })
}

/// Fails unless `user` may search every directory above `data_dir`.
fn check_traversable(data_dir: &Path, user: &ServerUser) -> Result<(), EmbeddedError> {
    for dir in data_dir.ancestors().skip(1) {
        let meta =
            fs::metadata(dir).map_err(|e| io_error(e, format!("inspecting {}", dir.display())))?;
        if !may_search(meta.mode(), meta.uid(), meta.gid(), user) {
            return Err(EmbeddedError::NotTraversable {
                user: user.name.clone(),
                path: dir.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Unix permission check for searching a directory (supplementary groups ignored).
fn may_search(mode: u32, owner: u32, group: u32, user: &ServerUser) -> bool {
    let bit = if owner == user.uid {
        0o100
    } else if group == user.gid {
        0o010
    } else {
        0o001
    };
    mode & bit != 0
}

fn chown(path: &Path, user: &ServerUser) -> Result<(), EmbeddedError> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(|e| {
        io_error(
            e,
            format!("giving {} to user {}", path.display(), user.name),
        )
    })
}

/// Runs a tool to completion, failing on a non-zero exit.
fn run(cmd: Command) -> Result<Output, EmbeddedError> {
    run_with_stdin(cmd, "")
}

/// Runs a tool with `input` on its stdin, failing on a non-zero exit.
fn run_with_stdin(mut cmd: Command, input: &str) -> Result<Output, EmbeddedError> {
    let what = describe(&cmd);
    log::debug!("running `{what}`");
    let spawn_error = |e| io_error(e, format!("running `{what}`"));
    let output = if input.is_empty() {
        cmd.output().map_err(spawn_error)?
    } else {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).map_err(spawn_error)?;
        }
        child.wait_with_output().map_err(spawn_error)?
    };
    if output.status.success() {
        Ok(output)
    } else {
        Err(EmbeddedError::CommandFailed {
            command: what,
            status: output.status,
            output: output_text(&output),
        })
    }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn output_text(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    [stderr.trim(), stdout.trim()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn io_error(source: io::Error, context: String) -> EmbeddedError {
    EmbeddedError::Io { context, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    /// A fresh directory under /tmp (reachable by the `postgres` user when the
    /// tests run as root), removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> Self {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970")
                .subsec_nanos();
            let dir = PathBuf::from(format!(
                "/tmp/crablet-test-{label}-{}-{nanos}",
                std::process::id()
            ));
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn fake_tool(dir: &Path, name: &str) {
        fs::create_dir_all(dir).expect("create bin dir");
        let path = dir.join(name);
        fs::write(&path, "#!/bin/sh\n").expect("write fake tool");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn fake_bindir(dir: &Path) {
        fake_tool(dir, "initdb");
        fake_tool(dir, "pg_ctl");
    }

    #[test]
    fn version_directories_order_numerically() {
        let mut versions = vec!["15", "9.6", "10", "16", "9.10"];
        versions.sort_by_key(|v| version_key(v));
        assert_eq!(versions, ["9.6", "9.10", "10", "15", "16"]);
        assert_eq!(version_key("common"), None);
        assert_eq!(version_key(""), None);
    }

    #[test]
    fn the_newest_versioned_bindir_with_server_binaries_wins() {
        let root = TempDir::new("versions");
        fake_bindir(&root.0.join("9.6/bin"));
        fake_bindir(&root.0.join("15/bin"));
        fake_tool(&root.0.join("16/bin"), "psql"); // client only: skipped
        fake_bindir(&root.0.join("common/bin")); // not a version: skipped
        assert_eq!(
            newest_versioned_bindir(&root.0),
            Some(root.0.join("15/bin"))
        );
        assert_eq!(newest_versioned_bindir(&root.0.join("missing")), None);
    }

    #[test]
    fn initdb_on_path_is_followed_to_its_installation() {
        let root = TempDir::new("path");
        let install = root.0.join("install/bin");
        fake_bindir(&install);
        let linked = root.0.join("linked");
        fs::create_dir_all(&linked).expect("create linked dir");
        std::os::unix::fs::symlink(install.join("initdb"), linked.join("initdb"))
            .expect("symlink initdb");
        let empty = root.0.join("empty");
        fs::create_dir_all(&empty).expect("create empty dir");

        let path = std::env::join_paths([&empty, &linked]).expect("join PATH");
        assert_eq!(bindir_on_path(&path), Some(install.clone()));

        let path = std::env::join_paths([&empty]).expect("join PATH");
        assert_eq!(bindir_on_path(&path), None);

        let path = std::env::join_paths([&install, &linked]).expect("join PATH");
        assert_eq!(bindir_on_path(&path), Some(install));
    }

    #[test]
    fn the_socket_stays_in_a_short_data_dir() {
        assert_eq!(
            socket_dir_for(Path::new("/var/lib/crablet"), 5432),
            PathBuf::from("/var/lib/crablet/socket")
        );
    }

    #[test]
    fn the_socket_moves_to_tmp_when_its_path_would_be_too_long() {
        let long = PathBuf::from(format!("/{}", "d".repeat(100)));
        let dir = socket_dir_for(&long, 5432);
        assert!(dir.starts_with("/tmp"), "{}", dir.display());
        assert!(dir.to_string_lossy().starts_with("/tmp/crablet-"));
        assert!(dir.as_os_str().len() + "/.s.PGSQL.5432".len() <= SOCKET_PATH_MAX_BYTES);
        // Stable, and distinct per data directory.
        assert_eq!(dir, socket_dir_for(&long, 5432));
        let other = PathBuf::from(format!("/{}", "e".repeat(100)));
        assert_ne!(dir, socket_dir_for(&other, 5432));

        // Exactly at the limit stays; one byte more moves.
        let suffix = "/socket/.s.PGSQL.5432".len();
        let fits = PathBuf::from(format!(
            "/{}",
            "f".repeat(SOCKET_PATH_MAX_BYTES - suffix - 1)
        ));
        assert_eq!(socket_dir_for(&fits, 5432), fits.join("socket"));
        let too_long = PathBuf::from(format!("/{}", "f".repeat(SOCKET_PATH_MAX_BYTES - suffix)));
        assert!(socket_dir_for(&too_long, 5432).starts_with("/tmp"));
    }

    #[test]
    fn the_socket_moves_to_tmp_when_its_path_needs_quoting() {
        let dir = socket_dir_for(Path::new("/srv/my data"), 5432);
        assert!(dir.starts_with("/tmp"), "{}", dir.display());
        assert!(is_plain_path(&dir));
    }

    #[test]
    fn data_dirs_that_break_pg_ctl_quoting_are_refused() {
        assert!(check_shell_safe(Path::new("/srv/my data")).is_ok());
        for bad in ["/srv/a\"b", "/srv/$HOME", "/srv/a`b`", "/srv/a\\b"] {
            assert!(check_shell_safe(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_options_listen_on_no_tcp_address_and_keep_durability() {
        let options = server_options(Path::new("/d/socket"), 5432);
        assert!(options.contains("-c listen_addresses=''"), "{options}");
        assert!(options.contains("-c unix_socket_directories=/d/socket"));
        assert!(options.contains("-c port=5432"));
        assert!(options.contains("-c max_locks_per_transaction=512"));
        assert!(options.contains("-c fsync=on"));
        assert!(options.contains("-c synchronous_commit=on"));
    }

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
    fn conninfo_values_are_quoted_only_when_needed() {
        assert_eq!(conninfo_value("crablet"), "crablet");
        assert_eq!(conninfo_value("/tmp/x"), "/tmp/x");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(conninfo_value("my db"), "'my db'");
        assert_eq!(conninfo_value(r"it's\"), r"'it\'s\\'");
    }

    #[test]
    fn passwd_entries_are_found_by_name_or_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      # comment\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                      postgres:x:101:104:PostgreSQL administrator:/var/lib/postgresql:/bin/bash\n";
        let postgres = ServerUser {
            name: "postgres".to_owned(),
            uid: 101,
            gid: 104,
        };
        assert_eq!(
            passwd_entry(passwd, |name, _| name == "postgres"),
            Some(postgres.clone())
        );
        assert_eq!(passwd_entry(passwd, |_, uid| uid == 101), Some(postgres));
        assert_eq!(passwd_entry(passwd, |name, _| name == "absent"), None);
    }

    #[test]
    fn search_permission_follows_owner_group_other() {
        let user = ServerUser {
            name: "postgres".to_owned(),
            uid: 101,
            gid: 104,
        };
        assert!(may_search(0o755, 0, 0, &user));
        assert!(!may_search(0o700, 0, 0, &user)); // like /root
        assert!(may_search(0o700, 101, 0, &user));
        assert!(may_search(0o750, 0, 104, &user));
        assert!(!may_search(0o750, 0, 0, &user));
        assert!(!may_search(0o604, 101, 0, &user)); // owner bits win
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\n", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }

    /// Runs `SELECT current_database()` through the connection string.
    fn current_database(pg: &EmbeddedPostgres) -> Result<String, EmbeddedError> {
        let mut cmd = pg.tool("psql");
        cmd.args(["-X", "-t", "-A", "-c", "SELECT current_database()"])
            .arg(pg.connection_string(DATABASE));
        let output = run(cmd)?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
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

    /// Runs `sql` through crablet's own connection string; returns its output.
    fn as_crablet(pg: &EmbeddedPostgres, sql: &str) -> String {
        let mut cmd = pg.tool("psql");
        cmd.args(["-X", "-t", "-A", "-c", sql])
            .arg(pg.connection_string(DATABASE));
        let output = run(cmd).expect("psql as crablet");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    #[test]
    fn the_cluster_is_hardened_on_disk_and_crablet_is_not_a_superuser() {
        let root = TempDir::new("hardening");
        let data_dir = root.0.join("data");
        let mut pg = EmbeddedPostgres::start(&data_dir).expect("start");

        // crablet's role: not a superuser, owner of its database.
        assert_eq!(
            as_crablet(
                &pg,
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            ),
            "f"
        );
        assert_eq!(
            as_crablet(
                &pg,
                "SELECT pg_get_userbyid(datdba) FROM pg_database \
                 WHERE datname = current_database()"
            ),
            "crablet"
        );

        // On disk: postgresql.conf includes crablet.conf, which has no TCP
        // listener; pg_hba.conf has no TCP line.
        let conf = fs::read_to_string(pg.pgdata.join("postgresql.conf")).expect("conf");
        assert_eq!(conf.lines().last(), Some(INCLUDE_LINE));
        let crablet_conf = fs::read_to_string(pg.pgdata.join(CRABLET_CONF)).expect("crablet.conf");
        assert!(
            crablet_conf.contains("listen_addresses = ''"),
            "{crablet_conf}"
        );
        assert!(crablet_conf.contains("unix_socket_permissions = '0700'"));
        let hba = fs::read_to_string(pg.pgdata.join("pg_hba.conf")).expect("pg_hba.conf");
        let rules: Vec<&str> = hba
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .collect();
        assert!(
            rules.iter().all(|l| l.starts_with("local")),
            "pg_hba.conf rules: {rules:?}"
        );
        assert!(pg.stop().expect("stop"));

        // An operator's plain `pg_ctl start`, without crablet's options.
        let mut by_hand = pg.tool("pg_ctl");
        by_hand
            .arg("start")
            .arg("-D")
            .arg(&pg.pgdata)
            .arg("-l")
            .arg(log_file(&pg.data_dir))
            .args(["-w", "-t", "60"]);
        run(by_hand).expect("pg_ctl start by hand");
        let pid_file = fs::read_to_string(pg.pgdata.join("postmaster.pid")).expect("pid file");
        // Line 6 of postmaster.pid is the first TCP address listened on.
        let listen = pid_file
            .lines()
            .nth(5)
            .unwrap_or_default()
            .trim()
            .to_owned();
        let shown = as_crablet(&pg, "SHOW listen_addresses");
        let mut stop = pg.tool("pg_ctl");
        stop.arg("stop")
            .arg("-D")
            .arg(&pg.pgdata)
            .args(["-m", "fast", "-w"]);
        run(stop).expect("pg_ctl stop by hand");
        assert_eq!((listen.as_str(), shown.as_str()), ("", ""));
    }
}
