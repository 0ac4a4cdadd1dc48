//! The DCB semantics of appends and reads, one behaviour per test: an event
//! reads back byte for byte, tags that need quoting survive, the events of
//! one append get consecutive positions, query items are ORed (types any of,
//! tags all of), read options (`from`, `limit`, `backwards`, `after`), an
//! append condition fails only on a matching event after its position, a
//! POST read answers like a GET read, a read longer than a page streams every
//! event once, and health and metrics answer.

use serde_json::json;

use crate::helpers::subscription::positions;
use crate::helpers::{event, spawn_app, spawn_app_with, unless_tagged};

#[actix_rt::test]
async fn an_appended_event_reads_back_byte_for_byte() {
    let app = spawn_app().await;
    let data = "{\"a\": [1, 2.50, \"ü\\u0000\"], \"b\": null}\u{0}\u{1F980}\n\"'\\";
    let tags = [
        "user:1",
        "q\"uote",
        "c,omma",
        "{brace}",
        "back\\slash",
        "ünï:cødé",
        "user:1",
    ];
    let answer = app
        .append(json!({"events": [event("Registered", &tags, data)]}))
        .await;
    assert!(answer.appended(), "{answer:?}");
    assert_eq!(answer.body["lastPosition"], json!(1));
    assert!(answer.body["durationInMicroseconds"].is_u64());

    let events = app.read_all().await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.position, 1);
    assert_eq!(e.event_type, "Registered");
    assert_eq!(e.data, data);
    assert_eq!(
        e.tags,
        vec![
            "user:1",
            "q\"uote",
            "c,omma",
            "{brace}",
            "back\\slash",
            "ünï:cødé"
        ],
        "duplicate tags collapse, order kept"
    );
    for tag in &tags {
        let found = app
            .read(json!({"items": [{"tags": [tag]}]}), json!({}))
            .await;
        assert_eq!(found.len(), 1, "tag {tag:?} is matched exactly");
    }
    let none = app
        .read(json!({"items": [{"tags": ["user:"]}]}), json!({}))
        .await;
    assert!(none.is_empty(), "no prefix matching");
}

#[actix_rt::test]
async fn tags_that_need_quoting_survive_several_events_and_conditions() {
    // Lists inside lists travel to PostgreSQL as array literals: every path
    // (one event or several, one probe or several) must quote them right.
    let app = spawn_app().await;
    let odd = [
        "q\"uote",
        "c,omma",
        "{brace}",
        "back\\slash",
        "NULL",
        " sp ",
    ];
    let events: Vec<_> = odd
        .iter()
        .map(|t| event("Odd", &[t, "all"], "{}"))
        .collect();
    let answer = app.append(json!({ "events": events })).await;
    assert_eq!(answer.body["lastPosition"], json!(odd.len()), "{answer:?}");
    let stored = app.read_all().await;
    for (e, tag) in stored.iter().zip(odd) {
        assert_eq!(e.tags, vec![tag, "all"]);
    }
    for tag in odd {
        let one_probe = app
            .append(json!({"events": [event("Odd", &["other"], "{}")],
                           "condition": unless_tagged(&[tag], None)}))
            .await;
        assert!(one_probe.rejected(), "tag {tag:?}: {one_probe:?}");
        let condition = json!({"failIfEventsMatch": {"items": [
            {"tags": ["absent"]}, {"types": ["Odd"], "tags": [tag, "all"]}]}});
        let two_probes = app
            .append(json!({"events": [event("Odd", &["other"], "{}")], "condition": condition}))
            .await;
        assert!(two_probes.rejected(), "tag {tag:?}: {two_probes:?}");
    }
    let after_all = app
        .append(
            json!({"events": [event("Odd", &["x"], "{}"), event("Odd", &["y"], "{}")],
                       "condition": unless_tagged(&["back\\slash"], Some(odd.len() as i64))}),
        )
        .await;
    assert!(after_all.appended(), "{after_all:?}");
}

#[actix_rt::test]
async fn the_events_of_one_append_get_consecutive_increasing_positions() {
    let app = spawn_app().await;
    let first = app
        .append(json!({"events": [event("A", &["x"], "1"), event("B", &[], "2"), event("C", &["x"], "3")]}))
        .await;
    assert_eq!(first.body["lastPosition"], json!(3));
    let second = app.append(json!({"events": [event("D", &[], "4")]})).await;
    assert_eq!(second.body["lastPosition"], json!(4));
    let events = app.read_all().await;
    assert_eq!(positions(&events), vec![1, 2, 3, 4]);
    assert_eq!(
        events.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        vec!["1", "2", "3", "4"]
    );
}

