//! The batch append: many appends decided in order and committed together,
//! in one round trip.
//!
//! crablet prepares everything that needs no database: the batch's advisory
//! locks (its merged [`Footprint`], sorted), the probes of every condition,
//! the pairs of appends that conflict inside the batch, and the event
//! columns. Then it sends one call of `crablet_append_batch` (see
//! `sql/migrations/004_append_batch.sql`) as its own transaction. The
//! function locks, checks the conditions with a snapshot taken after the
//! locks are held, decides the appends in batch order, and inserts the
//! accepted events under the sequencing lock, so commit order equals
//! position order.
//!
//! An append any of whose ids is already stored is not written: the function
//! returns the stored events under its ids, and [`AppendOutcome::of_stored`]
//! tells a retry of the same append from a reuse of ids. Appends without
//! ids send no ids and pay for no lookup.
//!
//! Requirements (`require`) are sent as JSON only when an append of the
//! batch has one (SQL NULL otherwise, so appends without them pay nothing)
//! and evaluated after the id lookup and the condition probes, against the
//! stored events: a lane never batches an append whose requirement could
//! see an event of an earlier append of the batch.
//!
//! An append is rejected if its condition matches a stored event after its
//! `after`, or an event of an earlier accepted append of the same batch. The
//! latter's position is not known when the pairs are computed; it lies above
//! the head any client can have read, so the append is rejected whatever its
//! `after` (an `after` beyond the head is the only case where this is
//! stricter than deciding the two appends in separate batches).

use std::collections::HashMap;

use serde::Serialize;
use tokio_postgres::types::ToSql;

use super::{Connection, StoreError};
use crate::dcb::footprint::{self, Key, LockMode, SEQUENCE_KEY};
use crate::dcb::projection::CheckedRequirement;
use crate::dcb::{AppendOutcome, CheckedAppend, Footprint, Position, StoredEvent};

/// Appends a batch in one transaction and returns each append's outcome, in
/// batch order. On `Err` nothing of the batch was written, unless the error
/// came from the commit itself, in which case the outcome is unknown.
pub async fn append_batch(
    conn: &mut Connection,
    batch: &[&CheckedAppend],
) -> Result<Vec<AppendOutcome>, StoreError> {
    let mut footprint = Footprint::default();
    for append in batch {
        footprint.merge(&append.footprint);
    }
    let (lock_keys, lock_exclusive): (Vec<Key>, Vec<bool>) = footprint
        .iter()
        .map(|(key, mode)| (key, mode == LockMode::Exclusive))
        .unzip();
    let probes = ProbeColumns::of(batch);
    let requires_json = requirements_json(batch);
    let (conflict_later, conflict_earlier): (Vec<i32>, Vec<i32>) =
        conflict_pairs(batch).into_iter().unzip();
    let appends = batch.len() as i32;
    let columns = EventColumns::of(batch);
    let params: [&(dyn ToSql + Sync); 20] = [
        &lock_keys,
        &lock_exclusive,
        &probes.appends,
        &probes.after,
        &probes.keys,
        &probes.tags,
        &probes.types,
        &requires_json,
        &conflict_later,
        &conflict_earlier,
        &appends,
        &columns.appends,
        &columns.types,
        &columns.data,
        &columns.ids,
        &columns.metadata,
        &columns.tags,
        &columns.key_events,
        &columns.keys,
        &SEQUENCE_KEY,
    ];

    // One statement in an implicit transaction: PostgreSQL commits it at the
    // protocol's Sync and answers ReadyForQuery only after the commit, and
    // the rows are handed over only then, so nothing is acknowledged before
    // it is durable. A failure rolls the whole batch back.
    let rows = conn
        .client
        .query(&conn.statements.append_batch, &params)
        .await?;

    // Rows come only for what is not a plain acceptance (see the function):
    // every append without one was accepted.
    let mut outcomes: Vec<Option<AppendOutcome>> = vec![None; batch.len()];
    let mut stored: Vec<Vec<StoredEvent>> = Vec::new();
    let mut first_written: Option<Position> = None;
    for row in rows {
        let index = row.try_get::<_, i32>(0)?;
        let Ok(index) = usize::try_from(index) else {
            first_written = Some(row.try_get(1)?);
            continue;
        };
        if let Some(failed) = row.try_get::<_, Option<i32>>(7)? {
            outcomes[index] = Some(AppendOutcome::RequirementFailed {
                index: failed as usize,
            });
            continue;
        }
        let Some(id) = row.try_get::<_, Option<String>>(2)? else {
            outcomes[index] = Some(AppendOutcome::ConditionFailed);
            continue;
        };
        if stored.is_empty() {
            stored.resize_with(batch.len(), Vec::new);
        }
        stored[index].push(StoredEvent {
            position: row.try_get(1)?,
            id,
            event_type: row.try_get(3)?,
            tags: row.try_get(4)?,
            data: row.try_get(5)?,
            metadata: row.try_get(6)?,
        });
    }
    for ((outcome, append), found) in outcomes.iter_mut().zip(batch).zip(&stored) {
        if !found.is_empty() {
            *outcome = Some(AppendOutcome::of_stored(&append.request.events, found));
        }
    }
    // The accepted appends' events have consecutive positions from the
    // first one written, in batch order.
    let mut next = first_written;
    outcomes
        .into_iter()
        .zip(batch)
        .map(|(outcome, append)| match outcome {
            Some(decided) => Ok(decided),
            None => {
                let first = next.ok_or_else(|| StoreError::Corrupt {
                    position: 0,
                    reason: "the batch accepted an append but wrote no position".into(),
                })?;
                let last = first + append.request.events.len() as Position - 1;
                next = Some(last + 1);
                Ok(AppendOutcome::Appended { first, last })
            }
        })
        .collect()
}

