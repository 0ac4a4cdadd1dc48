//! What the unit tests of the cluster share: a scratch directory and psql
//! as crablet.

use std::fs;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use super::process::run;
use super::{EmbeddedError, EmbeddedPostgres, DATABASE};

/// A fresh directory under /tmp (reachable by the `postgres` user when the
/// tests run as root), removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(label: &str) -> Self {
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

/// Runs `SELECT current_database()` through the connection string.
pub(super) fn current_database(pg: &EmbeddedPostgres) -> Result<String, EmbeddedError> {
    let mut cmd = pg.tool("psql");
    cmd.args(["-X", "-t", "-A", "-c", "SELECT current_database()"])
        .arg(pg.connection_string(DATABASE));
    let output = run(cmd)?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Runs `sql` through crablet's own connection string; returns its output.
pub(super) fn as_crablet(pg: &EmbeddedPostgres, sql: &str) -> String {
    let mut cmd = pg.tool("psql");
    cmd.args(["-X", "-t", "-A", "-c", sql])
        .arg(pg.connection_string(DATABASE));
    let output = run(cmd).expect("psql as crablet");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
