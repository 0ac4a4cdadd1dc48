//! The batch append: many appends decided in order and committed together,
//! in one round trip.
//!
//! crablet prepares everything that needs no database ([`BatchArgs`]): the
//! batch's advisory locks (its merged [`Footprint`], sorted), the probes of
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

use std::collections::HashMap;

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::states::ProjectionStates;
use super::{Connection, StoreError};
use crate::dcb::footprint::{self, Key, LockMode, SEQUENCE_KEY};
use crate::dcb::projection::ProjectorSpec;
use crate::dcb::{AppendOutcome, CheckedAppend, Footprint, OverBudget, Position, StoredEvent};

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
    // One statement in an implicit transaction: PostgreSQL commits it at the
    // protocol's Sync and answers ReadyForQuery only after the commit, and
    // the rows are handed over only then, so nothing is acknowledged before
    // it is durable. A failure rolls the whole batch back.
    let rows = conn
        .client
        .query(&conn.statements.append_batch, &args.params())
        .await?;
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

/// The arguments of one `crablet_append_batch` call, built in one place and
/// in the function's order ([`BatchArgs::params`]).
struct BatchArgs<'a> {
    lock_keys: Vec<Key>,
    lock_exclusive: Vec<bool>,
    appends: i32,
    /// Per append: its number of events.
    append_events: Vec<i32>,
    /// Per append: its condition's `after` (0 when it has none).
    after: Vec<Position>,
    probes: ProbeColumns,
    overlaps: Overlaps,
    /// Whether an in-batch match needs positions: its later append's
    /// `after` lies beyond `known_head`.
    pairs_exact: bool,
    /// The batch's distinct projectors, in the order of `projectors_json`.
    projectors: Vec<&'a ProjectorSpec>,
    /// `None` (SQL NULL: no requirement work at all) without projectors.
    projectors_json: Option<String>,
    requirements: RequirementColumns<'a>,
    events: EventColumns<'a>,
    known_head: Position,
    /// Index entries one append's decision may visit.
    budget: i64,
}

impl<'a> BatchArgs<'a> {
    fn of(
        batch: &[&'a CheckedAppend],
        states: &ProjectionStates,
        known_head: Position,
        budget: i64,
    ) -> Self {
        let mut footprint = Footprint::default();
        for append in batch {
            footprint.merge(&append.footprint);
        }
        let (lock_keys, lock_exclusive) = footprint
            .iter()
            .map(|(key, mode)| (key, mode == LockMode::Exclusive))
            .unzip();
        let requirements = RequirementColumns::of(batch);
        let projectors_json = (!requirements.projectors.is_empty())
            .then(|| states.arguments(requirements.projectors.iter().copied(), Some(budget)));
        let after: Vec<Position> = batch
            .iter()
            .map(|a| {
                a.request
                    .condition
                    .as_ref()
                    .map_or(0, |c| c.after_or_zero())
            })
            .collect();
        let overlaps = Overlaps::of(batch);
        let pairs_exact = overlaps
            .match_later
            .iter()
            .any(|&later| after[later as usize] > known_head);
        BatchArgs {
            lock_keys,
            lock_exclusive,
            appends: batch.len() as i32,
            append_events: batch.iter().map(|a| a.len() as i32).collect(),
            after,
            probes: ProbeColumns::of(batch, budget),
            overlaps,
            pairs_exact,
            projectors: requirements.projectors.clone(),
            projectors_json,
            requirements,
            events: EventColumns::of(batch),
            known_head,
            budget,
        }
    }

    /// In the order of the function's parameters.
    fn params(&self) -> [&(dyn ToSql + Sync); 35] {
        [
            &self.lock_keys,
            &self.lock_exclusive,
            &self.appends,
            &self.append_events,
            &self.after,
            &self.probes.appends,
            &self.probes.keys,
            &self.probes.tags,
            &self.probes.types,
            &self.probes.candidates,
            &self.probes.budgets,
            &self.overlaps.match_later,
            &self.overlaps.match_earlier,
            &self.overlaps.match_offset,
            &self.pairs_exact,
            &self.overlaps.id_later,
            &self.overlaps.id_earlier,
            &self.projectors_json,
            &self.requirements.appends,
            &self.requirements.indexes,
            &self.requirements.projector_of,
            &self.requirements.ops,
            &self.requirements.values,
            &self.requirements.fold_projector,
            &self.requirements.fold_event,
            &self.events.appends,
            &self.events.types,
            &self.events.data,
            &self.events.ids,
            &self.events.metadata,
            &self.events.tags,
            &self.events.key_events,
            &self.events.keys,
            &self.known_head,
            &SEQUENCE_KEY,
        ]
    }
}

/// The requirements of a batch: its distinct projectors, each requirement
/// by projector, and the batch events each projector's query matches.
#[derive(Default)]
struct RequirementColumns<'a> {
    projectors: Vec<&'a ProjectorSpec>,
    /// Per requirement, in batch order: its append,
    appends: Vec<i32>,
    /// its place in the append's `require`,
    indexes: Vec<i32>,
    /// its projector (in `projectors`),
    projector_of: Vec<i32>,
    ops: Vec<&'static str>,
    /// and its value, as JSON.
    values: Vec<String>,
    /// Per (projector, batch event it matches), ordered by event: the
    /// projector,
    fold_projector: Vec<i32>,
    /// and the event's 1-based ordinal in the batch.
    fold_event: Vec<i32>,
}

