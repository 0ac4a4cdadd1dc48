//! The JSON shapes of crablet's HTTP API as the load generator uses them, and the
//! URL of a `GET /read`.
//!
//! Owns serialization only: no I/O, no policy. Field names follow the DCB HTTP
//! contract (`failIfEventsMatch`, `appendConditionFailed`, ...).

use serde::{Deserialize, Serialize};

/// One item of a query: optional types (one of) and optional tags (all of).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct QueryItem {
    /// The event's type must be one of these (absent or empty: any type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// The event must carry all of these tags (absent or empty: no tag constraint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl QueryItem {
    /// An item matching every event carrying `tag`.
    pub fn tag(tag: impl Into<String>) -> Self {
        Self {
            types: Vec::new(),
            tags: vec![tag.into()],
        }
    }

    /// Whether an event of `event_type` carrying `tags` matches this item.
    pub fn matches(&self, event_type: &str, tags: &[String]) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
            && self
                .tags
                .iter()
                .all(|wanted| tags.iter().any(|t| t == wanted))
    }
}

/// A query: its items are OR-ed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Query {
    /// The alternatives; an event matches the query when it matches one of them.
    pub items: Vec<QueryItem>,
}

impl Query {
    /// A query of one item.
    pub fn single(item: QueryItem) -> Self {
        Self { items: vec![item] }
    }

    /// Whether an event of `event_type` carrying `tags` matches the query.
    pub fn matches(&self, event_type: &str, tags: &[String]) -> bool {
        self.items.iter().any(|i| i.matches(event_type, tags))
    }
}

/// An event to append.
#[derive(Debug, Clone, Serialize)]
pub struct NewEvent {
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's tags.
    pub tags: Vec<String>,
    /// Opaque payload (a string on the wire).
    pub data: String,
}

/// The data of an event, `{"p":"xx..."}`, `bytes` bytes long (at least the JSON
/// braces): what every scenario, the preload and the baselines store.
pub fn payload(bytes: usize) -> String {
    let filler = bytes.saturating_sub(r#"{"p":""}"#.len());
    format!(r#"{{"p":"{}"}}"#, "x".repeat(filler))
}

/// The condition of a conditional append.
#[derive(Debug, Clone, Serialize)]
pub struct AppendCondition {
    /// Fail if any event matching this query exists after `after`.
    #[serde(rename = "failIfEventsMatch")]
    pub fail_if_events_match: Query,
    /// The position the decision was based on (absent: fail on any match at all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
}

/// The body of `POST /append`.
#[derive(Debug, Clone, Serialize)]
pub struct AppendRequest {
    /// Events written atomically, in order.
    pub events: Vec<NewEvent>,
    /// Optional condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<AppendCondition>,
    /// Requirements on projected state (`require`), as JSON; sent only when
    /// not empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<serde_json::Value>,
}

/// The 200 reply of `POST /append`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppendResponse {
    /// True when the condition failed and nothing was written.
    pub append_condition_failed: bool,
    /// Position of the last event written (crablet extension; absent on failure).
    #[serde(default)]
    pub last_position: Option<u64>,
}

/// Options of a read.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct ReadOptions {
    /// Inclusive lower bound (upper bound when backwards).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// At most this many events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Newest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backwards: Option<bool>,
}

impl ReadOptions {
    /// Options that return only the newest matching event.
    pub fn last_one() -> Self {
        Self {
            from: None,
            limit: Some(1),
            backwards: Some(true),
        }
    }
}

/// One event of a read reply.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ReadEvent {
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's tags.
    pub tags: Vec<String>,
    /// The payload, byte for byte as appended.
    pub data: String,
    /// Its position in the global log.
    pub position: u64,
}

/// The path and query string of `GET /read` for `query` and `options`.
pub fn read_path(query: &Query, options: Option<&ReadOptions>) -> String {
    // Serializing these plain structs cannot fail (no maps with non-string keys).
    let q = serde_json::to_string(query).unwrap_or_default();
    let mut path = String::with_capacity(16 + q.len() * 2);
    path.push_str("/read?query=");
    percent_encode_into(&q, &mut path);
    if let Some(options) = options {
        let o = serde_json::to_string(options).unwrap_or_default();
        path.push_str("&options=");
        percent_encode_into(&o, &mut path);
    }
    path
}

/// Appends `s` to `out` percent-encoded for a URL query component (RFC 3986
/// unreserved characters stay as they are, every other byte becomes `%XX`).
pub fn percent_encode_into(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_requested_size() {
        assert_eq!(payload(64).len(), 64);
        assert_eq!(payload(0), r#"{"p":""}"#);
    }

    #[test]
    fn percent_encoding_keeps_unreserved_and_escapes_the_rest() {
        let mut out = String::new();
        percent_encode_into(r#"{"a":"b c/é"}"#, &mut out);
        assert_eq!(out, "%7B%22a%22%3A%22b%20c%2F%C3%A9%22%7D");
    }

    #[test]
    fn read_path_encodes_query_and_options() {
        let q = Query::single(QueryItem::tag("t:1"));
        let path = read_path(&q, Some(&ReadOptions::last_one()));
        assert_eq!(
            path,
            "/read?query=%7B%22items%22%3A%5B%7B%22tags%22%3A%5B%22t%3A1%22%5D%7D%5D%7D\
             &options=%7B%22limit%22%3A1%2C%22backwards%22%3Atrue%7D"
        );
    }

    #[test]
    fn an_item_matches_one_of_its_types_and_all_of_its_tags() {
        let item = QueryItem {
            types: vec!["A".into(), "B".into()],
            tags: vec!["x".into(), "y".into()],
        };
        let tags = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(item.matches("B", &tags(&["y", "x", "z"])));
        assert!(!item.matches("C", &tags(&["x", "y"])));
        assert!(!item.matches("A", &tags(&["x"])));
        assert!(QueryItem::tag("x").matches("anything", &tags(&["x"])));
    }

    #[test]
    fn append_request_serializes_to_the_contract_shape() {
        let req = AppendRequest {
            require: Vec::new(),
            events: vec![NewEvent {
                event_type: "T".into(),
                tags: vec!["a:1".into()],
                data: "d".into(),
            }],
            condition: Some(AppendCondition {
                fail_if_events_match: Query::single(QueryItem {
                    types: vec!["T".into()],
                    tags: vec!["a:1".into()],
                }),
                after: Some(17),
            }),
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"events":[{"type":"T","tags":["a:1"],"data":"d"}],"condition":{"failIfEventsMatch":{"items":[{"types":["T"],"tags":["a:1"]}]},"after":17}}"#
        );
    }

    #[test]
    fn append_response_tolerates_a_missing_last_position() {
        let r: AppendResponse =
            serde_json::from_str(r#"{"durationInMicroseconds":5,"appendConditionFailed":true}"#)
                .unwrap();
        assert!(r.append_condition_failed);
        assert_eq!(r.last_position, None);
    }
}
