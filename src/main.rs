//! The `crablet` binary: parses the command line and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use crablet::app::Application;
use crablet::config::{Overrides, Settings};

#[derive(Parser)]
#[command(
    name = "crablet",
    version,
    about = "A DCB event-store server on PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve {
        /// A TOML file overriding config/default.toml.
        #[arg(long, env = "CRABLET_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long)]
        listen: Option<String>,
        /// PostgreSQL URL or libpq key-value string; without it crablet runs
        /// its own private PostgreSQL under --data-dir.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// A hot standby of the primary that serves reads (repeatable).
        #[arg(
            long = "replica-url",
            env = "CRABLET_REPLICA_URLS",
            value_delimiter = ','
        )]
        replica_urls: Vec<String>,
        /// "transaction" when --database-url points at a pooler in transaction
        /// mode (PgBouncer), "none" otherwise [default: none].
        #[arg(long, env = "CRABLET_DATABASE_POOLER")]
        database_pooler: Option<crablet::config::Pooler>,
        /// A direct URL for the connection that follows the log for the
        /// subscriptions [default: --database-url].
        #[arg(long, env = "CRABLET_LISTEN_DATABASE_URL")]
        listen_database_url: Option<String>,
        /// Where the embedded PostgreSQL keeps its data [default: ./data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run only the embedded PostgreSQL: prints `DATABASE_URL=...` (crablet's
    /// role) then `ADMIN_DATABASE_URL=...` (the cluster's superuser, database
    /// `postgres`) and runs until stdin closes or a signal arrives (for tests
    /// and load tests).
    Postgres {
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// Delete the data directory after stopping the cluster (when no other
        /// crablet still uses it): for throw-away clusters.
        #[arg(long)]
        remove_data_dir_on_exit: bool,
    },
    /// Ask a running server whether it is ready (`/health`) or alive
    /// (`/health/live`): exit 0 on 200, 1 otherwise. A plain HTTP GET, for
    /// container health checks where no curl is installed.
    Health {
        /// The server's base URL: http://, or https:// when crablet serves
        /// HTTPS (`tls.cert`).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// With https://: the PEM file of the certificate authority to check
        /// the server's certificate (and name) against. Without it the
        /// connection is encrypted but the certificate is not checked, which
        /// is enough to ask a local process whether it is up; --token then
        /// needs --ca-cert, so that a token never goes to an unchecked server.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// Check liveness (`/health/live`) instead of readiness.
        #[arg(long)]
        live: bool,
        /// Sent as `Authorization: Bearer <token>` (the health routes are
        /// open; a proxy in front may not be).
        #[arg(long, env = "CRABLET_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Manage bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a new random token: prints the token once (keep it; crablet
    /// stores only its SHA-256), then the `[[auth.tokens]]` entry to add to
    /// the configuration or to the tokens file.
    New {
        /// Who holds it; appears in the audit log.
        #[arg(long)]
        name: String,
        /// Comma-separated: read, append, metrics, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// RFC 3339 time after which the token is refused.
        #[arg(long)]
        expires_at: Option<String>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            database_url,
            replica_urls,
            database_pooler,
            listen_database_url,
            data_dir,
        } => serve(
            config,
            Overrides {
                listen,
                database_url,
                data_dir,
                replica_urls,
                pooler: database_pooler,
                listen_database_url,
            },
        ),
        Command::Postgres {
            data_dir,
            remove_data_dir_on_exit,
        } => crablet::embedded::run_foreground(&data_dir, remove_data_dir_on_exit)
            .map_err(|e| e.to_string()),
        Command::Health {
            url,
            live,
            token,
            ca_cert,
        } => {
            let path = if live { "/health/live" } else { "/health" };
            health(&url, path, token.as_deref(), ca_cert.as_deref())
        }
        Command::Token {
            command:
                TokenCommand::New {
                    name,
                    scopes,
                    expires_at,
                },
        } => new_token(&name, &scopes, expires_at.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("crablet: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Option<PathBuf>, overrides: Overrides) -> Result<(), String> {
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
fn new_token(name: &str, scopes: &[String], expires_at: Option<&str>) -> Result<(), String> {
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
fn health(
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