impl<'a> RequirementColumns<'a> {
    fn of(batch: &[&'a CheckedAppend]) -> Self {
        let mut cols = RequirementColumns::default();
        if batch.iter().all(|a| a.requirements.is_empty()) {
            return cols;
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, append) in batch.iter().enumerate() {
            for (n, requirement) in append.requirements.iter().enumerate() {
                let spec = &requirement.q;
                let projector = *index.entry(spec.canonical()).or_insert_with(|| {
                    cols.projectors.push(spec);
                    cols.projectors.len() - 1
                });
                cols.appends.push(i as i32);
                cols.indexes.push(n as i32);
                cols.projector_of.push(projector as i32);
                cols.ops.push(requirement.op.name());
                cols.values.push(requirement.v.to_string());
            }
        }
        let events = batch.iter().flat_map(|a| &a.request.events);
        for (ordinal, event) in (1_i32..).zip(events) {
            for (projector, spec) in cols.projectors.iter().enumerate() {
                if spec.query.matches(&event.event_type, &event.tags) {
                    cols.fold_projector.push(projector as i32);
                    cols.fold_event.push(ordinal);
                }
            }
        }
        cols
    }
}

/// The probes of the batch's conditions, flattened for
/// `crablet_append_batch`: empty when no append has a condition.
#[derive(Default)]
struct ProbeColumns {
    /// Per probe: the index of its append.
    appends: Vec<i32>,
    /// Per probe: the key to scan; `None` scans all events.
    keys: Vec<Option<Key>>,
    /// Per probe: its tags, as an array literal.
    tags: Vec<String>,
    /// Per probe: its types (none: any type), as an array literal.
    types: Vec<String>,
    /// Per probe: `None` when it is exact, else the keys it may be driven
    /// by, as an array literal (the function scans the rarest); `None` as a
    /// whole (SQL NULL) when every probe is exact, the usual batch.
    candidates: Option<Vec<Option<String>>>,
    /// Per probe: the index entries it may visit (its append's budget shared
    /// by the append's probes that are not exact).
    budgets: Vec<i64>,
    /// Per probe: the condition item it probes for.
    items: Vec<usize>,
}

impl ProbeColumns {
    fn of(batch: &[&CheckedAppend], budget: i64) -> Self {
        let mut cols = ProbeColumns::default();
        for (i, append) in batch.iter().enumerate() {
            let Some(condition) = &append.request.condition else {
                continue;
            };
            let probes = footprint::probes(&condition.fail_if_events_match);
            let inexact = probes.iter().filter(|p| !p.is_exact()).count().max(1);
            let share = (budget / inexact as i64).max(1);
            for probe in probes {
                cols.appends.push(i as i32);
                cols.keys.push(probe.key);
                cols.tags.push(array_literal(probe.tags));
                cols.types.push(array_literal(probe.types));
                let candidates = probe.candidate_keys().map(|keys| {
                    let keys: Vec<String> = keys.iter().map(Key::to_string).collect();
                    format!("{{{}}}", keys.join(","))
                });
                if candidates.is_some() && cols.candidates.is_none() {
                    cols.candidates = Some(vec![None; cols.keys.len() - 1]);
                }
                if let Some(all) = &mut cols.candidates {
                    all.push(candidates);
                }
                cols.budgets.push(share);
                cols.items.push(probe.item);
            }
        }
        cols
    }

