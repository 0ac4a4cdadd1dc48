//! The batch append: many appends decided in order and committed together,
//! in one round trip.
//!
//! crablet prepares everything that needs no database (`args`): the
//! batch's advisory locks (its merged [`Footprint`](crate::dcb::Footprint), sorted), the probes of
//! every condition, where an append overlaps an earlier one of the batch
//! (an event its condition matches, an id it reuses), the batch events each
//! requirement's projector matches, and the event columns. Then it sends one
//! call of `crablet_append_batch` (see `sql/migrations/004_append_batch.sql`)
//! as its own transaction. The function locks, then decides the appends in
//! batch order, each against the store and the earlier accepted appends of
//! the batch, exactly as if each had committed alone before the next: any
//! number of decisions on one key share one commit, each seeing its
//! predecessors. Then it inserts the accepted events under the sequencing
//! lock, so commit order equals position order.
//!
//! An append any of whose ids is already stored, or written by an earlier
//! accepted append of the batch, is not written: [`AppendOutcome::of_stored`]
//! tells a retry of the same append from a reuse of ids. Appends without ids
//! send no ids and pay for no lookup.
//!
//! Requirements (`require`) are decided on their projectors' states: each
//! distinct projector of the batch is reduced once, continued from the state
//! this process remembers for it ([`ProjectionStates`]), and folded with the
//! batch's accepted events in order; its final state comes back and is
//! remembered for the next batch.

mod args;

use std::collections::HashMap;

use tokio_postgres::Row;

use super::states::ProjectionStates;
use super::{Connection, Sql, StoreError};
use crate::dcb::{AppendOutcome, CheckedAppend, OverBudget, Position, StoredEvent};
use args::BatchArgs;

/// Appends a batch in one transaction and returns each append's outcome, in
/// batch order. On `Err` nothing of the batch was written, unless the error
/// came from the commit itself, in which case the outcome is unknown.
///
/// `known_head` is a position this process has seen committed (see
/// [`crate::head`]): a condition whose `after` is not beyond it is
/// certainly broken by a matching event of an earlier append of the batch.
///
/// `budget` is the most index entries one append's decision may visit
/// (`writer.decision_budget_entries`): shared by the probes of its condition
/// that are not exact, and given whole to each of its requirements. An append
/// over it is refused ([`AppendOutcome::OverBudget`]) and the rest of the
/// batch decided as if it had not been there.
pub async fn append_batch(
    conn: &mut Connection,
    batch: &[&CheckedAppend],
    states: &ProjectionStates,
    known_head: Position,
    budget: i64,
) -> Result<Vec<AppendOutcome>, StoreError> {
    let args = BatchArgs::of(batch, states, known_head, budget);
    // One statement in a transaction of its own: on a direct connection an
    // implicit one, which PostgreSQL commits at the protocol's Sync and
    // answers ReadyForQuery only after the commit, and the rows are handed
    // over only then; behind a pooler an explicit one whose COMMIT is sent
    // with it and awaited before the rows are used. Either way nothing is
    // acknowledged before it is durable, and a failure rolls the whole
    // batch back.
    let rows = conn.query(Sql::AppendBatch, &args.params()).await?;
    let outcomes = decide(batch, &rows, &args)?;
    for row in rows
        .iter()
        .filter(|row| matches!(kind(row), Ok(RowKind::State)))
    {
        let projector: i32 = row.try_get("projector")?;
        let Some(spec) = args.projectors.get(projector as usize) else {
            continue;
        };
        let state: String = row.try_get("state")?;
        let through: Position = row.try_get("first_position")?;
        states.remember(spec, state, through);
    }
    Ok(outcomes)
}

/// What a row of `crablet_append_batch` reports (its `kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowKind {
    Written,
    StoredId,
    BatchId,
    Condition,
    Requirement,
    Budget,
    State,
}

fn kind(row: &Row) -> Result<RowKind, StoreError> {
    let kind: &str = row.try_get("kind")?;
    Ok(match kind {
        "written" => RowKind::Written,
        "stored_id" => RowKind::StoredId,
        "batch_id" => RowKind::BatchId,
        "condition" => RowKind::Condition,
        "requirement" => RowKind::Requirement,
        "budget" => RowKind::Budget,
        "state" => RowKind::State,
        other => {
            return Err(StoreError::Corrupt {
                position: 0,
                reason: format!("the batch function reported an unknown row kind {other:?}"),
            })
        }
    })
}

// The answer: the function's rows, decoded into each append's outcome.

