//! crablet as a separate `crablet serve` process: started on a free port
//! and waited for until healthy, signalled, and killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{client, fresh_database, TestDatabase};

/// A server running as a separate `crablet serve` process.
pub struct ServerProcess {
    pub address: String,
    child: Child,
}

impl ServerProcess {
    /// Sends `signal` (a name such as `INT`, `TERM`, `KILL`) with kill(1).
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// Waits up to `bound` for the process to exit.
    pub async fn wait_exit(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let started = std::time::Instant::now();
        while started.elapsed() < bound {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

/// Sends `signal` (`INT`, `TERM`, `KILL`...) to process `pid` with kill(1).
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// The process id, to signal it or read its memory use.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to exit; its status if it did.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Starts `crablet serve` as a child process on `database_url`.
pub async fn spawn_process(database_url: &str) -> ServerProcess {
    spawn_process_with_env(database_url, &[]).await
}

/// Two `crablet serve` processes on one fresh database; the database is
/// dropped with the guard returned first.
pub async fn two_processes() -> (TestDatabase, ServerProcess, ServerProcess) {
    let database = fresh_database().await;
    // The first server applies the schema; the second finds it applied.
    let first = spawn_process(&database).await;
    let second = spawn_process(&database).await;
    (database, first, second)
}

/// Starts `crablet serve` with extra environment variables (`CRABLET_*`
/// settings).
pub async fn spawn_process_with_env(database_url: &str, env: &[(&str, &str)]) -> ServerProcess {
    start_process(
        |command| {
            command
                .env("DATABASE_URL", database_url)
                .envs(env.iter().copied());
        },
        Duration::from_secs(10),
    )
    .await
}

/// Starts `crablet serve --data-dir <data_dir>`: the embedded cluster.
pub async fn spawn_embedded_process(data_dir: &std::path::Path) -> ServerProcess {
    start_process(
        |command| {
            command
                .env_remove("DATABASE_URL")
                .env_remove("CRABLET_DATABASE_URL")
                .arg("--data-dir")
                .arg(data_dir);
        },
        // initdb on first use takes seconds.
        Duration::from_secs(60),
    )
    .await
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    listener.local_addr().expect("addr").port()
}

/// Runs `crablet serve` on a free port, logging warnings, with arguments,
/// environment and output completed by `configure`, and waits up to `ready`
/// for `/health`.
pub async fn start_process(configure: impl FnOnce(&mut Command), ready: Duration) -> ServerProcess {
    start_process_on(free_port(), configure, ready).await
}

/// [`start_process`] on a given port: a server restarted where its
/// clients expect it.
pub async fn start_process_on(
    port: u16,
    configure: impl FnOnce(&mut Command),
    ready: Duration,
) -> ServerProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_crablet"));
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn");
    configure(&mut command);
    let mut child = command
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn crablet serve");
    let address = format!("http://127.0.0.1:{port}");
    let http = client();
    let started = std::time::Instant::now();
    while started.elapsed() < ready {
        if let Ok(r) = http.get(format!("{address}/health")).send().await {
            if r.status().is_success() {
                return ServerProcess { address, child };
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("crablet serve on port {port} exited with {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("crablet serve on port {port} did not become healthy");
}