    /// The condition item of probe number `probe` (as the function names it).
    fn item_of(&self, probe: i32) -> Result<usize, StoreError> {
        usize::try_from(probe)
            .ok()
            .and_then(|p| self.items.get(p).copied())
            .ok_or_else(|| StoreError::Corrupt {
                position: 0,
                reason: format!("the batch function named probe {probe}"),
            })
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

/// Where an append of the batch overlaps an earlier one, ordered by the
/// later append: the function decides these in batch order.
///
/// - `match_*`: an event of `earlier` matches `later`'s condition; `offset`
///   is the last such event's place in `earlier` (its position decides an
///   `after` beyond every head). Earlier appends are indexed by the keys of
///   their events, so each condition is compared only with appends that share
///   a probe key.
/// - `id_*`: `later` has an id of `earlier` (computed only when an append of
///   the batch has ids).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Overlaps {
    pub match_later: Vec<i32>,
    pub match_earlier: Vec<i32>,
    pub match_offset: Vec<i32>,
    pub id_later: Vec<i32>,
    pub id_earlier: Vec<i32>,
}

impl Overlaps {
    pub fn of(batch: &[&CheckedAppend]) -> Self {
        let mut overlaps = Overlaps::default();
        let mut by_key: HashMap<Key, Vec<usize>> = HashMap::new();
        let with_ids = batch.iter().any(|a| !a.id_keys.is_empty());
        let mut by_id: HashMap<&str, Vec<usize>> = HashMap::new();
        for (j, append) in batch.iter().enumerate() {
            if with_ids {
                let mut earlier: Vec<usize> = append
                    .request
                    .events
                    .iter()
                    .filter_map(|e| e.id.as_deref())
                    .filter_map(|id| by_id.get(id))
                    .flatten()
                    .copied()
                    .collect();
                earlier.sort_unstable();
                earlier.dedup();
                for i in earlier {
                    overlaps.id_later.push(j as i32);
                    overlaps.id_earlier.push(i as i32);
                }
                for id in append.request.events.iter().filter_map(|e| e.id.as_deref()) {
                    let owners = by_id.entry(id).or_default();
                    if owners.last() != Some(&j) {
                        owners.push(j);
                    }
                }
            }
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
                    let last_match = batch[i]
                        .request
                        .events
                        .iter()
                        .rposition(|e| query.matches(&e.event_type, &e.tags));
                    if let Some(offset) = last_match {
                        overlaps.match_later.push(j as i32);
                        overlaps.match_earlier.push(i as i32);
                        overlaps.match_offset.push(offset as i32);
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
        overlaps
    }

    /// The `(later, earlier)` pairs of condition matches.
    #[cfg(test)]
    fn matches(&self) -> Vec<(i32, i32)> {
        self.match_later
            .iter()
            .copied()
            .zip(self.match_earlier.iter().copied())
            .collect()
    }
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
            Overlaps::of(&[&a, &b, &a2, &a3]).matches(),
            vec![(2, 0), (3, 0), (3, 2)]
        );
    }

