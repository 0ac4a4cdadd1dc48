//! Valid requests whose cost grows with the store, sent as a hostile or a
//! careless client would, while innocent clients work beside them.
//!
//! Every event of the store carries one common tag (a tenant), so every
//! query over it is as large as the store. Each test measures the innocent
//! load (conditional appenders, one-tag readers, a `/health` prober) alone,
//! then again while the attack runs, and asserts that the innocent appends
//! and reads keep at least a third of their throughput, that none of their
//! requests fails, that `/health` answers 200 throughout, and that the
//! offending requests get their documented answer.
//!
//! A test binary of its own: cargo runs test binaries one after another, so
//! no other suite's load disturbs the throughput measured here, and the tests
//! below take a lock so that only one attack runs at a time.

#[path = "../api/helpers/mod.rs"]
#[allow(dead_code, unused_imports)]
mod helpers;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{json, Value};

use helpers::{client, spawn_app_with, TestApp};

/// Events in the store (all under the common tag).
const EVENTS: usize = 40_000;
const COMMON: &str = "tenant:all";
/// How long each load phase runs.
const PHASE: Duration = Duration::from_secs(3);
/// Innocent clients of each kind, each pausing between requests: a light
/// load, well under what the server can take.
const APPENDERS: usize = 4;
const READERS: usize = 4;
const PAUSE: Duration = Duration::from_millis(5);

/// One attack at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the innocent clients did in one phase.
#[derive(Debug, Default)]
struct Innocents {
    appends: u64,
    reads: u64,
    failures: Vec<String>,
    health_failures: Vec<String>,
    health_probes: u64,
}

impl Innocents {
    fn appends_per_s(&self) -> f64 {
        self.appends as f64 / PHASE.as_secs_f64()
    }

    fn reads_per_s(&self) -> f64 {
        self.reads as f64 / PHASE.as_secs_f64()
    }
}

/// A store of [`EVENTS`] events, every one under [`COMMON`], a tag of its own
/// (`u:<n>`) and one of two halves (`half:a`, `half:b`: no event has both),
/// with the guard that keeps other attacks off while it is held.
async fn victim(
    tune: impl FnOnce(&mut crablet::config::Settings),
) -> (tokio::sync::MutexGuard<'static, ()>, TestApp) {
    let one = ONE_AT_A_TIME.lock().await;
    let app = spawn_app_with(tune).await;
    for chunk in 0..EVENTS / 1000 {
        let events: Vec<Value> = (0..1000)
            .map(|i| {
                let n = chunk * 1000 + i;
                let half = if n % 2 == 0 { "half:a" } else { "half:b" };
                json!({"type": "Seen", "tags": [COMMON, format!("u:{n}"), half],
                       "data": "{\"amount\": 1}"})
            })
            .collect();
        let answer = app.append(json!({"events": events})).await;
        assert_eq!(answer.status, 200, "loading the store: {:?}", answer.body);
    }
    (one, app)
}

/// Counted, or why not.
type Failures = Arc<std::sync::Mutex<Vec<String>>>;

/// Sends `request()` until `stop`, pausing `pause` after each: counted in
/// `done` when it succeeds, its failure kept in `failures` otherwise.
fn innocent_loop<F, R>(
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicU64>,
    failures: &Failures,
    pause: Duration,
    mut request: F,
) -> actix_rt::task::JoinHandle<()>
where
    F: FnMut() -> R + 'static,
    R: std::future::Future<Output = Result<(), String>> + 'static,
{
    let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
    actix_rt::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            match request().await {
                Ok(()) => {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Err(failure) => failures.lock().unwrap().push(failure),
            }
            actix_rt::time::sleep(pause).await;
        }
    })
}

/// `Ok` for a 200 (with `events` events, when given); otherwise what came.
async fn checked(
    what: &str,
    sent: reqwest::Result<reqwest::Response>,
    events: Option<usize>,
) -> Result<(), String> {
    let response = sent.map_err(|e| format!("{what}: {e}"))?;
    let status = response.status();
    if status != 200 {
        let text = response.text().await.unwrap_or_default();
        return Err(format!("{what} {status}: {text}"));
    }
    if let Some(expected) = events {
        let got: Vec<Value> = response.json().await.map_err(|e| format!("{what}: {e}"))?;
        if got.len() != expected {
            return Err(format!("{what}: {} events, {expected} expected", got.len()));
        }
    }
    Ok(())
}

