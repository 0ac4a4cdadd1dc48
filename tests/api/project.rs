//! `POST /project`: every reducer checked against an in-memory reference on
//! random events (data that is not JSON, holds NUL characters, lacks the
//! field or has a non-numeric one), with several queries; the head and the
//! condition of the answer; bad input.

use crablet::dcb::{Query, SequencedEvent};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use crate::helpers::{event, random_item, spawn_app, TestApp};

const TAGS: &[&str] = &["a", "b", "c", "x:1", "ü,{}"];
const TYPES: &[&str] = &["A", "B", "C"];

/// Random `data`: objects with or without the fields, with numbers, strings,
/// bools, nulls and nested objects, and data that is not a JSON object.
fn random_data(rng: &mut StdRng) -> String {
    match rng.gen_range(0..12) {
        0 => "not json".into(),
        1 => "{\"amount\": 3, \"bad\": \"\0\"}".into(),
        2 => "{\"amount\": 4, \"escaped\": \"\\u0000\"}".into(),
        3 => "[1, 2]".into(),
        4 => "7".into(),
        5 => String::new(),
        _ => {
            let mut object = Map::new();
            if rng.gen_bool(0.7) {
                let amount = match rng.gen_range(0..6) {
                    0 => json!("12"),
                    1 => json!(null),
                    2 => json!(rng.gen_range(0..4) as f64 + 0.5),
                    _ => json!(rng.gen_range(-5..20)),
                };
                object.insert("amount".into(), amount);
            }
            if rng.gen_bool(0.7) {
                let kind = match rng.gen_range(0..5) {
                    0 => json!(true),
                    1 => json!(rng.gen_range(0..3)),
                    2 => json!({"n": rng.gen_range(0..2)}),
                    _ => json!(["red", "green", "blue", "a/b"].choose(rng).unwrap()),
                };
                object.insert("kind".into(), kind);
            }
            if rng.gen_bool(0.3) {
                object.insert("a/b".into(), json!({"~c": rng.gen_range(0..3)}));
            }
            Value::Object(object).to_string()
        }
    }
}

fn random_query(rng: &mut StdRng) -> Query {
    if rng.gen_bool(0.15) {
        return Query::all();
    }
    let items = (0..rng.gen_range(1..=2))
        .map(|_| random_item(rng, TAGS, TYPES, 1))
        .collect();
    Query { items }
}

/// The JSON object `data` holds, as PostgreSQL's `jsonb` can hold it: none
/// for anything else (not JSON, not an object, a NUL character anywhere).
fn object_of(data: &str) -> Option<Value> {
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(has_nul),
            Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    if data.contains('\0') {
        return None;
    }
    let value: Value = serde_json::from_str(data).ok()?;
    (value.is_object() && !has_nul(&value)).then_some(value)
}

fn at<'a>(
    event: &SequencedEvent,
    pointer: &str,
    cache: &'a mut Option<Value>,
) -> Option<&'a Value> {
    *cache = object_of(&event.data);
    cache.as_ref()?.pointer(pointer)
}

/// The reference: a projector's state over the whole log.
fn model(log: &[SequencedEvent], projector: &Value) -> Value {
    let query: Query = serde_json::from_value(projector["query"].clone()).unwrap();
    let matching: Vec<&SequencedEvent> = log
        .iter()
        .filter(|e| query.matches(&e.event_type, &e.tags))
        .collect();
    let path = projector["path"].as_str().unwrap_or("");
    let mut cache = None;
    match projector["reduce"].as_str().unwrap() {
        "exists" => json!(!matching.is_empty()),
        "count" => json!(matching.len()),
        "last" => matching
            .last()
            .map_or(Value::Null, |e| serde_json::to_value(e).unwrap()),
        "sum" => {
            let total: f64 = matching
                .iter()
                .filter_map(|e| at(e, path, &mut cache).and_then(Value::as_f64))
                .sum();
            json!(total)
        }
        "latest" => matching
            .iter()
            .rev()
            .find_map(|e| at(e, path, &mut cache).cloned())
            .unwrap_or(Value::Null),
        "distinct" => {
            let limit = projector["limit"].as_u64().unwrap_or(100) as usize;
            let mut values: Vec<Value> = Vec::new();
            for e in &matching {
                if let Some(v) = at(e, path, &mut cache) {
                    if !values.contains(v) {
                        values.push(v.clone());
                    }
                }
            }
            let truncated = values.len() > limit;
            values.truncate(limit);
            json!({"values": values, "truncated": truncated})
        }
        "status" => {
            let map = projector["map"].as_object().unwrap();
            matching
                .iter()
                .rev()
                .find_map(|e| map.get(&e.event_type).cloned())
                .unwrap_or(Value::Null)
        }
        other => panic!("no reference for {other}"),
    }
}

