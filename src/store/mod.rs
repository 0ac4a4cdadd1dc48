//! PostgreSQL storage: the only module that speaks SQL.
//!
//! It owns the schema (`sql/migrations`, applied by [`migrate`]), the pooled
//! connections with their prepared statements ([`connection`]), the batch
//! append with its advisory locks and condition checks ([`append`]) and the
//! paged reads ([`read`]). It knows nothing of HTTP or actors: the writer and
//! reader actors call its functions with a connection they own.

pub mod append;
pub mod connection;
pub mod migrate;
pub mod read;

/// The outcome and page types live in [`crate::dcb`] (the HTTP layer uses
/// them without depending on the store); re-exported for the store's callers.
pub use crate::dcb::{AppendOutcome, Page};
pub use append::append_batch;
pub use connection::{build_pool, checkout, Connection, LiveConnection, Pool, PoolSettings};
pub use read::read_page;

use tokio_postgres::error::SqlState;

/// Why a store operation failed. A failed append condition is not an error:
/// it is [`AppendOutcome::ConditionFailed`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had (database down, pool exhausted past its timeout).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error, or the connection broke mid-request.
    #[error("database error")]
    Database(#[from] tokio_postgres::Error),
    /// A stored row could not be decoded (never expected).
    #[error("corrupt stored event at position {position}: {reason}")]
    Corrupt { position: i64, reason: String },
}

impl StoreError {
    /// Whether the failure is the database being unreachable or going away,
    /// rather than a fault of the request or of crablet: such failures map to
    /// 503 and are worth a retry.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Database(e) => {
                e.is_closed()
                    || e.code().is_some_and(|code| {
                        code.code().starts_with("08")
                            || *code == SqlState::ADMIN_SHUTDOWN
                            || *code == SqlState::CRASH_SHUTDOWN
                            || *code == SqlState::CANNOT_CONNECT_NOW
                            || *code == SqlState::TOO_MANY_CONNECTIONS
                    })
            }
            StoreError::Corrupt { .. } => false,
        }
    }
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
