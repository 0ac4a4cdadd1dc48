//! Reads checked against a tiny in-memory reference model: random events,
//! random queries and options, and the answer must equal the model's.

use crablet::dcb::{Query, SequencedEvent};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::helpers::{event, random_item, spawn_app_with};

const TAGS: &[&str] = &["a", "b", "c", "d", "x:1", "x:\"2\"", "ü,{}"];
const TYPES: &[&str] = &["A", "B", "C"];

/// What a read must answer, computed from the full log.
fn model_read(log: &[SequencedEvent], query: &Query, options: &Value) -> Vec<i64> {
    let from = options["from"].as_i64();
    let after = options["after"].as_i64();
    let backwards = options["backwards"].as_bool().unwrap_or(false);
    let mut matching: Vec<i64> = log
        .iter()
        .filter(|e| query.matches(&e.event_type, &e.tags))
        .map(|e| e.position)
        .filter(|&p| after.is_none_or(|a| p > a))
        .filter(|&p| match from {
            Some(f) if backwards => p <= f,
            Some(f) => p >= f,
            None => true,
        })
        .collect();
    if backwards {
        matching.reverse();
    }
    if let Some(limit) = options["limit"].as_u64() {
        matching.truncate(limit as usize);
    }
    matching
}

#[actix_rt::test]
async fn reads_answer_what_the_reference_model_answers() {
    let mut rng = StdRng::seed_from_u64(0x0dcb);
    // A small page size makes long answers cross page boundaries.
    let app = spawn_app_with(|s| s.reader.page_size = 5).await;
    for _ in 0..40 {
        let events: Vec<Value> = (0..rng.gen_range(1..=4))
            .map(|_| {
                let tags: Vec<&str> = (0..rng.gen_range(0..=3))
                    .map(|_| *TAGS.choose(&mut rng).unwrap())
                    .collect();
                event(TYPES.choose(&mut rng).unwrap(), &tags, "d")
            })
            .collect();
        assert!(app.append(json!({ "events": events })).await.appended());
    }
    let log = app.read_all().await;
    let mut mismatches = 0;
    for _ in 0..150 {
        let query = if rng.gen_bool(0.1) {
            Query::all()
        } else {
            Query {
                items: (0..rng.gen_range(1..=3))
                    .map(|_| random_item(&mut rng, TAGS, TYPES, 2))
                    .collect(),
            }
        };
        let mut options = json!({});
        if rng.gen_bool(0.5) {
            let key = if rng.gen_bool(0.5) { "from" } else { "after" };
            options[key] = json!(rng.gen_range(0..=log.len() as i64 + 2));
        }
        if rng.gen_bool(0.5) {
            options["limit"] = json!(rng.gen_range(0..=12));
        }
        if rng.gen_bool(0.5) {
            options["backwards"] = json!(true);
        }
        let expected = model_read(&log, &query, &options);
        let got: Vec<i64> = app
            .read(serde_json::to_value(&query).unwrap(), options.clone())
            .await
            .iter()
            .map(|e| e.position)
            .collect();
        if got != expected {
            mismatches += 1;
            eprintln!("query {query:?} options {options}: got {got:?}, expected {expected:?}");
        }
    }
    assert_eq!(mismatches, 0);
}
