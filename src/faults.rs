//! Fault injection for the supervision tests: a panic at a named point of
//! the writer lanes or the readers, armed by a test, inert otherwise.
//!
//! It owns nothing but the armed point and how many times it fires. It is
//! compiled into every build, rather than behind a cargo feature, because
//! the integration tests are a separate crate that builds the library
//! without `cfg(test)`, and `cargo test --workspace` would otherwise need a
//! feature flag to exercise supervision at all. The cost of a disarmed hook
//! is one relaxed atomic load on paths that make a database round trip.
//! Production cannot arm it: [`Faults`] is not read from configuration
//! (`#[serde(skip)]` in [`crate::config`]); only code holding the handle,
//! i.e. a test that built the settings, can.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

/// Where an armed fault panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FaultPoint {
    /// A writer lane's message handler, before the append is queued.
    Handle = 1,
    /// A writer lane taking the next batch off its queue.
    TakeBatch,
    /// A writer lane starting a batch, after taking it.
    Flush,
    /// The batch future, with a connection, before the batch call is sent.
    BeforeCall,
    /// The batch future, after the batch call returned.
    AfterCall,
    /// The completion of the batch future on the lane, before `finish_batch`.
    Map,
    /// A writer lane answering the appends of a finished batch.
    FinishBatch,
    /// A writer lane being restarted by its supervisor: the panic escapes
    /// supervision and the lane is gone for good.
    Restarting,
    /// A reader's message handler.
    ReaderHandle,
    /// A read future, with a connection, before its query.
    Read,
}

/// A shared, cloneable fault switch. `Default` is disarmed.
#[derive(Clone, Default)]
pub struct Faults(Arc<Armed>);

#[derive(Default)]
struct Armed {
    /// The armed point as `FaultPoint as u8`; 0 when disarmed.
    point: AtomicU8,
    /// How many more times the armed point fires.
    remaining: AtomicU32,
    /// How many times a fault fired, for the tests' accounting.
    fired: AtomicU32,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("point", &self.0.point.load(Ordering::Relaxed))
            .field("remaining", &self.0.remaining.load(Ordering::Relaxed))
            .finish()
    }
}

impl Faults {
    /// Arms `point` to panic the next `times` times it is reached.
    pub fn arm(&self, point: FaultPoint, times: u32) {
        self.0.remaining.store(times, Ordering::SeqCst);
        self.0.point.store(point as u8, Ordering::SeqCst);
    }

    pub fn disarm(&self) {
        self.0.point.store(0, Ordering::SeqCst);
    }

    /// How many times an armed fault has fired.
    pub fn fired(&self) -> u32 {
        self.0.fired.load(Ordering::SeqCst)
    }

    /// Panics if `point` is armed; a relaxed load otherwise.
    #[inline]
    pub fn hit(&self, point: FaultPoint) {
        if self.0.point.load(Ordering::Relaxed) == point as u8 {
            self.fire(point);
        }
    }

    #[cold]
    fn fire(&self, point: FaultPoint) {
        let taken = self
            .0
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match taken {
            Ok(n) => {
                if n == 1 {
                    self.disarm();
                }
                self.0.fired.fetch_add(1, Ordering::SeqCst);
                panic!("injected fault at {point:?}");
            }
            Err(_) => self.disarm(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_point_fires_as_many_times_as_armed_and_no_other_point_fires() {
        let faults = Faults::default();
        faults.hit(FaultPoint::Handle);
        faults.arm(FaultPoint::Read, 2);
        faults.hit(FaultPoint::Handle);
        for _ in 0..2 {
            let fired = std::panic::catch_unwind(|| faults.hit(FaultPoint::Read));
            assert!(fired.is_err());
        }
        faults.hit(FaultPoint::Read);
        assert_eq!(faults.fired(), 2);
    }
}
