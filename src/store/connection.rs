//! Pooled connections that carry their prepared statements.
//!
//! A [`Connection`] is a tokio-postgres client plus every statement crablet
//! runs, prepared once when the connection is opened. The pool is bb8 over
//! bb8-postgres's connection manager, wrapped so that preparing is part of
//! connecting; its connections use TLS when the database URL asks for it
//! ([`super::tls`]).

use std::time::Duration;

use bb8_postgres::PostgresConnectionManager;
use tokio_postgres::{Client, Statement};

use super::tls::DbTls;

/// SQL of every prepared statement, one file each.
mod sql {
    pub const APPEND_BATCH: &str = include_str!("../../sql/queries/append_batch.sql");
    pub const READ_ALL_FORWARD: &str = include_str!("../../sql/queries/read_all_forward.sql");
    pub const READ_ALL_BACKWARD: &str = include_str!("../../sql/queries/read_all_backward.sql");
    pub const READ_KEY_FORWARD: &str = include_str!("../../sql/queries/read_key_forward.sql");
    pub const READ_KEY_BACKWARD: &str = include_str!("../../sql/queries/read_key_backward.sql");
    pub const READ_PROBES_FORWARD: &str = include_str!("../../sql/queries/read_probes_forward.sql");
    pub const READ_PROBES_BACKWARD: &str =
        include_str!("../../sql/queries/read_probes_backward.sql");
    pub const PROJECT: &str = include_str!("../../sql/queries/project.sql");
}

/// A read statement in both directions.
pub struct Directed {
    pub forward: Statement,
    pub backward: Statement,
}

impl Directed {
    pub fn pick(&self, backwards: bool) -> &Statement {
        if backwards {
            &self.backward
        } else {
            &self.forward
        }
    }

    /// Prepares both directions of a read.
    async fn prepare(
        client: &Client,
        forward: &str,
        backward: &str,
    ) -> Result<Self, tokio_postgres::Error> {
        let (forward, backward) =
            tokio::try_join!(client.prepare(forward), client.prepare(backward))?;
        Ok(Directed { forward, backward })
    }
}

/// The prepared statements of one connection.
pub struct Statements {
    pub append_batch: Statement,
    /// Every event in a position range.
    pub read_all: Directed,
    /// The events under one key (a query with a single probe).
    pub read_key: Directed,
    /// The events matching a JSON list of probes.
    pub read_probes: Directed,
    /// Every projector's state and the head, from one snapshot.
    pub project: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        // Prepared concurrently: tokio-postgres pipelines them in one round trip.
        let (append_batch, read_all, read_key, read_probes, project) = tokio::try_join!(
            client.prepare(sql::APPEND_BATCH),
            Directed::prepare(client, sql::READ_ALL_FORWARD, sql::READ_ALL_BACKWARD),
            Directed::prepare(client, sql::READ_KEY_FORWARD, sql::READ_KEY_BACKWARD),
            Directed::prepare(client, sql::READ_PROBES_FORWARD, sql::READ_PROBES_BACKWARD),
            client.prepare(sql::PROJECT),
        )?;
        Ok(Statements {
            append_batch,
            read_all,
            read_key,
            read_probes,
            project,
        })
    }
}

/// A database connection with its prepared statements.
pub struct Connection {
    pub client: Client,
    pub statements: Statements,
    /// Set by a holder while the connection is in a state it must not be
    /// reused in (a batch under way that a panic or a restart may abandon);
    /// the pool discards a connection returned with it set.
    pub discard_on_return: bool,
}

/// bb8 connection manager: bb8-postgres's, plus statement preparation.
pub struct ConnectionManager {
    inner: PostgresConnectionManager<DbTls>,
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
            discard_on_return: false,
        })
    }

    async fn is_valid(&self, conn: &mut Connection) -> Result<(), Self::Error> {
        conn.client.simple_query("").await.map(|_| ())
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        conn.discard_on_return || conn.client.is_closed()
    }
}

pub type Pool = bb8::Pool<ConnectionManager>;

/// A connection checked out of a [`Pool`], owned by its holder.
pub type LiveConnection = bb8::PooledConnection<'static, ConnectionManager>;

/// Checks out a connection that is still open. An idle connection can have
/// been closed by the server since it was returned (a PostgreSQL restart
/// closes them all); such a one goes back to the pool, which discards it,
/// and the next is tried, so the caller never pays for the restart.
///
/// The whole checkout, however many tries it takes, is bounded by the pool's
/// connection timeout: while the database is unreachable a caller waits that
/// long once, never once per try.
pub async fn checkout(pool: &Pool) -> Result<LiveConnection, super::StoreError> {
    let bound = pool.config().connection_timeout;
    let attempts = pool.state().connections + 1;
    let tries = async {
        for _ in 0..attempts {
            let conn = pool.get_owned().await?;
            if !conn.client.is_closed() {
                return Ok(conn);
            }
        }
        Ok(pool.get_owned().await?)
    };
    tokio::time::timeout(bound, tries)
        .await
        .unwrap_or_else(|_| {
            Err(super::StoreError::Unavailable(
                "timed out waiting for a database connection".into(),
            ))
        })
}

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
    build_pool_with_tls(config, &DbTls::plain(), settings)
}

/// [`build_pool`] whose connections use `tls` (as the database URL asks).
pub fn build_pool_with_tls(
    config: &tokio_postgres::Config,
    tls: &DbTls,
    settings: &PoolSettings,
) -> Pool {
    let mut config = config.clone();
    config.application_name(&settings.application_name);
    // Every statement crablet prepares is written so that its generic plan
    // is an index range scan whatever the values; forcing generic plans
    // spares planning on every execution and rules out a custom plan that
    // walks the log. JIT is off: a generic plan's estimated cost grows with
    // the store until it crosses `jit_above_cost`, and then every execution
    // of a sub-millisecond statement would pay milliseconds of compilation.
    let mut options = String::from("-c plan_cache_mode=force_generic_plan -c jit=off");
    if !settings.statement_timeout.is_zero() {
        options.push_str(&format!(
            " -c statement_timeout={}",
            settings.statement_timeout.as_millis()
        ));
    }
    config.options(&options);
    let manager = ConnectionManager {
        inner: PostgresConnectionManager::new(config, tls.clone()),
    };
    bb8::Pool::builder()
        .max_size(settings.max_size)
        .min_idle(Some(0))
        .connection_timeout(settings.connection_timeout)
        .test_on_check_out(false)
        .build_unchecked(manager)
}
