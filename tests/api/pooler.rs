//! crablet behind PgBouncer 1.18 in transaction mode (`helpers::pgbouncer`,
//! four server connections shared by every client):
//!
//! - the DCB basics answer through PgBouncer exactly as directly;
//! - the parameter types written for each statement are the server's own;
//! - two processes through one PgBouncer, 8 concurrent writers and a
//!   subscriber on each: no failed append, every event to every subscriber
//!   once, in order (violations counted, asserted zero);
//! - a costly read over its budget still answers 422 `over_budget`;
//! - processes started at once through PgBouncer all migrate and start;
//! - a configuration that would break silently refuses to start, with one
//!   line saying what to set: `database.pooler = "none"` through PgBouncer
//!   (the startup parameter `options` refused, or dropped by
//!   `ignore_startup_parameters`), PgBouncer in statement mode, a
//!   `listen_database_url` through PgBouncer;
//! - a statement the server no longer has as prepared answers 503, not 500.

use std::process::{Command, Stdio};
use std::time::Duration;

use crablet::config::Pooler;
use crablet::store::Sql;
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::helpers::pgbouncer::PgBouncer;
use crate::helpers::subscription::{counted_violations, positions, Subscription};
use crate::helpers::{
    client, db_client, event, free_port, fresh_database, get_read, metric, metrics_text,
    post_append, spawn_app_on, spawn_process_with_env, unless_tagged,
};

const POOLER_ENV: (&str, &str) = ("CRABLET_DATABASE_POOLER", "transaction");

/// Removes what two stores' answers to the same requests may differ in:
/// times, durations, request ids.
fn without_times(mut value: Value) -> Value {
    match &mut value {
        Value::Object(map) => {
            for key in ["recordedAt", "durationInMicroseconds", "requestId"] {
                map.remove(key);
            }
            for v in map.values_mut() {
                *v = without_times(v.take());
            }
        }
        Value::Array(items) => {
            for v in items.iter_mut() {
                *v = without_times(v.take());
            }
        }
        _ => {}
    }
    value
}

/// The same DCB requests, in order, against `address`: each answer's
/// status and body (without times).
async fn transcript(address: &str) -> Vec<(String, u16, Value)> {
    let http = client();
    let mut answers = Vec::new();
    let send = |what: String, request: reqwest::RequestBuilder| {
        let what = what.clone();
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (what, status, without_times(body))
        }
    };
    let append = |body: Value| http.post(format!("{address}/append")).json(&body);
    let read = |query: Value, options: Value| {
        http.get(format!("{address}/read")).query(&[
            ("query", query.to_string()),
            ("options", options.to_string()),
        ])
    };
    // Appends with conditions: the first holds, the second fails.
    for i in 0..12 {
        let color = ["color:red", "color:blue", "color:green"][i % 3];
        let kind = ["Ordered", "Shipped"][i % 2];
        let body = json!({"events": [event(kind, &[color, &format!("order:{}", i % 4)], &format!("{{\"n\":{i}}}"))]});
        answers.push(send(format!("append {i}"), append(body)).await);
    }
    for after in [None, Some(3), Some(100)] {
        let body = json!({"events": [event("Checked", &["order:9"], "{}")],
                          "condition": unless_tagged(&["order:1"], after)});
        answers.push(send(format!("condition after {after:?}"), append(body)).await);
    }
    // Ids: a first append, its retry (a duplicate), a reuse with other data.
    let with_id = |data: &str| json!({"events": [{"type": "Paid", "tags": ["order:2"], "data": data, "id": "pay-2"}]});
    answers.push(send("id".into(), append(with_id("{\"a\":1}"))).await);
    answers.push(send("id retried".into(), append(with_id("{\"a\":1}"))).await);
    answers.push(send("id reused".into(), append(with_id("{\"a\":2}"))).await);
    // A requirement: at most 2 seats.
    let seats =
        json!({"query": {"items": [{"types": ["Seat"], "tags": ["course:1"]}]}, "reduce": "count"});
    for i in 0..3 {
        let body = json!({"events": [event("Seat", &["course:1", &format!("student:{i}")], "{}")],
                          "require": [{"projector": seats, "op": "lt", "value": 2}]});
        answers.push(send(format!("seat {i}"), append(body)).await);
    }
    // Reads: all, a key, probes, costly items (filters); both directions,
    // limits, after.
    let queries = [
        json!({"items": []}),
        json!({"items": [{"tags": ["color:red"]}]}),
        json!({"items": [{"types": ["Shipped"]}]}),
        json!({"items": [{"tags": ["color:red", "order:0"]}]}),
        json!({"items": [{"types": ["Ordered"], "tags": ["color:blue"]}, {"tags": ["order:2"]}]}),
    ];
    let options = [
        json!({}),
        json!({"limit": 2}),
        json!({"backwards": true}),
        json!({"backwards": true, "limit": 3}),
        json!({"from": 4, "limit": 3}),
    ];
    for query in &queries {
        for option in &options {
            answers.push(
                send(
                    format!("read {query} {option}"),
                    read(query.clone(), option.clone()),
                )
                .await,
            );
        }
    }
    // Projections.
    let projectors = json!([
        {"id": "count", "query": {"items": [{"tags": ["color:red"]}]}, "reduce": "count"},
        {"id": "last", "query": {"items": [{"types": ["Ordered"], "tags": ["order:1"]}]}, "reduce": "last"},
        {"id": "sum", "query": {"items": [{"types": ["Ordered"]}]}, "reduce": "sum", "path": "/n"},
    ]);
    for round in 0..2 {
        answers.push(
            send(
                format!("project {round}"),
                http.post(format!("{address}/project"))
                    .json(&json!({ "projectors": projectors })),
            )
            .await,
        );
    }
    answers
}

