//! The process's life cycle: waiting for the database at start-up, failing
//! fast (503) while it is down and recovering when it returns, and the
//! graceful stop on SIGINT and SIGTERM.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crablet::config::Settings;
use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::{client, event, fresh_database, spawn_app_on, spawn_process, OwnCluster};

#[actix_rt::test]
async fn a_server_that_cannot_reach_its_database_retries_then_exits_naming_the_address_and_cause() {
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(|| {
        Command::new(env!("CARGO_BIN_EXE_crablet"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env(
                "DATABASE_URL",
                "host=/nonexistent-crablet port=5999 dbname=events user=ada password=hunter2",
            )
            .env("CRABLET_DATABASE__STARTUP_TIMEOUT_S", "2")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run crablet serve")
    })
    .await
    .expect("join");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(!output.status.success(), "exited {}", output.status);
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(10),
        "gave up after {elapsed:?}"
    );
    let address = "host=/nonexistent-crablet port=5999 dbname=events user=ada";
    let retries = stderr
        .lines()
        .filter(|l| l.contains("retrying") && l.contains(address))
        .count();
    assert!(retries >= 2, "expected logged retries naming {address}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("crablet: cannot connect to PostgreSQL at")
            && last.contains(address)
            && last.contains("No such file or directory"),
        "final message: {last}"
    );
    assert!(!stderr.contains("hunter2"), "the password was logged");
}

#[actix_rt::test]
async fn a_server_started_before_its_database_serves_once_the_database_is_up() {
    let mut cluster = OwnCluster::start().await;
    let url = cluster.url();
    cluster.stop().await;
    let (server, ()) = futures_util::join!(spawn_process(&url), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.start_again().await;
    });
    let answer = crate::helpers::post_append(
        &client(),
        &server.address,
        &json!({"events": [event("Up", &[], "")]}),
    )
    .await;
    assert!(answer.appended(), "{answer:?}");
}

#[actix_rt::test]
async fn while_postgresql_is_down_appends_and_reads_answer_503_within_the_bound_and_recover() {
    let mut cluster = OwnCluster::start().await;
    let app = spawn_app_on(&cluster.url(), |_| {}).await;
    // With the default settings a request waits for one connection attempt
    // (2 s): appends queued behind a batch that found no connection fail
    // with it. Plus slack for a loaded machine.
    let defaults = Settings::defaults();
    let configured = defaults
        .writer
        .connect_timeout()
        .max(defaults.reader.pool_timeout());
    assert!(
        configured <= Duration::from_secs(2),
        "defaults wait {configured:?}"
    );
    let bound = configured + Duration::from_millis(500);
    app.append_event(event("Before", &[], "")).await;
    assert_eq!(app.read_all().await.len(), 1);

    cluster.stop().await;

    let timed = |request: reqwest::RequestBuilder| async move {
        let started = Instant::now();
        let status = request.send().await.map(|r| r.status().as_u16());
        (status, started.elapsed())
    };
    let appends = (0..8).map(|i| {
        timed(
            app.http
                .post(format!("{}/append", app.address))
                .json(&json!({"events": [event("During", &[], &i.to_string())]})),
        )
    });
    let reads = (0..4).map(|_| {
        timed(
            app.http
                .get(format!("{}/read", app.address))
                .query(&[("query", r#"{"items":[]}"#)]),
        )
    });
    let (appends, reads) = futures_util::join!(join_all(appends), join_all(reads));
    let slowest_append = appends.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let slowest_read = reads.iter().map(|(_, d)| *d).max().unwrap_or_default();
    eprintln!(
        "PostgreSQL stopped: 8 appends answered {:?} (slowest {slowest_append:?}), \
         4 reads answered {:?} (slowest {slowest_read:?}); bound {bound:?}",
        appends
            .iter()
            .map(|(s, _)| s.as_ref().ok())
            .collect::<Vec<_>>(),
        reads
            .iter()
            .map(|(s, _)| s.as_ref().ok())
            .collect::<Vec<_>>(),
    );
    let not_503 = appends
        .iter()
        .chain(&reads)
        .filter(|(status, _)| !matches!(status, Ok(503)))
        .count();
    assert_eq!(
        not_503, 0,
        "every request answers 503 while the database is down"
    );
    assert!(slowest_append.max(slowest_read) <= bound);

    cluster.start_again().await;
    let answer = app
        .append(json!({"events": [event("After", &[], "")]}))
        .await;
    assert!(answer.appended(), "after PostgreSQL returned: {answer:?}");
    assert_eq!(app.read_all().await.len(), 2);
}

/// Clients sending appends to a `crablet serve` process.
const SHUTDOWN_CLIENTS: usize = 16;

#[actix_rt::test]
async fn a_server_process_stopped_by_sigint_or_sigterm_under_load_answers_every_request_in_flight_and_exits_0(
) {
    for signal in ["INT", "TERM"] {
        let database = fresh_database().await;
        let mut server = spawn_process(&database).await;
        let stop = Arc::new(AtomicBool::new(false));
        let signalled_at: Arc<std::sync::OnceLock<Instant>> = Arc::default();
        let clients = (0..SHUTDOWN_CLIENTS).map(|c| {
            let (stop, signalled_at) = (stop.clone(), signalled_at.clone());
            let address = server.address.clone();
            let http = client(); // a connection of its own
            async move {
                let (mut answered, mut lost) = (0usize, Vec::new());
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let tag = format!("client:{c}");
                    let body = json!({
                        "events": [event("E", &[&tag], &i.to_string()), event("F", &[&tag], "")],
                    });
                    i += 1;
                    let outcome = match http
                        .post(format!("{address}/append"))
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => r.bytes().await.map(|_| 200),
                        Ok(r) => Ok(r.status().as_u16()),
                        Err(e) => Err(e),
                    };
                    match outcome {
                        Ok(200) => answered += 1,
                        outcome => {
                            // Only requests sent before the signal must get an answer.
                            if signalled_at.get().is_none_or(|at| sent < *at) {
                                lost.push(format!("{outcome:?}"));
                            }
                        }
                    }
                }
                (answered, lost)
            }
        });
        let signaller = async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let _ = signalled_at.set(Instant::now());
            server.signal(signal);
            // Clients that were answered stop sending; the listener is closing.
            tokio::time::sleep(Duration::from_millis(100)).await;
            stop.store(true, Ordering::SeqCst);
        };
        let (results, ()) = futures_util::join!(join_all(clients), signaller);
        let answered: usize = results.iter().map(|(a, _)| a).sum();
        let lost: Vec<&String> = results.iter().flat_map(|(_, l)| l).collect();
        let status = server.wait_exit(Duration::from_secs(15)).await;
        eprintln!(
            "SIG{signal}: {answered} appends answered, {} lost in flight, exit {status:?} {:?}",
            lost.len(),
            lost.first()
        );
        assert!(answered > 0);
        assert!(lost.is_empty(), "requests without an answer: {lost:#?}");
        assert!(
            status.is_some_and(|s| s.success()),
            "SIG{signal}: exit status {status:?}"
        );
    }
}