/// One requirement of one append, as `crablet_append_batch` reads it.
#[derive(Serialize)]
struct RequirementArg<'a> {
    /// Index of the append in the batch.
    i: usize,
    /// Index of the requirement in the append's `require`.
    n: usize,
    #[serde(flatten)]
    requirement: &'a CheckedRequirement,
}

/// The batch's requirements as JSON, or `None` (SQL NULL: no work at all)
/// when no append of the batch has one.
fn requirements_json(batch: &[&CheckedAppend]) -> Option<String> {
    let args: Vec<RequirementArg> = batch
        .iter()
        .enumerate()
        .flat_map(|(i, append)| {
            append
                .requirements
                .iter()
                .enumerate()
                .map(move |(n, requirement)| RequirementArg { i, n, requirement })
        })
        .collect();
    (!args.is_empty()).then(|| serde_json::to_string(&args).expect("requirements serialize"))
}

/// The probes of the batch's conditions, flattened for
/// `crablet_append_batch`: empty when no append has a condition.
#[derive(Default)]
struct ProbeColumns {
    /// Per probe: the index of its append.
    appends: Vec<i32>,
    /// Per probe: its condition's `after` (0 when absent).
    after: Vec<Position>,
    /// Per probe: the key to scan; `None` scans all events.
    keys: Vec<Option<Key>>,
    /// Per probe: its tags, as an array literal.
    tags: Vec<String>,
    /// Per probe: its types (none: any type), as an array literal.
    types: Vec<String>,
}

impl ProbeColumns {
    fn of(batch: &[&CheckedAppend]) -> Self {
        let mut cols = ProbeColumns::default();
        for (i, append) in batch.iter().enumerate() {
            let Some(condition) = &append.request.condition else {
                continue;
            };
            for probe in footprint::probes(&condition.fail_if_events_match) {
                cols.appends.push(i as i32);
                cols.after.push(condition.after_or_zero());
                cols.keys.push(probe.key);
                cols.tags.push(array_literal(probe.tags));
                cols.types.push(array_literal(probe.types));
            }
        }
        cols
    }
}

