//! `require` on `POST /append`: requirements on projected state, decided
//! with the condition under the same locks. The seat-reservation race (N
//! clients, S seats, one server and two processes on one database) counts
//! reservations beyond S and missing ones, and asserts zero; requirement and
//! condition failing independently; retries answered as duplicates; bad
//! input.

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::helpers::{
    append_all, client, event, fresh_database, get_read, spawn_app, spawn_app_on, two_processes,
    unless_tagged, TestApp,
};

const SEATS: u64 = 5;
const CLIENTS: usize = 60;

fn seats_taken() -> Value {
    json!({"query": {"items": [{"types": ["SeatReserved"], "tags": ["course:42"]}]}, "reduce": "count"})
}

fn reservation(client: usize) -> Value {
    json!({
        "events": [event("SeatReserved", &["course:42", &format!("student:{client}")], "{}")],
        "require": [{"projector": seats_taken(), "op": "lt", "value": SEATS}]
    })
}

/// N clients race for S seats through `addresses` (round robin); returns the
/// violations: reservations answered beyond S or missing below S, answers
/// that disagree with the store, and answers that are neither.
async fn seat_race(addresses: &[String]) -> usize {
    let http = client();
    let reservations =
        (0..CLIENTS).map(|c| (addresses[c % addresses.len()].clone(), reservation(c)));
    let answers = append_all(&http, reservations).await;
    let accepted = answers.iter().filter(|a| a.appended()).count();
    let refused = answers.iter().filter(|a| a.failed_requirement(0)).count();
    let other = CLIENTS - accepted - refused;
    let stored = get_read(&http, &addresses[0], &seats_taken()["query"], &json!({}))
        .await
        .len();
    let violations = accepted.abs_diff(SEATS as usize) + stored.abs_diff(accepted) + other;
    if violations > 0 {
        eprintln!("accepted {accepted}, stored {stored}, refused {refused}, other {other}");
    }
    violations
}

/// Three rounds of the seat race on an emptied store; their violations.
async fn seat_races(database: &str, addresses: &[String]) -> usize {
    let mut violations = 0;
    for round in 0..3 {
        crate::helpers::db_client(database)
            .await
            .batch_execute("TRUNCATE events, event_keys")
            .await
            .expect("empty the store");
        let found = seat_race(addresses).await;
        eprintln!("round {round}: {found} violations");
        violations += found;
    }
    violations
}

#[actix_rt::test]
async fn racing_clients_reserve_exactly_the_seats_there_are_through_one_server() {
    let database = fresh_database().await;
    let app = spawn_app_on(&database, |s| s.writer.lanes = 4).await;
    assert_eq!(
        seat_races(&database, std::slice::from_ref(&app.address)).await,
        0
    );
}

#[actix_rt::test]
async fn racing_clients_reserve_exactly_the_seats_there_are_through_two_processes() {
    let (database, first, second) = two_processes().await;
    let addresses = [first.address.clone(), second.address.clone()];
    assert_eq!(seat_races(&database, &addresses).await, 0);
}

