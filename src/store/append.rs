//! The batch append: one transaction for many appends, each decided in order.
//!
//! Two pipelined round trips per batch:
//!
//! 1. `BEGIN`; the batch's advisory locks in one sorted pass (shared for the
//!    keys of the events it writes, exclusive for the keys its conditions
//!    probe; see [`crate::dcb::footprint`]); then, only if some append has a
//!    condition, one statement that reports which conditions match a stored
//!    event. It runs after the locks are held, under READ COMMITTED, so its
//!    snapshot includes every transaction that held a conflicting key.
//! 2. The sequencing lock, the insert of every accepted event, `COMMIT`.
//!    Positions are assigned under the sequencing lock and the lock is
//!    released only after the commit is visible, so commit order equals
//!    position order: a reader can never see a position appear below one it
//!    has already seen (gap-free reading).
//!
//! Between the two, the appends are decided in batch order: an append fails
//! if the store check found a match, or if its condition matches an event of
//! an earlier accepted append of the same batch. The latter's position is not
//! known yet; it lies above the head any client can have read, so the append
//! is rejected whatever its `after` (an `after` beyond the head is the only
//! case where this is stricter than necessary).

use serde::Serialize;
use tokio_postgres::types::ToSql;

use super::{Connection, StoreError};
use crate::dcb::footprint::{self, LockMode, SEQUENCE_KEY};
use crate::dcb::{CheckedAppend, Footprint, Position};

/// What became of one append of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Written at positions `first..=last`.
    Appended { first: Position, last: Position },
    /// A matching event exists after the condition's `after`; nothing written.
    ConditionFailed,
}

/// One probe of one append's condition, as `check_conditions.sql` reads it.
#[derive(Serialize)]
struct ConditionProbe<'a> {
    /// Index of the append in the batch.
    i: usize,
    /// The condition's `after` (0 when absent).
    a: Position,
    /// Key to scan; `None` scans all events.
    k: Option<i64>,
    tags: &'a [String],
    types: &'a [String],
}

/// Appends a batch in one transaction and returns each append's outcome, in
/// batch order. On `Err` nothing of the batch was written, unless the error
/// came from the commit itself, in which case the outcome is unknown.
pub async fn append_batch(
    conn: &mut Connection,
    batch: &[&CheckedAppend],
) -> Result<Vec<AppendOutcome>, StoreError> {
    let result = run_batch(conn, batch).await;
    if result.is_err() && !conn.client.is_closed() {
        // Leaves the session clean for the next batch; if even that fails,
        // the pool discards the connection.
        if let Err(e) = conn.client.batch_execute("ROLLBACK").await {
            log::warn!("rollback after a failed batch failed: {e}");
            conn.broken = true;
        }
    }
    result
}

async fn run_batch(
    conn: &mut Connection,
    batch: &[&CheckedAppend],
) -> Result<Vec<AppendOutcome>, StoreError> {
    let mut footprint = Footprint::default();
    for append in batch {
        footprint.merge(&append.footprint);
    }
    let (keys, exclusive): (Vec<i64>, Vec<bool>) = footprint
        .iter()
        .map(|(key, mode)| (key, mode == LockMode::Exclusive))
        .unzip();
    let probes = condition_probes(batch);

    // Round trip 1: begin, lock, check.
    let client = &conn.client;
    let st = &conn.statements;
    let failed_in_store: Vec<usize> = if probes.is_empty() {
        let lock_params: [&(dyn ToSql + Sync); 2] = [&keys, &exclusive];
        tokio::try_join!(
            client.batch_execute("BEGIN"),
            client.execute(&st.lock_keys, &lock_params),
        )?;
        Vec::new()
    } else {
        let probes_json = serde_json::to_string(&probes).expect("probes serialize");
        let lock_params: [&(dyn ToSql + Sync); 2] = [&keys, &exclusive];
        let check_params: [&(dyn ToSql + Sync); 1] = [&probes_json];
        let (_, _, rows) = tokio::try_join!(
            client.batch_execute("BEGIN"),
            client.execute(&st.lock_keys, &lock_params),
            client.query(&st.check_conditions, &check_params),
        )?;
        rows.iter()
            .map(|row| row.get::<_, i32>(0) as usize)
            .collect()
    };

    let accepted = decide(batch, &failed_in_store);
    if !accepted.iter().any(|&a| a) {
        client.batch_execute("ROLLBACK").await?;
        return Ok(vec![AppendOutcome::ConditionFailed; batch.len()]);
    }

    // Round trip 2: sequence, insert, commit.
    let columns = InsertColumns::of(batch, &accepted);
    let params: [&(dyn ToSql + Sync); 6] = [
        &columns.types,
        &columns.data,
        &columns.tag_owners,
        &columns.tags,
        &columns.key_owners,
        &columns.keys,
    ];
    let sequence_params: [&(dyn ToSql + Sync); 1] = [&SEQUENCE_KEY];
    let (_, rows, _) = tokio::try_join!(
        client.execute(&st.lock_sequence, &sequence_params),
        client.query(&st.insert_events, &params),
        client.batch_execute("COMMIT"),
    )?;
    let positions: Vec<Position> = rows.iter().map(|row| row.get(0)).collect();

    let mut next = positions.iter();
    let outcomes = batch
        .iter()
        .zip(&accepted)
        .map(|(append, &ok)| {
            if !ok {
                return AppendOutcome::ConditionFailed;
            }
            let mine: Vec<Position> = next.by_ref().take(append.len()).copied().collect();
            AppendOutcome::Appended {
                first: mine.first().copied().unwrap_or_default(),
                last: mine.last().copied().unwrap_or_default(),
            }
        })
        .collect();
    Ok(outcomes)
}