/// A PostgreSQL array literal of `items` (`{"a","b\"c"}`), read back by a
/// `::text[]` cast: every element quoted, `"` and `\` escaped. Lists inside
/// lists travel this way, so the function reads each argument in one pass.
fn array_literal(items: &[String]) -> String {
    let mut literal = String::with_capacity(2 + items.iter().map(|i| i.len() + 3).sum::<usize>());
    literal.push('{');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            literal.push(',');
        }
        literal.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                literal.push('\\');
            }
            literal.push(c);
        }
        literal.push('"');
    }
    literal.push('}');
    literal
}

/// The pairs `(later, earlier)` of the batch where an event of the earlier
/// append matches the later append's condition, ordered by the later append:
/// the later one is rejected if the earlier one is accepted.
///
/// Earlier appends are indexed by the keys of their events, so each
/// condition is compared only with appends that share a probe key.
pub fn conflict_pairs(batch: &[&CheckedAppend]) -> Vec<(i32, i32)> {
    let mut pairs = Vec::new();
    let mut by_key: HashMap<Key, Vec<usize>> = HashMap::new();
    for (j, append) in batch.iter().enumerate() {
        if let Some(condition) = &append.request.condition {
            let query = &condition.fail_if_events_match;
            let mut candidates: Vec<usize> = if query.is_all() {
                (0..j).collect()
            } else {
                footprint::probes(query)
                    .iter()
                    .filter_map(|p| p.key.and_then(|k| by_key.get(&k)))
                    .flatten()
                    .copied()
                    .collect()
            };
            candidates.sort_unstable();
            candidates.dedup();
            for i in candidates {
                let matches = batch[i]
                    .request
                    .events
                    .iter()
                    .any(|e| query.matches(&e.event_type, &e.tags));
                if matches {
                    pairs.push((j as i32, i as i32));
                }
            }
        }
        for &key in append.event_keys.iter().flatten() {
            let owners = by_key.entry(key).or_default();
            if owners.last() != Some(&j) {
                owners.push(j);
            }
        }
    }
    pairs
}

/// The event columns of a batch, flattened for `crablet_append_batch`.
struct EventColumns<'a> {
    /// Per event: the index of its append.
    appends: Vec<i32>,
    types: Vec<&'a str>,
    data: Vec<&'a [u8]>,
    /// Per event: its id; `None` (SQL NULL, no lookup) when no event of the
    /// batch has one.
    ids: Option<Vec<Option<&'a str>>>,
    /// Per event: its metadata; `None` when no event of the batch has any.
    metadata: Option<Vec<Option<&'a [u8]>>>,
    /// Per event: its tags, as an array literal.
    tags: Vec<String>,
    /// Per index key: the 1-based ordinal of its event.
    key_events: Vec<i32>,
    keys: Vec<Key>,
}

