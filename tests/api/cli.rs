//! The `crablet` command line as a user runs it against a real server:
//! `append`, `read`, `tail`, `head`, `project`, `export` and `import`, their
//! output (NDJSON when piped, as here) and their exit statuses: 0 done, 1
//! the server or the connection failed, 2 a usage error, 3 an append whose
//! condition failed. Every failure is one line on stderr.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crablet::auth::{digest_hex, Scope, TokenSettings};
use crablet::dcb::SequencedEvent;
use serde_json::{json, Value};

use crate::helpers::{free_port, spawn_app, spawn_app_with, TempDir};

/// Runs `crablet <args>` against `url` and waits for it (without
/// blocking the runtime the in-process server runs on).
pub async fn crablet(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_crablet"))
        .args(args)
        .env("CRABLET_URL", url)
        .env_remove("CRABLET_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run crablet")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("utf-8 stderr")
}

/// The one line a failed command prints, and its exit status.
fn failure(output: &Output) -> (i32, String) {
    let text = stderr(output);
    assert_eq!(text.lines().count(), 1, "one line on stderr: {text:?}");
    (
        output.status.code().expect("exit status"),
        text.trim().to_owned(),
    )
}

fn events_in(output: &Output) -> Vec<SequencedEvent> {
    stdout(output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("an event per line"))
        .collect()
}

/// The positions `crablet read <args>` prints.
async fn positions(url: &str, args: &[&str]) -> Vec<i64> {
    let mut all = vec!["read"];
    all.extend_from_slice(args);
    events_in(&crablet(url, &all).await)
        .iter()
        .map(|e| e.position)
        .collect()
}

fn json_of(output: &Output) -> Value {
    serde_json::from_str(stdout(output).trim()).expect("JSON on stdout")
}

