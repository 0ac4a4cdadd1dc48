//! Failure classes against a real PostgreSQL: errors are classed by what
//! the database may have done, and an append whose connection is cut after
//! the database committed it is answered 500 `outcome_unknown`, never 503.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crablet::store::{Failure, StoreError};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio_postgres::config::Host;

use crate::helpers::{db_client as connect, event, fresh_database, spawn_app_on, Answer};

fn failure(error: tokio_postgres::Error) -> Failure {
    StoreError::Database(error).failure()
}

#[actix_rt::test]
async fn database_errors_are_classed_by_what_the_database_may_have_done() {
    let url = fresh_database().await;
    let client = connect(&url).await;
    client
        .batch_execute("SET statement_timeout = 50")
        .await
        .expect("set");
    // In order, on one session: the last two end it.
    let cases = [
        ("SELECT 1 / 0", Failure::Refused, "ERROR: rolled back"),
        (
            "SELECT pg_sleep(5)",
            Failure::Unavailable,
            "ERROR 57014 (statement timeout): rolled back, worth a retry",
        ),
        (
            "SELECT pg_terminate_backend(pg_backend_pid())",
            Failure::OutcomeUnknown,
            "FATAL: the session ended, possibly after a commit",
        ),
        (
            "SELECT 1",
            Failure::OutcomeUnknown,
            "the connection is closed",
        ),
    ];
    for (sql, class, what) in cases {
        let error = client.query(sql, &[]).await.expect_err(what);
        assert_eq!(failure(error), class, "{sql}: {what}");
    }
}

/// A TCP proxy to the test cluster's unix socket. Armed, it forwards the
/// writer connection's next request, then swallows the server's answer
/// (PostgreSQL sends it only after the commit) and cuts the client off.
struct CuttingProxy {
    port: u16,
    armed: Arc<AtomicBool>,
    /// Armed writer requests to let through before the one that is cut.
    skip: Arc<AtomicUsize>,
    cuts: Arc<AtomicUsize>,
}

impl CuttingProxy {
    async fn start(socket: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("address").port();
        let (armed, cuts) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let skip = Arc::new(AtomicUsize::new(0));
        let (armed2, cuts2, skip2) = (armed.clone(), cuts.clone(), skip.clone());
        actix_rt::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = UnixStream::connect(&socket).await else {
                    continue;
                };
                let (armed, cuts, skip) = (armed2.clone(), cuts2.clone(), skip2.clone());
                actix_rt::spawn(proxy(client, server, armed, skip, cuts));
            }
        });
        CuttingProxy {
            port,
            armed,
            skip,
            cuts,
        }
    }
}

async fn proxy(
    client: tokio::net::TcpStream,
    server: UnixStream,
    armed: Arc<AtomicBool>,
    skip: Arc<AtomicUsize>,
    cuts: Arc<AtomicUsize>,
) {
    let (mut client_r, mut client_w) = client.into_split();
    let (mut server_r, mut server_w) = server.into_split();
    let mut first = vec![0u8; 8192];
    let Ok(n) = client_r.read(&mut first).await else {
        return;
    };
    // The startup message names the application: only the writer's
    // connection is cut.
    let writer = first[..n]
        .windows(b"crablet-writer".len())
        .any(|w| w == b"crablet-writer");
    if n == 0 || server_w.write_all(&first[..n]).await.is_err() {
        return;
    }
    // Set when the client sent a request while the proxy was armed.
    let request_sent = Arc::new(AtomicBool::new(false));
    let sent = request_sent.clone();
    let armed_up = armed.clone();
    let upstream = actix_rt::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = match client_r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if server_w.write_all(&buf[..n]).await.is_err() {
                return;
            }
            let let_through = skip
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if writer && armed_up.load(Ordering::SeqCst) && !let_through {
                sent.store(true, Ordering::SeqCst);
            }
        }
    });
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match server_r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if request_sent.load(Ordering::SeqCst) && armed.swap(false, Ordering::SeqCst) {
            // The answer to the armed request: swallow it and cut.
            cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if client_w.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    upstream.abort();
    let _ = client_w.shutdown().await;
}

