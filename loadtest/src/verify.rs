//! Pure checkers of DCB invariants over a log read back after a run.
//!
//! The scenarios that verify write, into each event's data, the decision that
//! produced it (the `after` they used, and for `consistency` the condition query).
//! These functions take the log as plain values and return what is wrong; reading
//! the log over HTTP is the scenario's job.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crablet_model::{Position, Query};

/// Prefix of the data of a hot-keys event: `after=<position it was based on>`.
const HOT_KEY_DATA_PREFIX: &str = "after=";

/// The data a hot-keys decision writes: the position it was based on.
pub fn hot_key_data(after: Position) -> String {
    format!("{HOT_KEY_DATA_PREFIX}{after}")
}

/// Parses [`hot_key_data`] back.
pub fn parse_hot_key_data(data: &str) -> Option<Position> {
    data.strip_prefix(HOT_KEY_DATA_PREFIX)?.parse().ok()
}

/// One event of a hot key's chain, as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLink {
    /// Its position.
    pub position: Position,
    /// The `after` its append used (None: data unparsable).
    pub after: Option<Position>,
}

/// An event accepted although the key had a newer event than its `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainViolation {
    /// The offending event.
    pub position: Position,
    /// The `after` it was appended with.
    pub after: Position,
    /// The position of the key's previous event (0: none).
    pub previous: Position,
}

/// What [`check_chain`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainCheck {
    /// Links whose `after` is not the previous link's position.
    pub violations: Vec<ChainViolation>,
    /// Links whose data could not be parsed.
    pub unparsable: u64,
}

/// Checks one key's events (any order; sorted here). Each decision read the key's
/// last position `p` and appended with condition "no event of this key after `p`",
/// so in a correct log every event's `after` equals the position of the key's
/// previous event (0 for the first). A smaller `after` means an event was accepted
/// while a newer matching event existed; a larger one means the reader saw an
/// event that is not in the log. Both are violations.
pub fn check_chain(links: &[ChainLink]) -> ChainCheck {
    let mut sorted = links.to_vec();
    sorted.sort_by_key(|l| l.position);
    let mut check = ChainCheck::default();
    let mut previous = 0;
    for link in sorted {
        match link.after {
            None => check.unparsable += 1,
            Some(after) if after != previous => check.violations.push(ChainViolation {
                position: link.position,
                after,
                previous,
            }),
            Some(_) => {}
        }
        previous = link.position;
    }
    check
}

/// The condition a consistency-scenario event was appended with, stored in its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedCondition {
    /// The position the decision was based on.
    pub after: Position,
    /// The condition's query.
    pub query: Query,
}

impl RecordedCondition {
    /// As event data (JSON text inside the data string).
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses [`RecordedCondition::encode`] back.
    pub fn decode(data: &str) -> Option<Self> {
        serde_json::from_str(data).ok()
    }
}

/// One event of the log, as the consistency checker needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Position.
    pub position: Position,
    /// Type.
    pub event_type: String,
    /// Tags.
    pub tags: Vec<String>,
    /// The condition it was appended with (None: unconditional or unparsable).
    pub condition: Option<RecordedCondition>,
}

/// An event accepted although an event matching its condition existed in
/// `(after, position)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConditionViolation {
    /// The event that should have been rejected.
    pub position: Position,
    /// Its condition's `after`.
    pub after: Position,
    /// A matching event between `after` and `position`.
    pub conflicting_position: Position,
}

/// Checks every conditional event of `events` (any order): no event matching its
/// query may lie strictly between its `after` and its own position. Events of one
/// append share a condition; the scenario appends one event per request, so the
/// window is exact.
pub fn check_conditions(events: &[LoggedEvent]) -> Vec<ConditionViolation> {
    let mut sorted: Vec<&LoggedEvent> = events.iter().collect();
    sorted.sort_by_key(|e| e.position);
    // Indexes of `sorted`, ascending, per tag and per type: candidates for an item.
    let mut by_tag: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut by_type: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, e) in sorted.iter().enumerate() {
        for tag in &e.tags {
            by_tag.entry(tag.as_str()).or_default().push(i);
        }
        by_type.entry(e.event_type.as_str()).or_default().push(i);
    }
    let mut violations = Vec::new();
    for e in &sorted {
        let Some(cond) = &e.condition else { continue };
        let conflict = cond.query.items.iter().find_map(|item| {
            let lists: Vec<&Vec<usize>> = match item.tags.first() {
                Some(tag) => by_tag.get(tag.as_str()).into_iter().collect(),
                None => item
                    .types
                    .iter()
                    .filter_map(|t| by_type.get(t.as_str()))
                    .collect(),
            };
            lists.into_iter().find_map(|list| {
                let start = list.partition_point(|&i| sorted[i].position <= cond.after);
                list[start..]
                    .iter()
                    .map(|&i| sorted[i])
                    .take_while(|c| c.position < e.position)
                    .find(|c| item.matches(&c.event_type, &c.tags))
                    .map(|c| c.position)
            })
        });
        if let Some(conflicting_position) = conflict {
            violations.push(ConditionViolation {
                position: e.position,
                after: cond.after,
                conflicting_position,
            });
        }
    }
    violations
}

