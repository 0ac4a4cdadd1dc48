//! [`Head`]: the one owner of the committed head this process knows.
//!
//! The head is the highest position this process has seen committed: a
//! batch it committed, a page or a projection it read. Commits happen in
//! position order (see [`crate::store::append`]), so every position up to
//! the head is committed too. Read before a statement is sent, the head is
//! no later than that statement's snapshot; other processes' commits reach
//! it only once this process reads them, so it may be lower than the
//! store's head, never higher.
//!
//! Who asks it: the writer lanes (a condition whose `after` is not beyond it
//! needs no look at later positions), the readers (the `X-Crablet-Head` a
//! read answers with), the subscription tailer (woken when it advances) and
//! the metrics (`crablet_head_position`, sampled when `/metrics` renders).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::dcb::Position;

/// The committed head of this process; cheap to clone, shared by all.
#[derive(Clone)]
pub struct Head(Arc<Inner>);

struct Inner {
    /// The head itself: one atomic load to read, one `fetch_max` to raise.
    known: AtomicI64,
    /// Sent to only when the head advances, to wake whoever waits for new
    /// commits (the subscription tailer).
    advanced: watch::Sender<Position>,
}

impl Default for Head {
    fn default() -> Self {
        Head(Arc::new(Inner {
            known: AtomicI64::new(0),
            advanced: watch::channel(0).0,
        }))
    }
}

impl Head {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `position` is committed (a batch returned it, or a read
    /// saw it): the head never goes down. Call it once per batch or page.
    pub fn saw(&self, position: Position) {
        let before = self.0.known.fetch_max(position, Ordering::AcqRel);
        if position > before {
            self.0.advanced.send_if_modified(|sent| {
                let newer = position > *sent;
                *sent = (*sent).max(position);
                newer
            });
        }
    }

    /// The highest position this process has seen committed (0 before any).
    pub fn known(&self) -> Position {
        self.0.known.load(Ordering::Acquire)
    }

    /// A receiver that changes whenever the head advances.
    pub fn advances(&self) -> watch::Receiver<Position> {
        self.0.advanced.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_only_rises_and_wakes_only_when_it_does() {
        let head = Head::new();
        let mut advances = head.advances();
        head.saw(5);
        assert_eq!(head.known(), 5);
        assert!(advances.has_changed().unwrap());
        assert_eq!(*advances.borrow_and_update(), 5);
        head.saw(3);
        head.saw(5);
        assert_eq!(head.known(), 5, "never lower");
        assert!(
            !advances.has_changed().unwrap(),
            "no wake-up without advance"
        );
        head.saw(9);
        assert_eq!(*advances.borrow_and_update(), 9);
    }
}
