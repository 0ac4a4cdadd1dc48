//! `GET /subscribe` and `POST /subscribe`: every event matching a query after
//! a position, caught up from the store and then followed live, without end;
//! and `GET /head`.
//!
//! A subscription is a stream that alternates between two modes. Catching
//! up, it reads pages of its own query from the store ([`EventStore::read_page`])
//! up to the tailer's cursor, as fast as the client consumes them; once
//! nothing matching is left at or below that cursor it joins the live feed
//! ([`Subscriptions::join`]) and is handed the events the tailer fans out.
//! A subscriber whose live buffer fills (in events or in bytes) is detached
//! and goes back to catching up from the last event it delivered, so it is
//! never skipped and never makes anyone wait. Every event is delivered once,
//! in position order: the stream drops anything at or below what it
//! delivered.
//!
//! A client that closes its connection ends its stream at once: the HTTP
//! server drops the response body as soon as it reads the end of the
//! connection (half-closed connections are not kept, see [`crate::app`]),
//! and the dropped `Subscriber` frees its slot and leaves the live feed.
//!
//! Wire formats: Server-Sent Events when the client accepts
//! `text/event-stream` (`id:` the position, `data:` the event as `/read`
//! returns it, `: heartbeat <head>` comments, a final `event: end`), NDJSON
//! otherwise (one event per line, `{"heartbeat":{"head":N}}` keep-alive
//! lines, a final `{"end":{...}}` line). This module never touches SQL.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{parse, read_json_body, ApiError, AppState};
use crate::actors::fanout::Membership;
use crate::actors::tailer::Slot;
use crate::actors::{EventStore, Subscriptions};
use crate::dcb::validate::validate_query;
use crate::dcb::{Position, Query, SequencedEvent};
use crate::metrics::Metrics;
use crate::store::Page;

/// The parameters of `GET /subscribe`: `query` is URL-encoded JSON, `after`
/// a position.
const SUBSCRIBE_PARAMETERS: [&str; 2] = ["query", "after"];

/// The header a browser's `EventSource` resumes with.
const LAST_EVENT_ID: &str = "last-event-id";

/// Most events put in one chunk of the response from the live buffer.
const LIVE_CHUNK_EVENTS: usize = 256;

/// Body of `POST /subscribe`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeBody {
    #[serde(default, deserialize_with = "crate::dcb::model::null_as_default")]
    query: Query,
    #[serde(default)]
    after: Option<Position>,
}

pub async fn subscribe_get(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (mut query, mut after) = (Query::all(), None);
    for (name, value) in parse::query_string(req.query_string(), &SUBSCRIBE_PARAMETERS)? {
        match name {
            "query" => query = parse::json("query", value.as_bytes())?,
            _ => after = Some(parse::json("after", value.as_bytes())?),
        }
    }
    start(&req, &state, query, after)
}

pub async fn subscribe_post(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_json_body(&req, payload, &state).await?;
    let body: SubscribeBody = if body.is_empty() {
        SubscribeBody {
            query: Query::all(),
            after: None,
        }
    } else {
        parse::json("body", &body)?
    };
    start(&req, &state, body.query, body.after)
}

/// `GET /head`: the position of the last event in the store, 0 when empty.
pub async fn head(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let last = Page {
        after: 0,
        before: Position::MAX,
        backwards: true,
        limit: 1,
    };
    let events: Vec<SequencedEvent> = state.store.read_page(Arc::new(Query::all()), last).await?;
    let position = events.first().map_or(0, |e| e.position);
    Ok(HttpResponse::Ok().json(json!({ "position": position })))
}

/// How the stream is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Sse,
    Ndjson,
}

