//! `GET /subscribe` and `POST /subscribe`: every event matching a query after
//! a position, caught up from the store and then followed live, without end.
//!
//! This module parses the request and frames what a [`Subscription`]
//! yields (see [`crate::subscriptions`] for how it catches up and follows
//! the live feed): Server-Sent Events when the client accepts
//! `text/event-stream` (`id:` the position, `data:` the event as `/read`
//! returns it, `: heartbeat <head>` comments, a final `event: end`), NDJSON
//! otherwise (one event per line, `{"heartbeat":{"head":N}}` keep-alive
//! lines, a final `{"end":{...}}` line).
//!
//! A client that closes its connection ends its stream at once: the HTTP
//! server drops the response body as soon as it reads the end of the
//! connection (half-closed connections are not kept, see [`crate::app`]),
//! and the dropped [`Subscription`] frees its place and leaves the live feed.

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use crablet_model::{SubscriptionEnd, SubscriptionLine};
use serde::Deserialize;

use super::source::{self, MIN_POSITION_PARAMETER};
use super::{parse, ApiError, AppState, JsonBody};
use crate::dcb::validate::validate_query;
use crate::dcb::{Position, Query};
use crate::subscriptions::{Item, Subscription};

/// The parameters of `GET /subscribe`: `query` is URL-encoded JSON, `after`
/// a position.
const SUBSCRIBE_PARAMETERS: [&str; 3] = ["query", "after", MIN_POSITION_PARAMETER];

/// The header a browser's `EventSource` resumes with.
const LAST_EVENT_ID: &str = "last-event-id";

/// Body of `POST /subscribe`.
#[derive(Deserialize, Default)]
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
    let (mut query, mut after, mut min_position) = (Query::all(), None, None);
    for (name, value) in parse::query_string(req.query_string(), &SUBSCRIBE_PARAMETERS)? {
        match name {
            "query" => query = parse::json("query", value.as_bytes())?,
            "after" => after = Some(parse::json("after", value.as_bytes())?),
            _ => min_position = Some(source::parse_min_position(name, &value)?),
        }
    }
    start(&req, &state, query, after, min_position)
}

pub async fn subscribe_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    JsonBody(body): JsonBody,
) -> Result<HttpResponse, ApiError> {
    let body: SubscribeBody = parse::json_or_default("body", &body)?;
    let mut min_position = None;
    for (name, value) in parse::query_string(req.query_string(), &[MIN_POSITION_PARAMETER])? {
        min_position = Some(source::parse_min_position(name, &value)?);
    }
    start(&req, &state, body.query, body.after, min_position)
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
    min_position: Option<Position>,
) -> Result<HttpResponse, ApiError> {
    validate_query("query", &query, &state.limits)?;
    let min_position = source::min_position(req, min_position)?;
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
    let Some(subscription) = Subscription::open(
        &state.subscriptions,
        state.store.clone(),
        state.metrics.clone(),
        query,
        after,
        min_position,
    ) else {
        return Err(ApiError::Overloaded(format!(
            "too many subscriptions (subscriptions.max_subscribers = {}); retry later",
            state.subscriptions.settings().max_subscribers
        )));
    };
    let body = futures_util::stream::unfold(subscription, move |mut s| async move {
        let item = s.next().await?;
        Some((Ok::<_, ApiError>(frame(format, &item)), s))
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
        .insert_header(source::header(state.replicas.follows()))
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

/// One item of a subscription, framed for the wire.
fn frame(format: Format, item: &Item) -> Bytes {
    let mut out = Vec::new();
    match item {
        Item::Events { events, .. } => {
            for event in events.iter() {
                if format == Format::Sse {
                    out.extend_from_slice(format!("id: {}\ndata: ", event.position).as_bytes());
                }
                // Serialising a decoded event cannot fail.
                serde_json::to_writer(&mut out, event).expect("an event serialises");
                out.extend_from_slice(if format == Format::Sse {
                    b"\n\n"
                } else {
                    b"\n"
                });
            }
        }
        Item::Heartbeat { head } => match format {
            Format::Sse => out.extend_from_slice(format!(": heartbeat {head}\n\n").as_bytes()),
            Format::Ndjson => {
                out.extend_from_slice(format!("{{\"heartbeat\":{{\"head\":{head}}}}}\n").as_bytes())
            }
        },
        Item::End {
            reason,
            message,
            after,
        } => {
            let end = SubscriptionLine::End {
                end: SubscriptionEnd {
                    reason: reason.to_string(),
                    message: message.to_string(),
                    after: *after,
                },
            };
            let end = serde_json::to_string(&end).expect("an end line serialises");
            match format {
                Format::Sse => {
                    out.extend_from_slice(format!("event: end\ndata: {end}\n\n").as_bytes())
                }
                Format::Ndjson => out.extend_from_slice(format!("{end}\n").as_bytes()),
            }
        }
    }
    Bytes::from(out)
}
