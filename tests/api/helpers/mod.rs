//! Test harness: one private PostgreSQL cluster per test run, a fresh
//! database and a fresh server on a free port per test.
//!
//! The cluster is started with `crablet postgres --remove-data-dir-on-exit`
//! (the embedded mode of the binary under test) in a directory of this test
//! process's own, unless `CRABLET_TEST_DATABASE_URL` names a server to use
//! instead. The harness keeps the child's stdin open; when the test process
//! exits the pipe closes, the cluster stops and its directory is removed.
//! Each test's database is dropped when its guard ([`TestDatabase`], held by
//! [`TestApp`]) drops.
//!
//! Also here: appends, reads and `/metrics` figures over HTTP; `process`,
//! crablet as a separate `crablet serve` process; `subscription`, the
//! `/subscribe` test client.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crablet::app::Application;
use crablet::config::{Overrides, Settings};
use crablet::dcb::SequencedEvent;
use crablet::embedded::EmbeddedPostgres;
use serde_json::{json, Value};

pub mod pgbouncer;
mod process;
pub mod replica;
pub mod subscription;

pub use process::{
    free_port, send_signal, spawn_embedded_process, spawn_process, spawn_process_with_env,
    start_process, start_process_on, two_processes, ServerProcess,
};

/// The PostgreSQL the tests create their databases in.
struct Cluster {
    /// crablet's connection string without `dbname`.
    base: String,
    /// A superuser's connection string (database `postgres`), to create and
    /// drop the test databases.
    admin: String,
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
                admin: format!("{} dbname=postgres", strip_dbname(&url)),
                _stdin: None,
                _child: None,
            };
        }
        let data_dir = std::env::temp_dir().join(format!(
            "crablet-test-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut child = Command::new(env!("CARGO_BIN_EXE_crablet"))
            .args(["postgres", "--remove-data-dir-on-exit", "--data-dir"])
            .arg(&data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn `crablet postgres`");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stdout = BufReader::new(stdout);
        let mut read_value = |prefix: &str| {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("read a line");
            line.trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("`crablet postgres` printed {line:?}"))
                .to_string()
        };
        let url = read_value("DATABASE_URL=");
        let admin = read_value("ADMIN_DATABASE_URL=");
        let stdin = child.stdin.take();
        Cluster {
            base: strip_dbname(&url),
            admin,
            _stdin: stdin.map(Mutex::new),
            _child: Some(Mutex::new(child)),
        }
    })
}

fn strip_dbname(conn: &str) -> String {
    conn.split_whitespace()
        .filter(|part| !part.starts_with("dbname="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A test's own database, dropped (with its connections) when this drops.
/// Dereferences to its connection string.
pub struct TestDatabase {
    name: String,
    url: String,
}

impl std::ops::Deref for TestDatabase {
    type Target = str;
    fn deref(&self) -> &str {
        &self.url
    }
}

impl std::fmt::Display for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // On a thread of its own: Drop cannot await, and the test's runtime
        // may be the one being dropped.
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let admin = cluster().admin.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(&admin, tokio_postgres::NoTls).await?;
                let driver = tokio::spawn(connection);
                let result = client.batch_execute(&sql).await;
                drop(client);
                let _ = driver.await;
                result
            })?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// Creates a fresh database owned by crablet's role; dropped with the guard.
pub async fn fresh_database() -> TestDatabase {
    let cluster = cluster();
    let name = format!("crablet_test_{:016x}", rand::random::<u64>());
    let (client, connection) = tokio_postgres::connect(&cluster.admin, tokio_postgres::NoTls)
        .await
        .expect("connect to the test cluster");
    let driver = actix_rt::spawn(connection);
    let owner = owner_of(&cluster.base);
    client
        .batch_execute(&format!("CREATE DATABASE {name} OWNER {owner}"))
        .await
        .expect("create test database");
    drop(client);
    let _ = driver.await;
    TestDatabase {
        url: format!("{} dbname={name}", cluster.base),
        name,
    }
}

/// The `user=` of a key-value connection string (crablet's role), else the
/// current user.
fn owner_of(conn: &str) -> String {
    conn.split_whitespace()
        .find_map(|part| part.strip_prefix("user="))
        .map_or_else(|| "CURRENT_USER".to_owned(), str::to_owned)
}

/// A running server and a client for it.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    /// The database it serves, when the harness created it for this app.
    _database: Option<TestDatabase>,
}

