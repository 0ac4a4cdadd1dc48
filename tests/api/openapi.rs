//! `openapi/crablet.json` against the server: the same routes and methods,
//! request schemas listing exactly the fields serde accepts, response
//! schemas listing exactly the fields the server writes.

use std::collections::BTreeSet;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::helpers::{assert_same_set, event, spawn_app, unless_tagged};

/// Documented routes whose code is not in yet: subscriptions.
const EXPECTED_FROM_SUBSCRIPTIONS: &[(&str, &str)] = &[];

/// Optional response fields a plain sample does not show: `duplicate` only
/// on a retried append, `failedRequirement` only on an append refused by a
/// requirement, `metadata` only on events written with some.
const ABSENT_WHEN_UNSET: &[(&str, &str)] = &[
    ("AppendResponse", "duplicate"),
    ("AppendResponse", "failedRequirement"),
    ("Event", "metadata"),
];

fn document() -> Value {
    serde_json::from_str(crablet::http::OPENAPI).expect("openapi/crablet.json is JSON")
}

fn schema(doc: &Value, name: &str) -> Value {
    doc["components"]["schemas"][name].clone()
}

fn properties(schema: &Value) -> BTreeSet<String> {
    schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn required(schema: &Value) -> BTreeSet<String> {
    schema["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn pending(list: &[(&str, &str)], schema: &str, field: &str) -> bool {
    list.contains(&(schema, field))
}

#[test]
fn the_openapi_document_describes_exactly_the_registered_routes() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            documented.insert((path.clone(), method.to_uppercase()));
        }
    }
    let registered: BTreeSet<(String, String)> = crablet::http::routes::listed()
        .into_iter()
        .flat_map(|(path, methods)| {
            methods
                .into_iter()
                .map(move |m| (path.to_string(), m.to_string()))
        })
        .collect();
    assert_same_set(
        &registered,
        &documented,
        |(p, m)| EXPECTED_FROM_SUBSCRIPTIONS.contains(&(p.as_str(), m.as_str())),
        "routes missing from openapi/crablet.json",
        "documented in openapi/crablet.json but not registered",
    );
}

#[actix_rt::test]
async fn every_registered_route_answers_its_methods_and_refuses_others() {
    let app = spawn_app().await;
    for (path, methods) in crablet::http::routes::listed() {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let body = (method == "POST").then_some("{}");
            let method_value = Method::from_bytes(method.as_bytes()).expect("method");
            let (status, text) = app.raw(method_value, path, body).await;
            if methods.contains(&method) {
                assert!(
                    status != 404 && status != 405,
                    "{method} {path} is in the route table but answered {status}: {text}"
                );
            } else {
                assert_eq!(status, 405, "{method} {path}: {text}");
            }
        }
    }
    let (status, served) = app.raw(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&served).expect("served JSON"),
        document()
    );
}

#[actix_rt::test]
async fn a_405_names_the_methods_the_route_answers_in_allow() {
    let app = spawn_app().await;
    let mut violations = 0;
    for (path, methods) in crablet::http::routes::listed() {
        let response = app
            .http
            .delete(format!("{}{path}", app.address))
            .send()
            .await
            .expect("DELETE sent");
        let allow = response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if response.status() != 405 || allow.as_deref() != Some(methods.join(", ").as_str()) {
            violations += 1;
            eprintln!("DELETE {path}: {} with Allow {allow:?}", response.status());
        }
    }
    assert_eq!(violations, 0, "405s without the route's methods in Allow");
}

/// The fields serde accepts for `T`, from the error a `deny_unknown_fields`
/// type gives for an unknown one ("expected one of `a`, `b`").
fn serde_fields<T: DeserializeOwned>() -> BTreeSet<String> {
    let error = serde_json::from_value::<T>(json!({"\u{1}unknown": 0}))
        .err()
        .expect("an unknown field is refused")
        .to_string();
    let expected = error
        .split_once("expected")
        .unwrap_or_else(|| panic!("not an unknown-field error: {error}"))
        .1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// Checks a request schema against the type that parses it.
fn check_request<T: DeserializeOwned>(doc: &Value, name: &str) {
    let schema = schema(doc, name);
    assert_eq!(
        schema["additionalProperties"],
        json!(false),
        "{name}: the server refuses unknown fields; the schema must say so"
    );
    let documented = properties(&schema);
    let accepted = serde_fields::<T>();
    let undocumented: Vec<_> = accepted.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "{name}: accepted by the server but not in the schema: {undocumented:?}"
    );
    let refused: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        refused.is_empty(),
        "{name}: in the schema but refused by the server: {refused:?}"
    );
    let example = schema["example"].clone();
    serde_json::from_value::<T>(example.clone())
        .unwrap_or_else(|e| panic!("{name}: the schema's example is refused: {e}"));
    let mut extra = example;
    extra["notInTheSchema"] = json!(1);
    assert!(
        serde_json::from_value::<T>(extra).is_err(),
        "{name}: a field outside the schema is accepted"
    );
}