#[actix_rt::test]
async fn through_pgbouncer_the_dcb_basics_answer_as_directly() {
    let bouncer = PgBouncer::start();
    let direct_db = fresh_database().await;
    let pooled_db = fresh_database().await;
    let direct = spawn_app_on(&direct_db, |_| {}).await;
    let pooled = spawn_app_on(&bouncer.url(&pooled_db), |settings| {
        settings.database.pooler = Pooler::Transaction;
    })
    .await;
    let expected = transcript(&direct.address).await;
    let got = transcript(&pooled.address).await;
    assert_eq!(expected.len(), got.len());
    let mut differences = 0;
    for (e, g) in expected.iter().zip(&got) {
        if e != g {
            differences += 1;
            eprintln!("direct:  {e:?}\npooled: {g:?}");
        }
    }
    assert_eq!(differences, 0, "answers that differ through PgBouncer");
    assert!(got.iter().all(|(_, status, _)| *status < 500), "{got:?}");
    // An append answered through PgBouncer is committed: another session
    // sees it at once, and no server session is left inside a transaction.
    let direct = db_client(&pooled_db).await;
    for i in 0..20 {
        let answer = pooled
            .append(json!({"events": [event("Durable", &[&format!("n:{i}")], "{}")]}))
            .await;
        assert!(answer.appended(), "{answer:?}");
        let position = answer.body["lastPosition"].as_i64().expect("a position");
        let seen: i64 = direct
            .query_one(
                "SELECT count(*) FROM events WHERE position = $1",
                &[&position],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(seen, 1, "append {i} answered before its commit");
    }
    let in_transaction: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_transaction, 0);
}

/// Each statement's parameter types, as written in `store::Sql`, are those
/// the server infers when it prepares the statement (a wrong one would fail
/// or convert behind a pooler only).
#[actix_rt::test]
async fn the_parameter_types_of_each_statement_are_the_servers() {
    let database = fresh_database().await;
    let _app = spawn_app_on(&database, |_| {}).await;
    let client = db_client(&database).await;
    for sql in Sql::ALL {
        let statement = client.prepare(sql.text()).await.expect("prepare");
        assert_eq!(statement.params(), sql.types(), "{sql:?}");
    }
}

/// The scenario that failed before: two processes through one PgBouncer,
/// 8 concurrent writers spread over both, a subscriber on each.
#[actix_rt::test]
async fn two_processes_through_one_pgbouncer_lose_no_append_and_no_event() {
    // Server connections handed out in turn: each transaction of a client
    // lands on another server session than its previous one.
    let bouncer = PgBouncer::start_with("server_round_robin = 1");
    let database = fresh_database().await;
    let url = bouncer.url(&database);
    let first = spawn_process_with_env(&url, &[POOLER_ENV]).await;
    let second = spawn_process_with_env(&url, &[POOLER_ENV]).await;
    let addresses = [first.address.clone(), second.address.clone()];
    let http = client();
    let all = json!({"items": []});
    let mut subscribers = Vec::new();
    for address in &addresses {
        subscribers.push(Subscription::open(&http, address, &all, None, false, None).await);
    }
    const WRITERS: usize = 8;
    const APPENDS: usize = 40;
    let writers = (0..WRITERS).map(|w| {
        let http = http.clone();
        let address = addresses[w % 2].clone();
        async move {
            let mut failed = Vec::new();
            for i in 0..APPENDS {
                // Half the appends carry a condition that holds (a tag only
                // this writer's append i uses), so decisions run too.
                let tag = format!("writer:{w}:{i}");
                let mut body = json!({"events": [event("Wrote", &[&tag, "all"], "{}")]});
                if i % 2 == 0 {
                    body["condition"] = unless_tagged(&[&tag], None);
                }
                let answer = post_append(&http, &address, &body).await;
                if !answer.appended() {
                    failed.push(answer);
                }
            }
            failed
        }
    });
    let failed: Vec<_> = join_all(writers).await.into_iter().flatten().collect();
    let expected = positions(&get_read(&http, &first.address, &all, &json!({})).await);
    let mut violations = failed.len();
    for failure in &failed {
        eprintln!("append not written: {failure:?}");
    }
    assert_eq!(expected.len(), WRITERS * APPENDS - failed.len());
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        let got = positions(
            &subscriber
                .events(expected.len(), Duration::from_secs(30))
                .await,
        );
        let (missing, duplicated, unordered) =
            counted_violations(&format!("subscriber {i}"), &expected, &got);
        violations += missing + duplicated + unordered;
        // Nothing beyond what was appended either.
        if let Some(extra) = subscriber.next(Duration::from_millis(300)).await {
            eprintln!("subscriber {i} got more: {extra:?}");
            violations += 1;
        }
    }
    // No gap in the positions read back either.
    violations += expected.windows(2).filter(|w| w[1] != w[0] + 1).count();
    assert_eq!(violations, 0);
}

