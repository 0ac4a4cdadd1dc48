//! End to end: the load generator against a real crablet server.
//!
//! One test starts a private PostgreSQL cluster (crablet's embedded mode) in a
//! fresh folder under /tmp, builds the server in-process on a free loopback port
//! (the same `Application::build` that `crablet serve` and crablet's own API tests
//! use) and drives it with the library's entry points: `quick`, `append-if`,
//! `hot-keys`, `consistency`, `read` after a preload, and one open-loop run. Every
//! run is short and uses few clients; the test asserts on the returned reports
//! (counts, errors, conflicts, verification), not merely that nothing panicked.
//!
//! The server runs on an actix system of its own thread and the generator on its
//! own small tokio runtime, as they would as two processes. Everything is stopped
//! and the folder removed when [`LiveServer`] is dropped, also when an assertion
//! fails.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crablet::app::Application;
use crablet::config::{Overrides, Settings};
use crablet::embedded::EmbeddedPostgres;
use crablet_loadtest::driver::{self, RunConfig};
use crablet_loadtest::http::Target;
use crablet_loadtest::preload::{self, PreloadConfig, EVENTS_PER_TAG};
use crablet_loadtest::report::{LabelReport, Report, Verification};
use crablet_loadtest::scenario::{Decision, ScenarioConfig, ScenarioKind};

/// Length of each run's load.
const LOAD_DURATION: Duration = Duration::from_secs(3);
/// Virtual clients of the closed-loop runs.
const CLIENTS: usize = 4;
/// Events preloaded for the `read` run: 200 tags of [`EVENTS_PER_TAG`] events.
const PRELOAD_EVENTS: u64 = 2_000;
/// Prefix of the preloaded tags (not the CLI default, to show it is honoured).
const READ_TAG_PREFIX: &str = "smoke";
/// Hot keys of the `hot-keys` run: few, so that 4 clients collide often and the
/// run sees rejected decisions as well as accepted ones.
const HOT_KEYS: usize = 5;
/// Open-loop rate, operations per second: far below what a debug build serves,
/// so every slot is sent in time.
const OPEN_LOOP_RATE: f64 = 50.0;
/// Connections of the open-loop run (bounds the requests in flight).
const OPEN_LOOP_CLIENTS: usize = 8;
/// HTTP workers of the server (as crablet's own tests use).
const SERVER_WORKERS: usize = 2;
/// Tokio workers of the generator (the CLI default).
const GENERATOR_THREADS: usize = 2;
/// Bound on one request of the generator.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn the_load_tester_drives_a_live_server_and_its_reports_hold() {
    let started = Instant::now();
    let server = LiveServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(GENERATOR_THREADS)
        .enable_all()
        .build()
        .expect("generator runtime");
    runtime.block_on(drive(server.port));
    drop(runtime);
    drop(server);
    println!("smoke test took {:.1} s", started.elapsed().as_secs_f64());
}

/// Every run of the test, in order, each checked right after it ends.
async fn drive(port: u16) {
    quick_rounds_read_back_what_they_appended(port).await;
    appends_on_unique_keys_never_conflict(port).await;
    hot_keys_decide_both_ways_without_violation(port).await;
    hot_keys_decide_in_one_request_with_require(port).await;
    random_conditions_are_never_violated(port).await;
    reads_of_preloaded_tags_return_ten_events_each(port).await;
    projections_count_the_preloaded_events_while_appends_trickle_in(port).await;
    an_open_loop_run_keeps_a_modest_rate(port).await;
}

async fn quick_rounds_read_back_what_they_appended(port: u16) {
    let report = run(port, ScenarioKind::Quick, "quick", None).await;
    let quick = primary(&report, "quick");
    assert!(quick.ok > 0, "no quick round completed");
    assert_eq!(quick.conflicts, 0, "a unique key conflicted");
    // One event appended and one read back per round.
    assert_eq!(quick.items, 2 * quick.ok);
}

async fn appends_on_unique_keys_never_conflict(port: u16) {
    let report = run(port, ScenarioKind::AppendIf, "appendif", None).await;
    let appends = primary(&report, "append-if");
    assert!(appends.ok > 0, "no append was accepted");
    assert_eq!(appends.conflicts, 0, "false conflicts on unique keys");
    assert_eq!(appends.items, appends.ok);
}

async fn hot_keys_decide_both_ways_without_violation(port: u16) {
    let report = run(port, ScenarioKind::HotKeys, "hot", None).await;
    let decisions = primary(&report, "decision");
    assert!(decisions.ok > 0, "no decision was accepted");
    assert!(
        decisions.conflicts > 0,
        "{CLIENTS} clients on {HOT_KEYS} keys never had a decision rejected"
    );
    let v = verified(&report, decisions);
    assert_eq!(v.keys_checked, HOT_KEYS as u64);
}

