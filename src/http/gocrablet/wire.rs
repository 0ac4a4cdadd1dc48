//! go-crablet's request bodies, read the way its web app read them, and
//! their translation into crablet's native model.
//!
//! go-crablet decoded with Go's `encoding/json`: unknown fields are ignored
//! (`metadata`, `id`, `expectedVersion`, ...), `events` may be one event or an
//! array, and a missing or `null` list is an empty one. Positions are its
//! `EventId` strings; numbers are accepted too. A condition whose
//! `failIfEventsMatch` is missing or has no items is no condition at all, as
//! in go-crablet; a query item with neither types nor tags matches every
//! event. This leniency exists only here: the native types in
//! [`crate::dcb`] refuse all of it.

use serde::Deserialize;

use crate::dcb::model::null_as_default;
use crate::dcb::ReadOptions;
use crate::dcb::{AppendCondition, AppendRequest, NewEvent, Position, Query, QueryItem};
use crate::http::ApiError;

/// A position as go-crablet clients send it: a number or a numeric string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum GoPosition {
    Number(i64),
    Text(String),
}

impl GoPosition {
    /// The position, or a 400 naming `path` when it is not a non-negative integer.
    fn position(&self, path: &str) -> Result<Position, ApiError> {
        let value = match self {
            GoPosition::Number(n) => Some(*n),
            GoPosition::Text(text) => text.trim().parse::<i64>().ok(),
        };
        value.filter(|p| *p >= 0).ok_or_else(|| {
            let got = match self {
                GoPosition::Number(n) => n.to_string(),
                GoPosition::Text(t) => format!("{t:?}"),
            };
            ApiError::InvalidJson(format!(
                "{path}: expected a non-negative integer position (a number or a numeric string), got {got}"
            ))
        })
    }
}

/// An event as go-crablet's `/append` takes it. `id` and `metadata` are
/// ignored, as go-crablet ignored them.
#[derive(Debug, Deserialize)]
pub struct GoEvent {
    #[serde(rename = "type")]
    event_type: String,
    data: String,
    #[serde(default, deserialize_with = "null_as_default")]
    tags: Vec<String>,
}

/// `events`: a single event or an array of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum GoEvents {
    Many(Vec<GoEvent>),
    One(GoEvent),
}