/// Numbers compare as numbers (the database sums exactly, in decimal).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

async fn project(app: &TestApp, projectors: &Value) -> (u16, Value) {
    let response = app
        .http
        .post(format!("{}/project", app.address))
        .json(&json!({ "projectors": projectors }))
        .send()
        .await
        .expect("project request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn random_projector(rng: &mut StdRng, id: usize) -> Value {
    let query = serde_json::to_value(random_query(rng)).unwrap();
    let path = ["/amount", "/kind", "/kind/n", "/a~1b/~0c"]
        .choose(rng)
        .unwrap();
    let mut projector = match rng.gen_range(0..7) {
        0 => json!({"reduce": "exists"}),
        1 => json!({"reduce": "count"}),
        2 => json!({"reduce": "last"}),
        3 => json!({"reduce": "sum", "path": "/amount"}),
        4 => json!({"reduce": "latest", "path": path}),
        5 => json!({"reduce": "distinct", "path": path, "limit": rng.gen_range(1..5)}),
        _ => json!({"reduce": "status", "map": {"A": "open", "B": {"closed": true}}}),
    };
    projector["id"] = json!(format!("p{id}"));
    projector["query"] = query;
    projector
}

#[actix_rt::test]
async fn every_reducer_answers_what_the_reference_answers_on_random_data() {
    let mut rng = StdRng::seed_from_u64(0x0057_a7e5);
    let app = spawn_app().await;
    let mut checked = 0;
    for round in 0..12 {
        for _ in 0..rng.gen_range(1..=8) {
            let events: Vec<Value> = (0..rng.gen_range(1..=3))
                .map(|_| {
                    let tags: Vec<&str> = (0..rng.gen_range(0..=3))
                        .map(|_| *TAGS.choose(&mut rng).unwrap())
                        .collect();
                    event(
                        TYPES.choose(&mut rng).unwrap(),
                        &tags,
                        &random_data(&mut rng),
                    )
                })
                .collect();
            assert!(app.append(json!({ "events": events })).await.appended());
        }
        let log = app.read_all().await;
        let head = log.last().map_or(0, |e| e.position);
        let projectors: Vec<Value> = (0..rng.gen_range(1..=8))
            .map(|i| random_projector(&mut rng, i))
            .collect();
        let (status, answer) = project(&app, &json!(projectors)).await;
        assert_eq!(status, 200, "round {round}: {answer}");
        assert_eq!(answer["position"], json!(head), "round {round}");
        assert_eq!(answer["condition"]["after"], json!(head));
        for projector in &projectors {
            let id = projector["id"].as_str().unwrap();
            let expected = model(&log, projector);
            let got = &answer["states"][id];
            assert!(
                same(got, &expected),
                "round {round}, {projector}: got {got}, expected {expected}"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} states checked");
}

#[actix_rt::test]
async fn the_answer_carries_the_head_and_the_union_condition() {
    let app = spawn_app().await;
    let (status, answer) = project(
        &app,
        &json!([{"id": "n", "query": {"items": [{"tags": ["a"]}]}, "reduce": "count"}]),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"states": {"n": 0}, "position": 0,
               "condition": {"failIfEventsMatch": {"items": [{"tags": ["a"]}]}, "after": 0}})
    );
    for tag in ["a", "b", "a"] {
        app.append_event(event("E", &[tag], "{}")).await;
    }
    let (_, answer) = project(
        &app,
        &json!([
            {"id": "a", "query": {"items": [{"tags": ["a"]}]}, "reduce": "count"},
            {"id": "b", "query": {"items": [{"types": ["E"], "tags": ["b"]}]}, "reduce": "exists"},
            {"id": "c", "query": {"items": [{"tags": ["c"]}]}, "reduce": "last"}
        ]),
    )
    .await;
    assert_eq!(answer["states"], json!({"a": 2, "b": true, "c": null}));
    assert_eq!(answer["position"], json!(3));
    assert_eq!(
        answer["condition"],
        json!({"failIfEventsMatch": {"items": [{"tags": ["a"]}, {"types": ["E"], "tags": ["b"]}, {"tags": ["c"]}]},
               "after": 3})
    );
    // A decision taken on the answer, appended with its condition, holds
    // until a matching event is appended.
    let decide = json!({"events": [event("E", &["a"], "{}")], "condition": answer["condition"]});
    assert!(app.append(decide.clone()).await.appended());
    assert!(app.append(decide).await.rejected());
}

#[actix_rt::test]
async fn bad_projectors_are_refused_with_the_json_path_of_the_fault() {
    let app = spawn_app().await;
    let q = json!({"items": [{"tags": ["a"]}]});
    let cases = [
        (
            json!([{"id": "x", "query": q, "reduce": "median"}]),
            "body.projectors[0].reduce: unknown variant \"median\"",
        ),
        (
            json!([{"id": "x", "query": q, "reduce": "sum"}]),
            "projectors[0].path: required by the \"sum\" reducer",
        ),
        (
            json!([{"id": "x", "query": q, "reduce": "sum", "path": "amount"}]),
            "projectors[0].path: a JSON pointer",
        ),
        (
            json!([{"id": "x", "query": q, "reduce": "latest", "path": "/a~2"}]),
            "projectors[0].path: \"~\" must be followed",
        ),
        (
            json!([{"id": "x", "query": q, "reduce": "count", "limit": 3}]),
            "projectors[0].limit: only for the \"distinct\" reducer",
        ),
        (
            json!([{"id": "x", "query": q, "reduce": "distinct", "path": "/a", "limit": 0}]),
            "projectors[0].limit: between 1 and 1000",
        ),
        (
            json!([{"id": "x", "query": q, "reduce": "status"}]),
            "projectors[0].map: required by the \"status\" reducer",
        ),
        (
            json!([{"query": q, "reduce": "count"}]),
            "projectors[0].id: required",
        ),
        (
            json!([{"id": "x", "query": q, "reduce": "count"}, {"id": "x", "query": q, "reduce": "exists"}]),
            "projectors[1].id: \"x\" is the id of an earlier projector",
        ),
        (
            json!([{"id": "x", "query": {"items": [{}]}, "reduce": "count"}]),
            "projectors[0].query.items[0]: a query item needs",
        ),
        (
            json!([{"id": "x", "query": q, "reduce": "count", "extra": 1}]),
            "body.projectors[0]: unknown field \"extra\"",
        ),
        (json!([]), "projectors: at least one projector"),
    ];
    for (projectors, message) in cases {
        let (status, answer) = project(&app, &projectors).await;
        assert_eq!(status, 400, "{projectors}: {answer}");
        let got = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            got.starts_with(message),
            "{projectors}: {got:?}, expected {message:?}"
        );
    }
    let many: Vec<Value> = (0..33)
        .map(|i| json!({"id": format!("p{i}"), "query": q, "reduce": "count"}))
        .collect();
    let (status, answer) = project(&app, &json!(many)).await;
    assert_eq!(status, 400);
    assert_eq!(
        answer["error"]["message"],
        "projectors: at most 32 projectors"
    );
}

