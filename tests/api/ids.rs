//! Event ids, metadata and recordedAt, and idempotent appends: a retried
//! append is answered with its original positions and written once.

use std::collections::HashMap;

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::helpers::{
    event, post_append, spawn_app, spawn_app_on, spawn_app_with, two_processes, unless_tagged,
    Answer,
};

/// An event with an id (and optionally metadata).
fn with_id(event_type: &str, tags: &[&str], data: &str, id: &str) -> Value {
    let mut e = event(event_type, tags, data);
    e["id"] = json!(id);
    e
}

fn is_duplicate(answer: &Answer) -> bool {
    answer.status == 200
        && answer.body["appendConditionFailed"] == json!(false)
        && answer.body["duplicate"] == json!(true)
}

/// `2026-11-29T01:02:03.456789Z`: RFC 3339, UTC, microseconds.
fn is_rfc3339_micros(text: &str) -> bool {
    // `0` stands for any digit; every other byte for itself.
    const SHAPE: &[u8] = b"0000-00-00T00:00:00.000000Z";
    text.len() == SHAPE.len()
        && text.bytes().zip(SHAPE).all(|(byte, &shape)| {
            if shape == b'0' {
                byte.is_ascii_digit()
            } else {
                byte == shape
            }
        })
}

#[actix_rt::test]
async fn ids_metadata_and_recorded_at_read_back_and_events_without_them_read_as_before() {
    let app = spawn_app().await;
    let metadata = "{\"trace\": \"ü\\u0000\"}\u{0}\u{1F980}\"'\\";
    let mut first = with_id(
        "Registered",
        &["user:1"],
        "{}",
        "5f0c2a4e-0000-4000-8000-000000000001",
    );
    first["metadata"] = json!(metadata);
    let answer = app
        .append(json!({"events": [first, event("Plain", &["user:1"], "x")]}))
        .await;
    assert!(answer.appended(), "{answer:?}");
    assert_eq!(
        answer.body.get("duplicate"),
        None,
        "no duplicate field on a first write"
    );

    for (status, text) in [
        app.raw(reqwest::Method::GET, "/read", None).await,
        app.raw(reqwest::Method::POST, "/read", Some("{}")).await,
    ] {
        assert_eq!(status, 200, "{text}");
        let events: Vec<Value> = serde_json::from_str(&text).expect("JSON array");
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0]["id"],
            json!("5f0c2a4e-0000-4000-8000-000000000001")
        );
        assert_eq!(
            events[0]["metadata"],
            json!(metadata),
            "byte for byte, NUL included"
        );
        assert_eq!(
            events[1]["id"],
            Value::Null,
            "an event without id reads id: null"
        );
        assert!(
            events[1].as_object().unwrap().contains_key("id"),
            "id is always present"
        );
        assert!(
            !events[1].as_object().unwrap().contains_key("metadata"),
            "no metadata field when none was written: {}",
            events[1]
        );
        let recorded: Vec<&str> = events
            .iter()
            .map(|e| e["recordedAt"].as_str().expect("recordedAt"))
            .collect();
        assert!(
            recorded.iter().all(|r| is_rfc3339_micros(r)),
            "{recorded:?}"
        );
        assert_eq!(recorded[0], recorded[1], "one append, one commit time");
    }

    let later = app
        .append(json!({"events": [event("Later", &[], "")]}))
        .await;
    assert!(later.appended());
    let all = app.read_all().await;
    assert!(
        all[1].recorded_at < all[2].recorded_at,
        "recordedAt follows commits: {} then {}",
        all[1].recorded_at,
        all[2].recorded_at
    );
    let year = &all[2].recorded_at[..4];
    assert!(
        year >= "2024",
        "recordedAt is the clock's: {}",
        all[2].recorded_at
    );
}

