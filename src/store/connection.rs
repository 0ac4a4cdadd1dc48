//! Pooled connections that carry their prepared statements.
//!
//! A [`Connection`] is a tokio-postgres client and the way it runs crablet's
//! statements ([`Sql`]): on a direct connection, each prepared once when the
//! connection is opened, the session's settings given at connect; behind a
//! pooler in transaction mode (`database.pooler = "transaction"`), each sent
//! unnamed with its parameter types, in a transaction of its own that sets
//! the settings (`SET LOCAL`), so nothing outlives the transaction. The pool is bb8 over
//! bb8-postgres's connection manager, wrapped so that preparing is part of
//! connecting; its connections use TLS when the database URL asks for it
//! ([`super::tls`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bb8_postgres::PostgresConnectionManager;
use futures_util::TryStreamExt;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

use super::tls::DbTls;
use super::StoreError;
use crate::config::Pooler;

/// Every statement crablet runs on a pooled connection: its SQL (one file
/// each, under `sql/queries`) and the types of its parameters, written once
/// here. On a direct connection each is a named prepared statement; behind a
/// pooler in transaction mode, an unnamed one sent with these types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sql {
    AppendBatch,
    ReadAllForward,
    ReadAllBackward,
    ReadKeyForward,
    ReadKeyBackward,
    ReadProbesForward,
    ReadProbesBackward,
    Project,
    Import,
}

/// `crablet_append_batch`'s parameters (see `sql/migrations/004_append_batch.sql`).
const APPEND_BATCH_TYPES: &[Type] = &[
    Type::INT8_ARRAY,  // p_lock_keys
    Type::BOOL_ARRAY,  // p_lock_exclusive
    Type::INT4,        // p_appends
    Type::INT4_ARRAY,  // p_append_events
    Type::INT8_ARRAY,  // p_after
    Type::INT4_ARRAY,  // p_probe_append
    Type::INT8_ARRAY,  // p_probe_key
    Type::TEXT_ARRAY,  // p_probe_tags
    Type::TEXT_ARRAY,  // p_probe_types
    Type::TEXT_ARRAY,  // p_probe_candidates
    Type::INT8_ARRAY,  // p_probe_budget
    Type::INT4_ARRAY,  // p_pair_later
    Type::INT4_ARRAY,  // p_pair_earlier
    Type::INT4_ARRAY,  // p_pair_offset
    Type::BOOL,        // p_pair_exact
    Type::INT4_ARRAY,  // p_id_later
    Type::INT4_ARRAY,  // p_id_earlier
    Type::TEXT,        // p_projectors
    Type::INT4_ARRAY,  // p_req_append
    Type::INT4_ARRAY,  // p_req_index
    Type::INT4_ARRAY,  // p_req_projector
    Type::TEXT_ARRAY,  // p_req_op
    Type::TEXT_ARRAY,  // p_req_value
    Type::INT4_ARRAY,  // p_fold_projector
    Type::INT4_ARRAY,  // p_fold_event
    Type::INT4_ARRAY,  // p_event_append
    Type::TEXT_ARRAY,  // p_types
    Type::BYTEA_ARRAY, // p_data
    Type::TEXT_ARRAY,  // p_ids
    Type::BYTEA_ARRAY, // p_metadata
    Type::TEXT_ARRAY,  // p_tags
    Type::INT4_ARRAY,  // p_key_event
    Type::INT8_ARRAY,  // p_keys
    Type::INT8,        // p_known_head
    Type::INT8,        // p_sequence_key
];
/// after, before, limit.
const READ_ALL_TYPES: &[Type] = &[Type::INT8, Type::INT8, Type::INT8];
/// key, after, before, tags, types, limit.
const READ_KEY_TYPES: &[Type] = &[
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::INT8,
];
/// probes (JSON), after, before, limit.
const READ_PROBES_TYPES: &[Type] = &[Type::TEXT, Type::INT8, Type::INT8, Type::INT8];
/// projectors (JSON).
const PROJECT_TYPES: &[Type] = &[Type::TEXT];
/// `crablet_import`'s parameters (see `sql/migrations/010_import.sql`).
const IMPORT_TYPES: &[Type] = &[
    Type::INT8_ARRAY,  // p_lock_keys
    Type::BOOL_ARRAY,  // p_lock_exclusive
    Type::INT8_ARRAY,  // p_positions
    Type::TEXT_ARRAY,  // p_types
    Type::TEXT_ARRAY,  // p_tags
    Type::BYTEA_ARRAY, // p_data
    Type::TEXT_ARRAY,  // p_ids
    Type::BYTEA_ARRAY, // p_metadata
    Type::TEXT_ARRAY,  // p_recorded_at
    Type::INT4_ARRAY,  // p_key_event
    Type::INT8_ARRAY,  // p_keys
    Type::INT8,        // p_sequence_key
];