async fn hot_keys_decide_in_one_request_with_require(port: u16) {
    let report = run_with(
        port,
        ScenarioKind::HotKeys,
        "hotreq",
        None,
        Decision::Require,
    )
    .await;
    let decisions = primary(&report, "decision");
    assert!(decisions.ok > 0, "no decision was accepted");
    assert_eq!(decisions.conflicts, 0, "the cap is never reached");
    let v = verified(&report, decisions);
    assert_eq!(v.keys_checked, HOT_KEYS as u64);
}

async fn random_conditions_are_never_violated(port: u16) {
    let report = run(port, ScenarioKind::Consistency, "cons", None).await;
    let decisions = primary(&report, "decision");
    assert!(decisions.ok > 0, "no decision was accepted");
    verified(&report, decisions);
}

async fn reads_of_preloaded_tags_return_ten_events_each(port: u16) {
    let loaded = preload::preload(
        &Target::loopback(port),
        &PreloadConfig {
            events: PRELOAD_EVENTS,
            batch: 500,
            concurrency: 2,
            tag_prefix: READ_TAG_PREFIX.into(),
            events_per_tag: EVENTS_PER_TAG,
            data_bytes: 64,
            quiet: true,
        },
    )
    .await
    .expect("preload");
    assert_eq!(loaded.events, PRELOAD_EVENTS);
    assert_eq!(loaded.retries, 0, "the server shed a preload batch");

    // `seed_reads` is off: the run fails if the preload above is not all there.
    let report = run(port, ScenarioKind::Read, "read", None).await;
    let reads = primary(&report, "read");
    assert!(reads.ok > 0, "no read completed");
    assert_eq!(reads.items, EVENTS_PER_TAG * reads.ok);
}

async fn projections_count_the_preloaded_events_while_appends_trickle_in(port: u16) {
    let report = run(port, ScenarioKind::Project, "project", None).await;
    let projections = primary(&report, "project");
    assert!(projections.ok > 0, "no projection completed");
    let appends = report
        .labels
        .iter()
        .find(|l| l.label == "append")
        .expect("the trickle of appends");
    assert!(appends.ok > 0 && appends.errors.is_empty());
}

async fn an_open_loop_run_keeps_a_modest_rate(port: u16) {
    let report = run(port, ScenarioKind::AppendIf, "open", Some(OPEN_LOOP_RATE)).await;
    assert_eq!(report.mode, "open");
    let appends = primary(&report, "append-if");
    let scheduled = (LOAD_DURATION.as_secs_f64() * OPEN_LOOP_RATE).ceil() as u64;
    assert_eq!(
        report.unsent,
        0,
        "{OPEN_LOOP_RATE}/s was not sustained:\n{}",
        report.summary()
    );
    assert_eq!(appends.requests, scheduled);
    assert_eq!(appends.ok, scheduled);
    assert_eq!(appends.conflicts, 0);
    let service = appends
        .service_us
        .expect("open loop reports the service time");
    // Latency counts from the intended send time, so it is never below the service time.
    assert!(appends.latency_us.max_us >= service.max_us);
}

/// Runs one scenario for [`LOAD_DURATION`] and prints its summary.
async fn run(port: u16, kind: ScenarioKind, run_id: &str, rate: Option<f64>) -> Report {
    run_with(port, kind, run_id, rate, Decision::ReadAppend).await
}

/// [`run`], with hot-keys decisions sent as `decision` says.
async fn run_with(
    port: u16,
    kind: ScenarioKind,
    run_id: &str,
    rate: Option<f64>,
    decision: Decision,
) -> Report {
    let cfg = RunConfig {
        target: Target::loopback(port),
        scenario: ScenarioConfig {
            kind,
            // Every tag a run writes contains it: runs on one database stay apart.
            run_id: run_id.into(),
            read_tags: PRELOAD_EVENTS / EVENTS_PER_TAG,
            tag_prefix: READ_TAG_PREFIX.into(),
            hot_keys: HOT_KEYS,
            zipf_exponent: 1.0,
            decision,
            data_bytes: 64,
            seed_reads: false,
        },
        clients: if rate.is_some() {
            OPEN_LOOP_CLIENTS
        } else {
            CLIENTS
        },
        duration: LOAD_DURATION,
        rate,
        seed: 0x5EED,
        request_timeout: REQUEST_TIMEOUT,
        progress: false,
        setup: true,
        verify: true,
    };
    let report = driver::run(&cfg, Arc::default())
        .await
        .unwrap_or_else(|e| panic!("{kind} run failed: {e:#}"));
    print!("{}", report.summary());
    assert_eq!(report.scenario, kind.name());
    assert_eq!(report.error_count(), 0, "{}", report.summary());
    report
}

