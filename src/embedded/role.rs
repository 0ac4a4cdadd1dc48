//! crablet's role and database inside the cluster: which superuser administers
//! it, the role `crablet` (not a superuser), and the database it owns.

use std::process::Output;

use super::process::{run, run_with_stdin};
use super::{EmbeddedError, EmbeddedPostgres, ADMIN_USER, CRABLET_ROLE};

impl EmbeddedPostgres {
    /// Picks the superuser to administer with, and creates crablet's role.
    ///
    /// The cluster counts as made by an older version only when the database
    /// says so (`crablet` logs in, is a superuser, and there is no
    /// [`ADMIN_USER`]); a server that cannot be reached is reported as such.
    pub(super) fn ensure_role(&mut self) -> Result<(), EmbeddedError> {
        if let Err(as_admin) = self.psql_as(ADMIN_USER, "SELECT 1") {
            if !self.made_by_an_older_crablet() {
                return Err(as_admin);
            }
            self.admin_user = CRABLET_ROLE;
            log::info!(
                "the cluster in {} was made by an older crablet: crablet connects as its \
                 bootstrap superuser `{CRABLET_ROLE}` (a new cluster uses a role that is \
                 not a superuser)",
                self.pgdata.display()
            );
            return Ok(());
        }
        let mut cmd = self.client_tool("psql", self.admin_user);
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

    /// Whether the cluster is one made by an older version: [`CRABLET_ROLE`]
    /// is its bootstrap superuser and [`ADMIN_USER`] does not exist.
    fn made_by_an_older_crablet(&self) -> bool {
        let sql = format!(
            "SELECT rolsuper AND NOT EXISTS \
             (SELECT 1 FROM pg_roles WHERE rolname = '{ADMIN_USER}') \
             FROM pg_roles WHERE rolname = current_user"
        );
        self.psql_as(CRABLET_ROLE, &sql)
            .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "t")
    }

    /// Runs `sql` in database `postgres` as `role`; its output.
    fn psql_as(&self, role: &str, sql: &str) -> Result<Output, EmbeddedError> {
        let mut cmd = self.client_tool("psql", role);
        cmd.args(["-X", "-q", "-t", "-A", "-d", "postgres", "-c", sql]);
        run(cmd)
    }

    /// Creates `dbname` unless it exists.
    pub(super) fn ensure_database(&self, dbname: &str) -> Result<(), EmbeddedError> {
        if self.database_exists(dbname)? {
            return Ok(());
        }
        let mut cmd = self.client_tool("createdb", self.admin_user);
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
        let mut cmd = self.client_tool("psql", self.admin_user);
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
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::embedded::testing::{as_crablet, TempDir};

    #[test]
    fn a_cluster_whose_superuser_is_crablet_is_taken_for_an_older_one() {
        let root = TempDir::new("older");
        let data_dir = root.0.join("data");
        let mut pg = EmbeddedPostgres::start(&data_dir).expect("start");
        assert_eq!(pg.admin_user, ADMIN_USER);
        assert!(pg.stop().expect("stop"));
        // No server to ask: an error, not an older cluster.
        match pg.ensure_role() {
            Err(EmbeddedError::CommandFailed { command, .. }) => {
                assert!(command.contains("-U crablet_admin"), "{command}");
            }
            other => panic!("expected psql's connection failure, got {other:?}"),
        }
        assert_eq!(pg.admin_user, ADMIN_USER);

        // The cluster as older versions made it: `crablet` is the bootstrap
        // superuser, and there is no crablet_admin.
        fs::remove_dir_all(&pg.pgdata).expect("remove the cluster");
        run(pg.initdb_command(CRABLET_ROLE)).expect("initdb as an older crablet ran it");
        drop(pg);

        let mut older = EmbeddedPostgres::start(&data_dir).expect("start the older cluster");
        assert_eq!(older.admin_user, CRABLET_ROLE);
        assert_eq!(
            as_crablet(
                &older,
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            ),
            "t"
        );
        assert!(older.stop().expect("stop"));
    }
}
