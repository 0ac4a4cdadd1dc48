//! An import: the events of an exported log, to be written at their own
//! positions with their own ids, metadata and `recordedAt`
//! (`POST /admin/import`), checked before anything is written.
//!
//! The body has the shape of `crablet_model::ImportRequest` (what
//! `crablet export` writes: each event as `/read` prints it), read strictly
//! ([`ImportBody`]): an unknown field in an event is refused, not dropped, as
//! in every other request. [`CheckedImport::new`] checks it: the events pass
//! every limit an appended event passes (they are checked as the
//! unconditional append of the same events, [`CheckedAppend`]), positions
//! are positive and strictly increasing, `recordedAt` is an RFC 3339 time the
//! store keeps exactly (microseconds), and there are at most
//! `limits.max_events_per_append` events. It also computes the locks the
//! import takes ([`CheckedImport::locks`]).

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use super::footprint::{Footprint, LockMode, GLOBAL_KEY};
use super::model::{AppendRequest, NewEvent, Position};
use super::outcome::IdClash;
use super::validate::{Limits, ValidationError};
use super::CheckedAppend;

/// The body of `POST /admin/import`: `crablet_model::ImportRequest`'s shape,
/// with unknown fields refused in the events too.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    /// In increasing position order.
    pub events: Vec<ImportedEvent>,
}

/// One event of an import: an event as `/read` prints it
/// (`crablet_model::SequencedEvent`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImportedEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    pub tags: Vec<String>,
    pub data: String,
    /// Its position in the exported log, kept.
    pub position: Position,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// RFC 3339 (`/read` prints UTC with microseconds); missing reads as
    /// empty, which is refused by name.
    #[serde(rename = "recordedAt", default)]
    pub recorded_at: String,
}

/// An import that passed every check: the only form in which one reaches
/// the store.
#[derive(Debug, Clone)]
pub struct CheckedImport {
    /// The events as the unconditional append of them: validated like one,
    /// with each event's index keys (tags and type) and its id keys.
    pub events: CheckedAppend,
    /// Per event: its position, strictly increasing.
    pub positions: Vec<Position>,
    /// Per event: its `recordedAt` in UTC, RFC 3339 with six fractional
    /// digits, exactly as `/read` prints it.
    pub recorded_at: Vec<String>,
}

/// What became of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// Every event was written; `last` is the last position written.
    Imported { count: usize, last: Position },
    /// Nothing was written: the first position is not beyond `used`, the
    /// last position the store has used (stored, or handed out to an
    /// append); `head` is the highest stored.
    PositionTaken {
        first: Position,
        used: Position,
        head: Position,
    },
    /// Nothing was written: these ids are already stored.
    IdsStored(Vec<IdClash>),
}

impl CheckedImport {
    pub fn new(body: ImportBody, limits: &Limits) -> Result<Self, ValidationError> {
        let count = body.events.len();
        if count == 0 {
            return Err(ValidationError::NoImportedEvents);
        }
        if count > limits.max_events_per_append {
            return Err(ValidationError::TooManyImportedEvents {
                max: limits.max_events_per_append,
                got: count,
            });
        }
        let mut positions = Vec::with_capacity(count);
        let mut recorded_at = Vec::with_capacity(count);
        let mut events = Vec::with_capacity(count);
        for (i, event) in body.events.into_iter().enumerate() {
            let field = |name: &str| format!("events[{i}].{name}");
            match positions.last() {
                _ if event.position < 1 => {
                    return Err(ValidationError::Imported {
                        field: field("position"),
                        reason: format!("{} is not a position (they start at 1)", event.position),
                    })
                }
                Some(&previous) if event.position <= previous => {
                    return Err(ValidationError::Imported {
                        field: field("position"),
                        reason: format!(
                            "{} does not follow {previous}, the position of events[{}]; \
                             positions must strictly increase",
                            event.position,
                            i - 1
                        ),
                    })
                }
                _ => positions.push(event.position),
            }
            recorded_at.push(utc_micros(&event.recorded_at).map_err(|reason| {
                ValidationError::Imported {
                    field: field("recordedAt"),
                    reason,
                }
            })?);
            events.push(NewEvent {
                event_type: event.event_type,
                tags: event.tags,
                data: event.data,
                id: event.id,
                metadata: event.metadata,
            });
        }
        let request = AppendRequest {
            events,
            condition: None,
            require: Vec::new(),
        };
        Ok(CheckedImport {
            events: CheckedAppend::new(request, limits)?,
            positions,
            recorded_at,
        })
    }

    /// The advisory locks the import takes, in the order they are taken:
    /// every key the unconditional append of its events takes (the keys of
    /// their tags, types and ids), exclusive, and the global key shared (or
    /// exclusive, when the footprint escalated to it). A condition or a
    /// requirement that an imported event could match probes one of these
    /// keys, exclusive: it is decided wholly before the import or wholly
    /// after it.
    pub fn locks(&self) -> Footprint {
        let mut locks = Footprint::default();
        for (key, mode) in self.events.footprint.iter() {
            let mode = if key == GLOBAL_KEY {
                mode
            } else {
                LockMode::Exclusive
            };
            locks.add(key, mode);
        }
        locks
    }

