//! [`Application`]: assembles settings into a running server. `main` and the
//! integration tests build the server through this one entry point.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};

use crate::actors::{EventStore, Writers};
use crate::config::Settings;
use crate::embedded::{EmbeddedError, EmbeddedPostgres};
use crate::http::{self, AppState};
use crate::metrics::{Metrics, PoolSample};
use crate::store::{self, PoolSettings};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid database URL: {0}")]
    DatabaseUrl(#[source] tokio_postgres::Error),
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("schema migration failed: {0}")]
    Migrate(#[source] tokio_postgres::Error),
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
}

impl Application {
    /// Starts the embedded PostgreSQL if no database URL is set, applies the
    /// schema, starts the actors and binds the listener. Must run inside an
    /// actix system.
    pub async fn build(settings: Settings) -> Result<Self, AppError> {
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
        let pg_config: tokio_postgres::Config =
            database_url.parse().map_err(AppError::DatabaseUrl)?;

        migrate(&pg_config).await?;

        let metrics = Metrics::new();
        let statement_timeout = settings.database.statement_timeout();
        let writer_pool = store::build_pool(
            &pg_config,
            &PoolSettings {
                // One connection per lane, and one spare for a lane that is
                // replacing a broken one.
                max_size: settings.writer.lanes as u32 + 1,
                connection_timeout: settings.writer.connect_timeout(),
                statement_timeout,
                application_name: "crablet-writer".into(),
            },
        );
        let reader_pool = store::build_pool(
            &pg_config,
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
            settings.writer.lanes as u32 + 1,
        );
        watch_pool(&metrics, "reader", &reader_pool, settings.reader.pool_size);
        let writers = Writers::start(writer_pool, &settings.writer, &metrics);

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
        let max_body_bytes = settings.http.max_body_bytes;
        let request_timeout = settings.http.request_timeout();
        let server = HttpServer::new(move || {
            // Runs once on each worker thread: its reader lives there.
            let store = EventStore::on_this_thread(
                &writers,
                reader_pool.clone(),
                &reader_settings,
                &metrics,
            );
            let state = web::Data::new(AppState {
                store,
                limits: limits.clone(),
                metrics: metrics.clone(),
                max_body_bytes,
                page_size: reader_settings.page_size,
                request_timeout,
            });
            App::new()
                .app_data(state)
                .wrap(middleware::from_fn(http::context::around_request))
                .configure(http::routes)
        })
        .workers(http_workers(settings.http.workers))
        .max_connections(settings.http.max_connections_per_worker)
        .shutdown_timeout(settings.http.shutdown_timeout_s)
        // The head's share of the whole-request deadline; the body's is
        // enforced where it is read (http::read_json_body).
        .client_request_timeout(request_timeout)
        .keep_alive(settings.http.keep_alive())
        .listen(listener)
        .map_err(|source| AppError::Listen {
            address: settings.listen.clone(),
            source,
        })?;
        log::info!(
            "crablet listening on {}",
            settings.listen.replace(":0", &format!(":{port}"))
        );
        Ok(Application {
            port,
            server: server.run(),
            embedded,
        })
    }

    /// The port the server listens on (useful with `listen = "...:0"`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the server is stopped (SIGINT/SIGTERM), then stops the
    /// embedded PostgreSQL, if any.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
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

/// Applies the schema over a connection of its own.
async fn migrate(config: &tokio_postgres::Config) -> Result<(), AppError> {
    let (mut client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(AppError::Connect)?;
    let driver = actix_rt::spawn(async move {
        if let Err(e) = connection.await {
            log::warn!("migration connection: {e}");
        }
    });
    let result = store::migrate::run(&mut client).await;
    drop(client);
    let _ = driver.await;
    result.map(|_| ()).map_err(AppError::Migrate)
}
