//! The live feed's last step: offering each new event to the live
//! subscribers whose query matches it, through a bounded buffer each.
//!
//! Live subscribers are kept in shards, one per HTTP worker thread (the
//! thread that serves their connection). The tailer ([`super::tailer`])
//! reads each page of new events once and passes it to every shard; a
//! shard's task, on its own worker thread, offers the page's events to that
//! shard's subscribers. So the fan-out work is spread over the workers, and
//! joining or leaving the feed locks one shard, not every subscriber.
//!
//! A shard looks only at the subscribers its `SubscriberIndex` files under
//! the event's type or tags (and those of the all-query), then matches each
//! in full: subscribers to other tags cost an event nothing.
//!
//! Each subscriber's buffer is bounded in events (`buffer_events`) and in
//! bytes (`buffer_bytes`; an empty buffer still takes one event, however
//! large). A subscriber whose buffer would overflow is detached: its sender
//! is dropped, it drains what it was sent and catches up from the store on
//! its own. A shard never waits for a subscriber.
//!
//! Ordering: a shard applies pages in the tailer's order and only
//! contiguously (a page after `p` only when its cursor is `p`), under its
//! lock; a subscriber joins under that lock too, only if the shard's cursor
//! is not beyond what the subscriber has caught up to. So a member is
//! offered every matching event after it joined, once, in position order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::mpsc;

use super::index::SubscriberIndex;
use crate::config::SubscriptionSettings;
use crate::dcb::{Position, Query};
use crate::metrics::Metrics;

/// An event as fanned out: shared by every subscriber it matches.
pub type SharedEvent = Arc<crate::dcb::SequencedEvent>;

/// Pages a shard may have waiting before the tailer waits for it.
const PAGES_IN_FLIGHT: usize = 16;

/// A page of new events as the tailer passes it to every shard: the events
/// after `after` up to and including `head`, ascending.
#[derive(Clone)]
pub(super) struct Page {
    pub after: Position,
    pub head: Position,
    pub events: Arc<[SharedEvent]>,
}

/// The live subscribers of one worker thread.
pub(super) struct Shard {
    state: Mutex<ShardState>,
    buffer_events: usize,
    buffer_bytes: usize,
    buffered_bytes: IntGauge,
    detached_total: IntCounter,
}

struct ShardState {
    /// Every event at or below it has been offered to the members; `None`
    /// while the tailer has no cursor (nobody can join then).
    cursor: Option<Position>,
    members: SubscriberIndex<Member>,
    /// Ids of memberships, never reused.
    next_id: u64,
}

/// The shard's end of a member's buffer.
struct Member {
    sender: mpsc::Sender<SharedEvent>,
    buffered: Buffered,
}

/// Why an event was not put in a member's buffer.
enum Refused {
    /// The buffer is full, in events or in bytes.
    Full,
    /// The member is gone.
    Closed,
}

/// Bytes of events in one member's buffer, mirrored in the process-wide
/// `crablet_subscription_buffered_bytes`.
#[derive(Clone)]
struct Buffered {
    bytes: Arc<AtomicUsize>,
    gauge: IntGauge,
}

impl Buffered {
    /// Counts `size` more bytes; how many there were before.
    fn add(&self, size: usize) -> usize {
        self.gauge.add(size as i64);
        self.bytes.fetch_add(size, Ordering::AcqRel)
    }

    fn sub(&self, size: usize) {
        self.bytes.fetch_sub(size, Ordering::AcqRel);
        self.gauge.sub(size as i64);
    }
}

impl Member {
    /// Puts `event` (of `size` bytes) in the buffer, unless that would take
    /// it over `max_bytes` (it takes any one event while empty).
    fn offer(&self, event: &SharedEvent, size: usize, max_bytes: usize) -> Result<(), Refused> {
        // Counted before it is sent: the receiver subtracts as it takes.
        let held = self.buffered.add(size);
        if held > 0 && held + size > max_bytes {
            self.buffered.sub(size);
            return Err(Refused::Full);
        }
        self.sender.try_send(event.clone()).map_err(|e| {
            self.buffered.sub(size);
            match e {
                mpsc::error::TrySendError::Full(_) => Refused::Full,
                mpsc::error::TrySendError::Closed(_) => Refused::Closed,
            }
        })
    }
}