/// Runs the innocent load for [`PHASE`].
async fn innocents(app: &TestApp, phase: &str) -> Innocents {
    let http = client();
    let stop = Arc::new(AtomicBool::new(false));
    let (appends, reads, probes) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let failures: Failures = Arc::default();
    let health_failures: Failures = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..APPENDERS {
        let (http, address, phase) = (http.clone(), app.address.clone(), phase.to_string());
        let mut n = 0;
        tasks.push(innocent_loop(
            &stop,
            &appends,
            &failures,
            PAUSE,
            move || {
                n += 1;
                let key = format!("innocent:{phase}:{c}:{n}");
                let body = json!({
                    "events": [{"type": "Registered", "tags": [key], "data": "{}"}],
                    "condition": {"failIfEventsMatch": {"items": [{"tags": [key]}]}}
                });
                let sent = http.post(format!("{address}/append")).json(&body).send();
                async move { checked("append", sent.await, None).await }
            },
        ));
    }
    for c in 0..READERS {
        let (http, address) = (http.clone(), app.address.clone());
        let mut n = c;
        tasks.push(innocent_loop(&stop, &reads, &failures, PAUSE, move || {
            n = (n * 7919 + 13) % EVENTS;
            let query = json!({"items": [{"tags": [format!("u:{n}")]}]}).to_string();
            let sent = http
                .get(format!("{address}/read"))
                .query(&[("query", query)])
                .send();
            async move { checked("read", sent.await, Some(1)).await }
        }));
    }
    let (http, address) = (http.clone(), app.address.clone());
    tasks.push(innocent_loop(
        &stop,
        &probes,
        &health_failures,
        Duration::from_millis(50),
        move || {
            let sent = http.get(format!("{address}/health")).send();
            async move { checked("health", sent.await, None).await }
        },
    ));
    actix_rt::time::sleep(PHASE).await;
    stop.store(true, Ordering::Relaxed);
    join_all(tasks).await;
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    let health_failures = std::mem::take(&mut *health_failures.lock().unwrap());
    Innocents {
        appends: appends.load(Ordering::Relaxed),
        reads: reads.load(Ordering::Relaxed),
        failures,
        health_failures,
        health_probes: probes.load(Ordering::Relaxed),
    }
}

/// A request body, serialized when it is sent.
#[derive(Clone)]
struct Body(Arc<String>);

impl From<Value> for Body {
    fn from(value: Value) -> Self {
        Body(Arc::new(value.to_string()))
    }
}

impl std::fmt::Display for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the attacker's requests were answered: status and body.
type Answers = Vec<(u16, Value)>;

/// Sends `request(n)` from `clients` loops until the innocent phase ends.
async fn attack(
    app: &TestApp,
    clients: usize,
    request: impl Fn(usize) -> (&'static str, Body) + Clone + 'static,
) -> (Innocents, Answers) {
    let http = client();
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let attackers: Vec<_> = (0..clients)
        .map(|c| {
            let (http, address, stop) = (http.clone(), app.address.clone(), stop.clone());
            let (answers, request) = (answers.clone(), request.clone());
            actix_rt::spawn(async move {
                let mut n = c * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let (path, body) = request(n);
                    let sent = http
                        .post(format!("{address}{path}"))
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await;
                    let answer = match sent {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            (status, r.json().await.unwrap_or(Value::Null))
                        }
                        Err(e) => (0, json!(e.to_string())),
                    };
                    answers.lock().unwrap().push(answer);
                }
            })
        })
        .collect();
    let innocents = innocents(app, "attacked").await;
    stop.store(true, Ordering::Relaxed);
    join_all(attackers).await;
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    (innocents, answers)
}

