//! The API boundary keeps its promises: misspelled fields and wrong types are
//! 400s naming the field, bodies must be JSON, every error from every layer
//! (the HTTP/1 dispatcher included) has a JSON body, every response carries a
//! request id, and a request must arrive whole before its deadline.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{event, spawn_app, spawn_app_with, TestApp};

/// Writes `request` on a fresh connection and returns what the server sent
/// until it closed the connection or `wait` passed.
async fn raw_exchange(app: &TestApp, request: &[u8], wait: Duration) -> String {
    let address = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    let mut received = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut received)).await;
    String::from_utf8_lossy(&received).into_owned()
}

/// Status and JSON body of a raw HTTP/1.1 response.
fn parse_response(text: &str) -> (u16, Option<Value>, String) {
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    (status, serde_json::from_str(body).ok(), head.to_string())
}

fn is_error_body(body: &Option<Value>) -> bool {
    body.as_ref()
        .is_some_and(|b| b["error"]["code"].is_string() && b["error"]["message"].is_string())
}

#[actix_rt::test]
async fn misspelled_fields_and_wrong_types_are_400s_naming_the_field_and_write_nothing() {
    let app = spawn_app().await;
    // An event the intended conditions would have matched.
    app.append_event(event("E", &["k:1"], "")).await;

    let e = r#"{"type":"E","tags":["k:1"],"data":""}"#;
    let bodies: Vec<(String, &str)> = vec![
        (
            format!(r#"{{"events":[{e}],"conditon":{{"failIfEventsMatch":{{"items":[{{"tags":["k:1"]}}]}}}}}}"#),
            "\"conditon\"",
        ),
        (
            format!(r#"{{"events":[{e}],"condition":{{"failIfEventsMatch":{{"itmes":[{{"tags":["k:1"]}}]}}}}}}"#),
            "condition.failIfEventsMatch: unknown field \"itmes\"",
        ),
        (
            format!(r#"{{"events":[{e}],"condition":{{"failIfEventMatch":{{"items":[]}}}}}}"#),
            "body.condition: unknown field \"failIfEventMatch\"",
        ),
        (
            format!(r#"{{"events":[{e}],"condition":{{"failIfEventsMatch":{{"items":[{{"tag":["k:1"]}}]}}}}}}"#),
            "items[0]: unknown field \"tag\"",
        ),
        (
            format!(r#"{{"events":[{e}],"condition":{{"failIfEventsMatch":{{"items":[]}},"aftr":1}}}}"#),
            "unknown field \"aftr\"",
        ),
        (
            r#"{"events":[{"type":"E","tags":[],"data":"","metdata":"{}"}]}"#.to_string(),
            "body.events[0]: unknown field \"metdata\"",
        ),
        (
            r#"{"events":[{"type":"E","tags":[],"data":""}],"condition":{"failIfEventsMatch":{"items":[]},"after":1e20}}"#.to_string(),
            "body.condition.after: invalid type",
        ),
        (
            r#"{"events":[{"type":"E","tags":[],"data":7}]}"#.to_string(),
            "body.events[0].data: invalid type",
        ),
        (
            r#"{"events":[{"type":"E","tags":[],"data":""}],"condition":{"failIfEventsMatch":{"items":[]},"after":"3"}}"#.to_string(),
            "body.condition.after: invalid type",
        ),
    ];
    let mut violations = 0;
    for (body, expected) in &bodies {
        let (status, text) = app.raw(reqwest::Method::POST, "/append", Some(body)).await;
        let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let message = parsed["error"]["message"].as_str().unwrap_or("");
        if status != 400 || !message.contains(expected) {
            violations += 1;
            eprintln!("{body}\n  -> {status} {text}\n  expected a 400 containing {expected:?}");
        }
    }

    let reads: Vec<(String, &str)> = vec![
        (
            format!("query={}", urlencode(r#"{"itmes":[{"tags":["k:1"]}]}"#)),
            "query: unknown field \"itmes\"",
        ),
        (
            format!("options={}", urlencode(r#"{"form":5}"#)),
            "options: unknown field \"form\"",
        ),
        (
            format!("options={}", urlencode(r#"{"limit":1e20}"#)),
            "options.limit: invalid type",
        ),
        (
            format!("options={}", urlencode(r#"{"limit":-1}"#)),
            "options.limit: invalid value",
        ),
        ("qurey=%7B%7D".to_string(), "unknown parameter \"qurey\""),
        ("limit=1".to_string(), "unknown parameter \"limit\""),
        ("query=%FF".to_string(), "query: not valid UTF-8"),
        ("query=%zz".to_string(), "malformed percent-escape"),
        ("query=%7B%7D&query=%7B%7D".to_string(), "more than once"),
    ];
    for (query, expected) in &reads {
        let (status, text) = app
            .raw(reqwest::Method::GET, &format!("/read?{query}"), None)
            .await;
        let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let message = parsed["error"]["message"].as_str().unwrap_or("");
        if status != 400 || !message.contains(expected) {
            violations += 1;
            eprintln!(
                "GET /read?{query}\n  -> {status} {text}\n  expected a 400 containing {expected:?}"
            );
        }
    }
    let (status, text) = app
        .raw(
            reqwest::Method::POST,
            "/read",
            Some(r#"{"query":{"items":[]},"option":{"limit":1}}"#),
        )
        .await;
    if status != 400 || !text.contains("unknown field \\\"option\\\"") {
        violations += 1;
        eprintln!("POST /read with \"option\" -> {status} {text}");
    }

    let stored = app.read_all().await.len();
    println!(
        "{} bad requests, {violations} answered wrongly, {} events written by them",
        bodies.len() + reads.len() + 1,
        stored - 1
    );
    assert_eq!(violations, 0);
    assert_eq!(stored, 1, "a rejected request wrote events");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[actix_rt::test]
async fn bodies_that_are_not_declared_json_get_415_and_write_nothing() {
    let app = spawn_app().await;
    let body = r#"{"events":[{"type":"E","tags":[],"data":""}]}"#;
    let content_types: [Option<&str>; 6] = [
        None,
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=xyz"),
        Some("application/json; charset=iso-8859-1"),
    ];
    let mut violations = 0;
    for path in ["/append", "/read"] {
        for content_type in content_types {
            let mut request = app.http.post(format!("{}{path}", app.address)).body(body);
            if let Some(ct) = content_type {
                request = request.header("content-type", ct);
            }
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            let parsed: Option<Value> = response.json().await.ok();
            if status != 415 || !is_error_body(&parsed) {
                violations += 1;
                eprintln!("POST {path} with {content_type:?} -> {status} {parsed:?}");
            }
        }
    }
    println!(
        "{} non-JSON bodies, {violations} not answered 415 JSON",
        2 * content_types.len()
    );
    assert_eq!(violations, 0);
    assert!(
        app.read_all().await.is_empty(),
        "a rejected request wrote events"
    );
    // With the right type the same body is accepted.
    let (status, _) = app.raw(reqwest::Method::POST, "/append", Some(body)).await;
    assert_eq!(status, 200);
}

/// A request whose head cannot be parsed gets the HTTP library's own
/// status with an empty body; every error raised once a request is parsed
/// has crablet's JSON body.
#[actix_rt::test]
async fn errors_of_the_http_layer_have_their_status_and_parsed_requests_a_json_body() {
    let app = spawn_app_with(|s| s.http.request_timeout_ms = 1_000).await;
    let long_query = format!(
        "GET /read?query={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let long_header = format!(
        "GET /read HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(1 << 20)
    );
    // (what, request, status, whether the request was parsed)
    let cases: Vec<(&str, Vec<u8>, u16, bool)> = vec![
        ("1 MB query string", long_query.into_bytes(), 431, false),
        ("1 MB header", long_header.into_bytes(), 431, false),
        ("malformed request line", b"GARBAGE\r\n\r\n".to_vec(), 400, false),
        (
            "conflicting lengths",
            b"POST /append HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            400,
            false,
        ),
        ("head never finished", b"GET /read HTTP/1.1\r\nHost: x\r\n".to_vec(), 408, false),
        (
            "bad chunked framing",
            b"POST /append HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n".to_vec(),
            400,
            true,
        ),
        ("unknown route", b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), 404, true),
        ("wrong method", b"DELETE /append HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), 405, true),
        ("unknown method", b"FOO /read HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), 405, true),
    ];
    let mut violations = 0;
    for (what, request, expected, parsed) in &cases {
        let text = raw_exchange(&app, request, Duration::from_secs(5)).await;
        let (status, body, head) = parse_response(&text);
        let json_type = head
            .to_ascii_lowercase()
            .contains("content-type: application/json");
        let body_as_documented = if *parsed {
            is_error_body(&body) && json_type
        } else {
            let raw_body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            raw_body.is_empty()
        };
        if status != *expected || !body_as_documented {
            violations += 1;
            eprintln!("{what}: expected {expected}, got {status} {body:?}\n{head}");
        }
    }
    println!(
        "{} HTTP-layer errors, {violations} not as documented",
        cases.len()
    );
    assert_eq!(violations, 0);
}

#[actix_rt::test]
async fn a_body_that_stops_arriving_gets_408_within_the_deadline() {
    let app = spawn_app_with(|s| s.http.request_timeout_ms = 1_000).await;
    let started = Instant::now();
    let text = raw_exchange(
        &app,
        b"POST /append HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"events\":",
        Duration::from_secs(10),
    )
    .await;
    let elapsed = started.elapsed();
    let (status, body, _) = parse_response(&text);
    println!("a stalled body was answered {status} after {elapsed:?}");
    assert_eq!(status, 408, "{text}");
    assert!(is_error_body(&body), "{text}");
    assert!(
        elapsed < Duration::from_secs(3),
        "answered after {elapsed:?}"
    );
    assert!(app.read_all().await.is_empty());
}

#[actix_rt::test]
async fn every_response_carries_a_request_id_and_errors_name_it() {
    let app = spawn_app().await;
    let ok = app.get("/health/live").await;
    let generated = ok.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(!generated.is_empty());

    let response = app
        .http
        .post(format!("{}/append", app.address))
        .header("content-type", "application/json")
        .header("x-request-id", "client-chosen-42")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-chosen-42");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["requestId"], "client-chosen-42");

    let second = app.get("/health/live").await;
    assert_ne!(
        second.headers()["x-request-id"].to_str().unwrap(),
        generated
    );
}
