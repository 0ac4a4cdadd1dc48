//! Decisions in batch order: appends that overlap (one hot key's
//! requirements, conditions that see an earlier append, an `after` beyond
//! every head) share a batch and are each decided against their accepted
//! predecessors, exactly; and remembered projector states are only ever
//! continued, never trusted, whatever another process appended. Every test
//! counts violations against the stored log and asserts zero.

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::helpers::subscription::positions;
use crate::helpers::{
    append_all, client, event, fresh_database, get_read, metric, metrics_text, post_append,
    spawn_app_on, spawn_process, two_processes,
};

async fn metrics_of(address: &str) -> String {
    metrics_text(&client(), address).await
}

fn seats(course: usize) -> Value {
    json!({"query": {"items": [{"types": ["SeatReserved"], "tags": [format!("course:{course}")]}]},
           "reduce": "count"})
}

fn reservation(course: usize, student: usize, cap: u64) -> Value {
    json!({
        "events": [event("SeatReserved", &[&format!("course:{course}"), &format!("student:{student}")], "{}")],
        "require": [{"projector": seats(course), "op": "lt", "value": cap}]
    })
}

const COURSES: usize = 2;
const CAP: u64 = 30;
const REQUESTS: usize = 400;

#[actix_rt::test]
async fn decisions_on_hot_keys_share_batches_and_never_exceed_the_cap() {
    let database = fresh_database().await;
    let app = spawn_app_on(&database, |s| s.writer.lanes = 1).await;
    let http = client();
    let before = metrics_of(&app.address).await;
    let reservations =
        (0..REQUESTS).map(|r| (app.address.clone(), reservation(r % COURSES, r, CAP)));
    let answers = append_all(&http, reservations).await;
    let accepted = answers.iter().filter(|a| a.appended()).count();
    let refused = answers.iter().filter(|a| a.failed_requirement(0)).count();
    let mut violations = REQUESTS - accepted - refused;
    for course in 0..COURSES {
        let stored = app
            .read(seats(course)["query"].clone(), json!({}))
            .await
            .len();
        violations += stored.abs_diff(CAP as usize);
    }
    violations += accepted.abs_diff(COURSES * CAP as usize);
    assert_eq!(
        violations, 0,
        "accepted {accepted}, refused {refused} of {REQUESTS}"
    );

    // Appends on one key no longer wait for a batch each: with 400 decisions
    // on 2 keys, a batch carries several decisions on the same key (one per
    // key and batch would take at least 200 batches).
    let after = metrics_of(&app.address).await;
    let batches = metric(&after, "crablet_writer_batch_appends_count", "")
        - metric(&before, "crablet_writer_batch_appends_count", "");
    eprintln!("{REQUESTS} decisions in {batches} batches");
    assert!(
        batches <= (REQUESTS * 3 / 8) as f64,
        "{REQUESTS} decisions took {batches} batches: decisions on one key do not share them"
    );
}