/// The unix socket of a libpq connection string and the string rewritten
/// to go through `127.0.0.1:port`.
fn through_proxy(url: &str) -> (PathBuf, impl Fn(u16) -> String + '_) {
    let config: tokio_postgres::Config = url.parse().expect("test connection string");
    let dir = match config.get_hosts().first() {
        Some(Host::Unix(dir)) => dir.clone(),
        other => panic!("the test cluster listens on a unix socket, not {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let socket = dir.join(format!(".s.PGSQL.{port}"));
    let rewrite = move |proxy_port: u16| {
        url.split_whitespace()
            .filter(|part| !part.starts_with("host=") && !part.starts_with("port="))
            .chain(["host=127.0.0.1"])
            .collect::<Vec<_>>()
            .join(" ")
            + &format!(" port={proxy_port}")
    };
    (socket, rewrite)
}

#[actix_rt::test]
async fn an_append_whose_answer_is_lost_after_the_commit_is_outcome_unknown_and_stored_once() {
    let url = fresh_database().await;
    let (socket, rewrite) = through_proxy(&url);
    let proxy = CuttingProxy::start(socket).await;
    let app = spawn_app_on(&rewrite(proxy.port), |_| {}).await;

    let warm = app
        .append(json!({"events": [event("Warm", &["t"], "1")]}))
        .await;
    assert!(warm.appended(), "{warm:?}");

    proxy.armed.store(true, Ordering::SeqCst);
    // An append with an event id and a condition its own event would fail
    // on a retry: the retry must still be recognised as the original.
    let cut = json!({
        "events": [{"type": "Cut", "tags": ["t", "cut"], "data": "2", "id": "cut-1"}],
        "condition": {"failIfEventsMatch": {"items": [{"tags": ["cut"]}]}}
    });
    let Answer {
        status,
        body,
        retry_after,
    } = app.append(cut.clone()).await;
    assert_eq!(
        proxy.cuts.load(Ordering::SeqCst),
        1,
        "the proxy cut the call"
    );
    assert_eq!(
        (status, body["error"]["code"].as_str(), retry_after),
        (500, Some("outcome_unknown"), false),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("same event ids"), "{message}");

    // The database committed it: exactly once, not retried by the lane.
    let direct = connect(&url).await;
    let count = |event_type: &'static str| {
        let direct = &direct;
        async move {
            let row = direct
                .query_one(
                    "SELECT count(*) FROM events WHERE type = $1",
                    &[&event_type],
                )
                .await
                .expect("count");
            row.get::<_, i64>(0)
        }
    };
    assert_eq!(count("Cut").await, 1);

    // The client retries with the same ids, as the message says: the retry
    // finds the committed append and is answered with its position.
    let retry = app.append(cut.clone()).await;
    let stored = direct
        .query_one("SELECT position FROM events WHERE id = 'cut-1'", &[])
        .await
        .expect("the cut append is stored")
        .get::<_, i64>(0);
    assert_eq!(retry.status, 200, "{retry:?}");
    assert_eq!(retry.body["duplicate"], json!(true), "{retry:?}");
    assert_eq!(
        retry.body["appendConditionFailed"],
        json!(false),
        "{retry:?}"
    );
    assert_eq!(retry.body["lastPosition"], json!(stored), "{retry:?}");

    // The lane takes a fresh connection and serves again.
    let after = app
        .append(json!({"events": [event("After", &["t"], "3")]}))
        .await;
    assert!(after.appended(), "{after:?}");
    assert_eq!(app.read_all().await.len(), 3);
    assert_eq!(count("Cut").await, 1);
}

#[actix_rt::test]
async fn a_batch_of_many_appends_cut_after_its_commit_is_not_retried_one_by_one() {
    const CLIENTS: usize = 40;
    let url = fresh_database().await;
    let (socket, rewrite) = through_proxy(&url);
    let proxy = CuttingProxy::start(socket).await;
    let app = spawn_app_on(&rewrite(proxy.port), |_| {}).await;
    app.append_event(event("Warm", &["t"], "warm")).await;

    // The first batch of the burst goes through; the second, made of the
    // appends that queued behind it, is cut after its commit.
    proxy.skip.store(1, Ordering::SeqCst);
    proxy.armed.store(true, Ordering::SeqCst);
    let answers = futures_util::future::join_all((0..CLIENTS).map(|i| {
        let app = &app;
        async move {
            let data = format!("burst-{i}");
            let answer = app
                .append(json!({"events": [event("Burst", &["t"], &data)]}))
                .await;
            (data, answer)
        }
    }))
    .await;
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1);
    let mut stored = std::collections::HashMap::new();
    for e in app.read_all().await {
        *stored.entry(e.data).or_insert(0) += 1;
    }
    let mut unknown = 0;
    let mut violations = 0;
    for (data, answer) in &answers {
        let n = stored.get(data).copied().unwrap_or(0);
        let ok = match (answer.status, answer.body["error"]["code"].as_str()) {
            (200, _) => n == 1,
            (500, Some("outcome_unknown")) => {
                unknown += 1;
                n == 1
            }
            (503, _) => n == 0,
            _ => false,
        };
        if !ok {
            eprintln!("violation: {data}: {answer:?}, stored {n} times");
            violations += 1;
        }
    }
    eprintln!("{unknown} appends of the cut batch answered outcome_unknown");
    assert!(unknown >= 1);
    assert_eq!(violations, 0);
}

