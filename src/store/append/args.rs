//! The request side of the batch append: the arguments of one
//! `crablet_append_batch` call ([`BatchArgs`]), computed without the
//! database: the merged locks, the conditions' probes, where appends of the
//! batch overlap, the requirements' projectors and the event columns, each
//! flattened into the arrays the function takes.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;

use crate::dcb::footprint::{self, Key, LockMode, SEQUENCE_KEY};
use crate::dcb::projection::ProjectorSpec;
use crate::dcb::{CheckedAppend, Footprint, Position};
use crate::store::quote::array_literal;
use crate::store::states::ProjectionStates;
use crate::store::StoreError;

/// The arguments of one `crablet_append_batch` call, built in one place and
/// in the function's order ([`BatchArgs::params`]).
pub(super) struct BatchArgs<'a> {
    lock_keys: Vec<Key>,
    lock_exclusive: Vec<bool>,
    appends: i32,
    /// Per append: its number of events.
    append_events: Vec<i32>,
    /// Per append: its condition's `after` (0 when it has none).
    after: Vec<Position>,
    pub(super) probes: ProbeColumns,
    overlaps: Overlaps,
    /// Whether an in-batch match needs positions: its later append's
    /// `after` lies beyond `known_head`.
    pairs_exact: bool,
    /// The batch's distinct projectors, in the order of `projectors_json`.
    pub(super) projectors: Vec<&'a ProjectorSpec>,
    /// `None` (SQL NULL: no requirement work at all) without projectors.
    projectors_json: Option<String>,
    requirements: RequirementColumns<'a>,
    events: EventColumns<'a>,
    known_head: Position,
    /// Index entries one append's decision may visit.
    pub(super) budget: i64,
}

impl<'a> BatchArgs<'a> {
    pub(super) fn of(
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
    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 35] {
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
        for (append_index, append) in batch.iter().enumerate() {
            for (requirement_index, requirement) in append.requirements.iter().enumerate() {
                let spec = &requirement.q;
                let projector = *index.entry(spec.canonical()).or_insert_with(|| {
                    cols.projectors.push(spec);
                    cols.projectors.len() - 1
                });
                cols.appends.push(append_index as i32);
                cols.indexes.push(requirement_index as i32);
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
pub(super) struct ProbeColumns {
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
        for (append_index, append) in batch.iter().enumerate() {
            let Some(condition) = &append.request.condition else {
                continue;
            };
            let probes = footprint::probes(&condition.fail_if_events_match);
            let inexact = probes.iter().filter(|p| !p.is_exact()).count().max(1);
            let share = (budget / inexact as i64).max(1);
            for probe in probes {
                cols.appends.push(append_index as i32);
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
    pub(super) fn item_of(&self, probe: i32) -> Result<usize, StoreError> {
        usize::try_from(probe)
            .ok()
            .and_then(|p| self.items.get(p).copied())
            .ok_or_else(|| StoreError::Corrupt {
                position: 0,
                reason: format!("the batch function named probe {probe}"),
            })
    }
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
        for (later, append) in batch.iter().enumerate() {
            if with_ids {
                let mut owners_of_ids: Vec<usize> = append
                    .request
                    .events
                    .iter()
                    .filter_map(|e| e.id.as_deref())
                    .filter_map(|id| by_id.get(id))
                    .flatten()
                    .copied()
                    .collect();
                owners_of_ids.sort_unstable();
                owners_of_ids.dedup();
                for earlier in owners_of_ids {
                    overlaps.id_later.push(later as i32);
                    overlaps.id_earlier.push(earlier as i32);
                }
                for id in append.request.events.iter().filter_map(|e| e.id.as_deref()) {
                    let owners = by_id.entry(id).or_default();
                    if owners.last() != Some(&later) {
                        owners.push(later);
                    }
                }
            }
            if let Some(condition) = &append.request.condition {
                let query = &condition.fail_if_events_match;
                let mut candidates: Vec<usize> = if query.is_all() {
                    (0..later).collect()
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
                for earlier in candidates {
                    let last_match = batch[earlier]
                        .request
                        .events
                        .iter()
                        .rposition(|e| query.matches(&e.event_type, &e.tags));
                    if let Some(offset) = last_match {
                        overlaps.match_later.push(later as i32);
                        overlaps.match_earlier.push(earlier as i32);
                        overlaps.match_offset.push(offset as i32);
                    }
                }
            }
            for &key in append.event_keys.iter().flatten() {
                let owners = by_key.entry(key).or_default();
                if owners.last() != Some(&later) {
                    owners.push(later);
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
        let events = batch.iter().enumerate().flat_map(|(append_index, append)| {
            append
                .request
                .events
                .iter()
                .zip(&append.event_keys)
                .map(move |(e, keys)| (append_index, e, keys))
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
        let other = |tag: &str| NewEvent {
            event_type: "Other".into(),
            tags: vec![tag.into()],
            data: "{}".into(),
            id: None,
            metadata: None,
        };
        request.events.extend([other("user:a"), other("user:b")]);
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