/// The costly pool's statement timeout is the costly read's budget: set per
/// transaction behind PgBouncer, it still cuts a read off and answers 422.
#[actix_rt::test]
async fn through_pgbouncer_a_costly_read_over_its_budget_answers_over_budget() {
    let bouncer = PgBouncer::start();
    let database = fresh_database().await;
    let app = spawn_app_on(&bouncer.url(&database), |settings| {
        settings.database.pooler = Pooler::Transaction;
        settings.reader.costly_statement_timeout_ms = 300;
    })
    .await;
    let appended = app
        .append(json!({"events": [event("Seen", &["a:1", "b:1"], "{}")]}))
        .await;
    assert_eq!(appended.status, 200, "{:?}", appended.body);
    // A lock that makes the read wait past its budget.
    let locker = db_client(&database).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE events, event_keys IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock the tables");
    let filtering = json!({"query": {"items": [{"tags": ["a:1", "b:1"]}]}}).to_string();
    let costly_read = || app.raw(reqwest::Method::POST, "/read", Some(&filtering));
    let started = std::time::Instant::now();
    let (status, body) = costly_read().await;
    let waited = started.elapsed();
    locker.batch_execute("COMMIT").await.expect("unlock");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("over_budget"), "{body}");
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
    // The transaction's settings ended with it: the next read is served.
    let (status, body) = costly_read().await;
    assert_eq!(status, 200, "{body}");
}

/// Two processes started at the same moment on an empty database through
/// PgBouncer, then a third: all apply or find the schema, and all serve.
/// PgBouncer hands out its server connections in turn
/// (`server_round_robin`), so consecutive transactions of one client land on
/// different server sessions: a lock or a setting left in a session would
/// be left behind.
#[actix_rt::test]
async fn processes_started_at_once_through_pgbouncer_all_start() {
    let bouncer = PgBouncer::start_with("server_round_robin = 1");
    let http = client();
    for _ in 0..2 {
        let database = fresh_database().await;
        let url = bouncer.url(&database);
        let (first, second) = tokio::join!(
            spawn_process_with_env(&url, &[POOLER_ENV]),
            spawn_process_with_env(&url, &[POOLER_ENV]),
        );
        let third = spawn_process_with_env(&url, &[POOLER_ENV]).await;
        for address in [&first.address, &second.address, &third.address] {
            let body = json!({"events": [event("Up", &["x"], "{}")]});
            let answer = post_append(&http, address, &body).await;
            assert!(answer.appended(), "{answer:?}");
        }
    }
}

/// Runs `crablet serve` on `env` and waits for it to exit; its status and
/// standard error. Panics if it is still running after `bound`.
fn serve_until_exit(env: &[(&str, &str)], bound: Duration) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crablet"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("RUST_LOG", "warn")
        .env_remove("CRABLET_DATABASE_POOLER")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn crablet serve");
    let started = std::time::Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "crablet serve still running after {bound:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("output");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The last line of standard error: what crablet says when it exits.
fn last_line(stderr: &str) -> &str {
    stderr.lines().last().unwrap_or_default()
}

#[actix_rt::test]
async fn through_pgbouncer_without_pooler_transaction_crablet_refuses_to_start() {
    let database = fresh_database().await;
    // Stock PgBouncer refuses the startup parameter `options`.
    let refusing = PgBouncer::start();
    // With `ignore_startup_parameters = options`, it drops it.
    let dropping = PgBouncer::start_with("ignore_startup_parameters = options");
    for (which, bouncer, says) in [
        (
            "refused",
            &refusing,
            "refused the startup parameter `options`",
        ),
        ("dropped", &dropping, "dropped the settings"),
    ] {
        let url = bouncer.url(&database);
        let (status, stderr) = serve_until_exit(&[("DATABASE_URL", &url)], Duration::from_secs(20));
        assert!(!status.success(), "{which}: {stderr}");
        let line = last_line(&stderr);
        assert!(line.contains(says), "{which}: {stderr}");
        assert!(
            line.contains("database.pooler = \"transaction\""),
            "{which}: {stderr}"
        );
    }
}