/// Costly reads queue behind one another: a costly read that waits for the
/// one connection while the read ahead of it runs (here: held by a table
/// lock) longer than `reader.pool_timeout_ms`, but within that read's time
/// budget, is served, not refused busy.
#[actix_rt::test]
async fn a_costly_read_waits_for_the_costly_statement_ahead_of_it_within_its_budget() {
    let url = fresh_database().await;
    let app = spawn_app_on(&url, |settings| {
        settings.reader.costly_pool_size = 1;
        settings.reader.pool_timeout_ms = 200;
        settings.reader.costly_statement_timeout_ms = 10_000;
    })
    .await;
    let appended = app
        .append(json!({"events": [{"type": "Seen", "tags": ["a:1", "b:1"], "data": "{}"}]}))
        .await;
    assert_eq!(appended.status, 200, "{:?}", appended.body);

    let locker = connect(&url).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE events, event_keys IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock the tables");
    // An item with two tags filters: both reads take the costly pool.
    let costly_read = || {
        let http = app.http.clone();
        let address = app.address.clone();
        actix_rt::spawn(async move {
            let response = http
                .post(format!("{address}/read"))
                .json(&json!({"query": {"items": [{"tags": ["a:1", "b:1"]}]}}))
                .send()
                .await
                .expect("read sent");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        })
    };
    let first = costly_read();
    actix_rt::time::sleep(std::time::Duration::from_millis(200)).await;
    let second = costly_read();
    // Both wait well past the pool timeout: the first on the lock (its
    // connection's set-up and its query), the second for that connection.
    actix_rt::time::sleep(std::time::Duration::from_millis(1_000)).await;
    locker.batch_execute("COMMIT").await.expect("unlock");
    for (which, read) in [("first", first), ("second", second)] {
        let (status, body) = read.await.expect("read task");
        assert_eq!(status, 200, "the {which} costly read: {body}");
        let events: Vec<serde_json::Value> = serde_json::from_str(&body).expect("a JSON array");
        assert_eq!(events.len(), 1, "the {which} read's events: {body}");
        assert_eq!(
            events[0]["position"], 1,
            "the {which} read's events: {body}"
        );
    }
}
