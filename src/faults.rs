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

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Where an armed fault panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FaultPoint {
    /// A writer lane's message handler, before the append is queued.
    Handle,
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

/// The number of fault points.
const POINTS: usize = FaultPoint::Read as usize + 1;

/// A shared, cloneable set of fault switches. `Default` is disarmed.
#[derive(Clone, Default)]
pub struct Faults(Arc<Armed>);

#[derive(Default)]
struct Armed {
    /// Per point (indexed by `FaultPoint as usize`), how many more times it
    /// fires; 0 when disarmed.
    remaining: [AtomicU32; POINTS],
    /// How many times a fault fired, for the tests' accounting.
    fired: AtomicU32,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("fired", &self.fired())
            .finish_non_exhaustive()
    }
}

impl Faults {
    /// Arms `point` to panic the next `times` times it is reached (other
    /// armed points stay armed).
    pub fn arm(&self, point: FaultPoint, times: u32) {
        self.0.remaining[point as usize].store(times, Ordering::SeqCst);
    }

    /// Disarms every point.
    pub fn disarm(&self) {
        for remaining in &self.0.remaining {
            remaining.store(0, Ordering::SeqCst);
        }
    }

    /// How many times an armed fault has fired.
    pub fn fired(&self) -> u32 {
        self.0.fired.load(Ordering::SeqCst)
    }

    /// Panics if `point` is armed; one relaxed load otherwise.
    #[inline]
    pub fn hit(&self, point: FaultPoint) {
        if self.0.remaining[point as usize].load(Ordering::Relaxed) > 0 {
            self.fire(point);
        }
    }

    #[cold]
    fn fire(&self, point: FaultPoint) {
        let taken = self.0.remaining[point as usize].fetch_update(
            Ordering::SeqCst,
            Ordering::SeqCst,
            |n| n.checked_sub(1),
        );
        if taken.is_ok() {
            self.0.fired.fetch_add(1, Ordering::SeqCst);
            panic!("injected fault at {point:?}");
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
