//! Running the PostgreSQL tools as child processes: as the current user, or,
//! when crablet runs as root, as an unprivileged account (PostgreSQL refuses
//! root), with the data directory given to that account.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::binaries::tool_path;
use super::{io_error, EmbeddedError, EmbeddedPostgres};

/// Unprivileged accounts PostgreSQL runs as when crablet runs as root, in order.
pub(super) const SERVER_USER_CANDIDATES: &[&str] = &["postgres", "nobody"];

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

/// The account PostgreSQL runs as when crablet runs as root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ServerUser {
    pub(super) name: String,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

impl EmbeddedPostgres {
    /// A command for one of the PostgreSQL tools, run as the server's user, in
    /// the data directory, with no stdin and no stray libpq environment.
    pub(super) fn tool(&self, name: &str) -> Command {
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

    /// A client tool connecting to this cluster's socket as `role`:
    /// `-h <socket dir> -p <port> -U <role>`.
    pub(super) fn client_tool(&self, name: &str, role: &str) -> Command {
        let mut cmd = self.tool(name);
        cmd.arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", role]);
        cmd
    }
}

/// Whether this process is root, judged by the owner of `/proc/self` (or, where
/// there is no /proc, of a file it creates in `data_dir`).
pub(super) fn running_as_root(data_dir: &Path) -> Result<bool, EmbeddedError> {
    Ok(current_uid(data_dir)? == 0)
}

pub(super) fn current_uid(data_dir: &Path) -> Result<u32, EmbeddedError> {
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
pub(super) fn choose_server_user(pgdata: &Path) -> Result<ServerUser, EmbeddedError> {
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
pub(super) fn check_traversable(data_dir: &Path, user: &ServerUser) -> Result<(), EmbeddedError> {
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

pub(super) fn chown(path: &Path, user: &ServerUser) -> Result<(), EmbeddedError> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(|e| {
        io_error(
            e,
            format!("giving {} to user {}", path.display(), user.name),
        )
    })
}

/// Runs a tool to completion, failing on a non-zero exit.
pub(super) fn run(cmd: Command) -> Result<Output, EmbeddedError> {
    run_with_stdin(cmd, "")
}

/// Runs a tool with `input` on its stdin, failing on a non-zero exit.
pub(super) fn run_with_stdin(mut cmd: Command, input: &str) -> Result<Output, EmbeddedError> {
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

pub(super) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn output_text(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    [stderr.trim(), stdout.trim()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
