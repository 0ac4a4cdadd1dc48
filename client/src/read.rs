//! `POST /read`, page after page, as one stream of events.

use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use crablet_model::{Position, Query, ReadOptions, SequencedEvent};
use futures_util::stream::{self, BoxStream};
use futures_util::{Stream, StreamExt, TryStreamExt};
use reqwest::Method;
use serde::Serialize;

use crate::{Client, Error, Request, HEAD_HEADER};

/// A read being set up: [`Client::read`].
#[must_use = "a read does nothing until streamed"]
pub struct ReadBuilder {
    client: Client,
    query: Query,
    after: Option<Position>,
    limit: Option<u64>,
    backwards: bool,
    page_size: u64,
}

impl Client {
    /// The events matching `query` (`Query::all()` for every event), oldest
    /// first unless [`ReadBuilder::backwards`].
    pub fn read(&self, query: Query) -> ReadBuilder {
        ReadBuilder {
            client: self.clone(),
            query,
            after: None,
            limit: None,
            backwards: false,
            page_size: 1000,
        }
    }
}

impl ReadBuilder {
    /// Only events after this position (before it, reading backwards).
    pub fn after(mut self, position: Position) -> Self {
        self.after = Some(position);
        self
    }

    /// At most this many events.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Newest first.
    pub fn backwards(mut self) -> Self {
        self.backwards = true;
        self
    }

    /// Events asked for per request (default 1000): what the client holds
    /// in memory at most.
    pub fn page_size(mut self, events: u64) -> Self {
        self.page_size = events.max(1);
        self
    }

    /// The events, fetched a page at a time as the stream is consumed. A
    /// forward read stops at the head its first page reflected
    /// ([`Events::head`]), so it is one snapshot of the log however many
    /// pages it takes. Each page is repeated like any read when it may not
    /// have been answered.
    pub fn stream(self) -> Events {
        let head = Arc::new(AtomicI64::new(-1));
        let pages = Pages {
            client: self.client,
            query: self.query,
            cursor: self.after,
            remaining: self.limit,
            backwards: self.backwards,
            page_size: self.page_size,
            head: head.clone(),
            done: false,
        };
        let inner = stream::try_unfold(pages, |mut pages| async move {
            let page = pages.next_page().await?;
            Ok::<_, Error>(page.map(|events| (stream::iter(events.into_iter().map(Ok)), pages)))
        })
        .try_flatten()
        .boxed();
        Events { inner, head }
    }

    /// Every event of the read in memory, and the head it reflected.
    pub async fn collect(self) -> Result<(Vec<SequencedEvent>, Position), Error> {
        let mut events = self.stream();
        let mut all = Vec::new();
        while let Some(event) = events.next().await {
            all.push(event?);
        }
        let head = events.head().unwrap_or(0);
        Ok((all, head))
    }
}

/// The events of a read, as a [`Stream`].
pub struct Events {
    inner: BoxStream<'static, Result<SequencedEvent, Error>>,
    head: Arc<AtomicI64>,
}

impl Events {
    /// The head position the read reflected (the `X-Crablet-Head` of its
    /// first page): every position up to it was visible to the read. `None`
    /// until the first page has been fetched.
    pub fn head(&self) -> Option<Position> {
        let head = self.head.load(Ordering::Acquire);
        (head >= 0).then_some(head)
    }
}

impl Stream for Events {
    type Item = Result<SequencedEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Where a paged read is.
struct Pages {
    client: Client,
    query: Query,
    /// The exclusive bound of the next page: the last position returned.
    cursor: Option<Position>,
    remaining: Option<u64>,
    backwards: bool,
    page_size: u64,
    head: Arc<AtomicI64>,
    done: bool,
}

#[derive(Serialize)]
struct ReadBody<'a> {
    query: &'a Query,
    options: ReadOptions,
}

impl Pages {
    async fn next_page(&mut self) -> Result<Option<Vec<SequencedEvent>>, Error> {
        if self.done || self.remaining == Some(0) {
            return Ok(None);
        }
        let asked = self
            .remaining
            .map_or(self.page_size, |r| r.min(self.page_size));
        let body = serde_json::to_vec(&ReadBody {
            query: &self.query,
            options: ReadOptions {
                after: self.cursor,
                limit: Some(asked),
                backwards: self.backwards,
                ..ReadOptions::default()
            },
        })
        .map_err(|e| Error::Config(format!("the query: {e}")))?;
        let request = Request {
            method: Method::POST,
            path: "/read",
            body: Some(body),
            read_your_writes: true,
        };
        let (mut events, headers): (Vec<SequencedEvent>, _) =
            self.client.call_json(&request).await?;
        let page_head = headers
            .get(HEAD_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Position>().ok())
            .ok_or_else(|| Error::InvalidAnswer {
                url: format!("{}/read", self.client.url()),
                message: format!("no {HEAD_HEADER} header"),
            })?;
        let head = match self.head.load(Ordering::Acquire) {
            -1 => {
                self.head.store(page_head, Ordering::Release);
                self.client.saw(page_head);
                page_head
            }
            head => head,
        };
        if (events.len() as u64) < asked {
            self.done = true;
        }
        if !self.backwards {
            // One snapshot: nothing beyond the first page's head.
            if let Some(beyond) = events.iter().position(|e| e.position > head) {
                events.truncate(beyond);
                self.done = true;
            }
        }
        if let Some(last) = events.last() {
            self.cursor = Some(last.position);
        }
        if let Some(remaining) = &mut self.remaining {
            *remaining -= events.len() as u64;
        }
        if events.is_empty() {
            self.done = true;
            return Ok(None);
        }
        Ok(Some(events))
    }
}