impl TestApp {
    /// Keeps `database` (dropped with it) as long as the app lives.
    pub fn owning(mut self, database: TestDatabase) -> Self {
        self._database = Some(database);
        self
    }
}

/// Starts a server with default settings on a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server on a fresh database, with settings adjusted by `tune`.
pub async fn spawn_app_with(tune: impl FnOnce(&mut Settings)) -> TestApp {
    let database = fresh_database().await;
    let mut app = spawn_app_on(&database, tune).await;
    app._database = Some(database);
    app
}

/// Default settings for a server on a free loopback port over `database_url`.
pub fn settings_for(database_url: &str) -> Settings {
    Settings::load(
        None,
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            database_url: Some(database_url.to_string()),
            data_dir: None,
            ..Default::default()
        },
    )
    .expect("settings")
}

/// Starts a server on an existing database.
pub async fn spawn_app_on(database_url: &str, tune: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = settings_for(database_url);
    settings.http.workers = 2;
    tune(&mut settings);
    let app = Application::build(settings).await.expect("build app");
    let address = format!("http://127.0.0.1:{}", app.port());
    actix_rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        http: client(),
        _database: None,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// A private cluster of one test's own, so stopping or restarting it disturbs
/// no other test. Stopped and removed on drop.
pub struct OwnCluster {
    pub dir: PathBuf,
    pub pg: Option<EmbeddedPostgres>,
}

impl OwnCluster {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("crablet-recovery-{}", rand::random::<u64>()));
        let pg = Self::start_in(dir.clone()).await;
        OwnCluster { dir, pg: Some(pg) }
    }

    pub async fn start_in(dir: PathBuf) -> EmbeddedPostgres {
        tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
            .await
            .expect("join")
            .expect("start the test's own PostgreSQL")
    }

    pub async fn restart(&mut self) {
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

impl OwnCluster {
    /// Its connection string for database `crablet`.
    pub fn url(&self) -> String {
        self.pg
            .as_ref()
            .expect("running")
            .connection_string("crablet")
    }

    /// Stops the server (`pg_ctl stop -m fast`).
    pub async fn stop(&mut self) {
        if let Some(mut pg) = self.pg.take() {
            tokio::task::spawn_blocking(move || pg.stop())
                .await
                .expect("join")
                .expect("stop");
        }
    }

    /// Starts it again after [`stop`](Self::stop).
    pub async fn start_again(&mut self) {
        assert!(self.pg.is_none(), "already running");
        self.pg = Some(Self::start_in(self.dir.clone()).await);
    }
}

/// What an append answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// Whether it carried a `Retry-After` header.
    pub retry_after: bool,
}

impl Answer {
    pub fn appended(&self) -> bool {
        self.status == 200 && self.body["appendConditionFailed"] == json!(false)
    }

    pub fn rejected(&self) -> bool {
        self.status == 200 && self.body["appendConditionFailed"] == json!(true)
    }

    /// Refused because its requirement number `index` did not hold.
    pub fn failed_requirement(&self, index: usize) -> bool {
        self.rejected() && self.body["failedRequirement"] == json!(index)
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
    let retry_after = response.headers().contains_key("retry-after");
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        body,
        retry_after,
    }
}

/// Appends `events` unconditionally through `address`; panics unless they
/// were appended.
pub async fn append_events(http: &reqwest::Client, address: &str, events: &[Value]) -> Answer {
    let answer = post_append(http, address, &json!({ "events": events })).await;
    assert!(answer.appended(), "{answer:?}");
    answer
}

