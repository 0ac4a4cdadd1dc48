//! Limits on every input dimension, and the checks a request passes before it
//! reaches a writer or a reader. A request that fails them writes nothing.

use serde::Deserialize;

use super::model::{AppendRequest, Position, Query, ReadOptions};

/// Limits on request shapes. Each comes from configuration (`[limits]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Limits {
    /// Events in one append (written atomically, in one transaction).
    pub max_events_per_append: usize,
    /// Distinct tags on one event.
    pub max_tags_per_event: usize,
    /// Items in one query or append condition.
    pub max_query_items: usize,
    /// Tags or types in one query item.
    pub max_values_per_item: usize,
    /// Bytes in one type name or tag.
    pub max_name_bytes: usize,
    /// Projectors in one `/project` request, and requirements on one append.
    #[serde(default = "default_max_projectors")]
    pub max_projectors: usize,
    /// Largest `limit` of a `distinct` reducer.
    #[serde(default = "default_max_distinct_values")]
    pub max_distinct_values: u32,
    /// Index entries one append writes: one per event for each of its
    /// distinct tags and one for its type.
    #[serde(default = "default_max_index_entries_per_append")]
    pub max_index_entries_per_append: usize,
}

fn default_max_index_entries_per_append() -> usize {
    4096
}

fn default_max_projectors() -> usize {
    32
}

fn default_max_distinct_values() -> u32 {
    1000
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_events_per_append: 1000,
            max_tags_per_event: 64,
            max_query_items: 64,
            max_values_per_item: 64,
            max_name_bytes: 1024,
            max_projectors: default_max_projectors(),
            max_distinct_values: default_max_distinct_values(),
            max_index_entries_per_append: default_max_index_entries_per_append(),
        }
    }
}

/// Why a request is invalid. The message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("an append needs at least one event")]
    NoEvents,
    #[error("an append holds at most {max} events, got {got}")]
    TooManyEvents { max: usize, got: usize },
    #[error(
        "an append writes at most {max} index entries (one per event for each of its tags \
         and one for its type: limits.max_index_entries_per_append), got {got}"
    )]
    TooManyIndexEntries { max: usize, got: usize },
    #[error("{field}: must not be empty")]
    EmptyName { field: String },
    #[error("{field}: longer than {max} bytes")]
    NameTooLong { field: String, max: usize },
    #[error("{field}: must not contain the NUL character")]
    NulInName { field: String },
    #[error("events[{index}].tags: at most {max} tags per event")]
    TooManyTags { index: usize, max: usize },
    #[error("{field}: a query item needs `types` or `tags` (or both)")]
    EmptyQueryItem { field: String },
    #[error("{field}: at most {max} query items")]
    TooManyItems { field: String, max: usize },
    #[error("{field}: at most {max} values")]
    TooManyValues { field: String, max: usize },
    #[error("{field}: must not be negative")]
    NegativePosition { field: String },
    #[error("options: `from` and `after` exclude each other")]
    FromAndAfter,
    #[error("options.limit: must not exceed {max}")]
    LimitTooLarge { max: u64 },
    #[error("{field}: {id:?} is also the id of events[{first}]; ids are unique within an append")]
    DuplicateId {
        field: String,
        id: String,
        first: usize,
    },
    /// A projector or requirement breaks a rule (see [`super::projection`]).
    #[error("{field}: {reason}")]
    Projector { field: String, reason: String },
    #[error("an import needs at least one event")]
    NoImportedEvents,
    #[error(
        "an import holds at most {max} events (limits.max_events_per_append), got {got}; \
         import a longer log in several requests, in position order"
    )]
    TooManyImportedEvents { max: usize, got: usize },
    /// An imported event's position or `recordedAt` (see [`super::import`]).
    #[error("{field}: {reason}")]
    Imported { field: String, reason: String },
}

/// Bytes in an event id: room for a UUID in any notation, or a short
/// business key.
pub const MAX_ID_BYTES: usize = 64;

