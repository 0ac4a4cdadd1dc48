//! PostgreSQL storage: the only module that speaks SQL.
//!
//! It owns the schema (`sql/migrations`, applied by [`migrate`]), the pooled
//! connections with their prepared statements ([`connection`]), the batch
//! append with its advisory locks and condition checks ([`append`]), the
//! paged reads ([`read`]), the projections ([`project`](mod@project)) with
//! the projector states a process remembers ([`states`]), clearing the store
//! ([`clear`](mod@clear)), writing an exported log at its own positions
//! ([`import`](mod@import)), and TLS to PostgreSQL as the database URL asks
//! ([`tls`]). It also owns the reading of PostgreSQL's errors: what a failed
//! statement may have done ([`StoreError::failure`]) and whether a failed
//! connection attempt may pass by waiting ([`connect_may_pass`]).
//!
//! It knows nothing of HTTP or actors: the writer and reader actors call its
//! functions with a connection they own; the HTTP layer uses its types (the
//! page bodies of [`read`], [`Page`], [`Failure`]) but never a connection.

pub mod append;
pub mod clear;
pub mod connection;
pub mod import;
pub mod migrate;
pub mod project;
pub(crate) mod quote;
pub mod read;
pub mod standby;
pub mod states;
pub mod tls;

/// The outcome and page types live in [`crate::dcb`], beside the requests
/// they answer; re-exported here for the store's callers, the HTTP layer
/// among them (it also takes [`Failure`] and the page bodies of
/// [`read`] from this module).
pub use crate::dcb::{AppendOutcome, Page};
pub use append::append_batch;
pub use clear::clear;
pub use connection::{
    build_pool, build_pool_with_tls, checkout, Connection, LiveConnection, Pool, PoolSettings,
    SessionSettings, Sql,
};
pub use import::import;
pub use project::project;
pub use read::{read_page, JsonEvents, PageRows};
pub use states::ProjectionStates;

use tokio_postgres::error::{Severity, SqlState};

/// Why a store operation failed. A failed append condition is not an error:
/// it is [`AppendOutcome::ConditionFailed`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had (database down, pool exhausted past its timeout).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error, or the connection broke mid-request.
    #[error("database error: {}", describe(.0))]
    Database(#[from] tokio_postgres::Error),
    /// A stored row could not be decoded (never expected).
    #[error("corrupt stored event at position {position}: {reason}")]
    Corrupt { position: i64, reason: String },
    /// A page's rows came out of its bounds or its order: the statement the
    /// database ran is not the one sent (a connection pooler in transaction
    /// mode can hand a named statement to another session). Nothing of the
    /// page is used, and the connection is not reused.
    #[error(
        "the database answered position {position} out of the page's order or bounds \
         (after {after}, before {before}, backwards {backwards}); is a connection pooler \
         in transaction mode in between? (see docs/operations.md)"
    )]
    Misordered {
        position: i64,
        after: i64,
        before: i64,
        backwards: bool,
    },
}

/// What a failed statement may have done to the database: the one thing a
/// caller needs to answer its client honestly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing was written, and the same request may succeed later: no
    /// connection could be had, or the server refused the statement with an
    /// ERROR for a transient reason (its implicit transaction rolled back).
    Unavailable,
    /// Nothing was written, and the same request would fail again: the
    /// server refused the statement with an ERROR that is not transient, or
    /// the request could not be encoded, or stored data could not be decoded.
    Refused,
    /// The statement may have been executed and committed: the connection
    /// was lost, or the server ended the session (FATAL, PANIC), after the
    /// statement was sent and before its answer arrived. For a write the
    /// outcome is unknown; for a read, it only failed.
    OutcomeUnknown,
}

impl StoreError {
    /// What the failed operation may have done; see [`Failure`].
    pub fn failure(&self) -> Failure {
        match self {
            StoreError::Unavailable(_) => Failure::Unavailable,
            StoreError::Corrupt { .. } => Failure::Refused,
            // Nothing was written; another connection may answer right.
            StoreError::Misordered { .. } => Failure::Unavailable,
            // The statement never ran (see `is_statement_lost`).
            StoreError::Database(_) if self.is_statement_lost() => Failure::Unavailable,
            StoreError::Database(e) => classify(
                e.is_closed(),
                e.as_db_error()
                    .map(|db| (db.parsed_severity(), db.code().clone())),
            ),
        }
    }

    /// Whether the server cancelled the statement at its `statement_timeout`.
    pub fn is_statement_timeout(&self) -> bool {
        matches!(self, StoreError::Database(e)
            if e.code() == Some(&SqlState::QUERY_CANCELED))
    }

    /// Whether the server answered that the statement, or the protocol's
    /// state around it, was not what the connection had set up: a named
    /// statement missing (26000) or already there (42P05), a portal missing
    /// (34000), a bind that does not fit the statement (08P01), a cached plan
    /// that no longer fits its statement. What a pooler in transaction mode
    /// does to named statements (or a schema changed under a connection's
    /// prepared statements): the statement did not run, so nothing was
    /// written and another connection may succeed; this one is discarded.
    pub fn is_statement_lost(&self) -> bool {
        let StoreError::Database(error) = self else {
            return false;
        };
        let Some(db) = error.as_db_error() else {
            return false;
        };
        db.parsed_severity() == Some(Severity::Error)
            && (statement_lost(db.code())
                || (*db.code() == SqlState::FEATURE_NOT_SUPPORTED
                    && db
                        .message()
                        .starts_with("cached plan must not change result type")))
    }

