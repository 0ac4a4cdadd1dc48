//! Pooled connections that carry their prepared statements.
//!
//! A [`Connection`] is a tokio-postgres client plus every statement crablet
//! runs, prepared once when the connection is opened. The pool is bb8 over
//! bb8-postgres's connection manager, wrapped so that preparing is part of
//! connecting.

use std::time::Duration;

use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::{Client, NoTls, Statement};

/// SQL of every prepared statement, one file each.
mod sql {
    pub const LOCK_KEYS: &str = include_str!("../../sql/queries/lock_keys.sql");
    pub const CHECK_CONDITIONS: &str = include_str!("../../sql/queries/check_conditions.sql");
    pub const HEAD: &str = include_str!("../../sql/queries/head.sql");
    pub const LOCK_SEQUENCE: &str = include_str!("../../sql/queries/lock_sequence.sql");
    pub const INSERT_EVENTS: &str = include_str!("../../sql/queries/insert_events.sql");
    pub const READ_ALL_FORWARD: &str = include_str!("../../sql/queries/read_all_forward.sql");
    pub const READ_ALL_BACKWARD: &str = include_str!("../../sql/queries/read_all_backward.sql");
    pub const READ_PROBES_FORWARD: &str = include_str!("../../sql/queries/read_probes_forward.sql");
    pub const READ_PROBES_BACKWARD: &str =
        include_str!("../../sql/queries/read_probes_backward.sql");
}

/// The prepared statements of one connection.
pub struct Statements {
    pub lock_keys: Statement,
    pub check_conditions: Statement,
    pub head: Statement,
    pub lock_sequence: Statement,
    pub insert_events: Statement,
    pub read_all_forward: Statement,
    pub read_all_backward: Statement,
    pub read_probes_forward: Statement,
    pub read_probes_backward: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        // Prepared concurrently: tokio-postgres pipelines them in one round trip.
        let (lock_keys, check_conditions, head, lock_sequence, insert_events) = tokio::try_join!(
            client.prepare(sql::LOCK_KEYS),
            client.prepare(sql::CHECK_CONDITIONS),
            client.prepare(sql::HEAD),
            client.prepare(sql::LOCK_SEQUENCE),
            client.prepare(sql::INSERT_EVENTS),
        )?;
        let (read_all_forward, read_all_backward, read_probes_forward, read_probes_backward) = tokio::try_join!(
            client.prepare(sql::READ_ALL_FORWARD),
            client.prepare(sql::READ_ALL_BACKWARD),
            client.prepare(sql::READ_PROBES_FORWARD),
            client.prepare(sql::READ_PROBES_BACKWARD),
        )?;
        Ok(Statements {
            lock_keys,
            check_conditions,
            head,
            lock_sequence,
            insert_events,
            read_all_forward,
            read_all_backward,
            read_probes_forward,
            read_probes_backward,
        })
    }
}

/// A database connection with its prepared statements.
pub struct Connection {
    pub client: Client,
    pub statements: Statements,
    /// Set when a failure left the session in an unknown state (a rollback
    /// that did not go through): the pool then discards the connection.
    pub broken: bool,
}

/// bb8 connection manager: bb8-postgres's, plus statement preparation.
pub struct ConnectionManager {
    inner: PostgresConnectionManager<NoTls>,
}

impl bb8::ManageConnection for ConnectionManager {
    type Connection = Connection;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<Connection, Self::Error> {
        let client = self.inner.connect().await?;
        let statements = Statements::prepare(&client).await?;
        Ok(Connection {
            client,
            statements,
            broken: false,
        })
    }

    async fn is_valid(&self, conn: &mut Connection) -> Result<(), Self::Error> {
        conn.client.simple_query("").await.map(|_| ())
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        conn.broken || conn.client.is_closed()
    }
}

pub type Pool = bb8::Pool<ConnectionManager>;

/// How a pool is sized and how long a caller waits for a connection.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_size: u32,
    pub connection_timeout: Duration,
    /// Server-side limit on one statement (0 disables it).
    pub statement_timeout: Duration,
    /// Names the pool's connections in `pg_stat_activity`.
    pub application_name: String,
}

/// Builds a pool. Connections are opened lazily, on first use, in the runtime
/// of the task that needs them: the actor that owns the pool.
pub fn build_pool(config: &tokio_postgres::Config, settings: &PoolSettings) -> Pool {
    let mut config = config.clone();
    config.application_name(&settings.application_name);
    let mut options = String::new();
    if !settings.statement_timeout.is_zero() {
        options.push_str(&format!(
            "-c statement_timeout={}",
            settings.statement_timeout.as_millis()
        ));
    }
    if !options.is_empty() {
        config.options(&options);
    }
    let manager = ConnectionManager {
        inner: PostgresConnectionManager::new(config, NoTls),
    };
    bb8::Pool::builder()
        .max_size(settings.max_size)
        .min_idle(Some(0))
        .connection_timeout(settings.connection_timeout)
        .test_on_check_out(false)
        .build_unchecked(manager)
}
