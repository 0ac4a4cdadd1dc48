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