#[actix_rt::test]
async fn ids_are_validated_and_unique_within_an_append() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"events": [with_id("E", &[], "", "a"), event("E", &[], ""), with_id("E", &[], "", "")]}),
            "events[2].id: must not be empty",
        ),
        (
            json!({"events": [with_id("E", &[], "", &"x".repeat(65))]}),
            "events[0].id: longer than 64 bytes",
        ),
        (
            json!({"events": [with_id("E", &[], "", "a\u{0}")]}),
            "events[0].id: must not contain the NUL character",
        ),
        (
            json!({"events": [with_id("E", &[], "", "a"), with_id("E", &[], "", "a")]}),
            "events[1].id: \"a\" is also the id of events[0]",
        ),
    ];
    for (body, message) in cases {
        let answer = app.append(body).await;
        assert_eq!(answer.status, 400, "{answer:?}");
        let got = answer.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            got.starts_with(message),
            "{got:?} should start with {message:?}"
        );
    }
    let ok = app
        .append(json!({"events": [with_id("E", &[], "", &"x".repeat(64))]}))
        .await;
    assert!(ok.appended(), "{ok:?}");
    assert_eq!(app.read_all().await.len(), 1);
}

#[actix_rt::test]
async fn a_retry_is_answered_with_the_original_positions_even_if_its_condition_now_fails() {
    let app = spawn_app().await;
    app.append_event(event("Before", &[], "")).await;
    let body = json!({
        "events": [
            with_id("Registered", &["user:ada", "user:ada"], "{\"n\":1}", "id-1"),
            with_id("Welcomed", &["user:ada"], "{}", "id-2"),
        ],
        "condition": unless_tagged(&["user:ada"], None),
    });
    let original = app.append(body.clone()).await;
    assert!(original.appended(), "{original:?}");
    assert_eq!(original.body["lastPosition"], json!(3));

    // The condition would now fail (the original wrote user:ada): the id
    // check comes first, so the retry is a success, not a rejection.
    let retry = app.append(body.clone()).await;
    assert!(is_duplicate(&retry), "{retry:?}");
    assert_eq!(retry.body["lastPosition"], json!(3));
    // Without its condition, and with the tags as first normalized: the same append.
    let mut unconditional = body.clone();
    unconditional.as_object_mut().unwrap().remove("condition");
    unconditional["events"][0]["tags"] = json!(["user:ada"]);
    let retry = app.append(unconditional).await;
    assert!(is_duplicate(&retry), "{retry:?}");
    assert_eq!(retry.body["lastPosition"], json!(3));

    // An unconditional original, retried with a condition it would fail.
    let plain = json!({"events": [with_id("Noted", &["note:1"], "n", "id-3")]});
    let first = app.append(plain.clone()).await;
    assert!(
        first.appended() && first.body.get("duplicate").is_none(),
        "{first:?}"
    );
    let mut conditional = plain.clone();
    conditional["condition"] = unless_tagged(&["note:1"], None);
    let retry = app.append(conditional).await;
    assert!(is_duplicate(&retry), "{retry:?}");
    assert_eq!(retry.body["lastPosition"], first.body["lastPosition"]);

    assert_eq!(app.read_all().await.len(), 4, "retries wrote nothing");
}

