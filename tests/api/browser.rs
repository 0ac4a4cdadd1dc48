//! The event browser in a real headless Chromium, driven through
//! chromedriver's WebDriver HTTP API: the page loads, follows the log live,
//! and an event appended through the API appears on it; with tokens
//! configured, the page asks for one and sends it on every call. A screenshot is
//! saved under `target/`. When Chromium or chromedriver is not installed
//! (Debian: `apt-get install chromium chromium-driver`) the test fails if
//! `CRABLET_REQUIRE_BROWSER=1` is set, as CI sets it, and otherwise skips,
//! saying so on stderr.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crablet::auth::{digest_hex, Scope, TokenSettings};

use crate::helpers::{event, spawn_app, spawn_app_with};

fn find_program(candidates: &[&str]) -> Option<String> {
    candidates.iter().find_map(|name| {
        let path = std::path::Path::new(name);
        if path.is_absolute() {
            return path.exists().then(|| name.to_string());
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.exists())
                .map(|p| p.to_string_lossy().into_owned())
        })
    })
}

/// chromedriver and the browser profile, removed when dropped.
struct Driver {
    child: Child,
    profile: std::path::PathBuf,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A WebDriver session, deleted (closing the browser) when dropped.
struct Session<'d> {
    driver: &'d Driver,
    http: reqwest::Client,
    id: String,
}

impl Session<'_> {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{}", self.driver.url, self.id, path);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .expect("webdriver request")
            .json()
            .await
            .expect("webdriver JSON");
        answer["value"].clone()
    }

    async fn script(&self, source: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": source, "args": []})),
        )
        .await
    }

    /// Polls `script` until it returns a truthy value or `timeout` passes.
    async fn wait_for(&self, script: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.script(script).await;
            let truthy = !(value.is_null()
                || value == json!(false)
                || value == json!("")
                || value.get("error").is_some());
            if truthy || Instant::now() > deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn close(self) {
        let url = format!("{}/session/{}", self.driver.url, self.id);
        let _ = self.http.delete(url).send().await;
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u32> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for group in digits.chunks(4) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | (d << (18 - 6 * i)));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..group.len().saturating_sub(1)]);
    }
    out
}

#[actix_rt::test]
async fn the_browser_page_shows_an_appended_event_live() {
    let app = spawn_app().await;
    live_page(&app.address, None, "browser-live.png").await;
}

#[actix_rt::test]
async fn with_tokens_the_browser_page_asks_for_one_keeps_it_for_the_tab_and_follows_live() {
    const TOKEN: &str = "crablet_browser-test-token";
    let app = spawn_app_with(|s| {
        s.auth.tokens = vec![TokenSettings {
            name: "browser".into(),
            sha256: digest_hex(TOKEN),
            scopes: vec![Scope::Read, Scope::Append, Scope::Metrics],
            expires_at: None,
        }]
    })
    .await;
    live_page(&app.address, Some(TOKEN), "browser-live-token.png").await;
}

/// Appends `body` with `token`, if any.
async fn append(http: &reqwest::Client, address: &str, token: Option<&str>, body: Value) {
    let mut request = http.post(format!("{address}/append")).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("append");
    assert_eq!(response.status(), 200, "append");
}