impl Shard {
    /// A shard fed from `cursor` on, and its task on the current thread,
    /// which applies the pages sent on the returned sender until it closes.
    pub(super) fn start(
        settings: &SubscriptionSettings,
        metrics: &Metrics,
        cursor: Option<Position>,
    ) -> (Arc<Shard>, mpsc::Sender<Page>) {
        let shard = Arc::new(Shard {
            state: Mutex::new(ShardState {
                cursor,
                members: SubscriberIndex::default(),
                next_id: 0,
            }),
            buffer_events: settings.buffer_events,
            buffer_bytes: settings.buffer_bytes,
            buffered_bytes: metrics.subscription_buffered_bytes.clone(),
            detached_total: metrics.subscription_detached_total.clone(),
        });
        let (pages, mut feed) = mpsc::channel::<Page>(PAGES_IN_FLIGHT);
        let fed = shard.clone();
        actix_rt::spawn(async move {
            while let Some(page) = feed.recv().await {
                fed.apply(&page);
            }
        });
        (shard, pages)
    }

    fn lock(&self) -> MutexGuard<'_, ShardState> {
        // A panic while fanning out leaves consistent state (at worst a
        // page offered to some members only, who then catch up).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Offers the events of `page` to the members whose query matches each,
    /// in order, and moves the cursor to its head. A page that does not
    /// continue from the cursor (sent before the feed was reset) is dropped.
    fn apply(&self, page: &Page) {
        let mut state = self.lock();
        if state.cursor != Some(page.after) {
            return;
        }
        for event in page.events.iter() {
            let size = event.approximate_size();
            for id in state.members.matching(&event.event_type, &event.tags) {
                let Some(member) = state.members.get(id) else {
                    continue;
                };
                if let Err(refused) = member.offer(event, size, self.buffer_bytes) {
                    if matches!(refused, Refused::Full) {
                        self.detached_total.inc();
                    }
                    // Dropping the sender ends the member's channel once it
                    // has drained what it was sent; it then catches up from
                    // the store. Later events of the page skip it.
                    state.members.remove(id);
                }
            }
        }
        state.cursor = Some(page.head);
    }

    /// Restarts the feed at `cursor` (`None`: stopped): every member is
    /// detached (and catches up from the store), and only pages after
    /// `cursor` apply from now on.
    pub(super) fn reset(&self, cursor: Option<Position>) {
        let mut state = self.lock();
        state.cursor = cursor;
        drop(state.members.drain());
    }

    /// Joins the feed for `query` if the shard's cursor is not beyond
    /// `caught_up_to` (see [`super::Subscriptions::join`]).
    pub(super) fn join(
        self: &Arc<Self>,
        query: Arc<Query>,
        caught_up_to: Position,
    ) -> Option<Membership> {
        let mut state = self.lock();
        if state.cursor.is_none_or(|cursor| cursor > caught_up_to) {
            return None;
        }
        let (sender, events) = mpsc::channel(self.buffer_events);
        let buffered = Buffered {
            bytes: Arc::new(AtomicUsize::new(0)),
            gauge: self.buffered_bytes.clone(),
        };
        let id = state.next_id;
        state.next_id += 1;
        let member = Member {
            sender,
            buffered: buffered.clone(),
        };
        state.members.insert(id, query, member);
        Some(Membership {
            shard: self.clone(),
            id,
            events,
            buffered,
        })
    }

    /// Members right now.
    #[cfg(test)]
    fn live_count(&self) -> usize {
        self.lock().members.len()
    }
}

/// Membership of the live feed: events arrive through
/// [`Membership::next_batch`] until the subscriber is detached (its buffer
/// would overflow) or the membership drops.
pub struct Membership {
    shard: Arc<Shard>,
    id: u64,
    events: mpsc::Receiver<SharedEvent>,
    buffered: Buffered,
}

