//! Test harness: one private PostgreSQL cluster per test run, a fresh
//! database and a fresh server on a free port per test.
//!
//! The cluster is started with `crablet postgres` (the embedded mode of the
//! binary under test) unless `CRABLET_TEST_DATABASE_URL` names a server to
//! use instead. The harness keeps the child's stdin open; when the test
//! process exits the pipe closes and the cluster stops.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crablet::app::Application;
use crablet::config::{Overrides, Settings};
use crablet::dcb::SequencedEvent;
use serde_json::{json, Value};

/// The PostgreSQL the tests create their databases in.
struct Cluster {
    /// Connection string without `dbname`.
    base: String,
    /// Held open for the process lifetime: closing it stops the cluster.
    _stdin: Option<Mutex<ChildStdin>>,
    _child: Option<Mutex<Child>>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        if let Ok(url) = std::env::var("CRABLET_TEST_DATABASE_URL") {
            return Cluster {
                base: strip_dbname(&url),
                _stdin: None,
                _child: None,
            };
        }
        let data_dir = std::env::temp_dir().join(format!(
            "crablet-test-{}",
            std::env::current_dir()
                .map(|d| format!("{:x}", fxhash(d.to_string_lossy().as_bytes())))
                .unwrap_or_default()
        ));
        let mut child = Command::new(env!("CARGO_BIN_EXE_crablet"))
            .args(["postgres", "--data-dir"])
            .arg(&data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn `crablet postgres`");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read DATABASE_URL line");
        let url = line
            .trim()
            .strip_prefix("DATABASE_URL=")
            .unwrap_or_else(|| panic!("`crablet postgres` printed {line:?}"))
            .to_string();
        let stdin = child.stdin.take();
        Cluster {
            base: strip_dbname(&url),
            _stdin: stdin.map(Mutex::new),
            _child: Some(Mutex::new(child)),
        }
    })
}

fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325_u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

fn strip_dbname(conn: &str) -> String {
    conn.split_whitespace()
        .filter(|part| !part.starts_with("dbname="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Creates a fresh database and returns its connection string.
pub async fn fresh_database() -> String {
    let base = cluster().base.clone();
    let name = format!("crablet_test_{:016x}", rand::random::<u64>());
    let (client, connection) =
        tokio_postgres::connect(&format!("{base} dbname=postgres"), tokio_postgres::NoTls)
            .await
            .expect("connect to the test cluster");
    let driver = actix_rt::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    drop(client);
    let _ = driver.await;
    format!("{base} dbname={name}")
}

/// A running server and a client for it.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
}

/// Starts a server with default settings on a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server on a fresh database, with settings adjusted by `tune`.
pub async fn spawn_app_with(tune: impl FnOnce(&mut Settings)) -> TestApp {
    let database_url = fresh_database().await;
    spawn_app_on(&database_url, tune).await
}

/// Starts a server on an existing database.
pub async fn spawn_app_on(database_url: &str, tune: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = Settings::load(
        None,
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            database_url: Some(database_url.to_string()),
            data_dir: None,
        },
    )
    .expect("settings");
    settings.http.workers = 2;
    tune(&mut settings);
    let app = Application::build(settings).await.expect("build app");
    let address = format!("http://127.0.0.1:{}", app.port());
    actix_rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        http: client(),
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// A server running as a separate `crablet serve` process.
pub struct ServerProcess {
    pub address: String,
    child: Child,
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

/// Starts `crablet serve` with extra environment variables (`CRABLET_*`
/// settings).
pub async fn spawn_process_with_env(database_url: &str, env: &[(&str, &str)]) -> ServerProcess {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        listener.local_addr().expect("addr").port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_crablet"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn crablet serve");
    let address = format!("http://127.0.0.1:{port}");
    let http = client();
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{address}/health")).send().await {
            if r.status().is_success() {
                return ServerProcess { address, child };
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("crablet serve on port {port} did not become healthy");
}

/// What an append answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn appended(&self) -> bool {
        self.status == 200 && self.body["appendConditionFailed"] == json!(false)
    }

    pub fn rejected(&self) -> bool {
        self.status == 200 && self.body["appendConditionFailed"] == json!(true)
    }
}

pub async fn post_append(http: &reqwest::Client, address: &str, body: &Value) -> Answer {
    let response = http
        .post(format!("{address}/append"))
        .json(body)
        .send()
        .await
        .expect("append request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Answer { status, body }
}

pub async fn get_read(
    http: &reqwest::Client,
    address: &str,
    query: &Value,
    options: &Value,
) -> Vec<SequencedEvent> {
    let response = http
        .get(format!("{address}/read"))
        .query(&[
            ("query", query.to_string()),
            ("options", options.to_string()),
        ])
        .send()
        .await
        .expect("read request");
    assert_eq!(
        response.status(),
        200,
        "read answered {}",
        response.status()
    );
    response
        .json()
        .await
        .expect("read body is a JSON array of events")
}

impl TestApp {
    pub async fn append(&self, body: Value) -> Answer {
        post_append(&self.http, &self.address, &body).await
    }

    pub async fn read(&self, query: Value, options: Value) -> Vec<SequencedEvent> {
        get_read(&self.http, &self.address, &query, &options).await
    }

    /// Every event in the store, in order.
    pub async fn read_all(&self) -> Vec<SequencedEvent> {
        self.read(json!({"items": []}), json!({})).await
    }

    /// Sends a raw request and returns status and body text.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.address, path_and_query));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }
}

/// An event for an append body.
pub fn event(event_type: &str, tags: &[&str], data: &str) -> Value {
    json!({"type": event_type, "tags": tags, "data": data})
}

/// A condition: fail if an event carrying all of `tags` exists after `after`.
pub fn unless_tagged(tags: &[&str], after: Option<i64>) -> Value {
    let mut condition = json!({"failIfEventsMatch": {"items": [{"tags": tags}]}});
    if let Some(after) = after {
        condition["after"] = json!(after);
    }
    condition
}