async fn append(app: &TestApp, body: Value) -> Value {
    let answer = app.append(body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.body
}

#[actix_rt::test]
async fn a_requirement_and_a_condition_fail_independently_and_the_answer_says_which() {
    let app = spawn_app().await;
    let username_free = |name: &str| {
        json!({"projector": {"query": {"items": [{"tags": [format!("username:{name}")]}]}, "reduce": "exists"},
               "op": "eq", "value": false})
    };
    let register = |name: &str, condition: Value, require: Vec<Value>| {
        let mut body = json!({"events": [event("Registered", &[&format!("username:{name}"), "batch:1"], "{}")],
                              "require": require});
        if !condition.is_null() {
            body["condition"] = condition;
        }
        body
    };
    let ok = append(
        &app,
        register("ada", Value::Null, vec![username_free("ada")]),
    )
    .await;
    assert_eq!(ok["appendConditionFailed"], json!(false));
    assert_eq!(ok.get("failedRequirement"), None);
    // The requirement fails (ada is taken), the condition holds.
    let answer = append(
        &app,
        register(
            "ada",
            unless_tagged(&["nothing"], None),
            vec![username_free("bob"), username_free("ada")],
        ),
    )
    .await;
    assert_eq!(answer["appendConditionFailed"], json!(true));
    assert_eq!(answer["lastPosition"], Value::Null);
    assert_eq!(answer["failedRequirement"], json!(1));
    // The condition fails (an event tagged batch:1 exists), the requirement holds.
    let answer = append(
        &app,
        register(
            "bob",
            unless_tagged(&["batch:1"], None),
            vec![username_free("bob")],
        ),
    )
    .await;
    assert_eq!(answer["appendConditionFailed"], json!(true));
    assert_eq!(answer.get("failedRequirement"), None, "{answer}");
    // Both hold.
    let answer = append(
        &app,
        register(
            "bob",
            unless_tagged(&["batch:1"], Some(1)),
            vec![username_free("bob")],
        ),
    )
    .await;
    assert_eq!(answer["appendConditionFailed"], json!(false), "{answer}");
    assert_eq!(app.read_all().await.len(), 2);
}

#[actix_rt::test]
async fn sum_latest_and_status_requirements_compare_as_documented() {
    let app = spawn_app().await;
    let account = json!({"items": [{"tags": ["account:7"]}]});
    let deposit = |amount: i64| {
        event(
            "Deposited",
            &["account:7"],
            &json!({"amount": amount}).to_string(),
        )
    };
    for body in [deposit(50), deposit(30)] {
        assert!(app.append(json!({"events": [body]})).await.appended());
    }
    let withdraw = |amount: i64| {
        json!({"events": [event("Withdrawn", &["account:7"], &json!({"amount": -amount}).to_string())],
               "require": [{"projector": {"query": account, "reduce": "sum", "path": "/amount"},
                            "op": "ge", "value": amount}]})
    };
    assert!(app.append(withdraw(60)).await.appended(), "80 >= 60");
    let answer = app.append(withdraw(30)).await;
    assert_eq!(answer.body["failedRequirement"], json!(0), "20 < 30");
    assert!(app.append(withdraw(20)).await.appended(), "20 >= 20");

    let status = json!({"query": account, "reduce": "status",
                        "map": {"Deposited": "open", "Closed": "closed"}});
    let close = json!({"events": [event("Closed", &["account:7"], "{}")],
                       "require": [{"projector": status, "op": "eq", "value": "open"},
                                   {"projector": {"query": account, "reduce": "latest", "path": "/amount"},
                                    "op": "lt", "value": 0}]});
    assert!(
        app.append(close.clone()).await.appended(),
        "open, last amount -20"
    );
    let again = app.append(close).await;
    assert_eq!(again.body["failedRequirement"], json!(0), "closed already");
    // Ordering ops between values of different types are false.
    let mismatch = json!({"events": [event("E", &["x"], "{}")],
                          "require": [{"projector": {"query": account, "reduce": "latest", "path": "/amount"},
                                       "op": "lt", "value": "zzz"}]});
    assert_eq!(
        app.append(mismatch).await.body["failedRequirement"],
        json!(0)
    );
}

#[actix_rt::test]
async fn a_retry_with_the_same_ids_is_a_duplicate_even_when_its_requirement_now_fails() {
    let app = spawn_app().await;
    let body = json!({
        "events": [{"type": "SeatReserved", "tags": ["course:42"], "data": "{}", "id": "seat-1"}],
        "require": [{"projector": seats_taken(), "op": "lt", "value": 1}]
    });
    let first = app.append(body.clone()).await;
    assert!(first.appended(), "{:?}", first.body);
    // The requirement (fewer than 1 seat taken) now fails: the retry is
    // still recognised as the stored append.
    let retry = app.append(body.clone()).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.body["duplicate"], json!(true), "{:?}", retry.body);
    assert_eq!(retry.body["lastPosition"], first.body["lastPosition"]);
    assert_eq!(retry.body.get("failedRequirement"), None);
    // The same, sent with appends that share its lane and its batch (their
    // requirement probes the same key; their events match no requirement):
    // the retry is still a duplicate, and they are written.
    for round in 0..5 {
        let others = (0..8).map(|i| {
            app.append(json!({
                "events": [event("Other", &[&format!("other:{round}:{i}")], "{}")],
                "require": [{"projector": seats_taken(), "op": "lt", "value": 1000}]
            }))
        });
        let (retry, others) = futures_util::join!(app.append(body.clone()), join_all(others));
        assert_eq!(
            retry.body["duplicate"],
            json!(true),
            "round {round}: {:?}",
            retry.body
        );
        assert!(others.iter().all(|a| a.appended()));
    }
    // Another client is refused by the requirement.
    let other = json!({
        "events": [{"type": "SeatReserved", "tags": ["course:42"], "data": "{}", "id": "seat-2"}],
        "require": [{"projector": seats_taken(), "op": "lt", "value": 1}]
    });
    assert_eq!(app.append(other).await.body["failedRequirement"], json!(0));
}

#[actix_rt::test]
async fn bad_requirements_are_refused_with_the_json_path_of_the_fault() {
    let app = spawn_app().await;
    let q = json!({"items": [{"tags": ["a"]}]});
    let cases = [
        (
            json!({"projector": {"query": q, "reduce": "median"}, "op": "eq", "value": 1}),
            "body.require[0].projector.reduce: unknown variant \"median\"",
        ),
        (
            json!({"projector": {"query": q, "reduce": "sum"}, "op": "ge", "value": 1}),
            "require[0].projector.path: required by the \"sum\" reducer",
        ),
        (
            json!({"projector": {"query": q, "reduce": "sum", "path": "/a~"}, "op": "ge", "value": 1}),
            "require[0].projector.path: \"~\" must be followed",
        ),
        (
            json!({"projector": {"query": q, "reduce": "count"}, "op": "lte", "value": 1}),
            "body.require[0].op: unknown variant \"lte\"",
        ),
        (
            json!({"projector": {"query": q, "reduce": "exists"}, "op": "lt", "value": true}),
            "require[0].op: lt cannot compare",
        ),
        (
            json!({"projector": {"query": q, "reduce": "count"}, "op": "lt", "value": "3"}),
            "require[0].op: lt cannot compare",
        ),
        (
            json!({"projector": {"query": q, "reduce": "last"}, "op": "eq", "value": null}),
            "require[0].projector.reduce: \"last\" cannot be required",
        ),
        (
            json!({"projector": {"query": q, "reduce": "count"}, "op": "eq"}),
            "body.require[0]: missing field \"value\"",
        ),
    ];
    for (requirement, message) in cases {
        let body = json!({"events": [event("E", &["a"], "{}")], "require": [requirement]});
        let answer = app.append(body).await;
        assert_eq!(answer.status, 400, "{requirement}: {:?}", answer.body);
        let got = answer.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            got.starts_with(message),
            "{requirement}: {got:?}, expected {message:?}"
        );
    }
    assert!(app.read_all().await.is_empty());
}
