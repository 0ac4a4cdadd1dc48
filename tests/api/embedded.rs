//! Several `crablet serve` processes on one embedded data directory (a rolling
//! restart): the cluster stops only when the last of them exits, and a holder
//! killed with SIGKILL never blocks the others.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crablet::embedded::EmbeddedPostgres;
use serde_json::json;

use crate::helpers::{
    client, event, get_read, post_append, send_signal, spawn_embedded_process, ServerProcess,
};

/// A data directory of the test's own; on drop, a server left running in it
/// is stopped and the directory removed.
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> Self {
        DataDir(
            std::env::temp_dir().join(format!("crablet-embedded-{:016x}", rand::random::<u64>())),
        )
    }

    /// Whether a PostgreSQL server is running on it.
    fn server_running(&self) -> bool {
        self.0.join("pgdata/postmaster.pid").exists()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.server_running() {
            if let Ok(mut pg) = EmbeddedPostgres::start(&self.0) {
                let _ = pg.stop();
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn appends(server: &ServerProcess) -> bool {
    let body = json!({"events": [event("Served", &[], "")]});
    post_append(&client(), &server.address, &body)
        .await
        .appended()
}

async fn stop(mut server: ServerProcess, signal: &str) -> Option<std::process::ExitStatus> {
    server.signal(signal);
    server.wait_exit(Duration::from_secs(30)).await
}

/// Stops `server` with SIGTERM and asserts that it exits successfully.
async fn stop_cleanly(server: ServerProcess, name: &str) {
    let status = stop(server, "TERM").await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{name} exited {status:?}"
    );
}

async fn start_two(dir: &Path) -> (ServerProcess, ServerProcess) {
    let first = spawn_embedded_process(dir).await;
    let second = spawn_embedded_process(dir).await;
    (first, second)
}

#[actix_rt::test]
async fn two_servers_on_one_data_dir_the_first_exits_and_the_second_keeps_serving() {
    let dir = DataDir::new();
    let (first, second) = start_two(&dir.0).await;
    assert!(appends(&first).await && appends(&second).await);

    stop_cleanly(first, "first").await;
    assert!(
        dir.server_running(),
        "the cluster outlives the first holder"
    );
    assert!(appends(&second).await, "the second serves on");

    stop_cleanly(second, "second").await;
    assert!(!dir.server_running(), "the last holder stops the cluster");
}

#[actix_rt::test]
async fn a_holder_killed_with_sigkill_blocks_no_other_and_its_server_is_adopted() {
    let dir = DataDir::new();
    let (first, second) = start_two(&dir.0).await;
    let _ = stop(first, "KILL").await;
    assert!(appends(&second).await);
    stop_cleanly(second, "second").await;
    assert!(
        !dir.server_running(),
        "the killed holder's lock went with it: the last live holder stopped the cluster"
    );

    // The only holder killed: PostgreSQL survives it, and the next server
    // adopts it and stops it at exit.
    let third = spawn_embedded_process(&dir.0).await;
    let _ = stop(third, "KILL").await;
    assert!(dir.server_running());
    let fourth = spawn_embedded_process(&dir.0).await;
    assert!(appends(&fourth).await);
    stop_cleanly(fourth, "fourth").await;
    assert!(!dir.server_running());
}

/// The pid of the postmaster running on `dir`, from its `postmaster.pid`.
fn postmaster_pid(dir: &Path) -> u32 {
    let text = std::fs::read_to_string(dir.join("pgdata/postmaster.pid"))
        .expect("a running server has a postmaster.pid");
    text.lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .expect("postmaster.pid starts with the pid")
}

#[actix_rt::test]
async fn after_crablet_and_its_postgres_are_killed_one_restart_recovers_every_event() {
    let dir = DataDir::new();
    let mut crashed = spawn_embedded_process(&dir.0).await;
    let body = json!({"events": [event("BeforeCrash", &["crash"], "kept")]});
    assert!(post_append(&client(), &crashed.address, &body)
        .await
        .appended());

    // A power cut, as far as the data directory can tell: nobody stops
    // anything, and a stale postmaster.pid is left behind.
    let postmaster = postmaster_pid(&dir.0);
    crashed.signal("KILL");
    send_signal(postmaster, "KILL");
    assert!(crashed.wait_exit(Duration::from_secs(10)).await.is_some());
    assert!(dir.server_running(), "postmaster.pid is left behind");

    // One restart: the stale pid file is not taken for a running server.
    let restarted = spawn_embedded_process(&dir.0).await;
    let events = get_read(
        &client(),
        &restarted.address,
        &json!({"items": [{"tags": ["crash"]}]}),
        &json!({}),
    )
    .await;
    assert_eq!(
        events.len(),
        1,
        "the acknowledged append survived: {events:?}"
    );
    assert!(appends(&restarted).await);
    stop_cleanly(restarted, "restarted").await;
    assert!(!dir.server_running());
}