#[actix_rt::test]
async fn append_read_head_and_project_print_what_the_server_answered() {
    let app = spawn_app().await;
    let url = app.address.as_str();
    let ada = [
        "append",
        "--type",
        "UserRegistered",
        "--tag",
        "username:ada",
        "--tag",
        "tenant:1",
        "--data",
        r#"{"name":"ada"}"#,
        "--id",
        "user-1",
        "--metadata",
        r#"{"by":"cli"}"#,
    ];
    let first = crablet(url, &ada).await;
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(
        json_of(&first),
        json!({"outcome": "appended", "position": 1, "duplicate": false})
    );
    // The same append again (same id, same content): stored once.
    let again = crablet(url, &ada).await;
    assert!(again.status.success());
    assert_eq!(
        json_of(&again),
        json!({"outcome": "appended", "position": 1, "duplicate": true})
    );
    let taken = r#"{"items":[{"tags":["username:ada"]}]}"#;
    let refused = crablet(
        url,
        &[
            "append",
            "--type",
            "UserRegistered",
            "--tag",
            "username:ada",
            "--data",
            "{}",
            "--fail-if-match",
            taken,
            "--after",
            "0",
        ],
    )
    .await;
    assert_eq!(json_of(&refused), json!({"outcome": "condition_failed"}));
    let (status, line) = failure(&refused);
    assert_eq!(status, 3);
    assert!(line.starts_with("crablet: condition failed"), "{line}");
    let after_read = crablet(
        url,
        &[
            "append",
            "--type",
            "NameChanged",
            "--tag",
            "username:ada",
            "--data",
            r#"{"name":"Ada"}"#,
            "--fail-if-match",
            taken,
            "--after",
            "1",
        ],
    )
    .await;
    assert_eq!(json_of(&after_read)["position"], json!(2));

    let all = events_in(&crablet(url, &["read"]).await);
    assert_eq!(all.len(), 2);
    let first_event = &all[0];
    assert_eq!(
        (
            first_event.position,
            first_event.event_type.as_str(),
            first_event.id.as_deref()
        ),
        (1, "UserRegistered", Some("user-1"))
    );
    assert_eq!(first_event.tags, ["username:ada", "tenant:1"]);
    assert_eq!(first_event.data, r#"{"name":"ada"}"#);
    assert_eq!(first_event.metadata.as_deref(), Some(r#"{"by":"cli"}"#));
    assert!(all[1].id.is_some(), "the CLI gives every event an id");
    assert_eq!(positions(url, &["--tag", "tenant:1"]).await, [1]);
    assert_eq!(
        positions(url, &["--type", "NameChanged", "--type", "UserRegistered"]).await,
        [1, 2]
    );
    assert_eq!(
        positions(url, &["--type", "Other"]).await,
        Vec::<i64>::new()
    );
    assert_eq!(positions(url, &["--backwards", "--limit", "1"]).await, [2]);
    assert_eq!(positions(url, &["--after", "1"]).await, [2]);
    assert_eq!(
        positions(
            url,
            &["--query", r#"{"items":[{"types":["NameChanged"]}]}"#]
        )
        .await,
        [2]
    );

    let head = crablet(url, &["head"]).await;
    assert_eq!(stdout(&head), "2\n");
    // The server's options go before or after the command.
    let elsewhere = format!("http://127.0.0.1:{}", free_port());
    let before = crablet(&elsewhere, &["--url", url, "head"]).await;
    assert_eq!(stdout(&before), "2\n");

    let dir = TempDir::new("cli-project");
    let file = dir.0.join("projectors.json");
    std::fs::write(
        &file,
        r#"{"projectors":[{"id":"names","query":{"items":[{"tags":["username:ada"]}]},"reduce":"count"}]}"#,
    )
    .unwrap();
    let projected = json_of(&crablet(url, &["project", file.to_str().unwrap()]).await);
    assert_eq!(projected["states"]["names"], json!(2));
    assert_eq!(projected["position"], json!(2));
    assert_eq!(projected["condition"]["after"], json!(2));
}

#[actix_rt::test]
async fn failures_are_one_line_with_the_servers_code_and_a_non_zero_status() {
    let app = spawn_app().await;
    let url = app.address.as_str();
    // Not JSON: the command line is wrong.
    let (status, line) = failure(&crablet(url, &["read", "--query", "{items"]).await);
    assert_eq!(status, 2);
    assert!(line.starts_with("crablet: --query:"), "{line}");
    // JSON the server refuses: its code and message.
    let (status, line) = failure(&crablet(url, &["read", "--tag", ""]).await);
    assert_eq!(status, 1);
    assert!(
        line.starts_with("crablet: invalid_request (400): query.items[0].tags[0]"),
        "{line}"
    );
    let (status, line) = failure(&crablet(url, &["append", "--type", "", "--data", "{}"]).await);
    assert_eq!(status, 1);
    assert!(line.starts_with("crablet: invalid_request (400)"), "{line}");
    let (status, _) = failure(&crablet(url, &["project", "/nonexistent/projectors.json"]).await);
    assert_eq!(status, 2);
    // Nothing listening.
    let down = format!("http://127.0.0.1:{}", free_port());
    let (status, line) = failure(&crablet(&down, &["head", "--retry-for", "0.5"]).await);
    assert_eq!(status, 1);
    assert!(
        line.contains("no answer from") && line.contains("could not connect"),
        "{line}"
    );
    let (status, line) = failure(
        &crablet(
            &down,
            &["append", "--type", "E", "--data", "{}", "--retry-for", "0"],
        )
        .await,
    );
    assert_eq!(status, 1);
    assert!(line.contains("no answer from"), "{line}");
}

#[actix_rt::test]
async fn a_refused_token_is_one_line_naming_the_refusal() {
    let token = |name: &str, secret: &str, scopes: &[Scope]| TokenSettings {
        name: name.into(),
        sha256: digest_hex(secret),
        scopes: scopes.to_vec(),
        expires_at: None,
    };
    let app = spawn_app_with(move |s| {
        s.auth.tokens = vec![token("reader", "reader-secret", &[Scope::Read])];
    })
    .await;
    let url = app.address.as_str();
    let (status, line) = failure(&crablet(url, &["head"]).await);
    assert_eq!(status, 1);
    assert!(line.starts_with("crablet: unauthorized (401)"), "{line}");
    let (status, line) = failure(&crablet(url, &["head", "--token", "wrong-secret"]).await);
    assert_eq!(status, 1);
    assert!(line.starts_with("crablet: unauthorized (401)"), "{line}");
    let (status, line) = failure(
        &crablet(
            url,
            &[
                "append",
                "--token",
                "reader-secret",
                "--type",
                "E",
                "--data",
                "{}",
            ],
        )
        .await,
    );
    assert_eq!(status, 1);
    assert!(line.starts_with("crablet: forbidden (403)"), "{line}");
    let head = crablet(url, &["head", "--token", "reader-secret"]).await;
    assert_eq!(
        (stdout(&head).as_str(), head.status.code()),
        ("0\n", Some(0))
    );
}

#[actix_rt::test]
async fn tail_prints_new_events_as_they_are_appended() {
    let app = spawn_app().await;
    let url = app.address.clone();
    let old = crablet(
        &url,
        &[
            "append", "--type", "Old", "--tag", "stream:t", "--data", "{}",
        ],
    )
    .await;
    assert!(old.status.success());
    let mut tail = Command::new(env!("CARGO_BIN_EXE_crablet"))
        .args(["tail", "--tag", "stream:t", "--url", &url])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn crablet tail");
    let lines = BufReader::new(tail.stdout.take().expect("stdout")).lines();
    let reader = std::thread::spawn(move || {
        lines
            .take(3)
            .map(|line| {
                serde_json::from_str::<SequencedEvent>(&line.expect("a line")).expect("event")
            })
            .collect::<Vec<_>>()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 0..3 {
        let data = format!(r#"{{"n":{n}}}"#);
        let appended = crablet(
            &url,
            &[
                "append", "--type", "New", "--tag", "stream:t", "--data", &data,
            ],
        )
        .await;
        assert!(appended.status.success());
        crablet(
            &url,
            &[
                "append",
                "--type",
                "New",
                "--tag",
                "stream:other",
                "--data",
                "{}",
            ],
        )
        .await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = tail.kill();
    let _ = tail.wait();
    let events = reader.join().expect("three lines");
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(
        data,
        [r#"{"n":0}"#, r#"{"n":1}"#, r#"{"n":2}"#],
        "only the new ones, in order"
    );
    assert!(events.iter().all(|e| e.event_type == "New"));
}