fn condition_probes<'a>(batch: &[&'a CheckedAppend]) -> Vec<ConditionProbe<'a>> {
    let mut probes = Vec::new();
    for (i, append) in batch.iter().enumerate() {
        let Some(condition) = &append.request.condition else {
            continue;
        };
        for probe in footprint::probes(&condition.fail_if_events_match) {
            probes.push(ConditionProbe {
                i,
                a: condition.after_or_zero(),
                k: probe.key,
                tags: probe.tags,
                types: probe.types,
            });
        }
    }
    probes
}

/// Decides the appends in batch order: `failed_in_store` are those whose
/// condition matched a stored event; an append also fails when its condition
/// matches an event of an earlier accepted append of the batch.
pub fn decide(batch: &[&CheckedAppend], failed_in_store: &[usize]) -> Vec<bool> {
    let mut accepted = Vec::with_capacity(batch.len());
    for (i, append) in batch.iter().enumerate() {
        let ok = match &append.request.condition {
            None => true,
            Some(_) if failed_in_store.contains(&i) => false,
            Some(condition) => {
                let query = &condition.fail_if_events_match;
                !batch[..i]
                    .iter()
                    .zip(&accepted)
                    .any(|(earlier, &was_accepted)| {
                        was_accepted
                            && earlier
                                .request
                                .events
                                .iter()
                                .any(|e| query.matches(&e.event_type, &e.tags))
                    })
            }
        };
        accepted.push(ok);
    }
    accepted
}

/// The columns of `insert_events.sql` for the accepted appends of a batch.
struct InsertColumns<'a> {
    types: Vec<&'a str>,
    data: Vec<&'a [u8]>,
    tag_owners: Vec<i64>,
    tags: Vec<&'a str>,
    key_owners: Vec<i64>,
    keys: Vec<i64>,
}

impl<'a> InsertColumns<'a> {
    fn of(batch: &[&'a CheckedAppend], accepted: &[bool]) -> Self {
        let mut cols = InsertColumns {
            types: Vec::new(),
            data: Vec::new(),
            tag_owners: Vec::new(),
            tags: Vec::new(),
            key_owners: Vec::new(),
            keys: Vec::new(),
        };
        let events = batch
            .iter()
            .zip(accepted)
            .filter(|(_, &ok)| ok)
            .flat_map(|(append, _)| append.request.events.iter());
        for (ordinal, event) in (1_i64..).zip(events) {
            cols.types.push(&event.event_type);
            cols.data.push(event.data.as_bytes());
            for tag in &event.tags {
                cols.tag_owners.push(ordinal);
                cols.tags.push(tag);
            }
            for key in footprint::event_keys(event) {
                cols.key_owners.push(ordinal);
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

    fn register(user: &str, conditional: bool) -> CheckedAppend {
        let tag = format!("user:{user}");
        let condition = conditional.then(|| AppendCondition {
            fail_if_events_match: Query {
                items: vec![QueryItem {
                    types: vec![],
                    tags: vec![tag.clone()],
                }],
            },
            after: None,
        });
        let request = AppendRequest {
            events: vec![NewEvent {
                event_type: "Registered".into(),
                tags: vec![tag],
                data: "{}".into(),
            }],
            condition,
        };
        CheckedAppend::new(request, &Limits::default()).unwrap()
    }

    #[test]
    fn conflicting_appends_in_one_batch_let_only_the_first_through() {
        let (a, b, c) = (
            register("a", true),
            register("a", true),
            register("b", true),
        );
        assert_eq!(decide(&[&a, &b, &c], &[]), vec![true, false, true]);
    }

    #[test]
    fn an_append_rejected_by_the_store_does_not_block_later_ones() {
        let (a, b) = (register("a", true), register("a", true));
        assert_eq!(decide(&[&a, &b], &[0]), vec![false, true]);
    }

    #[test]
    fn unconditional_appends_are_always_accepted_and_count_for_later_conditions() {
        let (a, b) = (register("a", false), register("a", true));
        assert_eq!(decide(&[&a, &b], &[]), vec![true, false]);
    }

    #[test]
    fn insert_columns_number_events_of_accepted_appends_only() {
        let (a, b, c) = (
            register("a", false),
            register("b", false),
            register("c", false),
        );
        let cols = InsertColumns::of(&[&a, &b, &c], &[true, false, true]);
        assert_eq!(cols.types.len(), 2);
        assert_eq!(cols.tag_owners, vec![1, 2]);
        assert_eq!(cols.tags, vec!["user:a", "user:c"]);
        assert_eq!(cols.key_owners.len(), 4);
    }
}