impl Sql {
    /// Every statement, in the order a direct connection prepares them.
    pub const ALL: [Sql; 9] = [
        Sql::AppendBatch,
        Sql::ReadAllForward,
        Sql::ReadAllBackward,
        Sql::ReadKeyForward,
        Sql::ReadKeyBackward,
        Sql::ReadProbesForward,
        Sql::ReadProbesBackward,
        Sql::Project,
        Sql::Import,
    ];

    /// The statement's text.
    pub fn text(self) -> &'static str {
        match self {
            Sql::AppendBatch => include_str!("../../sql/queries/append_batch.sql"),
            Sql::ReadAllForward => include_str!("../../sql/queries/read_all_forward.sql"),
            Sql::ReadAllBackward => include_str!("../../sql/queries/read_all_backward.sql"),
            Sql::ReadKeyForward => include_str!("../../sql/queries/read_key_forward.sql"),
            Sql::ReadKeyBackward => include_str!("../../sql/queries/read_key_backward.sql"),
            Sql::ReadProbesForward => include_str!("../../sql/queries/read_probes_forward.sql"),
            Sql::ReadProbesBackward => include_str!("../../sql/queries/read_probes_backward.sql"),
            Sql::Project => include_str!("../../sql/queries/project.sql"),
            Sql::Import => include_str!("../../sql/queries/import.sql"),
        }
    }

    /// The types of its parameters, `$1` first.
    pub fn types(self) -> &'static [Type] {
        match self {
            Sql::AppendBatch => APPEND_BATCH_TYPES,
            Sql::ReadAllForward | Sql::ReadAllBackward => READ_ALL_TYPES,
            Sql::ReadKeyForward | Sql::ReadKeyBackward => READ_KEY_TYPES,
            Sql::ReadProbesForward | Sql::ReadProbesBackward => READ_PROBES_TYPES,
            Sql::Project => PROJECT_TYPES,
            Sql::Import => IMPORT_TYPES,
        }
    }

    /// Every event in a position range, in one direction.
    pub fn read_all(backwards: bool) -> Self {
        if backwards {
            Sql::ReadAllBackward
        } else {
            Sql::ReadAllForward
        }
    }

    /// The events under one key (a query with a single probe).
    pub fn read_key(backwards: bool) -> Self {
        if backwards {
            Sql::ReadKeyBackward
        } else {
            Sql::ReadKeyForward
        }
    }

    /// The events matching a JSON list of probes.
    pub fn read_probes(backwards: bool) -> Self {
        if backwards {
            Sql::ReadProbesBackward
        } else {
            Sql::ReadProbesForward
        }
    }
}

/// The prepared statements of one direct connection, in [`Sql::ALL`]'s order.
pub struct Statements {
    prepared: Vec<Statement>,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        // Prepared concurrently: tokio-postgres pipelines them in one round trip.
        let prepared = futures_util::future::try_join_all(
            Sql::ALL.iter().map(|sql| client.prepare(sql.text())),
        )
        .await?;
        Ok(Statements { prepared })
    }

    /// The prepared statement of `sql`.
    pub fn get(&self, sql: Sql) -> &Statement {
        &self.prepared[sql as usize]
    }
}

/// The settings every statement runs under: forced generic plans, no JIT,
/// and the pool's statement timeout. Given at connect on a direct
/// connection; set in each transaction behind a pooler, which would drop or
/// refuse them at connect and share the session with other clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    /// Server-side limit on one statement (0 disables it).
    pub statement_timeout: Duration,
}

impl SessionSettings {
    /// The startup parameter `options` of a direct connection.
    pub fn startup_options(&self) -> String {
        // Every statement crablet prepares is written so that its generic plan
        // is an index range scan whatever the values; forcing generic plans
        // spares planning on every execution and rules out a custom plan that
        // walks the log. JIT is off: a generic plan's estimated cost grows with
        // the store until it crosses `jit_above_cost`, and then every execution
        // of a sub-millisecond statement would pay milliseconds of compilation.
        let mut options = String::from("-c plan_cache_mode=force_generic_plan -c jit=off");
        if !self.statement_timeout.is_zero() {
            options.push_str(&format!(
                " -c statement_timeout={}",
                self.statement_timeout.as_millis()
            ));
        }
        options
    }

    /// What opens a transaction behind a pooler: `BEGIN` and the settings,
    /// `SET LOCAL` so they end with it.
    pub fn begin(&self) -> String {
        format!(
            "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL jit = off; \
             SET LOCAL statement_timeout = {}",
            self.statement_timeout.as_millis()
        )
    }

