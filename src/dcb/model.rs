//! DCB types as they appear on the wire and in memory (events, queries,
//! conditions, read options, projectors and requirements), and query
//! matching. Depends on no other module of [`crate::dcb`].

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Reads an explicit JSON `null` as the field's default, the way an absent
/// field is read: clients built on JavaScript often send `null` for "none".
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A position in the global log. Positions start at 1, strictly increase and
/// may have gaps. Stored as PostgreSQL `bigint`, hence `i64`.
pub type Position = i64;

/// An event to append: a type, a set of tags and opaque data.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    /// The event type; a query item's `types` match it exactly.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Tags, compared exactly. Duplicates collapse to one (see [`NewEvent::normalize`]).
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    /// Opaque payload, returned byte for byte.
    pub data: String,
    /// Client-chosen identity (a UUID, say), unique in the store: it makes a
    /// retried append recognisable as the same append (see [`super::outcome`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Opaque metadata beside `data` (correlation ids, ...), returned byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
}

impl NewEvent {
    /// Collapses duplicate tags, keeping the first occurrence of each so that
    /// a reader gets the tags back in the order they were written.
    pub fn normalize(&mut self) {
        if self.tags.len() < 2 {
            return;
        }
        let mut seen = std::collections::HashSet::with_capacity(self.tags.len());
        self.tags.retain(|tag| seen.insert(tag.clone()));
    }
}

/// A stored event, as returned by reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SequencedEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    pub tags: Vec<String>,
    pub data: String,
    pub position: Position,
    /// The id the event was appended with; `null` when it had none.
    #[serde(default)]
    pub id: Option<String>,
    /// The metadata the event was appended with; absent when it had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// When the batch that wrote the event took its positions (just before
    /// its commit): RFC 3339, UTC, microseconds.
    #[serde(rename = "recordedAt", default)]
    pub recorded_at: String,
}

impl SequencedEvent {
    /// Roughly the bytes the event holds in memory: what bounds a page of a
    /// read (`reader.page_max_bytes`).
    pub fn approximate_size(&self) -> usize {
        const OVERHEAD: usize = 64;
        OVERHEAD
            + self.event_type.len()
            + self.tags.iter().map(|t| t.len() + 24).sum::<usize>()
            + self.data.len()
            + self.id.as_ref().map_or(0, String::len)
            + self.metadata.as_ref().map_or(0, String::len)
            + self.recorded_at.len()
    }
}

/// One item of a query: the event's type must be one of `types` (when not
/// empty) and the event must carry every tag of `tags`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct QueryItem {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub types: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tags: Vec<String>,
}

impl QueryItem {
    /// Whether an event with this type and these tags matches the item.
    pub fn matches(&self, event_type: &str, tags: &[String]) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
            && self.tags.iter().all(|wanted| tags.contains(wanted))
    }
}

/// A query: its items are OR-ed; no items at all matches every event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Query {
    #[serde(default, deserialize_with = "null_as_default")]
    pub items: Vec<QueryItem>,
}

impl Query {
    /// The query that matches every event.
    pub fn all() -> Self {
        Query { items: Vec::new() }
    }

    /// Whether this query matches every event.
    pub fn is_all(&self) -> bool {
        self.items.is_empty()
    }

    pub fn matches(&self, event_type: &str, tags: &[String]) -> bool {
        self.is_all() || self.items.iter().any(|item| item.matches(event_type, tags))
    }
}

/// "Fail if any event matching `fail_if_events_match` has a position greater
/// than `after`" (any position at all when `after` is absent).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppendCondition {
    #[serde(rename = "failIfEventsMatch")]
    pub fail_if_events_match: Query,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Position>,
}

impl AppendCondition {
    /// The exclusive lower bound of the positions the condition looks at.
    pub fn after_or_zero(&self) -> Position {
        self.after.unwrap_or(0)
    }
}

/// The body of `POST /append`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    pub events: Vec<NewEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<AppendCondition>,
    /// Requirements on projected state, checked with the condition under
    /// the same locks (see [`super::projection`]); all must hold.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub require: Vec<Requirement>,
}

/// Options of a read. `from` is inclusive (the inclusive upper bound when
/// reading backwards); `after` is an exclusive alternative to `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct ReadOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Position>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Position>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub backwards: bool,
    /// Read your writes: served only by a database that holds this
    /// position (see `crate::replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_position: Option<Position>,
}