    /// Whether nothing was written and a retry later may succeed: such
    /// failures map to 503 with `Retry-After`.
    pub fn is_unavailable(&self) -> bool {
        self.failure() == Failure::Unavailable
    }
}

/// Classifies a `tokio_postgres` error by its kind: `closed` (the connection
/// went away; the request may have been sent) and, for an error the server
/// sent, its severity and SQLSTATE.
///
/// An ERROR aborts the statement's transaction, so nothing was written. A
/// FATAL or PANIC ends the session, and can come after the commit (a backend
/// terminated while sending the answer), so the outcome is unknown, as it is
/// when the connection closes under a sent request. A missing severity (a
/// server older than 9.6) is taken as the worst case.
pub fn classify(closed: bool, server_error: Option<(Option<Severity>, SqlState)>) -> Failure {
    match server_error {
        Some((Some(Severity::Error), code)) if is_transient(&code) => Failure::Unavailable,
        Some((Some(Severity::Error), _)) => Failure::Refused,
        Some(_) => Failure::OutcomeUnknown,
        None if closed => Failure::OutcomeUnknown,
        // Encoding a parameter or parsing a message failed on the client:
        // the statement was either not sent or its answer not understood;
        // only the first is provable, so assume the second.
        None => Failure::OutcomeUnknown,
    }
}

/// ERROR SQLSTATEs after which the same statement may succeed later.
fn is_transient(code: &SqlState) -> bool {
    let class = &code.code()[..2];
    // 08: connection exception; 53: insufficient resources (disk full, out
    // of memory, lock table full); 40: transaction rollback (serialization
    // failure, deadlock); 57: operator intervention (statement timeout,
    // query cancelled, shutdown in progress).
    matches!(class, "08" | "53" | "40" | "57")
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
}

/// SQLSTATEs of a statement whose named statement, portal or protocol
/// state the server does not have (see [`StoreError::is_statement_lost`]).
fn statement_lost(code: &SqlState) -> bool {
    [
        SqlState::INVALID_SQL_STATEMENT_NAME,
        SqlState::DUPLICATE_PSTATEMENT,
        SqlState::INVALID_CURSOR_NAME,
        SqlState::PROTOCOL_VIOLATION,
    ]
    .contains(code)
}

/// tokio-postgres says only "db error"; the server's SQLSTATE and message
/// are in its source.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            "{} {}: {}{}",
            db.severity(),
            db.code().code(),
            db.message(),
            db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
        ),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

/// Whether a failed connection attempt may pass by waiting: no answer at
/// all (refused, no socket, timed out, closed), or the server saying it is
/// not ready yet: starting up or shutting down, out of connection slots,
/// or a connection exception (SQLSTATE class 08).
pub fn connect_may_pass(error: &tokio_postgres::Error) -> bool {
    error.code().is_none_or(not_ready_yet)
}

/// SQLSTATEs of a server refusing a connection for now: starting up or
/// shutting down, out of connection slots, or a connection exception.
fn not_ready_yet(code: &SqlState) -> bool {
    [
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
    ]
    .contains(code)
        || code.code().starts_with("08")
}

impl From<bb8::RunError<tokio_postgres::Error>> for StoreError {
    fn from(err: bb8::RunError<tokio_postgres::Error>) -> Self {
        match err {
            bb8::RunError::User(e) => StoreError::Unavailable(e.to_string()),
            bb8::RunError::TimedOut => {
                StoreError::Unavailable("timed out waiting for a database connection".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_severity_refusal_wrote_nothing() {
        let error = |code| classify(false, Some((Some(Severity::Error), code)));
        for code in [
            SqlState::QUERY_CANCELED,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::DISK_FULL,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ] {
            assert_eq!(error(code.clone()), Failure::Unavailable, "{code:?}");
        }
        for code in [
            SqlState::DIVISION_BY_ZERO,
            SqlState::UNIQUE_VIOLATION,
            SqlState::RAISE_EXCEPTION,
        ] {
            assert_eq!(error(code.clone()), Failure::Refused, "{code:?}");
        }
    }

    #[test]
    fn a_server_not_ready_yet_may_let_a_connection_in_later() {
        for code in [
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CONNECTION_FAILURE,
        ] {
            assert!(not_ready_yet(&code), "{code:?}");
        }
        for code in [SqlState::INVALID_PASSWORD, SqlState::INVALID_CATALOG_NAME] {
            assert!(!not_ready_yet(&code), "{code:?}");
        }
    }

    #[test]
    fn a_session_ended_by_the_server_or_a_lost_connection_leaves_the_outcome_unknown() {
        for severity in [Some(Severity::Fatal), Some(Severity::Panic), None] {
            for code in [SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN] {
                assert_eq!(
                    classify(true, Some((severity, code.clone()))),
                    Failure::OutcomeUnknown,
                    "{severity:?} {code:?}"
                );
            }
        }
        assert_eq!(classify(true, None), Failure::OutcomeUnknown);
    }

    #[test]
    fn no_connection_is_unavailable_and_corrupt_data_is_refused() {
        assert_eq!(
            StoreError::Unavailable("down".into()).failure(),
            Failure::Unavailable
        );
        let corrupt = StoreError::Corrupt {
            position: 1,
            reason: "not UTF-8".into(),
        };
        assert_eq!(corrupt.failure(), Failure::Refused);
    }
}