fn check_name(
    field: impl Fn() -> String,
    value: &str,
    limits: &Limits,
) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::EmptyName { field: field() });
    }
    if value.len() > limits.max_name_bytes {
        return Err(ValidationError::NameTooLong {
            field: field(),
            max: limits.max_name_bytes,
        });
    }
    if value.contains('\0') {
        return Err(ValidationError::NulInName { field: field() });
    }
    Ok(())
}

fn check_position(field: &str, value: Option<Position>) -> Result<(), ValidationError> {
    match value {
        Some(p) if p < 0 => Err(ValidationError::NegativePosition {
            field: field.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Validates a query; `field` names it in messages (`query`, `condition.failIfEventsMatch`).
pub fn validate_query(field: &str, query: &Query, limits: &Limits) -> Result<(), ValidationError> {
    if query.items.len() > limits.max_query_items {
        return Err(ValidationError::TooManyItems {
            field: format!("{field}.items"),
            max: limits.max_query_items,
        });
    }
    for (i, item) in query.items.iter().enumerate() {
        if item.types.is_empty() && item.tags.is_empty() {
            return Err(ValidationError::EmptyQueryItem {
                field: format!("{field}.items[{i}]"),
            });
        }
        for (name, values) in [("types", &item.types), ("tags", &item.tags)] {
            if values.len() > limits.max_values_per_item {
                return Err(ValidationError::TooManyValues {
                    field: format!("{field}.items[{i}].{name}"),
                    max: limits.max_values_per_item,
                });
            }
            for (j, value) in values.iter().enumerate() {
                check_name(|| format!("{field}.items[{i}].{name}[{j}]"), value, limits)?;
            }
        }
    }
    Ok(())
}

/// Validates an append and normalizes its events (duplicate tags collapse).
pub fn validate_append(
    request: &mut AppendRequest,
    limits: &Limits,
) -> Result<(), ValidationError> {
    if request.events.is_empty() {
        return Err(ValidationError::NoEvents);
    }
    if request.events.len() > limits.max_events_per_append {
        return Err(ValidationError::TooManyEvents {
            max: limits.max_events_per_append,
            got: request.events.len(),
        });
    }
    // Ids: checked like names (with their own length limit) and unique
    // within the append. No map is built for an append without ids.
    let id_limits = Limits {
        max_name_bytes: MAX_ID_BYTES,
        ..Limits::default()
    };
    let mut seen: Option<std::collections::HashMap<&str, usize>> = None;
    for (i, event) in request.events.iter().enumerate() {
        let Some(id) = event.id.as_deref() else {
            continue;
        };
        check_name(|| format!("events[{i}].id"), id, &id_limits)?;
        let seen = seen.get_or_insert_with(Default::default);
        if let Some(&first) = seen.get(id) {
            return Err(ValidationError::DuplicateId {
                field: format!("events[{i}].id"),
                id: id.to_string(),
                first,
            });
        }
        seen.insert(id, i);
    }
    for (i, event) in request.events.iter_mut().enumerate() {
        check_name(|| format!("events[{i}].type"), &event.event_type, limits)?;
        event.normalize();
        if event.tags.len() > limits.max_tags_per_event {
            return Err(ValidationError::TooManyTags {
                index: i,
                max: limits.max_tags_per_event,
            });
        }
        for (j, tag) in event.tags.iter().enumerate() {
            check_name(|| format!("events[{i}].tags[{j}]"), tag, limits)?;
        }
    }
    if let Some(condition) = &request.condition {
        validate_query(
            "condition.failIfEventsMatch",
            &condition.fail_if_events_match,
            limits,
        )?;
        check_position("condition.after", condition.after)?;
    }
    Ok(())
}

/// Validates read options.
pub fn validate_read_options(options: &ReadOptions) -> Result<(), ValidationError> {
    check_position("options.from", options.from)?;
    check_position("options.after", options.after)?;
    check_position("options.minPosition", options.min_position)?;
    if options.from.is_some() && options.after.is_some() {
        return Err(ValidationError::FromAndAfter);
    }
    if let Some(limit) = options.limit {
        if limit > i64::MAX as u64 {
            return Err(ValidationError::LimitTooLarge {
                max: i64::MAX as u64,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcb::model::{AppendCondition, NewEvent, QueryItem};

    fn event(t: &str, tags: &[&str]) -> NewEvent {
        NewEvent {
            event_type: t.into(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            data: "{}".into(),
            id: None,
            metadata: None,
        }
    }

    fn append(events: Vec<NewEvent>, condition: Option<AppendCondition>) -> AppendRequest {
        AppendRequest {
            events,
            condition,
            require: Vec::new(),
        }
    }

    #[test]
    fn an_append_without_events_is_rejected() {
        let err = validate_append(&mut append(vec![], None), &Limits::default()).unwrap_err();
        assert_eq!(err, ValidationError::NoEvents);
    }

    #[test]
    fn empty_and_nul_names_are_rejected_with_their_path() {
        let limits = Limits::default();
        let err = validate_append(&mut append(vec![event("", &[])], None), &limits).unwrap_err();
        assert_eq!(err.to_string(), "events[0].type: must not be empty");
        let err = validate_append(
            &mut append(vec![event("E", &["ok", "a\0b"])], None),
            &limits,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "events[0].tags[1]: must not contain the NUL character"
        );
    }

    #[test]
    fn a_query_item_without_types_or_tags_is_rejected() {
        let condition = AppendCondition {
            fail_if_events_match: Query {
                items: vec![QueryItem::default()],
            },
            after: None,
        };
        let err = validate_append(
            &mut append(vec![event("E", &[])], Some(condition)),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ValidationError::EmptyQueryItem { .. }));
    }

    #[test]
    fn negative_positions_and_from_with_after_are_rejected() {
        let options = ReadOptions {
            from: Some(-1),
            ..Default::default()
        };
        assert!(validate_read_options(&options).is_err());
        let options = ReadOptions {
            from: Some(1),
            after: Some(1),
            ..Default::default()
        };
        assert_eq!(
            validate_read_options(&options),
            Err(ValidationError::FromAndAfter)
        );
    }

    fn with_id(id: &str) -> NewEvent {
        NewEvent {
            id: Some(id.into()),
            ..event("E", &[])
        }
    }

    #[test]
    fn ids_are_checked_and_named_by_their_path() {
        let limits = Limits::default();
        let ok = "x".repeat(MAX_ID_BYTES);
        let too_long = "x".repeat(MAX_ID_BYTES + 1);
        let check = |events: Vec<NewEvent>| {
            validate_append(&mut append(events, None), &limits).map_err(|e| e.to_string())
        };
        assert_eq!(
            check(vec![with_id("a"), event("E", &[]), with_id(&ok)]),
            Ok(())
        );
        assert_eq!(
            check(vec![with_id("a"), event("E", &[]), with_id("")]),
            Err("events[2].id: must not be empty".into())
        );
        assert_eq!(
            check(vec![with_id(&too_long)]),
            Err("events[0].id: longer than 64 bytes".into())
        );
        assert_eq!(
            check(vec![with_id("a\0b")]),
            Err("events[0].id: must not contain the NUL character".into())
        );
        assert_eq!(
            check(vec![with_id("a"), with_id("b"), with_id("a")]),
            Err(
                "events[2].id: \"a\" is also the id of events[0]; ids are unique within an append"
                    .into()
            )
        );
    }

    #[test]
    fn too_many_events_are_rejected() {
        let limits = Limits {
            max_events_per_append: 2,
            ..Default::default()
        };
        let events = vec![event("E", &[]), event("E", &[]), event("E", &[])];
        assert!(matches!(
            validate_append(&mut append(events, None), &limits),
            Err(ValidationError::TooManyEvents { max: 2, got: 3 })
        ));
    }
}
