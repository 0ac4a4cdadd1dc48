//! Read replicas against a real streaming replica (`pg_basebackup -R` of a
//! private primary): which database serves what, read-your-writes with
//! `minPosition`, subscriptions served by a replica while other processes
//! append, a replica stopped and restarted under a read load, and a
//! replica URL that names no standby refused at start.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::replica::ReplicaSet;
use crate::helpers::subscription::{counted_violations, positions, Subscription};
use crate::helpers::{
    client, event, get_read, metric, metrics_text, post_append, settings_for, spawn_app_on, TestApp,
};
use crablet::app::Application;

/// A server on the set's primary with its replica configured.
async fn with_replica(set: &ReplicaSet) -> TestApp {
    let replica = set.replica_url();
    spawn_app_on(&set.primary_url(), |s| {
        s.database.replica_urls = vec![replica];
    })
    .await
}

/// The source header of a response.
fn source(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-crablet-source")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
        .to_owned()
}

/// `GET /read` of everything with `minPosition`: its source and positions.
async fn read_at_least(
    http: &reqwest::Client,
    address: &str,
    min_position: i64,
) -> (String, Vec<i64>) {
    let response = http
        .get(format!("{address}/read"))
        .query(&[("minPosition", min_position.to_string())])
        .send()
        .await
        .expect("read");
    assert_eq!(response.status(), 200);
    let source = source(&response);
    let events: Vec<Value> = response.json().await.expect("events");
    let positions = events
        .iter()
        .map(|e| e["position"].as_i64().expect("position"))
        .collect();
    (source, positions)
}