    #[test]
    fn unconditional_appends_conflict_with_later_conditions_only() {
        let plain = append("user:a", None);
        let cond = append("user:a", tagged("user:a"));
        assert_eq!(Overlaps::of(&[&plain, &cond]).matches(), vec![(1, 0)]);
        assert_eq!(Overlaps::of(&[&cond, &plain]).matches(), vec![]);
    }

    #[test]
    fn a_condition_on_all_events_conflicts_with_every_earlier_append() {
        let a = append("user:a", None);
        let b = append("user:b", None);
        let all = append("user:c", Some(Query::all()));
        assert_eq!(
            Overlaps::of(&[&a, &b, &all]).matches(),
            vec![(2, 0), (2, 1)]
        );
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
        assert_eq!(Overlaps::of(&[&a, &by_type]).matches(), vec![(1, 0)]);
    }

    #[test]
    fn a_match_records_the_last_matching_event_of_the_earlier_append() {
        let mut request = append("user:a", None).request;
        request.events.push(NewEvent {
            event_type: "Other".into(),
            tags: vec!["user:a".into()],
            data: "{}".into(),
            id: None,
            metadata: None,
        });
        request.events.push(NewEvent {
            event_type: "Other".into(),
            tags: vec!["user:b".into()],
            data: "{}".into(),
            id: None,
            metadata: None,
        });
        let three = CheckedAppend::new(request, &Limits::default()).unwrap();
        let cond = append("user:z", tagged("user:a"));
        let overlaps = Overlaps::of(&[&three, &cond]);
        assert_eq!(overlaps.matches(), vec![(1, 0)]);
        assert_eq!(overlaps.match_offset, vec![1], "the second event of three");
    }

    #[test]
    fn an_id_reused_from_earlier_appends_pairs_the_later_with_each_of_them_once() {
        let with_ids = |ids: &[&str]| {
            let mut request = append("user:a", None).request;
            request.events = ids
                .iter()
                .map(|id| NewEvent {
                    event_type: "Registered".into(),
                    tags: vec!["user:a".into()],
                    data: "{}".into(),
                    id: Some(id.to_string()),
                    metadata: None,
                })
                .collect();
            CheckedAppend::new(request, &Limits::default()).unwrap()
        };
        let (a, b, c) = (
            with_ids(&["1", "2"]),
            with_ids(&["3"]),
            with_ids(&["2", "3", "1"]),
        );
        let overlaps = Overlaps::of(&[&a, &b, &c]);
        assert_eq!(overlaps.id_later, vec![2, 2]);
        assert_eq!(overlaps.id_earlier, vec![0, 1]);
        let plain = Overlaps::of(&[&append("user:a", None), &append("user:a", None)]);
        assert!(plain.id_later.is_empty(), "no ids, no id pairs");
    }

    #[test]
    fn requirements_share_one_projector_per_canonical_form_and_fold_every_matching_event() {
        let seat = |tag: &str| {
            let mut request = append(tag, None).request;
            request.require = vec![serde_json::from_value(serde_json::json!({
                "projector": {"id": tag, "query": {"items": [{"tags": [tag]}]}, "reduce": "count"},
                "op": "lt", "value": 3
            }))
            .unwrap()];
            CheckedAppend::new(request, &Limits::default()).unwrap()
        };
        let (a1, b, a2) = (seat("course:a"), seat("course:b"), seat("course:a"));
        let plain = append("course:a", None);
        let cols = RequirementColumns::of(&[&a1, &b, &plain, &a2]);
        assert_eq!(cols.projectors.len(), 2, "course:a once, course:b once");
        assert_eq!(cols.appends, vec![0, 1, 3]);
        assert_eq!(cols.projector_of, vec![0, 1, 0]);
        assert_eq!(cols.ops, vec!["lt"; 3]);
        assert_eq!(cols.values, vec!["3"; 3]);
        // Events 1, 3, 4 carry course:a; event 2 course:b.
        assert_eq!(cols.fold_event, vec![1, 2, 3, 4]);
        assert_eq!(cols.fold_projector, vec![0, 1, 0, 0]);
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
