//! Security at the door: bearer tokens and scopes on every route, the refusal
//! to serve a non-loopback address anonymously, HTTPS, TLS to PostgreSQL,
//! CORS and the audit line of appends.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crablet::app::{AppError, Application, Reload};
use crablet::auth::{digest_hex, Scope, TokenSettings};
use crablet::config::Settings;
use crablet::http::auth::{access_of, Access};
use crablet::http::ROUTES;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{client, event, fresh_database, settings_for, OwnCluster, TestDatabase};

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "crablet-security-{what}-{:016x}",
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn token(name: &str, secret: &str, scopes: &[Scope], expires_at: Option<&str>) -> TokenSettings {
    TokenSettings {
        name: name.into(),
        sha256: digest_hex(secret),
        scopes: scopes.to_vec(),
        expires_at: expires_at.map(str::to_owned),
    }
}

/// A `[[tokens]]` file with `tokens`.
fn tokens_file(tokens: &[(&str, &str, &str)]) -> String {
    tokens
        .iter()
        .map(|(name, secret, scopes)| {
            format!(
                "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [{scopes}]\n\n",
                digest_hex(secret)
            )
        })
        .collect()
}

/// A server built from `tune`d settings, with its reload handle.
struct Server {
    address: String,
    reload: Reload,
    _database: TestDatabase,
}

