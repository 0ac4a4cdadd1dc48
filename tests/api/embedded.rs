//! Several `crablet serve` processes on one embedded data directory (a rolling
//! restart): the cluster stops only when the last of them exits, and a holder
//! killed with SIGKILL never blocks the others.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crablet::embedded::EmbeddedPostgres;
use serde_json::json;

use crate::helpers::{client, event, post_append, spawn_embedded_process, ServerProcess};

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

    let status = stop(first, "TERM").await;
    assert!(
        status.is_some_and(|s| s.success()),
        "first exited {status:?}"
    );
    assert!(
        dir.server_running(),
        "the cluster outlives the first holder"
    );
    assert!(appends(&second).await, "the second serves on");

    let status = stop(second, "TERM").await;
    assert!(
        status.is_some_and(|s| s.success()),
        "second exited {status:?}"
    );
    assert!(!dir.server_running(), "the last holder stops the cluster");
}

#[actix_rt::test]
async fn a_holder_killed_with_sigkill_blocks_no_other_and_its_server_is_adopted() {
    let dir = DataDir::new();
    let (first, second) = start_two(&dir.0).await;
    let _ = stop(first, "KILL").await;
    assert!(appends(&second).await);
    let status = stop(second, "TERM").await;
    assert!(
        status.is_some_and(|s| s.success()),
        "second exited {status:?}"
    );
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
    let status = stop(fourth, "TERM").await;
    assert!(
        status.is_some_and(|s| s.success()),
        "fourth exited {status:?}"
    );
    assert!(!dir.server_running());
}
