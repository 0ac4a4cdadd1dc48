//! The correctness properties under real concurrency: each test counts
//! violations and asserts zero.

use std::collections::{BTreeSet, HashMap};

use crablet::dcb::{Query, QueryItem};
use futures_util::future::join_all;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};

use crate::helpers::{
    client, event, fresh_database, get_read, post_append, spawn_app, spawn_app_with, two_processes,
    unless_tagged,
};

const RACE_CLIENTS: usize = 50;
const RACE_KEYS: usize = 200;

/// Every client tries to register every username (in its own random order)
/// with the condition "no event tagged with this username"; returns the
/// violations: usernames registered other than exactly once, by answers or
/// in the store, plus requests that did not get a 200.
pub(crate) async fn unique_key_race(addresses: &[String]) -> usize {
    unique_key_race_read_at(addresses, &addresses[0]).await
}

/// [`unique_key_race`] whose store is read at the end through `reader`.
pub(crate) async fn unique_key_race_read_at(addresses: &[String], reader: &str) -> usize {
    let http = client();
    let clients = (0..RACE_CLIENTS).map(|c| {
        let http = http.clone();
        let address = addresses[c % addresses.len()].clone();
        async move {
            let mut keys: Vec<usize> = (0..RACE_KEYS).collect();
            keys.shuffle(&mut rand::thread_rng());
            let mut wins = Vec::new();
            let mut errors = 0;
            for k in keys {
                let tag = format!("username:{k}");
                let body = json!({
                    "events": [event("UserRegistered", &[&tag], &format!("{{\"client\":{c}}}"))],
                    "condition": unless_tagged(&[&tag], None),
                });
                let answer = post_append(&http, &address, &body).await;
                if answer.appended() {
                    wins.push(k);
                } else if !answer.rejected() {
                    errors += 1;
                }
            }
            (wins, errors)
        }
    });
    let results = join_all(clients).await;
    let mut wins_per_key = vec![0usize; RACE_KEYS];
    let mut errors = 0;
    for (wins, e) in results {
        errors += e;
        for k in wins {
            wins_per_key[k] += 1;
        }
    }
    let events = get_read(&http, reader, &json!({"items": []}), &json!({})).await;
    let mut stored_per_key = vec![0usize; RACE_KEYS];
    for e in &events {
        let k: usize = e.tags[0].trim_start_matches("username:").parse().unwrap();
        stored_per_key[k] += 1;
    }
    let answer_violations = wins_per_key.iter().filter(|&&w| w != 1).count();
    let store_violations = stored_per_key.iter().filter(|&&s| s != 1).count();
    eprintln!(
        "unique-key race on {} server(s): {answer_violations} answer violations, \
         {store_violations} store violations, {errors} errors, {} events",
        addresses.len(),
        events.len()
    );
    answer_violations + store_violations + errors
}

#[actix_rt::test]
async fn exactly_one_client_registers_each_username() {
    let app = spawn_app().await;
    assert_eq!(unique_key_race(std::slice::from_ref(&app.address)).await, 0);
}

#[actix_rt::test]
async fn exactly_one_client_registers_each_username_across_two_server_processes() {
    let (_database, first, second) = two_processes().await;
    let violations = unique_key_race(&[first.address.clone(), second.address.clone()]).await;
    assert_eq!(violations, 0);
}

#[actix_rt::test]
async fn conditional_appends_on_disjoint_keys_never_fail() {
    const CLIENTS: usize = 20;
    const APPENDS: usize = 50;
    let app = spawn_app().await;
    let clients = (0..CLIENTS).map(|c| {
        let app = &app;
        async move {
            let mut failures = 0;
            let mut last = 0;
            for i in 0..APPENDS {
                let tag = format!("account:{c}");
                // Each client's condition covers only its own tag, and uses the
                // position of its own previous event as `after`.
                let body = json!({
                    "events": [event("Deposited", &[&tag, "shared:type-tag-free"], &i.to_string())],
                    "condition": unless_tagged(&[&tag], Some(last)),
                });
                let answer = app.append(body).await;
                if answer.appended() {
                    last = answer.body["lastPosition"].as_i64().unwrap();
                } else {
                    failures += 1;
                }
            }
            failures
        }
    });
    let failures: usize = join_all(clients).await.into_iter().sum();
    eprintln!("disjoint conditional appends: {failures} false conflicts or errors");
    assert_eq!(failures, 0);
    assert_eq!(app.read_all().await.len(), CLIENTS * APPENDS);
}

