//! The go-crablet compatibility prefix (`/go-crablet`): every kind of
//! request go-crablet's k6 scripts send, answered in go-crablet's shapes;
//! the leniency staying inside the prefix; `/cleanup` only when enabled;
//! and the `X-Crablet-Head` header of reads under concurrent appends
//! (`head`).

mod head;

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{event, spawn_app, spawn_app_with, TestApp};

/// A POST inside the prefix, with a JSON body (as the scripts send it).
async fn go_post(
    app: &TestApp,
    path: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    go_post_with(app, path, body, &[]).await
}

async fn go_post_with(
    app: &TestApp,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = app
        .http
        .post(format!("{}/go-crablet{path}", app.address))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

fn keys(body: &Value) -> BTreeSet<String> {
    body.as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"))
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Asserts go-crablet's append answer: exactly its two fields, a positive
/// duration, and whether the condition failed.
fn assert_append_answer(status: u16, body: &Value, failed: bool) {
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        keys(body),
        set(&["durationInMicroseconds", "appendConditionFailed"]),
        "{body}"
    );
    assert!(
        body["durationInMicroseconds"].as_u64().unwrap() > 0,
        "{body}"
    );
    assert_eq!(body["appendConditionFailed"], json!(failed), "{body}");
}

/// go-crablet's read answer: the count, and the last position as a string.
async fn go_count(app: &TestApp, query: Value) -> (u64, Option<String>) {
    let (status, headers, body) = go_post(app, "/read", &json!({ "query": query })).await;
    assert_eq!(status, 200, "{body}");
    assert!(headers.contains_key("x-crablet-head"), "no head header");
    let count = body["numberOfMatchingEvents"].as_u64().expect("count");
    let checkpoint = body.get("checkpointEventId").map(|c| {
        c.as_str()
            .unwrap_or_else(|| panic!("checkpointEventId is not a string: {body}"))
            .to_string()
    });
    let mut expected = set(&["durationInMicroseconds", "numberOfMatchingEvents"]);
    if checkpoint.is_some() {
        expected.insert("checkpointEventId".into());
    }
    assert_eq!(keys(&body), expected, "{body}");
    assert!(body["durationInMicroseconds"].as_u64().unwrap() > 0);
    (count, checkpoint)
}

#[actix_rt::test]
async fn the_prefix_health_check_answers_like_go_crablet() {
    let app = spawn_app().await;
    let (status, body) = app.raw(Method::GET, "/go-crablet/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "ok"})
    );
}

#[actix_rt::test]
async fn a_single_event_object_is_appended_and_answered_in_go_crablets_shape() {
    // quick.js, append-quick.js and every script's setup: `events` is one object.
    let app = spawn_app().await;
    let body = json!({"events": {
        "type": "QuickTestEvent",
        "data": "{\"message\":\"quick test validation\"}",
        "tags": ["test:quick", "validation:test"]
    }});
    let (status, headers, answer) = go_post(&app, "/append", &body).await;
    assert_append_answer(status, &answer, false);
    assert_eq!(headers["x-crablet-isolation"], "serializable-equivalent");
    let stored = app.read_all().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].event_type, "QuickTestEvent");
    assert_eq!(stored[0].tags, vec!["test:quick", "validation:test"]);
    assert_eq!(stored[0].data, "{\"message\":\"quick test validation\"}");
}

#[actix_rt::test]
async fn an_array_of_events_with_fields_go_crablet_ignored_is_appended_in_order() {
    // append-quick.js, append-benchmark.js batches; isolation-levels-quick.js
    // sends `metadata` as an object, which go-crablet ignored.
    let app = spawn_app().await;
    let events: Vec<Value> = (0..25)
        .map(|i| {
            json!({"type": "LogEntry", "data": format!("{{\"i\":{i}}}"),
                   "tags": [format!("service:s{i}"), "level:info"],
                   "metadata": {"timestamp": 1}, "id": "ignored"})
        })
        .collect();
    let (status, _, answer) = go_post(&app, "/append", &json!({ "events": events })).await;
    assert_append_answer(status, &answer, false);
    let stored = app.read_all().await;
    assert_eq!(stored.len(), 25);
    for (i, e) in stored.iter().enumerate() {
        assert_eq!(e.data, format!("{{\"i\":{i}}}"));
        assert_eq!(e.id, None);
        assert_eq!(e.metadata, None);
    }
}

