//! `/metrics`: the metric table of `docs/operations.md` against what is exported, the
//! values of the append, pool and head metrics, and gzip on request.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{
    assert_same_set, event, fresh_database, spawn_app, spawn_app_on, unless_tagged, TestApp,
};

/// Metrics the documentation lists that only a server with replicas
/// exports, one series per replica (`replicas.rs` checks that it does). A
/// documented metric missing from `/metrics` fails the table test unless it
/// is listed here.
pub const EXPECTED_WITH_REPLICAS: &[&str] = &[
    "crablet_replica_up",
    "crablet_replica_lag_positions",
    "crablet_replica_lag_seconds",
    "crablet_replica_requests_total",
];

/// The operations page, as the repository ships it.
const OPERATIONS: &str = include_str!("../../docs/operations.md");

/// The metric names in the table under "## Metrics" of `docs/operations.md`: the first
/// cell of each row, in backquotes.
pub fn documented_metrics() -> BTreeSet<String> {
    let section = OPERATIONS
        .split("\n## Metrics\n")
        .nth(1)
        .expect("docs/operations.md has a ## Metrics section");
    // Up to the next heading of any level.
    let section = section.split("\n#").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_string)
        .collect()
}

/// The metric families in a text exposition, from its `# TYPE` lines.
pub fn exported_families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The value of one series, written as it appears in the exposition
/// (`name{label="value",...}`, labels in name order).
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

pub async fn scrape(app: &TestApp) -> String {
    let (status, body) = app.raw(Method::GET, "/metrics", None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Touches every route and append outcome, so that every labelled family
/// has a series.
async fn exercise(app: &TestApp) {
    let first = app
        .append(json!({"events": [event("E", &["k:1"], "")], "condition": unless_tagged(&["k:1"], None)}))
        .await;
    assert!(first.appended(), "{first:?}");
    let second = app
        .append(json!({"events": [event("E", &["k:1"], "")], "condition": unless_tagged(&["k:1"], None)}))
        .await;
    assert!(second.rejected(), "{second:?}");
    app.read_all().await;
    let (status, _) = app.raw(Method::GET, "/health", None).await;
    assert_eq!(status, 200);
}

#[actix_rt::test]
async fn every_exported_metric_is_in_the_documented_table_and_every_documented_one_is_exported() {
    let app = spawn_app().await;
    exercise(&app).await;
    let exported = exported_families(&scrape(&app).await);
    let documented = documented_metrics();
    assert!(
        documented.len() > 20,
        "the metric table of docs/operations.md was not found: {documented:?}"
    );

    assert_same_set(
        &exported,
        &documented,
        |name| EXPECTED_WITH_REPLICAS.contains(&name.as_str()),
        "exported by /metrics but missing from the metric table of docs/operations.md",
        "documented in docs/operations.md but not exported by /metrics",
    );
}

#[actix_rt::test]
async fn append_metrics_count_conditions_batches_waits_and_the_head_position() {
    let app = spawn_app().await;
    for tag in ["a", "b"] {
        let answer = app
            .append(json!({"events": [event("E", &[tag], "")], "condition": unless_tagged(&[tag], None)}))
            .await;
        assert!(answer.appended(), "{answer:?}");
    }
    let conflict = app
        .append(
            json!({"events": [event("E", &["a"], "")], "condition": unless_tagged(&["a"], None)}),
        )
        .await;
    assert!(conflict.rejected(), "{conflict:?}");
    let plain = app
        .append(json!({"events": [event("E", &["c"], ""), event("E", &["c"], ""), event("E", &["c"], "")]}))
        .await;
    assert!(plain.appended(), "{plain:?}");

    let text = scrape(&app).await;
    let value = |series: &str| {
        sample(&text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    };
    assert_eq!(
        value(r#"crablet_append_conditions_total{lane="0",outcome="accepted"}"#),
        2.0
    );
    assert_eq!(
        value(r#"crablet_append_conditions_total{lane="0",outcome="rejected"}"#),
        1.0
    );
    assert_eq!(value("crablet_head_position"), 5.0);
    assert_eq!(value("crablet_events_appended_total"), 5.0);
    // One append at a time: one batch each, every stage observed per append.
    assert_eq!(value("crablet_append_duration_seconds_count"), 4.0);
    assert_eq!(value("crablet_append_queue_wait_seconds_count"), 4.0);
    assert_eq!(value("crablet_writer_batch_database_seconds_count"), 4.0);
    assert_eq!(value("crablet_writer_batch_events_count"), 4.0);
    assert_eq!(value("crablet_writer_batch_events_sum"), 5.0);
    assert!(
        value("crablet_append_duration_seconds_sum")
            >= value("crablet_writer_batch_database_seconds_sum"),
        "a whole append takes at least its database time"
    );
    assert_eq!(
        value(&format!(
            r#"crablet_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert_eq!(value("crablet_writer_max_pending_appends"), 10000.0);
    // The lane holds its connection; the reader pool is sized by config.
    assert_eq!(
        value(r#"crablet_pool_connections{pool="writer",state="in_use"}"#),
        1.0
    );
    assert_eq!(value(r#"crablet_pool_max_connections{pool="reader"}"#), 8.0);
    assert_eq!(value(r#"crablet_pool_waiting{pool="reader"}"#), 0.0);
    assert!(value("process_resident_memory_bytes") > 0.0);
    assert!(value("process_open_fds") > 0.0);
}

#[actix_rt::test]
async fn a_server_that_only_reads_reports_the_head_position_it_has_read() {
    let database = fresh_database().await;
    let writer = spawn_app_on(&database, |_| {}).await;
    let reader = spawn_app_on(&database, |_| {}).await;
    let answer = writer
        .append(json!({"events": [event("E", &["x"], ""), event("E", &["y"], ""), event("E", &["x"], "")]}))
        .await;
    assert!(answer.appended(), "{answer:?}");

    assert_eq!(
        sample(&scrape(&reader).await, "crablet_head_position"),
        Some(0.0)
    );
    // A backwards read of one tag: the page's highest position counts.
    reader
        .read(
            json!({"items": [{"tags": ["x"]}]}),
            json!({"backwards": true}),
        )
        .await;
    assert_eq!(
        sample(&scrape(&reader).await, "crablet_head_position"),
        Some(3.0)
    );
}

#[actix_rt::test]
async fn metrics_are_gzipped_when_the_scraper_asks_and_other_routes_are_not() {
    let app = spawn_app().await;
    let get = |path: &str| {
        app.http
            .get(format!("{}{path}", app.address))
            .header("accept-encoding", "gzip")
            .send()
    };
    let response = get("/metrics").await.expect("scrape");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-encoding")
            .map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    let body = response.bytes().await.expect("body");
    assert_eq!(&body[..2], &[0x1f, 0x8b], "not a gzip stream");

    let plain = scrape(&app).await;
    assert!(plain.starts_with("# HELP"), "{plain}");
    let health = get("/health").await.expect("health");
    assert!(health.headers().get("content-encoding").is_none());
}
