//! The audit line of an append names the token and the positions and never
//! shows the token; SIGHUP revokes a token dropped from the tokens file.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::{status_with, tokens_file, TempDir, ADMIN};
use crate::helpers::{client, event, eventually, fresh_database, start_process};

#[actix_rt::test]
async fn an_append_is_audited_with_the_token_name_and_positions_and_sighup_revokes_a_token() {
    // The token, as an operator makes it.
    let minted = Command::new(env!("CARGO_BIN_EXE_crablet"))
        .args([
            "token",
            "new",
            "--name",
            "ci-writer",
            "--scopes",
            "append,read",
        ])
        .output()
        .expect("crablet token new");
    assert!(minted.status.success());
    let out = String::from_utf8(minted.stdout).expect("utf-8");
    let secret = out.lines().next().expect("token line").trim().to_owned();
    let entry = out
        .split_once("[[auth.tokens]]")
        .expect("config entry")
        .1
        .to_owned();
    assert!(!entry.contains(&secret), "the entry holds only the digest");
    let dir = TempDir::new("audit");
    let file = dir.0.join("tokens.toml");
    std::fs::write(&file, format!("[[tokens]]{entry}")).expect("tokens file");
    let log = dir.0.join("crablet.log");

    let database = fresh_database().await;
    let server = start_process(
        |command| {
            command
                .env("DATABASE_URL", &*database)
                .env("CRABLET_AUTH__TOKENS_FILE", &file)
                .env("RUST_LOG", "warn,crablet::audit=info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log"));
        },
        Duration::from_secs(10),
    )
    .await;
    let address = &server.address;
    let http = client();
    // The status of an append of events with `data`, by `token`, with
    // `request_id`.
    let append = |token: &str, request_id: &str, data: &[&str]| {
        let events: Vec<_> = data.iter().map(|d| event("Audited", &["t:1"], d)).collect();
        http.post(format!("{address}/append"))
            .bearer_auth(token)
            .header("x-request-id", request_id)
            .json(&json!({ "events": events }))
            .send()
    };
    let appended = append(&secret, "audit-me-1", &["a", "b"]).await;
    assert_eq!(appended.expect("append").status(), 200);
    let refused = append("crablet_wrong", "audit-me-2", &["c"]).await;
    assert_eq!(refused.expect("append").status(), 401);

    // SIGHUP: the token, dropped from the file, is refused from then on.
    std::fs::write(&file, tokens_file(&[("other", ADMIN, "\"admin\"")])).expect("rewrite");
    server.signal("HUP");
    let (http, secret) = (&http, &secret);
    let head = format!("{address}/head");
    let head = &head;
    let revoked = eventually(100, Duration::from_millis(50), move || async move {
        status_with(http, head, secret).await == 401
    })
    .await;
    assert!(revoked, "SIGHUP did not revoke the token");
    assert_eq!(
        status_with(http, head, ADMIN).await,
        200,
        "the new token works after SIGHUP"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(server);
    let text = std::fs::read_to_string(&log).expect("log");
    let line = text
        .lines()
        .find(|l| l.contains("audit-me-1"))
        .unwrap_or_else(|| panic!("no audit line for the append:\n{text}"));
    assert!(line.contains("\"ci-writer\""), "{line}");
    assert!(line.contains("appended positions 1..=2"), "{line}");
    assert!(
        text.lines()
            .any(|l| l.contains("audit-me-2") && l.contains("refused")),
        "no audit line for the refused append:\n{text}"
    );
    assert!(!text.contains(secret.as_str()), "the log shows the token");
}