#[actix_rt::test]
async fn reusing_stored_ids_with_other_content_or_in_part_is_a_conflict_naming_them() {
    let app = spawn_app().await;
    let original = json!({"events": [
        with_id("A", &["t"], "1", "id-a"),
        with_id("B", &["t"], "2", "id-b"),
    ]});
    assert!(app.append(original.clone()).await.appended());

    let mut other_data = original.clone();
    other_data["events"][1]["data"] = json!("changed");
    let mut other_metadata = original.clone();
    other_metadata["events"][0]["metadata"] = json!("m");
    let mut other_type = original.clone();
    other_type["events"][0]["type"] = json!("Z");
    let mut other_tags = original.clone();
    other_tags["events"][0]["tags"] = json!(["t", "u"]);
    let swapped = json!({"events": [original["events"][1], original["events"][0]]});
    let partial = json!({"events": [
        with_id("B", &["t"], "2", "id-b"),
        with_id("C", &["t"], "3", "id-new"),
    ]});
    let prefix = json!({"events": [original["events"][0], event("A", &["t"], "no id")]});
    let cases = [
        (other_data, "events[0].id \"id-a\", events[1].id \"id-b\""),
        (
            other_metadata,
            "events[0].id \"id-a\", events[1].id \"id-b\"",
        ),
        (other_type, "events[0].id \"id-a\", events[1].id \"id-b\""),
        (other_tags, "events[0].id \"id-a\", events[1].id \"id-b\""),
        (swapped, "events[0].id \"id-b\", events[1].id \"id-a\""),
        (partial, "events[0].id \"id-b\":"),
        (prefix, "events[0].id \"id-a\":"),
    ];
    let mut violations = 0;
    for (body, named) in cases {
        let answer = app.append(body.clone()).await;
        let message = answer.body["error"]["message"].as_str().unwrap_or_default();
        if answer.status != 409
            || answer.body["error"]["code"] != json!("id_conflict")
            || !message.starts_with(named)
        {
            eprintln!("expected a 409 naming {named}: {answer:?}");
            violations += 1;
        }
        // The same with a condition that holds: still a conflict.
        let mut conditional = body;
        conditional["condition"] = unless_tagged(&["nothing-has-this"], None);
        if app.append(conditional).await.status != 409 {
            violations += 1;
        }
    }
    eprintln!("id conflicts: {violations} answered otherwise");
    assert_eq!(violations, 0);
    assert_eq!(app.read_all().await.len(), 2, "conflicts wrote nothing");
}

#[actix_rt::test]
async fn identical_appends_sent_at_once_to_one_lane_are_written_once() {
    const APPENDS: usize = 20;
    const COPIES: usize = 12;
    let app = spawn_app_with(|s| s.writer.lanes = 1).await;
    // Every copy of every append is sent at once, copies next to each other
    // and between appends without ids that take the lane a while, so copies
    // queue together and batches hold many appends.
    let sends = (0..APPENDS).flat_map(|a| {
        let body = json!({"events": [
            with_id("Paid", &[&format!("order:{a}")], &a.to_string(), &format!("pay-{a}")),
            with_id("Shipped", &[&format!("order:{a}")], "", &format!("ship-{a}")),
        ]});
        let filler: Vec<Value> = (0..200)
            .map(|j| event("Noise", &[&format!("noise:{j}")], &format!("{a}/{j}")))
            .collect();
        std::iter::once((None, json!({ "events": filler })))
            .chain((0..COPIES).map(move |_| (Some(a), body.clone())))
    });
    let answers = join_all(sends.map(|(a, body)| {
        let app = &app;
        async move { (a, app.append(body).await) }
    }))
    .await;
    let mut by_append: HashMap<usize, Vec<Answer>> = HashMap::new();
    for (a, answer) in answers {
        match a {
            Some(a) => by_append.entry(a).or_default().push(answer),
            None => assert!(answer.appended(), "{answer:?}"),
        }
    }
    let mut violations = 0;
    for (a, answers) in &by_append {
        let written = answers
            .iter()
            .filter(|x| x.appended() && !is_duplicate(x))
            .count();
        let duplicates = answers.iter().filter(|x| is_duplicate(x)).count();
        let positions: std::collections::BTreeSet<String> = answers
            .iter()
            .map(|x| x.body["lastPosition"].to_string())
            .collect();
        if written != 1 || duplicates != COPIES - 1 || positions.len() != 1 {
            eprintln!(
                "append {a}: {written} written, {duplicates} duplicates, positions {positions:?}"
            );
            violations += 1;
        }
    }
    let stored = app.read_all().await;
    let with_ids = stored.iter().filter(|e| e.id.is_some()).count();
    // A batch the database refuses (say on the unique index of ids) has
    // drawn positions it never commits: a gap shows that a copy was caught
    // by an error rather than answered as a duplicate.
    let gaps = stored.last().map_or(0, |e| e.position as usize) - stored.len();
    eprintln!(
        "{APPENDS} appends sent {COPIES} times each: {with_ids} events with ids stored (want {}), {violations} appends answered wrongly, {gaps} positions lost to refused batches",
        APPENDS * 2
    );
    assert_eq!(with_ids, APPENDS * 2);
    assert_eq!(violations, 0);
    assert_eq!(gaps, 0);
}