    /// The last position the import writes.
    pub fn last_position(&self) -> Position {
        *self.positions.last().expect("an import has events")
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// `text` as an RFC 3339 time in UTC with six fractional digits (what `/read`
/// prints), or why it is not one the store keeps exactly.
fn utc_micros(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    let time = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time ({e})"))?
        .to_offset(UtcOffset::UTC);
    if time.nanosecond() % 1_000 != 0 {
        return Err(format!(
            "{text:?} is finer than a microsecond, which the store does not keep"
        ));
    }
    if !(1..=9999).contains(&time.year()) {
        return Err(format!("{text:?} is outside the years 0001 to 9999"));
    }
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.nanosecond() / 1_000
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcb::footprint::{id_key, tag_key, type_key};

    fn imported(position: Position, recorded_at: &str) -> ImportedEvent {
        ImportedEvent {
            event_type: "Imported".into(),
            tags: vec!["t".into()],
            data: "{}".into(),
            position,
            id: None,
            metadata: None,
            recorded_at: recorded_at.into(),
        }
    }

    const AT: &str = "2026-01-02T03:04:05.678901Z";

    fn check(events: Vec<ImportedEvent>) -> Result<CheckedImport, String> {
        CheckedImport::new(ImportBody { events }, &Limits::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_body_is_the_export_s_shape_read_strictly() {
        let exported = crablet_model::ImportRequest {
            events: vec![crablet_model::SequencedEvent {
                event_type: "E".into(),
                tags: vec!["a".into()],
                data: "{}".into(),
                position: 7,
                id: Some("x".into()),
                metadata: Some("m".into()),
                recorded_at: AT.into(),
            }],
        };
        let json = serde_json::to_string(&exported).unwrap();
        let body: ImportBody = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&body).unwrap(), json);
        let unknown = json.replace("\"position\"", "\"extra\":1,\"position\"");
        assert!(serde_json::from_str::<ImportBody>(&unknown).is_err());
    }

    #[test]
    fn positions_must_be_positive_and_strictly_increase() {
        assert!(check(vec![imported(3, AT), imported(4, AT), imported(10, AT)]).is_ok());
        assert_eq!(
            check(vec![imported(0, AT)]).unwrap_err(),
            "events[0].position: 0 is not a position (they start at 1)"
        );
        assert_eq!(
            check(vec![imported(5, AT), imported(5, AT)]).unwrap_err(),
            "events[1].position: 5 does not follow 5, the position of events[0]; \
             positions must strictly increase"
        );
        assert_eq!(
            check(vec![]).unwrap_err(),
            "an import needs at least one event"
        );
    }

    #[test]
    fn recorded_at_is_kept_to_the_microsecond_in_utc() {
        let times = |text: &str| check(vec![imported(1, text)]).map(|c| c.recorded_at[0].clone());
        assert_eq!(times(AT).unwrap(), AT);
        assert_eq!(
            times("2026-01-02T05:04:05.5+02:00").unwrap(),
            "2026-01-02T03:04:05.500000Z"
        );
        assert_eq!(
            times("2026-01-02T03:04:05Z").unwrap(),
            "2026-01-02T03:04:05.000000Z"
        );
        for bad in [
            "",
            "yesterday",
            "2026-01-02 03:04:05",
            "2026-01-02T03:04:05.1234567Z",
        ] {
            let error = times(bad).unwrap_err();
            assert!(error.starts_with("events[0].recordedAt: "), "{error}");
        }
    }

    #[test]
    fn events_pass_the_limits_of_an_append() {
        let mut event = imported(1, AT);
        event.tags = vec![String::new()];
        assert_eq!(
            check(vec![event]).unwrap_err(),
            "events[0].tags[0]: must not be empty"
        );
        let with_id = |position, id: &str| ImportedEvent {
            id: Some(id.into()),
            ..imported(position, AT)
        };
        assert!(check(vec![with_id(1, "a"), with_id(2, "a")])
            .unwrap_err()
            .starts_with("events[1].id:"));
        let limits = Limits {
            max_events_per_append: 1,
            ..Limits::default()
        };
        let body = ImportBody {
            events: vec![imported(1, AT), imported(2, AT)],
        };
        assert!(matches!(
            CheckedImport::new(body, &limits),
            Err(ValidationError::TooManyImportedEvents { max: 1, got: 2 })
        ));
    }

    #[test]
    fn an_import_locks_its_tags_types_and_ids_exclusive_and_the_global_key_shared() {
        let mut event = imported(1, AT);
        event.id = Some("x".into());
        let import = check(vec![event]).unwrap();
        let locks: Vec<_> = import.locks().iter().collect();
        let mut expected = vec![
            (GLOBAL_KEY, LockMode::Shared),
            (tag_key("t"), LockMode::Exclusive),
            (type_key("Imported"), LockMode::Exclusive),
            (id_key("x"), LockMode::Exclusive),
        ];
        expected.sort();
        assert_eq!(locks, expected);
    }
}
