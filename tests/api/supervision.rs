//! Supervision under injected panics: every panic point of a writer lane and
//! of a reader is armed in turn; the clients get the class of error their
//! append's progress allows (503 only when nothing can have been written,
//! 500 `outcome_unknown` when it may have been), the actor restarts and
//! serves again, the restart is counted, the lane is reported down while it
//! is, and the store holds exactly what the answers promise.

use std::collections::HashMap;
use std::time::Duration;

use crablet::faults::{FaultPoint, Faults};
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::helpers::{event, fresh_database, spawn_app_on, TestApp};

/// Where a writer panic happens, and whether the append may have been
/// written by then (answered 500 `outcome_unknown`) or not (503).
const WRITER_POINTS: &[(FaultPoint, bool)] = &[
    (FaultPoint::Handle, false),
    (FaultPoint::TakeBatch, false),
    (FaultPoint::Flush, false),
    (FaultPoint::BeforeCall, false),
    (FaultPoint::AfterCall, true),
    (FaultPoint::Map, true),
    (FaultPoint::FinishBatch, true),
];

async fn spawn_with_faults(restart_backoff_ms: u64) -> (TestApp, Faults) {
    let database = fresh_database().await;
    let (app, faults) = spawn_with_faults_on(&database, restart_backoff_ms).await;
    (app.owning(database), faults)
}

async fn spawn_with_faults_on(database_url: &str, restart_backoff_ms: u64) -> (TestApp, Faults) {
    let faults = Faults::default();
    let armed = faults.clone();
    let app = spawn_app_on(database_url, move |s| {
        s.writer.faults = armed.clone();
        s.reader.faults = armed;
        s.writer.restart_backoff_ms = restart_backoff_ms;
    })
    .await;
    (app, faults)
}

/// An append's status, error code and `Retry-After` header.
#[derive(Debug)]
struct Reply {
    status: u16,
    code: Option<String>,
    retry_after: bool,
}

async fn append_tagged(app: &TestApp, data: &str) -> Reply {
    let answer = app
        .append(json!({"events": [event("Supervised", &["sup"], data)]}))
        .await;
    Reply {
        status: answer.status,
        code: answer.body["error"]["code"].as_str().map(str::to_owned),
        retry_after: answer.retry_after,
    }
}

/// The value of the sample `name` (with its labels) in `/metrics`.
async fn metric(app: &TestApp, sample: &str) -> Option<f64> {
    let (_, text) = app.raw(reqwest::Method::GET, "/metrics", None).await;
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
}

async fn writer_restarts(app: &TestApp) -> f64 {
    metric(app, "crablet_actor_restarts_total{actor=\"writer\"}")
        .await
        .expect("the writer restart counter is exported")
}

/// Checks the store against the answers: every acknowledged append stored
/// exactly once, nothing answered 503 stored, an `outcome_unknown` append at
/// most once. Returns the violations.
async fn violations(app: &TestApp, answers: &HashMap<String, Reply>) -> usize {
    let mut stored: HashMap<String, usize> = HashMap::new();
    for e in app.read_all().await {
        *stored.entry(e.data).or_default() += 1;
    }
    let mut violations = 0;
    for (data, reply) in answers {
        let n = stored.get(data).copied().unwrap_or(0);
        let ok = match (reply.status, reply.code.as_deref()) {
            (200, _) => n == 1,
            (503, Some("unavailable" | "overloaded")) => n == 0 && reply.retry_after,
            (500, Some("outcome_unknown")) => n <= 1 && !reply.retry_after,
            _ => false,
        };
        if !ok {
            eprintln!("violation: {data}: answered {reply:?}, stored {n} times");
            violations += 1;
        }
    }
    violations
}

#[actix_rt::test]
async fn a_panic_at_any_point_of_a_writer_lane_is_answered_by_class_and_the_lane_restarts() {
    let (app, faults) = spawn_with_faults(20).await;
    assert_eq!(
        writer_restarts(&app).await,
        0.0,
        "exported at 0 from start-up"
    );
    assert_eq!(
        metric(&app, "crablet_actor_restarts_total{actor=\"reader\"}").await,
        Some(0.0)
    );
    let mut answers = HashMap::new();
    for (i, &(point, maybe_written)) in WRITER_POINTS.iter().enumerate() {
        faults.arm(point, 1);
        let data = format!("faulted-{i}");
        let reply = append_tagged(&app, &data).await;
        let expected = if maybe_written {
            (500, Some("outcome_unknown"), false)
        } else {
            (503, Some("unavailable"), true)
        };
        assert_eq!(
            (reply.status, reply.code.as_deref(), reply.retry_after),
            expected,
            "a panic at {point:?}"
        );
        answers.insert(data, reply);

        let data = format!("after-{i}");
        let reply = append_tagged(&app, &data).await;
        assert_eq!(reply.status, 200, "the lane serves again after {point:?}");
        answers.insert(data, reply);
        assert_eq!(
            writer_restarts(&app).await,
            (i + 1) as f64,
            "restart counted after {point:?}"
        );
        assert_eq!(
            metric(&app, "crablet_writer_lane_up{lane=\"0\"}").await,
            Some(1.0)
        );
    }
    assert_eq!(faults.fired(), WRITER_POINTS.len() as u32);
    assert_eq!(violations(&app, &answers).await, 0);
}

