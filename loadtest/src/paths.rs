//! The paths and query strings of crablet's `GET` endpoints (`/read`,
//! `/subscribe`): the JSON of the query and the options, percent-encoded.
//!
//! The JSON shapes themselves are `crablet-model`'s; this module only puts
//! them into a URL. Pure, no I/O.

use crablet_model::{Position, Query, ReadOptions};

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

/// The path and query string of `GET /subscribe` for `query`, from the
/// events after `after`.
pub fn subscribe_path(query: &Query, after: Position) -> String {
    let q = serde_json::to_string(query).unwrap_or_default();
    let mut path = String::with_capacity(32 + q.len() * 2);
    path.push_str("/subscribe?query=");
    percent_encode_into(&q, &mut path);
    path.push_str(&format!("&after={after}"));
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

/// Read options that return only the newest matching event.
pub fn newest_only() -> ReadOptions {
    ReadOptions {
        limit: Some(1),
        backwards: true,
        ..ReadOptions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_unreserved_and_escapes_the_rest() {
        let mut out = String::new();
        percent_encode_into(r#"{"a":"b c/é"}"#, &mut out);
        assert_eq!(out, "%7B%22a%22%3A%22b%20c%2F%C3%A9%22%7D");
    }

    #[test]
    fn read_path_encodes_query_and_options() {
        let q = Query::tag("t:1");
        let path = read_path(&q, Some(&newest_only()));
        assert_eq!(
            path,
            "/read?query=%7B%22items%22%3A%5B%7B%22tags%22%3A%5B%22t%3A1%22%5D%7D%5D%7D\
             &options=%7B%22limit%22%3A1%2C%22backwards%22%3Atrue%7D"
        );
        // `backwards` is always written, even when false.
        let path = read_path(&q, Some(&ReadOptions::default()));
        assert!(
            path.ends_with("&options=%7B%22backwards%22%3Afalse%7D"),
            "{path}"
        );
    }

    #[test]
    fn subscribe_path_encodes_the_query_and_the_position() {
        assert_eq!(
            subscribe_path(&Query::all(), 42),
            "/subscribe?query=%7B%22items%22%3A%5B%5D%7D&after=42"
        );
    }
}
