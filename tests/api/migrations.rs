//! Schema migrations: concurrent start-ups on one empty database, function
//! migrations re-applied when their text changes, edited schema migrations
//! refused.

use crablet::app::Application;
use crablet::config::Settings;
use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::{
    client, db_client, event, fresh_database, post_append, spawn_app_on, spawn_process,
};

/// Servers started at the same instant per round, in-process.
const SERVERS_PER_ROUND: usize = 8;
/// Rounds, each on a fresh empty database.
const ROUNDS: usize = 4;

fn settings_for(database_url: &str) -> Settings {
    let mut settings = crate::helpers::settings_for(database_url);
    settings.http.workers = 1;
    settings
}

#[actix_rt::test]
async fn servers_started_at_the_same_instant_on_an_empty_database_all_come_up_and_serve() {
    let http = client();
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let database = fresh_database().await;
        // Two `crablet serve` processes in the first round, beside the
        // in-process servers, all polled from the same instant.
        let processes = async {
            if round == 0 {
                join_all([spawn_process(&database), spawn_process(&database)]).await
            } else {
                Vec::new()
            }
        };
        let builds =
            join_all((0..SERVERS_PER_ROUND).map(|_| Application::build(settings_for(&database))));
        let (processes, builds) = futures_util::join!(processes, builds);
        let mut addresses: Vec<String> = processes.iter().map(|p| p.address.clone()).collect();
        for build in builds {
            match build {
                Ok(app) => {
                    addresses.push(format!("http://127.0.0.1:{}", app.port()));
                    actix_rt::spawn(app.run_until_stopped());
                }
                Err(e) => failures.push(format!("round {round}: {e}")),
            }
        }
        for (i, address) in addresses.iter().enumerate() {
            let body = json!({"events": [event("Started", &[&format!("server:{i}")], "")]});
            let answer = post_append(&http, address, &body).await;
            if !answer.appended() {
                failures.push(format!("round {round}: server {i} answered {answer:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
}

#[actix_rt::test]
async fn a_function_migration_whose_text_changed_is_applied_again_on_an_existing_database() {
    let database = fresh_database().await;
    let first = spawn_app_on(&database, |_| {}).await;
    first.append_event(event("A", &[], "")).await;

    // The database as an older build left it: the batch function has other
    // text (here: none at all) and its recorded checksum is not this build's;
    // the schema migrations were recorded without a checksum.
    let db = db_client(&database).await;
    db.batch_execute(
        "DROP FUNCTION crablet_append_batch;
         UPDATE crablet_schema_migrations SET checksum = 'older' WHERE version = 4;
         UPDATE crablet_schema_migrations SET checksum = NULL WHERE version < 4;",
    )
    .await
    .expect("tamper with the schema");

    let second = spawn_app_on(&database, |_| {}).await;
    let answer = second
        .append(json!({"events": [event("B", &[], "")]}))
        .await;
    assert!(answer.appended(), "append after the restart: {answer:?}");
    let unrecorded: i64 = db
        .query_one(
            "SELECT count(*) FROM crablet_schema_migrations
             WHERE checksum IS NULL OR checksum = 'older'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(unrecorded, 0, "every migration has this build's checksum");
}

#[actix_rt::test]
async fn a_schema_migration_edited_after_it_was_applied_stops_the_start_with_a_clear_message() {
    let database = fresh_database().await;
    let _first = spawn_app_on(&database, |_| {}).await;
    let db = db_client(&database).await;
    db.batch_execute("UPDATE crablet_schema_migrations SET checksum = 'edited' WHERE version = 2")
        .await
        .expect("tamper with the checksum");

    let error = match Application::build(settings_for(&database)).await {
        Ok(_) => panic!("a server started on a database whose migration 002 was edited"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("002 event_keys") && error.contains("edited"),
        "{error}"
    );
}