#[actix_rt::test]
async fn reads_head_and_projections_come_from_the_replica_and_appends_from_the_primary() {
    let set = ReplicaSet::start().await;
    let app = with_replica(&set).await;
    let http = &app.http;

    // The community suite's round: appends, a conditional append after a
    // read's head, a read of what was written, a failed condition.
    for i in 0..20 {
        let answer = post_append(
            http,
            &app.address,
            &json!({"events": [event("Ordered", &[&format!("order:{i}"), "shop:1"], "{}")]}),
        )
        .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    let response = http
        .get(format!("{}/read", app.address))
        .query(&[(
            "query",
            json!({"items": [{"tags": ["shop:1"]}]}).to_string(),
        )])
        .send()
        .await
        .expect("read");
    assert_eq!(
        source(&response),
        "replica",
        "a read is served by the replica"
    );
    let head: i64 = response.headers()["x-crablet-head"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let events: Vec<Value> = response.json().await.unwrap();
    // This process acknowledged all 20: its reads never show less.
    assert_eq!(
        events.len(),
        20,
        "the replica's read shows every append this process made"
    );
    assert!(head >= 20, "head {head}");
    let condition = json!({"failIfEventsMatch": {"items": [{"tags": ["shop:1"]}]}, "after": head});
    let close = json!({"events": [event("Closed", &["shop:1"], "{}")], "condition": condition});
    let decided = post_append(http, &app.address, &close).await;
    assert_eq!(
        decided.body["appendConditionFailed"], false,
        "{:?}",
        decided.body
    );
    // The same decision again: the first close is on the primary.
    let stale = post_append(http, &app.address, &close).await;
    assert_eq!(
        stale.body["appendConditionFailed"], true,
        "decided on the primary"
    );

    let last = decided.body["lastPosition"].as_i64().unwrap();
    let (from, positions) = read_at_least(http, &app.address, last).await;
    assert_eq!(from, "replica");
    assert_eq!(positions.last(), Some(&last));

    let head = http
        .get(format!("{}/head", app.address))
        .query(&[("minPosition", last.to_string())])
        .send()
        .await
        .unwrap();
    assert_eq!(source(&head), "replica");
    let head: Value = head.json().await.unwrap();
    assert_eq!(head["position"], last);

    let projected = http
        .post(format!("{}/project", app.address))
        .header("X-Crablet-Min-Position", last.to_string())
        .json(&json!({"projectors": [{"id": "n", "query": {"items": [{"tags": ["shop:1"]}]}, "reduce": "count"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(projected.status(), 200);
    assert_eq!(source(&projected), "replica");
    let projected: Value = projected.json().await.unwrap();
    assert_eq!(projected["states"]["n"], 21);

    let health: Value = http
        .get(format!("{}/health", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["replicas"][0]["state"], "up", "{health}");

    let text = metrics_text(http, &app.address).await;
    let name = health["replicas"][0]["replica"]
        .as_str()
        .unwrap()
        .to_owned();
    let label = format!("replica=\"{name}\"");
    assert!(metric(&text, "crablet_replica_requests_total", &label) >= 4.0);
    assert_eq!(metric(&text, "crablet_replica_up", &label), 1.0);
    let exported = crate::observability::exported_families(&text);
    for name in crate::observability::EXPECTED_WITH_REPLICAS {
        assert!(
            exported.contains(*name),
            "{name} is not exported with a replica"
        );
    }
}

#[actix_rt::test]
async fn a_thousand_appends_each_read_at_once_from_a_replica_with_min_position_miss_none() {
    let set = ReplicaSet::start().await;
    // Appends through one server, reads through another that knows nothing
    // of them but the position the client passes.
    let writer = spawn_app_on(&set.primary_url(), |_| {}).await;
    let reader = with_replica(&set).await;
    let http = client();
    let (mut missing, mut from_replica) = (0, 0);
    for i in 0..1000 {
        let answer = post_append(
            &http,
            &writer.address,
            &json!({"events": [event("Written", &[&format!("n:{i}")], "{}")]}),
        )
        .await;
        let position = answer.body["lastPosition"].as_i64().expect("appended");
        let (from, positions) = read_at_least(&http, &reader.address, position).await;
        if !positions.contains(&position) {
            missing += 1;
        }
        if from == "replica" {
            from_replica += 1;
        }
    }
    println!(
        "1,000 appends read back at once: {missing} missing, {from_replica} served by the replica"
    );
    assert_eq!(missing, 0, "reads that missed their append");
    assert!(
        from_replica > 500,
        "the replica served only {from_replica} reads"
    );
}

#[actix_rt::test]
async fn a_subscriber_on_a_replica_gets_every_event_once_in_order_while_8_writers_append_elsewhere()
{
    let set = ReplicaSet::start().await;
    let writer = spawn_app_on(&set.primary_url(), |_| {}).await;
    let reader = with_replica(&set).await;
    let http = client();
    for i in 0..50 {
        post_append(
            &http,
            &writer.address,
            &json!({"events": [event("Before", &["color:red"], &format!("{i}"))]}),
        )
        .await;
    }
    let queries = [
        json!({"items": []}),
        json!({"items": [{"tags": ["color:red"]}]}),
    ];
    let mut subscriptions = Vec::new();
    for (i, query) in queries.iter().enumerate() {
        subscriptions
            .push(Subscription::open(&http, &reader.address, query, None, i == 0, None).await);
    }
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (http, address) = (http.clone(), writer.address.clone());
            tokio::spawn(async move {
                for i in 0..100 {
                    let color = ["color:red", "color:blue"][(w + i) % 2];
                    let events: Vec<Value> = (0..1 + i % 3)
                        .map(|j| event("During", &[color], &format!("{w}-{i}-{j}")))
                        .collect();
                    let answer = post_append(&http, &address, &json!({"events": events})).await;
                    assert_eq!(answer.status, 200);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let mut violations = (0, 0, 0);
    for (i, (query, subscription)) in queries.iter().zip(subscriptions.iter_mut()).enumerate() {
        let expected = positions(&get_read(&http, &writer.address, query, &json!({})).await);
        let mut got = positions(
            &subscription
                .events(expected.len(), Duration::from_secs(30))
                .await,
        );
        got.extend(positions(
            &subscription.events(1, Duration::from_millis(300)).await,
        ));
        let (missing, duplicated, unordered) =
            counted_violations(&format!("subscriber {i} on the replica"), &expected, &got);
        violations.0 += missing;
        violations.1 += duplicated;
        violations.2 += unordered;
        assert_eq!(got, expected, "subscriber {i}");
    }
    assert_eq!(violations, (0, 0, 0), "missing, duplicated, out of order");
    let text = metrics_text(&http, &reader.address).await;
    assert!(
        metric(&text, "crablet_subscription_tailer_reads_total", "") > 0.0,
        "the live feed was read"
    );
}

#[actix_rt::test]
async fn a_stopped_replica_leaves_the_rotation_within_two_seconds_and_rejoins_when_back() {
    let mut set = ReplicaSet::start().await;
    let app = with_replica(&set).await;
    post_append(
        &app.http,
        &app.address,
        &json!({"events": [event("E", &["k:1"], "{}")]}),
    )
    .await;
    // Four clients read without pause; every answer is kept with its time
    // and source.
    let started = Instant::now();
    let answers = Arc::new(std::sync::Mutex::new(Vec::<(Duration, u16, String)>::new()));
    let stop = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (http, address) = (client(), app.address.clone());
            let (answers, stop) = (answers.clone(), stop.clone());
            tokio::spawn(async move {
                while stop.load(Ordering::Relaxed) == 0 {
                    let sent = started.elapsed();
                    let response = http
                        .get(format!("{address}/read"))
                        .query(&[("query", json!({"items": [{"tags": ["k:1"]}]}).to_string())])
                        .send()
                        .await;
                    let (status, from) = match response {
                        Ok(r) => {
                            let from = source(&r);
                            let status = r.status().as_u16();
                            let _ = r.bytes().await;
                            (status, from)
                        }
                        Err(_) => (0, "(no answer)".to_owned()),
                    };
                    answers.lock().unwrap().push((sent, status, from));
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped_at = started.elapsed();
    set.stop_replica().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted_at = started.elapsed();
    set.start_replica_again().await;
    let back = crate::helpers::eventually(100, Duration::from_millis(100), || {
        let answers = answers.clone();
        async move {
            answers
                .lock()
                .unwrap()
                .iter()
                .any(|(at, _, from)| *at > restarted_at && from == "replica")
        }
    })
    .await;
    stop.store(1, Ordering::Relaxed);
    for r in readers {
        r.await.expect("reader");
    }
    let answers = answers.lock().unwrap();
    let failed = answers
        .iter()
        .filter(|(_, status, _)| *status != 200)
        .count();
    let late_replica = answers
        .iter()
        .filter(|(at, _, from)| {
            *at > stopped_at + Duration::from_secs(2) && *at < restarted_at && from == "replica"
        })
        .count();
    let before = answers
        .iter()
        .filter(|(at, _, from)| *at < stopped_at && from == "replica")
        .count();
    println!(
        "{} reads: {failed} failed, {before} by the replica before it stopped, {late_replica} by it \
         more than 2 s after it stopped, used again after its restart: {back}",
        answers.len()
    );
    assert!(before > 0, "the replica served reads before it stopped");
    assert_eq!(failed, 0, "reads that failed");
    assert_eq!(late_replica, 0, "reads served by a stopped replica");
    assert!(back, "the restarted replica is used again");
}

#[actix_rt::test]
async fn a_replica_url_that_is_no_standby_is_refused_at_start() {
    let set = ReplicaSet::start().await;
    let mut settings = settings_for(&set.primary_url());
    settings.database.replica_urls = vec![set.primary_url()];
    let error = match Application::build(settings).await {
        Ok(_) => panic!("a primary given as a replica was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("not a hot standby"), "{error}");
}

#[actix_rt::test]
async fn a_subscriber_never_catches_up_from_a_replica_behind_the_live_feed() {
    // Two replicas; the second stops replaying (it stays in rotation: its
    // lag bound is far), so reads alternate between a replica that keeps
    // up and one that holds only the early events.
    let set = ReplicaSet::with_replicas(2).await;
    let writer = spawn_app_on(&set.primary_url(), |_| {}).await;
    let urls = vec![set.replica_url_at(0), set.replica_url_at(1)];
    let reader = spawn_app_on(&set.primary_url(), |s| {
        s.database.replica_urls = urls;
        s.replicas.max_lag_ms = 600_000;
        s.replicas.min_position_wait_ms = 200;
        s.reader.page_size = 10;
        s.subscriptions.page_size = 10;
    })
    .await;
    let http = client();
    for i in 0..20 {
        post_append(
            &http,
            &writer.address,
            &json!({"events": [event("Early", &["k:1"], &format!("{i}"))]}),
        )
        .await;
    }
    // Both replicas hold the early events; then the second one pauses.
    for i in 0..2 {
        let (from, _) = read_at_least(&http, &reader.address, 20).await;
        assert_eq!(from, "replica", "read {i}");
    }
    let paused = crate::helpers::db_client(&set.replica_admin_url_at(1)).await;
    paused
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause the second replica's replay");
    for i in 0..200 {
        post_append(
            &http,
            &writer.address,
            &json!({"events": [event("Late", &["k:1"], &format!("{i}"))]}),
        )
        .await;
    }
    let expected =
        positions(&get_read(&http, &writer.address, &json!({"items": []}), &json!({})).await);
    // The live feed's cursor comes from whichever replica it reads; a
    // subscriber from the start catches up page by page, alternately
    // offered both replicas.
    let mut total = (0, 0, 0);
    for round in 0..4 {
        let mut subscription = Subscription::open(
            &http,
            &reader.address,
            &json!({"items": []}),
            None,
            round % 2 == 0,
            None,
        )
        .await;
        let got = positions(
            &subscription
                .events(expected.len(), Duration::from_secs(30))
                .await,
        );
        let (missing, duplicated, unordered) =
            counted_violations(&format!("subscriber {round}"), &expected, &got);
        total.0 += missing;
        total.1 += duplicated;
        total.2 += unordered;
    }
    paused
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .expect("resume");
    assert_eq!(total, (0, 0, 0), "missing, duplicated, out of order");
}

#[actix_rt::test]
async fn two_processes_behind_pgbouncer_with_a_replica_register_each_username_once() {
    let set = ReplicaSet::start().await;
    // The schema first, directly.
    let direct = spawn_app_on(&set.primary_url(), |_| {}).await;
    let bouncer = crate::helpers::pgbouncer::PgBouncer::in_front_of(
        &set.primary_url(),
        "server_round_robin = 1",
    );
    let (pooled, replica, primary) = (
        bouncer.url(&set.primary_url()),
        set.replica_url(),
        set.primary_url(),
    );
    let env = [
        ("CRABLET_DATABASE_POOLER", "transaction"),
        ("CRABLET_REPLICA_URLS", replica.as_str()),
        ("CRABLET_LISTEN_DATABASE_URL", primary.as_str()),
    ];
    let first = crate::helpers::spawn_process_with_env(&pooled, &env).await;
    let second = crate::helpers::spawn_process_with_env(&pooled, &env).await;
    let violations = crate::concurrency::unique_key_race_read_at(
        &[first.address.clone(), second.address.clone()],
        &direct.address,
    )
    .await;
    assert_eq!(
        violations, 0,
        "usernames not registered exactly once, or errors"
    );
    // Both processes read from the replica meanwhile.
    for process in [&first, &second] {
        let response = client()
            .get(format!("{}/head", process.address))
            .send()
            .await
            .unwrap();
        assert_eq!(source(&response), "replica");
    }
}