// Projectors and requirements, as clients send them; validated and
// described for the store by `super::projection`.

/// A built-in reducer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reducer {
    Exists,
    Count,
    Last,
    Sum,
    Latest,
    Distinct,
    Status,
}

impl Reducer {
    /// The name on the wire, which is also what the SQL reducer takes.
    pub fn name(self) -> &'static str {
        match self {
            Reducer::Exists => "exists",
            Reducer::Count => "count",
            Reducer::Last => "last",
            Reducer::Sum => "sum",
            Reducer::Latest => "latest",
            Reducer::Distinct => "distinct",
            Reducer::Status => "status",
        }
    }

    /// Whether the reducer reads a value at a JSON pointer into `data`.
    pub fn needs_path(self) -> bool {
        matches!(self, Reducer::Sum | Reducer::Latest | Reducer::Distinct)
    }
}

/// One projector as a client sends it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Projector {
    /// Names the state in the answer of `/project` (required there,
    /// optional in a requirement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The events the reducer folds (as in `/read`).
    pub query: Query,
    pub reduce: Reducer,
    /// JSON pointer (RFC 6901) into `data`: `sum`, `latest`, `distinct`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Most values `distinct` returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Event type -> state, for `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<Map<String, Value>>,
}

/// The body of `POST /project`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectRequest {
    pub projectors: Vec<Projector>,
}

/// How a requirement compares the state with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CompareOp {
    /// The name on the wire, which is also what `crablet_compare` takes.
    pub fn name(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
        }
    }

    /// Whether the op orders values (as opposed to testing equality).
    pub fn ordering(self) -> bool {
        !matches!(self, CompareOp::Eq | CompareOp::Ne)
    }
}

/// One entry of `require` on an append: the append is written only if
/// `state(projector) op value` holds.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub projector: Projector,
    pub op: CompareOp,
    pub value: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn item(types: &[&str], tag_list: &[&str]) -> QueryItem {
        QueryItem {
            types: tags(types),
            tags: tags(tag_list),
        }
    }

    #[test]
    fn an_item_needs_every_tag_and_one_of_the_types() {
        let it = item(&["A", "B"], &["x", "y"]);
        assert!(it.matches("A", &tags(&["y", "x", "z"])));
        assert!(it.matches("B", &tags(&["x", "y"])));
        assert!(!it.matches("C", &tags(&["x", "y"])));
        assert!(!it.matches("A", &tags(&["x"])));
    }

    #[test]
    fn items_are_ored_and_the_empty_query_matches_everything() {
        let q = Query {
            items: vec![item(&["A"], &[]), item(&[], &["t"])],
        };
        assert!(q.matches("A", &[]));
        assert!(q.matches("Z", &tags(&["t"])));
        assert!(!q.matches("Z", &tags(&["u"])));
        assert!(Query::all().matches("anything", &[]));
    }

    #[test]
    fn tags_are_compared_exactly() {
        let it = item(&[], &["a:\"b\",{c}\\ü"]);
        assert!(it.matches("E", &tags(&["a:\"b\",{c}\\ü"])));
        assert!(!it.matches("E", &tags(&["a:\"b\",{c}\\u"])));
    }

    #[test]
    fn explicit_nulls_read_like_absent_fields() {
        let item: QueryItem = serde_json::from_str(r#"{"types": null, "tags": ["t"]}"#).unwrap();
        assert_eq!(
            item,
            QueryItem {
                types: vec![],
                tags: tags(&["t"])
            }
        );
        let options: ReadOptions =
            serde_json::from_str(r#"{"from": null, "limit": null, "backwards": null}"#).unwrap();
        assert_eq!(options, ReadOptions::default());
        let event: NewEvent =
            serde_json::from_str(r#"{"type": "E", "tags": null, "data": ""}"#).unwrap();
        assert!(event.tags.is_empty());
    }

    #[test]
    fn duplicate_tags_collapse_keeping_first_order() {
        let mut e = NewEvent {
            event_type: "E".into(),
            tags: tags(&["b", "a", "b", "c", "a"]),
            data: String::new(),
            id: None,
            metadata: None,
        };
        e.normalize();
        assert_eq!(e.tags, tags(&["b", "a", "c"]));
    }
}
