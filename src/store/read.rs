//! Paged reads: one bounded, index-driven query per page.
//!
//! Long reads are cut into pages by position, so no connection or
//! transaction is held while a slow client consumes a stream. Because
//! commits happen in position order (see [`super::append`]), a page that
//! starts after the last position of the previous one misses nothing.

use serde::Serialize;

use super::{Connection, StoreError};
use crate::dcb::footprint;
use crate::dcb::{Position, Query, SequencedEvent};

/// One page of a read: events with `after < position < before`, at most
/// `limit`, ascending or (with `backwards`) descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub after: Position,
    pub before: Position,
    pub backwards: bool,
    pub limit: i64,
}

/// One probe as `read_probes_*.sql` reads it.
#[derive(Serialize)]
struct ReadProbe<'a> {
    k: i64,
    tags: &'a [String],
    types: &'a [String],
}

pub async fn read_page(
    conn: &Connection,
    query: &Query,
    page: &Page,
) -> Result<Vec<SequencedEvent>, StoreError> {
    let st = &conn.statements;
    let (after, before, limit) = (&page.after, &page.before, &page.limit);
    let rows = if query.is_all() {
        let statement = st.read_all.pick(page.backwards);
        conn.client
            .query(statement, &[after, before, limit])
            .await?
    } else {
        let probes: Vec<ReadProbe> = footprint::probes(query)
            .into_iter()
            .filter_map(|p| {
                p.key.map(|k| ReadProbe {
                    k,
                    tags: p.tags,
                    types: p.types,
                })
            })
            .collect();
        if let [probe] = probes.as_slice() {
            let statement = st.read_key.pick(page.backwards);
            let (key, tags, types) = (&probe.k, &probe.tags, &probe.types);
            conn.client
                .query(statement, &[key, after, before, tags, types, limit])
                .await?
        } else {
            let probes_json = serde_json::to_string(&probes).expect("probes serialize");
            let statement = st.read_probes.pick(page.backwards);
            conn.client
                .query(statement, &[&probes_json, after, before, limit])
                .await?
        }
    };
    rows.iter()
        .map(|row| {
            let position: Position = row.get(0);
            let data: Vec<u8> = row.get(3);
            let data = String::from_utf8(data).map_err(|e| StoreError::Corrupt {
                position,
                reason: e.to_string(),
            })?;
            Ok(SequencedEvent {
                position,
                event_type: row.get(1),
                tags: row.get(2),
                data,
            })
        })
        .collect()
}
