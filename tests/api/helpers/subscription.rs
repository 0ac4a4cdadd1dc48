//! A test client of `/subscribe`: a subscription read by a task of its own,
//! its SSE and NDJSON frames parsed into events, heartbeats and the final
//! message; a raw subscription that the test reads only when it chooses to
//! (a slow consumer); and the count of missing, duplicated and out-of-order
//! positions against the expected ones.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crablet::dcb::SequencedEvent;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// One item of a subscription stream, in either wire format.
#[derive(Debug)]
pub enum Item {
    Event(SequencedEvent),
    Heartbeat(i64),
    End(Value),
}

/// A subscription read by a task of its own into a channel.
pub struct Subscription {
    pub items: mpsc::UnboundedReceiver<Item>,
    /// Events whose SSE `id:` differed from their position.
    pub bad_ids: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Subscription {
    /// Opens `GET /subscribe`; `sse` picks the format, `last_event_id` sets
    /// the header. Panics unless the answer is 200.
    pub async fn open(
        http: &reqwest::Client,
        address: &str,
        query: &Value,
        after: Option<i64>,
        sse: bool,
        last_event_id: Option<i64>,
    ) -> Subscription {
        let mut params = vec![("query", query.to_string())];
        if let Some(after) = after {
            params.push(("after", after.to_string()));
        }
        let mut request = http
            .get(format!("{address}/subscribe"))
            .query(&params)
            .timeout(Duration::from_secs(3600));
        if sse {
            request = request.header("accept", "text/event-stream");
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.expect("subscribe request");
        assert_eq!(
            response.status(),
            200,
            "subscribe answered {}",
            response.status()
        );
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(
            content_type,
            if sse {
                "text/event-stream"
            } else {
                "application/x-ndjson"
            }
        );
        let (tx, items) = mpsc::unbounded_channel();
        let bad_ids = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let bad = bad_ids.clone();
        let reader = tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut buffer: Vec<u8> = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                buffer.extend_from_slice(&chunk);
                let separator: &[u8] = if sse { b"\n\n" } else { b"\n" };
                while let Some(at) = find(&buffer, separator) {
                    let record: Vec<u8> = buffer.drain(..at + separator.len()).collect();
                    let text = String::from_utf8(record).expect("UTF-8 stream");
                    let item = if sse {
                        parse_sse(&text, &bad)
                    } else {
                        parse_ndjson(&text)
                    };
                    if tx.send(item).is_err() {
                        return;
                    }
                }
            }
        });
        Subscription {
            items,
            bad_ids,
            reader,
        }
    }

    /// The next item, or `None` after `timeout` or at the end of the stream.
    pub async fn next(&mut self, timeout: Duration) -> Option<Item> {
        tokio::time::timeout(timeout, self.items.recv())
            .await
            .ok()
            .flatten()
    }

    /// Collects events until `n` have arrived or `timeout` passes.
    pub async fn events(&mut self, n: usize, timeout: Duration) -> Vec<SequencedEvent> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        while events.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Item::Event(e)) => events.push(e),
                Some(_) => {}
                None => break,
            }
        }
        events
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_ndjson(line: &str) -> Item {
    let value: Value = serde_json::from_str(line.trim()).expect("each line is JSON");
    if let Some(head) = value.get("heartbeat") {
        return Item::Heartbeat(head["head"].as_i64().expect("heartbeat head"));
    }
    if value.get("end").is_some() {
        return Item::End(value);
    }
    Item::Event(serde_json::from_value(value).expect("an event"))
}

fn parse_sse(block: &str, bad_ids: &std::sync::atomic::AtomicUsize) -> Item {
    let (mut id, mut data, mut kind, mut comment) = (None, None, None, None);
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.parse::<i64>().expect("numeric id"));
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("event: ") {
            kind = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix(": ") {
            comment = Some(v.to_string());
        }
    }
    if let Some(c) = comment {
        let head = c
            .strip_prefix("heartbeat ")
            .and_then(|h| h.parse().ok())
            .unwrap_or_else(|| panic!("unexpected comment {c:?}"));
        return Item::Heartbeat(head);
    }
    let data = data.unwrap_or_else(|| panic!("SSE block without data: {block:?}"));
    if kind.as_deref() == Some("end") {
        return Item::End(serde_json::from_str(&data).expect("end JSON"));
    }
    let event: SequencedEvent = serde_json::from_str(&data).expect("event JSON");
    if id != Some(event.position) {
        bad_ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Item::Event(event)
}

/// A subscription to `query` (`POST /subscribe`) on a raw connection that
/// the test reads only when it chooses to (a slow consumer).
pub async fn unread_subscription(address: &str, query: &Value) -> TcpStream {
    let host = address.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&host).await.expect("connect");
    let body = json!({ "query": query }).to_string();
    stream
        .write_all(
            format!(
                "POST /subscribe HTTP/1.1\r\nHost: {host}\r\nAccept: application/x-ndjson\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("request");
    stream
}

/// The JSON lines of a raw HTTP/1.1 NDJSON response (chunk-size lines and
/// headers are skipped).
pub fn json_lines(received: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(received)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.starts_with('{')
                .then(|| serde_json::from_str::<Value>(l).ok())
                .flatten()
        })
        .collect()
}

/// Missing, duplicated and out-of-order events of `got` against `expected`.
pub fn violations(expected: &[i64], got: &[i64]) -> (usize, usize, usize) {
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for p in got {
        *seen.entry(*p).or_default() += 1;
    }
    let missing = expected.iter().filter(|p| !seen.contains_key(p)).count();
    let duplicated = seen.values().filter(|n| **n > 1).count();
    let unordered = got.windows(2).filter(|w| w[0] >= w[1]).count();
    (missing, duplicated, unordered)
}

/// [`violations`] of `got` against `expected`, printed as what `who` got.
pub fn counted_violations(who: &str, expected: &[i64], got: &[i64]) -> (usize, usize, usize) {
    let counts @ (missing, duplicated, unordered) = violations(expected, got);
    println!(
        "{who}: {} events, {missing} missing, {duplicated} duplicated, {unordered} out of order",
        got.len()
    );
    counts
}

pub fn positions(events: &[SequencedEvent]) -> Vec<i64> {
    events.iter().map(|e| e.position).collect()
}

/// The positions of the events among the JSON lines of a raw NDJSON
/// response.
pub fn positions_in(received: &[u8]) -> Vec<i64> {
    json_lines(received)
        .iter()
        .filter_map(|v| v.get("position").and_then(Value::as_i64))
        .collect()
}

/// Reads `stream` until `done` says of what was received so far that it is
/// complete, the stream ends, nothing arrives for 5 s, or 60 s pass.
pub async fn read_until(stream: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buf[..n]),
            _ => break,
        }
        if done(&received) {
            break;
        }
    }
    received
}