#[actix_rt::test]
async fn query_items_are_ored_types_are_any_of_and_tags_are_all_of() {
    let app = spawn_app().await;
    app.append(json!({"events": [
        event("A", &["t1", "t2"], "1"),
        event("B", &["t1"], "2"),
        event("C", &["t2"], "3"),
        event("A", &[], "4"),
        event("D", &["t3"], "5"),
    ]}))
    .await;
    let cases = [
        (json!({"items": [{"tags": ["t1"]}]}), vec![1, 2]),
        (json!({"items": [{"tags": ["t1", "t2"]}]}), vec![1]),
        (json!({"items": [{"types": ["A"]}]}), vec![1, 4]),
        (json!({"items": [{"types": ["A", "C"]}]}), vec![1, 3, 4]),
        (
            json!({"items": [{"types": ["B", "C"], "tags": ["t2"]}]}),
            vec![3],
        ),
        (
            json!({"items": [{"types": ["A"], "tags": ["t1"]}, {"tags": ["t3"]}]}),
            vec![1, 5],
        ),
        (
            json!({"items": [{"tags": ["t1"]}, {"tags": ["t2"]}]}),
            vec![1, 2, 3],
        ),
        (json!({"items": []}), vec![1, 2, 3, 4, 5]),
        (json!({"items": [{"tags": ["nope"]}]}), vec![]),
    ];
    for (query, expected) in cases {
        let got = app.read(query.clone(), json!({})).await;
        assert_eq!(positions(&got), expected, "query {query}");
        let got = app.read(query.clone(), json!({"backwards": true})).await;
        let mut reversed = expected.clone();
        reversed.reverse();
        assert_eq!(positions(&got), reversed, "backwards query {query}");
    }
}

#[actix_rt::test]
async fn read_options_from_limit_backwards_and_after() {
    let app = spawn_app().await;
    let events: Vec<_> = (1..=10)
        .map(|i| event("E", &["t"], &i.to_string()))
        .collect();
    app.append(json!({ "events": events })).await;
    let q = json!({"items": [{"tags": ["t"]}]});
    let cases = [
        (json!({"from": 4}), (4..=10).collect::<Vec<i64>>()),
        (json!({"from": 4, "limit": 3}), vec![4, 5, 6]),
        (json!({"after": 4, "limit": 2}), vec![5, 6]),
        (json!({"from": 0}), (1..=10).collect()),
        (json!({"from": 11}), vec![]),
        (json!({"limit": 0}), vec![]),
        (json!({"backwards": true, "limit": 3}), vec![10, 9, 8]),
        (json!({"backwards": true, "from": 4}), vec![4, 3, 2, 1]),
        (
            json!({"backwards": true, "from": 4, "limit": 2}),
            vec![4, 3],
        ),
        (json!({"backwards": true, "after": 7}), vec![10, 9, 8]),
        (json!({"from": 1000000}), vec![]),
    ];
    for (options, expected) in cases {
        assert_eq!(
            positions(&app.read(q.clone(), options.clone()).await),
            expected,
            "{options}"
        );
        assert_eq!(
            positions(&app.read(json!({"items": []}), options.clone()).await),
            expected,
            "all-query {options}"
        );
    }
}

