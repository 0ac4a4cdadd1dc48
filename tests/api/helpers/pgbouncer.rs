//! PgBouncer 1.18 (Debian's `/usr/sbin/pgbouncer`, or `pgbouncer` on the
//! PATH) in front of the test cluster, on a free loopback port, in
//! transaction mode with a small server pool (`default_pool_size = 4`), so
//! that clients really share server connections. Its directory (settings,
//! user list, log) is removed, and the process killed, on drop.
//!
//! PgBouncer refuses to run as root: when the tests run as root it runs as
//! the account that owns the cluster's socket directory, the one the
//! cluster's server runs as (see `src/embedded/process.rs`).

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{cluster, free_port};

/// A running PgBouncer.
pub struct PgBouncer {
    pub port: u16,
    /// The role it connects as (crablet's).
    user: String,
    dir: PathBuf,
    child: Child,
}

impl PgBouncer {
    /// PgBouncer in transaction mode.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// PgBouncer with `extra` appended to its `[pgbouncer]` section (later
    /// keys override earlier ones: `pool_mode = statement`,
    /// `ignore_startup_parameters = options`).
    pub fn start_with(extra: &str) -> Self {
        Self::in_front_of(&cluster().base, extra)
    }

    /// PgBouncer in transaction mode in front of the server of `base` (a
    /// key-value connection string with `host`, `port` and `user`), with
    /// `extra` settings.
    pub fn in_front_of(base: &str, extra: &str) -> Self {
        let value = |key: &str| {
            base.split_whitespace()
                .find_map(|part| part.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
        };
        let host = value("host").expect("the test cluster's host");
        let port = value("port").unwrap_or_else(|| "5432".into());
        let user = value("user").unwrap_or_else(|| "crablet".into());
        let listen_port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "crablet-pgbouncer-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("PgBouncer's directory");
        std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n")).expect("users.txt");
        let ini = format!(
            "[databases]\n\
             * = host={host} port={port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {listen_port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {users}\n\
             pool_mode = transaction\n\
             default_pool_size = 4\n\
             max_client_conn = 1000\n\
             logfile = {log}\n\
             {extra}\n",
            users = dir.join("users.txt").display(),
            log = dir.join("pgbouncer.log").display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).expect("pgbouncer.ini");
        let mut command = Command::new(program());
        command
            .arg(dir.join("pgbouncer.ini"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Root: the account the cluster's server runs as, which owns its
        // socket directory.
        let socket_dir = std::fs::metadata(&host).expect("the cluster's socket directory");
        if running_as_root() && socket_dir.uid() != 0 {
            for entry in std::fs::read_dir(&dir).expect("list").flatten() {
                std::os::unix::fs::chown(entry.path(), Some(socket_dir.uid()), None)
                    .expect("chown");
            }
            std::os::unix::fs::chown(&dir, Some(socket_dir.uid()), Some(socket_dir.gid()))
                .expect("chown");
            command.uid(socket_dir.uid()).gid(socket_dir.gid());
        }
        let child = command.spawn().expect("spawn pgbouncer");
        let mut bouncer = PgBouncer {
            port: listen_port,
            user,
            dir,
            child,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", listen_port)).is_err() {
            if let Ok(Some(status)) = bouncer.child.try_wait() {
                panic!("pgbouncer exited with {status}: {}", bouncer.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "pgbouncer did not listen: {}",
                bouncer.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        bouncer
    }

    /// The connection string of `database` (a test database's connection
    /// string) through this PgBouncer.
    pub fn url(&self, database: &str) -> String {
        let dbname = database
            .split_whitespace()
            .find_map(|part| part.strip_prefix("dbname="))
            .expect("a dbname");
        format!(
            "host=127.0.0.1 port={} user={} dbname={dbname}",
            self.port, self.user
        )
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `/usr/sbin/pgbouncer` (Debian), else `pgbouncer` on the PATH.
fn program() -> PathBuf {
    let debian = PathBuf::from("/usr/sbin/pgbouncer");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("pgbouncer")
    }
}

/// Whether the tests run as root (the owner of `/proc/self`).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
