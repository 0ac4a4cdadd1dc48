//! Plan stability: every read statement crablet prepares, and the id lookup
//! of the batch append, runs as an index scan under a generic plan (crablet forces generic plans), on a
//! store large enough for a sequential scan to look attractive to the planner.

use serde_json::{json, Value};

use crate::helpers::{event, fresh_database, spawn_app_on};

const EVENTS: usize = 20_000;
const PER_APPEND: usize = 1_000;

/// (name, SQL file, parameters for EXPLAIN EXECUTE)
const STATEMENTS: &[(&str, &str, &str)] = &[
    (
        "read_all_forward",
        include_str!("../../sql/queries/read_all_forward.sql"),
        "(int8, int8, int8)",
    ),
    (
        "read_all_backward",
        include_str!("../../sql/queries/read_all_backward.sql"),
        "(int8, int8, int8)",
    ),
    (
        "read_key_forward",
        include_str!("../../sql/queries/read_key_forward.sql"),
        "(int8, int8, int8, text[], text[], int8)",
    ),
    (
        "read_key_backward",
        include_str!("../../sql/queries/read_key_backward.sql"),
        "(int8, int8, int8, text[], text[], int8)",
    ),
    (
        "read_probes_forward",
        include_str!("../../sql/queries/read_probes_forward.sql"),
        "(text, int8, int8, int8)",
    ),
    (
        "read_probes_backward",
        include_str!("../../sql/queries/read_probes_backward.sql"),
        "(text, int8, int8, int8)",
    ),
    (
        // A probe of several tags, driven by its rarest (crablet_rarest).
        "read_probes_rarest",
        include_str!("../../sql/queries/read_probes_forward.sql"),
        "(text, int8, int8, int8)",
    ),
    (
        // The id lookup of crablet_append_batch (sql/migrations/004), as
        // the function runs it for a batch whose events carry ids.
        "stored_ids",
        "SELECT l.append, e.position, e.id, e.type, e.tags, e.data, e.metadata \
         FROM unnest($1, $2) AS l(append, id) JOIN events e ON e.id = l.id",
        "(int4[], text[])",
    ),
];

fn arguments(name: &str) -> String {
    let key = crablet::dcb::footprint::tag_key("t:7");
    match name {
        n if n.starts_with("read_all") => "(0, 9223372036854775807, 1000)".into(),
        n if n.starts_with("read_key") => format!("({key}, 0, 9223372036854775807, '{{}}', '{{}}', 1000)"),
        "stored_ids" => "('{0,0,1}', '{id-1,id-2,id-3}')".into(),
        "read_probes_rarest" => format!(
            "('[{{\"k\": {key}, \"tags\": [\"t:7\", \"x\"], \"types\": [], \"ks\": [{key}, {}]}}]', 0, 9223372036854775807, 1000)",
            crablet::dcb::footprint::tag_key("x")
        ),
        _ => format!(
            "('[{{\"k\": {key}, \"tags\": [], \"types\": []}}, {{\"k\": {}, \"tags\": [], \"types\": []}}]', 0, 9223372036854775807, 1000)",
            crablet::dcb::footprint::type_key("Even")
        ),
    }
}

#[actix_rt::test]
async fn every_read_statement_is_an_index_scan_under_a_generic_plan() {
    let database = fresh_database().await;
    let app = spawn_app_on(&database, |_| {}).await;
    for chunk in 0..EVENTS / PER_APPEND {
        let events: Vec<Value> = (0..PER_APPEND)
            .map(|i| {
                let n = chunk * PER_APPEND + i;
                let mut e = event(
                    if n.is_multiple_of(2) { "Even" } else { "Odd" },
                    &[&format!("t:{}", n % 100)],
                    "{}",
                );
                if n.is_multiple_of(2) {
                    e["id"] = json!(format!("e-{n}"));
                }
                e
            })
            .collect();
        assert!(app.append(json!({ "events": events })).await.appended());
    }

    let (client, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls)
        .await
        .expect("connect");
    actix_rt::spawn(connection);
    client
        .batch_execute("ANALYZE; SET plan_cache_mode = force_generic_plan")
        .await
        .expect("analyze");
    let mut unstable = Vec::new();
    for (name, sql, types) in STATEMENTS {
        client
            .batch_execute(&format!("PREPARE {name} {types} AS {sql}"))
            .await
            .unwrap_or_else(|e| panic!("prepare {name}: {e}"));
        let plan: Vec<String> = client
            .query(&format!("EXPLAIN EXECUTE {name}{}", arguments(name)), &[])
            .await
            .unwrap_or_else(|e| panic!("explain {name}: {e}"))
            .iter()
            .map(|row| row.get(0))
            .collect();
        let plan = plan.join("\n");
        if plan.contains("Seq Scan") || !plan.contains("Index") {
            unstable.push(format!("{name}:\n{plan}"));
        }
    }
    assert!(
        unstable.is_empty(),
        "plans that do not use an index:\n{}",
        unstable.join("\n\n")
    );
}