#[actix_rt::test]
async fn states_and_head_come_from_one_snapshot_while_writers_append() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let app = spawn_app().await;
    let stop = Arc::new(AtomicBool::new(false));
    // Every event carries tag "a", one per append: in any snapshot the count
    // of "a" events, the head and the last event's position are one number.
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (http, address, stop) = (app.http.clone(), app.address.clone(), stop.clone());
            actix_rt::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({"events": [event("E", &["a"], "{\"amount\": 1}")]});
                    crate::helpers::post_append(&http, &address, &body).await;
                }
            })
        })
        .collect();
    let projectors = json!([
        {"id": "count", "query": {"items": [{"tags": ["a"]}]}, "reduce": "count"},
        {"id": "sum", "query": {"items": [{"tags": ["a"]}]}, "reduce": "sum", "path": "/amount"},
        {"id": "last", "query": {"items": [{"tags": ["a"]}]}, "reduce": "last"}
    ]);
    let (mut checked, mut violations) = (0, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        let (status, answer) = project(&app, &projectors).await;
        assert_eq!(status, 200, "{answer}");
        let position = answer["position"].as_i64().unwrap();
        let states = &answer["states"];
        let last = states["last"]["position"].as_i64().unwrap_or(0);
        if states["count"] != json!(position)
            || states["sum"] != json!(position)
            || last != position
        {
            eprintln!("not one snapshot: {answer}");
            violations += 1;
        }
        checked += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    eprintln!("{checked} projections checked");
    assert!(checked > 10);
    assert_eq!(violations, 0);
}
