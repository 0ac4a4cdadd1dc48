//! crablet against a PostgreSQL that accepts TCP over TLS only, with
//! `verify-full`, `verify-ca` and `require`; refused over plain TCP and with
//! a root that did not sign the server's certificate.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crablet::app::{AppError, Application};
use serde_json::json;

use super::{self_signed, TempDir};
use crate::helpers::{client, event, free_port, settings_for, OwnCluster};

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
    let tcp_port = free_port();
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
