//! The `X-Crablet-Head` header of reads, native and through the prefix,
//! under concurrent appends: an append conditioned on a key after the head
//! of an empty read of it fails only if a matching event came between.

use serde_json::{json, Value};

use crate::helpers::{event, spawn_app_with, TestApp};

/// One decision of the head test: a read of `key` that matched nothing,
/// then an append conditioned on `key` after the read's head.
struct Decision {
    key: String,
    head: i64,
    /// The position written, or `None` when the condition failed.
    written: Option<i64>,
}

/// Reads `key` through the native route or the prefix; `None` when it
/// matched something, else the `X-Crablet-Head` of the read.
async fn empty_read_head(app: &TestApp, key: &str, through_prefix: bool) -> Option<i64> {
    let query = json!({"items": [{"tags": [key]}]});
    let response = if through_prefix {
        app.http
            .post(format!("{}/go-crablet/read", app.address))
            .json(&json!({ "query": query }))
            .send()
            .await
    } else {
        app.http
            .get(format!("{}/read", app.address))
            .query(&[("query", query.to_string())])
            .send()
            .await
    }
    .expect("read");
    assert_eq!(response.status(), 200);
    let head: i64 = response.headers()["x-crablet-head"]
        .to_str()
        .unwrap()
        .parse()
        .expect("the head is an integer");
    let body: Value = response.json().await.unwrap();
    let matched = if through_prefix {
        body["numberOfMatchingEvents"].as_u64().unwrap() > 0
    } else {
        !body.as_array().unwrap().is_empty()
    };
    (!matched).then_some(head)
}

#[actix_rt::test]
async fn an_append_after_the_head_of_an_empty_read_fails_only_if_a_matching_event_came_between() {
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 40;
    let app = std::sync::Arc::new(spawn_app_with(|s| s.writer.lanes = 2).await);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Unrelated appends keep the head moving between reads and appends.
    let mut load = Vec::new();
    for n in 0..3 {
        let (app, done) = (app.clone(), done.clone());
        load.push(actix_rt::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = app
                    .append(json!({"events": [event("Noise", &[&format!("noise:{n}")], "")]}))
                    .await;
                assert!(answer.appended(), "{answer:?}");
            }
        }));
    }
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let app = app.clone();
        clients.push(actix_rt::spawn(async move {
            let mut decisions = Vec::new();
            for r in 0..ROUNDS {
                let key = format!("head:{c}:{r}");
                // A rival appends a matching event at a random moment around
                // the read and the decision.
                let rival = {
                    let (app, key) = (app.clone(), key.clone());
                    let delay = rand::random::<u64>() % 1_500;
                    async move {
                        actix_rt::time::sleep(std::time::Duration::from_micros(delay)).await;
                        let answer = app.append(json!({"events": [event("Rival", &[&key], "")]})).await;
                        assert!(answer.appended(), "{answer:?}");
                    }
                };
                let decide = async {
                    let head = empty_read_head(&app, &key, c % 2 == 1).await?;
                    let answer = app
                        .append(json!({
                            "events": [event("Decision", &[&key], "")],
                            "condition": {"failIfEventsMatch": {"items": [{"tags": [key]}]}, "after": head}
                        }))
                        .await;
                    assert_eq!(answer.status, 200, "{answer:?}");
                    Some(Decision {
                        key: key.clone(),
                        head,
                        written: answer.body["lastPosition"].as_i64(),
                    })
                };
                let (_, decision) = futures_util::join!(rival, decide);
                decisions.extend(decision);
            }
            decisions
        }));
    }
    let mut decisions = Vec::new();
    for client in clients {
        decisions.extend(client.await.expect("client"));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.expect("load");
    }

    let stored = app.read_all().await;
    let (mut missed, mut false_conflicts, mut accepted) = (0, 0, 0);
    for d in &decisions {
        let matching: Vec<i64> = stored
            .iter()
            .filter(|e| e.tags.contains(&d.key) && Some(e.position) != d.written)
            .map(|e| e.position)
            .collect();
        match d.written {
            Some(own) => {
                accepted += 1;
                // The read matched nothing, so every matching event before
                // the decision (commits are in position order) was appended
                // between the read and the decision: the condition had to
                // catch it.
                if matching.iter().any(|&p| p < own) {
                    missed += 1;
                }
            }
            None => {
                if !matching.iter().any(|&p| p > d.head) {
                    false_conflicts += 1;
                }
            }
        }
    }
    eprintln!(
        "head test: {} empty reads, {accepted} appends accepted, {} rejected",
        decisions.len(),
        decisions.len() - accepted
    );
    assert!(
        decisions.len() >= CLIENTS * ROUNDS / 4,
        "too few empty reads to test anything: {}",
        decisions.len()
    );
    assert!(
        accepted > 0 && accepted < decisions.len(),
        "no race happened: {accepted} of {} accepted",
        decisions.len()
    );
    assert_eq!(
        (missed, false_conflicts),
        (0, 0),
        "{} decisions: {missed} accepted past a matching event, {false_conflicts} rejected without one",
        decisions.len()
    );
}
