//! `POST /admin/import`: an exported log written at its own positions. A log
//! exported with `/read` and imported into an empty store reads back byte for
//! byte; an import is all or nothing (positions already used, ids already
//! stored, invalid events: nothing written); it never interleaves wrongly
//! with concurrent appends and their conditions; subscribers see it; it
//! needs the `admin` scope. Tests count violations and assert zero.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crablet::auth::{digest_hex, Scope, TokenSettings};
use crablet::dcb::SequencedEvent;
use futures_util::future::join_all;
use rand::Rng;
use serde_json::{json, Value};

use crate::helpers::pgbouncer::PgBouncer;
use crate::helpers::subscription::{counted_violations, positions, Subscription};
use crate::helpers::{
    client, event, fresh_database, get_read, post_append, spawn_app, spawn_app_with,
    spawn_process_with_env, unless_tagged, TestApp,
};
use crate::helpers::{head_of, read_raw};

/// An event of an import body. `id` is written as `null` when there is none
/// and `metadata` left out, as `/read` prints them.
fn imported(
    position: i64,
    event_type: &str,
    tags: &[&str],
    data: &str,
    id: Option<&str>,
    metadata: Option<&str>,
    recorded_at: &str,
) -> Value {
    let mut event = json!({
        "type": event_type, "tags": tags, "data": data, "position": position,
        "id": id, "recordedAt": recorded_at,
    });
    if let Some(metadata) = metadata {
        event["metadata"] = json!(metadata);
    }
    event
}

/// A plain imported event at `position`, tagged `tags`.
fn plain(position: i64, tags: &[&str]) -> Value {
    imported(
        position,
        "Imported",
        tags,
        &format!("{{\"at\":{position}}}"),
        None,
        None,
        "2025-06-07T08:09:10.111213Z",
    )
}

