//! A PostgreSQL restart under a running server: the first requests after it
//! succeed (no stale pooled connection is handed out) and nothing
//! acknowledged before it is lost.

use serde_json::json;

use crate::helpers::{event, spawn_app_on, OwnCluster};

#[actix_rt::test]
async fn after_a_postgresql_restart_the_next_requests_succeed_and_nothing_is_lost() {
    let mut cluster = OwnCluster::start().await;
    let url = cluster.url();
    let app = spawn_app_on(&url, |_| {}).await;
    for i in 0..5 {
        app.append_event(event("Before", &["t"], &i.to_string()))
            .await;
    }
    assert_eq!(
        app.read_all().await.len(),
        5,
        "reads warm the reader pool too"
    );

    cluster.restart().await;

    let mut failures = 0;
    for i in 0..5 {
        let answer = app
            .append(json!({"events": [event("After", &["t"], &i.to_string())]}))
            .await;
        failures += (!answer.appended()) as usize;
    }
    let (status, _) = app.raw(reqwest::Method::GET, "/health", None).await;
    let events = app.read_all().await;
    eprintln!(
        "after a restart: {failures} failed appends, health {status}, {} events",
        events.len()
    );
    assert_eq!((failures, status, events.len()), (0, 200, 10));
}