async fn start(tune: impl FnOnce(&mut Settings)) -> Server {
    let database = fresh_database().await;
    let mut settings = settings_for(&database);
    settings.http.workers = 1;
    tune(&mut settings);
    let app = Application::build(settings).await.expect("build app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let reload = app.reloader();
    actix_rt::spawn(app.run_until_stopped());
    Server {
        address,
        reload,
        _database: database,
    }
}

const READER: &str = "reader-secret";
const APPENDER: &str = "appender-secret";
const SCRAPER: &str = "scraper-secret";
const EXPIRED: &str = "expired-secret";
const ADMIN: &str = "admin-secret";
const REMOVED: &str = "removed-secret";

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

async fn expect_refused(
    request: reqwest::RequestBuilder,
    status: StatusCode,
    code: &str,
    what: &str,
) {
    let response = request.send().await.expect("request");
    assert_eq!(response.status(), status, "{what}");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    assert!(
        challenge
            .as_deref()
            .is_some_and(|c| c.starts_with("Bearer")),
        "{what}: WWW-Authenticate {challenge:?}"
    );
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(body["error"]["requestId"].is_string(), "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for secret in [READER, APPENDER, SCRAPER, EXPIRED, ADMIN, REMOVED] {
        assert!(!message.contains(secret), "{what}: the body shows a token");
    }
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

    let mut checked = 0;
    for (route, methods) in ROUTES {
        let Access::Needs(scope) = access_of(route) else {
            continue;
        };
        for method in *methods {
            let what = |case: &str| format!("{method} {route} with {case}");
            let send = |bearer| request(&http, address, method, route, bearer);
            expect_refused(
                send(None),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &what("no token"),
            )
            .await;
            expect_refused(
                send(Some("crablet_not-a-token")),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &what("a wrong token"),
            )
            .await;
            expect_refused(
                send(Some(without(scope))),
                StatusCode::FORBIDDEN,
                "forbidden",
                &what("a token without the scope"),
            )
            .await;
            expect_refused(
                send(Some(EXPIRED)),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &what("an expired token"),
            )
            .await;
            expect_refused(
                send(Some(REMOVED)),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &what("a removed token"),
            )
            .await;
            checked += 1;
        }
    }
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
    for (route, methods) in ROUTES {
        let Access::Needs(scope) = access_of(route) else {
            continue;
        };
        if route.starts_with("/go-crablet/") {
            continue;
        }
        let right = match scope {
            Scope::Read => READER,
            Scope::Append => APPENDER,
            Scope::Metrics => SCRAPER,
            Scope::Admin => ADMIN,
        };
        for method in *methods {
            for bearer in [right, ADMIN] {
                let response = request(&http, address, method, route, Some(bearer))
                    .send()
                    .await
                    .expect("request");
                assert_eq!(response.status(), 200, "{method} {route} with its token");
            }
        }
    }
    assert_eq!(stored(&http, address).await.len(), 2, "two appends");
    // The go-crablet prefix lets the right token through to its handlers,
    // whatever they answer (cleanup is disabled, for one).
    for (route, methods) in ROUTES {
        let Access::Needs(scope) = access_of(route) else {
            continue;
        };
        if !route.starts_with("/go-crablet/") {
            continue;
        }
        let right = match scope {
            Scope::Read => READER,
            Scope::Append => APPENDER,
            Scope::Metrics => SCRAPER,
            Scope::Admin => ADMIN,
        };
        for method in *methods {
            let response = request(&http, address, method, route, Some(right))
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
    expect_refused(
        http.get(format!("{address}/no-such-route")),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "an unknown route without a token",
    )
    .await;
    let unknown = http
        .get(format!("{address}/no-such-route"))
        .bearer_auth(READER)
        .send()
        .await
        .expect("unknown");
    assert_eq!(unknown.status(), 404);
}

#[test]
fn every_route_is_mapped_to_an_access_rule() {
    let mapped: Vec<&str> = crablet::http::auth::ROUTE_ACCESS
        .iter()
        .map(|(r, _)| *r)
        .collect();
    for (route, _) in ROUTES {
        assert!(
            mapped.contains(route),
            "route {route} has no entry in http::auth::ROUTE_ACCESS"
        );
    }
}

#[actix_rt::test]
async fn metrics_needs_the_metrics_scope_unless_configured_open() {
    let tokens = vec![token("scraper", SCRAPER, &[Scope::Metrics], None)];
    let closed = start(|s| s.auth.tokens = tokens.clone()).await;
    let http = client();
    let metrics = format!("{}/metrics", closed.address);
    assert_eq!(http.get(&metrics).send().await.unwrap().status(), 401);
    let scraped = http
        .get(&metrics)
        .bearer_auth(SCRAPER)
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);

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

#[actix_rt::test]
async fn a_non_loopback_listen_without_tokens_is_refused_unless_anonymous_is_allowed() {
    let database = fresh_database().await;
    let mut settings = settings_for(&database);
    settings.listen = "0.0.0.0:0".into();
    let refused = Application::build(settings.clone()).await;
    match refused {
        Err(e @ AppError::Anonymous { .. }) => {
            assert!(e.to_string().contains("auth.allow_anonymous"), "{e}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("served 0.0.0.0 without tokens"),
    }

    let mut anonymous = settings.clone();
    anonymous.auth.allow_anonymous = true;
    let app = Application::build(anonymous)
        .await
        .expect("allowed explicitly");
    stop(app).await;

    let mut with_tokens = settings.clone();
    with_tokens.auth.tokens = vec![token("ci", READER, &[Scope::Read], None)];
    let app = Application::build(with_tokens)
        .await
        .expect("tokens make it safe");
    stop(app).await;

    // Loopback without tokens stays as it always was.
    let app = Application::build(settings_for(&database))
        .await
        .expect("loopback");
    stop(app).await;
}

/// Runs `app` and stops it at once.
async fn stop(app: Application) {
    let handle = app.handle();
    let running = actix_rt::spawn(app.run_until_stopped());
    handle.stop(false).await;
    let _ = running.await;
}

/// A self-signed certificate for `localhost` and its key, written as PEM
/// files under `dir`.
fn self_signed(dir: &Path, stem: &str) -> (PathBuf, PathBuf, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("certificate");
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    let pem = certified.cert.pem();
    std::fs::write(&cert, &pem).expect("cert");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("key");
    (cert, key, pem)
}

fn trusting(pem: &str, port: u16) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).expect("pem"))
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

#[actix_rt::test]
async fn https_serves_with_a_self_signed_certificate_and_sighup_reloads_it() {
    let dir = TempDir::new("https");
    let (cert, key, first_pem) = self_signed(&dir.0, "first");
    let server = start(|s| {
        s.tls.cert = cert.display().to_string();
        s.tls.key = key.display().to_string();
        s.auth.tokens = vec![token("reader", READER, &[Scope::Read], None)];
    })
    .await;
    let port: u16 = server.address.rsplit(':').next().unwrap().parse().unwrap();
    let https = format!("https://localhost:{port}");

    let first = trusting(&first_pem, port);
    let health = first.get(format!("{https}/health")).send().await;
    assert_eq!(health.expect("HTTPS").status(), 200);
    let head = first
        .get(format!("{https}/head"))
        .bearer_auth(READER)
        .send()
        .await
        .expect("head over HTTPS");
    assert_eq!(head.status(), 200);
    // Plain HTTP on the HTTPS port gets no answer.
    assert!(client()
        .get(format!("http://127.0.0.1:{port}/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true));

    // `crablet health` over HTTPS: encrypted only, or checked against a CA.
    let stranger = TempDir::new("stranger");
    let (stranger_cert, _, _) = self_signed(&stranger.0, "stranger");
    let base = format!("https://127.0.0.1:{port}");
    let health = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_crablet"))
                .arg("health")
                .args(&args)
                .output()
                .expect("crablet health");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .expect("join")
    };
    let path = |p: &Path| p.display().to_string();
    let (ok, err) = health(vec!["--url".into(), base.clone()]).await;
    assert!(ok, "health over HTTPS: {err}");
    let (ok, err) = health(vec![
        "--url".into(),
        base.clone(),
        "--ca-cert".into(),
        path(&cert),
    ])
    .await;
    assert!(ok, "health over HTTPS, certificate checked: {err}");
    let (ok, _) = health(vec![
        "--url".into(),
        base.clone(),
        "--ca-cert".into(),
        path(&stranger_cert),
    ])
    .await;
    assert!(!ok, "health trusted a certificate its CA did not sign");
    let (ok, err) = health(vec![
        "--url".into(),
        base.clone(),
        "--token".into(),
        READER.into(),
    ])
    .await;
    assert!(
        !ok && err.contains("--ca-cert"),
        "a token sent to an unchecked server: {err}"
    );

    // A new certificate in the same files, then a reload: new connections
    // get it, and a client trusting only the old one is refused.
    let (_, _, second_pem) = self_signed(&dir.0, "second");
    std::fs::copy(dir.0.join("second.crt"), &cert).expect("replace cert");
    std::fs::copy(dir.0.join("second.key"), &key).expect("replace key");
    server.reload.reload();
    let second = trusting(&second_pem, port);
    assert_eq!(
        second
            .get(format!("{https}/health"))
            .send()
            .await
            .expect("HTTPS after reload")
            .status(),
        200
    );
    let stale = trusting(&first_pem, port);
    assert!(stale.get(format!("{https}/health")).send().await.is_err());
}

/// `postgres` on a data directory with TLS on a loopback port; stopped
/// (fast shutdown) when dropped.
struct TlsPostgres {
    child: std::process::Child,
}

impl TlsPostgres {
    async fn start(pgdata: &Path, port: u16) -> Self {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::process::CommandExt;
        let postgres = crablet::embedded::postgres_tool("postgres").expect("postgres binary");
        let owner = std::fs::metadata(pgdata).expect("pgdata");
        let mut command = Command::new(postgres);
        command
            .arg("-D")
            .arg(pgdata)
            .args(["-c", "listen_addresses=127.0.0.1", "-c"])
            .arg(format!("port={port}"))
            .args(["-c", "unix_socket_directories=", "-c", "ssl=on"])
            .args([
                "-c",
                "ssl_cert_file=server.crt",
                "-c",
                "ssl_key_file=server.key",
            ])
            .arg("-c")
            .arg(format!(
                "hba_file={}",
                pgdata.join("tls_hba.conf").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its log goes next to the data directory, removed with it.
            .stderr(std::fs::File::create(pgdata.with_file_name("tls.log")).expect("log"));
        // PostgreSQL refuses to run as root: as the cluster's owner.
        command.gid(owner.gid()).uid(owner.uid());
        let child = command.spawn().expect("start postgres");
        let server = TlsPostgres { child };
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("postgres with TLS did not listen on {port}");
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        crate::helpers::send_signal(self.child.id(), "INT");
        let _ = self.child.wait();
    }
}

/// Writes `contents` into the cluster's data directory, owned by the
/// server's account and readable by it alone (as PostgreSQL demands of a key).
fn write_for_server(pgdata: &Path, name: &str, contents: &str) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let path = pgdata.join(name);
    std::fs::write(&path, contents).expect("write");
    let owner = std::fs::metadata(pgdata).expect("pgdata");
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).expect("chown");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[actix_rt::test]
async fn crablet_reaches_a_postgresql_that_requires_tls_and_checks_its_certificate() {
    let mut cluster = OwnCluster::start().await;
    let pgdata = cluster.dir.join("pgdata");
    // A CA and a server certificate for localhost signed by it.
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .expect("params")
        .signed_by(&server_key, &ca, &ca_key)
        .expect("server certificate");
    write_for_server(&pgdata, "server.crt", &server_cert.pem());
    write_for_server(&pgdata, "server.key", &server_key.serialize_pem());
    let dir = TempDir::new("pgtls");
    let root = dir.0.join("root.crt");
    std::fs::write(&root, ca.pem()).expect("root");
    let (wrong_root, _, _) = self_signed(&dir.0, "stranger");

    // The embedded cluster is socket-only by design: run its data directory
    // once more as a server of this test's own, on a loopback TCP port with
    // TLS, accepting TCP connections over TLS only.
    cluster.stop().await;
    write_for_server(
        &pgdata,
        "tls_hba.conf",
        "hostssl all all 127.0.0.1/32 trust\n",
    );
    let tcp_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        listener.local_addr().expect("addr").port()
    };
    let _server = TlsPostgres::start(&pgdata, tcp_port).await;

    let url = |mode: &str, root: Option<&Path>| {
        let mut url = format!(
            "host=localhost hostaddr=127.0.0.1 port={tcp_port} user=crablet dbname=crablet \
             sslmode={mode}"
        );
        if let Some(root) = root {
            url.push_str(&format!(" sslrootcert={}", root.display()));
        }
        url
    };
    for (mode, root) in [
        ("verify-full", Some(root.as_path())),
        ("verify-ca", Some(root.as_path())),
        ("require", None),
    ] {
        let mut settings = settings_for(&url(mode, root));
        settings.http.workers = 1;
        settings.database.startup_timeout_s = 5;
        let app = Application::build(settings)
            .await
            .unwrap_or_else(|e| panic!("sslmode={mode}: {e}"));
        let address = format!("http://127.0.0.1:{}", app.port());
        let handle = app.handle();
        actix_rt::spawn(app.run_until_stopped());
        let http = client();
        let appended = http
            .post(format!("{address}/append"))
            .json(&json!({"events": [event("OverTls", &["t:1"], mode)]}))
            .send()
            .await
            .expect("append");
        assert_eq!(appended.status(), 200, "append with sslmode={mode}");
        assert_eq!(
            http.get(format!("{address}/health"))
                .send()
                .await
                .expect("health")
                .status(),
            200
        );
        handle.stop(true).await;
    }
    // Plain TCP is refused by this server (hostssl only), and a certificate
    // from another authority is refused by crablet.
    for (url, what) in [
        (
            format!("host=127.0.0.1 port={tcp_port} user=crablet dbname=crablet"),
            "no sslmode: plain TCP, as before TLS support",
        ),
        (
            url("verify-full", Some(&wrong_root)),
            "a root that did not sign it",
        ),
    ] {
        let mut settings = settings_for(&url);
        settings.database.startup_timeout_s = 1;
        match Application::build(settings).await {
            Ok(_) => panic!("{what}: connected"),
            Err(e) => assert!(matches!(e, AppError::Connect { .. }), "{what}: {e}"),
        }
    }
}

#[actix_rt::test]
async fn cors_headers_are_sent_only_to_the_configured_origins() {
    let http = client();
    let plain = start(|_| {}).await;
    let preflight = |address: &str, origin: &str| {
        http.request(Method::OPTIONS, format!("{address}/append"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type",
            )
    };
    let get =
        |address: &str, origin: &str| http.get(format!("{address}/head")).header("Origin", origin);
    for response in [
        get(&plain.address, "https://app.example")
            .send()
            .await
            .unwrap(),
        preflight(&plain.address, "https://app.example")
            .send()
            .await
            .unwrap(),
    ] {
        assert!(
            !response
                .headers()
                .keys()
                .any(|k| k.as_str().starts_with("access-control-")),
            "no CORS header by default: {:?}",
            response.headers()
        );
    }

    let cors = start(|s| s.http.cors_origins = vec!["https://app.example".into()]).await;
    let allowed = get(&cors.address, "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let allowed = preflight(&cors.address, "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let methods = allowed.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("POST"), "{methods}");
    let headers = allowed.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(headers.contains("authorization"), "{headers}");
    for response in [
        get(&cors.address, "https://evil.example")
            .send()
            .await
            .unwrap(),
        preflight(&cors.address, "https://evil.example")
            .send()
            .await
            .unwrap(),
    ] {
        assert!(
            response
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "another origin gets no CORS header: {:?}",
            response.headers()
        );
    }
}

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
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        listener.local_addr().expect("addr").port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_crablet"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &*database)
        .env("CRABLET_AUTH__TOKENS_FILE", &file)
        .env("RUST_LOG", "warn,crablet::audit=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("crablet serve");
    let address = format!("http://127.0.0.1:{port}");
    let http = client();
    let mut ready = false;
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{address}/health")).send().await {
            if r.status() == 200 {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "crablet serve did not start");
    let appended = http
        .post(format!("{address}/append"))
        .bearer_auth(&secret)
        .header("x-request-id", "audit-me-1")
        .json(
            &json!({"events": [event("Audited", &["t:1"], "a"), event("Audited", &["t:1"], "b")]}),
        )
        .send()
        .await
        .expect("append");
    assert_eq!(appended.status(), 200);
    let refused = http
        .post(format!("{address}/append"))
        .bearer_auth("crablet_wrong")
        .header("x-request-id", "audit-me-2")
        .json(&json!({"events": [event("Audited", &["t:1"], "c")]}))
        .send()
        .await
        .expect("append");
    assert_eq!(refused.status(), 401);

    // SIGHUP: the token, dropped from the file, is refused from then on.
    std::fs::write(&file, tokens_file(&[("other", ADMIN, "\"admin\"")])).expect("rewrite");
    crate::helpers::send_signal(child.id(), "HUP");
    let mut revoked = false;
    for _ in 0..100 {
        let head = http
            .get(format!("{address}/head"))
            .bearer_auth(&secret)
            .send()
            .await
            .expect("head");
        if head.status() == 401 {
            revoked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(revoked, "SIGHUP did not revoke the token");
    let other = http
        .get(format!("{address}/head"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("head");
    assert_eq!(other.status(), 200, "the new token works after SIGHUP");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = child.kill();
    let _ = child.wait();
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
    assert!(!text.contains(&secret), "the log shows the token");
}

#[test]
fn the_compose_stack_publishes_crablet_on_loopback_only_and_says_it_runs_without_tokens() {
    let compose =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"))
            .expect("compose");
    assert!(compose.contains("CRABLET_AUTH__ALLOW_ANONYMOUS: \"true\""));
    assert!(compose.contains("- \"127.0.0.1:8080:8080\""));
    assert!(!compose.contains("- \"8080:8080\""));
}