#[actix_rt::test]
async fn a_condition_that_matches_fails_with_200_and_one_that_does_not_appends() {
    // append-benchmark.js CONDITIONAL_FAIL / CONDITIONAL_SUCCESS, append-if scenarios.
    let app = spawn_app().await;
    let seed = json!({"events": {"type": "ConditionalTestEvent", "data": "{}", "tags": ["conditional:test"]}});
    let (status, _, answer) = go_post(&app, "/append", &seed).await;
    assert_append_answer(status, &answer, false);
    let failing = json!({
        "events": {"type": "ConditionalTestEvent", "data": "{}", "tags": ["conditional:test"]},
        "condition": {"failIfEventsMatch": {"items": [
            {"types": ["ConditionalTestEvent"], "tags": ["conditional:test"]}]}}
    });
    let (status, _, answer) = go_post(&app, "/append", &failing).await;
    assert_append_answer(status, &answer, true);
    let passing = json!({
        "events": [{"type": "TransactionInitiated", "data": "{}", "tags": ["transaction:t1", "account:a1"]},
                   {"type": "BalanceChecked", "data": "{}", "tags": ["account:a1", "system:s"]}],
        "condition": {"failIfEventsMatch": {"items": [
            {"types": ["TransactionInitiated"], "tags": ["transaction"]},
            {"types": ["BalanceChecked"], "tags": ["account"]}]}}
    });
    let (status, _, answer) = go_post(&app, "/append", &passing).await;
    assert_append_answer(status, &answer, false);
    assert_eq!(
        app.read_all().await.len(),
        3,
        "the failed append wrote nothing"
    );
}

#[actix_rt::test]
async fn a_condition_without_items_is_no_condition_as_in_go_crablet() {
    // conditional-append-quick.js sends `{"expectedVersion": 0}` and
    // `{"expectedVersion": 1}`: go-crablet saw no failIfEventsMatch and
    // appended unconditionally both times.
    let app = spawn_app().await;
    for condition in [
        json!({"expectedVersion": 0}),
        json!({"expectedVersion": 1}),
        json!({"failIfEventsMatch": {"items": []}}),
        json!({"failIfEventsMatch": null}),
        json!(null),
    ] {
        let body = json!({
            "events": {"type": "ConditionalEvent", "data": "{}", "tags": ["conditional-serializable:1"],
                       "metadata": {"timestamp": 1}},
            "condition": condition
        });
        let (status, _, answer) = go_post(&app, "/append", &body).await;
        assert_append_answer(status, &answer, false);
    }
    assert_eq!(app.read_all().await.len(), 5);
}

#[actix_rt::test]
async fn isolation_level_headers_are_accepted_and_the_guarantee_is_stated() {
    // isolation-levels-quick.js, isolation-level-benchmark.js (X-Isolation-Level),
    // k6-concurrency-test.js (X-Append-If-Isolation).
    let app = spawn_app().await;
    let headers = [
        ("x-isolation-level", "REPEATABLE_READ"),
        ("x-isolation-level", "SERIALIZABLE"),
        ("x-isolation-level", "read_committed"),
        ("x-isolation-level", "serializable"),
        ("x-append-if-isolation", "SERIALIZABLE"),
        ("x-append-if-isolation", "REPEATABLE READ"),
    ];
    for (i, header) in headers.iter().enumerate() {
        let tag = format!("secure:{i}");
        let body = json!({
            "events": {"type": "SecureEvent", "data": "{}", "tags": [tag]},
            "condition": {"failIfEventsMatch": {"items": [{"types": ["SecureEvent"], "tags": [tag]}]}}
        });
        let (status, answer_headers, answer) =
            go_post_with(&app, "/append", &body, &[*header]).await;
        assert_append_answer(status, &answer, false);
        assert_eq!(
            answer_headers["x-crablet-isolation"],
            "serializable-equivalent"
        );
        let (status, _, answer) = go_post_with(&app, "/append", &body, &[*header]).await;
        assert_append_answer(status, &answer, true);
    }
}