/// Runs the innocent load alone, then beside `clients` attackers sending
/// `request`; asserts what the innocents must keep and returns the
/// attacker's answers.
async fn under_attack(
    app: &TestApp,
    clients: usize,
    request: impl Fn(usize) -> (&'static str, Body) + Clone + 'static,
) -> Answers {
    let before = innocents(app, "alone").await;
    assert!(
        before.failures.is_empty() && before.health_failures.is_empty(),
        "the innocent load fails on its own: {before:?}"
    );
    let (during, answers) = attack(app, clients, request).await;
    let summary = format!(
        "appends/s {:.0} -> {:.0}, reads/s {:.0} -> {:.0}, health probes {} ({} failed); \
         attacker sent {}",
        before.appends_per_s(),
        during.appends_per_s(),
        before.reads_per_s(),
        during.reads_per_s(),
        during.health_probes,
        during.health_failures.len(),
        answers.len()
    );
    eprintln!("{summary}");
    let failed: Vec<&String> = during.failures.iter().take(5).collect();
    assert!(
        during.failures.is_empty(),
        "innocent requests failed during the attack ({summary}): {failed:?}"
    );
    assert!(
        during.health_failures.is_empty() && during.health_probes > 0,
        "/health did not answer 200 throughout ({summary}): {:?}",
        during.health_failures.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        during.appends_per_s() >= before.appends_per_s() / 3.0,
        "innocent appends lost more than two thirds of their throughput: {summary}"
    );
    assert!(
        during.reads_per_s() >= before.reads_per_s() / 3.0,
        "innocent reads lost more than two thirds of their throughput: {summary}"
    );
    assert!(!answers.is_empty(), "the attacker got no answer at all");
    answers
}

fn statuses(answers: &Answers) -> Vec<u16> {
    let mut seen: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    seen.sort_unstable();
    seen.dedup();
    seen
}

/// Asserts that every answer has `status` and a message naming each of
/// `named`.
fn assert_refused(answers: &Answers, status: u16, named: &[&str]) {
    for (got, body) in answers {
        assert_eq!(*got, status, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            named.iter().all(|name| message.contains(name)),
            "the answer names {named:?}: {message}"
        );
    }
}

/// An attacker's append of one event with a condition of `items`.
fn conditional_attempt(n: usize, items: Vec<Value>) -> (&'static str, Body) {
    let condition = json!({"failIfEventsMatch": {"items": items}});
    (
        "/append",
        json!({"events": one_event(n), "condition": condition}).into(),
    )
}

/// An attacker's append of one event with the requirements `require`.
fn required_attempt(n: usize, require: Value) -> (&'static str, Body) {
    (
        "/append",
        json!({"events": one_event(n), "require": require}).into(),
    )
}

/// `count` condition items over both halves, tags no event carries together.
fn both_halves(count: usize) -> Vec<Value> {
    vec![json!({"tags": ["half:a", "half:b"]}); count]
}

fn one_event(n: usize) -> Value {
    json!([{"type": "Attempted", "tags": [format!("attacker:{n}")], "data": "{}"}])
}

#[actix_rt::test]
async fn a_requirement_over_the_common_tag_does_not_stall_other_appends() {
    let (_one, app) = victim(|_| {}).await;
    // A new projector every time (its path differs), so no state is ever
    // remembered for it: every one is a first evaluation over the store.
    let answers = under_attack(&app, 4, |n| {
        let require: Vec<Value> = (0..32)
            .map(|r| {
                json!({"projector": {"query": {"items": [{"tags": [COMMON]}]},
                                     "reduce": "sum", "path": format!("/amount{n}x{r}")},
                       "op": "lt", "value": 1e12})
            })
            .collect();
        required_attempt(n, Value::Array(require))
    })
    .await;
    for (status, body) in &answers {
        assert!(
            *status == 200 || (*status == 422 && body["error"]["code"] == "over_budget"),
            "a requirement is decided, or refused as over budget: {status} {body}"
        );
    }
}

#[actix_rt::test]
async fn without_remembered_states_a_requirement_over_the_common_tag_is_over_budget() {
    let (_one, app) = victim(|s| s.projections.state_cache_bytes = 0).await;
    let answers = under_attack(&app, 4, |n| {
        let require = json!([{"projector": {"query": {"items": [{"tags": [COMMON]}]},
                                            "reduce": "count"},
                              "op": "lt", "value": 1e12}]);
        required_attempt(n, require)
    })
    .await;
    assert_refused(&answers, 422, &["require[0]", "5000"]);
    assert!(answers
        .iter()
        .all(|(_, body)| body["error"]["code"] == "over_budget"));
}

#[actix_rt::test]
async fn a_condition_over_the_common_tag_costs_its_rarest_tag_or_is_over_budget() {
    let (_one, app) = victim(|_| {}).await;
    // 64 items [common, rare]: each costs its rare tag.
    let answers = under_attack(&app, 4, |n| {
        let items: Vec<Value> = (0..64)
            .map(|i| json!({"tags": [COMMON, format!("nomatch:{n}:{i}")]}))
            .collect();
        conditional_attempt(n, items)
    })
    .await;
    assert_eq!(statuses(&answers), vec![200], "{:?}", &answers[..1]);
    assert!(answers
        .iter()
        .all(|(_, body)| body["appendConditionFailed"] == false));
    // Two common tags no event carries together: no rare tag to drive it.
    let answers = under_attack(&app, 4, |n| conditional_attempt(n, both_halves(64))).await;
    assert_refused(
        &answers,
        422,
        &["condition.failIfEventsMatch.items[0]", "5000"],
    );
}

#[actix_rt::test]
async fn a_slow_decision_runs_in_the_decision_lane_beside_plain_appends() {
    // An operator raised the budget: a decision may now take seconds. It
    // takes them in the decision lane, not in the plain appends' batches.
    let (_one, app) = victim(|s| s.writer.decision_budget_entries = 1_000_000).await;
    let answers = under_attack(&app, 2, |n| conditional_attempt(n, both_halves(8))).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
}

#[actix_rt::test]
async fn wide_reads_and_cold_projections_do_not_starve_reads_or_health() {
    let (_one, app) = victim(|_| {}).await;
    // Ten counts over the common tag, new projectors every time (cold).
    let answers = under_attack(&app, 8, |n| {
        let projectors: Vec<Value> = (0..10)
            .map(|p| {
                json!({"id": format!("p{p}"), "reduce": "count",
                       "query": {"items": [{"tags": [COMMON], "types": ["Seen", format!("T{n}x{p}")]}]}})
            })
            .collect();
        ("/project", json!({"projectors": projectors}).into())
    })
    .await;
    for (status, body) in &answers {
        let busy = *status == 503 && body["error"]["code"] == "unavailable";
        assert!(
            *status == 200 || busy || *status == 422,
            "a projection is answered, or refused as busy or over budget: {status} {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.contains("written"),
            "a refused read speaks of reading: {message}"
        );
    }
    // 64 items [common, rare], and items of two halves no event carries.
    let answers = under_attack(&app, 8, |n| {
        let mut items: Vec<Value> = (0..63)
            .map(|i| json!({"tags": [COMMON, format!("u:{}", (n * 64 + i) % EVENTS)]}))
            .collect();
        items.extend(both_halves(1));
        ("/read", json!({"query": {"items": items}}).into())
    })
    .await;
    for (status, body) in &answers {
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            *status == 200 || *status == 503 || *status == 422,
            "{status} {body}"
        );
        assert!(!message.contains("written"), "{message}");
    }
}

