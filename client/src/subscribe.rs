//! `POST /subscribe` (NDJSON), reconnected and resumed on its own.

use std::pin::Pin;
use std::task::{Context, Poll};

use crablet_model::{Position, Query, SequencedEvent, SubscriptionLine};
use futures_util::stream::{self, BoxStream};
use futures_util::{Stream, StreamExt};
use reqwest::Method;
use serde::Serialize;

use crate::retry::Failure;
use crate::{Client, Error, Request};

/// The longest line a subscription accepts (an event with its data).
const MAX_LINE: usize = 64 << 20;

/// A subscription being set up: [`Client::subscribe`].
#[must_use = "a subscription does nothing until streamed"]
pub struct SubscribeBuilder {
    client: Client,
    query: Query,
    after: Position,
}

impl Client {
    /// Every event matching `query`, caught up from the log then followed
    /// live, without end.
    pub fn subscribe(&self, query: Query) -> SubscribeBuilder {
        SubscribeBuilder {
            client: self.clone(),
            query,
            after: 0,
        }
    }
}

impl SubscribeBuilder {
    /// Only events after this position (default 0: from the start).
    pub fn after(mut self, position: Position) -> Self {
        self.after = position;
        self
    }

    /// The events, as a stream that never ends on its own while the server
    /// can be reached again: after a dropped connection, a server restart,
    /// a lag disconnect (the server ends a subscriber that reads too
    /// slowly) or a silence longer than the heartbeat timeout, it
    /// reconnects with back-off and resumes after the last event it
    /// delivered, so every matching event comes once and in order.
    ///
    /// It ends with one `Err` when the server refuses the subscription
    /// (a bad query, a refused token).
    pub fn stream(self) -> Subscription {
        let state = Following {
            client: self.client,
            query: self.query,
            last: self.after,
            connection: None,
            failures: 0,
            finished: false,
        };
        let inner = stream::unfold(state, |mut state| async move {
            let item = state.next_event().await?;
            Some((item, state))
        })
        .boxed();
        Subscription { inner }
    }
}

/// The events of a subscription, as a [`Stream`].
pub struct Subscription {
    inner: BoxStream<'static, Result<SequencedEvent, Error>>,
}

impl Stream for Subscription {
    type Item = Result<SequencedEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

#[derive(Serialize)]
struct SubscribeBody<'a> {
    query: &'a Query,
    after: Position,
}

/// Where a subscription is.
struct Following {
    client: Client,
    query: Query,
    /// The last position delivered: a new connection resumes after it, and
    /// anything at or before it is not delivered again.
    last: Position,
    connection: Option<Lines>,
    /// Failed connection attempts since the last event.
    failures: u32,
    finished: bool,
}

impl Following {
    async fn next_event(&mut self) -> Option<Result<SequencedEvent, Error>> {
        let heartbeat_timeout = self.client.inner.heartbeat_timeout;
        loop {
            if self.finished {
                return None;
            }
            let Some(connection) = self.connection.as_mut() else {
                // A server that accepts the connection but never answers
                // is as dead as one that refuses it.
                let connected = tokio::time::timeout(heartbeat_timeout, self.connect())
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failure::Transient {
                            error: Error::Connection {
                                url: format!("{}/subscribe", self.client.url()),
                                message: format!("no answer within {heartbeat_timeout:?}"),
                            },
                            retry_after: None,
                        })
                    });
                match connected {
                    Ok(lines) => self.connection = Some(lines),
                    Err(Failure::Final(error)) => {
                        self.finished = true;
                        return Some(Err(error));
                    }
                    Err(Failure::Transient { error, retry_after }) => {
                        self.failures += 1;
                        let wait = self.client.inner.retry.backoff(self.failures, retry_after);
                        log::info!("subscription: {error}; reconnecting in {wait:?}");
                        tokio::time::sleep(wait).await;
                    }
                }
                continue;
            };
            let line = match tokio::time::timeout(heartbeat_timeout, connection.next()).await {
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None)) => {
                    log::info!(
                        "subscription: the server closed the stream; resuming after {}",
                        self.last
                    );
                    self.connection = None;
                    continue;
                }
                Ok(Err(message)) => {
                    log::info!("subscription: {message}; resuming after {}", self.last);
                    self.connection = None;
                    continue;
                }
                Err(_) => {
                    log::info!(
                        "subscription: nothing for {heartbeat_timeout:?}, not even a heartbeat; \
                         resuming after {}",
                        self.last
                    );
                    self.connection = None;
                    continue;
                }
            };
            match serde_json::from_slice::<SubscriptionLine>(&line) {
                Ok(SubscriptionLine::Event(event)) => {
                    if event.position <= self.last {
                        continue;
                    }
                    self.last = event.position;
                    self.failures = 0;
                    self.client.saw(event.position);
                    return Some(Ok(event));
                }
                Ok(SubscriptionLine::Heartbeat { .. }) => {}
                Ok(SubscriptionLine::End { end }) => {
                    log::info!(
                        "subscription ended by the server ({}: {}); resuming after {}",
                        end.reason,
                        end.message,
                        self.last
                    );
                    self.connection = None;
                }
                Err(e) => {
                    self.finished = true;
                    return Some(Err(Error::InvalidAnswer {
                        url: format!("{}/subscribe", self.client.url()),
                        message: format!("a line of the stream: {e}"),
                    }));
                }
            }
        }
    }

    async fn connect(&mut self) -> Result<Lines, Failure> {
        let body = serde_json::to_vec(&SubscribeBody {
            query: &self.query,
            after: self.last,
        })
        .map_err(|e| Error::Config(format!("the query: {e}")))?;
        let request = Request {
            method: Method::POST,
            path: "/subscribe",
            body: Some(body),
            read_your_writes: false,
        };
        let response = self.client.send(&request, None).await?;
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let body = response.bytes().await.unwrap_or_default();
            return Err(self.client.api_failure(status, &headers, &body));
        }
        Ok(Lines {
            chunks: response.bytes_stream().boxed(),
            buffer: Vec::new(),
            searched: 0,
        })
    }
}

/// The lines of a streamed body.
struct Lines {
    chunks: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
    /// How much of `buffer` holds no newline.
    searched: usize,
}

impl Lines {
    /// The next complete line (without its newline), `None` at the end of
    /// the body, `Err` when the connection failed.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            if let Some(at) = self.buffer[self.searched..]
                .iter()
                .position(|&b| b == b'\n')
            {
                let end = self.searched + at;
                let line = self.buffer[..end].to_vec();
                self.buffer.drain(..=end);
                self.searched = 0;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            self.searched = self.buffer.len();
            if self.buffer.len() > MAX_LINE {
                return Err(format!("a line longer than {MAX_LINE} bytes"));
            }
            match self.chunks.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(e.to_string()),
                None => return Ok(None),
            }
        }
    }
}
