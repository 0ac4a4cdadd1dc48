//! What the replica checks ask a database: its head, whether it is a hot
//! standby, and which cluster it belongs to. Simple-protocol statements (no
//! named prepared statement), so they run alike on a direct connection and
//! through a pooler.

use tokio_postgres::{Client, SimpleQueryMessage};

use super::StoreError;
use crate::dcb::Position;

/// What one check of a database found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The position of its last event, 0 when it holds none.
    pub head: Position,
    /// Whether it is replaying WAL (a hot standby) rather than a primary.
    pub in_recovery: bool,
}

/// The first row of a one-row simple query, as text columns.
async fn one_row(client: &Client, sql: &str) -> Result<Vec<Option<String>>, StoreError> {
    for message in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = message {
            return Ok((0..row.len())
                .map(|i| row.get(i).map(str::to_owned))
                .collect());
        }
    }
    Err(StoreError::Unavailable(format!("no row from `{sql}`")))
}

fn number(column: Option<&Option<String>>) -> Result<i64, StoreError> {
    column
        .and_then(|text| text.as_deref())
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| StoreError::Unavailable("a check answered no number".into()))
}

/// The position of the last event, 0 when the store is empty: one probe of
/// the primary key's index.
pub async fn last_position_of(client: &Client) -> Result<Position, StoreError> {
    let row = one_row(client, "SELECT coalesce(max(position), 0) FROM events").await?;
    number(row.first())
}

/// The head and whether the database is a hot standby, from one statement.
pub async fn status(client: &Client) -> Result<Status, StoreError> {
    let row = one_row(
        client,
        "SELECT coalesce(max(position), 0), pg_is_in_recovery() FROM events",
    )
    .await?;
    Ok(Status {
        head: number(row.first())?,
        in_recovery: row.get(1).and_then(|t| t.as_deref()) == Some("t"),
    })
}

/// The cluster's system identifier (a primary and its physical replicas
/// share it), or `None` when the role may not read it.
pub async fn system_identifier(client: &Client) -> Option<String> {
    let row = one_row(client, "SELECT system_identifier FROM pg_control_system()")
        .await
        .ok()?;
    row.into_iter().next().flatten()
}