/// Acknowledged positions absent from the log (`log` need not be sorted).
pub fn missing_positions(acknowledged: &[Position], log: &[Position]) -> Vec<Position> {
    let mut present = log.to_vec();
    present.sort_unstable();
    acknowledged
        .iter()
        .copied()
        .filter(|p| present.binary_search(p).is_err())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crablet_model::QueryItem;

    fn link(position: Position, after: Position) -> ChainLink {
        ChainLink {
            position,
            after: Some(after),
        }
    }

    #[test]
    fn a_correct_chain_has_no_violation() {
        let links = [link(3, 0), link(10, 3), link(11, 10), link(40, 11)];
        assert_eq!(check_chain(&links), ChainCheck::default());
    }

    #[test]
    fn an_event_accepted_on_a_stale_read_is_a_violation() {
        // Two writers both read position 3 and both got in: the second is wrong.
        let links = [link(10, 3), link(3, 0), link(12, 3)];
        let check = check_chain(&links);
        assert_eq!(
            check.violations,
            vec![ChainViolation {
                position: 12,
                after: 3,
                previous: 10
            }]
        );
    }

    #[test]
    fn an_after_beyond_the_previous_event_is_a_violation_and_garbage_is_counted() {
        let links = [
            link(5, 0),
            link(9, 7),
            ChainLink {
                position: 12,
                after: None,
            },
        ];
        let check = check_chain(&links);
        assert_eq!(check.violations.len(), 1);
        assert_eq!(check.unparsable, 1);
    }

    #[test]
    fn hot_key_data_round_trips() {
        assert_eq!(parse_hot_key_data(&hot_key_data(42)), Some(42));
        assert_eq!(parse_hot_key_data("after=x"), None);
        assert_eq!(parse_hot_key_data("{}"), None);
    }

    fn ev(
        position: Position,
        ty: &str,
        tags: &[&str],
        cond: Option<(Position, Query)>,
    ) -> LoggedEvent {
        LoggedEvent {
            position,
            event_type: ty.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            condition: cond.map(|(after, query)| RecordedCondition { after, query }),
        }
    }

    fn item(types: &[&str], tags: &[&str]) -> QueryItem {
        QueryItem {
            types: types.iter().map(|t| t.to_string()).collect(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn an_item_matches_one_of_its_types_and_all_of_its_tags() {
        let item = item(&["A", "B"], &["x", "y"]);
        let tags = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(item.matches("B", &tags(&["y", "x", "z"])));
        assert!(!item.matches("C", &tags(&["x", "y"])));
        assert!(!item.matches("A", &tags(&["x"])));
        assert!(QueryItem::tags(["x"]).matches("anything", &tags(&["x"])));
    }

    #[test]
    fn conditions_respected_give_no_violation() {
        let q = Query::of([item(&["A"], &["x"])]);
        let log = [
            ev(1, "A", &["x"], None),
            // Non-matching events in the window are fine: other type, missing tag.
            ev(2, "B", &["x"], None),
            ev(3, "A", &["y"], None),
            ev(4, "A", &["x", "z"], Some((1, q))),
        ];
        assert!(check_conditions(&log).is_empty());
    }

    #[test]
    fn a_matching_event_inside_the_window_is_a_violation() {
        let q = Query {
            items: vec![item(&["Z"], &[]), item(&[], &["x", "y"])],
        };
        let log = [
            ev(1, "A", &["x"], None),
            ev(5, "B", &["y", "x"], None),
            ev(7, "A", &["q"], Some((1, q.clone()))),
            // Type-only item: a Z event inside the window.
            ev(8, "Z", &[], None),
            ev(9, "C", &[], Some((7, q))),
        ];
        let v = check_conditions(&log);
        assert_eq!(
            v,
            vec![
                ConditionViolation {
                    position: 7,
                    after: 1,
                    conflicting_position: 5
                },
                ConditionViolation {
                    position: 9,
                    after: 7,
                    conflicting_position: 8
                }
            ]
        );
    }

    #[test]
    fn events_at_or_before_after_and_after_own_position_do_not_count() {
        let q = Query::of([item(&[], &["x"])]);
        let log = [
            ev(3, "A", &["x"], None),
            ev(4, "A", &["x"], Some((3, q))),
            ev(6, "A", &["x"], None),
        ];
        assert!(check_conditions(&log).is_empty());
    }

    #[test]
    fn recorded_conditions_round_trip_through_event_data() {
        let c = RecordedCondition {
            after: 12,
            query: Query::of([item(&["A"], &["t:\"q\""])]),
        };
        assert_eq!(RecordedCondition::decode(&c.encode()), Some(c));
        assert_eq!(RecordedCondition::decode("nope"), None);
    }

    #[test]
    fn missing_positions_lists_acknowledged_positions_not_in_the_log() {
        assert_eq!(missing_positions(&[1, 5, 9], &[9, 1, 2]), vec![5]);
    }
}
