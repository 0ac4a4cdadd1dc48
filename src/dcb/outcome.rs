//! What became of an append, and one page of a read: the vocabulary the
//! writer lanes, the readers and the HTTP layer share.
//!
//! Pure: the store produces these values, the HTTP layer turns them into
//! answers, and neither needs the other's types. The decision between a
//! retried append ([`AppendOutcome::Duplicate`]) and a reuse of ids by a
//! different append ([`AppendOutcome::IdConflict`]) is made here, from the
//! events the store found under the append's ids.

use std::collections::HashMap;

use super::model::{NewEvent, Position};

/// What became of one append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Written at positions `first..=last`.
    Appended { first: Position, last: Position },
    /// A matching event exists after the condition's `after`; nothing written.
    ConditionFailed,
    /// Every event carries an id, and the same append (same ids in the same
    /// order, same content) is already stored at `first..=last`: a retry.
    /// Nothing written; decided before the condition, so a retry of a
    /// success is a success.
    Duplicate { first: Position, last: Position },
    /// Some ids of the append are stored, but not as this same append:
    /// nothing written.
    IdConflict { ids: Vec<IdClash> },
    /// The requirement at `index` of the append's `require` did not hold
    /// (its condition, checked first, did); nothing written.
    RequirementFailed { index: usize },
    /// Deciding the append would have visited more index entries than
    /// `budget` allows, in `over`; nothing written, and the appends batched
    /// with it were decided as if it had not been there.
    OverBudget { over: OverBudget, budget: i64 },
}

/// What part of an append's decision went over its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverBudget {
    /// The item at `index` of the condition's query.
    ConditionItem { index: usize },
    /// The requirement at `index` of `require`.
    Requirement { index: usize },
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OverBudget::ConditionItem { index } => {
                write!(f, "condition.failIfEventsMatch.items[{index}]")
            }
            OverBudget::Requirement { index } => write!(f, "require[{index}]"),
        }
    }
}

/// An id of an append that is already stored by another append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdClash {
    /// Index of the event in the append.
    pub index: usize,
    pub id: String,
}

/// An event found in the store under an id of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub position: Position,
    pub id: String,
    pub event_type: String,
    pub tags: Vec<String>,
    /// Stored bytes of `data` and `metadata`, compared byte for byte.
    pub data: Vec<u8>,
    pub metadata: Option<Vec<u8>>,
}

impl StoredEvent {
    fn same_content(&self, event: &NewEvent) -> bool {
        self.event_type == event.event_type
            && self.tags == event.tags
            && self.data == event.data.as_bytes()
            && self.metadata.as_deref() == event.metadata.as_deref().map(str::as_bytes)
    }
}

impl AppendOutcome {
    /// Judges an append (validated, so its tags are normalized) some of
    /// whose ids are stored: a duplicate if every event has an id and is
    /// stored with the same content, in order, at consecutive positions;
    /// otherwise a conflict naming the stored ids. `stored` may come in any
    /// order and must not be empty.
    pub fn of_stored(events: &[NewEvent], stored: &[StoredEvent]) -> AppendOutcome {
        let by_id: HashMap<&str, &StoredEvent> =
            stored.iter().map(|s| (s.id.as_str(), s)).collect();
        let mut first = None;
        let same = events.iter().enumerate().all(|(k, event)| {
            let Some(found) = event.id.as_deref().and_then(|id| by_id.get(id)) else {
                return false;
            };
            let start = *first.get_or_insert(found.position);
            found.position == start + k as Position && found.same_content(event)
        });
        match first {
            Some(first) if same => AppendOutcome::Duplicate {
                first,
                last: first + events.len() as Position - 1,
            },
            _ => AppendOutcome::IdConflict {
                ids: events
                    .iter()
                    .enumerate()
                    .filter_map(|(index, e)| {
                        let id = e.id.as_deref()?;
                        by_id.contains_key(id).then(|| IdClash {
                            index,
                            id: id.to_string(),
                        })
                    })
                    .collect(),
            },
        }
    }

    /// The outcome as a bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            AppendOutcome::Appended { .. } => "appended",
            AppendOutcome::ConditionFailed => "condition_failed",
            AppendOutcome::Duplicate { .. } => "duplicate",
            AppendOutcome::IdConflict { .. } => "id_conflict",
            AppendOutcome::RequirementFailed { .. } => "requirement_failed",
            AppendOutcome::OverBudget { .. } => "over_budget",
        }
    }
}