#[actix_rt::test]
async fn a_closing_event_in_a_batch_refuses_the_reservations_after_it_and_only_those() {
    let database = fresh_database().await;
    let app = spawn_app_on(&database, |s| s.writer.lanes = 1).await;
    let http = client();
    let status = json!({"query": {"items": [{"tags": ["course:9"]}]}, "reduce": "status",
                        "map": {"CourseOpened": "open", "CourseClosed": "closed"}});
    let budget = json!({"query": {"items": [{"types": ["SeatPaid"], "tags": ["course:9"]}]},
                        "reduce": "sum", "path": "/amount"});
    app.append_event(event("CourseOpened", &["course:9"], "{}"))
        .await;
    let mut violations = 0;
    for round in 0..5 {
        let requests: Vec<Value> = (0..40)
            .map(|r| {
                if r == 20 {
                    json!({"events": [event("CourseClosed", &["course:9"], "{}")],
                           "require": [{"projector": status, "op": "eq", "value": "open"}]})
                } else {
                    json!({"events": [event("SeatPaid", &["course:9"], r#"{"amount": 2.5}"#)],
                           "require": [{"projector": status, "op": "eq", "value": "open"},
                                       {"projector": budget, "op": "le", "value": 47.5}]})
                }
            })
            .collect();
        let answers = join_all(requests.iter().map(|body| {
            let (http, address) = (http.clone(), app.address.clone());
            async move { post_append(&http, &address, body).await }
        }))
        .await;
        let log = app
            .read(json!({"items": [{"tags": ["course:9"]}]}), json!({}))
            .await;
        // Replay the log: no payment after a close, none past the budget.
        let (mut open, mut paid) = (false, 0.0_f64);
        for e in &log {
            match e.event_type.as_str() {
                "CourseOpened" => open = true,
                "CourseClosed" => open = false,
                "SeatPaid" => {
                    if !open || paid > 47.5 {
                        violations += 1;
                    }
                    paid += 2.5;
                }
                _ => {}
            }
        }
        let accepted = answers.iter().filter(|a| a.appended()).count();
        let other = answers
            .iter()
            .filter(|a| !a.appended() && !a.rejected())
            .count();
        violations += other;
        eprintln!(
            "round {round}: {accepted} accepted, {} events, paid {paid}",
            log.len()
        );
        // Open the course again for the next round.
        app.append_event(event("CourseOpened", &["course:9"], "{}"))
            .await;
    }
    assert_eq!(violations, 0);
}

#[actix_rt::test]
async fn conditions_past_every_head_are_decided_exactly_in_busy_batches_across_two_processes() {
    let (_database, first, second) = two_processes().await;
    let http = client();
    let mut refused_beyond = 0;
    let mut violations = 0;
    let mut decided = 0;
    for round in 0..6 {
        let tag = format!("shared:{round}");
        // Written through the second process, so the first one's lane has
        // not seen the head the client reads there.
        for _ in 0..3 {
            let body = json!({"events": [event("Other", &["elsewhere"], "{}")]});
            assert!(post_append(&http, &second.address, &body).await.appended());
        }
        let head: i64 = http
            .get(format!("{}/head", second.address))
            .send()
            .await
            .expect("head")
            .json::<Value>()
            .await
            .expect("head body")["position"]
            .as_i64()
            .expect("a position");
        // Far beyond every position this round can write.
        let beyond = head + 1_000_000;
        let bodies: Vec<(Option<i64>, Value)> = (0..96)
            .map(|r| match r % 3 {
                0 => (None, json!({"events": [event("Shared", &[&tag], "{}")]})),
                1 => (
                    Some(beyond),
                    json!({"events": [event("Decided", &[&format!("mine:{round}:{r}")], "{}")],
                           "condition": {"failIfEventsMatch": {"items": [{"tags": [&tag]}]},
                                         "after": beyond}}),
                ),
                _ => (
                    Some(head),
                    json!({"events": [event("Decided", &[&format!("mine:{round}:{r}")], "{}")],
                           "condition": {"failIfEventsMatch": {"items": [{"tags": [&tag]}]},
                                         "after": head}}),
                ),
            })
            .collect();
        let answers = join_all(bodies.iter().map(|(_, body)| {
            let (http, address) = (http.clone(), first.address.clone());
            async move { post_append(&http, &address, body).await }
        }))
        .await;
        let shared: Vec<i64> = get_positions(&http, &first.address, &tag).await;
        for ((after, _), answer) in bodies.iter().zip(&answers) {
            let Some(after) = *after else {
                violations += usize::from(!answer.appended());
                continue;
            };
            decided += 1;
            if answer.appended() {
                // No matching event between `after` and the append itself.
                let own = answer.body["lastPosition"].as_i64().expect("lastPosition");
                violations += shared.iter().filter(|&&p| p > after && p < own).count();
            } else if answer.rejected() {
                // A refusal needs a matching event after `after`.
                if !shared.iter().any(|&p| p > after) {
                    violations += 1;
                    if after == beyond {
                        refused_beyond += 1;
                    }
                }
            } else {
                violations += 1;
            }
        }
    }
    eprintln!("{decided} conditional appends decided; {refused_beyond} refused past the head");
    assert_eq!(refused_beyond, 0, "false conflicts past the head");
    assert_eq!(violations, 0);
}

async fn get_positions(http: &reqwest::Client, address: &str, tag: &str) -> Vec<i64> {
    let query = json!({"items": [{"tags": [tag]}]});
    positions(&get_read(http, address, &query, &json!({})).await)
}

async fn project_count(http: &reqwest::Client, address: &str, course: usize) -> i64 {
    let answer: Value = http
        .post(format!("{address}/project"))
        .json(&json!({"projectors": [{"id": "seats", "query": seats(course)["query"], "reduce": "count"}]}))
        .send()
        .await
        .expect("project")
        .json()
        .await
        .expect("project body");
    answer["states"]["seats"]
        .as_i64()
        .unwrap_or_else(|| panic!("a count in {answer}"))
}

#[actix_rt::test]
async fn a_remembered_state_is_continued_past_appends_from_another_process() {
    let database = fresh_database().await;
    let remembering = spawn_app_on(&database, |_| {}).await;
    let other = spawn_process(&database).await;
    let http = client();
    let mut violations = 0;
    for course in 0..5 {
        // Two decisions through the first process: it remembers count = 2.
        for student in 0..2 {
            let answer = remembering.append(reservation(course, student, 3)).await;
            violations += usize::from(!answer.appended());
        }
        violations += usize::from(project_count(&http, &remembering.address, course).await != 2);
        // A third seat through the other process.
        let plain =
            json!({"events": [event("SeatReserved", &[&format!("course:{course}")], "{}")]});
        assert!(post_append(&http, &other.address, &plain).await.appended());
        // The first process must see it: the course is full.
        let late = remembering.append(reservation(course, 9, 3)).await;
        if !late.rejected() {
            eprintln!("course {course}: a fourth seat was {late:?}");
            violations += 1;
        }
        violations += usize::from(project_count(&http, &remembering.address, course).await != 3);
        assert!(post_append(&http, &other.address, &plain).await.appended());
        violations += usize::from(project_count(&http, &remembering.address, course).await != 4);
    }
    let text = metrics_of(&remembering.address).await;
    let hits = metric(&text, "crablet_projection_states_total", "result=\"hit\"");
    eprintln!("remembered states used {hits} times");
    assert!(hits >= 10.0, "the states were remembered and used: {hits}");
    assert_eq!(violations, 0);
}

#[actix_rt::test]
async fn with_remembered_states_turned_off_decisions_are_the_same_and_nothing_is_remembered() {
    let database = fresh_database().await;
    let app = spawn_app_on(&database, |s| s.projections.state_cache_bytes = 0).await;
    let http = client();
    let reservations = (0..120).map(|r| (app.address.clone(), reservation(r % 2, r, 7)));
    let answers = append_all(&http, reservations).await;
    let accepted = answers.iter().filter(|a| a.appended()).count();
    assert_eq!(accepted, 14);
    assert_eq!(project_count(&http, &app.address, 0).await, 7);
    let text = metrics_of(&app.address).await;
    assert_eq!(
        metric(&text, "crablet_projection_states_total", ""),
        0.0,
        "nothing looked up or remembered"
    );
}

#[actix_rt::test]
async fn concurrent_first_projections_of_one_projector_fold_its_history_once() {
    let database = fresh_database().await;
    let app = spawn_app_on(&database, |_| {}).await;
    for chunk in 0..2 {
        let events: Vec<Value> = (0..1000)
            .map(|i| event("Counted", &[&format!("n:{chunk}:{i}")], "{}"))
            .collect();
        assert!(app.append(json!({ "events": events })).await.appended());
    }
    let http = client();
    let body = json!({"projectors": [{"id": "all", "query": {"items": [{"types": ["Counted"]}]},
                                      "reduce": "count"}]});
    let answers = join_all((0..16).map(|_| {
        let (http, address, body) = (http.clone(), app.address.clone(), body.clone());
        async move {
            http.post(format!("{address}/project"))
                .json(&body)
                .send()
                .await
                .expect("project")
                .json::<Value>()
                .await
                .expect("project body")
        }
    }))
    .await;
    let wrong = answers
        .iter()
        .filter(|a| a["states"]["all"] != json!(2000))
        .count();
    assert_eq!(wrong, 0, "every projection counts 2000: {answers:?}");
    let text = metrics_of(&app.address).await;
    let misses = metric(&text, "crablet_projection_states_total", "result=\"miss\"");
    assert_eq!(
        misses, 1.0,
        "the history was folded once; the other 15 continued from its state"
    );
}

/// An append over its decision budget is refused alone: the appends batched
/// after it are decided as if it had not been there, so one whose condition
/// matches the refused append's event is still written.
#[actix_rt::test]
async fn an_append_over_its_budget_is_refused_alone_and_its_batch_mates_do_not_see_it() {
    let database = fresh_database().await;
    let app = spawn_app_on(&database, |s| s.writer.decision_budget_entries = 200).await;
    // 600 events of two halves no event carries together.
    let events: Vec<Value> = (0..600)
        .map(|n| {
            event(
                "Seen",
                &[if n % 2 == 0 { "half:a" } else { "half:b" }],
                "{}",
            )
        })
        .collect();
    assert!(app.append(json!({ "events": events })).await.appended());
    let head = 600;
    let http = client();
    let mut violations = Vec::new();
    for round in 0..5 {
        // Pairs sent at once: the first goes over budget; the second's
        // condition matches the first one's event (both filter, so both go
        // to the decision lane and share batches).
        let requests: Vec<Value> = (0..20)
            .flat_map(|i| {
                let key = format!("pair:{round}:{i}");
                [
                    json!({"events": [event("Claimed", &[&key], "{}")],
                           "condition": {"failIfEventsMatch":
                               {"items": [{"tags": ["half:a", "half:b"]}]}}}),
                    json!({"events": [event("Confirmed", &[&format!("{key}:ok")], "{}")],
                           "condition": {"failIfEventsMatch":
                               {"items": [{"tags": [key], "types": ["Claimed", "Other"]}]},
                                         "after": head}}),
                ]
            })
            .collect();
        let answers = join_all(requests.iter().map(|body| {
            let (http, address) = (http.clone(), app.address.clone());
            async move { post_append(&http, &address, body).await }
        }))
        .await;
        for (n, answer) in answers.iter().enumerate() {
            let expected_ok = n % 2 == 1;
            let ok = if expected_ok {
                answer.appended()
            } else {
                answer.status == 422 && answer.body["error"]["code"] == json!("over_budget")
            };
            if !ok {
                violations.push(format!("round {round}, request {n}: {answer:?}"));
            }
        }
    }
    let claimed = app
        .read(json!({"items": [{"types": ["Claimed"]}]}), json!({}))
        .await;
    if !claimed.is_empty() {
        violations.push(format!(
            "{} over-budget appends were written",
            claimed.len()
        ));
    }
    assert!(violations.is_empty(), "{violations:#?}");
}
