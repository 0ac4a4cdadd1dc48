//! [`Subscriptions`] and its tailer: one live cursor per process, fanned
//! out to every live subscriber.
//!
//! One task per process reads the events committed after its cursor, once,
//! and passes each page of them to every shard of live subscribers (one
//! shard per HTTP worker thread, see [`super::fanout`]), which offers each
//! event to the subscribers whose query matches it. The tailer is woken at
//! once when the process's committed head advances ([`crate::head`]: a local
//! commit, or a read that saw a newer position) and otherwise polls the store every `poll_interval_ms` to see commits of
//! other processes on the same database. Commits happen in position order
//! (see [`crate::store::append`]), so reading "position > cursor" never
//! misses an event.
//!
//! Nothing waits for a subscriber: one whose buffer would overflow is
//! detached, drains what it was sent, and catches up from the store on its
//! own before it joins again. This module owns admission (the
//! `max_subscribers` slots), the cursor and shutdown; it owns no HTTP and no
//! SQL: it reads through the [`EventStore`] facade, as catching up does, and
//! hands events to the subscriptions' streams ([`super::stream`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::fanout::{Membership, Page, Shard};
use crate::actors::{EventStore, EventStoreError};
use crate::config::SubscriptionSettings;
use crate::dcb::{Position, Query, SequencedEvent};
use crate::metrics::Metrics;
use crate::replicas::{Route, Source};
use crate::store::PageRows;

/// The subscriptions of this process: admission, the live feed and shutdown.
/// Cheap to clone; a handle joins subscribers to the shard of the thread it
/// was made for ([`Subscriptions::on_this_thread`]).
#[derive(Clone)]
pub struct Subscriptions {
    inner: Arc<Inner>,
    shard: Arc<Shard>,
}

struct Inner {
    settings: SubscriptionSettings,
    metrics: Metrics,
    /// The cursor and the shards it feeds, under one lock so that a shard
    /// starts at the position the next page it is sent continues from.
    feed: Mutex<Feed>,
    /// The tailer's cursor as published, for heartbeats and catching up
    /// without the lock. Never behind a shard's cursor.
    published: watch::Sender<Option<Position>>,
    /// Set once the server is stopping: every stream ends.
    closing: watch::Sender<bool>,
    /// Open subscriptions, live or catching up, for `max_subscribers`.
    open: AtomicUsize,
}

struct Feed {
    /// Every event at or below it has been passed to the shards; `None`
    /// until the tailer has read the head once, and again while no
    /// subscription is open.
    cursor: Option<Position>,
    shards: Vec<ShardFeed>,
}

/// A shard and the channel of the pages it is sent.
struct ShardFeed {
    shard: Arc<Shard>,
    pages: mpsc::Sender<Page>,
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

impl Subscriptions {
    /// Starts the tailer on the current runtime. It reads through `store`
    /// (a facade of this thread) and is woken by `head_advances` (see
    /// [`crate::head::Head::advances`]). The handle's shard is fanned out
    /// on the current thread.
    pub fn start(
        store: EventStore,
        head_advances: watch::Receiver<Position>,
        settings: &SubscriptionSettings,
        metrics: &Metrics,
    ) -> Self {
        let (published, _) = watch::channel(None);
        let (closing, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            settings: settings.clone(),
            metrics: metrics.clone(),
            feed: Mutex::new(Feed {
                cursor: None,
                shards: Vec::new(),
            }),
            published,
            closing,
            open: AtomicUsize::new(0),
        });
        actix_rt::spawn(tail(inner.clone(), store, head_advances));
        let shard = inner.add_shard();
        Subscriptions { inner, shard }
    }