#[actix_rt::test]
async fn an_append_with_too_many_index_entries_is_refused_before_it_costs_anything() {
    let (_one, app) = victim(|_| {}).await;
    // Made once: the attacker's own CPU is not what is measured.
    let events: Vec<Value> = (0..1000)
        .map(|e| {
            let tags: Vec<String> = (0..64).map(|t| format!("wide:{e}:{t}")).collect();
            json!({"type": "Wide", "tags": tags, "data": "{}"})
        })
        .collect();
    let body = Arc::new(json!({"events": events}).to_string());
    let answers = under_attack(&app, 2, move |_| ("/append", Body(body.clone()))).await;
    assert_refused(&answers, 400, &["4096", "index entries"]);
}

/// The costs the tests above rely on, measured once on an idle server: an
/// item of a common and a rare tag costs what the rare tag costs.
#[actix_rt::test]
async fn an_item_costs_its_rarest_tag_in_reads_conditions_and_requirements() {
    let (_one, app) = victim(|_| {}).await;
    let time = |body: Value, path: &'static str| {
        let (http, address) = (app.http.clone(), app.address.clone());
        async move {
            let started = Instant::now();
            let response = http
                .post(format!("{address}{path}"))
                .json(&body)
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 200);
            (started.elapsed(), response.json::<Value>().await.unwrap())
        }
    };
    let rare = json!({"items": [{"tags": ["u:17"]}]});
    let both = json!({"items": [{"tags": [COMMON, "u:17"]}]});
    let reversed = json!({"items": [{"tags": ["u:17", COMMON]}]});
    for query in [&both, &reversed] {
        let (_, events) = time(json!({"query": query}), "/read").await;
        assert_eq!(events.as_array().map(Vec::len), Some(1), "{events}");
    }
    let count =
        |query: &Value| json!({"projectors": [{"id": "c", "reduce": "count", "query": query}]});
    let (_, warm) = time(count(&rare), "/project").await;
    assert_eq!(warm["states"]["c"], 1);
    // First evaluations (a different type list every time, so nothing is
    // remembered) of a count over [common, rare], against the same over
    // [common] alone, which must visit the whole store.
    let median = |tags: Vec<&'static str>, expected: usize| async move {
        let mut took = Vec::new();
        for n in 0..5 {
            let query =
                json!({"items": [{"tags": tags, "types": ["Seen", format!("T{expected}x{n}")]}]});
            let (elapsed, answer) = time(count(&query), "/project").await;
            assert_eq!(answer["states"]["c"], expected, "{answer}");
            took.push(elapsed);
        }
        took.sort();
        took[2]
    };
    let whole = median(vec![COMMON], EVENTS).await;
    let rare = median(vec![COMMON, "u:17"], 1).await;
    assert!(
        rare * 3 < whole,
        "a count over [common, rare] took {rare:?}, over [common] {whole:?}: \
         driven by the common tag?"
    );
}
