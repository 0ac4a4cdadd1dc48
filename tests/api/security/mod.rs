//! Security at the door: bearer tokens and scopes on every route
//! (`tokens`), the refusal to serve a non-loopback address anonymously
//! (`anonymous`), HTTPS (`https`), TLS to PostgreSQL (`postgres_tls`), CORS
//! (`cors`) and the audit line of appends (`audit`).

mod anonymous;
mod audit;
mod cors;
mod https;
mod postgres_tls;
mod tokens;

use std::path::{Path, PathBuf};

use crablet::app::{Application, Reload};
use crablet::auth::{digest_hex, Scope, TokenSettings};
use crablet::config::Settings;

use crate::helpers::{fresh_database, settings_for, TestDatabase};

pub(crate) use crate::helpers::TempDir;

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

/// The status of `GET url` with `token` as its bearer.
async fn status_with(http: &reqwest::Client, url: &str, token: &str) -> reqwest::StatusCode {
    let response = http.get(url).bearer_auth(token).send().await;
    response.expect("request").status()
}
