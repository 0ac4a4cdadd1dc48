//! The subscription tailer: one live cursor per process, fanned out to every
//! live subscriber.
//!
//! One task per process reads the events committed after its cursor, once,
//! and offers each to every live subscriber whose query matches it (matched in
//! memory with [`Query::matches`]), through a bounded per-subscriber buffer.
//! It is woken at once by local commits (the writer lanes' committed position,
//! a `watch`) and otherwise polls the store every `poll_interval_ms` to see
//! commits of other processes on the same database. Commits happen in position
//! order (see [`crate::store::append`]), so reading "position > cursor" never
//! misses an event.
//!
//! The tailer never waits for a subscriber: one whose buffer is full is
//! detached (its sender dropped), drains what it was sent, and catches up
//! from the store on its own before it joins again. It owns no HTTP and no
//! SQL: it reads through [`crate::store::read_page`] on the reader pool and
//! hands events to whoever consumes them (the HTTP layer's streams).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::config::SubscriptionSettings;
use crate::dcb::{Position, Query, SequencedEvent};
use crate::metrics::Metrics;
use crate::store::{self, Page, PageRows, Pool, StoreError};

/// An event as fanned out: shared by every subscriber it matches.
pub type SharedEvent = Arc<SequencedEvent>;

/// The subscriptions of this process: admission, the live feed and shutdown.
/// Cheap to clone.
#[derive(Clone)]
pub struct Subscriptions {
    inner: Arc<Inner>,
}

struct Inner {
    settings: SubscriptionSettings,
    metrics: Metrics,
    /// The live subscribers and the cursor they are fed from, under one lock
    /// so that joining and fanning out never interleave.
    live: Mutex<Live>,
    /// The tailer's cursor, for heartbeats and joins without the lock.
    head: watch::Sender<Option<Position>>,
    /// Set once the server is stopping: every stream ends.
    closing: watch::Sender<bool>,
    /// Open subscriptions, live or catching up, for `max_subscribers`.
    open: AtomicUsize,
}

struct Live {
    /// Every event at or below it has been offered to the live subscribers;
    /// `None` until the tailer has read the head once.
    cursor: Option<Position>,
    subscribers: HashMap<u64, LiveSubscriber>,
    /// Ids of live memberships, never reused.
    next_id: u64,
}

struct LiveSubscriber {
    query: Arc<Query>,
    /// Bounded: a full buffer detaches the subscriber.
    sender: mpsc::Sender<SharedEvent>,
}

/// An admitted subscription; dropping it frees its place.
pub struct Slot {
    inner: Arc<Inner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.open.fetch_sub(1, Ordering::AcqRel);
        self.inner.metrics.subscriptions_active.dec();
    }
}

/// Membership of the live feed: events arrive on `events` until the tailer
/// detaches the subscriber (the channel then ends) or the membership drops.
pub struct Membership {
    inner: Arc<Inner>,
    id: u64,
    pub events: mpsc::Receiver<SharedEvent>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.inner.lock().subscribers.remove(&self.id);
    }
}

