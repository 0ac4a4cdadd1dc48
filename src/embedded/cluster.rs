//! The cluster's files: initdb, crablet's settings (`crablet.conf`, the
//! socket-only `pg_hba.conf`) re-applied at every start, the private socket
//! directory, and which data directory paths are safe to hand to pg_ctl.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{chown, current_uid, run};
use super::{io_error, EmbeddedError, EmbeddedPostgres, ADMIN_USER};

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
local   replication all  trust
";

/// Longest unix socket path the kernel accepts: `sun_path` is 108 bytes on Linux,
/// including the terminating NUL.
pub(super) const SOCKET_PATH_MAX_BYTES: usize = 107;

/// Where the socket directory goes when `<data_dir>/socket` cannot hold it.
const TMP_SOCKET_PARENT: &str = "/tmp";

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

impl EmbeddedPostgres {
    /// Writes crablet's settings and the socket-only pg_hba.conf into the cluster,
    /// and makes postgresql.conf include the settings: a server started by hand
    /// with `pg_ctl start` then listens on no TCP address either.
    pub(super) fn write_hardening(&self) -> Result<(), EmbeddedError> {
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

    /// Creates the socket directory, private to the server's user.
    pub(super) fn prepare_socket_dir(&self) -> Result<(), EmbeddedError> {
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
    pub(super) fn initdb(&self) -> Result<(), EmbeddedError> {
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
        run(self.initdb_command(ADMIN_USER))?;
        log::info!(
            "initialized PostgreSQL cluster in {}",
            self.pgdata.display()
        );
        Ok(())
    }

    /// `initdb` for the cluster's directory, with `superuser` as the
    /// bootstrap superuser.
    pub(super) fn initdb_command(&self, superuser: &str) -> Command {
        let mut cmd = self.tool("initdb");
        cmd.arg("-D").arg(&self.pgdata).args([
            "-U",
            superuser,
            // `trust` is acceptable only because the server listens on no TCP
            // address and its socket directory is private (0700, owned by the
            // server's user): only that user and root can connect at all.
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        cmd
    }
}

/// `<data_dir>/socket`, unless the socket path would be too long or contain
/// characters that need quoting: then `/tmp/crablet-<hash of data_dir>`.
pub(super) fn socket_dir_for(data_dir: &Path, port: u16) -> PathBuf {
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
pub(super) fn check_shell_safe(data_dir: &Path) -> Result<(), EmbeddedError> {
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
pub(super) fn server_options(socket_dir: &Path, port: u16) -> String {
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

pub(super) fn log_file(data_dir: &Path) -> PathBuf {
    data_dir.join("postgresql.log")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::process::run;
    use crate::embedded::testing::{as_crablet, TempDir};

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
