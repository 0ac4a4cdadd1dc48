//! Invalid input of any kind gets a 4xx with a JSON error naming the
//! problem, never a 5xx, and writes nothing.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_with};

/// (method, path, body, expected status)
#[rustfmt::skip]
const CASES: &[(&str, &str, Option<&str>, u16)] = &[
    ("POST", "/append", Some("not json"), 400),
    ("POST", "/append", Some(""), 400),
    ("POST", "/append", Some("[]"), 400),
    ("POST", "/append", Some("{}"), 400),
    ("POST", "/append", Some(r#"{"events": []}"#), 400),
    ("POST", "/append", Some(r#"{"events": {}}"#), 400),
    ("POST", "/append", Some(r#"{"events": [{"tags": [], "data": "x"}]}"#), 400),
    ("POST", "/append", Some(r#"{"events": [{"type": "", "tags": [], "data": "x"}]}"#), 400),
    ("POST", "/append", Some(r#"{"events": [{"type": 7, "tags": [], "data": "x"}]}"#), 400),
    ("POST", "/append", Some(r#"{"events": [{"type": "E", "tags": "t", "data": "x"}]}"#), 400),
    ("POST", "/append", Some(r#"{"events": [{"type": "E", "tags": [1], "data": "x"}]}"#), 400),
    ("POST", "/append", Some(r#"{"events": [{"type": "E", "tags": [""], "data": "x"}]}"#), 400),
    ("POST", "/append", Some(r#"{"events": [{"type": "E", "tags": ["a\u0000b"], "data": "x"}]}"#), 400),
    ("POST", "/append", Some(r#"{"events": [{"type": "E", "tags": [], "data": {"a": 1}}]}"#), 400),
    ("POST", "/append", Some(r#"{"events": [{"type": "E", "tags": []}]}"#), 400),
    // A valid event with an invalid condition: nothing may be written.
    ("POST", "/append", Some(r#"{"events": [{"type": "E", "tags": [], "data": "x"}], "condition": {}}"#), 400),
    ("POST", "/append", Some(r#"{"events": [{"type": "E", "tags": [], "data": "x"}], "condition": {"failIfEventsMatch": {"items": [{}]}}}"#), 400),
    ("POST", "/append", Some(r#"{"events": [{"type": "E", "tags": [], "data": "x"}], "condition": {"failIfEventsMatch": {"items": [{"types": [], "tags": []}]}}}"#), 400),
    ("POST", "/append", Some(r#"{"events": [{"type": "E", "tags": [], "data": "x"}], "condition": {"failIfEventsMatch": {"items": []}, "after": -1}}"#), 400),
    ("POST", "/append", Some(r#"{"events": [{"type": "E", "tags": [], "data": "x"}], "condition": {"failIfEventsMatch": {"items": []}, "after": 1e30}}"#), 400),
    ("POST", "/append", Some(r#"{"events": [{"type": "E", "tags": [], "data": "x"}], "condition": {"failIfEventsMatch": {"items": []}, "after": 99999999999999999999}}"#), 400),
    ("POST", "/append", Some(r#"{"events": [{"type": "E", "tags": [], "data": "x"}], "condition": {"failIfEventsMatch": {"items": [{"tags": [""]}]}}}"#), 400),
    ("POST", "/append", Some(r#"{"events": [{"type": "E", "tags": [], "data": "x"}], "condition": {"failIfEventsMatch": {"items": "all"}}}"#), 400),
    ("GET", "/read?query=nope", None, 400),
    ("GET", "/read?query=%7B%22items%22%3A%5B%7B%7D%5D%7D", None, 400),
    ("GET", "/read?options=%7B%22from%22%3A-1%7D", None, 400),
    ("GET", "/read?options=%7B%22from%22%3A1%2C%22after%22%3A1%7D", None, 400),
    ("GET", "/read?options=%7B%22limit%22%3A-5%7D", None, 400),
    ("GET", "/read?options=%7B%22backwards%22%3A%22yes%22%7D", None, 400),
    ("GET", "/read?query=%ZZ", None, 400),
    ("POST", "/read", Some("{"), 400),
    ("POST", "/read", Some(r#"{"query": {"items": [{"tags": [""]}]}}"#), 400),
    ("GET", "/append", None, 405),
    ("DELETE", "/read", None, 405),
    ("GET", "/nope", None, 404),
];

#[actix_rt::test]
async fn every_bad_request_gets_a_json_4xx_and_writes_nothing() {
    let app = spawn_app().await;
    for &(method, path, body, expected) in CASES {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, text) = app.raw(method.clone(), path, body).await;
        assert_eq!(
            status, expected,
            "{method} {path} {body:?} answered {status}: {text}"
        );
        let error: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: body is not JSON: {text}"));
        assert!(
            error["error"]["code"].is_string(),
            "{method} {path}: {text}"
        );
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{text}"
        );
    }
    assert!(
        app.read_all().await.is_empty(),
        "a rejected request wrote something"
    );
}

#[actix_rt::test]
async fn error_messages_name_the_offending_field() {
    let app = spawn_app().await;
    let (_, text) = app
        .raw(
            Method::POST,
            "/append",
            Some(r#"{"events": [{"type": "E", "tags": ["ok", ""], "data": "x"}]}"#),
        )
        .await;
    assert!(text.contains("events[0].tags[1]"), "{text}");
    let (_, text) = app
        .raw(
            Method::POST,
            "/append",
            Some(r#"{"events": [{"type": "E", "data": "x"}], "condition": {"failIfEventsMatch": {"items": [{"tags": ["a"]}, {}]}}}"#),
        )
        .await;
    assert!(
        text.contains("condition.failIfEventsMatch.items[1]"),
        "{text}"
    );
}

#[actix_rt::test]
async fn a_body_over_the_limit_gets_413_and_an_append_over_the_event_limit_400() {
    let app = spawn_app_with(|s| {
        s.http.max_body_bytes = 2048;
        s.limits.max_events_per_append = 3;
    })
    .await;
    let big = format!(
        r#"{{"events": [{{"type": "E", "tags": [], "data": "{}"}}]}}"#,
        "x".repeat(4096)
    );
    let (status, text) = app.raw(Method::POST, "/append", Some(&big)).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
    let four = r#"{"events": [{"type": "E", "data": ""}, {"type": "E", "data": ""}, {"type": "E", "data": ""}, {"type": "E", "data": ""}]}"#;
    let (status, text) = app.raw(Method::POST, "/append", Some(four)).await;
    assert_eq!(status, 400, "{text}");
    assert!(app.read_all().await.is_empty());
}

#[actix_rt::test]
async fn the_largest_valid_appends_are_accepted_several_at_once() {
    // Three lanes: unconditional appends spread over them and run at once.
    let app = spawn_app_with(|s| s.writer.lanes = 3).await;
    let limits = crablet::dcb::Limits::default();
    // The most events, each with as many tags as the index entries allow
    // (one per tag and one for the type); one event with the most tags; the
    // condition has the most items of the most types: thousands of keys each
    // (escalated to one lock, see dcb::footprint::ESCALATION_KEYS).
    let tags_per_event = limits.max_index_entries_per_append / limits.max_events_per_append - 1;
    let events: Vec<Value> = (0..limits.max_events_per_append)
        .map(|e| {
            let tags: Vec<String> = (0..tags_per_event).map(|t| format!("e{e}:t{t}")).collect();
            serde_json::json!({"type": "Bulk", "tags": tags, "data": ""})
        })
        .collect();
    let most_tags: Vec<String> = (0..limits.max_tags_per_event)
        .map(|t| format!("wide:t{t}"))
        .collect();
    let wide = serde_json::json!({"events": [{"type": "Bulk", "tags": most_tags, "data": ""}]})
        .to_string();
    let items: Vec<Value> = (0..limits.max_query_items)
        .map(|i| {
            let types: Vec<String> = (0..limits.max_values_per_item)
                .map(|t| format!("T{i}.{t}"))
                .collect();
            serde_json::json!({ "types": types })
        })
        .collect();
    let conditional =
        serde_json::json!({"events": events, "condition": {"failIfEventsMatch": {"items": items}}})
            .to_string();
    let plain = serde_json::json!({ "events": events }).to_string();
    let bodies = [&plain, &plain, &plain, &conditional, &wide];
    let requests = bodies
        .iter()
        .map(|body| app.raw(Method::POST, "/append", Some(body)));
    for (status, text) in futures_util::future::join_all(requests).await {
        assert_eq!(status, 200, "{text}");
        assert!(text.contains(r#""appendConditionFailed":false"#), "{text}");
    }
    let all = app.read_all().await;
    assert_eq!(all.len(), 4 * limits.max_events_per_append + 1);
}

#[actix_rt::test]
async fn an_append_over_the_index_entry_limit_is_refused_naming_it() {
    let app = spawn_app().await;
    let limits = crablet::dcb::Limits::default();
    let tags: Vec<String> = (0..limits.max_tags_per_event)
        .map(|t| format!("t{t}"))
        .collect();
    let events: Vec<Value> = (0..limits.max_events_per_append)
        .map(|_| serde_json::json!({"type": "Bulk", "tags": tags, "data": ""}))
        .collect();
    let answer = app.append(serde_json::json!({ "events": events })).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    let message = answer.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("max_index_entries_per_append") && message.contains("65000"),
        "{message}"
    );
    assert!(app.read_all().await.is_empty());
}