#[actix_rt::test]
async fn while_a_lane_restarts_it_is_reported_down_and_appends_wait_for_it() {
    let (app, faults) = spawn_with_faults(1500).await;
    assert!(append_tagged(&app, "warm").await.status == 200);
    faults.arm(FaultPoint::Handle, 1);
    let reply = append_tagged(&app, "faulted").await;
    assert_eq!(reply.status, 503);
    // The answer is sent while the panic unwinds, just before the lane
    // marks itself down.
    let mut up = None;
    for _ in 0..50 {
        up = metric(&app, "crablet_writer_lane_up{lane=\"0\"}").await;
        if up == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up, Some(0.0), "down during the restart backoff");
    let (status, body) = app.raw(reqwest::Method::GET, "/health", None).await;
    assert_eq!(status, 503, "readiness while lane 0 restarts: {body}");
    assert!(body.contains("writer lane 0 down"), "{body}");
    let started = std::time::Instant::now();
    let reply = append_tagged(&app, "waited").await;
    assert_eq!(reply.status, 200, "held in the mailbox, then committed");
    assert!(started.elapsed() > Duration::from_millis(500));
    assert_eq!(
        metric(&app, "crablet_writer_lane_up{lane=\"0\"}").await,
        Some(1.0)
    );
    let (status, body) = app.raw(reqwest::Method::GET, "/health", None).await;
    assert_eq!(status, 200, "readiness once the lane is back: {body}");
}

#[actix_rt::test]
async fn concurrent_appends_survive_repeated_writer_panics_with_honest_answers() {
    const CLIENTS: usize = 8;
    const APPENDS: usize = 60;
    let (app, faults) = spawn_with_faults(5).await;
    let clients = (0..CLIENTS).map(|c| {
        let app = &app;
        async move {
            let mut answers = Vec::new();
            for i in 0..APPENDS {
                let data = format!("c{c}-{i}");
                let reply = append_tagged(app, &data).await;
                answers.push((data, reply));
            }
            answers
        }
    });
    let arming = async {
        let mut armed = 0;
        let mut round = 0;
        while armed < 40 {
            let (point, _) = WRITER_POINTS[round % WRITER_POINTS.len()];
            round += 1;
            // The next fault only once the last one's restart is done: two
            // panics in one incarnation of the lane make one restart.
            if faults.fired() as usize == armed && writer_restarts(&app).await == armed as f64 {
                faults.arm(point, 1);
                armed += 1;
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    };
    let (results, ()) = futures_util::join!(join_all(clients), arming);
    faults.disarm();
    let answers: HashMap<String, Reply> = results.into_iter().flatten().collect();
    let count = |status| answers.values().filter(|r| r.status == status).count();
    let restarts = writer_restarts(&app).await;
    eprintln!(
        "restarts survived: {restarts}; answers: {} ok, {} 503, {} 500 (of {})",
        count(200),
        count(503),
        count(500),
        answers.len()
    );
    assert_eq!(
        restarts,
        faults.fired() as f64,
        "every panic restarted the lane once"
    );
    assert!(restarts >= 10.0, "the faults fired while appends ran");
    assert_eq!(violations(&app, &answers).await, 0);
    assert_eq!(append_tagged(&app, "after").await.status, 200);
}

#[actix_rt::test]
async fn a_panic_in_a_reader_answers_503_and_the_reader_restarts() {
    let (app, faults) = spawn_with_faults(20).await;
    assert_eq!(append_tagged(&app, "one").await.status, 200);
    for (i, point) in [FaultPoint::Read, FaultPoint::ReaderHandle]
        .into_iter()
        .enumerate()
    {
        faults.arm(point, 1);
        let response = app.get("/read").await;
        assert_eq!(response.status(), 503, "a panic at {point:?}");
        assert!(response.headers().contains_key("retry-after"));
        let body: Value = response.json().await.expect("error body");
        assert_eq!(body["error"]["code"], "unavailable");
        // A restart is counted once the reader has processed its stop.
        let mut restarts = 0.0;
        for _ in 0..100 {
            restarts = metric(&app, "crablet_actor_restarts_total{actor=\"reader\"}")
                .await
                .unwrap_or(0.0);
            if restarts >= (i + 1) as f64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(restarts, (i + 1) as f64, "restart counted after {point:?}");
        for _ in 0..4 {
            assert_eq!(app.read_all().await.len(), 1, "reads succeed again");
        }
    }
}

/// The backend pids of this database's writer connections.
async fn writer_backends(db: &tokio_postgres::Client) -> Vec<i32> {
    db.query(
        "SELECT pid FROM pg_stat_activity \
         WHERE application_name = 'crablet-writer' AND datname = current_database()",
        &[],
    )
    .await
    .expect("pg_stat_activity")
    .iter()
    .map(|row| row.get(0))
    .collect()
}

#[actix_rt::test]
async fn after_a_writer_panic_the_lane_commits_on_a_fresh_connection() {
    let url = fresh_database().await;
    let (app, faults) = spawn_with_faults_on(&url, 20).await;
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    actix_rt::spawn(connection);
    assert_eq!(append_tagged(&app, "one").await.status, 200);
    let before = writer_backends(&db).await;
    assert_eq!(before.len(), 1, "one lane, one connection");
    faults.arm(FaultPoint::AfterCall, 1);
    assert_eq!(append_tagged(&app, "faulted").await.status, 500);
    assert_eq!(append_tagged(&app, "two").await.status, 200);
    let mut after = Vec::new();
    for _ in 0..100 {
        after = writer_backends(&db).await;
        if !after.contains(&before[0]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !after.contains(&before[0]) && after.len() == 1,
        "the panicked batch's connection {before:?} was closed, not pooled: {after:?}"
    );
}