    /// Whether `seen` (what [`SETTINGS_SEEN`] answered) is what these ask for.
    pub fn are(&self, seen: &SettingsSeen) -> bool {
        seen.plan_cache_mode == "force_generic_plan"
            && seen.jit == "off"
            && (self.statement_timeout.is_zero()
                || seen.statement_timeout_ms == self.statement_timeout.as_millis().to_string())
    }
}

/// The settings a session runs under, as [`SETTINGS_SEEN`] reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsSeen {
    pub plan_cache_mode: String,
    pub jit: String,
    /// In milliseconds, as `pg_settings` has it.
    pub statement_timeout_ms: String,
}

impl std::fmt::Display for SettingsSeen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plan_cache_mode = {}, jit = {}, statement_timeout = {} ms",
            self.plan_cache_mode, self.jit, self.statement_timeout_ms
        )
    }
}

/// Reads [`SettingsSeen`] (no parameter).
pub const SETTINGS_SEEN: &str = "SELECT current_setting('plan_cache_mode'), \
     current_setting('jit'), \
     (SELECT setting FROM pg_settings WHERE name = 'statement_timeout')";

impl SettingsSeen {
    /// From the one row of [`SETTINGS_SEEN`].
    pub fn of_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(SettingsSeen {
            plan_cache_mode: row.try_get(0)?,
            jit: row.try_get(1)?,
            statement_timeout_ms: row.try_get(2)?,
        })
    }
}

/// How a connection runs its statements.
enum Session {
    /// Named prepared statements, settings given at connect.
    Direct(Statements),
    /// Behind a pooler in transaction mode: each statement unnamed, in a
    /// transaction of its own that opens with these settings
    /// ([`SessionSettings::begin`]).
    Pooled(Arc<str>),
}

/// A database connection and how it runs crablet's statements.
pub struct Connection {
    pub client: Client,
    session: Session,
    /// Set by a holder while the connection is in a state it must not be
    /// reused in (a batch under way that a panic or a restart may abandon);
    /// the pool discards a connection returned with it set.
    pub discard_on_return: bool,
    /// Set when the server said a statement or the protocol's state was lost
    /// (see [`StoreError::is_statement_lost`]): the connection is never
    /// reused, whatever its holder says.
    lost: AtomicBool,
}

impl Connection {
    /// Runs `sql` with `params` and collects its rows.
    pub async fn query(
        &self,
        sql: Sql,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let result = match &self.session {
            Session::Direct(statements) => self
                .client
                .query(statements.get(sql), params)
                .await
                .map_err(StoreError::from),
            Session::Pooled(begin) => {
                let mut rows = Vec::new();
                in_transaction(
                    &self.client,
                    begin,
                    sql.text(),
                    sql.types(),
                    params,
                    |row| {
                        rows.push(row);
                        Ok(true)
                    },
                )
                .await
                .map(|()| rows)
            }
        };
        self.note(sql, result)
    }

    /// Runs `sql` with `params` and hands its rows to `take` as they arrive,
    /// until it answers `false` (the rest is discarded unread) or fails.
    pub async fn for_each_row(
        &self,
        sql: Sql,
        params: &[&(dyn ToSql + Sync)],
        mut take: impl FnMut(Row) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let result = match &self.session {
            Session::Direct(statements) => {
                async {
                    let rows = self
                        .client
                        .query_raw(statements.get(sql), params.iter().copied())
                        .await?;
                    futures_util::pin_mut!(rows);
                    while let Some(row) = rows.try_next().await? {
                        if !take(row)? {
                            break;
                        }
                    }
                    Ok(())
                }
                .await
            }
            Session::Pooled(begin) => {
                in_transaction(&self.client, begin, sql.text(), sql.types(), params, take).await
            }
        };
        self.note(sql, result)
    }

    /// Whether the connection may run another statement: open, and not
    /// [lost](StoreError::is_statement_lost).
    pub fn is_usable(&self) -> bool {
        !self.client.is_closed() && !self.lost.load(Ordering::Relaxed)
    }

    /// Marks the connection lost after an error saying so, and logs the
    /// server's message.
    fn note<T>(&self, sql: Sql, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(error) = &result {
            if error.is_statement_lost() {
                self.lost.store(true, Ordering::Relaxed);
                log::warn!(
                    "statement {sql:?} failed as if a connection pooler had lost its state \
                     ({error}); the connection is discarded (see database.pooler in \
                     docs/operations.md)"
                );
            }
        }
        result
    }
}