impl<'a> EventColumns<'a> {
    fn of(batch: &[&'a CheckedAppend]) -> Self {
        let mut cols = EventColumns {
            appends: Vec::new(),
            types: Vec::new(),
            data: Vec::new(),
            ids: batch.iter().any(|a| !a.id_keys.is_empty()).then(Vec::new),
            metadata: batch
                .iter()
                .any(|a| a.request.events.iter().any(|e| e.metadata.is_some()))
                .then(Vec::new),
            tags: Vec::new(),
            key_events: Vec::new(),
            keys: Vec::new(),
        };
        let events = batch.iter().enumerate().flat_map(|(i, append)| {
            append
                .request
                .events
                .iter()
                .zip(&append.event_keys)
                .map(move |(e, keys)| (i, e, keys))
        });
        for (ordinal, (append, event, keys)) in (1_i32..).zip(events) {
            cols.appends.push(append as i32);
            cols.types.push(&event.event_type);
            cols.data.push(event.data.as_bytes());
            if let Some(ids) = cols.ids.as_mut() {
                ids.push(event.id.as_deref());
            }
            if let Some(metadata) = cols.metadata.as_mut() {
                metadata.push(event.metadata.as_deref().map(str::as_bytes));
            }
            cols.tags.push(array_literal(&event.tags));
            for &key in keys {
                cols.key_events.push(ordinal);
                cols.keys.push(key);
            }
        }
        cols
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcb::{AppendCondition, AppendRequest, Limits, NewEvent, Query, QueryItem};

    fn append(tag: &str, condition: Option<Query>) -> CheckedAppend {
        let request = AppendRequest {
            events: vec![NewEvent {
                event_type: "Registered".into(),
                tags: vec![tag.to_string()],
                data: "{}".into(),
                id: None,
                metadata: None,
            }],
            condition: condition.map(|q| AppendCondition {
                fail_if_events_match: q,
                after: None,
            }),
            require: Vec::new(),
        };
        CheckedAppend::new(request, &Limits::default()).unwrap()
    }

    fn tagged(tag: &str) -> Option<Query> {
        Some(Query {
            items: vec![QueryItem {
                types: vec![],
                tags: vec![tag.to_string()],
            }],
        })
    }

    #[test]
    fn appends_conflict_with_every_earlier_append_whose_events_match() {
        let a = append("user:a", tagged("user:a"));
        let b = append("user:b", tagged("user:b"));
        let a2 = append("user:a", tagged("user:a"));
        let a3 = append("user:a", tagged("user:a"));
        assert_eq!(
            conflict_pairs(&[&a, &b, &a2, &a3]),
            vec![(2, 0), (3, 0), (3, 2)]
        );
    }

    #[test]
    fn unconditional_appends_conflict_with_later_conditions_only() {
        let plain = append("user:a", None);
        let cond = append("user:a", tagged("user:a"));
        assert_eq!(conflict_pairs(&[&plain, &cond]), vec![(1, 0)]);
        assert_eq!(conflict_pairs(&[&cond, &plain]), vec![]);
    }

    #[test]
    fn a_condition_on_all_events_conflicts_with_every_earlier_append() {
        let a = append("user:a", None);
        let b = append("user:b", None);
        let all = append("user:c", Some(Query::all()));
        assert_eq!(conflict_pairs(&[&a, &b, &all]), vec![(2, 0), (2, 1)]);
    }

    #[test]
    fn a_type_only_condition_conflicts_through_the_type_key() {
        let a = append("user:a", None);
        let by_type = append(
            "user:z",
            Some(Query {
                items: vec![QueryItem {
                    types: vec!["Registered".into()],
                    tags: vec![],
                }],
            }),
        );
        assert_eq!(conflict_pairs(&[&a, &by_type]), vec![(1, 0)]);
    }

    #[test]
    fn array_literals_quote_every_element_and_escape_quotes_and_backslashes() {
        let items = ["a", "q\"uote", "back\\slash", "c,o{m}ma", ""].map(String::from);
        assert_eq!(
            array_literal(&items),
            r#"{"a","q\"uote","back\\slash","c,o{m}ma",""}"#
        );
        assert_eq!(array_literal(&[]), "{}");
    }

    #[test]
    fn event_columns_number_events_across_the_batch() {
        let (a, b) = (append("user:a", None), append("user:b", None));
        let cols = EventColumns::of(&[&a, &b]);
        assert_eq!(cols.appends, vec![0, 1]);
        assert_eq!(cols.tags, vec![r#"{"user:a"}"#, r#"{"user:b"}"#]);
        assert_eq!(cols.key_events.len(), 4);
        assert_eq!(cols.ids, None, "no ids: nothing to look up");
        assert_eq!(cols.metadata, None);
    }

    #[test]
    fn ids_and_metadata_are_sent_per_event_once_any_event_has_them() {
        let plain = append("user:a", None);
        let mut request = plain.request.clone();
        request.events[0].id = Some("id-1".into());
        request.events[0].metadata = Some("m".into());
        let with_id = CheckedAppend::new(request, &Limits::default()).unwrap();
        let cols = EventColumns::of(&[&plain, &with_id]);
        assert_eq!(cols.ids, Some(vec![None, Some("id-1")]));
        assert_eq!(cols.metadata, Some(vec![None, Some(&b"m"[..])]));
    }
}
