//! The head position of a read: the highest position its snapshot could see.
//!
//! A client that read a query and found nothing may append with
//! `condition.after = head`: every matching event it could have missed has a
//! greater position, so the condition catches it. That holds when `head` is
//! no later than the snapshot of the read statement. Here it is exactly that
//! snapshot's: the first page of a read runs its page query and the head
//! query (`sql/queries/head.sql`) as one statement
//! (`sql/queries/read_with_head.sql`), so both see the same snapshot, and
//! every position at or below the head was committed before it (commits
//! happen in position order, see [`super::append`]), hence visible to it.
//!
//! Cost: no extra statement or round trip; the head is one index-only
//! backward step of the primary key inside the page's statement. Only the
//! first page of a read asks for it.

use super::{Connection, StoreError};
use crate::dcb::{Page, Position, Query, SequencedEvent};

/// The head query: the highest position visible to the snapshot.
const HEAD: &str = include_str!("../../sql/queries/head.sql");
/// How a page query and the head query are combined.
const READ_WITH_HEAD: &str = include_str!("../../sql/queries/read_with_head.sql");
/// The head's column in the combined statement's rows (after the page's 7).
pub(super) const HEAD_COLUMN: usize = 7;

/// The combined statement for one page query (in its direction).
pub fn with_head(page_sql: &str, backwards: bool) -> String {
    READ_WITH_HEAD
        .replace("{head}", HEAD.trim_end())
        .replace("{page}", page_sql.trim_end())
        .replace("{direction}", if backwards { "DESC" } else { "ASC" })
}

/// Reads one page like [`super::read_page`], together with the head
/// position of the page's own snapshot.
pub async fn read_page_with_head(
    conn: &Connection,
    query: &Query,
    page: &Page,
    max_bytes: usize,
) -> Result<(Vec<SequencedEvent>, Position), StoreError> {
    let (events, head) = super::read::read_rows(conn, query, page, max_bytes, true).await?;
    // The combined statement always returns a row; were it not to, 0 is a
    // head no later than any snapshot (a condition after it is only stricter).
    Ok((events, head.unwrap_or(0)))
}
