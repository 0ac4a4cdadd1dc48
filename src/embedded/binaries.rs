//! Finding a PostgreSQL installation: the directory with `initdb` and `pg_ctl`
//! (through PATH, `pg_config --bindir`, or the newest versioned Debian
//! directory), and the programs in it.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where Debian and Ubuntu install one directory per PostgreSQL major version.
pub(super) const DEBIAN_PG_LIB_DIR: &str = "/usr/lib/postgresql";

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
pub(super) fn tool_path(bindir: &Path, name: &str) -> PathBuf {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::testing::TempDir;

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
}
