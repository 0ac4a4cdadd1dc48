//! A primary and a streaming replica of it, both private clusters of one
//! test's own (the replica made with `pg_basebackup -R`, see
//! `crablet::embedded`), stopped and removed on drop.

use std::path::PathBuf;

use crablet::embedded::EmbeddedPostgres;

use super::OwnCluster;

pub struct ReplicaSet {
    pub primary: OwnCluster,
    replica: Option<EmbeddedPostgres>,
    replica_dir: PathBuf,
}

impl ReplicaSet {
    /// Starts a primary, then a hot standby of it.
    pub async fn start() -> Self {
        let primary = OwnCluster::start().await;
        let replica_dir = primary.dir.with_extension("replica");
        let mut set = ReplicaSet {
            primary,
            replica: None,
            replica_dir,
        };
        set.start_replica_again().await;
        set
    }

    pub fn primary_url(&self) -> String {
        self.primary.url()
    }

    pub fn replica_url(&self) -> String {
        self.replica
            .as_ref()
            .expect("replica running")
            .connection_string("crablet")
    }

    /// Stops the replica (`pg_ctl stop -m fast`); its data stays.
    pub async fn stop_replica(&mut self) {
        if let Some(mut replica) = self.replica.take() {
            tokio::task::spawn_blocking(move || replica.stop())
                .await
                .expect("join")
                .expect("stop the replica");
        }
    }

    /// Starts the replica (copying the primary the first time).
    pub async fn start_replica_again(&mut self) {
        assert!(self.replica.is_none(), "the replica runs already");
        let primary = self.primary.pg.as_ref().expect("primary running");
        let dir = self.replica_dir.clone();
        // The copy is made through the primary's socket as its superuser.
        let started = std::thread::scope(|scope| {
            scope
                .spawn(|| primary.start_replica(&dir))
                .join()
                .expect("join")
        });
        self.replica = Some(started.expect("start the replica"));
    }
}

impl Drop for ReplicaSet {
    fn drop(&mut self) {
        if let Some(mut replica) = self.replica.take() {
            let _ = replica.stop();
        }
        let _ = std::fs::remove_dir_all(&self.replica_dir);
    }
}
