//! Deleting every event (go-crablet's `/cleanup`, for benchmark runs).
//!
//! One `TRUNCATE` of the events and their index keys: it waits for the
//! batches in flight (it takes an exclusive lock on both tables) and is all
//! or nothing. The position sequence is left alone, so positions keep
//! increasing across a clear: gap-free reading and every client's or
//! subscriber's last position stay valid (they simply see no older events).

use super::{Connection, StoreError};

const CLEAR: &str = include_str!("../../sql/queries/clear.sql");

/// Deletes every event and index key.
pub async fn clear(conn: &Connection) -> Result<(), StoreError> {
    conn.client.batch_execute(CLEAR).await?;
    Ok(())
}