/// `POST /admin/import` of `events` (with `bearer`, if any): status and body.
async fn post_import_as(
    http: &reqwest::Client,
    address: &str,
    events: &[Value],
    bearer: Option<&str>,
) -> (u16, Value) {
    let mut request = http
        .post(format!("{address}/admin/import"))
        .json(&json!({ "events": events }));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("import request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post_import(app: &TestApp, events: &[Value]) -> (u16, Value) {
    post_import_as(&app.http, &app.address, events, None).await
}

/// Whether an answer is the error `code` with `status`.
fn is_error(answer: &(u16, Value), status: u16, code: &str) -> bool {
    answer.0 == status && answer.1["error"]["code"] == code
}

/// Tags and data no store should mangle: quotes, backslashes, commas and
/// braces (array literal syntax), unicode, a NUL in data.
const ODD_TAGS: &[&str] = &[
    "quote:\"q\"",
    "comma:a,b",
    "brace:{x}",
    "back\\slash",
    "unicode:ü漢😀",
    "space: x ",
];
const ODD_DATA: &str = "{\"s\":\"nul \\u0000, quote \\\", tab \\t\"} raw \u{0} \u{2028} 漢";

#[actix_rt::test]
async fn an_exported_log_imported_into_an_empty_store_reads_back_byte_for_byte() {
    let source = spawn_app().await;
    let target = spawn_app().await;
    let mut violations = 0;

    // The source: imported events with gaps in their positions, odd tags and
    // data, ids and metadata on some, recordedAt in every form; appends
    // between them.
    let first = [
        imported(
            3,
            "Odd \"type\" é",
            ODD_TAGS,
            ODD_DATA,
            Some("id-3"),
            Some("{\"m\":\"\\u0000\"}"),
            "2019-03-04T05:06:07.000001Z",
        ),
        imported(
            4,
            "Plain",
            &[],
            "",
            None,
            Some(""),
            "1999-12-31T23:59:59.999999Z",
        ),
        imported(
            10,
            "Plain",
            &["comma:a,b"],
            "not JSON at all",
            Some("id-10"),
            None,
            "2024-02-29T12:00:00+05:30",
        ),
        imported(11, "Late", &["t"], "{}", None, None, "0001-01-01T00:00:00Z"),
    ];
    let answer = post_import(&source, &first).await;
    if answer != (200, json!({"imported": 4, "head": 11})) {
        violations += 1;
        eprintln!("first import into the source: {answer:?}");
    }
    let appended = source
        .append(json!({"events": [
            {"type": "Appended", "tags": ODD_TAGS, "data": ODD_DATA, "id": "app-1", "metadata": "m"},
            {"type": "Appended", "tags": ["t"], "data": "{}"},
        ]}))
        .await;
    if appended.body["lastPosition"] != json!(13) {
        violations += 1;
        eprintln!("the source's append after the import: {appended:?}");
    }
    let second = [
        plain(40, &["t", "u"]),
        plain(41, &[]),
        imported(
            57,
            "Far",
            &["t"],
            ODD_DATA,
            Some("id-57"),
            Some("meta"),
            "9999-12-31T23:59:59.999999Z",
        ),
    ];
    let answer = post_import(&source, &second).await;
    if answer != (200, json!({"imported": 3, "head": 57})) {
        violations += 1;
        eprintln!("second import into the source: {answer:?}");
    }
    source.append_event(event("Appended", &["t"], "last")).await;

    // Export, then import into the target in batches of 3.
    let (source_head, exported) = read_raw(&source.http, &source.address).await;
    let events: Vec<Value> = serde_json::from_str(&exported).expect("exported events");
    let expected_positions = [3, 4, 10, 11, 12, 13, 40, 41, 57, 58];
    let exported_positions: Vec<i64> = events
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    if exported_positions != expected_positions {
        violations += 1;
        eprintln!("the source holds {exported_positions:?}");
    }
    for batch in events.chunks(3) {
        let answer = post_import(&target, batch).await;
        let last = batch.last().unwrap()["position"].clone();
        if answer != (200, json!({"imported": batch.len(), "head": last})) {
            violations += 1;
            eprintln!("importing {batch:?}: {answer:?}");
        }
    }

    // Both stores read the same, byte for byte, head included.
    let (target_head, imported_log) = read_raw(&target.http, &target.address).await;
    if (&target_head, &imported_log) != (&source_head, &exported) {
        violations += 1;
        eprintln!("source (head {source_head}):\n{exported}\ntarget (head {target_head}):\n{imported_log}");
    }
    let heads = (
        head_of(&source.http, &source.address).await,
        head_of(&target.http, &target.address).await,
    );
    if heads != (58, 58) {
        violations += 1;
        eprintln!("heads {heads:?}");
    }
    // The recorded times were read back as /read prints them, in UTC.
    let times: Vec<&str> = events
        .iter()
        .map(|e| e["recordedAt"].as_str().unwrap())
        .collect();
    for (at, expected) in [
        (0, "2019-03-04T05:06:07.000001Z"),
        (2, "2024-02-29T06:30:00.000000Z"),
        (3, "0001-01-01T00:00:00.000000Z"),
        (8, "9999-12-31T23:59:59.999999Z"),
    ] {
        if times[at] != expected {
            violations += 1;
            eprintln!(
                "recordedAt of event {at}: {} instead of {expected}",
                times[at]
            );
        }
    }

    // The next append on the target comes after the import.
    let next = target.append_event(event("After", &["t"], "{}")).await;
    if next.body["lastPosition"] != json!(59) {
        violations += 1;
        eprintln!("the target's first append: {next:?}");
    }
    // Ids imported are ids stored: an append reusing one is a conflict.
    let reuse = target
        .append(json!({"events": [{"type": "X", "data": "other", "id": "id-57"}]}))
        .await;
    if reuse.status != 409 {
        violations += 1;
        eprintln!("an append reusing an imported id: {reuse:?}");
    }
    assert_eq!(violations, 0, "the imported log differs from its source");
}

#[actix_rt::test]
async fn the_same_batch_imported_twice_is_refused_as_position_taken_and_written_once() {
    let app = spawn_app().await;
    let mut violations = 0;
    let batch = [plain(5, &["a"]), plain(6, &["a"])];
    let first = post_import(&app, &batch).await;
    if first != (200, json!({"imported": 2, "head": 6})) {
        violations += 1;
        eprintln!("first import: {first:?}");
    }
    for (what, events) in [
        ("the same batch", batch.to_vec()),
        (
            "a batch overlapping its end",
            vec![plain(6, &["a"]), plain(7, &["a"])],
        ),
        ("a batch before it", vec![plain(1, &["a"])]),
    ] {
        let again = post_import(&app, &events).await;
        let message = again.1["error"]["message"].as_str().unwrap_or_default();
        if !is_error(&again, 409, "position_taken")
            || !message.contains("not beyond position 6")
            || !message.contains("its head is 6")
        {
            violations += 1;
            eprintln!("{what}: {again:?}");
        }
    }
    let stored = positions(&app.read_all().await);
    if stored != [5, 6] {
        violations += 1;
        eprintln!("stored {stored:?}");
    }
    // Positions an append has used are taken too, and the next batch after
    // them is written.
    app.append_event(event("Appended", &["a"], "{}")).await;
    let behind = post_import(&app, &[plain(7, &["a"])]).await;
    if !is_error(&behind, 409, "position_taken") {
        violations += 1;
        eprintln!("a position an append used: {behind:?}");
    }
    let beyond = post_import(&app, &[plain(8, &["a"])]).await;
    if beyond != (200, json!({"imported": 1, "head": 8})) {
        violations += 1;
        eprintln!("the batch after: {beyond:?}");
    }
    assert_eq!(positions(&app.read_all().await), [5, 6, 7, 8]);
    assert_eq!(violations, 0);
}

#[actix_rt::test]
async fn an_import_of_ids_already_stored_is_a_conflict_and_writes_nothing() {
    let app = spawn_app().await;
    let mut violations = 0;
    app.append(json!({"events": [{"type": "E", "data": "{}", "id": "taken"}]}))
        .await;
    let with_id = |position, id: &str| {
        imported(
            position,
            "E",
            &["t"],
            "{}",
            Some(id),
            None,
            "2025-01-01T00:00:00Z",
        )
    };
    let clash = post_import(&app, &[with_id(5, "fresh"), with_id(6, "taken")]).await;
    let message = clash.1["error"]["message"].as_str().unwrap_or_default();
    if !is_error(&clash, 409, "id_conflict") || !message.contains("events[1].id \"taken\"") {
        violations += 1;
        eprintln!("ids already stored: {clash:?}");
    }
    let stored = app.read_all().await;
    if positions(&stored) != [1] || head_of(&app.http, &app.address).await != 1 {
        violations += 1;
        eprintln!("the refused import wrote: {stored:?}");
    }
    // Nothing of it was kept: its other id is free, its positions too.
    let answer = post_import(&app, &[with_id(5, "fresh")]).await;
    if answer != (200, json!({"imported": 1, "head": 5})) {
        violations += 1;
        eprintln!("the import without the clash: {answer:?}");
    }
    assert_eq!(violations, 0);
}

#[actix_rt::test]
async fn invalid_imports_are_refused_with_the_field_at_fault_and_write_nothing() {
    let app = spawn_app().await;
    let at = "2025-01-01T00:00:00Z";
    let mut with_recorded = plain(2, &["t"]);
    with_recorded["recordedAt"] = json!("yesterday");
    let mut without_recorded = plain(1, &["t"]);
    without_recorded
        .as_object_mut()
        .unwrap()
        .remove("recordedAt");
    let mut unknown_in_event = plain(1, &["t"]);
    unknown_in_event["metdata"] = json!("typo");
    let mut empty_tag = plain(1, &[""]);
    empty_tag["recordedAt"] = json!(at);
    let id = |position| imported(position, "E", &[], "{}", Some("same"), None, at);
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "no events",
            json!({"events": []}),
            400,
            "invalid_request",
            "at least one event",
        ),
        (
            "positions not increasing",
            json!({"events": [plain(5, &[]), plain(5, &[])]}),
            400,
            "invalid_request",
            "events[1].position",
        ),
        (
            "positions going back",
            json!({"events": [plain(5, &[]), plain(4, &[])]}),
            400,
            "invalid_request",
            "events[1].position",
        ),
        (
            "position 0",
            json!({"events": [plain(0, &[])]}),
            400,
            "invalid_request",
            "events[0].position",
        ),
        (
            "a recordedAt that is no time",
            json!({"events": [plain(1, &[]), with_recorded]}),
            400,
            "invalid_request",
            "events[1].recordedAt",
        ),
        (
            "no recordedAt",
            json!({"events": [without_recorded]}),
            400,
            "invalid_request",
            "events[0].recordedAt: must not be empty",
        ),
        (
            "an unknown field",
            json!({"events": [plain(1, &[])], "after": 3}),
            400,
            "invalid_json",
            "unknown field",
        ),
        (
            "an unknown field in an event",
            json!({"events": [unknown_in_event]}),
            400,
            "invalid_json",
            "body.events[0]: unknown field \"metdata\"",
        ),
        (
            "an empty tag",
            json!({"events": [empty_tag]}),
            400,
            "invalid_request",
            "events[0].tags[0]",
        ),
        (
            "an id twice",
            json!({"events": [id(1), id(2)]}),
            400,
            "invalid_request",
            "events[1].id",
        ),
        (
            "more events than an append may hold",
            json!({"events": (1..=1001).map(|p| plain(p, &[])).collect::<Vec<_>>()}),
            400,
            "invalid_request",
            "at most 1000 events",
        ),
    ];
    let mut violations = 0;
    for (what, body, status, code, names) in cases {
        let response = app
            .http
            .post(format!("{}/admin/import", app.address))
            .json(&body)
            .send()
            .await
            .expect("import request");
        let answer = (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        );
        let message = answer.1["error"]["message"].as_str().unwrap_or_default();
        if !is_error(&answer, status, code) || !message.contains(names) {
            violations += 1;
            eprintln!("{what}: {answer:?}");
        }
    }
    let (head, body) = read_raw(&app.http, &app.address).await;
    if (head.as_str(), body.as_str()) != ("0", "[]") {
        violations += 1;
        eprintln!("refused imports wrote: head {head}, {body}");
    }
    assert_eq!(violations, 0, "invalid imports not refused as they must be");
}

