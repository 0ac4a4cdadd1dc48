//! `GET /read` and `POST /read`: streamed JSON arrays of events, with the
//! read's head position in the `X-Crablet-Head` header.
//!
//! The first page is fetched before the response starts, so a database
//! failure still gets a proper status. Later pages are fetched as the client
//! consumes the body, one bounded query each; nothing buffers the whole
//! result. A failure after the first page aborts the connection, so a client
//! never mistakes a truncated array for a complete one.

use std::sync::Arc;

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::stream;
use serde::Deserialize;

use super::source::{self, MIN_POSITION_PARAMETER};
use super::{parse, ApiError, AppState, JsonBody};
use crate::actors::EventStore;
use crate::dcb::validate::{validate_query, validate_read_options};
use crate::dcb::{Page, Position, Query, ReadOptions};
use crate::replicas::{Route, Source};
use crate::store::{JsonEvents, PageRows};

/// The response header carrying the head position of a read: the highest
/// position its first page's snapshot could see. Every position at or below
/// it was visible to the read, so a client whose read matched nothing may
/// append with `condition.after` set to it (after a read that returned
/// events, the greater of it and the last position read).
pub const HEAD_HEADER: &str = "X-Crablet-Head";

/// The parameters of `GET /read`: `query` and `options` are URL-encoded
/// JSON, `minPosition` a position.
const READ_PARAMETERS: [&str; 3] = ["query", "options", MIN_POSITION_PARAMETER];

/// Body of `POST /read`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReadBody {
    #[serde(default, deserialize_with = "crate::dcb::model::null_as_default")]
    query: Query,
    #[serde(default, deserialize_with = "crate::dcb::model::null_as_default")]
    options: ReadOptions,
}

pub async fn read_get(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (mut query, mut options) = (Query::all(), ReadOptions::default());
    let mut min_position = None;
    for (name, value) in parse::query_string(req.query_string(), &READ_PARAMETERS)? {
        match name {
            "query" => query = parse::json("query", value.as_bytes())?,
            "options" => options = parse::json("options", value.as_bytes())?,
            _ => min_position = Some(source::parse_min_position(name, &value)?),
        }
    }
    options.min_position = options.min_position.max(min_position);
    respond(&req, &state, query, options).await
}

pub async fn read_post(
    req: HttpRequest,
    state: web::Data<AppState>,
    JsonBody(body): JsonBody,
) -> Result<HttpResponse, ApiError> {
    let body: ReadBody = parse::json_or_default("body", &body)?;
    respond(&req, &state, body.query, body.options).await
}

async fn respond(
    req: &HttpRequest,
    state: &AppState,
    query: Query,
    options: ReadOptions,
) -> Result<HttpResponse, ApiError> {
    validate_query("query", &query, &state.limits)?;
    validate_read_options(&options)?;
    let route = source::route(req, options.min_position)?;
    let mut cursor = Cursor::new(
        Arc::new(query),
        &options,
        state.page_size,
        state.page_max_bytes,
    )
    .routed(route);
    let store = state.store.clone();
    let first: JsonEvents = cursor.next_page(&store).await?.unwrap_or_default();
    let mut encoder = Encoder::default();
    let head = encoder.page(&first, cursor.done);
    let mut response = HttpResponse::Ok();
    response.content_type("application/json");
    response.insert_header((HEAD_HEADER, cursor.head.unwrap_or(0).to_string()));
    response.insert_header(source::header(cursor.source()));
    if cursor.done {
        return Ok(response.body(head));
    }
    let rest = stream::unfold(
        (cursor, encoder, store),
        |(mut cursor, mut encoder, store)| async move {
            if encoder.closed {
                return None;
            }
            match cursor.next_page(&store).await {
                Ok(page) => {
                    let chunk = encoder.page(&page.unwrap_or_default(), cursor.done);
                    Some((Ok(chunk), (cursor, encoder, store)))
                }
                Err(e) => {
                    log::warn!("read stream aborted: {e}");
                    encoder.closed = true;
                    Some((Err(ApiError::from(e)), (cursor, encoder, store)))
                }
            }
        },
    );
    let body =
        futures_util::StreamExt::chain(stream::once(async move { Ok::<_, ApiError>(head) }), rest);
    Ok(response.streaming(body))
}

/// Where a read stands: the open interval still to read and how many events
/// it may still return.
pub(crate) struct Cursor {
    query: Arc<Query>,
    after: Position,
    before: Position,
    backwards: bool,
    remaining: Option<u64>,
    page_size: i64,
    /// The reader cuts a page at this many bytes: a short page whose events
    /// reach it was cut, not the end of the read.
    page_max_bytes: usize,
    done: bool,
    /// A head position no later than the first page's snapshot, once it is
    /// read, so a client whose read matched nothing may append with
    /// `condition.after` set to it (see `crate::head`).
    head: Option<Position>,
    /// Where the first page may be read; the later ones are read where the
    /// first one was (a replica further behind would end the read early).
    route: Route,
}