impl Subscriptions {
    /// Starts the tailer on the current runtime. It reads through `pool`
    /// and is woken by `committed`, the position of the last local commit.
    pub fn start(
        pool: Pool,
        committed: watch::Receiver<Position>,
        settings: &SubscriptionSettings,
        metrics: &Metrics,
    ) -> Self {
        let (head, _) = watch::channel(None);
        let (closing, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            settings: settings.clone(),
            metrics: metrics.clone(),
            live: Mutex::new(Live {
                cursor: None,
                subscribers: HashMap::new(),
                next_id: 0,
            }),
            head,
            closing,
            open: AtomicUsize::new(0),
        });
        actix_rt::spawn(tail(inner.clone(), pool, committed));
        Subscriptions { inner }
    }

    pub fn settings(&self) -> &SubscriptionSettings {
        &self.inner.settings
    }

    /// A place for one more subscription, or `None` at `max_subscribers`.
    pub fn admit(&self) -> Option<Slot> {
        let max = self.inner.settings.max_subscribers;
        let admitted = self
            .inner
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        admitted.then(|| {
            self.inner.metrics.subscriptions_active.inc();
            Slot {
                inner: self.inner.clone(),
            }
        })
    }

    /// The tailer's cursor: every event at or below it has been fanned out.
    /// `None` until the tailer has read the head once.
    pub fn cursor(&self) -> Option<Position> {
        *self.inner.head.borrow()
    }

    /// A receiver that changes when the tailer's cursor does.
    pub fn cursor_changes(&self) -> watch::Receiver<Option<Position>> {
        self.inner.head.subscribe()
    }

    /// Joins the live feed for `query`, if the subscriber is caught up:
    /// every matching event at or below `caught_up_to` has been delivered,
    /// and the tailer's cursor is not beyond it (otherwise the subscriber
    /// would miss the events in between; it must read them first). Events
    /// at or below what it delivered may still arrive: it drops them.
    pub fn join(&self, query: Arc<Query>, caught_up_to: Position) -> Option<Membership> {
        let mut live = self.inner.lock();
        if live.cursor.is_none_or(|cursor| cursor > caught_up_to) {
            return None;
        }
        let (sender, events) = mpsc::channel(self.inner.settings.buffer_events);
        let id = live.next_id;
        live.next_id += 1;
        live.subscribers
            .insert(id, LiveSubscriber { query, sender });
        Some(Membership {
            inner: self.inner.clone(),
            id,
            events,
        })
    }

    /// A receiver that turns `true` once the server is stopping.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Ends every subscription: each stream sends its final message (with
    /// the position to resume after) and ends. Called when the server stops.
    pub fn close_all(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Live subscribers right now (for tests and diagnostics).
    pub fn live_count(&self) -> usize {
        self.inner.lock().subscribers.len()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Live> {
        // A panic while fanning out leaves consistent state (at worst a
        // page offered to some subscribers only, who then catch up).
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Offers `events` (ascending, all after the cursor) to every live
    /// subscriber and moves the cursor to the last of them.
    fn fan_out(&self, events: Vec<SequencedEvent>, head: Position) {
        let events: Vec<SharedEvent> = events.into_iter().map(Arc::new).collect();
        let mut live = self.lock();
        let mut detached = Vec::new();
        for (id, subscriber) in live.subscribers.iter() {
            for event in &events {
                if !subscriber.query.matches(&event.event_type, &event.tags) {
                    continue;
                }
                match subscriber.sender.try_send(event.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.metrics.subscription_detached_total.inc();
                        detached.push(*id);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        detached.push(*id);
                        break;
                    }
                }
            }
        }
        for id in detached {
            // Dropping the sender ends the subscriber's channel once it has
            // drained what it was sent; it then catches up from the store.
            live.subscribers.remove(&id);
        }
        live.cursor = Some(head);
        drop(live);
        self.head.send_replace(Some(head));
    }
}

/// The tailer: reads what was committed after its cursor, fans it out, and
/// waits for a local commit, a poll tick or shutdown.
async fn tail(inner: Arc<Inner>, pool: Pool, mut committed: watch::Receiver<Position>) {
    let mut closing = inner.closing.subscribe();
    let poll = inner.settings.poll_interval();
    let page_size = inner.settings.page_size;
    let mut local_commits = true;
    let mut last_warning: Option<Instant> = None;
    loop {
        if *closing.borrow() {
            return;
        }
        // With no subscription open, nobody needs the new events: forget
        // the cursor instead of reading every commit (the next subscriber
        // makes the tailer start again from the head). Checked under the
        // lock that joins take, so no live subscriber can miss a page.
        let idle = {
            let mut live = inner.lock();
            let idle = live.subscribers.is_empty() && inner.open.load(Ordering::SeqCst) == 0;
            if idle && live.cursor.take().is_some() {
                // Subscribers read the cursor from this watch: it must not
                // show one the tailer no longer has.
                inner.head.send_replace(None);
            }
            idle
        };
        let more = match if idle {
            Ok(false)
        } else {
            read_new(&inner, &pool, page_size).await
        } {
            Ok(more) => more,
            Err(e) => {
                // One line per 10 s at most while the database is away.
                if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    log::warn!("subscription tailer cannot read: {e}");
                    last_warning = Some(Instant::now());
                }
                false
            }
        };
        if more {
            continue;
        }
        tokio::select! {
            // Idle, the tailer is not woken by each local commit either: it
            // looks for new subscriptions once per poll interval.
            changed = committed.changed(), if local_commits && !idle => {
                // The writers are gone (tests that drop a server): poll only.
                local_commits = changed.is_ok();
            }
            _ = tokio::time::sleep(poll) => {}
            _ = closing.changed() => {}
        }
    }
}

/// Where the tailer cuts a page of new events: it holds one page at a time,
/// and subscribers get shares of it.
const TAILER_PAGE_MAX_BYTES: usize = 4 << 20;

/// Reads one page after the cursor (or the head, the first time) and fans it
/// out; `true` when the page was full, so more may be waiting.
async fn read_new(inner: &Inner, pool: &Pool, page_size: i64) -> Result<bool, StoreError> {
    let cursor = inner.lock().cursor;
    let conn = store::checkout(pool).await?;
    inner.metrics.subscription_tailer_reads_total.inc();
    let Some(cursor) = cursor else {
        // Start at the head: subscribers read the past from the store.
        let last = Page {
            after: 0,
            before: Position::MAX,
            backwards: true,
            limit: 1,
        };
        let head = store::read_page::<Vec<SequencedEvent>>(
            &conn,
            &Query::all(),
            &last,
            TAILER_PAGE_MAX_BYTES,
        )
        .await?
        .first()
        .map_or(0, |e| e.position);
        drop(conn);
        inner.fan_out(Vec::new(), head);
        return Ok(true);
    };
    let page = Page {
        after: cursor,
        before: Position::MAX,
        backwards: false,
        limit: page_size,
    };
    let events: Vec<SequencedEvent> =
        store::read_page(&conn, &Query::all(), &page, TAILER_PAGE_MAX_BYTES).await?;
    drop(conn);
    let full = events.len() as i64 >= page_size || events.bytes() >= TAILER_PAGE_MAX_BYTES;
    if let Some(last) = events.last().map(|e| e.position) {
        inner.fan_out(events, last);
    }
    Ok(full)
}
