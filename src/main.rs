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
        /// The server's base URL (http only).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Check liveness (`/health/live`) instead of readiness.
        #[arg(long)]
        live: bool,
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
            data_dir,
        } => serve(
            config,
            Overrides {
                listen,
                database_url,
                data_dir,
            },
        ),
        Command::Postgres {
            data_dir,
            remove_data_dir_on_exit,
        } => crablet::embedded::run_foreground(&data_dir, remove_data_dir_on_exit)
            .map_err(|e| e.to_string()),
        Command::Health { url, live } => {
            let path = if live { "/health/live" } else { "/health" };
            health(&url, path)
        }
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

/// `GET <url><path>` over a plain TCP connection, within a few seconds:
/// `Ok` on status 200, the status line or the failure otherwise.
fn health(url: &str, path: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;

    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, base) = rest.split_once('/').unwrap_or((rest, ""));
    let address = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let target = format!("/{}{path}", base.trim_end_matches('/')).replace("//", "/");
    let timeout = Duration::from_secs(5);
    let socket = address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address}: no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&socket, timeout).map_err(|e| format!("{address}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
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