#[actix_rt::test]
async fn a_condition_fails_only_on_a_matching_event_after_its_position() {
    let app = spawn_app().await;
    // Each case gets its own tags and types, so cases cannot affect each
    // other: `p` is the position of the case's `Registered` event and `p + 1`
    // that of its `Other` event.
    type Case = (&'static str, fn(&str, i64) -> serde_json::Value, bool);
    let cases: Vec<Case> = vec![
        (
            "no after",
            |c, _| unless_tagged(&[&format!("user:{c}")], None),
            true,
        ),
        (
            "after 0",
            |c, _| unless_tagged(&[&format!("user:{c}")], Some(0)),
            true,
        ),
        (
            "after the match",
            |c, p| unless_tagged(&[&format!("user:{c}")], Some(p)),
            false,
        ),
        (
            "after beyond the head",
            |c, _| unless_tagged(&[&format!("user:{c}")], Some(1_000_000)),
            false,
        ),
        (
            "another tag",
            |c, _| unless_tagged(&[&format!("other:{c}")], None),
            false,
        ),
        (
            "all tags needed",
            |c, _| unless_tagged(&[&format!("user:{c}"), &format!("x:{c}")], None),
            false,
        ),
        (
            "type only, before",
            |c, p| json!({"failIfEventsMatch": {"items": [{"types": [format!("Other{c}")]}]}, "after": p}),
            true,
        ),
        (
            "type only, after",
            |c, p| json!({"failIfEventsMatch": {"items": [{"types": [format!("Other{c}")]}]}, "after": p + 1}),
            false,
        ),
        (
            "type and tag",
            |c, _| json!({"failIfEventsMatch": {"items": [{"types": ["Nope"], "tags": [format!("user:{c}")]}]}}),
            false,
        ),
        (
            "items are ored",
            |c, _| json!({"failIfEventsMatch": {"items": [{"tags": ["absent"]}, {"tags": [format!("x:{c}")]}]}}),
            true,
        ),
    ];
    for (i, (name, condition, fails)) in cases.into_iter().enumerate() {
        let c = i.to_string();
        let setup = app
            .append(json!({"events": [
                event(&format!("Registered{c}"), &[&format!("user:{c}")], "1"),
                event(&format!("Other{c}"), &[&format!("x:{c}")], "2"),
            ]}))
            .await;
        let p = setup.body["lastPosition"].as_i64().unwrap() - 1;
        let before = app.read_all().await.len();
        let condition = condition(&c, p);
        let answer = app
            .append(json!({"events": [event("New", &[&format!("user:{c}")], "new")], "condition": condition}))
            .await;
        assert_eq!(answer.status, 200, "{name}: {answer:?}");
        assert_eq!(answer.rejected(), fails, "{name}: {answer:?}");
        let written = app.read_all().await.len() - before;
        assert_eq!(
            written,
            if fails { 0 } else { 1 },
            "{name}: a failed append writes nothing"
        );
    }
    // The all-query: any event after `after`.
    let head = app.read_all().await.last().unwrap().position;
    let all = |after: i64| json!({"events": [event("New", &[], "x")], "condition": {"failIfEventsMatch": {"items": []}, "after": after}});
    assert!(app.append(all(head - 1)).await.rejected());
    assert!(app.append(all(head)).await.appended());
}

#[actix_rt::test]
async fn post_read_answers_like_get_read() {
    let app = spawn_app().await;
    app.append(
        json!({"events": [event("A", &["t"], "1"), event("B", &["t"], "2"), event("A", &[], "3")]}),
    )
    .await;
    let (status, body) = app
        .raw(
            reqwest::Method::POST,
            "/read",
            Some(r#"{"query": {"items": [{"types": ["A"]}]}, "options": {"backwards": true}}"#),
        )
        .await;
    assert_eq!(status, 200);
    let events: Vec<crablet::dcb::SequencedEvent> = serde_json::from_str(&body).unwrap();
    assert_eq!(positions(&events), vec![3, 1]);
}

#[actix_rt::test]
async fn a_read_longer_than_a_page_streams_every_event_once() {
    let app = spawn_app_with(|s| s.reader.page_size = 7).await;
    for chunk in 0..5 {
        let events: Vec<_> = (0..10)
            .map(|i| {
                event(
                    "E",
                    &[if i % 2 == 0 { "even" } else { "odd" }],
                    &format!("{chunk}-{i}"),
                )
            })
            .collect();
        app.append(json!({ "events": events })).await;
    }
    assert_eq!(
        positions(&app.read_all().await),
        (1..=50).collect::<Vec<_>>()
    );
    let even = app
        .read(json!({"items": [{"tags": ["even"]}]}), json!({}))
        .await;
    assert_eq!(positions(&even), (1..=50).step_by(2).collect::<Vec<_>>());
    let limited = app
        .read(json!({"items": []}), json!({"from": 3, "limit": 20}))
        .await;
    assert_eq!(positions(&limited), (3..23).collect::<Vec<_>>());
    let back = app
        .read(
            json!({"items": [{"tags": ["odd"]}]}),
            json!({"backwards": true, "limit": 9}),
        )
        .await;
    assert_eq!(
        positions(&back),
        (34..=50).rev().step_by(2).collect::<Vec<_>>()
    );
}

#[actix_rt::test]
async fn health_and_metrics_answer() {
    let app = spawn_app().await;
    app.append(json!({"events": [event("A", &[], "1")]})).await;
    let (status, body) = app.raw(reqwest::Method::GET, "/health", None).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = app.raw(reqwest::Method::GET, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("crablet_appends_total{outcome=\"appended\"} 1"),
        "{body}"
    );
    assert!(
        body.contains(
            "crablet_http_requests_total{method=\"POST\",route=\"/append\",status=\"200\"} 1"
        ),
        "{body}"
    );
    assert!(body.contains("crablet_writer_lanes 2"), "{body}");
}
