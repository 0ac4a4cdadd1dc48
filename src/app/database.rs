//! The database at start-up: where it is (the embedded cluster or a URL),
//! waiting for it, applying the schema, and the connection pools.

use std::time::{Duration, Instant};

use actix_web::web;

use super::AppError;
use crate::actors::ReaderPools;
use crate::config::{Pooler, Settings};
use crate::embedded::{EmbeddedError, EmbeddedPostgres};
use crate::metrics::{Metrics, PoolSample};
use crate::store::connection::{settings_in_transaction, SettingsSeen, SETTINGS_SEEN};
use crate::store::{self, PoolSettings, SessionSettings};

/// The database crablet serves: how to connect, and the private cluster
/// when crablet runs its own.
pub struct Database {
    pub config: tokio_postgres::Config,
    pub tls: store::tls::DbTls,
    /// The private cluster, when no database URL is configured.
    pub embedded: Option<EmbeddedPostgres>,
    /// `database.listen_database_url`, when set: a direct connection.
    pub listen: Option<(tokio_postgres::Config, store::tls::DbTls)>,
}

impl Database {
    /// The configured database, or a private cluster started from the
    /// PostgreSQL binaries on the machine when no URL is set.
    pub async fn locate(settings: &Settings) -> Result<Self, AppError> {
        let mut embedded = None;
        let url = if settings.database_url.trim().is_empty() {
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
        let parse = |url: &str| {
            let (mut config, tls) =
                store::tls::parse_database_url(url).map_err(AppError::DatabaseUrl)?;
            if config.get_connect_timeout().is_none() {
                config.connect_timeout(settings.database.connect_timeout());
            }
            Ok::<_, AppError>((config, tls))
        };
        let (config, tls) = parse(&url)?;
        let listen = match settings.database.listen_database_url.trim() {
            "" => None,
            url => Some(parse(url)?),
        };
        Ok(Database {
            config,
            tls,
            embedded,
            listen,
        })
    }

    /// Checks, waiting up to `database.startup_timeout_s` for the database,
    /// that what is between crablet and PostgreSQL is what
    /// `database.pooler` says, and that `database.listen_database_url` is
    /// a direct connection: a mismatch would break silently later (settings
    /// missing, named statements handed to other sessions), so it refuses
    /// to start instead, saying what to set.
    pub async fn check(&self, settings: &Settings) -> Result<(), AppError> {
        let timeout = settings.database.startup_timeout();
        let session = SessionSettings {
            statement_timeout: settings.database.statement_timeout(),
        };
        match settings.database.pooler {
            Pooler::None => {
                if let Some(found) =
                    check_direct(&self.config, &self.tls, timeout, &session).await?
                {
                    return Err(AppError::Pooler(format!(
                        "{found}: database_url seems to point at a connection pooler; for \
                             PgBouncer in transaction mode set database.pooler = \"transaction\" \
                             (--database-pooler transaction, CRABLET_DATABASE_POOLER=transaction), \
                             see docs/operations.md"
                    )));
                }
            }
            Pooler::Transaction => {
                check_pooled(&self.config, &self.tls, timeout, &session).await?;
            }
        }
        if let Some((config, tls)) = &self.listen {
            if let Some(found) = check_direct(config, tls, timeout, &session).await? {
                return Err(AppError::Pooler(format!(
                    "{found}: database.listen_database_url must be a direct connection to \
                         PostgreSQL, never through a pooler; point it at the primary itself"
                )));
            }
        }
        Ok(())
    }

    /// Applies the schema over a connection of its own, first waiting up to
    /// `database.startup_timeout_s` for the database to accept it.
    pub async fn migrate(&self, settings: &Settings) -> Result<(), AppError> {
        let timeout = settings.database.startup_timeout();
        let (mut client, connection) = connect_at_startup(&self.config, &self.tls, timeout).await?;
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

    /// The pools: one for the writer lanes, the plain and the costly reader
    /// pools, and the one connection on `database.listen_database_url` when
    /// it is set; each one's usage exported in `metrics`.
    pub fn pools(&self, settings: &Settings, metrics: &Metrics) -> Pools {
        let statement_timeout = settings.database.statement_timeout();
        let build = |(config, tls): (&tokio_postgres::Config, &store::tls::DbTls),
                     pooler: Pooler,
                     name: &'static str,
                     max_size: u32,
                     wait: Duration,
                     statement: Duration| {
            let pool = store::build_pool_with_tls(
                config,
                tls,
                &PoolSettings {
                    max_size,
                    connection_timeout: wait,
                    statement_timeout: statement,
                    application_name: format!("crablet-{name}"),
                    pooler,
                },
            );
            watch_pool(metrics, name, &pool, max_size);
            pool
        };
        let primary = (&self.config, &self.tls);
        let pooler = settings.database.pooler;
        let pool = |name, max_size, wait, statement| {
            build(primary, pooler, name, max_size, wait, statement)
        };
        let reader = &settings.reader;
        // One connection per lane (the decision lane included), and one
        // spare for a lane that is replacing a broken one.
        let writer_size = settings.writer.lanes as u32 + 2;
        let writer = pool(
            "writer",
            writer_size,
            settings.writer.connect_timeout(),
            statement_timeout,
        );
        let plain = pool(
            "reader",
            reader.pool_size,
            reader.pool_timeout(),
            statement_timeout,
        );
        let costly_statement = Some(reader.costly_statement_timeout())
            .filter(|t| !t.is_zero())
            .unwrap_or(statement_timeout);
        // Costly work queues behind costly work: a request waits for the
        // statement ahead of it to run its whole budget, and is refused busy
        // only past that.
        let costly = pool(
            "costly",
            reader.costly_pool_size,
            reader.pool_timeout() + reader.costly_statement_timeout(),
            costly_statement,
        );
        // A direct connection (checked at start-up): prepared statements,
        // settings given at connect.
        let listen = self.listen.as_ref().map(|(config, tls)| {
            build(
                (config, tls),
                Pooler::None,
                "listen",
                1,
                settings.writer.connect_timeout(),
                statement_timeout,
            )
        });
        Pools {
            writer,
            listen,
            readers: ReaderPools {
                plain,
                costly,
                costly_budget_ms: reader.costly_statement_timeout_ms,
            },
            replicas: Vec::new(),
        }
    }

    /// The pools of each replica of `database.replica_urls`, named by
    /// `host:port`: small (`replicas.pool_size`, `replicas.costly_pool_size`)
    /// and quick to give up (`replicas.check_timeout_ms`), so a request
    /// whose replica is gone falls back to the primary at once.
    pub fn replica_pools(
        settings: &Settings,
        metrics: &Metrics,
    ) -> Result<Vec<(String, ReaderPools)>, AppError> {
        let replicas = &settings.replicas;
        let wait = replicas.check_timeout();
        let mut pools = Vec::new();
        for (index, url) in settings.database.replica_urls.iter().enumerate() {
            let (mut config, tls) =
                store::tls::parse_database_url(url).map_err(AppError::DatabaseUrl)?;
            if config.get_connect_timeout().is_none() {
                config.connect_timeout(wait);
            }
            let name = replica_name(&config);
            let pool = |kind: &str, max_size: u32, statement: Duration| {
                let label: &'static str =
                    Box::leak(format!("replica{index}-{kind}").into_boxed_str());
                let pool = store::build_pool_with_tls(
                    &config,
                    &tls,
                    &PoolSettings {
                        max_size,
                        connection_timeout: wait,
                        statement_timeout: statement,
                        application_name: format!("crablet-replica-{kind}"),
                        // A replica is reached directly (no pooler in between).
                        pooler: crate::config::Pooler::None,
                    },
                );
                watch_pool(metrics, label, &pool, max_size);
                pool
            };
            let reader = &settings.reader;
            let costly_statement = Some(reader.costly_statement_timeout())
                .filter(|t| !t.is_zero())
                .unwrap_or(settings.database.statement_timeout());
            pools.push((
                name,
                ReaderPools {
                    plain: pool(
                        "reader",
                        replicas.pool_size,
                        settings.database.statement_timeout(),
                    ),
                    costly: pool("costly", replicas.costly_pool_size, costly_statement),
                    costly_budget_ms: reader.costly_statement_timeout_ms,
                },
            ));
        }
        Ok(pools)
    }
}

/// The connection pools of a running server.
pub struct Pools {
    pub writer: store::Pool,
    pub readers: ReaderPools,
    /// Each replica's, with its name (see [`Database::replica_pools`]).
    pub replicas: Vec<(String, ReaderPools)>,
    /// One direct connection on `database.listen_database_url`, for the
    /// connection that follows the log; `None` when that is not set.
    pub listen: Option<store::Pool>,
}

/// `host:port` of a replica's URL (the socket directory for a unix socket):
/// its name in metrics, logs and `/health`.
fn replica_name(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
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
        // A pooler that does not pass the parameter on: no wait will help.
        if refuses_startup_options(&error) {
            return Err(AppError::OptionsRefused { address, cause });
        }
        let elapsed = started.elapsed();
        if !store::connect_may_pass(&error) || elapsed + delay > timeout {
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

/// Whether a connection attempt was refused for its startup parameter
/// `options`: PgBouncer's "unsupported startup parameter: options".
fn refuses_startup_options(error: &tokio_postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.message().starts_with("unsupported startup parameter"))
}

/// Marks a connection whose startup parameter `options` reached the server:
/// a custom setting no server has by default.
const STARTUP_MARK: &str = "crablet.startup_check";

/// Connects to `config` as a direct connection does (with the startup
/// parameter `options`) and checks that the server applied the settings:
/// `Some` of what it found otherwise, as the start of a one-line message;
/// an error when it could not tell (no connection).
async fn check_direct(
    config: &tokio_postgres::Config,
    tls: &store::tls::DbTls,
    timeout: Duration,
    session: &SessionSettings,
) -> Result<Option<String>, AppError> {
    let address = describe_address(config);
    let mut config = config.clone();
    config.application_name("crablet-check");
    config.options(format!(
        "{} -c {STARTUP_MARK}=on",
        session.startup_options()
    ));
    let (client, connection) = match connect_at_startup(&config, tls, timeout).await {
        Ok(connected) => connected,
        Err(AppError::OptionsRefused { address, cause }) => {
            return Ok(Some(format!(
                "the server at {address} refused the startup parameter `options` ({cause})"
            )))
        }
        Err(other) => return Err(other),
    };
    let driver = actix_rt::spawn(connection);
    let query = format!("{SETTINGS_SEEN}, current_setting('{STARTUP_MARK}', true)");
    let seen = client.query_typed(&query, &[]).await;
    drop(client);
    let _ = driver.await;
    let unreadable = |e: tokio_postgres::Error| {
        AppError::Pooler(format!(
            "checking the settings at {address}: {}",
            store::describe(&e)
        ))
    };
    let row = seen
        .map_err(unreadable)?
        .into_iter()
        .next()
        .ok_or_else(|| AppError::Pooler(format!("checking the settings at {address}: no row")))?;
    let seen = SettingsSeen::of_row(&row).map_err(unreadable)?;
    let mark: Option<String> = row.try_get(3).map_err(unreadable)?;
    if mark.as_deref() == Some("on") && session.are(&seen) {
        return Ok(None);
    }
    Ok(Some(format!(
        "the server at {address} dropped the settings crablet gives at connect in the startup \
         parameter `options` (asked plan_cache_mode = force_generic_plan, jit = off, \
         statement_timeout = {} ms; found {seen})",
        session.statement_timeout.as_millis()
    )))
}

/// Behind a pooler in transaction mode: runs one statement the way every
/// statement runs ([`settings_in_transaction`]) and checks that the
/// settings of its transaction held for it, that is, that the pooler kept
/// the transaction on one server connection.
async fn check_pooled(
    config: &tokio_postgres::Config,
    tls: &store::tls::DbTls,
    timeout: Duration,
    session: &SessionSettings,
) -> Result<(), AppError> {
    let address = describe_address(config);
    let (client, connection) = connect_at_startup(config, tls, timeout).await?;
    let driver = actix_rt::spawn(connection);
    let seen = settings_in_transaction(&client, session).await;
    drop(client);
    let _ = driver.await;
    let refuse = |found: String| {
        AppError::Pooler(format!(
            "database.pooler = \"transaction\", but {found}: crablet needs the pooler at \
             {address} in transaction mode (PgBouncer pool_mode = transaction), see \
             docs/operations.md"
        ))
    };
    match seen {
        Ok(seen) if session.are(&seen) => Ok(()),
        Ok(seen) => Err(refuse(format!(
            "the settings set at the start of a transaction did not hold for its statement \
             (found {seen}): the transaction did not stay on one server connection"
        ))),
        Err(e) => Err(refuse(format!("a transaction failed ({e})"))),
    }
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