#[actix_rt::test]
async fn a_token_without_the_admin_scope_cannot_import() {
    const WRITER: &str = "writer-secret";
    const ADMIN: &str = "admin-secret";
    let token = |name: &str, secret: &str, scopes: &[Scope]| TokenSettings {
        name: name.into(),
        sha256: digest_hex(secret),
        scopes: scopes.to_vec(),
        expires_at: None,
    };
    let app = spawn_app_with(|s| {
        s.auth.tokens = vec![
            token("writer", WRITER, &[Scope::Read, Scope::Append]),
            token("admin", ADMIN, &[Scope::Admin]),
        ];
    })
    .await;
    let mut violations = 0;
    let batch = [plain(3, &["t"])];
    for (who, bearer, status, code) in [
        ("no token", None, 401, "unauthorized"),
        ("a read and append token", Some(WRITER), 403, "forbidden"),
    ] {
        let answer = post_import_as(&app.http, &app.address, &batch, bearer).await;
        if !is_error(&answer, status, code) {
            violations += 1;
            eprintln!("{who}: {answer:?}");
        }
    }
    let read = |bearer| {
        app.http
            .get(format!("{}/read", app.address))
            .query(&[("query", r#"{"items":[]}"#)])
            .bearer_auth(bearer)
    };
    let stored: Vec<Value> = read(ADMIN).send().await.unwrap().json().await.unwrap();
    if !stored.is_empty() {
        violations += 1;
        eprintln!("a refused import wrote: {stored:?}");
    }
    let answer = post_import_as(&app.http, &app.address, &batch, Some(ADMIN)).await;
    if answer != (200, json!({"imported": 1, "head": 3})) {
        violations += 1;
        eprintln!("the admin token: {answer:?}");
    }
    assert_eq!(violations, 0);
}

#[actix_rt::test]
async fn a_subscriber_open_during_imports_receives_every_event_once_in_order() {
    let app = spawn_app().await;
    let all = json!({"items": []});
    let mut everything =
        Subscription::open(&app.http, &app.address, &all, Some(0), false, None).await;
    let tagged = json!({"items": [{"tags": ["watched"]}]});
    let mut watched =
        Subscription::open(&app.http, &app.address, &tagged, Some(0), true, None).await;
    app.append_event(event("Appended", &["watched"], "{}"))
        .await;
    let imports: [&[Value]; 2] = [
        &[
            plain(5, &["watched"]),
            plain(6, &[]),
            plain(7, &["watched", "x"]),
        ],
        &[plain(20, &[]), plain(30, &["watched"])],
    ];
    let mut violations = 0;
    for (n, batch) in imports.iter().enumerate() {
        let answer = post_import(&app, batch).await;
        if answer.0 != 200 {
            violations += 1;
            eprintln!("import {n}: {answer:?}");
        }
        app.append_event(event("Appended", &["watched"], "{}"))
            .await;
    }
    let expected_all = [1, 5, 6, 7, 8, 20, 30, 31];
    let expected_watched = [1, 5, 7, 8, 30, 31];
    for (who, subscription, expected) in [
        ("all", &mut everything, &expected_all[..]),
        ("watched", &mut watched, &expected_watched[..]),
    ] {
        let mut got = positions(
            &subscription
                .events(expected.len(), Duration::from_secs(20))
                .await,
        );
        // Nothing more arrives: no event twice.
        got.extend(positions(
            &subscription.events(1, Duration::from_millis(500)).await,
        ));
        let (missing, duplicated, unordered) = counted_violations(who, expected, &got);
        violations += missing + duplicated + unordered;
        if got != expected {
            violations += 1;
            eprintln!("{who}: got {got:?}, expected {expected:?}");
        }
    }
    assert_eq!(
        violations, 0,
        "subscribers missed or repeated imported events"
    );
}

/// What a writer asked and was answered.
struct Decision {
    key: usize,
    after: i64,
    data: String,
    status: u16,
    /// `Some(position)` when appended, `None` when the condition failed.
    appended: Option<i64>,
}

#[actix_rt::test]
async fn imports_concurrent_with_conditional_appends_keep_every_decision_consistent() {
    const WRITERS: usize = 8;
    const APPENDS: usize = 30;
    const IMPORTERS: usize = 2;
    const IMPORTS: usize = 15;
    const KEYS: usize = 4;
    let app = spawn_app().await;
    let address = app.address.clone();
    let http = client();

    // Each writer, again and again: read the head, then append an event
    // tagged key:k unless an event tagged key:k came after that head (a
    // decision of its own each time); every other append unconditional.
    let writers = (0..WRITERS).map(|w| {
        let (http, address) = (http.clone(), address.clone());
        async move {
            let mut decisions = Vec::new();
            for i in 0..APPENDS {
                let key = rand::thread_rng().gen_range(0..KEYS);
                let tag = format!("key:{key}");
                let data = format!("w{w}-{i}");
                let after = head_of(&http, &address).await;
                let mut body =
                    json!({"events": [event("Claimed", &[&tag, &format!("writer:{w}")], &data)]});
                let conditional = i % 4 != 3;
                if conditional {
                    body["condition"] = unless_tagged(&[&tag], Some(after));
                }
                let answer = post_append(&http, &address, &body).await;
                decisions.push((
                    conditional,
                    Decision {
                        key,
                        after,
                        data,
                        status: answer.status,
                        appended: answer
                            .appended()
                            .then(|| answer.body["lastPosition"].as_i64())
                            .flatten(),
                    },
                ));
            }
            decisions
        }
    });
    // Importers: batches of events tagged key:k, some positions apart,
    // beyond the head they read (again after a position_taken).
    let importers = (0..IMPORTERS).map(|t| {
        let (http, address) = (http.clone(), address.clone());
        async move {
            let mut written: Vec<(i64, String)> = Vec::new();
            let mut refused = Vec::new();
            for j in 0..IMPORTS {
                let mut done = false;
                for _attempt in 0..40 {
                    let head = head_of(&http, &address).await;
                    let first = head + 20 + rand::thread_rng().gen_range(0..10);
                    let batch: Vec<(i64, String, usize)> = (0..3)
                        .map(|e| {
                            let key = rand::thread_rng().gen_range(0..KEYS);
                            (first + 2 * e as i64, format!("imp{t}-{j}-{e}"), key)
                        })
                        .collect();
                    let events: Vec<Value> = batch
                        .iter()
                        .map(|(position, data, key)| {
                            imported(
                                *position,
                                "ImportedClaim",
                                &[&format!("key:{key}")],
                                data,
                                None,
                                None,
                                "2025-01-01T00:00:00Z",
                            )
                        })
                        .collect();
                    let answer = post_import_as(&http, &address, &events, None).await;
                    if answer.0 == 200 {
                        written.extend(batch.into_iter().map(|(p, d, _)| (p, d)));
                        done = true;
                        break;
                    }
                    if !is_error(&answer, 409, "position_taken") {
                        refused.push(answer);
                        break;
                    }
                }
                if !done {
                    refused.push((0, json!(format!("import {t}-{j} never got its positions"))));
                }
            }
            (written, refused)
        }
    });
    let (decisions, imports) = futures_util::join!(join_all(writers), join_all(importers));
    let decisions: Vec<(bool, Decision)> = decisions.into_iter().flatten().collect();

    let stored = get_read(&http, &address, &json!({"items": []}), &json!({})).await;
    let mut violations = 0;
    let by_data: HashMap<&str, Vec<&SequencedEvent>> =
        stored.iter().fold(HashMap::new(), |mut map, e| {
            map.entry(e.data.as_str()).or_default().push(e);
            map
        });
    // Positions: unique and increasing in the log, and no position answered
    // to two writes.
    if stored.windows(2).any(|w| w[0].position >= w[1].position) {
        violations += 1;
        eprintln!("the log's positions do not increase");
    }
    let mut answered: HashSet<i64> = HashSet::new();
    let mut imported_count = 0;
    for (written, refused) in &imports {
        for answer in refused {
            violations += 1;
            eprintln!("an import was refused: {answer:?}");
        }
        for (position, data) in written {
            imported_count += 1;
            if !answered.insert(*position) {
                violations += 1;
                eprintln!("position {position} answered twice");
            }
            match by_data.get(data.as_str()).map(Vec::as_slice) {
                Some([event]) if event.position == *position => {}
                other => {
                    violations += 1;
                    eprintln!("imported {data} at {position}, stored as {other:?}");
                }
            }
        }
    }
    // Every decision against the final log: an append written is stored
    // once at its answered position, and no event tagged with its key lies
    // between its `after` and its own position (what its condition
    // forbade); an append refused by its condition has such an event after
    // its `after`, and is not stored.
    let by_key: BTreeMap<usize, Vec<i64>> = stored.iter().fold(BTreeMap::new(), |mut map, e| {
        for tag in &e.tags {
            if let Some(key) = tag.strip_prefix("key:") {
                map.entry(key.parse().unwrap())
                    .or_default()
                    .push(e.position);
            }
        }
        map
    });
    let (mut accepted, mut rejected) = (0, 0);
    for (conditional, decision) in &decisions {
        let keyed = by_key.get(&decision.key).map(Vec::as_slice).unwrap_or(&[]);
        let found = by_data
            .get(decision.data.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        match (decision.status, decision.appended) {
            (200, Some(position)) => {
                accepted += 1;
                if !answered.insert(position) {
                    violations += 1;
                    eprintln!("position {position} answered twice");
                }
                if !matches!(found, [event] if event.position == position) {
                    violations += 1;
                    eprintln!(
                        "{} answered at {position}, stored as {found:?}",
                        decision.data
                    );
                }
                let forbidden: Vec<&i64> = keyed
                    .iter()
                    .filter(|&&p| p > decision.after && p < position)
                    .collect();
                if *conditional && !forbidden.is_empty() {
                    violations += 1;
                    eprintln!(
                        "{} appended at {position} unless key:{} after {}, yet key:{} is at {forbidden:?}",
                        decision.data, decision.key, decision.after, decision.key
                    );
                }
            }
            (200, None) => {
                rejected += 1;
                if !keyed.iter().any(|&p| p > decision.after) || !found.is_empty() {
                    violations += 1;
                    eprintln!(
                        "{} refused unless key:{} after {}: key:{} at {keyed:?}, stored {found:?}",
                        decision.data, decision.key, decision.after, decision.key
                    );
                }
            }
            (status, _) => {
                violations += 1;
                eprintln!("{} answered {status}", decision.data);
            }
        }
    }
    println!(
        "{accepted} appends written, {rejected} refused by their condition, \
         {imported_count} events imported, {} stored",
        stored.len()
    );
    assert_eq!(
        stored.len(),
        accepted + imported_count,
        "stored events are not the writes answered"
    );
    assert!(
        rejected > 0 && imported_count > 0,
        "no contention was exercised"
    );
    assert_eq!(violations, 0, "imports interleaved wrongly with appends");
}

/// `database.pooler = "transaction"`: the import is one statement in a
/// transaction of its own, through PgBouncer, as directly.
#[actix_rt::test]
async fn through_pgbouncer_an_import_is_written_and_refused_as_directly() {
    let bouncer = PgBouncer::start();
    let database = fresh_database().await;
    let server = spawn_process_with_env(
        &bouncer.url(&database),
        &[("CRABLET_DATABASE_POOLER", "transaction")],
    )
    .await;
    let direct = spawn_app().await;
    let http = client();
    let batch = [
        imported(
            2,
            "E",
            ODD_TAGS,
            ODD_DATA,
            Some("p-2"),
            Some("m"),
            "2025-01-01T00:00:00.5Z",
        ),
        plain(9, &["t"]),
    ];
    let mut violations = 0;
    let mut transcripts = Vec::new();
    for address in [&server.address, &direct.address] {
        let mut transcript = Vec::new();
        transcript.push(post_import_as(&http, address, &batch, None).await);
        transcript.push(post_import_as(&http, address, &batch, None).await);
        let clash = [imported(
            20,
            "E",
            &[],
            "{}",
            Some("p-2"),
            None,
            "2025-01-01T00:00:00Z",
        )];
        transcript.push(post_import_as(&http, address, &clash, None).await);
        for answer in &mut transcript {
            if let Some(error) = answer.1.get_mut("error") {
                error["requestId"] = json!("");
            }
        }
        let (head, read) = read_raw(&http, address).await;
        transcripts.push((transcript, head, read));
    }
    let (pooled, direct) = (&transcripts[0], &transcripts[1]);
    if pooled != direct {
        violations += 1;
        eprintln!("through PgBouncer: {pooled:?}\ndirectly: {direct:?}");
    }
    if pooled.0[0] != (200, json!({"imported": 2, "head": 9}))
        || !is_error(&pooled.0[1], 409, "position_taken")
        || !is_error(&pooled.0[2], 409, "id_conflict")
    {
        violations += 1;
        eprintln!("through PgBouncer: {:?}", pooled.0);
    }
    assert_eq!(violations, 0);
}
