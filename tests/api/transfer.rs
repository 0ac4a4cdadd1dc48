//! `crablet export` and `crablet import` on a store of 100,000 events with
//! ids, metadata, odd tags and odd data: imported into an empty database,
//! the two stores' `/read` answers are byte for byte the same, positions
//! included; an import killed halfway and run again stores nothing twice.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cli::crablet;
use crate::helpers::{client, head_of, read_raw, send_signal, spawn_app, TempDir, TestApp};

const EVENTS: usize = 100_000;
const PER_APPEND: usize = 500;

/// Event `n`: an id on two of three, metadata on one of four, tags with
/// quotes, commas, spaces and non-ASCII letters, data that is JSON with
/// escapes, plain text, or empty.
fn event(n: usize) -> Value {
    let mut tags = vec![format!("n:{n}"), format!("group:{}", n % 97)];
    match n % 5 {
        0 => tags.push(r#"quote"d,comma"#.into()),
        1 => tags.push("ünïcødé:✓ space".into()),
        2 => tags.push("k:v:w\\back".into()),
        _ => {}
    }
    let data = match n % 4 {
        0 => json!({"n": n, "s": "line\nbreak \u{2028} \"q\" </script>"}).to_string(),
        1 => format!("plain text {n} <>&"),
        2 => String::new(),
        _ => json!({"n": n, "nested": {"a": [1, 2.5, null, true]}}).to_string(),
    };
    let mut event = json!({"type": format!("Type{}", n % 7), "tags": tags, "data": data});
    if !n.is_multiple_of(3) {
        event["id"] = json!(format!("event-{n}"));
    }
    if n.is_multiple_of(4) {
        event["metadata"] = json!(json!({"correlation": n}).to_string());
    }
    event
}

/// A source store of `EVENTS` events.
async fn source() -> TestApp {
    let app = spawn_app().await;
    let http = client();
    for start in (0..EVENTS).step_by(PER_APPEND) {
        let events: Vec<Value> = (start..start + PER_APPEND).map(event).collect();
        let response = http
            .post(format!("{}/append", app.address))
            .json(&json!({ "events": events }))
            .send()
            .await
            .expect("append");
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    app
}

#[actix_rt::test]
async fn an_export_imported_into_an_empty_store_reads_the_same_byte_for_byte() {
    let source = source().await;
    let dir = TempDir::new("export");
    let file = dir.0.join("events.ndjson");
    let exported = tokio::process::Command::new(env!("CARGO_BIN_EXE_crablet"))
        .args(["export", "--url", &source.address])
        .stdout(std::fs::File::create(&file).expect("create"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("run export")
        .wait_with_output()
        .await
        .expect("export");
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let text = std::fs::read_to_string(&file).expect("read export");
    assert_eq!(
        text.lines().count(),
        EVENTS,
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let (source_head, source_body) = read_raw(&source.http, &source.address).await;
    let path = file.to_str().expect("path");

    // Into an empty store: the same answers.
    let target = spawn_app().await;
    let imported = crablet(&target.address, &["import", path]).await;
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let (target_head, target_body) = read_raw(&target.http, &target.address).await;
    assert_eq!(source_head, target_head);
    assert_eq!(source_body.len(), target_body.len());
    assert!(source_body == target_body, "the /read answers differ");

    // Killed halfway, then run again: it goes on, nothing twice.
    let second = spawn_app().await;
    let mut import = tokio::process::Command::new(env!("CARGO_BIN_EXE_crablet"))
        .args(["import", path, "--url", &second.address])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn import");
    let started = Instant::now();
    while head_of(&second.http, &second.address).await < (EVENTS / 3) as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the import stalled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send_signal(import.id().expect("pid"), "KILL");
    import.wait().await.expect("wait");
    let halfway = head_of(&second.http, &second.address).await;
    assert!(halfway < EVENTS as i64, "killed after it finished");
    let again = crablet(&second.address, &["import", path]).await;
    let said = String::from_utf8_lossy(&again.stderr).to_string();
    assert!(again.status.success(), "{said}");
    assert!(said.contains("were already stored"), "{said}");
    let (second_head, second_body) = read_raw(&second.http, &second.address).await;
    assert_eq!(source_head, second_head);
    assert!(
        source_body == second_body,
        "the /read answers differ after the rerun"
    );

    // Into a store that is neither empty nor a prefix of the file: refused.
    let other = spawn_app().await;
    let appended = crablet(&other.address, &["append", "--type", "E", "--data", "{}"]).await;
    assert!(appended.status.success());
    let refused = crablet(&other.address, &["import", path]).await;
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("is not empty"), "{said}");
    assert_eq!(
        head_of(&other.http, &other.address).await,
        1,
        "nothing imported"
    );
}