/// One page of a read: events with `after < position < before`, at most
/// `limit`, ascending or (with `backwards`) descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub after: Position,
    pub before: Position,
    pub backwards: bool,
    pub limit: i64,
}

impl Page {
    /// Whether `position` may follow `previous` (the page's last event so
    /// far, if any) in this page: within its bounds and strictly after the
    /// previous one in the page's direction.
    pub fn admits(&self, previous: Option<Position>, position: Position) -> bool {
        let in_bounds = self.after < position && position < self.before;
        let in_order = previous.is_none_or(|previous| {
            if self.backwards {
                position < previous
            } else {
                position > previous
            }
        });
        in_bounds && in_order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_admits_only_positions_in_its_bounds_and_its_order() {
        let forward = Page {
            after: 10,
            before: 20,
            backwards: false,
            limit: 5,
        };
        assert!(forward.admits(None, 11) && forward.admits(Some(11), 19));
        assert!(
            !forward.admits(None, 10) && !forward.admits(None, 20),
            "bounds"
        );
        assert!(
            !forward.admits(Some(15), 14),
            "a descending row in a forward page"
        );
        assert!(!forward.admits(Some(15), 15), "a repeated row");
        let backwards = Page {
            backwards: true,
            ..forward
        };
        assert!(backwards.admits(Some(15), 14));
        assert!(
            !backwards.admits(Some(14), 15),
            "an ascending row in a backward page"
        );
    }

    fn event(id: Option<&str>, data: &str) -> NewEvent {
        NewEvent {
            event_type: "E".into(),
            tags: vec!["t".into()],
            data: data.into(),
            id: id.map(String::from),
            metadata: Some("m".into()),
        }
    }

    fn stored(position: Position, id: &str, data: &str) -> StoredEvent {
        StoredEvent {
            position,
            id: id.into(),
            event_type: "E".into(),
            tags: vec!["t".into()],
            data: data.as_bytes().to_vec(),
            metadata: Some(b"m".to_vec()),
        }
    }

    fn clash(index: usize, id: &str) -> IdClash {
        IdClash {
            index,
            id: id.into(),
        }
    }

    #[test]
    fn the_same_append_stored_in_order_is_a_duplicate_other_content_a_conflict() {
        let events = [event(Some("a"), "1"), event(Some("b"), "2")];
        for (found, outcome) in [
            (
                [stored(8, "b", "2"), stored(7, "a", "1")],
                AppendOutcome::Duplicate { first: 7, last: 8 },
            ),
            (
                [stored(7, "a", "1"), stored(8, "b", "other")],
                AppendOutcome::IdConflict {
                    ids: vec![clash(0, "a"), clash(1, "b")],
                },
            ),
        ] {
            assert_eq!(AppendOutcome::of_stored(&events, &found), outcome);
        }
        let mut no_metadata = stored(7, "a", "1");
        no_metadata.metadata = None;
        assert!(matches!(
            AppendOutcome::of_stored(&events[..1], &[no_metadata]),
            AppendOutcome::IdConflict { .. }
        ));
    }

    #[test]
    fn a_partial_overlap_or_another_order_is_a_conflict() {
        let events = [event(Some("a"), "1"), event(Some("new"), "2")];
        assert_eq!(
            AppendOutcome::of_stored(&events, &[stored(7, "a", "1")]),
            AppendOutcome::IdConflict {
                ids: vec![clash(0, "a")]
            }
        );
        let swapped = [event(Some("b"), "2"), event(Some("a"), "1")];
        let found = [stored(7, "a", "1"), stored(8, "b", "2")];
        assert!(matches!(
            AppendOutcome::of_stored(&swapped, &found),
            AppendOutcome::IdConflict { .. }
        ));
        let gap = [stored(7, "a", "1"), stored(9, "b", "2")];
        let events = [event(Some("a"), "1"), event(Some("b"), "2")];
        assert!(matches!(
            AppendOutcome::of_stored(&events, &gap),
            AppendOutcome::IdConflict { .. }
        ));
        let without_id = [event(Some("a"), "1"), event(None, "2")];
        assert_eq!(
            AppendOutcome::of_stored(&without_id, &[stored(7, "a", "1")]),
            AppendOutcome::IdConflict {
                ids: vec![clash(0, "a")]
            }
        );
    }
}