/// The page lists stored events, follows the log and shows a new event live;
/// with `token`, it first asks for the token (the API answers 401), keeps it
/// in sessionStorage and sends it on every call, the live stream included.
async fn live_page(address: &str, token: Option<&str>, screenshot_name: &str) {
    let (Some(chromium), Some(chromedriver)) = (
        find_program(&["chromium", "chromium-browser", "google-chrome"]),
        find_program(&["chromedriver", "/usr/lib/chromium/chromedriver"]),
    ) else {
        let missing = "the browser test needs Chromium and chromedriver \
                       (Debian: apt-get install chromium chromium-driver)";
        assert!(
            std::env::var("CRABLET_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "CRABLET_REQUIRE_BROWSER=1: {missing}"
        );
        eprintln!("SKIPPED: {missing}");
        return;
    };
    let api = crate::helpers::client();
    for i in 0..3 {
        append(
            &api,
            address,
            token,
            json!({"events": [event("OrderPlaced", &["order:old", &format!("n:{i}")], "{\"total\":12}")]}),
        )
        .await;
    }

    let port = crate::helpers::free_port();
    let profile = std::env::temp_dir().join(format!("crablet-chromium-{}", rand::random::<u64>()));
    let child = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        profile: profile.clone(),
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await {
            if r.status().is_success() {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "chromedriver did not start");
    let capabilities = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-background-networking",
                "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    }}});
    let created: Value = http
        .post(format!("{}/session", driver.url))
        .json(&capabilities)
        .send()
        .await
        .expect("new session")
        .json()
        .await
        .expect("session JSON");
    let id = created["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {created}"))
        .to_string();
    let session = Session {
        driver: &driver,
        http: http.clone(),
        id,
    };

    session
        .call(
            reqwest::Method::POST,
            "/url",
            Some(json!({"url": format!("{address}/")})),
        )
        .await;
    let title = session.script("return document.title").await;
    let mut asked = json!("no token needed");
    if let Some(token) = token {
        // The API answered 401: the page asks for a token, then uses it.
        asked = session
            .wait_for(
                "return !document.getElementById('auth').hidden",
                Duration::from_secs(10),
            )
            .await;
        assert_eq!(asked, json!(true), "the page did not ask for a token");
        session
            .script(&format!(
                "document.getElementById('token').value = {token:?}; \
                 document.getElementById('token-use').click(); return true"
            ))
            .await;
        let kept = session
            .wait_for(
                &format!("return sessionStorage.getItem('crablet-token') === {token:?}"),
                Duration::from_secs(10),
            )
            .await;
        assert_eq!(kept, json!(true), "the token was not kept for the tab");
    }
    // The stored events are listed, newest first, and the head is shown.
    let listed = session
        .wait_for(
            "const rows = document.querySelectorAll('#page tr td.pos'); return rows.length === 3 && rows[0].textContent === '3'",
            Duration::from_secs(10),
        )
        .await;
    let head = session
        .wait_for(
            "return document.getElementById('head').textContent === '3'",
            Duration::from_secs(10),
        )
        .await;

    // Follow live, then append through the API: the event appears.
    session
        .script("document.getElementById('follow').click(); return true")
        .await;
    let following = session
        .wait_for(
            "return document.getElementById('live-status').textContent === 'following'",
            Duration::from_secs(10),
        )
        .await;
    let started = Instant::now();
    append(
        &api,
        address,
        token,
        json!({"events": [event("PaymentReceived", &["order:new", "customer:ada"], "{\"amount\":42}")]}),
    )
    .await;
    let seen = session
        .wait_for(
            "const t = document.getElementById('live').innerText; return t.includes('PaymentReceived') && t.includes('customer:ada')",
            Duration::from_secs(10),
        )
        .await;
    let latency = started.elapsed();

    let screenshot = session
        .call(reqwest::Method::GET, "/screenshot", None)
        .await;
    let png = decode_base64(screenshot.as_str().unwrap_or(""));
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let _ = std::fs::create_dir_all(&target);
    let path = target.join(screenshot_name);
    std::fs::write(&path, &png).expect("write the screenshot");
    session.close().await;
    println!(
        "page {title}: token asked {asked}, listed {listed}, head {head}, following {following}, live event shown {seen} {latency:?} after the append; screenshot ({} bytes) saved to {}",
        png.len(),
        path.display()
    );
    assert_eq!(title, json!("crablet event browser"));
    assert_eq!(listed, json!(true), "the stored events were not listed");
    assert_eq!(head, json!(true), "the head was not shown");
    assert_eq!(following, json!(true), "the page did not start following");
    assert_eq!(seen, json!(true), "the appended event did not appear live");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    drop(driver);
}