impl Membership {
    /// The next events of the feed, at least one and at most `max`, in
    /// position order; `None` once the subscriber was detached and has
    /// taken everything it was sent. Cancel-safe.
    pub async fn next_batch(&mut self, max: usize) -> Option<Vec<SharedEvent>> {
        let first = self.events.recv().await?;
        let mut batch = vec![first];
        while batch.len() < max {
            match self.events.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        self.buffered
            .sub(batch.iter().map(|e| e.approximate_size()).sum());
        Some(batch)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.shard.lock().members.remove(self.id);
        // Out of the shard nothing is added any more: what is still
        // buffered is dropped with the receiver.
        let left = self.buffered.bytes.load(Ordering::Acquire);
        self.buffered.sub(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::dcb::{QueryItem, SequencedEvent};

    fn event(position: Position, tag: &str, data_bytes: usize) -> SharedEvent {
        Arc::new(SequencedEvent {
            event_type: "E".into(),
            tags: vec![tag.into()],
            data: "x".repeat(data_bytes),
            position,
            id: None,
            metadata: None,
            recorded_at: String::new(),
        })
    }

    fn page(after: Position, events: Vec<SharedEvent>) -> Page {
        Page {
            after,
            head: events.last().map_or(after, |e| e.position),
            events: events.into(),
        }
    }

    fn tagged(tag: &str) -> Arc<Query> {
        Arc::new(Query {
            items: vec![QueryItem {
                types: Vec::new(),
                tags: vec![tag.into()],
            }],
        })
    }

    /// Everything a membership holds now, and whether it was detached.
    async fn drain(membership: &mut Membership) -> (Vec<Position>, bool) {
        let mut got = Vec::new();
        loop {
            let next = tokio::time::timeout(
                std::time::Duration::from_millis(50),
                membership.next_batch(1_000),
            );
            match next.await {
                Ok(Some(batch)) => got.extend(batch.iter().map(|e| e.position)),
                Ok(None) => return (got, true),
                Err(_) => return (got, false),
            }
        }
    }

    #[actix_rt::test]
    async fn a_member_is_offered_its_events_in_order_until_its_bytes_would_overflow() {
        let mut settings = Settings::defaults().subscriptions;
        settings.buffer_events = 1_000;
        let size = event(1, "a", 1_000).approximate_size();
        settings.buffer_bytes = 4 * size + size / 2;
        let metrics = Metrics::new();
        let (shard, _pages) = Shard::start(&settings, &metrics, Some(0));
        let mut all = shard.join(Arc::new(Query::all()), 0).expect("joins at 0");
        let mut a = shard.join(tagged("a"), 0).expect("joins at 0");
        let mut b = shard.join(tagged("b"), 0).expect("joins at 0");
        // 1..=8, tagged a, b, a, b, ...: `all` overflows at the fifth.
        let events = (1..=8)
            .map(|p| event(p, if p % 2 == 1 { "a" } else { "b" }, 1_000))
            .collect();
        shard.apply(&page(0, events));
        assert_eq!(metrics.subscription_detached_total.get(), 1);
        assert_eq!(
            metrics.subscription_buffered_bytes.get() as usize,
            3 * 4 * size
        );
        assert_eq!(drain(&mut all).await, (vec![1, 2, 3, 4], true));
        assert_eq!(drain(&mut a).await, (vec![1, 3, 5, 7], false));
        // Taken events are no longer counted; `b` holds its four.
        assert_eq!(metrics.subscription_buffered_bytes.get() as usize, 4 * size);
        // A page that does not continue from the cursor is not applied.
        shard.apply(&page(3, vec![event(9, "a", 10)]));
        shard.apply(&page(8, vec![event(9, "b", 10), event(10, "a", 10)]));
        assert_eq!(drain(&mut a).await, (vec![10], false));
        assert_eq!(drain(&mut b).await, (vec![2, 4, 6, 8, 9], false));
        // Behind the cursor nobody joins; at it, one does.
        assert!(shard.join(Arc::new(Query::all()), 9).is_none());
        let late = shard.join(Arc::new(Query::all()), 10).expect("joins at 10");
        assert_eq!(shard.live_count(), 3);
        drop((all, late));
        assert_eq!(shard.live_count(), 2);
        drop((a, b));
        assert_eq!(metrics.subscription_buffered_bytes.get(), 0);
    }

    #[actix_rt::test]
    async fn an_empty_buffer_takes_one_event_larger_than_the_budget() {
        let mut settings = Settings::defaults().subscriptions;
        settings.buffer_bytes = 100;
        let metrics = Metrics::new();
        let (shard, _pages) = Shard::start(&settings, &metrics, Some(0));
        let mut member = shard.join(Arc::new(Query::all()), 0).expect("joins at 0");
        shard.apply(&page(0, vec![event(1, "a", 10_000), event(2, "a", 1)]));
        assert_eq!(drain(&mut member).await, (vec![1], true));
    }
}