/// The run's headline figures, which must be those of `label`, with no error of
/// any kind and every request counted once.
fn primary<'r>(report: &'r Report, label: &str) -> &'r LabelReport {
    let primary = report
        .primary()
        .unwrap_or_else(|| panic!("no `{label}` figures:\n{}", report.summary()));
    assert_eq!(primary.label, label);
    assert!(
        primary.errors.is_empty(),
        "{label}: errors {:?}, e.g. {:?}",
        primary.errors,
        primary.error_samples
    );
    assert_eq!(primary.requests, primary.ok + primary.conflicts);
    primary
}

/// The run's verification, which must have passed and covered exactly the
/// `accepted` operations: the run's tags hold only the events it had accepted, and
/// every acceptance answered its `lastPosition` (each found in the log).
fn verified<'r>(report: &'r Report, accepted: &LabelReport) -> &'r Verification {
    let v = report
        .verification
        .as_ref()
        .expect("the scenario verifies its log");
    assert_eq!(v.violations, 0, "violations: {:?}", v.details);
    assert_eq!(v.unparsable, 0, "unparsable events: {:?}", v.details);
    assert_eq!(
        v.lost_acknowledged, 0,
        "acknowledged appends missing: {:?}",
        v.details
    );
    assert!(v.passed());
    assert_eq!(v.events_checked, accepted.ok);
    assert_eq!(v.acknowledged_checked, accepted.ok);
    v
}

/// A crablet server on a free loopback port, on a private PostgreSQL cluster.
/// Dropping it stops the server, then the cluster, then removes the folder.
struct LiveServer {
    /// Where the server listens, on 127.0.0.1.
    port: u16,
    /// Held for its `Drop`. Declared before the cluster: fields drop in order, and
    /// the server must stop first.
    _server: ServerThread,
    /// Held for its `Drop`: the cluster the server uses.
    _cluster: Cluster,
}

impl LiveServer {
    fn start() -> Self {
        let cluster = Cluster::start();
        let mut settings = Settings::load(
            None,
            Overrides {
                listen: Some("127.0.0.1:0".into()),
                database_url: Some(cluster.connection_string()),
                data_dir: None,
                ..Default::default()
            },
        )
        .expect("settings");
        settings.http.workers = SERVER_WORKERS;
        let (port, server) = ServerThread::start(settings);
        Self {
            port,
            _server: server,
            _cluster: cluster,
        }
    }
}

/// The private PostgreSQL cluster and the folder it lives in.
struct Cluster {
    /// `None` once stopped.
    postgres: Option<EmbeddedPostgres>,
    /// Removed on drop.
    dir: PathBuf,
}

impl Cluster {
    /// Starts a cluster in a new folder. The folder is under /tmp, not
    /// `std::env::temp_dir()`: when the tests run as root, PostgreSQL runs as
    /// another user, which must be able to traverse every parent folder, and
    /// `TMPDIR` may point into a private home.
    fn start() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = Path::new("/tmp").join(format!(
            "crablet-loadtest-smoke-{}-{nanos:08x}",
            std::process::id()
        ));
        let mut cluster = Self {
            postgres: None,
            dir,
        };
        // Blocking (initdb, pg_ctl): this runs on the test thread, outside any runtime.
        match EmbeddedPostgres::start(&cluster.dir) {
            Ok(pg) => cluster.postgres = Some(pg),
            Err(e) => panic!("starting PostgreSQL in {}: {e}", cluster.dir.display()),
        }
        cluster
    }

    fn connection_string(&self) -> String {
        self.postgres
            .as_ref()
            .expect("cluster is running")
            .connection_string("crablet")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut pg) = self.postgres.take() {
            if let Err(e) = pg.stop() {
                eprintln!("stopping PostgreSQL in {}: {e}", self.dir.display());
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
    }
}

/// The server, running on the actix system of a thread of its own.
struct ServerThread {
    /// Stops the server's system (its HTTP workers and actors).
    system: actix_rt::System,
    /// Joined on drop, so the server is gone before the cluster stops.
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Builds the server and returns its port once it listens; panics when the
    /// build fails.
    fn start(settings: Settings) -> (u16, Self) {
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("crablet-server".into())
            .spawn(move || {
                let runner = actix_rt::System::new();
                let app = match runner.block_on(Application::build(settings)) {
                    Ok(app) => app,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{e}")));
                        return;
                    }
                };
                let port = app.port();
                runner.block_on(async {
                    actix_rt::spawn(app.run_until_stopped());
                });
                let _ = ready_tx.send(Ok((port, actix_rt::System::current())));
                // Until `System::stop`.
                if let Err(e) = runner.run() {
                    eprintln!("crablet server system: {e}");
                }
            })
            .expect("spawn the server thread");
        match ready_rx.recv() {
            Ok(Ok((port, system))) => (
                port,
                Self {
                    system,
                    thread: Some(thread),
                },
            ),
            Ok(Err(e)) => panic!("building the server: {e}"),
            Err(_) => {
                let _ = thread.join();
                panic!("the server thread ended before the server was built");
            }
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.system.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
