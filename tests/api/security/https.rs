//! HTTPS with a certificate made by the test: served to clients that trust
//! it, checked by `crablet health`, and reloaded on SIGHUP.

use std::process::Command;
use std::time::Duration;

use crablet::auth::Scope;

use super::{self_signed, start, status_with, token, Server, TempDir, READER};
use crate::helpers::client;

fn trusting(pem: &str, port: u16) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).expect("pem"))
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A server on HTTPS with `cert` and `key` that knows the `READER` token,
/// and its port.
async fn https_with_a_reader(cert: &std::path::Path, key: &std::path::Path) -> (Server, u16) {
    let server = start(|s| {
        s.tls.cert = cert.display().to_string();
        s.tls.key = key.display().to_string();
        s.auth.tokens = vec![token("reader", READER, &[Scope::Read], None)];
    })
    .await;
    let port: u16 = server.address.rsplit(':').next().unwrap().parse().unwrap();
    (server, port)
}

#[actix_rt::test]
async fn https_serves_with_a_self_signed_certificate_and_sighup_reloads_it() {
    let dir = TempDir::new("https");
    let (cert, key, first_pem) = self_signed(&dir.0, "first");
    let (server, port) = https_with_a_reader(&cert, &key).await;
    let https = format!("https://localhost:{port}");

    let first = trusting(&first_pem, port);
    let health = first.get(format!("{https}/health")).send().await;
    assert_eq!(health.expect("HTTPS").status(), 200);
    let head = status_with(&first, &format!("{https}/head"), READER).await;
    assert_eq!(head, 200, "head over HTTPS");
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
    // (what, the option after `--url`, whether it succeeds, what its error
    // must mention)
    let cases = [
        ("health over HTTPS", None, true, ""),
        (
            "health over HTTPS, certificate checked",
            Some(("--ca-cert", cert.display().to_string())),
            true,
            "",
        ),
        (
            "health trusting a certificate its CA did not sign",
            Some(("--ca-cert", stranger_cert.display().to_string())),
            false,
            "",
        ),
        (
            "a token sent to an unchecked server",
            Some(("--token", READER.to_owned())),
            false,
            "--ca-cert",
        ),
    ];
    for (what, option, succeeds, mentions) in cases {
        let mut args = vec!["health".to_owned(), "--url".to_owned(), base.clone()];
        if let Some((name, value)) = option {
            args.extend([name.to_owned(), value]);
        }
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_crablet"))
                .args(&args)
                .output()
                .expect("crablet health")
        })
        .await
        .expect("join");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), succeeds, "{what}: {err}");
        assert!(err.contains(mentions), "{what}: {err}");
    }

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

#[actix_rt::test]
async fn the_command_line_client_checks_the_servers_certificate_against_its_ca() {
    let dir = TempDir::new("https-cli");
    let (cert, key, _) = self_signed(&dir.0, "server");
    let (_server, port) = https_with_a_reader(&cert, &key).await;
    let base = format!("https://127.0.0.1:{port}");
    let stranger = TempDir::new("https-cli-stranger");
    let (stranger_cert, _, _) = self_signed(&stranger.0, "stranger");
    let head = |ca: String| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_crablet"))
            .args([
                "head",
                "--url",
                &base,
                "--token",
                READER,
                "--retry-for",
                "0",
            ])
            .args(["--ca-cert", &ca])
            .env("RUST_LOG", "warn")
            .output()
    };
    let trusted = head(cert.display().to_string()).await.expect("run crablet");
    assert_eq!(
        (
            String::from_utf8_lossy(&trusted.stdout).as_ref(),
            trusted.status.code()
        ),
        ("0\n", Some(0)),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let refused = head(stranger_cert.display().to_string())
        .await
        .expect("run crablet");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(
        said.contains("certificate") || said.contains("Certificate"),
        "{said}"
    );
}
