//! [`Subscription`]: one subscriber's stream of events, heartbeats and its
//! end, with no knowledge of how they are framed on the wire.
//!
//! A subscription alternates between two modes. Catching up, it reads pages
//! of its own query from the store ([`EventStore::read_page`]) up to the
//! tailer's cursor, as fast as its consumer asks; once nothing matching is
//! left at or below that cursor it joins the live feed
//! ([`Subscriptions::join`]) and is handed the events the tailer fans out.
//! A subscriber whose live buffer fills (in events or in bytes) is detached
//! and goes back to catching up from the last event it delivered, so it is
//! never skipped and never makes anyone wait. Every event is yielded once,
//! in position order: the stream drops anything at or below what it
//! delivered.
//!
//! Dropping the subscription frees its place among `max_subscribers` and
//! leaves the live feed.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use super::fanout::{Membership, SharedEvent};
use super::tailer::Slot;
use super::Subscriptions;
use crate::actors::{EventStore, EventStoreError};
use crate::dcb::{Page, Position, Query, SequencedEvent};
use crate::metrics::Metrics;
use crate::replicas::Route;

/// Most events yielded at once from the live buffer.
const LIVE_BATCH_EVENTS: usize = 256;

/// What a subscription yields.
pub enum Item {
    /// Events after everything yielded before, ascending, and the head they
    /// were read or fanned out at.
    Events { events: Events, head: Position },
    /// Nothing was sent for a heartbeat interval: the tailer's cursor.
    Heartbeat { head: Position },
    /// The last item: why the stream ends, and the position to resume after.
    End {
        reason: &'static str,
        message: &'static str,
        after: Position,
    },
}

/// Events as a subscription yields them: a page it read itself while
/// catching up, or a batch of the live feed (shared with other subscribers).
pub enum Events {
    Read(Vec<SequencedEvent>),
    Live(Vec<SharedEvent>),
}

impl Events {
    pub fn len(&self) -> usize {
        match self {
            Events::Read(events) => events.len(),
            Events::Live(events) => events.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> Box<dyn Iterator<Item = &SequencedEvent> + '_> {
        match self {
            Events::Read(events) => Box::new(events.iter()),
            Events::Live(events) => Box::new(events.iter().map(|e| e.as_ref())),
        }
    }

    /// Keeps the events after `delivered`.
    fn after(mut self, delivered: Position) -> Self {
        match &mut self {
            Events::Read(events) => events.retain(|e| e.position > delivered),
            Events::Live(events) => events.retain(|e| e.position > delivered),
        }
        self
    }

    fn last_position(&self) -> Option<Position> {
        match self {
            Events::Read(events) => events.last().map(|e| e.position),
            Events::Live(events) => events.last().map(|e| e.position),
        }
    }
}

/// One subscriber's stream; see the module's header.
pub struct Subscription {
    store: EventStore,
    subscriptions: Subscriptions,
    metrics: Metrics,
    query: Arc<Query>,
    /// The last position yielded (or the `after` asked for): the stream
    /// drops anything at or below it, and a client resumes after it.
    delivered: Position,
    /// Every matching event at or below it has been yielded (>= `delivered`).
    scanned: Position,
    page_size: i64,
    /// 0: never end a lagging subscriber's stream.
    max_lag: i64,
    heartbeat: std::time::Duration,
    /// When a heartbeat is due if nothing else is yielded.
    next_heartbeat: Instant,
    closing: watch::Receiver<bool>,
    cursor_changes: watch::Receiver<Option<Position>>,
    /// The live feed, once caught up.
    live: Option<Membership>,
    /// Whether the subscriber was detached from the live feed at least once
    /// (only those are ended for lagging, not new subscribers that start far
    /// back).
    fell_behind: bool,
    /// The end was yielded.
    finished: bool,
    /// Read your writes: catching up reads only from a database that holds
    /// this position (see `crate::replicas`).
    min_position: Position,
    /// Frees the place when the subscription is dropped.
    _slot: Slot,
}

impl Subscription {
    /// A subscription to the events matching `query` after `after`, or
    /// `None` when `max_subscribers` are already open.
    pub fn open(
        subscriptions: &Subscriptions,
        store: EventStore,
        metrics: Metrics,
        query: Query,
        after: Position,
        min_position: Option<Position>,
    ) -> Option<Self> {
        let slot = subscriptions.admit()?;
        let settings = subscriptions.settings();
        Some(Subscription {
            store,
            metrics,
            query: Arc::new(query),
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
            min_position: min_position.unwrap_or(0),
            subscriptions: subscriptions.clone(),
            _slot: slot,
        })
    }