/// R3: clients that retry every append (plain and conditional), some
/// retries racing their original, through three servers on one database
/// (two `crablet serve` processes and one in-process server with four
/// lanes), end with exactly one copy of each append in the store, and every
/// answer carries the original positions.
#[actix_rt::test]
async fn retrying_clients_across_two_processes_write_each_append_exactly_once() {
    const CLIENTS: usize = 12;
    const APPENDS: usize = 25;
    let (database, first, second) = two_processes().await;
    let third = spawn_app_on(&database, |s| s.writer.lanes = 4).await;
    let servers = [
        first.address.clone(),
        second.address.clone(),
        third.address.clone(),
    ];
    let http = crate::helpers::client();
    let clients = (0..CLIENTS).map(|c| {
        let (servers, http) = (&servers, &http);
        async move {
            let mut violations = 0;
            let mut events = 0;
            for i in 0..APPENDS {
                let tag = format!("order:{c}:{i}");
                let n = 1 + (c + i) % 3;
                let mut body = json!({"events": (0..n)
                    .map(|j| with_id("Placed", &[&tag, "shop"], &format!("{c}/{i}/{j}"), &format!("{c}-{i}-{j}")))
                    .collect::<Vec<_>>()});
                if i % 2 == 0 {
                    // Fails on any retry that is decided by its condition.
                    body["condition"] = unless_tagged(&[&tag], None);
                }
                events += n;
                let (a, b) = (&servers[(c + i) % 3], &servers[(c + i + 1) % 3]);
                // The original and a retry race; then a late retry.
                let (original, racing) = futures_util::join!(
                    post_append(http, a, &body),
                    post_append(http, b, &body)
                );
                let late = post_append(http, &servers[(c + 2 * i) % 3], &body).await;
                let answers = [original, racing, late];
                let written = answers.iter().filter(|x| x.appended() && !is_duplicate(x)).count();
                let duplicates = answers.iter().filter(|x| is_duplicate(x)).count();
                let positions: std::collections::BTreeSet<String> =
                    answers.iter().map(|x| x.body["lastPosition"].to_string()).collect();
                if written != 1 || duplicates != 2 || positions.len() != 1 {
                    eprintln!("client {c} append {i}: {answers:?}");
                    violations += 1;
                }
            }
            (violations, events)
        }
    });
    let results = join_all(clients).await;
    let violations: usize = results.iter().map(|r| r.0).sum();
    let events: usize = results.iter().map(|r| r.1).sum();
    let stored =
        crate::helpers::get_read(&http, &servers[0], &json!({"items": []}), &json!({})).await;
    let mut copies: HashMap<String, usize> = HashMap::new();
    for e in &stored {
        *copies.entry(e.id.clone().unwrap_or_default()).or_default() += 1;
    }
    let extra = copies.values().filter(|&&n| n > 1).count();
    let gaps = stored.last().map_or(0, |e| e.position as usize) - stored.len();
    eprintln!(
        "R3: {} appends, each sent 3 times: {violations} answered wrongly; {} events stored for {events} written, {extra} ids stored more than once, {gaps} positions lost to refused batches",
        CLIENTS * APPENDS,
        stored.len()
    );
    assert_eq!(violations, 0);
    assert_eq!(extra, 0);
    assert_eq!(gaps, 0);
    assert_eq!(stored.len(), events);
    drop((first, second));
}