/// Sends every `(address, body)` append at once; the answers in order.
pub async fn append_all(
    http: &reqwest::Client,
    appends: impl IntoIterator<Item = (String, Value)>,
) -> Vec<Answer> {
    let sends = appends
        .into_iter()
        .map(|(address, body)| async move { post_append(http, &address, &body).await });
    futures_util::future::join_all(sends).await
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

    /// Appends one event unconditionally; panics unless it was appended.
    pub async fn append_event(&self, event: Value) -> Answer {
        append_events(&self.http, &self.address, &[event]).await
    }

    /// Every event in the store, in order.
    pub async fn read_all(&self) -> Vec<SequencedEvent> {
        self.read(json!({"items": []}), json!({})).await
    }

    /// `GET path`, answered as it may be.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("GET request")
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

/// Asserts that `left` and `right` hold the same items, but for those only in
/// `right` that `may_lack` lets `left` lack. `only_left` and `only_right`
/// open the messages that name the items found on one side alone.
pub fn assert_same_set<T: Ord + std::fmt::Debug>(
    left: &std::collections::BTreeSet<T>,
    right: &std::collections::BTreeSet<T>,
    may_lack: impl Fn(&T) -> bool,
    only_left: &str,
    only_right: &str,
) {
    let left_only: Vec<_> = left.difference(right).collect();
    assert!(left_only.is_empty(), "{only_left}: {left_only:?}");
    let right_only: Vec<_> = right
        .difference(left)
        .filter(|item| !may_lack(item))
        .collect();
    assert!(right_only.is_empty(), "{only_right}: {right_only:?}");
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

/// A plain client on `database_url`, for tests that inspect or tamper with the
/// database directly. Its connection runs on the current actix arbiter.
pub async fn db_client(database_url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    actix_rt::spawn(connection);
    client
}

/// The text of `/metrics`.
pub async fn metrics_text(http: &reqwest::Client, address: &str) -> String {
    http.get(format!("{address}/metrics"))
        .send()
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics text")
}

/// A counter, gauge or histogram figure of `/metrics` text: the sum of the
/// series of `name` whose labels contain `labels` (every series when it is
/// empty), 0 when there is none.
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.starts_with(name)
                && line[name.len()..].starts_with(['{', ' '])
                && line.contains(labels)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether `check` holds within `attempts` tries, `pause` apart.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    attempts: usize,
    pause: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    for _ in 0..attempts {
        if check().await {
            return true;
        }
        tokio::time::sleep(pause).await;
    }
    false
}

/// A random query item of up to `max_tags` tags from `tags` and up to two
/// types from `types`, never empty.
pub fn random_item(
    rng: &mut impl rand::Rng,
    tags: &[&str],
    types: &[&str],
    max_tags: usize,
) -> crablet::dcb::QueryItem {
    use rand::seq::SliceRandom;
    let mut item = crablet::dcb::QueryItem::default();
    while item.tags.is_empty() && item.types.is_empty() {
        for _ in 0..rng.gen_range(0..=max_tags) {
            item.tags.push(tags.choose(rng).unwrap().to_string());
        }
        for _ in 0..rng.gen_range(0..=2) {
            item.types.push(types.choose(rng).unwrap().to_string());
        }
    }
    item
}

/// `GET /read` of every event: its `X-Crablet-Head` and its body, as sent.
pub async fn read_raw(http: &reqwest::Client, address: &str) -> (String, String) {
    let response = http
        .get(format!("{address}/read"))
        .query(&[("query", r#"{"items":[]}"#)])
        .send()
        .await
        .expect("read request");
    assert_eq!(response.status(), 200);
    let head = response.headers()["x-crablet-head"]
        .to_str()
        .expect("head header")
        .to_owned();
    (head, response.text().await.expect("read body"))
}

/// The `position` of `GET /head`.
pub async fn head_of(http: &reqwest::Client, address: &str) -> i64 {
    let body: Value = http
        .get(format!("{address}/head"))
        .send()
        .await
        .expect("head request")
        .json()
        .await
        .expect("head body");
    body["position"].as_i64().expect("head position")
}

/// A temporary directory, removed when dropped (also when a test fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "crablet-{what}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