#[actix_rt::test]
async fn a_pooler_that_does_not_keep_a_transaction_on_one_connection_is_refused() {
    let database = fresh_database().await;
    let statement_mode = PgBouncer::start_with("pool_mode = statement");
    let url = statement_mode.url(&database);
    let (status, stderr) = serve_until_exit(
        &[("DATABASE_URL", &url), POOLER_ENV],
        Duration::from_secs(20),
    );
    assert!(!status.success(), "{stderr}");
    assert!(
        last_line(&stderr).contains("needs the pooler")
            && last_line(&stderr).contains("transaction mode"),
        "{stderr}"
    );
}

#[actix_rt::test]
async fn the_listen_database_url_must_be_direct() {
    let database = fresh_database().await;
    let bouncer = PgBouncer::start();
    let dropping = PgBouncer::start_with("ignore_startup_parameters = options");
    let url = bouncer.url(&database);
    for listen in [bouncer.url(&database), dropping.url(&database)] {
        let (status, stderr) = serve_until_exit(
            &[
                ("DATABASE_URL", &url),
                POOLER_ENV,
                ("CRABLET_LISTEN_DATABASE_URL", &listen),
            ],
            Duration::from_secs(20),
        );
        assert!(!status.success(), "{stderr}");
        assert!(
            last_line(&stderr).contains("listen_database_url must be a direct connection"),
            "{stderr}"
        );
    }
    // A direct one: the server starts, with its pool of one.
    let server = spawn_process_with_env(
        &url,
        &[POOLER_ENV, ("CRABLET_LISTEN_DATABASE_URL", &database)],
    )
    .await;
    let http = client();
    let metrics = metrics_text(&http, &server.address).await;
    assert_eq!(
        metric(&metrics, "crablet_pool_max_connections", "pool=\"listen\""),
        1.0,
        "{metrics}"
    );
    // The live feed is read there: a subscriber gets what is appended, and
    // the listen pool's one connection was opened.
    let mut subscription = Subscription::open(
        &http,
        &server.address,
        &json!({"items": []}),
        None,
        false,
        None,
    )
    .await;
    let appended = post_append(
        &http,
        &server.address,
        &json!({"events": [event("Followed", &["f:1"], "{}")]}),
    )
    .await;
    assert!(appended.appended(), "{appended:?}");
    let got = subscription.events(1, Duration::from_secs(10)).await;
    assert_eq!(
        positions(&got),
        vec![appended.body["lastPosition"].as_i64().unwrap()]
    );
    let metrics = metrics_text(&http, &server.address).await;
    let open = metric(
        &metrics,
        "crablet_pool_connections",
        "pool=\"listen\",state=\"idle\"",
    ) + metric(
        &metrics,
        "crablet_pool_connections",
        "pool=\"listen\",state=\"in_use\"",
    );
    assert_eq!(open, 1.0, "the follower's connection: {metrics}");
}

/// A statement whose prepared form the server no longer has as it was (a
/// column's type changed under it: what a schema change under running
/// processes, or a pooler's swap of sessions, does) answers 503 with
/// Retry-After, never 500, and the connection is not reused.
#[actix_rt::test]
async fn a_statement_the_server_no_longer_has_as_prepared_answers_503() {
    let database = fresh_database().await;
    let app = spawn_app_on(&database, |settings| {
        settings.reader.pool_size = 1;
    })
    .await;
    app.append_event(event("Seen", &["a:1"], "{}")).await;
    let read = || async {
        let response = app
            .http
            .get(format!("{}/read", app.address))
            .query(&[("query", json!({"items": []}).to_string())])
            .send()
            .await
            .expect("read");
        let retry_after = response.headers().contains_key("retry-after");
        (
            response.status().as_u16(),
            retry_after,
            response.text().await.unwrap_or_default(),
        )
    };
    let (status, _, body) = read().await;
    assert_eq!(status, 200, "{body}");
    // The result type of the prepared statement changes under it.
    let admin = db_client(&database).await;
    admin
        .batch_execute("ALTER TABLE events ALTER COLUMN type TYPE varchar")
        .await
        .expect("change the column");
    let (status, retry_after, body) = read().await;
    assert_eq!(status, 503, "{body}");
    assert!(retry_after);
    // The connection that failed was discarded: a fresh one prepares the
    // statement for the new type.
    let (status, _, body) = read().await;
    assert_eq!(status, 200, "{body}");
}
