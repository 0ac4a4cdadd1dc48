//! Bearer tokens and scopes: every protected route and method refuses a
//! missing, wrong, unscoped, expired or removed token and writes nothing,
//! takes the right one (and `admin`), and the open routes stay open.

use std::time::Duration;

use crablet::auth::Scope;
use crablet::http::routes::{access_of, listed, Access};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{
    start, status_with, token, tokens_file, TempDir, ADMIN, APPENDER, EXPIRED, READER, REMOVED,
    SCRAPER,
};
use crate::helpers::{client, event};

/// A request to `route` with `method` that the handler would accept.
fn request(
    http: &reqwest::Client,
    address: &str,
    method: &str,
    route: &str,
    bearer: Option<&str>,
) -> reqwest::RequestBuilder {
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let mut url = format!("{address}{route}");
    if method == Method::GET && route == "/read" {
        url.push_str("?query=%7B%22items%22%3A%5B%5D%7D");
    }
    let mut builder = http.request(method.clone(), url);
    if method == Method::POST {
        let body = match route {
            "/append" => json!({"events": [event("Secured", &["t:1"], "x")]}),
            "/admin/import" => json!({"events": [{
                "type": "Secured", "tags": ["t:1"], "data": "x", "position": 1000,
                "id": null, "recordedAt": "2026-01-01T00:00:00.000000Z"
            }]}),
            "/project" => json!({"projectors": [
                {"id": "n", "query": {"items": [{"tags": ["t:1"]}]}, "reduce": "count"}
            ]}),
            _ => json!({"query": {"items": []}}),
        };
        builder = builder.json(&body);
    }
    if let Some(token) = bearer {
        builder = builder.bearer_auth(token);
    }
    builder.timeout(Duration::from_secs(10))
}

/// The events in the store, read with the admin token.
async fn stored(http: &reqwest::Client, address: &str) -> Vec<Value> {
    let response = request(http, address, "GET", "/read", Some(ADMIN))
        .send()
        .await
        .expect("read");
    assert_eq!(response.status(), 200);
    response.json().await.expect("events")
}

/// A token that lacks `scope` (and is not admin).
fn without(scope: Scope) -> &'static str {
    match scope {
        Scope::Read | Scope::Metrics => APPENDER,
        Scope::Append => READER,
        Scope::Admin => SCRAPER,
    }
}

/// The token whose only scope is `scope`.
fn with(scope: Scope) -> &'static str {
    match scope {
        Scope::Read => READER,
        Scope::Append => APPENDER,
        Scope::Metrics => SCRAPER,
        Scope::Admin => ADMIN,
    }
}

/// Every method of every route that needs a token, with the scope it needs.
fn protected_routes() -> impl Iterator<Item = (&'static str, &'static str, Scope)> {
    listed().into_iter().flat_map(|(route, methods)| {
        let scope = match access_of(route) {
            Access::Needs(scope) => Some(scope),
            Access::Open => None,
        };
        methods
            .into_iter()
            .filter_map(move |method| Some((route, method, scope?)))
    })
}

/// What is wrong with the answer to `request`, which must be refused with
/// `status`: its status, its `WWW-Authenticate` challenge, its JSON error
/// body (code and request id), or a token shown in its message. Empty when
/// the refusal is as it must be.
async fn refusal_faults(request: reqwest::RequestBuilder, status: StatusCode) -> Vec<String> {
    let code = if status == StatusCode::FORBIDDEN {
        "forbidden"
    } else {
        "unauthorized"
    };
    let response = request.send().await.expect("request");
    let mut faults = Vec::new();
    if response.status() != status {
        faults.push(format!("answered {}, not {status}", response.status()));
    }
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    if !challenge
        .as_deref()
        .is_some_and(|c| c.starts_with("Bearer"))
    {
        faults.push(format!("WWW-Authenticate {challenge:?}"));
    }
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if body["error"]["code"] != code || !body["error"]["requestId"].is_string() {
        faults.push(format!(
            "not a JSON error {code:?} with a request id: {body}"
        ));
    }
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for secret in [READER, APPENDER, SCRAPER, EXPIRED, ADMIN, REMOVED] {
        if message.contains(secret) {
            faults.push("the body shows a token".to_owned());
        }
    }
    faults
}

