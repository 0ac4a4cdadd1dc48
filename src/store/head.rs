//! The head position of a read: the highest position its snapshot could see.
//!
//! A client that read a query and found nothing may append with
//! `condition.after = head`: every matching event it could have missed has a
//! greater position, so the condition catches it. That holds when `head` is
//! no later than the snapshot of the read statement. The head statement is
//! sent on the same connection just before the page statement, in one
//! round trip (tokio-postgres pipelines requests on a connection, and writes
//! them in the order their futures are first polled; `try_join` polls the
//! head first). PostgreSQL runs them in that order, each in its own implicit
//! transaction (READ COMMITTED), so the page's snapshot is taken after the
//! head's: every position at or below the head was committed before the
//! page statement started (commits happen in position order, see
//! [`super::append`]), hence visible to it.
//!
//! Cost: no extra round trip; one more prepared statement per read (an
//! index-only backward step of the primary key; measured with pgbench at
//! about 17 µs of server time over `SELECT 1`). Only the first page of a
//! read asks for it.

use super::{Connection, StoreError};
use crate::dcb::{Page, Position, Query, SequencedEvent};

/// Reads one page like [`super::read_page`], together with a head position
/// no later than the page's snapshot.
pub async fn read_page_with_head(
    conn: &Connection,
    query: &Query,
    page: &Page,
    max_bytes: usize,
) -> Result<(Vec<SequencedEvent>, Position), StoreError> {
    // Polled first, so sent first: see the module documentation.
    let head = async {
        let row = conn.client.query_one(&conn.statements.head, &[]).await?;
        Ok::<Position, StoreError>(row.try_get(0)?)
    };
    let events = super::read_page(conn, query, page, max_bytes);
    let (head, events) = futures_util::future::try_join(head, events).await?;
    Ok((events, head))
}
