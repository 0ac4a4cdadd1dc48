//! A streaming replica (hot standby) of an embedded cluster, in a data
//! directory of its own: `pg_basebackup -R` from the cluster's socket as its
//! superuser, then started like any embedded cluster (its own socket
//! directory, no TCP port). For trying crablet's replicas on one machine,
//! and for the tests that run against a real replica.

use std::fs;
use std::path::Path;

use super::process::{chown, run};
use super::{io_error, EmbeddedError, EmbeddedPostgres};

/// The file `pg_basebackup -R` writes, which makes a cluster start as a standby.
const STANDBY_SIGNAL: &str = "standby.signal";

impl EmbeddedPostgres {
    /// Starts a hot standby of this cluster in `data_dir`, copying the
    /// cluster first when `data_dir` holds none. It streams the cluster's
    /// WAL over the unix socket and serves read-only connections on a socket
    /// of its own ([`EmbeddedPostgres::connection_string`]). The copy needs a
    /// running cluster; the replica keeps retrying while the cluster is down.
    pub fn start_replica(&self, data_dir: &Path) -> Result<EmbeddedPostgres, EmbeddedError> {
        let pgdata = data_dir.join("pgdata");
        if !pgdata.join("PG_VERSION").exists() {
            fs::create_dir_all(data_dir).map_err(|e| {
                io_error(e, format!("creating data directory {}", data_dir.display()))
            })?;
            if let Some(user) = &self.server_user {
                chown(data_dir, user)?;
            }
            let mut cmd = self.client_tool("pg_basebackup", self.admin_user);
            cmd.arg("-D")
                .arg(&pgdata)
                .args(["-R", "-X", "stream", "-c", "fast"]);
            run(cmd)?;
        }
        EmbeddedPostgres::start(data_dir)
    }

    /// Whether this cluster is a standby (it has `standby.signal`).
    pub fn is_replica(&self) -> bool {
        self.pgdata.join(STANDBY_SIGNAL).exists()
    }
}
