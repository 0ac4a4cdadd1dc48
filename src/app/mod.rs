//! [`Application`]: assembles settings into a running server. `main` and the
//! integration tests build the server through this one entry point.
//!
//! It owns the process's life cycle: [`Application::build`] reads as its
//! steps, each in a module of its own ([`door`]: tokens, HTTPS, CORS and
//! what SIGHUP reloads; [`database`]: the embedded cluster or the URL,
//! waiting for it at start-up, the schema, the pools; [`server`]: the HTTP
//! server over the shared [`Core`]), and the graceful stop on SIGINT or
//! SIGTERM (in-flight requests finish, then the embedded cluster stops). It
//! holds no request logic and speaks no SQL beyond calling the migrator.

mod database;
mod door;
mod server;

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::web;

use crate::actors::{EventStore, ReaderPools, Writers};
use crate::auth::AuthError;
use crate::config::Settings;
use crate::embedded::{EmbeddedError, EmbeddedPostgres};
use crate::head::Head;
use crate::metrics::Metrics;
use crate::replicas::{monitor, Replica, Replicas, Sources};
use crate::store::{self, ProjectionStates};
use crate::subscriptions::Subscriptions;
use database::{Database, Pools};
use door::Door;
pub use door::Reload;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid database URL: {0}")]
    DatabaseUrl(#[source] store::tls::DbTlsError),
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// No token is configured and the address is not loopback.
    #[error(
        "refusing to listen on {address} without authentication: anyone who reaches it could \
         read and append. Configure tokens (auth.tokens or auth.tokens_file, see `crablet token \
         new`), listen on a loopback address, or set auth.allow_anonymous = true \
         (CRABLET_AUTH__ALLOW_ANONYMOUS=true) to accept this"
    )]
    Anonymous { address: String },
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The database stayed unreachable (or refused crablet) at start-up.
    #[error("cannot connect to PostgreSQL at {address} (gave up after {waited_s:.1} s): {cause}")]
    Connect {
        /// Host or socket directory, port, database and user; never a password.
        address: String,
        /// The last failure with its whole cause chain.
        cause: String,
        waited_s: f64,
    },
    /// The startup parameter `options` was refused (a pooler in between).
    #[error("cannot connect to PostgreSQL at {address}: {cause}")]
    OptionsRefused { address: String, cause: String },
    /// What sits between crablet and PostgreSQL is not what the settings say.
    #[error("{0}")]
    Pooler(String),
    #[error("schema migration failed: {0}")]
    Migrate(#[from] store::migrate::MigrateError),
    #[error("embedded PostgreSQL: {0}")]
    Embedded(#[from] EmbeddedError),
    /// A replica URL names a database that is not a hot standby of the primary.
    #[error("{0}")]
    Replica(#[from] monitor::Refusal),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// What every worker's handlers share: the writer lanes, the databases
/// readers read from, the subscriptions and the metrics.
#[derive(Clone)]
pub struct Core {
    pub writers: Writers,
    pub sources: Sources,
    pub subscriptions: Subscriptions,
    pub metrics: Metrics,
}

impl Core {
    /// Starts the writer lanes, the replica checks (a replica that is not a
    /// standby of the primary is refused here) and the subscription tailer
    /// over `pools`, around one committed head.
    async fn start(settings: &Settings, pools: Pools, metrics: Metrics) -> Result<Self, AppError> {
        let states = Arc::new(ProjectionStates::new(
            settings.projections.state_cache_bytes,
            &metrics,
        ));
        let head = Head::new();
        metrics.watch_head(&head);
        let writers = Writers::start(pools.writer, &settings.writer, &metrics, states, &head);
        let replicas = pools
            .replicas
            .into_iter()
            .map(|(name, pools)| Replica::new(name, pools))
            .collect();
        let sources = Sources {
            primary: pools.readers,
            head: head.clone(),
            // The tailer's own direct connection, for plain and costly
            // pages alike (it reads every event: plain pages).
            follow: pools.listen.map(|listen| ReaderPools {
                plain: listen.clone(),
                costly: listen,
                costly_budget_ms: settings.reader.costly_statement_timeout_ms,
            }),
            replicas: Replicas::new(replicas, &settings.replicas, &metrics),
        };
        if !sources.replicas.is_empty() {
            monitor::first_check(&sources, &metrics).await?;
            actix_rt::spawn(monitor::run(sources.clone(), metrics.clone()));
        }
        // The tailer reads through a facade of this thread.
        let tailer_store =
            EventStore::on_this_thread(&writers, sources.clone(), &settings.reader, &metrics);
        let subscriptions = Subscriptions::start(
            tailer_store,
            head.advances(),
            &settings.subscriptions,
            &metrics,
        );
        Ok(Core {
            writers,
            sources,
            subscriptions,
            metrics,
        })
    }
}

/// A server bound to its port, ready to run.
pub struct Application {
    port: u16,
    server: Server,
    /// The private cluster, when crablet runs one; stopped after the server.
    embedded: Option<EmbeddedPostgres>,
    /// After a stop signal, how long open connections are still served
    /// before idle ones are closed (`http.shutdown_drain_ms`).
    shutdown_drain: Duration,
    /// Closed when the server stops, so open streams end at once.
    subscriptions: Subscriptions,
    /// What SIGHUP reloads.
    reload: Reload,
}

impl Application {
    /// Builds the server, step by step: the door (tokens, HTTPS), the
    /// database (the embedded cluster when no URL is set; waiting for it;
    /// the pooler or its absence checked; the schema; the pools), the core (the writer lanes, the readers'
    /// pools, subscriptions), then the listener and the HTTP server. Must
    /// run inside an actix system.
    pub async fn build(settings: Settings) -> Result<Self, AppError> {
        let door = Door::load(&settings)?;
        let reload = Reload::new(&settings.auth, &door.tokens);
        let database = Database::locate(&settings).await?;
        database.check(&settings).await?;
        database.migrate(&settings).await?;
        let metrics = Metrics::new();
        let mut pools = database.pools(&settings, &metrics);
        pools.replicas = Database::replica_pools(&settings, &metrics)?;
        let core = Core::start(&settings, pools, metrics).await?;
        server::raise_open_files_limit();
        let (listener, port) = server::bind(&settings.listen)?;
        let https = door.https.is_some();
        let (server, certificate) = server::start(listener, &settings, &core, door)?;
        log::info!(
            "crablet listening on {}://{}",
            if https { "https" } else { "http" },
            settings.listen.replace(":0", &format!(":{port}"))
        );
        Ok(Application {
            port,
            server,
            embedded: database.embedded,
            shutdown_drain: Duration::from_millis(settings.http.shutdown_drain_ms),
            subscriptions: core.subscriptions,
            reload: reload.with_certificate(certificate),
        })
    }

    /// The port the server listens on (useful with `listen = "...:0"`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What SIGHUP reloads, to reload it without a signal (the tests).
    pub fn reloader(&self) -> Reload {
        self.reload.clone()
    }

    /// A handle to stop the server (gracefully with `stop(true)`).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT or SIGTERM, then stops gracefully: the listener
    /// closes, requests in flight get their answers (for at most
    /// `http.shutdown_timeout_s`), then the embedded PostgreSQL stops.
    /// What `crablet serve` runs.
    pub async fn run_until_signalled(self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};

        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let reload = self.reload.clone();
        actix_rt::spawn(async move {
            while sighup.recv().await.is_some() {
                log::info!("SIGHUP: reloading the tokens and the TLS certificate");
                reload.reload();
            }
        });
        let handle = self.server.handle();
        let drain = self.shutdown_drain;
        let subscriptions = self.subscriptions.clone();
        actix_rt::spawn(async move {
            let name = tokio::select! {
                _ = sigint.recv() => "SIGINT",
                _ = sigterm.recv() => "SIGTERM",
            };
            log::info!("{name}: finishing the requests in flight, then stopping");
            // Subscriptions never end on their own: end them now, each with
            // its resume position, so the graceful stop does not wait on them.
            subscriptions.close_all();
            // First accept no new connection but go on serving the open ones:
            // a graceful stop closes idle keep-alive connections at once and
            // drops a request a client had already sent on one but the
            // server had not read yet.
            handle.pause().await;
            tokio::time::sleep(drain).await;
            handle.stop(true).await;
        });
        self.run_until_stopped().await
    }

    /// Serves until the server is stopped through its [`handle`](Self::handle)
    /// (no signal handling: the integration tests run servers in-process),
    /// then stops the embedded PostgreSQL, if any.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        log::info!("HTTP server stopped");
        self.subscriptions.close_all();
        if let Some(mut cluster) = self.embedded {
            web::block(move || cluster.stop())
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        result
    }
}