#[actix_rt::test]
async fn after_is_honoured_as_a_number_or_a_numeric_string() {
    let app = spawn_app().await;
    let seed = json!({"events": {"type": "E", "data": "", "tags": ["k:1"]}});
    for _ in 0..2 {
        let (status, _, answer) = go_post(&app, "/append", &seed).await;
        assert_append_answer(status, &answer, false);
    }
    // Positions 1 and 2 carry k:1. After 2 nothing matches; after 1 one does.
    for (after, failed) in [
        (json!("2"), false),
        (json!(2), false),
        (json!("1"), true),
        (json!(1), true),
    ] {
        let body = json!({
            "events": {"type": "F", "data": "", "tags": ["other"]},
            "condition": {"failIfEventsMatch": {"items": [{"tags": ["k:1"]}]}, "after": after}
        });
        let (status, _, answer) = go_post(&app, "/append", &body).await;
        assert_append_answer(status, &answer, failed);
    }
    let bad = json!({
        "events": {"type": "F", "data": ""},
        "condition": {"failIfEventsMatch": {"items": [{"tags": ["k:1"]}]}, "after": "later"}
    });
    let (status, _, answer) = go_post(&app, "/append", &bad).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_json");
}

#[actix_rt::test]
async fn reads_answer_the_count_and_the_last_position_as_go_crablet_did() {
    // quick.js, full.js, full-scan.js, the concurrency tests: by type and
    // tags, type only, tag only, empty items (full scan), several items.
    let app = spawn_app().await;
    let mut events = Vec::new();
    for i in 0..6 {
        events.push(event("CoursePlanned", &[&format!("course:c{i}")], "{}"));
        events.push(event(
            "StudentEnrolled",
            &[&format!("course:c{i}"), "student:s1"],
            "{}",
        ));
    }
    assert!(app.append(json!({ "events": events })).await.appended());
    let cases = [
        (
            json!({"items": [{"types": ["CoursePlanned"], "tags": ["course:c2"]}]}),
            1,
            Some("5"),
        ),
        (
            json!({"items": [{"types": ["CoursePlanned", "StudentEnrolled"], "tags": []}]}),
            12,
            Some("12"),
        ),
        (
            json!({"items": [{"types": [], "tags": ["student:s1"]}]}),
            6,
            Some("12"),
        ),
        (
            json!({"items": [{"types": [], "tags": []}]}),
            12,
            Some("12"),
        ),
        (json!({"items": []}), 12, Some("12")),
        (
            json!({"items": [
            {"types": ["CoursePlanned"], "tags": []},
            {"types": [], "tags": ["student:nobody"]},
            {"types": ["StudentEnrolled"], "tags": ["course:c0"]}]}),
            7,
            Some("11"),
        ),
        (
            json!({"items": [{"types": ["NonExistentEvent"], "tags": ["test:full"]}]}),
            0,
            None,
        ),
    ];
    for (query, count, checkpoint) in cases {
        let (got, last) = go_count(&app, query.clone()).await;
        assert_eq!((got, last.as_deref()), (count, checkpoint), "{query}");
    }
    // Options, with positions as strings or numbers.
    for (options, count) in [
        (json!({"from": "11"}), 2),
        (json!({"from": 11}), 2),
        (json!({"after": "11"}), 1),
        (json!({"from": "3", "backwards": true}), 3),
    ] {
        let body = json!({"query": {"items": []}, "options": options});
        let (status, _, answer) = go_post(&app, "/read", &body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["numberOfMatchingEvents"], json!(count), "{options}");
    }
}

