//! The server's own commands: `serve`, `health` and `token new`.

use std::path::PathBuf;

use crablet::app::Application;
use crablet::config::{Overrides, Settings};

pub fn serve(config: Option<PathBuf>, overrides: Overrides) -> Result<(), String> {
    let settings = Settings::load(config.as_deref(), overrides).map_err(|e| e.to_string())?;
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings)
            .await
            .map_err(|e| e.to_string())?;
        app.run_until_signalled().await.map_err(|e| e.to_string())
    })
}

/// A plain or a TLS stream.
trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// `crablet token new`: the token on the first line, then its entry.
pub fn new_token(name: &str, scopes: &[String], expires_at: Option<&str>) -> Result<(), String> {
    use crablet::auth::{self, Scope};
    if name.trim().is_empty() {
        return Err("--name must not be empty".into());
    }
    let scopes = scopes
        .iter()
        .map(|s| {
            Scope::parse(s)
                .ok_or_else(|| format!("unknown scope {s:?}: use read, append, metrics or admin"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(at) = expires_at {
        auth::parse_rfc3339(at)?;
    }
    let token = auth::mint().map_err(|e| format!("no random bytes from the system: {e}"))?;
    eprintln!(
        "# The token (shown once; crablet stores only its SHA-256), then its configuration entry:"
    );
    println!("{token}");
    println!();
    print!(
        "{}",
        auth::config_entry(&token, name.trim(), &scopes, expires_at)
    );
    Ok(())
}

/// `GET <url><path>` over HTTP or HTTPS (rustls, with `ca_cert` as the
/// trusted root when given), within a few seconds:
/// `Ok` on status 200, the status line or the failure otherwise.
pub fn health(
    url: &str,
    path: &str,
    token: Option<&str>,
    ca_cert: Option<&std::path::Path>,
) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;

    let (rest, https) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => {
            return Err(format!(
                "{url}: only http:// and https:// URLs are supported"
            ))
        }
    };
    if https && token.is_some() && ca_cert.is_none() {
        return Err(
            "--token over https:// needs --ca-cert (the token must not go to a \
                    server whose certificate is not checked)"
                .into(),
        );
    }
    let (authority, base) = rest.split_once('/').unwrap_or((rest, ""));
    let address = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:{}", if https { 443 } else { 80 })
    };
    let target = format!("/{}{path}", base.trim_end_matches('/')).replace("//", "/");
    let timeout = Duration::from_secs(5);
    let socket = address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address}: no address"))?;
    let tcp =
        TcpStream::connect_timeout(&socket, timeout).map_err(|e| format!("{address}: {e}"))?;
    tcp.set_read_timeout(Some(timeout))
        .and_then(|()| tcp.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let mut stream: Box<dyn ReadWrite> = if https {
        use crablet::store::tls::{client_config, DbTlsMode};
        let ca = ca_cert.map(|p| p.display().to_string());
        let mode = if ca.is_some() {
            DbTlsMode::VerifyFull
        } else {
            DbTlsMode::Require
        };
        let config = client_config(mode, ca.as_deref()).map_err(|e| e.to_string())?;
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{host}: {e}"))?;
        let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
            .map_err(|e| e.to_string())?;
        Box::new(rustls::StreamOwned::new(connection, tcp))
    } else {
        Box::new(tcp)
    };
    let authorization = token.map_or_else(String::new, |t| {
        format!("Authorization: Bearer {}\r\n", t.trim())
    });
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\n{authorization}Connection: close\r\n\r\n"
    )
    .map_err(|e| format!("{address}: {e}"))?;
    // The status line is all that matters; read a bounded head.
    let mut head = [0u8; 512];
    let mut len = 0;
    while len < head.len() && !head[..len].contains(&b'\n') {
        match stream.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(format!("{address}: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&head[..len]);
    let status_line = text.lines().next().unwrap_or("").trim();
    if status_line.split_whitespace().nth(1) == Some("200") {
        println!("{target}: {status_line}");
        Ok(())
    } else {
        Err(format!("{url}{path}: {status_line:?}"))
    }
}