    /// A handle whose live subscribers are fanned out on the current thread,
    /// by a task of a shard of their own: each HTTP worker makes one, so the
    /// workers share the fan-out work.
    pub fn on_this_thread(&self) -> Self {
        Subscriptions {
            inner: self.inner.clone(),
            shard: self.inner.add_shard(),
        }
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

    /// The tailer's cursor: every event at or below it has been passed on
    /// to the shards. `None` until the tailer has read the head once.
    pub fn cursor(&self) -> Option<Position> {
        *self.inner.published.borrow()
    }

    /// A receiver that changes when the tailer's cursor does.
    pub fn cursor_changes(&self) -> watch::Receiver<Option<Position>> {
        self.inner.published.subscribe()
    }

    /// Joins the live feed for `query`, if the subscriber is caught up:
    /// every matching event at or below `caught_up_to` has been delivered,
    /// and this handle's shard is not beyond it (otherwise the subscriber
    /// would miss the events in between; it must read them first). Events
    /// at or below what it delivered may still arrive: it drops them.
    pub fn join(&self, query: Arc<Query>, caught_up_to: Position) -> Option<Membership> {
        self.shard.join(query, caught_up_to)
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
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Feed> {
        // Every change to the feed is one assignment or one push: a panic
        // elsewhere cannot leave it halfway.
        self.feed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A shard fed from now on, with its task on the current thread.
    fn add_shard(&self) -> Arc<Shard> {
        let mut feed = self.lock();
        let (shard, pages) = Shard::start(&self.settings, &self.metrics, feed.cursor);
        feed.shards.push(ShardFeed {
            shard: shard.clone(),
            pages,
        });
        shard
    }

    /// Moves the cursor to `cursor` without passing anything on (`None`:
    /// stops the feed). Every live subscriber is detached and catches up
    /// from the store: one that joined since the tailer last looked must
    /// not wait for events the feed skips.
    fn restart(&self, cursor: Option<Position>) {
        let mut feed = self.lock();
        feed.cursor = cursor;
        for f in &feed.shards {
            f.shard.reset(cursor);
        }
        drop(feed);
        self.published.send_replace(cursor);
    }

    /// Passes `events` (ascending, all after the cursor `after`) to every
    /// shard and moves the cursor to `head`, the last of them. Waits while
    /// a shard has `PAGES_IN_FLIGHT` pages still to apply.
    async fn pass_on(&self, after: Position, events: Vec<SequencedEvent>, head: Position) {
        let page = Page {
            after,
            head,
            events: events.into_iter().map(Arc::new).collect(),
        };
        let senders: Vec<mpsc::Sender<Page>> = {
            let mut feed = self.lock();
            // The shards of worker threads that stopped.
            feed.shards.retain(|f| !f.pages.is_closed());
            feed.cursor = Some(head);
            feed.shards.iter().map(|f| f.pages.clone()).collect()
        };
        // Before any shard moves: a subscriber that catches up to the head
        // it sees finds its shard at or behind it.
        self.published.send_replace(Some(head));
        for pages in senders {
            // A closed channel is a stopped worker: nobody there to feed.
            let _ = pages.send(page.clone()).await;
        }
    }
}

/// The first pause of a tailer whose source is behind the process's head.
const BEHIND_FIRST_PAUSE: Duration = Duration::from_millis(1);

/// The tailer: reads what was committed after its cursor, passes it on, and
/// waits for the head to advance, a poll tick or shutdown.
async fn tail(inner: Arc<Inner>, store: EventStore, mut head_advances: watch::Receiver<Position>) {
    let mut closing = inner.closing.subscribe();
    let poll = inner.settings.poll_interval();
    let page_size = inner.settings.page_size;
    // The tailer reads every event: one query for all its pages.
    let all = Arc::new(Query::all());
    let mut woken_by_head = true;
    let mut last_warning: Option<Instant> = None;
    // While the source it reads (a replica) has not replayed what this
    // process knows committed, the tailer looks again soon: 1 ms, doubling
    // up to the poll interval.
    let mut behind_pause = BEHIND_FIRST_PAUSE;
    // Whether the last read was served by a replica.
    let mut read_replica = false;
    loop {
        if *closing.borrow() {
            break;
        }
        // With no subscription open, nobody needs the new events: forget
        // the cursor instead of reading every commit (the next subscriber
        // makes the tailer start again from the head). A subscriber admitted
        // meanwhile that already joined is detached by the restart and
        // catches up, so it cannot miss what the feed skips.
        let idle = inner.open.load(Ordering::SeqCst) == 0;
        if idle && inner.lock().cursor.is_some() {
            inner.restart(None);
        }
        let before = inner.lock().cursor;
        let more = match if idle {
            Ok((false, Source::Primary))
        } else {
            read_new(&inner, &store, &all, page_size).await
        } {
            Ok((more, source)) => {
                read_replica = matches!(source, Source::Replica(_));
                more
            }
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
        // Behind this process's head on a replica: it has not replayed
        // every commit this process knows of. Read again at once after a
        // read that brought something; after one that brought nothing,
        // pause first. (On the primary, waiting for the head to advance
        // is enough: it wakes at once when commits came during the read.)
        let head = *head_advances.borrow();
        let cursor = inner.lock().cursor;
        if !idle && read_replica && cursor.is_some_and(|cursor| cursor < head) {
            if cursor != before {
                behind_pause = BEHIND_FIRST_PAUSE;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(behind_pause) => {}
                _ = closing.changed() => {}
            }
            behind_pause = (behind_pause * 2).min(poll);
            continue;
        }
        behind_pause = BEHIND_FIRST_PAUSE;
        tokio::select! {
            // Idle, the tailer is not woken by each commit either: it looks
            // for new subscriptions once per poll interval.
            changed = head_advances.changed(), if woken_by_head && !idle => {
                // The head is gone (tests that drop a server): poll only.
                woken_by_head = changed.is_ok();
            }
            _ = tokio::time::sleep(poll) => {}
            _ = closing.changed() => {}
        }
    }
    // Closing the shards' channels ends their tasks.
    inner.lock().shards.clear();
}

/// Reads one page after the cursor (or the head, the first time) and
/// passes it on; `true` when the page was full, so more may be waiting.
/// Also says which database it read.
async fn read_new(
    inner: &Inner,
    store: &EventStore,
    all: &Arc<Query>,
    page_size: i64,
) -> Result<(bool, Source), EventStoreError> {
    let cursor = inner.lock().cursor;
    inner.metrics.subscription_tailer_reads_total.inc();
    let Some(cursor) = cursor else {
        // Start at the head: subscribers read the past from the store.
        let (head, source) = store.last_position(Route::Follow).await?;
        inner.restart(Some(head));
        return Ok((true, source));
    };
    let page = crate::dcb::Page {
        after: cursor,
        before: Position::MAX,
        backwards: false,
        limit: page_size,
    };
    let (events, source): (Vec<SequencedEvent>, _) =
        store.read_page(all.clone(), page, Route::Follow).await?;
    // Full, or cut short at the reader's byte budget: more may be waiting.
    let more = events.len() as i64 >= page_size || events.bytes() >= store.page_max_bytes();
    if let Some(last) = events.last().map(|e| e.position) {
        inner.pass_on(cursor, events, last).await;
    }
    Ok((more, source))
}