#[derive(Debug, Default, Deserialize)]
pub struct GoQueryItem {
    #[serde(default, deserialize_with = "null_as_default")]
    types: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    tags: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct GoQuery {
    #[serde(default, deserialize_with = "null_as_default")]
    items: Vec<GoQueryItem>,
}

impl GoQuery {
    /// The native query: no items, or any item with neither types nor tags,
    /// matches every event.
    fn native(self) -> Query {
        if self
            .items
            .iter()
            .any(|item| item.types.is_empty() && item.tags.is_empty())
        {
            return Query::all();
        }
        Query {
            items: self
                .items
                .into_iter()
                .map(|item| QueryItem {
                    types: item.types,
                    tags: item.tags,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct GoCondition {
    #[serde(
        rename = "failIfEventsMatch",
        default,
        deserialize_with = "null_as_default"
    )]
    fail_if_events_match: GoQuery,
    #[serde(default)]
    after: Option<GoPosition>,
}

/// The body of `POST /go-crablet/append`.
#[derive(Debug, Deserialize)]
pub struct GoAppendBody {
    #[serde(default)]
    events: Option<GoEvents>,
    #[serde(default)]
    condition: Option<GoCondition>,
}

impl GoAppendBody {
    /// The native append request (validated later, like a native one).
    pub fn native(self) -> Result<AppendRequest, ApiError> {
        let events = match self.events {
            None => {
                return Err(ApiError::InvalidJson(
                    "body: missing field \"events\" (an event or an array of events)".into(),
                ))
            }
            Some(GoEvents::One(event)) => vec![event],
            Some(GoEvents::Many(events)) => events,
        };
        let events = events
            .into_iter()
            .map(|e| NewEvent {
                event_type: e.event_type,
                tags: e.tags,
                data: e.data,
                id: None,
                metadata: None,
            })
            .collect();
        let condition = match self.condition {
            // go-crablet: a condition without items is no condition.
            Some(c) if !c.fail_if_events_match.items.is_empty() => Some(AppendCondition {
                after: c
                    .after
                    .as_ref()
                    .map(|a| a.position("body.condition.after"))
                    .transpose()?,
                fail_if_events_match: c.fail_if_events_match.native(),
            }),
            _ => None,
        };
        Ok(AppendRequest {
            events,
            condition,
            require: Vec::new(),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct GoReadOptions {
    #[serde(default)]
    from: Option<GoPosition>,
    #[serde(default)]
    after: Option<GoPosition>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default, deserialize_with = "null_as_default")]
    backwards: bool,
}

/// The body of `POST /go-crablet/read`.
#[derive(Debug, Deserialize)]
pub struct GoReadBody {
    #[serde(default, deserialize_with = "null_as_default")]
    query: GoQuery,
    #[serde(default, deserialize_with = "null_as_default")]
    options: GoReadOptions,
}

impl GoReadBody {
    /// The native query and read options.
    pub fn native(self) -> Result<(Query, ReadOptions), ApiError> {
        let o = self.options;
        let options = ReadOptions {
            from: o
                .from
                .as_ref()
                .map(|p| p.position("body.options.from"))
                .transpose()?,
            after: o
                .after
                .as_ref()
                .map(|p| p.position("body.options.after"))
                .transpose()?,
            limit: o.limit,
            backwards: o.backwards,
            min_position: None,
        };
        Ok((self.query.native(), options))
    }
}

/// One projector as go-crablet's `/project` took it. `transitionFunction`
/// was never run by go-crablet's web app (every projector counted its
/// matching events); it is accepted and ignored here too.
#[derive(Debug, Deserialize)]
pub struct GoProjector {
    #[serde(default)]
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    query: GoQuery,
    /// The state when nothing matched, returned as sent.
    #[serde(rename = "initialState", default)]
    pub initial_state: serde_json::Value,
}

/// The body of `POST /go-crablet/project`.
#[derive(Debug, Deserialize)]
pub struct GoProjectBody {
    #[serde(default, deserialize_with = "null_as_default")]
    projectors: Vec<GoProjector>,
    #[serde(default)]
    after: Option<GoPosition>,
}

impl GoProjectBody {
    /// Each projector with its native query, and the position to count
    /// after (0: from the start). go-crablet refused an empty id or a query
    /// without items with a 400; so does this.
    pub fn native(self) -> Result<(Vec<(GoProjector, Query)>, Position), ApiError> {
        let after = self
            .after
            .as_ref()
            .map(|p| p.position("body.after"))
            .transpose()?
            .unwrap_or(0);
        if self.projectors.is_empty() {
            return Err(ApiError::InvalidJson(
                "body.projectors: at least one projector".into(),
            ));
        }
        let mut projectors = Vec::with_capacity(self.projectors.len());
        for (i, mut projector) in self.projectors.into_iter().enumerate() {
            if projector.id.is_empty() {
                return Err(ApiError::InvalidJson(format!(
                    "body.projectors[{i}].id: must not be empty"
                )));
            }
            if projector.query.items.is_empty() {
                return Err(ApiError::InvalidJson(format!(
                    "body.projectors[{i}].query.items: at least one item"
                )));
            }
            let query = std::mem::take(&mut projector.query).native();
            projectors.push((projector, query));
        }
        Ok((projectors, after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse;

    fn append(text: &str) -> Result<AppendRequest, ApiError> {
        parse::json::<GoAppendBody>("body", text.as_bytes())?.native()
    }

    #[test]
    fn a_single_event_object_is_an_array_of_one() {
        let one = append(r#"{"events":{"type":"E","data":"d","tags":["a:1"]}}"#).unwrap();
        let many = append(r#"{"events":[{"type":"E","data":"d","tags":["a:1"]}]}"#).unwrap();
        assert_eq!(one, many);
        assert_eq!(one.events.len(), 1);
    }

    #[test]
    fn unknown_fields_are_ignored_as_go_did() {
        let r = append(
            r#"{"events":{"type":"E","data":"d","metadata":{"t":1},"id":"x"},
                "condition":{"expectedVersion":1},"extra":true}"#,
        )
        .unwrap();
        assert_eq!(r.condition, None);
        assert_eq!(r.events[0].id, None);
        assert_eq!(r.events[0].metadata, None);
    }

    #[test]
    fn a_condition_without_items_is_no_condition() {
        for c in [
            r#"{}"#,
            r#"{"failIfEventsMatch":null}"#,
            r#"{"failIfEventsMatch":{}}"#,
            r#"{"failIfEventsMatch":{"items":[]}}"#,
            r#"{"failIfEventsMatch":{"items":null},"after":"3"}"#,
        ] {
            let r = append(&format!(
                r#"{{"events":[{{"type":"E","data":""}}],"condition":{c}}}"#
            ))
            .unwrap();
            assert_eq!(r.condition, None, "{c}");
        }
    }

    #[test]
    fn after_is_a_number_or_a_numeric_string() {
        for after in ["7", "\"7\"", "\" 7 \""] {
            let r = append(&format!(
                r#"{{"events":[{{"type":"E","data":""}}],
                    "condition":{{"failIfEventsMatch":{{"items":[{{"tags":["a"]}}]}},"after":{after}}}}}"#
            ))
            .unwrap();
            assert_eq!(r.condition.unwrap().after, Some(7), "{after}");
        }
        for bad in ["\"seven\"", "-1", "\"-1\"", "1.5"] {
            let r = append(&format!(
                r#"{{"events":[{{"type":"E","data":""}}],
                    "condition":{{"failIfEventsMatch":{{"items":[{{"tags":["a"]}}]}},"after":{bad}}}}}"#
            ));
            assert!(r.is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn an_item_with_neither_types_nor_tags_matches_everything() {
        let body: GoReadBody = parse::json(
            "body",
            br#"{"query":{"items":[{"types":["A"]},{"types":[],"tags":[]}]}}"#,
        )
        .unwrap();
        let (query, _) = body.native().unwrap();
        assert!(query.is_all());
    }

    #[test]
    fn missing_events_is_refused() {
        assert!(append(r#"{}"#).is_err());
        assert!(append(r#"{"events":null}"#).is_err());
        assert!(append(r#"{"events":{"type":"E"}}"#).is_err());
    }
}
