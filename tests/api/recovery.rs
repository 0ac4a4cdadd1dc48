//! A PostgreSQL restart under a running server: the first requests after it
//! succeed (no stale pooled connection is handed out) and nothing
//! acknowledged before it is lost.

use std::path::PathBuf;

use crablet::embedded::EmbeddedPostgres;
use serde_json::json;

use crate::helpers::{event, spawn_app_on};

/// A private cluster of this test's own, so restarting it disturbs no other test.
struct OwnCluster {
    dir: PathBuf,
    pg: Option<EmbeddedPostgres>,
}

impl OwnCluster {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("crablet-recovery-{}", rand::random::<u64>()));
        let pg = Self::start_in(dir.clone()).await;
        OwnCluster { dir, pg: Some(pg) }
    }

    async fn start_in(dir: PathBuf) -> EmbeddedPostgres {
        tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
            .await
            .expect("join")
            .expect("start the test's own PostgreSQL")
    }

    async fn restart(&mut self) {
        let mut pg = self.pg.take().expect("running");
        tokio::task::spawn_blocking(move || pg.stop())
            .await
            .expect("join")
            .expect("stop");
        self.pg = Some(Self::start_in(self.dir.clone()).await);
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        if let Some(mut pg) = self.pg.take() {
            let _ = pg.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[actix_rt::test]
async fn after_a_postgresql_restart_the_next_requests_succeed_and_nothing_is_lost() {
    let mut cluster = OwnCluster::start().await;
    let url = cluster.pg.as_ref().unwrap().connection_string("crablet");
    let app = spawn_app_on(&url, |_| {}).await;
    for i in 0..5 {
        assert!(app
            .append(json!({"events": [event("Before", &["t"], &i.to_string())]}))
            .await
            .appended());
    }
    assert_eq!(
        app.read_all().await.len(),
        5,
        "reads warm the reader pool too"
    );

    cluster.restart().await;

    let mut failures = 0;
    for i in 0..5 {
        let answer = app
            .append(json!({"events": [event("After", &["t"], &i.to_string())]}))
            .await;
        failures += (!answer.appended()) as usize;
    }
    let (status, _) = app.raw(reqwest::Method::GET, "/health", None).await;
    let events = app.read_all().await;
    eprintln!(
        "after a restart: {failures} failed appends, health {status}, {} events",
        events.len()
    );
    assert_eq!((failures, status, events.len()), (0, 200, 10));
}
