//! The `crablet` binary: the server (`serve`, `postgres`, `health`,
//! `token`, in [`server`]) and the command line client of a running server
//! (`append`, `read`, `tail`, `head`, `project` in [`client`]; `export`,
//! `import` in [`transfer`]), printing as [`output`] says.

mod client;
mod output;
mod server;
mod transfer;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use crablet::config::Overrides;

#[derive(Parser)]
#[command(
    name = "crablet",
    version,
    about = "A DCB event-store server on PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    server: client::Server,
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
    ///
    /// --url is http://, or https:// when crablet serves HTTPS (`tls.cert`).
    /// With https:// and no --ca-cert the connection is encrypted but the
    /// certificate is not checked, which is enough to ask a local process
    /// whether it is up; --token (the health routes are open, a proxy in
    /// front may not be) then needs --ca-cert, so that a token never goes to
    /// an unchecked server.
    Health {
        /// Check liveness (`/health/live`) instead of readiness.
        #[arg(long)]
        live: bool,
    },
    /// Manage bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Append one event (with an id, repeated safely until it is stored).
    /// Exit status 3 when its condition failed (nothing written).
    Append(client::AppendArgs),
    /// Read events: a table on a terminal, NDJSON with --json or when piped.
    Read(client::ReadArgs),
    /// Follow events live (from the head, or after --after), reconnecting
    /// on its own; the same output as `read`.
    Tail(client::TailArgs),
    /// Print the head position (0: empty store).
    Head,
    /// Print the states of the projectors in FILE (`{"projectors": [...]}`),
    /// their position and the append condition that keeps a decision safe.
    Project(client::ProjectArgs),
    /// Write the log (or the part after --after) to stdout as NDJSON, every
    /// event with its position, id, metadata and recordedAt.
    Export(transfer::ExportArgs),
    /// Write the events of an export at their own positions (admin scope).
    /// Into an empty store it reproduces the exported one; run again after
    /// an interruption it goes on where it stopped.
    Import(transfer::ImportArgs),
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

/// Why a command failed, and its exit status.
pub struct Failure {
    message: String,
    status: u8,
}

impl Failure {
    /// The server or the connection failed (exit 1).
    pub fn error(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            status: 1,
        }
    }

    /// The command line is wrong (exit 2, as clap's own usage errors).
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            status: 2,
        }
    }

    /// An append that was answered but not written (exit 3).
    pub fn refused(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            status: 3,
        }
    }

    /// Writing stdout failed; a closed pipe (`crablet read | head`) is a
    /// quiet success.
    pub fn output(error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            return Failure {
                message: String::new(),
                status: 0,
            };
        }
        Failure::error(format!("stdout: {error}"))
    }

    /// Reading the input failed.
    pub fn input(error: std::io::Error) -> Self {
        Failure::error(format!("input: {error}"))
    }
}

impl From<crablet_client::Error> for Failure {
    fn from(error: crablet_client::Error) -> Self {
        match error {
            crablet_client::Error::Config(message) => Failure::usage(message),
            error => Failure::error(error.to_string()),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::error(message)
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result: Result<(), Failure> = match cli.command {
        Command::Serve {
            config,
            listen,
            database_url,
            replica_urls,
            database_pooler,
            listen_database_url,
            data_dir,
        } => server::serve(
            config,
            Overrides {
                listen,
                database_url,
                data_dir,
                replica_urls,
                pooler: database_pooler,
                listen_database_url,
            },
        )
        .map_err(Failure::from),
        Command::Postgres {
            data_dir,
            remove_data_dir_on_exit,
        } => crablet::embedded::run_foreground(&data_dir, remove_data_dir_on_exit)
            .map_err(|e| Failure::error(e.to_string())),
        Command::Health { live } => {
            let path = if live { "/health/live" } else { "/health" };
            let server = &cli.server;
            server::health(
                &server.url,
                path,
                server.token.as_deref(),
                server.ca_cert.as_deref(),
            )
            .map_err(Failure::from)
        }
        Command::Token {
            command:
                TokenCommand::New {
                    name,
                    scopes,
                    expires_at,
                },
        } => server::new_token(&name, &scopes, expires_at.as_deref()).map_err(Failure::from),
        Command::Append(args) => client::run(client::append(cli.server, args)),
        Command::Read(args) => client::run(client::read(cli.server, args)),
        Command::Tail(args) => client::run(client::tail(cli.server, args)),
        Command::Head => client::run(client::head(cli.server)),
        Command::Project(args) => client::run(client::project(cli.server, args)),
        Command::Export(args) => client::run(transfer::export(cli.server, args)),
        Command::Import(args) => client::run(transfer::import(cli.server, args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { message, status }) => {
            if !message.is_empty() {
                eprintln!("crablet: {message}");
            }
            ExitCode::from(status)
        }
    }
}