#[actix_rt::test]
async fn load_test_data_appends_the_named_data_set_through_the_writer() {
    // append-benchmark.js and append-if-benchmark.js: POST with a null body.
    let app = spawn_app().await;
    let response = app
        .http
        .post(format!(
            "{}/go-crablet/load-test-data?size=tiny",
            app.address
        ))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"success": true,
               "message": "Test data loaded successfully: 5 courses, 10 students, 20 enrollments",
               "dataset_size": "tiny", "courses": 5, "students": 10, "enrollments": 20})
    );
    assert_eq!(
        go_count(&app, json!({"items": [{"types": ["CourseDefined"]}]}))
            .await
            .0,
        5
    );
    assert_eq!(
        go_count(&app, json!({"items": [{"types": ["StudentRegistered"]}]}))
            .await
            .0,
        10
    );
    assert_eq!(
        go_count(
            &app,
            json!({"items": [{"types": ["StudentEnrolledInCourse"]}]})
        )
        .await
        .0,
        20
    );
    // No size is tiny; an unknown one is a 400.
    let (status, _) = app
        .raw(Method::POST, "/go-crablet/load-test-data", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.read_all().await.len(), 70);
    let (status, text) = app
        .raw(Method::POST, "/go-crablet/load-test-data?size=huge", None)
        .await;
    assert_eq!(status, 400, "{text}");
}

#[actix_rt::test]
async fn cleanup_is_forbidden_unless_the_configuration_allows_it() {
    let app = spawn_app().await;
    app.append_event(event("E", &["t"], "")).await;
    // The scripts post it with no body and no content type.
    let (status, text) = app.raw(Method::POST, "/go-crablet/cleanup", None).await;
    assert_eq!(status, 403, "{text}");
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["code"], "disabled");
    assert_eq!(
        app.read_all().await.len(),
        1,
        "a refused cleanup deleted events"
    );

    let app = spawn_app_with(|s| s.compat.allow_cleanup = true).await;
    for _ in 0..3 {
        app.append_event(event("E", &["t"], "")).await;
    }
    let (status, text) = app.raw(Method::POST, "/go-crablet/cleanup", None).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"success": true, "message": "Database cleaned up successfully"})
    );
    assert!(app.read_all().await.is_empty());
    // Positions are not reused: what a client saw as position 3 never
    // becomes another event.
    let answer = app
        .append(json!({"events": [event("E", &["t"], "")]}))
        .await;
    assert_eq!(answer.body["lastPosition"], json!(4));
}