#[actix_rt::test]
async fn a_tailing_reader_sees_every_event_exactly_once_in_order() {
    const WRITERS: usize = 12;
    const APPENDS: usize = 60;
    const READERS: usize = 4;
    let app = spawn_app_with(|s| s.writer.lanes = 4).await;
    let done = std::cell::Cell::new(false);
    let writers = async {
        let writers = (0..WRITERS).map(|w| {
            let app = &app;
            async move {
                let mut written = 0;
                for i in 0..APPENDS {
                    // Large appends take long to insert: without gap-free
                    // commits, small appends on other lanes would overtake
                    // them and a tailing reader would skip their positions.
                    let n = if (i + w) % 8 == 0 { 300 } else { 1 + (i % 3) };
                    let events: Vec<Value> = (0..n)
                        .map(|j| event("Tick", &[&format!("writer:{w}")], &format!("{w}/{i}/{j}")))
                        .collect();
                    let answer = app.append(json!({ "events": events })).await;
                    assert!(answer.appended(), "{answer:?}");
                    written += n;
                }
                written
            }
        });
        let total: usize = join_all(writers).await.into_iter().sum();
        done.set(true);
        total
    };
    // Several readers tail the log at once, each from its own position.
    let reader = || async {
        let mut seen: Vec<i64> = Vec::new();
        let mut out_of_order = 0;
        loop {
            let finished = done.get();
            let from = seen.last().map_or(1, |p| p + 1);
            let page = app
                .read(json!({"items": []}), json!({"from": from, "limit": 64}))
                .await;
            for e in &page {
                if seen.last().is_some_and(|&last| e.position <= last) {
                    out_of_order += 1;
                }
                seen.push(e.position);
            }
            if page.is_empty() {
                if finished {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        (seen, out_of_order)
    };
    let (total, readers) = futures_util::join!(writers, join_all((0..READERS).map(|_| reader())));
    let stored: Vec<i64> = app.read_all().await.iter().map(|e| e.position).collect();
    assert_eq!(stored.len(), total);
    let mut violations = 0;
    for (seen, out_of_order) in readers {
        let seen_set: BTreeSet<i64> = seen.iter().copied().collect();
        let missed = stored.iter().filter(|p| !seen_set.contains(p)).count();
        let duplicates = seen.len() - seen_set.len();
        eprintln!(
            "tailing reader: {total} events written, {} seen, {missed} missed, {duplicates} duplicates, {out_of_order} out of order",
            seen.len()
        );
        violations += missed + duplicates + out_of_order;
    }
    assert_eq!(violations, 0);
}

#[actix_rt::test]
async fn appends_whose_conditions_conflict_inside_one_batch_are_decided_in_order() {
    const ROUNDS: usize = 6;
    const BURST: usize = 120;
    // One lane: every append of a burst queues behind the running batch.
    let app = spawn_app_with(|s| s.writer.lanes = 1).await;
    let mut violations = 0;
    for round in 0..ROUNDS {
        let a = format!("seat:{round}:a");
        let b = format!("seat:{round}:b");
        let burst = (0..BURST).map(|i| {
            let tag = if i % 2 == 0 { a.clone() } else { b.clone() };
            let app = &app;
            async move {
                let answer = app
                    .append(json!({
                        "events": [event("SeatTaken", &[&tag], &i.to_string())],
                        "condition": unless_tagged(&[&tag], None),
                    }))
                    .await;
                (tag, answer.appended(), answer.status)
            }
        });
        let mut wins: HashMap<String, usize> = HashMap::new();
        for (tag, won, status) in join_all(burst).await {
            assert_eq!(status, 200);
            *wins.entry(tag).or_default() += won as usize;
        }
        violations += [&a, &b]
            .iter()
            .filter(|t| wins.get(**t) != Some(&1))
            .count();
    }
    let (_, metrics) = app.raw(reqwest::Method::GET, "/metrics", None).await;
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    let (sum, count) = (
        sample("crablet_writer_batch_appends_sum "),
        sample("crablet_writer_batch_appends_count "),
    );
    eprintln!("in-batch conflicts: {violations} violations; {sum} appends in {count} batches");
    assert_eq!(violations, 0);
    assert!(
        sum > count,
        "no batch held more than one append: the test proved nothing"
    );
    assert_eq!(app.read_all().await.len(), ROUNDS * 2);
}

/// A random query over a small space of tags and types, so clients collide.
fn random_query(rng: &mut impl Rng) -> Query {
    const TAGS: &[&str] = &["a", "b", "c", "d", "e", "f"];
    const TYPES: &[&str] = &["X", "Y", "Z"];
    let items = (0..rng.gen_range(1..=2))
        .map(|_| {
            let mut item = QueryItem::default();
            match rng.gen_range(0..3) {
                0 => item.tags.push(TAGS.choose(rng).unwrap().to_string()),
                1 => item.types.push(TYPES.choose(rng).unwrap().to_string()),
                _ => {
                    item.tags.push(TAGS.choose(rng).unwrap().to_string());
                    item.types.push(TYPES.choose(rng).unwrap().to_string());
                }
            }
            item
        })
        .collect();
    Query { items }
}

#[actix_rt::test]
async fn random_decisions_never_accept_an_append_whose_condition_was_violated() {
    const CLIENTS: usize = 16;
    const DECISIONS: usize = 60;
    // Several lanes: conditions with several items span lanes, so the
    // advisory locks, not the lane routing, must keep them safe.
    let app = spawn_app_with(|s| s.writer.lanes = 4).await;
    let clients = (0..CLIENTS).map(|c| {
        let app = &app;
        async move {
            let mut accepted: Vec<(Query, i64, i64)> = Vec::new();
            let mut rejected = 0;
            for i in 0..DECISIONS {
                let (query, event_body) = {
                    let mut rng = rand::thread_rng();
                    let query = random_query(&mut rng);
                    let tags = ["a", "b", "c", "d", "e", "f"];
                    let t1 = *tags.choose(&mut rng).unwrap();
                    let t2 = *tags.choose(&mut rng).unwrap();
                    let ty = *["X", "Y", "Z"].choose(&mut rng).unwrap();
                    (query, event(ty, &[t1, t2], &format!("{c}/{i}")))
                };
                let query_json = serde_json::to_value(&query).unwrap();
                let last = app
                    .read(query_json.clone(), json!({"backwards": true, "limit": 1}))
                    .await
                    .first()
                    .map_or(0, |e| e.position);
                let answer = app
                    .append(json!({
                        "events": [event_body],
                        "condition": {"failIfEventsMatch": query_json, "after": last},
                    }))
                    .await;
                if answer.appended() {
                    accepted.push((query, last, answer.body["lastPosition"].as_i64().unwrap()));
                } else {
                    assert!(answer.rejected(), "{answer:?}");
                    rejected += 1;
                }
            }
            (accepted, rejected)
        }
    });
    let results = join_all(clients).await;
    let log = app.read_all().await;
    let mut violations = 0;
    let (mut accepted_count, mut rejected_count) = (0, 0);
    for (accepted, rejected) in &results {
        rejected_count += rejected;
        accepted_count += accepted.len();
        for (query, after, position) in accepted {
            violations += log
                .iter()
                .filter(|e| e.position > *after && e.position < *position)
                .filter(|e| query.matches(&e.event_type, &e.tags))
                .count();
        }
    }
    eprintln!("random decisions: {accepted_count} accepted, {rejected_count} rejected, {violations} violations");
    assert_eq!(violations, 0);
    assert_eq!(log.len(), accepted_count);
    assert!(
        accepted_count > 0 && rejected_count > 0,
        "the clients never collided"
    );
}

#[actix_rt::test]
async fn an_append_the_database_refuses_does_not_fail_the_others_in_its_batch() {
    const BURST: usize = 60;
    let database = fresh_database().await;
    let app = crate::helpers::spawn_app_on(&database, |s| s.writer.lanes = 1).await;
    // A trigger stands in for any failure the database may raise on one
    // append: it refuses events of type `Poison`.
    let (client, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls)
        .await
        .expect("connect");
    actix_rt::spawn(connection);
    client
        .batch_execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.type = 'Poison' THEN RAISE EXCEPTION 'poison'; END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_poison BEFORE INSERT ON events
                 FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
        )
        .await
        .expect("install trigger");
    let mut poisoned = 0;
    let mut lost = 0;
    for round in 0..3 {
        let burst = (0..BURST).map(|i| {
            let app = &app;
            async move {
                let kind = if i == BURST / 2 { "Poison" } else { "Fine" };
                let tag = format!("r{round}:{i}");
                let answer = app
                    .append(json!({
                        "events": [event(kind, &[&tag], "{}")],
                        "condition": unless_tagged(&[&tag], None),
                    }))
                    .await;
                (kind, answer)
            }
        });
        for (kind, answer) in join_all(burst).await {
            match kind {
                "Poison" => poisoned += (answer.status == 500) as usize,
                _ => lost += (!answer.appended()) as usize,
            }
        }
    }
    eprintln!(
        "poisoned batches: {poisoned} of 3 poison appends refused, {lost} good appends failed"
    );
    assert_eq!((poisoned, lost), (3, 0));
    assert_eq!(app.read_all().await.len(), 3 * (BURST - 1));
}