#[test]
fn request_schemas_list_exactly_the_fields_the_server_accepts() {
    use crablet::dcb::{AppendCondition, AppendRequest, NewEvent, Query, QueryItem, ReadOptions};
    let doc = document();
    check_request::<NewEvent>(&doc, "NewEvent");
    check_request::<QueryItem>(&doc, "QueryItem");
    check_request::<Query>(&doc, "Query");
    check_request::<AppendCondition>(&doc, "AppendCondition");
    check_request::<AppendRequest>(&doc, "AppendRequest");
    check_request::<ReadOptions>(&doc, "ReadOptions");
    check_request::<crablet::http::read::ReadBody>(&doc, "ReadRequest");
    use crablet::dcb::projection::{ProjectRequest, Projector, Requirement};
    check_request::<Projector>(&doc, "Projector");
    check_request::<ProjectRequest>(&doc, "ProjectRequest");
    check_request::<Requirement>(&doc, "Requirement");
    use crablet::dcb::import::{ImportBody, ImportedEvent};
    check_request::<ImportBody>(&doc, "ImportRequest");
    check_request::<ImportedEvent>(&doc, "ImportedEvent");
}

/// Checks a response body against its schema: every field written is
/// documented, every required one is written, and a documented field the
/// sample lacks is one that is only written when set.
fn check_response(doc: &Value, name: &str, body: &Value) {
    let schema = schema(doc, name);
    let documented = properties(&schema);
    let written: BTreeSet<String> = body
        .as_object()
        .unwrap_or_else(|| panic!("{name}: not an object: {body}"))
        .keys()
        .cloned()
        .collect();
    let undocumented: Vec<_> = written.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "{name}: written by the server but not in the schema: {undocumented:?} ({body})"
    );
    let missing: Vec<_> = required(&schema).difference(&written).cloned().collect();
    assert!(
        missing.is_empty(),
        "{name}: required but not written: {missing:?}"
    );
    let unseen: Vec<_> = documented
        .difference(&written)
        .filter(|f| !pending(ABSENT_WHEN_UNSET, name, f))
        .collect();
    assert!(
        unseen.is_empty(),
        "{name}: in the schema but never written: {unseen:?} ({body})"
    );
}

#[actix_rt::test]
async fn response_schemas_list_exactly_the_fields_the_server_writes() {
    let doc = document();
    let app = spawn_app().await;
    let appended = app
        .append(
            json!({"events": [event("E", &["t"], "x")], "condition": unless_tagged(&["t"], None)}),
        )
        .await;
    check_response(&doc, "AppendResponse", &appended.body);
    let rejected = app
        .append(
            json!({"events": [event("E", &["t"], "x")], "condition": unless_tagged(&["t"], None)}),
        )
        .await;
    check_response(&doc, "AppendResponse", &rejected.body);
    let refused = app
        .append(json!({"events": [event("E", &["t"], "x")], "require": [
            {"projector": {"query": {"items": [{"tags": ["t"]}]}, "reduce": "exists"},
             "op": "eq", "value": false}]}))
        .await;
    assert_eq!(refused.body["failedRequirement"], json!(0));
    check_response(&doc, "AppendResponse", &refused.body);
    let projected = app
        .http
        .post(format!("{}/project", app.address))
        .json(&schema(&doc, "ProjectRequest")["example"])
        .send()
        .await
        .expect("project");
    assert_eq!(projected.status(), 200);
    let projected: Value = projected.json().await.expect("project JSON");
    check_response(&doc, "ProjectResponse", &projected);

    let imported = app
        .http
        .post(format!("{}/admin/import", app.address))
        .json(&schema(&doc, "ImportRequest")["example"])
        .send()
        .await
        .expect("import");
    assert_eq!(imported.status(), 200);
    let imported: Value = imported.json().await.expect("import JSON");
    check_response(&doc, "ImportResponse", &imported);

    let (_, read) = app.raw(Method::GET, "/read", None).await;
    let events: Value = serde_json::from_str(&read).expect("read JSON");
    check_response(&doc, "Event", &events[0]);

    for path in ["/health", "/health/live"] {
        let (_, body) = app.raw(Method::GET, path, None).await;
        check_response(&doc, "Status", &serde_json::from_str(&body).expect("JSON"));
    }
    let (status, body) = app.raw(Method::GET, "/nowhere", None).await;
    assert_eq!(status, 404);
    let error: Value = serde_json::from_str(&body).expect("error JSON");
    check_response(&doc, "Error", &error);
    let inner = json!({"components": {"schemas": {
        "Error.error": doc["components"]["schemas"]["Error"]["properties"]["error"]
    }}});
    check_response(&inner, "Error.error", &error["error"]);
}
