//! A primary and streaming replicas of it, all private clusters of one
//! test's own (each replica made with `pg_basebackup -R`, see
//! `crablet::embedded`), stopped and removed on drop.

use std::path::PathBuf;

use crablet::embedded::EmbeddedPostgres;

use super::OwnCluster;

pub struct ReplicaSet {
    pub primary: OwnCluster,
    replicas: Vec<Option<EmbeddedPostgres>>,
    dirs: Vec<PathBuf>,
}

impl ReplicaSet {
    /// Starts a primary, then a hot standby of it.
    pub async fn start() -> Self {
        Self::with_replicas(1).await
    }

    /// Starts a primary, then `n` hot standbys of it.
    pub async fn with_replicas(n: usize) -> Self {
        let primary = OwnCluster::start().await;
        let dirs = (0..n)
            .map(|i| primary.dir.with_extension(format!("replica{i}")))
            .collect();
        let mut set = ReplicaSet {
            primary,
            replicas: (0..n).map(|_| None).collect(),
            dirs,
        };
        for i in 0..n {
            set.start_replica_again_at(i).await;
        }
        set
    }

    pub fn primary_url(&self) -> String {
        self.primary.url()
    }

    /// The first replica's URL.
    pub fn replica_url(&self) -> String {
        self.replica_url_at(0)
    }

    pub fn replica_url_at(&self, i: usize) -> String {
        self.running(i).connection_string("crablet")
    }

    /// A superuser's URL of replica `i` (to pause its replay).
    pub fn replica_admin_url_at(&self, i: usize) -> String {
        self.running(i).admin_connection_string("crablet")
    }

    fn running(&self, i: usize) -> &EmbeddedPostgres {
        self.replicas[i].as_ref().expect("replica running")
    }

    /// Stops the first replica (`pg_ctl stop -m fast`); its data stays.
    pub async fn stop_replica(&mut self) {
        if let Some(mut replica) = self.replicas[0].take() {
            tokio::task::spawn_blocking(move || replica.stop())
                .await
                .expect("join")
                .expect("stop the replica");
        }
    }

    /// Starts the first replica again.
    pub async fn start_replica_again(&mut self) {
        self.start_replica_again_at(0).await;
    }

    /// Starts replica `i` (copying the primary the first time).
    async fn start_replica_again_at(&mut self, i: usize) {
        assert!(self.replicas[i].is_none(), "the replica runs already");
        let primary = self.primary.pg.as_ref().expect("primary running");
        let dir = self.dirs[i].clone();
        // The copy is made through the primary's socket as its superuser.
        let started = std::thread::scope(|scope| {
            scope
                .spawn(|| primary.start_replica(&dir))
                .join()
                .expect("join")
        });
        self.replicas[i] = Some(started.expect("start the replica"));
    }
}

impl Drop for ReplicaSet {
    fn drop(&mut self) {
        for replica in self.replicas.iter_mut().filter_map(Option::take) {
            let mut replica = replica;
            let _ = replica.stop();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