fn start(
    req: &HttpRequest,
    state: &AppState,
    query: Query,
    after: Option<Position>,
) -> Result<HttpResponse, ApiError> {
    validate_query("query", &query, &state.limits)?;
    let mut after = after.unwrap_or(0);
    if let Some(value) = req.headers().get(LAST_EVENT_ID) {
        after = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<Position>().ok())
            .ok_or_else(|| {
                ApiError::InvalidJson("Last-Event-ID: must be a position (an integer)".into())
            })?;
    }
    if after < 0 {
        return Err(ApiError::InvalidJson("after: must not be negative".into()));
    }
    let format = if accepts_event_stream(req) {
        Format::Sse
    } else {
        Format::Ndjson
    };
    let subscriptions = state.subscriptions.clone();
    let Some(slot) = subscriptions.admit() else {
        return Err(ApiError::Overloaded(format!(
            "too many subscriptions (subscriptions.max_subscribers = {}); retry later",
            subscriptions.settings().max_subscribers
        )));
    };
    let settings = subscriptions.settings();
    let subscriber = Subscriber {
        store: state.store.clone(),
        metrics: state.metrics.clone(),
        query: Arc::new(query),
        format,
        delivered: after,
        scanned: after,
        page_size: settings.page_size,
        max_lag: settings.max_lag_events,
        heartbeat: settings.heartbeat_interval(),
        next_heartbeat: Instant::now() + settings.heartbeat_interval(),
        closing: subscriptions.closing(),
        cursor_changes: subscriptions.cursor_changes(),
        live: None,
        fell_behind: false,
        finished: false,
        subscriptions,
        _slot: slot,
    };
    let body = futures_util::stream::unfold(subscriber, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, ApiError>(chunk), s))
    });
    let content_type = match format {
        Format::Sse => "text/event-stream",
        Format::Ndjson => "application/x-ndjson",
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Reverse proxies must pass each chunk on at once.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

fn accepts_event_stream(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// One subscription's stream.
struct Subscriber {
    store: EventStore,
    subscriptions: Subscriptions,
    metrics: Metrics,
    query: Arc<Query>,
    format: Format,
    /// The last position sent (or the `after` asked for): the stream drops
    /// anything at or below it, and a client resumes after it.
    delivered: Position,
    /// Every matching event at or below it has been sent (>= `delivered`).
    scanned: Position,
    page_size: i64,
    /// 0: never disconnect a lagging subscriber.
    max_lag: i64,
    heartbeat: std::time::Duration,
    /// When a heartbeat is due if nothing else is sent.
    next_heartbeat: Instant,
    closing: watch::Receiver<bool>,
    cursor_changes: watch::Receiver<Option<Position>>,
    /// The live feed, once caught up.
    live: Option<Membership>,
    /// Whether the subscriber was detached from the live feed at least once
    /// (only those are disconnected for lagging, not new subscribers that
    /// start far back).
    fell_behind: bool,
    /// The final message was sent.
    finished: bool,
    /// Frees the place when the stream is dropped.
    _slot: Slot,
}

impl Subscriber {
    /// The next chunk of the response, or `None` once it has ended.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.finished {
                return None;
            }
            if *self.closing.borrow() {
                return Some(self.end("shutdown", "the server is stopping"));
            }
            if self.live.is_some() {
                if let Some(chunk) = self.next_live().await {
                    return Some(chunk);
                }
                continue;
            }
            match self.subscriptions.cursor() {
                None => {
                    // The tailer has not read the head yet.
                    if let Some(chunk) = self.wait_for_cursor().await {
                        return Some(chunk);
                    }
                }
                Some(cursor) => {
                    if self.fell_behind && self.max_lag > 0 && cursor - self.scanned > self.max_lag
                    {
                        return Some(self.end(
                            "lagging",
                            "the subscriber fell too far behind (subscriptions.max_lag_events)",
                        ));
                    }
                    if self.scanned >= cursor {
                        self.live = self.subscriptions.join(self.query.clone(), self.scanned);
                        continue;
                    }
                    match self.catch_up(cursor).await {
                        Ok(Some(chunk)) => return Some(chunk),
                        Ok(None) if Instant::now() >= self.next_heartbeat => {
                            // A long catch-up with nothing matching yet.
                            return Some(self.heartbeat_chunk());
                        }
                        Ok(None) => continue,
                        Err(e) => {
                            log::warn!("subscription ended: {e}");
                            return Some(
                                self.end(
                                    "unavailable",
                                    "the store could not be read; resume later",
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    /// One page of the subscriber's own query, after what it has scanned and
    /// up to the tailer's `cursor`.
    async fn catch_up(
        &mut self,
        cursor: Position,
    ) -> Result<Option<Bytes>, crate::actors::EventStoreError> {
        let page = Page {
            after: self.scanned,
            before: cursor.saturating_add(1),
            backwards: false,
            limit: self.page_size,
        };
        let events: Vec<SequencedEvent> = self.store.read_page(self.query.clone(), page).await?;
        // A page may be short because the reader cut it at its byte budget,
        // not because the range is exhausted: only an empty page says so.
        self.scanned = events.last().map_or(cursor, |e| e.position);
        let chunk = self.encode(events.iter(), cursor);
        Ok(chunk)
    }

    /// The next events of the live feed, a heartbeat, or `None` when the mode
    /// changed (detached, or shutting down).
    async fn next_live(&mut self) -> Option<Bytes> {
        let membership = self.live.as_mut()?;
        tokio::select! {
            batch = membership.next_batch(LIVE_CHUNK_EVENTS) => match batch {
                Some(batch) => {
                    let head = self.subscriptions.cursor().unwrap_or(0);
                    self.encode(batch.iter().map(|e| e.as_ref()), head)
                }
                None => {
                    // Detached with a full buffer: catch up from what was
                    // delivered, then join again.
                    self.live = None;
                    self.scanned = self.delivered;
                    self.fell_behind = true;
                    None
                }
            },
            _ = tokio::time::sleep_until(self.next_heartbeat) => Some(self.heartbeat_chunk()),
            _ = self.closing.changed() => None,
        }
    }

    async fn wait_for_cursor(&mut self) -> Option<Bytes> {
        tokio::select! {
            _ = self.cursor_changes.changed() => None,
            _ = tokio::time::sleep_until(self.next_heartbeat) => Some(self.heartbeat_chunk()),
            _ = self.closing.changed() => None,
        }
    }

    /// The events after `delivered`, encoded; `None` if there are none.
    fn encode<'a>(
        &mut self,
        events: impl Iterator<Item = &'a SequencedEvent>,
        head: Position,
    ) -> Option<Bytes> {
        let mut out = Vec::new();
        let mut count = 0u64;
        for event in events {
            if event.position <= self.delivered {
                continue;
            }
            match self.format {
                Format::Sse => {
                    out.extend_from_slice(format!("id: {}\ndata: ", event.position).as_bytes());
                    serde_json::to_writer(&mut out, event).ok()?;
                    out.extend_from_slice(b"\n\n");
                }
                Format::Ndjson => {
                    serde_json::to_writer(&mut out, event).ok()?;
                    out.push(b'\n');
                }
            }
            self.delivered = event.position;
            count += 1;
        }
        if count == 0 {
            return None;
        }
        self.metrics
            .subscription_events_delivered_total
            .inc_by(count);
        self.metrics
            .subscription_lag_events
            .observe(head.saturating_sub(self.delivered).max(0) as f64);
        self.next_heartbeat = Instant::now() + self.heartbeat;
        Some(Bytes::from(out))
    }

    fn heartbeat_chunk(&mut self) -> Bytes {
        self.next_heartbeat = Instant::now() + self.heartbeat;
        let head = self.subscriptions.cursor().unwrap_or(0);
        match self.format {
            Format::Sse => Bytes::from(format!(": heartbeat {head}\n\n")),
            Format::Ndjson => Bytes::from(format!("{{\"heartbeat\":{{\"head\":{head}}}}}\n")),
        }
    }

    /// The final message: why the stream ends and the position to resume
    /// after (`after`, or `Last-Event-ID`).
    fn end(&mut self, reason: &'static str, message: &str) -> Bytes {
        self.finished = true;
        self.live = None;
        self.metrics
            .subscription_ended_total
            .with_label_values(&[reason])
            .inc();
        let end = json!({"end": {"reason": reason, "message": message, "after": self.delivered}});
        match self.format {
            Format::Sse => Bytes::from(format!("event: end\ndata: {end}\n\n")),
            Format::Ndjson => Bytes::from(format!("{end}\n")),
        }
    }
}
