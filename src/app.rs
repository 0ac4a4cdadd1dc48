//! [`Application`]: assembles settings into a running server. `main` and the
//! integration tests build the server through this one entry point.
//!
//! It owns the process's life cycle: waiting for the database at start-up
//! (`database.startup_timeout_s`), applying the schema, and the graceful stop on
//! SIGINT or SIGTERM (in-flight requests finish, then the embedded cluster stops).
//! It holds no request logic and speaks no SQL beyond calling the migrator.
//!
//! Security at the door is assembled here too: the bearer tokens in force
//! (refusing to serve a non-loopback address without any, unless
//! `auth.allow_anonymous`), HTTPS when `tls.*` is set, CORS for the origins of
//! `http.cors_origins`, and the SIGHUP reload of tokens and certificate.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle};
use actix_web::{middleware, web, App, HttpServer};

use crate::actors::{EventStore, ReaderPools, Subscriptions, Writers};
use crate::auth::{AuthError, AuthSettings, TokenStore, Tokens};
use crate::config::Settings;
use crate::embedded::{EmbeddedError, EmbeddedPostgres};
use crate::http::{self, AppState};
use crate::metrics::{Metrics, PoolSample};
use crate::store::{self, PoolSettings, ProjectionStates};

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
    #[error("schema migration failed: {0}")]
    Migrate(#[from] store::migrate::MigrateError),
    #[error("embedded PostgreSQL: {0}")]
    Embedded(#[from] EmbeddedError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
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

/// What a SIGHUP reloads: the tokens (configuration and tokens file) and the
/// HTTPS certificate.
#[derive(Clone)]
pub struct Reload {
    auth: AuthSettings,
    tokens: std::sync::Arc<TokenStore>,
    certificate: Option<crate::tls::CertificateReloader>,
}

impl Reload {
    /// Reads the tokens file and the certificate again; what fails to load
    /// is logged and the old one stays in force.
    pub fn reload(&self) {
        match Tokens::load(&self.auth)
            .map_err(|e| e.to_string())
            .and_then(|tokens| {
                let count = tokens.len();
                self.tokens
                    .replace(tokens)
                    .map(|()| count)
                    .map_err(str::to_owned)
            }) {
            Ok(count) => log::info!("reloaded the tokens: {count} in force"),
            Err(e) => log::error!("tokens not reloaded (the old ones stay): {e}"),
        }
        if let Some(certificate) = &self.certificate {
            match certificate.reload() {
                Ok(()) => log::info!("reloaded the TLS certificate"),
                Err(e) => log::error!("TLS certificate not reloaded (the old one stays): {e}"),
            }
        }
    }
}

/// Whether every address `listen` resolves to is a loopback one.
fn is_loopback(listen: &str) -> bool {
    use std::net::ToSocketAddrs;
    match listen.to_socket_addrs() {
        Ok(addresses) => {
            let addresses: Vec<_> = addresses.collect();
            !addresses.is_empty() && addresses.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

impl Application {
    /// Starts the embedded PostgreSQL if no database URL is set, applies the
    /// schema, starts the actors and binds the listener. Must run inside an
    /// actix system.
    pub async fn build(settings: Settings) -> Result<Self, AppError> {
        let tokens = Tokens::load(&settings.auth)?;
        if tokens.is_empty() && !settings.auth.allow_anonymous && !is_loopback(&settings.listen) {
            return Err(AppError::Anonymous {
                address: settings.listen.clone(),
            });
        }
        if tokens.is_empty() && !is_loopback(&settings.listen) {
            log::warn!(
                "no auth token configured and auth.allow_anonymous = true: every request to {} \
                 is served without authentication",
                settings.listen
            );
        }
        let tokens = std::sync::Arc::new(TokenStore::new(tokens));
        let https = if settings.tls.enabled() {
            Some(crate::tls::server_config(&settings.tls)?)
        } else {
            None
        };
        let mut embedded = None;
        let database_url = if settings.database_url.trim().is_empty() {
            let data_dir = settings.data_dir.clone();
            let cluster = web::block(move || EmbeddedPostgres::start(&data_dir))
                .await
                .map_err(|e| {
                    AppError::Embedded(EmbeddedError::Io {
                        context: "starting the embedded PostgreSQL".into(),
                        source: std::io::Error::other(e.to_string()),
                    })
                })??;
            let url = cluster.connection_string("crablet");
            embedded = Some(cluster);
            url
        } else {
            settings.database_url.clone()
        };
        let (mut pg_config, db_tls) =
            store::tls::parse_database_url(&database_url).map_err(AppError::DatabaseUrl)?;
        if pg_config.get_connect_timeout().is_none() {
            pg_config.connect_timeout(settings.database.connect_timeout());
        }

        migrate(&pg_config, &db_tls, settings.database.startup_timeout()).await?;

        let metrics = Metrics::new();
        let statement_timeout = settings.database.statement_timeout();
        let writer_pool = store::build_pool_with_tls(
            &pg_config,
            &db_tls,
            &PoolSettings {
                // One connection per lane (the decision lane included), and
                // one spare for a lane that is replacing a broken one.
                max_size: settings.writer.lanes as u32 + 2,
                connection_timeout: settings.writer.connect_timeout(),
                statement_timeout,
                application_name: "crablet-writer".into(),
            },
        );
        let reader_pool = store::build_pool_with_tls(
            &pg_config,
            &db_tls,
            &PoolSettings {
                max_size: settings.reader.pool_size,
                connection_timeout: settings.reader.pool_timeout(),
                statement_timeout,
                application_name: "crablet-reader".into(),
            },
        );
        watch_pool(
            &metrics,
            "writer",
            &writer_pool,
            settings.writer.lanes as u32 + 2,
        );
        let costly_pool = store::build_pool_with_tls(
            &pg_config,
            &db_tls,
            &PoolSettings {
                max_size: settings.reader.costly_pool_size,
                // Costly work queues behind costly work: a request waits for
                // the statement ahead of it to run its whole budget, and is
                // refused busy only past that.
                connection_timeout: settings.reader.pool_timeout()
                    + settings.reader.costly_statement_timeout(),
                statement_timeout: Some(settings.reader.costly_statement_timeout())
                    .filter(|t| !t.is_zero())
                    .unwrap_or(statement_timeout),
                application_name: "crablet-costly".into(),
            },
        );
        watch_pool(&metrics, "reader", &reader_pool, settings.reader.pool_size);
        watch_pool(
            &metrics,
            "costly",
            &costly_pool,
            settings.reader.costly_pool_size,
        );
        let reader_pools = ReaderPools {
            plain: reader_pool.clone(),
            costly: costly_pool,
            costly_budget_ms: settings.reader.costly_statement_timeout_ms,
        };
        let states = Arc::new(ProjectionStates::new(
            settings.projections.state_cache_bytes,
            &metrics,
        ));
        let writers = Writers::start(writer_pool, &settings.writer, &metrics, states);
        let subscriptions = Subscriptions::start(
            reader_pool.clone(),
            writers.committed(),
            &settings.subscriptions,
            &metrics,
        );

        raise_open_files_limit();
        let listener = TcpListener::bind(&settings.listen).map_err(|source| AppError::Listen {
            address: settings.listen.clone(),
            source,
        })?;
        let port = listener
            .local_addr()
            .map_err(|source| AppError::Listen {
                address: settings.listen.clone(),
                source,
            })?
            .port();

        let (limits, reader_settings) = (settings.limits.clone(), settings.reader.clone());
        let server_subscriptions = subscriptions.clone();
        let max_body_bytes = settings.http.max_body_bytes;
        let request_timeout = settings.http.request_timeout();
        let compat = settings.compat.clone();
        let auth_state = web::Data::new(http::auth::AuthState {
            tokens: tokens.clone(),
            metrics_requires_token: settings.auth.metrics_requires_token,
        });
        let cors_origins = settings.http.cors_origins.clone();
        let server = HttpServer::new(move || {
            // Runs once on each worker thread: its reader lives there.
            let store = EventStore::on_this_thread(
                &writers,
                reader_pools.clone(),
                &reader_settings,
                &metrics,
            );
            let state = web::Data::new(AppState {
                store,
                // This worker's subscribers are fanned out here.
                subscriptions: server_subscriptions.on_this_thread(),
                limits: limits.clone(),
                metrics: metrics.clone(),
                max_body_bytes,
                page_size: reader_settings.page_size,
                page_max_bytes: reader_settings.page_max_bytes,
                request_timeout,
                compat: compat.clone(),
            });
            App::new()
                .app_data(state)
                .app_data(auth_state.clone())
                .wrap(middleware::from_fn(http::auth::require_token))
                .wrap(middleware::from_fn(http::context::around_request))
                .wrap(middleware::Condition::new(
                    !cors_origins.is_empty(),
                    cors(&cors_origins),
                ))
                .configure(http::routes)
        })
        // A subscription writes many small chunks on one connection; with
        // Nagle's algorithm each would wait for the client's delayed ACK
        // (about 40 ms). Replies are written whole, so nothing is lost.
        .on_connect(|connection, _| {
            if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
            }
            if let Some(tls) = connection.downcast_ref::<TlsStream>() {
                let _ = tls.get_ref().0.set_nodelay(true);
            }
        })
        // A client that closes its side of the connection is gone: its
        // connection is closed at once and the response it was being sent
        // dropped. Actix's default keeps a half-closed connection until a
        // write fails, so a closed subscription (a stream with nothing to
        // send until its next heartbeat) would hold its place among
        // `subscriptions.max_subscribers` for up to two heartbeats.
        .h1_allow_half_closed(false)
        .workers(http_workers(settings.http.workers))
        // Signals are handled in `run_until_signalled`: actix's own handling
        // makes SIGINT a forced stop that drops the requests in flight.
        .disable_signals()
        .max_connections(settings.http.max_connections_per_worker)
        .shutdown_timeout(settings.http.shutdown_timeout_s)
        // The head's share of the whole-request deadline; the body's is
        // enforced where it is read (http::read_json_body).
        .client_request_timeout(request_timeout)
        .keep_alive(settings.http.keep_alive());
        let (server, certificate) = match https {
            Some((config, reloader)) => {
                (server.listen_rustls_0_23(listener, config), Some(reloader))
            }
            None => (server.listen(listener), None),
        };
        let server = server.map_err(|source| AppError::Listen {
            address: settings.listen.clone(),
            source,
        })?;
        log::info!(
            "crablet listening on {}://{}",
            if certificate.is_some() {
                "https"
            } else {
                "http"
            },
            settings.listen.replace(":0", &format!(":{port}"))
        );
        Ok(Application {
            port,
            server: server.run(),
            embedded,
            shutdown_drain: Duration::from_millis(settings.http.shutdown_drain_ms),
            subscriptions,
            reload: Reload {
                auth: settings.auth.clone(),
                tokens,
                certificate,
            },
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

/// Exports `pool`'s usage, sampled whenever `/metrics` renders.
fn watch_pool(metrics: &Metrics, name: &'static str, pool: &store::Pool, max_size: u32) {
    let pool = pool.clone();
    metrics.watch_pool(name, move || {
        let state = pool.state();
        PoolSample {
            max_size,
            connections: state.connections,
            idle: state.idle_connections,
            waiting: state.statistics.pending_gets(),
            timed_out: state.statistics.get_timed_out,
        }
    });
}

/// Raises the soft limit on open files to the hard limit: every connection is
/// a file descriptor, and the common soft default (1,024) would let a few
/// thousand idle clients stop crablet from accepting anyone else.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => log::debug!("open files limit: {limit}"),
        Err(e) => log::warn!("cannot raise the open files limit: {e}"),
    }
}

/// The number of HTTP worker threads: as configured, or one per two cores.
fn http_workers(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).max(1)
}

/// Applies the schema over a connection of its own, first waiting up to
/// `startup_timeout` for the database to accept it.
async fn migrate(
    config: &tokio_postgres::Config,
    tls: &store::tls::DbTls,
    startup_timeout: Duration,
) -> Result<(), AppError> {
    let (mut client, connection) = connect_at_startup(config, tls, startup_timeout).await?;
    let driver = actix_rt::spawn(async move {
        if let Err(e) = connection.await {
            log::warn!("migration connection: {e}");
        }
    });
    let result = store::migrate::run(&mut client).await;
    drop(client);
    let _ = driver.await;
    result?;
    Ok(())
}

/// First wait between two connection attempts at start-up; doubles up to
/// [`STARTUP_RETRY_MAX_DELAY`].
const STARTUP_RETRY_FIRST_DELAY: Duration = Duration::from_millis(250);
const STARTUP_RETRY_MAX_DELAY: Duration = Duration::from_secs(2);

type Connected = (
    tokio_postgres::Client,
    tokio_postgres::Connection<
        tokio_postgres::Socket,
        <store::tls::DbTls as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
    >,
);

/// An HTTPS connection, as `on_connect` sees it.
type TlsStream = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;

/// CORS for `origins`: those origins may call every route from a browser,
/// with a token; other origins get no CORS header.
fn cors(origins: &[String]) -> actix_cors::Cors {
    use actix_web::http::header;
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            http::context::REQUEST_ID_HEADER,
        ])
        .expose_headers([http::context::REQUEST_ID_HEADER, header::WWW_AUTHENTICATE])
        .max_age(3600);
    for origin in origins {
        cors = cors.allowed_origin(origin);
    }
    cors
}

/// Connects, retrying while the failure may pass (the server is not up yet,
/// is starting, or refuses connections) until `timeout` has elapsed. Each
/// failure is logged with the address and its whole cause chain; a failure
/// that cannot pass by waiting (bad password, no such database) ends at once.
async fn connect_at_startup(
    config: &tokio_postgres::Config,
    tls: &store::tls::DbTls,
    timeout: Duration,
) -> Result<Connected, AppError> {
    let address = describe_address(config);
    let started = Instant::now();
    let mut delay = STARTUP_RETRY_FIRST_DELAY;
    for attempt in 1.. {
        let error = match config.connect(tls.clone()).await {
            Ok(connected) => {
                if attempt > 1 {
                    log::info!("connected to PostgreSQL at {address} (attempt {attempt})");
                }
                return Ok(connected);
            }
            Err(error) => error,
        };
        let cause = cause_chain(&error);
        let elapsed = started.elapsed();
        if !crate::store::connect_may_pass(&error) || elapsed + delay > timeout {
            return Err(AppError::Connect {
                address,
                cause,
                waited_s: elapsed.as_secs_f64(),
            });
        }
        log::warn!(
            "cannot connect to PostgreSQL at {address} (attempt {attempt}, retrying for \
             {:.0} s more): {cause}",
            (timeout - elapsed).as_secs_f64()
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(STARTUP_RETRY_MAX_DELAY);
    }
    unreachable!("the attempts never run out")
}

/// `host=... port=... dbname=... user=...` of a configuration; never its password.
pub fn describe_address(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .chain(config.get_hostaddrs().iter().map(|a| a.to_string()))
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    let or_default = |v: Vec<String>| {
        if v.is_empty() {
            "(default)".to_owned()
        } else {
            v.join(",")
        }
    };
    format!(
        "host={} port={} dbname={} user={}",
        or_default(hosts),
        or_default(ports),
        config.get_dbname().unwrap_or("(default)"),
        config.get_user().unwrap_or("(default)"),
    )
}

/// An error and every error below it: "a: b: c".
fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_names_host_port_database_and_user_but_never_the_password() {
        let config: tokio_postgres::Config = "postgres://ada:secret@db.example:6543/events"
            .parse()
            .unwrap();
        let address = describe_address(&config);
        assert_eq!(address, "host=db.example port=6543 dbname=events user=ada");
        assert!(!address.contains("secret"));
    }

    #[test]
    fn the_cause_chain_lists_every_error_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(cause_chain(&Outer(io)), "outer: refused");
    }
}