    /// The next item, or `None` once the end was yielded.
    pub async fn next(&mut self) -> Option<Item> {
        loop {
            if self.finished {
                return None;
            }
            if *self.closing.borrow() {
                return Some(self.end("shutdown", "the server is stopping"));
            }
            if self.live.is_some() {
                if let Some(item) = self.next_live().await {
                    return Some(item);
                }
                continue;
            }
            let Some(cursor) = self.subscriptions.cursor() else {
                // The tailer has not read the head yet.
                if let Some(item) = self.wait_for_cursor().await {
                    return Some(item);
                }
                continue;
            };
            if self.fell_behind && self.max_lag > 0 && cursor - self.scanned > self.max_lag {
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
                Ok(Some(item)) => return Some(item),
                // A long catch-up with nothing matching yet.
                Ok(None) if Instant::now() >= self.next_heartbeat => return Some(self.heartbeat()),
                Ok(None) => continue,
                Err(e) => {
                    log::warn!("subscription ended: {e}");
                    return Some(
                        self.end("unavailable", "the store could not be read; resume later"),
                    );
                }
            }
        }
    }

    /// One page of the subscriber's own query, after what it has scanned and
    /// up to the tailer's `cursor`.
    async fn catch_up(&mut self, cursor: Position) -> Result<Option<Item>, EventStoreError> {
        let page = Page {
            after: self.scanned,
            before: cursor.saturating_add(1),
            backwards: false,
            limit: self.page_size,
        };
        // Only from a database that holds every position up to the cursor:
        // an empty page from one further behind would skip what it lacks.
        let route = Route::Any {
            min_position: Some(cursor.max(self.min_position)),
        };
        let (events, _): (Vec<SequencedEvent>, _) = self
            .store
            .read_page(self.query.clone(), page, route)
            .await?;
        // A page may be short because the reader cut it at its byte budget,
        // not because the range is exhausted: only an empty page says so.
        self.scanned = events.last().map_or(cursor, |e| e.position);
        Ok(self.deliver(Events::Read(events), cursor))
    }

    /// The next events of the live feed, a heartbeat, or `None` when the mode
    /// changed (detached, or shutting down).
    async fn next_live(&mut self) -> Option<Item> {
        let membership = self.live.as_mut()?;
        tokio::select! {
            batch = membership.next_batch(LIVE_BATCH_EVENTS) => match batch {
                Some(batch) => {
                    let head = self.subscriptions.cursor().unwrap_or(0);
                    self.deliver(Events::Live(batch), head)
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
            _ = tokio::time::sleep_until(self.next_heartbeat) => Some(self.heartbeat()),
            _ = self.closing.changed() => None,
        }
    }

    async fn wait_for_cursor(&mut self) -> Option<Item> {
        tokio::select! {
            _ = self.cursor_changes.changed() => None,
            _ = tokio::time::sleep_until(self.next_heartbeat) => Some(self.heartbeat()),
            _ = self.closing.changed() => None,
        }
    }

    /// The events after `delivered`, as an item; `None` if there are none.
    fn deliver(&mut self, events: Events, head: Position) -> Option<Item> {
        let events = events.after(self.delivered);
        let last = events.last_position()?;
        self.delivered = last;
        self.metrics
            .subscription_events_delivered_total
            .inc_by(events.len() as u64);
        self.metrics
            .subscription_lag_events
            .observe(head.saturating_sub(last).max(0) as f64);
        self.next_heartbeat = Instant::now() + self.heartbeat;
        Some(Item::Events { events, head })
    }

    fn heartbeat(&mut self) -> Item {
        self.next_heartbeat = Instant::now() + self.heartbeat;
        Item::Heartbeat {
            head: self.subscriptions.cursor().unwrap_or(0),
        }
    }

    fn end(&mut self, reason: &'static str, message: &'static str) -> Item {
        self.finished = true;
        self.live = None;
        self.metrics
            .subscription_ended_total
            .with_label_values(&[reason])
            .inc();
        Item::End {
            reason,
            message,
            after: self.delivered,
        }
    }
}