/// Runs one unnamed statement in a transaction of its own that opens with
/// `begin`, in one round trip: `begin`, the statement and `COMMIT` are sent
/// together (tokio-postgres writes requests in the order they are first
/// polled, and `join!` polls in order), so a pooler in transaction mode
/// keeps all three on one server connection, and the settings of `begin`
/// (`SET LOCAL`) hold for the statement and end with the transaction. A
/// write is acknowledged only once `COMMIT` answered, which is after the
/// commit is durable.
async fn in_transaction(
    client: &Client,
    begin: &str,
    text: &str,
    types: &[Type],
    params: &[&(dyn ToSql + Sync)],
    mut take: impl FnMut(Row) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let begun = client.batch_execute(begin);
    let run = async {
        let rows = client
            .query_typed_raw(text, params.iter().copied().zip(types.iter().cloned()))
            .await?;
        futures_util::pin_mut!(rows);
        while let Some(row) = rows.try_next().await? {
            if !take(row)? {
                break;
            }
        }
        Ok::<(), StoreError>(())
    };
    let commit = client.batch_execute("COMMIT");
    let (begun, ran, committed) = futures_util::join!(begun, run, commit);
    // The first failure is the cause; the later ones follow from it (a
    // statement in an aborted transaction fails, its COMMIT rolls back).
    begun?;
    ran?;
    committed?;
    Ok(())
}

/// Reads the settings a pooled transaction runs under, through the very
/// path every statement takes ([`in_transaction`]): what start-up checks
/// behind a pooler, to know that the pooler keeps a transaction on one
/// server connection.
pub async fn settings_in_transaction(
    client: &Client,
    settings: &SessionSettings,
) -> Result<SettingsSeen, StoreError> {
    let mut seen = None;
    in_transaction(client, &settings.begin(), SETTINGS_SEEN, &[], &[], |row| {
        seen = Some(SettingsSeen::of_row(&row)?);
        Ok(true)
    })
    .await?;
    seen.ok_or_else(|| StoreError::Unavailable("the settings query answered no row".into()))
}

/// bb8 connection manager: bb8-postgres's, plus statement preparation on
/// a direct connection.
pub struct ConnectionManager {
    inner: PostgresConnectionManager<DbTls>,
    /// `Some` behind a pooler: what opens each transaction.
    pooled: Option<Arc<str>>,
}

impl bb8::ManageConnection for ConnectionManager {
    type Connection = Connection;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<Connection, Self::Error> {
        let client = self.inner.connect().await?;
        let session = match &self.pooled {
            Some(begin) => Session::Pooled(begin.clone()),
            None => Session::Direct(Statements::prepare(&client).await?),
        };
        Ok(Connection {
            client,
            session,
            discard_on_return: false,
            lost: AtomicBool::new(false),
        })
    }

    async fn is_valid(&self, conn: &mut Connection) -> Result<(), Self::Error> {
        conn.client.simple_query("").await.map(|_| ())
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        conn.discard_on_return || !conn.is_usable()
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
            if conn.is_usable() {
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
    /// Whether the URL points at a pooler in transaction mode.
    pub pooler: Pooler,
}

impl PoolSettings {
    /// The settings its statements run under.
    pub fn session(&self) -> SessionSettings {
        SessionSettings {
            statement_timeout: self.statement_timeout,
        }
    }
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
    let session = settings.session();
    let pooled = match settings.pooler {
        // A pooler refuses or drops the startup parameter `options`, and
        // shares a server session between clients: the settings are set in
        // each transaction instead.
        Pooler::Transaction => Some(Arc::from(session.begin())),
        Pooler::None => {
            config.options(session.startup_options());
            None
        }
    };
    let manager = ConnectionManager {
        inner: PostgresConnectionManager::new(config, tls.clone()),
        pooled,
    };
    bb8::Pool::builder()
        .max_size(settings.max_size)
        .min_idle(Some(0))
        .connection_timeout(settings.connection_timeout)
        .test_on_check_out(false)
        .error_sink(Box::new(LogConnectErrors {
            pool: settings.application_name.clone(),
        }))
        .build_unchecked(manager)
}

/// Logs why a pool could not open a connection (bb8 retries until the
/// caller's wait is over, and would otherwise say only that it timed out).
#[derive(Debug, Clone)]
struct LogConnectErrors {
    pool: String,
}

impl bb8::ErrorSink<tokio_postgres::Error> for LogConnectErrors {
    fn sink(&self, error: tokio_postgres::Error) {
        log::warn!(
            "{}: cannot open a database connection: {}",
            self.pool,
            super::describe(&error)
        );
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<tokio_postgres::Error>> {
        Box::new(self.clone())
    }
}