#[actix_rt::test]
async fn every_route_refuses_missing_wrong_unscoped_expired_and_removed_tokens_and_writes_nothing()
{
    let dir = TempDir::new("tokens");
    let file = dir.0.join("tokens.toml");
    std::fs::write(
        &file,
        tokens_file(&[
            ("admin", ADMIN, "\"admin\""),
            ("removed", REMOVED, "\"admin\""),
        ]),
    )
    .expect("tokens file");
    let server = start(|s| {
        s.auth.tokens = vec![
            token("reader", READER, &[Scope::Read], None),
            token("appender", APPENDER, &[Scope::Append], None),
            token("scraper", SCRAPER, &[Scope::Metrics], None),
            token(
                "expired",
                EXPIRED,
                &[Scope::Admin],
                Some("2020-01-01T00:00:00Z"),
            ),
        ];
        s.auth.tokens_file = file.display().to_string();
    })
    .await;
    let http = client();
    let address = &server.address;

    // The removed token works until the tokens file drops it.
    assert_eq!(stored(&http, address).await.len(), 0);
    let before = request(&http, address, "GET", "/head", Some(REMOVED))
        .send()
        .await
        .expect("head");
    assert_eq!(before.status(), 200);
    std::fs::write(&file, tokens_file(&[("admin", ADMIN, "\"admin\"")])).expect("rewrite");
    server.reload.reload();

    // Each protected route and method, with each token it must refuse.
    let mut checked = 0;
    let mut violations = 0;
    for (route, method, scope) in protected_routes() {
        let refusals = [
            ("no token", None, StatusCode::UNAUTHORIZED),
            (
                "a wrong token",
                Some("crablet_not-a-token"),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "a token without the scope",
                Some(without(scope)),
                StatusCode::FORBIDDEN,
            ),
            ("an expired token", Some(EXPIRED), StatusCode::UNAUTHORIZED),
            ("a removed token", Some(REMOVED), StatusCode::UNAUTHORIZED),
        ];
        for (case, bearer, status) in refusals {
            let faults =
                refusal_faults(request(&http, address, method, route, bearer), status).await;
            if !faults.is_empty() {
                violations += 1;
                eprintln!("{method} {route} with {case}: {faults:?}");
            }
        }
        checked += 1;
    }
    assert_eq!(violations, 0, "refusals not as they must be");
    assert!(checked >= 7, "only {checked} protected route methods");
    assert_eq!(
        stored(&http, address).await.len(),
        0,
        "a refused request wrote"
    );
    let head: Value = request(&http, address, "GET", "/head", Some(READER))
        .send()
        .await
        .expect("head")
        .json()
        .await
        .expect("head body");
    assert_eq!(head["position"], json!(0), "head moved: {head}");

    // The right token works, on every protected route (the go-crablet
    // prefix's below: its bodies are go-crablet's).
    for (route, method, scope) in protected_routes() {
        if route.starts_with("/go-crablet/") {
            continue;
        }
        // An import is written once: a second one is refused (409).
        let bearers = if with(scope) == ADMIN {
            vec![ADMIN]
        } else {
            vec![with(scope), ADMIN]
        };
        for bearer in bearers {
            let response = request(&http, address, method, route, Some(bearer))
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 200, "{method} {route} with its token");
        }
    }
    assert_eq!(
        stored(&http, address).await.len(),
        3,
        "two appends and an import"
    );
    // The go-crablet prefix lets the right token through to its handlers,
    // whatever they answer (cleanup is disabled, for one).
    for (route, method, scope) in protected_routes() {
        if !route.starts_with("/go-crablet/") {
            continue;
        }
        let response = request(&http, address, method, route, Some(with(scope)))
            .send()
            .await
            .expect("request");
        assert!(
            response.headers().get("www-authenticate").is_none()
                && response.status() != StatusCode::UNAUTHORIZED,
            "{method} {route} with its token: {}",
            response.status()
        );
    }

    // Open routes need nothing; an unknown path needs a valid token first.
    for route in [
        "/health",
        "/health/live",
        "/openapi.json",
        "/",
        "/static/app.js",
    ] {
        let response = http
            .get(format!("{address}{route}"))
            .send()
            .await
            .expect("open");
        assert_eq!(response.status(), 200, "{route} must stay open");
    }
    let faults = refusal_faults(
        http.get(format!("{address}/no-such-route")),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(
        faults.is_empty(),
        "an unknown route without a token: {faults:?}"
    );
    let unknown = status_with(&http, &format!("{address}/no-such-route"), READER).await;
    assert_eq!(unknown, 404);
}

#[actix_rt::test]
async fn metrics_needs_the_metrics_scope_unless_configured_open() {
    let tokens = vec![token("scraper", SCRAPER, &[Scope::Metrics], None)];
    let closed = start(|s| s.auth.tokens = tokens.clone()).await;
    let http = client();
    let metrics = format!("{}/metrics", closed.address);
    assert_eq!(http.get(&metrics).send().await.unwrap().status(), 401);
    assert_eq!(status_with(&http, &metrics, SCRAPER).await, 200);

    let open = start(|s| {
        s.auth.tokens = tokens.clone();
        s.auth.metrics_requires_token = false;
    })
    .await;
    let response = http
        .get(format!("{}/metrics", open.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let read = http
        .get(format!("{}/head", open.address))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 401, "only /metrics is opened");
}
