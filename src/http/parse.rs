//! Strict request parsing: JSON bodies and query strings.
//!
//! Nothing a client sends is silently dropped or guessed at. Request types
//! deny unknown fields, and every parse error names the JSON path of the
//! field at fault (`options.limit: ...`, `events[0]: unknown field ...`)
//! instead of a line and column. Query strings accept only the parameters a
//! route knows, each at most once, and reject malformed percent-escapes and
//! invalid UTF-8 instead of decoding them to U+FFFD.
//!
//! This module only turns bytes into typed requests; checking DCB rules and
//! limits is [`crate::dcb::validate`]'s job.

use actix_web::http::header::{HeaderMap, CONTENT_TYPE};
use serde::de::DeserializeOwned;

use super::ApiError;

/// Bodies from this many bytes on are parsed and checked off the HTTP worker
/// ([`off_worker`]).
pub const LARGE_BODY_BYTES: usize = 64 * 1024;

/// Runs `work` (parsing and checking a request body) on the blocking pool
/// when the body is large, inline otherwise. A megabyte of JSON takes
/// milliseconds to parse; on the worker those would be milliseconds in which
/// the worker's other connections, `/health` among them, wait for nothing.
pub async fn off_worker<T: Send + 'static>(
    body: actix_web::web::BytesMut,
    work: impl FnOnce(&[u8]) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if body.len() < LARGE_BODY_BYTES {
        return work(&body);
    }
    actix_web::web::block(move || work(&body))
        .await
        .map_err(|e| ApiError::Internal(format!("parsing a body on the blocking pool: {e}")))?
}

/// Parses `bytes` as JSON of type `T`. `what` names the document in messages
/// when the error is at its root (`body`, `query`, `options`), and prefixes
/// nested paths when the document is itself a field (`options.limit`).
pub fn json<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ApiError> {
    // Valid bodies take the plain parser; path tracking costs a few percent
    // of an append's CPU, so it runs only to describe a body that failed.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|e| ApiError::InvalidJson(describe(what, e)))?;
    deserializer
        .end()
        .map_err(|e| ApiError::InvalidJson(format!("{what}: {}", message(&e))))?;
    Ok(value)
}

/// As [`json`], but an empty document is `T::default()`: the bodies whose
/// every field is optional (`POST /read`, `POST /subscribe`), where an empty
/// body asks for everything.
pub fn json_or_default<T: DeserializeOwned + Default>(
    what: &str,
    bytes: &[u8],
) -> Result<T, ApiError> {
    if bytes.is_empty() {
        Ok(T::default())
    } else {
        json(what, bytes)
    }
}

/// `path: message` for a parse error, the path joined to `what`. The path of
/// an unknown field is its parent's, since the message names the field.
fn describe(what: &str, error: serde_path_to_error::Error<serde_json::Error>) -> String {
    use serde_path_to_error::Segment;
    let message = message(error.inner());
    let mut segments: Vec<&Segment> = error.path().iter().collect();
    if message.starts_with("unknown field") {
        segments.pop();
    }
    let mut at = what.to_string();
    for segment in segments {
        match segment {
            Segment::Seq { index } => at.push_str(&format!("[{index}]")),
            Segment::Map { key } => at.push_str(&format!(".{key}")),
            Segment::Enum { variant } => at.push_str(&format!(".{variant}")),
            Segment::Unknown => at.push_str(".?"),
        }
    }
    format!("{at}: {message}")
}

/// serde's message with its position removed, quoted the JSON way, and with
/// Rust type names replaced by what a client would call them.
fn message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let text = match text.rfind(" at line ") {
        Some(cut) if error.line() > 0 => &text[..cut],
        _ => text.as_str(),
    };
    let quoted = text.replace('`', "\"").replace(", expected", "; expected");
    let text = [
        ("expected u64", "expected a non-negative integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected usize", "expected a non-negative integer"),
        ("expected i64", "expected an integer"),
        ("expected i32", "expected an integer"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected an object"),
    ]
    .iter()
    .fold(quoted, |text, (from, to)| text.replace(from, to));
    // "expected struct QueryItem" names a Rust type: say what it is in JSON.
    match text.find("expected struct ") {
        Some(at) => format!("{}expected an object", &text[..at]),
        None => text,
    }
}

/// The decoded values of a query string whose parameter names must all be in
/// `known`, each at most once. `'+'` decodes to a space (form encoding).
pub fn query_string<'k>(raw: &str, known: &[&'k str]) -> Result<Vec<(&'k str, String)>, ApiError> {
    let mut values: Vec<(&'k str, String)> = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode_component(name)
            .map_err(|e| ApiError::InvalidJson(format!("query string: {e}")))?;
        let Some(&known_name) = known.iter().find(|k| **k == name) else {
            return Err(ApiError::InvalidJson(format!(
                "query string: unknown parameter \"{name}\"; expected {}",
                one_of(known)
            )));
        };
        if values.iter().any(|(n, _)| *n == known_name) {
            return Err(ApiError::InvalidJson(format!(
                "query string: parameter \"{name}\" given more than once"
            )));
        }
        let value = decode_component(value)
            .map_err(|e| ApiError::InvalidJson(format!("{known_name}: {e}")))?;
        values.push((known_name, value));
    }
    Ok(values)
}

fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    match quoted.as_slice() {
        [one] => one.clone(),
        _ => format!("one of {}", quoted.join(", ")),
    }
}

/// Percent-decodes one component strictly: every `%` starts a two-digit hex
/// escape, and the bytes must be UTF-8.
fn decode_component(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'%') {
        let escape = bytes.get(i + 1..i + 3);
        if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
            return Err(format!("malformed percent-escape at byte {i}"));
        }
    }
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| "not valid UTF-8 once percent-decoded".to_string())
}

/// Requires a JSON request body: `Content-Type: application/json`, with no
/// parameter but `charset=utf-8`. Anything else is a 415: in particular the
/// types a browser may send cross-site without a CORS preflight
/// (`text/plain`, forms, multipart), so a web page cannot write events.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType(
            "missing Content-Type; expected application/json".into(),
        ));
    };
    let text = value.to_str().unwrap_or("");
    let mut parts = text.split(';').map(str::trim);
    let essence = parts.next().unwrap_or("");
    let json = essence.eq_ignore_ascii_case("application/json");
    let params_ok = parts.all(|param| {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        name.trim().eq_ignore_ascii_case("charset")
            && value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
    });
    if json && params_ok {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {:?} is not supported; expected application/json",
            text
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcb::{AppendRequest, ReadOptions};

    fn error_of<T: DeserializeOwned + std::fmt::Debug>(what: &str, text: &str) -> String {
        json::<T>(what, text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn an_unknown_field_is_named_with_its_parent() {
        let msg = error_of::<AppendRequest>(
            "body",
            r#"{"events":[{"type":"E","data":""}],"conditon":{}}"#,
        );
        assert!(msg.starts_with("body: unknown field \"conditon\""), "{msg}");
        assert!(
            msg.contains("expected one of \"events\", \"condition\", \"require\""),
            "{msg}"
        );
        let msg = error_of::<ReadOptions>("options", r#"{"form":5}"#);
        assert!(msg.starts_with("options: unknown field \"form\""), "{msg}");
    }

    #[test]
    fn a_type_error_names_the_json_path() {
        let msg = error_of::<ReadOptions>("options", r#"{"limit":1e20}"#);
        assert_eq!(
            msg,
            "options.limit: invalid type: floating point \"1e+20\"; expected a non-negative integer"
        );
        let msg = error_of::<AppendRequest>("body", r#"{"events":[{"type":"E","tags":[1]}]}"#);
        assert!(
            msg.starts_with("body.events[0].tags[0]: invalid type"),
            "{msg}"
        );
        assert!(!msg.contains("line"), "{msg}");
    }

    #[test]
    fn trailing_garbage_is_an_error() {
        let msg = error_of::<ReadOptions>("options", r#"{} x"#);
        assert!(msg.starts_with("options: trailing characters"), "{msg}");
    }

    #[test]
    fn query_strings_accept_only_known_parameters_once() {
        let known = ["query", "options"];
        let ok = query_string("query=%7B%7D&options=a+b", &known).unwrap();
        assert_eq!(
            ok,
            vec![("query", "{}".to_string()), ("options", "a b".to_string())]
        );
        let err = query_string("qurey=1", &known).unwrap_err().to_string();
        assert!(err.contains("unknown parameter \"qurey\""), "{err}");
        let err = query_string("limit=1", &known).unwrap_err().to_string();
        assert!(err.contains("unknown parameter \"limit\""), "{err}");
        let err = query_string("query=1&query=2", &known)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than once"), "{err}");
    }

    #[test]
    fn bad_escapes_and_invalid_utf8_are_rejected() {
        let known = ["query"];
        for bad in [
            "query=%FF",
            "query=%G1",
            "query=%4",
            "query=abc%",
            "query=%C3%28",
        ] {
            assert!(query_string(bad, &known).is_err(), "{bad} was accepted");
        }
        assert_eq!(
            query_string("query=%C3%BC", &known).unwrap(),
            vec![("query", "ü".to_string())]
        );
    }

    #[test]
    fn only_json_content_types_pass() {
        use actix_web::http::header::HeaderValue;
        let check = |value: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            if let Some(v) = value {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(v));
            }
            require_json(&headers).is_ok()
        };
        assert!(check(Some("application/json")));
        assert!(check(Some("Application/JSON; charset=UTF-8")));
        for bad in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/json; charset=latin1"),
            Some("application/jsonx"),
        ] {
            assert!(!check(bad), "{bad:?} was accepted");
        }
    }
}