/// Each append's outcome from the function's rows: every append without a
/// row of its own was accepted, and the accepted appends' events have
/// consecutive positions from the first one written, in batch order.
fn decide(
    batch: &[&CheckedAppend],
    rows: &[Row],
    args: &BatchArgs,
) -> Result<Vec<AppendOutcome>, StoreError> {
    let mut outcomes: Vec<Option<AppendOutcome>> = vec![None; batch.len()];
    let mut stored: Vec<Vec<StoredEvent>> = Vec::new();
    let mut reused: Vec<(usize, usize)> = Vec::new();
    let mut first_written: Option<Position> = None;
    let append_of = |row: &Row| -> Result<usize, StoreError> {
        let index: i32 = row.try_get("append_index")?;
        usize::try_from(index)
            .ok()
            .filter(|&i| i < batch.len())
            .ok_or_else(|| StoreError::Corrupt {
                position: 0,
                reason: format!("the batch function named append {index} of {}", batch.len()),
            })
    };
    for row in rows {
        match kind(row)? {
            RowKind::Written => first_written = Some(row.try_get("first_position")?),
            RowKind::State => {}
            RowKind::Condition => outcomes[append_of(row)?] = Some(AppendOutcome::ConditionFailed),
            RowKind::Requirement => {
                let index: i32 = row.try_get("requirement")?;
                outcomes[append_of(row)?] = Some(AppendOutcome::RequirementFailed {
                    index: index as usize,
                });
            }
            RowKind::Budget => {
                let requirement: Option<i32> = row.try_get("requirement")?;
                let probe: Option<i32> = row.try_get("probe")?;
                let over = match (requirement, probe) {
                    (Some(index), _) => OverBudget::Requirement {
                        index: index as usize,
                    },
                    (None, Some(probe)) => OverBudget::ConditionItem {
                        index: args.probes.item_of(probe)?,
                    },
                    (None, None) => {
                        return Err(StoreError::Corrupt {
                            position: 0,
                            reason: "a budget row names neither a probe nor a requirement".into(),
                        })
                    }
                };
                outcomes[append_of(row)?] = Some(AppendOutcome::OverBudget {
                    over,
                    budget: args.budget,
                });
            }
            RowKind::BatchId => {
                let earlier: i32 = row.try_get("earlier")?;
                reused.push((append_of(row)?, earlier as usize));
            }
            RowKind::StoredId => {
                if stored.is_empty() {
                    stored.resize_with(batch.len(), Vec::new);
                }
                stored[append_of(row)?].push(StoredEvent {
                    position: row.try_get("first_position")?,
                    id: row.try_get("stored_id")?,
                    event_type: row.try_get("stored_type")?,
                    tags: row.try_get("stored_tags")?,
                    data: row.try_get("stored_data")?,
                    metadata: row.try_get("stored_metadata")?,
                });
            }
        }
    }
    for ((outcome, append), found) in outcomes.iter_mut().zip(batch).zip(&stored) {
        if !found.is_empty() {
            *outcome = Some(AppendOutcome::of_stored(&append.request.events, found));
        }
    }
    // An id reused from an earlier append of the batch: a placeholder until
    // the earlier append's positions are counted out below.
    for &(later, _) in &reused {
        outcomes[later] = Some(AppendOutcome::ConditionFailed);
    }
    let mut next = first_written;
    let mut decided: Vec<AppendOutcome> = outcomes
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
        .collect::<Result<_, StoreError>>()?;
    let mut found_in_batch: HashMap<usize, Vec<StoredEvent>> = HashMap::new();
    for &(later, earlier) in &reused {
        let (Some(AppendOutcome::Appended { first, .. }), Some(earlier_append)) =
            (decided.get(earlier), batch.get(earlier))
        else {
            return Err(StoreError::Corrupt {
                position: 0,
                reason: format!("append {later} reuses ids of append {earlier}, not written"),
            });
        };
        let ids: Vec<&str> = batch[later]
            .request
            .events
            .iter()
            .filter_map(|e| e.id.as_deref())
            .collect();
        let events = found_in_batch.entry(later).or_default();
        for (k, event) in earlier_append.request.events.iter().enumerate() {
            let Some(id) = event.id.as_deref().filter(|id| ids.contains(id)) else {
                continue;
            };
            events.push(StoredEvent {
                position: first + k as Position,
                id: id.to_string(),
                event_type: event.event_type.clone(),
                tags: event.tags.clone(),
                data: event.data.clone().into_bytes(),
                metadata: event.metadata.clone().map(String::into_bytes),
            });
        }
    }
    for (later, found) in found_in_batch {
        decided[later] = AppendOutcome::of_stored(&batch[later].request.events, &found);
    }
    Ok(decided)
}
