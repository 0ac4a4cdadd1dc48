//! The DCB model as crablet's HTTP API speaks it: events, queries, append
//! conditions, read options, projectors and requirements, and the answers
//! (appends, projections, errors, subscription lines). One definition for the
//! server, the client (`crablet-client`) and the load tester, so the wire
//! format is written once.
//!
//! Pure: serde types and query matching, no I/O. Field names follow the DCB
//! HTTP contract (`failIfEventsMatch`, `appendConditionFailed`, ...).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod answers;

pub use answers::*;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Reads an explicit JSON `null` as the field's default, the way an absent
/// field is read: clients built on JavaScript often send `null` for "none".
pub fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
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
    /// An event of type `event_type` with `data` and no tags, id or metadata.
    pub fn new(event_type: impl Into<String>, data: impl Into<String>) -> Self {
        NewEvent {
            event_type: event_type.into(),
            tags: Vec::new(),
            data: data.into(),
            id: None,
            metadata: None,
        }
    }

    /// The event with `tag` added.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// The event with this id (a client-chosen identity, unique in the store).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The event with this metadata.
    pub fn metadata(mut self, metadata: impl Into<String>) -> Self {
        self.metadata = Some(metadata.into());
        self
    }

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
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's tags, in the order they were written.
    pub tags: Vec<String>,
    /// The payload, byte for byte as appended.
    pub data: String,
    /// Its position in the global log.
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
    /// The event's type must be one of these (empty: any type).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub types: Vec<String>,
    /// The event must carry every one of these tags (empty: no constraint).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tags: Vec<String>,
}

impl QueryItem {
    /// An item matching every event that carries all of `tags`.
    pub fn tags<T: Into<String>>(tags: impl IntoIterator<Item = T>) -> Self {
        QueryItem {
            types: Vec::new(),
            tags: tags.into_iter().map(Into::into).collect(),
        }
    }

    /// An item matching every event of one of `types`.
    pub fn types<T: Into<String>>(types: impl IntoIterator<Item = T>) -> Self {
        QueryItem {
            types: types.into_iter().map(Into::into).collect(),
            tags: Vec::new(),
        }
    }

    /// This item, restricted to events of one of `types` as well.
    pub fn of_types<T: Into<String>>(mut self, types: impl IntoIterator<Item = T>) -> Self {
        self.types = types.into_iter().map(Into::into).collect();
        self
    }

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
    /// The alternatives; an event matches when it matches one of them.
    #[serde(default, deserialize_with = "null_as_default")]
    pub items: Vec<QueryItem>,
}

impl Query {
    /// The query that matches every event.
    pub fn all() -> Self {
        Query { items: Vec::new() }
    }

    /// A query of these items (OR-ed).
    pub fn of(items: impl IntoIterator<Item = QueryItem>) -> Self {
        Query {
            items: items.into_iter().collect(),
        }
    }

    /// The query of events carrying `tag`.
    pub fn tag(tag: impl Into<String>) -> Self {
        Query::of([QueryItem::tags([tag])])
    }

    /// Whether this query matches every event.
    pub fn is_all(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether an event with this type and these tags matches the query.
    pub fn matches(&self, event_type: &str, tags: &[String]) -> bool {
        self.is_all() || self.items.iter().any(|item| item.matches(event_type, tags))
    }
}

/// "Fail if any event matching `fail_if_events_match` has a position greater
/// than `after`" (any position at all when `after` is absent).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppendCondition {
    /// The events that must not exist after `after`.
    #[serde(rename = "failIfEventsMatch")]
    pub fail_if_events_match: Query,
    /// The position the decision was based on (absent: no matching event
    /// may exist at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Position>,
}

impl AppendCondition {
    /// Fail if an event matching `query` exists after `after` (a position
    /// read before deciding, typically the head a read or a projection
    /// answered).
    pub fn after(query: Query, after: Position) -> Self {
        AppendCondition {
            fail_if_events_match: query,
            after: Some(after),
        }
    }

    /// The exclusive lower bound of the positions the condition looks at.
    pub fn after_or_zero(&self) -> Position {
        self.after.unwrap_or(0)
    }
}

/// The body of `POST /append`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    /// The events, written atomically and in order.
    pub events: Vec<NewEvent>,
    /// Written only if no event matching the condition's query exists
    /// after its `after`.
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
    /// Inclusive lower bound (upper bound when reading backwards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Position>,
    /// Exclusive lower bound (upper bound when reading backwards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Position>,
    /// At most this many events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Newest first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub backwards: bool,
    /// Read your writes: served only by a database that holds this
    /// position (a replica that has not replayed it yet waits, or the
    /// primary answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_position: Option<Position>,
}

// Projectors and requirements, as clients send them; validated and
// described for the store by `super::projection`.

/// A built-in reducer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reducer {
    /// Whether any event matches.
    Exists,
    /// How many events match.
    Count,
    /// The last matching event, as `/read` returns it (`null`: none).
    Last,
    /// The sum of the numbers at `path`.
    Sum,
    /// The value at `path` of the last event that has one.
    Latest,
    /// The distinct values at `path`, at most `limit`.
    Distinct,
    /// The state `map` gives the type of the last matching event.
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
    /// How the matching events are folded into a state.
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
    /// The projectors; each needs an `id`, which names its state.
    pub projectors: Vec<Projector>,
}

/// How a requirement compares the state with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompareOp {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// Less than.
    Lt,
    /// Less than or equal.
    Le,
    /// Greater than.
    Gt,
    /// Greater than or equal.
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
    /// The state compared.
    pub projector: Projector,
    /// The comparison.
    pub op: CompareOp,
    /// The value the state is compared with.
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
