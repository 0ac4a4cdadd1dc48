//! Writing an exported log at its own positions (`POST /admin/import`).
//!
//! One call of `crablet_import` (see `sql/migrations/010_import.sql`) as its
//! own transaction: it takes the import's locks ([`CheckedImport::locks`]),
//! then the sequencing lock as a batch append does, refuses an import whose
//! first position is not beyond every position the store has used or whose
//! ids are stored, and otherwise inserts the events with their positions,
//! ids, metadata and `recorded_at`, their index keys, and moves the position
//! sequence past the last one.

use tokio_postgres::types::ToSql;

use super::quote::array_literal;
use super::{Connection, Sql, StoreError};
use crate::dcb::footprint::{Key, LockMode, SEQUENCE_KEY};
use crate::dcb::{CheckedImport, IdClash, ImportOutcome, Position};

/// Writes `import`, all or nothing. On `Err` nothing was written, unless the
/// error came from the commit itself (see [`StoreError::failure`]).
pub async fn import(
    conn: &Connection,
    import: &CheckedImport,
) -> Result<ImportOutcome, StoreError> {
    let (lock_keys, lock_exclusive): (Vec<Key>, Vec<bool>) = import
        .locks()
        .iter()
        .map(|(key, mode)| (key, mode == LockMode::Exclusive))
        .unzip();
    let events = &import.events.request.events;
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let tags: Vec<String> = events.iter().map(|e| array_literal(&e.tags)).collect();
    let data: Vec<&[u8]> = events.iter().map(|e| e.data.as_bytes()).collect();
    let ids: Option<Vec<Option<&str>>> = (!import.events.id_keys.is_empty())
        .then(|| events.iter().map(|e| e.id.as_deref()).collect());
    let metadata: Option<Vec<Option<&[u8]>>> =
        events.iter().any(|e| e.metadata.is_some()).then(|| {
            events
                .iter()
                .map(|e| e.metadata.as_deref().map(str::as_bytes))
                .collect()
        });
    let mut key_events: Vec<i32> = Vec::new();
    let mut keys: Vec<Key> = Vec::new();
    for (ordinal, event_keys) in (1_i32..).zip(&import.events.event_keys) {
        for &key in event_keys {
            key_events.push(ordinal);
            keys.push(key);
        }
    }
    let params: [&(dyn ToSql + Sync); 12] = [
        &lock_keys,
        &lock_exclusive,
        &import.positions,
        &types,
        &tags,
        &data,
        &ids,
        &metadata,
        &import.recorded_at,
        &key_events,
        &keys,
        &SEQUENCE_KEY,
    ];
    // As the batch append: one statement in a transaction of its own, its
    // rows handed over only after the commit.
    let rows = conn.query(Sql::Import, &params).await?;
    let corrupt = |reason: String| StoreError::Corrupt {
        position: 0,
        reason,
    };
    let mut stored = Vec::new();
    for row in &rows {
        let kind: &str = row.try_get("kind")?;
        match kind {
            "written" => {
                let last: Position = row.try_get("last_position")?;
                return Ok(ImportOutcome::Imported {
                    count: import.len(),
                    last,
                });
            }
            "taken" => {
                return Ok(ImportOutcome::PositionTaken {
                    first: import.positions[0],
                    used: row.try_get("last_position")?,
                    head: row.try_get("stored_head")?,
                })
            }
            "stored_id" => {
                let index: i32 = row.try_get("event_index")?;
                stored.push(IdClash {
                    index: usize::try_from(index)
                        .ok()
                        .filter(|&i| i < import.len())
                        .ok_or_else(|| corrupt(format!("the import named event {index}")))?,
                    id: row.try_get("stored_id")?,
                });
            }
            other => {
                return Err(corrupt(format!(
                    "the import function reported an unknown row kind {other:?}"
                )))
            }
        }
    }
    if stored.is_empty() {
        return Err(corrupt("the import function answered no row".into()));
    }
    Ok(ImportOutcome::IdsStored(stored))
}