impl Cursor {
    pub(crate) fn new(
        query: Arc<Query>,
        options: &ReadOptions,
        page_size: i64,
        page_max_bytes: usize,
    ) -> Self {
        let (after, before) = if options.backwards {
            (
                options.after.unwrap_or(0),
                options.from.map_or(Position::MAX, |f| f.saturating_add(1)),
            )
        } else {
            (
                options
                    .after
                    .unwrap_or_else(|| options.from.map_or(0, |f| (f - 1).max(0))),
                Position::MAX,
            )
        };
        Cursor {
            query,
            after,
            before,
            backwards: options.backwards,
            remaining: options.limit,
            page_size,
            page_max_bytes,
            done: false,
            head: None,
            route: Route::Any {
                min_position: options.min_position,
            },
        }
    }

    /// The same cursor, read from where `route` allows.
    pub(crate) fn routed(mut self, route: Route) -> Self {
        self.route = route;
        self
    }

    /// The database the read is served by (the primary before any page).
    pub(crate) fn source(&self) -> Source {
        match self.route {
            Route::Pinned(source) => source,
            _ => Source::Primary,
        }
    }

    /// Whether the read is complete.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// The head position of the first page's snapshot, once it is read.
    pub(crate) fn head(&self) -> Option<Position> {
        self.head
    }

    /// The next page, as decoded events or as response JSON (see
    /// [`PageRows`]), or `None` once the read is complete.
    pub(crate) async fn next_page<R: PageRows>(
        &mut self,
        store: &EventStore,
    ) -> Result<Option<R>, crate::actors::EventStoreError> {
        if self.done {
            return Ok(None);
        }
        let limit = match self.remaining {
            Some(r) => (r.min(self.page_size as u64)) as i64,
            None => self.page_size,
        };
        let empty = limit == 0 || self.after.saturating_add(1) >= self.before;
        if empty && self.head.is_some() {
            self.done = true;
            return Ok(Some(R::default()));
        }
        let page = Page {
            after: self.after,
            before: self.before,
            backwards: self.backwards,
            limit,
        };
        // The first page always runs, even when it cannot return anything:
        // it brings the head position the response carries.
        let events = if self.head.is_none() {
            let (events, head, source) = store
                .read_page_with_head(self.query.clone(), page, self.route)
                .await?;
            self.head = Some(head);
            self.route = Route::Pinned(source);
            events
        } else {
            store
                .read_page(self.query.clone(), page, self.route)
                .await?
                .0
        };
        if empty {
            self.done = true;
            return Ok(Some(events));
        }
        if let Some(last) = events.last_position() {
            if self.backwards {
                self.before = last;
            } else {
                self.after = last;
            }
        }
        if let Some(r) = self.remaining.as_mut() {
            *r -= events.count() as u64;
        }
        let short = (events.count() as i64) < limit && events.bytes() < self.page_max_bytes;
        if short || self.remaining == Some(0) {
            self.done = true;
        }
        Ok(Some(events))
    }
}

/// Writes the JSON array piece by piece.
#[derive(Default)]
struct Encoder {
    opened: bool,
    any: bool,
    closed: bool,
}

impl Encoder {
    fn page(&mut self, events: &JsonEvents, last: bool) -> Bytes {
        let json = events.json();
        let mut out = Vec::with_capacity(json.len() + 3);
        if !self.opened {
            out.push(b'[');
            self.opened = true;
        }
        if !json.is_empty() {
            if self.any {
                out.push(b',');
            }
            out.extend_from_slice(json);
            self.any = true;
        }
        if last {
            out.push(b']');
            self.closed = true;
        }
        Bytes::from(out)
    }
}

/// `GET /head`: the position of the last event in the store, 0 when empty.
pub async fn head(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let route = source::route_of_query(&req)?;
    let (position, source) = state.store.last_position(route).await?;
    Ok(HttpResponse::Ok()
        .insert_header(source::header(source))
        .json(crablet_model::HeadResponse { position }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcb::SequencedEvent;

    fn page(events: &[SequencedEvent]) -> JsonEvents {
        JsonEvents::of_events(events)
    }

    fn event(position: Position) -> SequencedEvent {
        SequencedEvent {
            event_type: "E".into(),
            tags: vec!["t".into()],
            data: "d".into(),
            position,
            id: None,
            metadata: None,
            recorded_at: "2026-01-01T00:00:00.000000Z".into(),
        }
    }

    #[test]
    fn pages_join_into_one_json_array() {
        let mut enc = Encoder::default();
        let mut out = Vec::new();
        out.extend_from_slice(&enc.page(&page(&[event(1), event(2)]), false));
        out.extend_from_slice(&enc.page(&page(&[]), false));
        out.extend_from_slice(&enc.page(&page(&[event(3)]), true));
        let parsed: Vec<SequencedEvent> = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            parsed.iter().map(|e| e.position).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn an_empty_read_is_an_empty_array() {
        let mut enc = Encoder::default();
        assert_eq!(&enc.page(&page(&[]), true)[..], b"[]");
    }

    #[test]
    fn from_is_inclusive_in_both_directions() {
        let q = Arc::new(Query::all());
        let fwd = Cursor::new(
            q.clone(),
            &ReadOptions {
                from: Some(5),
                ..Default::default()
            },
            10,
            1 << 20,
        );
        assert_eq!((fwd.after, fwd.before), (4, Position::MAX));
        let back = Cursor::new(
            q,
            &ReadOptions {
                from: Some(5),
                backwards: true,
                ..Default::default()
            },
            10,
            1 << 20,
        );
        assert_eq!((back.after, back.before), (0, 6));
    }
}