#[actix_rt::test]
async fn project_counts_matching_events_in_go_crablets_shape_for_every_kind_the_benchmark_sends() {
    let app = spawn_app().await;
    // 3 UserCreated and 1 AccountOpened for user:u1 (tenant:t1 on the
    // first two), 2 TransactionInitiated for account:a1, positions 1-6.
    let events = json!([
        event("UserCreated", &["user:u1", "tenant:t1"], "{}"),
        event("UserCreated", &["user:u1", "tenant:t1"], "{}"),
        event("UserCreated", &["user:u1"], "{}"),
        event("AccountOpened", &["user:u1"], "{}"),
        event("TransactionInitiated", &["account:a1"], "{}"),
        event("TransactionInitiated", &["account:a1"], "{}"),
    ]);
    assert!(app.append(json!({ "events": events })).await.appended());
    let counter = "function(state, event) { return state + 1; }";
    let projector = |id: &str, types: &[&str], tags: &[&str], initial: Value| {
        json!({"id": id, "query": {"items": [{"types": types, "tags": tags}]},
               "initialState": initial, "transitionFunction": counter})
    };
    let cases = [
        // Single projector (counter): both tags must match.
        (
            json!({"projectors": [projector("single", &["UserCreated", "AccountOpened"], &["user:u1", "tenant:t1"], json!(0))]}),
            json!({"single": 2}),
        ),
        // Multiple projectors (counter + sum), one of them matching nothing.
        (
            json!({"projectors": [
                projector("users", &["UserCreated"], &["user:u1"], json!(0)),
                projector("sum", &["TransactionInitiated"], &["account:zz"], json!(0)),
            ]}),
            json!({"users": 3, "sum": 0}),
        ),
        // Complex projector: two items, an object as initial state; go-crablet
        // answered the total count once anything matched.
        (
            json!({"projectors": [{"id": "complex", "query": {"items": [
                    {"types": ["UserCreated", "AccountOpened"], "tags": ["user:u1"]},
                    {"types": ["TransactionInitiated", "BalanceChecked"], "tags": ["account:a1"]}]},
                "initialState": {"users": 0, "accounts": 0},
                "transitionFunction": "function(state, event) { state.users++; return state; }"}]}),
            json!({"complex": 6}),
        ),
        // Nothing matches: the initial state comes back as sent.
        (
            json!({"projectors": [projector("none", &["UserUpdated"], &["user:u1"], json!({"created": 0, "updated": 0}))]}),
            json!({"none": {"created": 0, "updated": 0}}),
        ),
        // With a cursor (a numeric string): only events after it count.
        (
            json!({"projectors": [projector("cursor", &["UserCreated"], &["user:u1"], json!(0))], "after": "2"}),
            json!({"cursor": 1}),
        ),
        (
            json!({"projectors": [projector("past", &["UserCreated"], &["user:u1"], json!(7))], "after": "1000"}),
            json!({"past": 7}),
        ),
    ];
    for (body, expected) in cases {
        let (status, _, answer) = go_post(&app, "/project", &body).await;
        assert_eq!(status, 200, "{body}: {answer}");
        assert_eq!(
            keys(&answer),
            set(&["durationInMicroseconds", "states", "appendCondition"]),
            "{answer}"
        );
        assert_eq!(answer["states"], expected, "{body}");
        let condition = &answer["appendCondition"];
        assert!(
            condition["failIfEventsMatch"]["items"].is_array(),
            "{answer}"
        );
        assert_eq!(condition["after"], json!("6"), "{answer}");
    }

    // The appendCondition works: appending with it fails once a matching
    // event came after, and succeeds otherwise.
    let body =
        json!({"projectors": [projector("users", &["UserCreated"], &["user:u1"], json!(0))]});
    let (_, _, answer) = go_post(&app, "/project", &body).await;
    let condition = answer["appendCondition"].clone();
    let append = json!({"events": {"type": "UserCreated", "tags": ["user:u1"], "data": "{}"},
                        "condition": condition});
    // The first appends; the second fails on the first's event.
    for failed in [false, true] {
        let (status, _, answer) = go_post(&app, "/append", &append).await;
        assert_append_answer(status, &answer, failed);
    }

    // go-crablet's refusals: an empty id, a query without items, a cursor
    // that is not a number.
    for bad in [
        json!({"projectors": [projector("", &["E"], &[], json!(0))]}),
        json!({"projectors": [{"id": "q", "query": {"items": []}, "initialState": 0}]}),
        json!({"projectors": [projector("c", &["E"], &[], json!(0))], "after": "soon"}),
    ] {
        let (status, _, answer) = go_post(&app, "/project", &bad).await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }
}

#[actix_rt::test]
async fn the_leniency_stays_inside_the_prefix() {
    let app = spawn_app().await;
    let lenient_appends = [
        json!({"events": {"type": "E", "data": "", "tags": ["t"]}}),
        json!({"events": [{"type": "E", "data": "", "metadata": {"timestamp": 1}}]}),
        json!({"events": [{"type": "E", "data": ""}], "condition": {"expectedVersion": 0}}),
        json!({"events": [{"type": "E", "data": ""}],
               "condition": {"failIfEventsMatch": {"items": [{"tags": ["t"]}]}, "after": "1"}}),
    ];
    let lenient_reads = [
        json!({"query": {"items": [{"types": [], "tags": []}]}}),
        json!({"query": {"items": []}, "options": {"from": "1"}}),
        json!({"query": {"items": []}, "extra": true}),
    ];
    for (route, bodies) in [("/append", &lenient_appends[..]), ("/read", &lenient_reads)] {
        for body in bodies {
            let (status, text) = app.raw(Method::POST, route, Some(&body.to_string())).await;
            assert_eq!(status, 400, "native {route} accepted {body}: {text}");
            let (status, _, answer) = go_post(&app, route, body).await;
            assert_eq!(status, 200, "the prefix refused {body}: {answer}");
        }
    }
}

#[actix_rt::test]
async fn the_prefix_answers_404_when_disabled() {
    let app = spawn_app_with(|s| s.compat.go_crablet = false).await;
    let (status, _) = app.raw(Method::GET, "/go-crablet/health", None).await;
    assert_eq!(status, 404);
    let body = json!({"events": {"type": "E", "data": ""}});
    let (status, _, _) = go_post(&app, "/append", &body).await;
    assert_eq!(status, 404);
    assert!(app.read_all().await.is_empty());
}
