//! Remembered projector states: what lets a requirement or a projection
//! cost the events appended since a state crablet already knows, instead of
//! every event its query matches.
//!
//! Each process keeps the most recently used states, keyed by the
//! projector's canonical form ([`ProjectorSpec::canonical`]), each with the
//! position it was folded through. The database stays the truth: a
//! remembered state is only ever handed to `crablet_reduce` as a prefix to
//! continue from (it folds the matching events after that position, an index
//! range scan), never used as an answer on its own. Commits happen in
//! position order, so no event at or below a state's position can appear
//! after the state was computed, in this process or any other; an append
//! from another process lies above it and is folded in by the next
//! evaluation.
//!
//! Bounded by `projections.state_cache_bytes` (keys and states, with a
//! fixed allowance per entry), least recently used out; 0 turns it off.
//!
//! A projector with no remembered state is evaluated by one request at a
//! time ([`ProjectionStates::first_evaluations`]): concurrent requests for it
//! wait, then continue from the state the first one left, instead of each
//! folding the whole history at once.
//! Counted in `crablet_projection_states_total{result="hit|miss|evicted"}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use tokio::sync::OwnedMutexGuard;

use crate::dcb::projection::ProjectorSpec;
use crate::dcb::Position;
use crate::metrics::Metrics;

/// Bytes counted per entry beside its key and state: the map's own entry,
/// the two strings' headers and the position.
const ENTRY_OVERHEAD: usize = 96;

/// A projector's state over the events through `through`, as JSON text
/// exactly as the database wrote it (a `sum` keeps every digit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub state: String,
    pub through: Position,
}

/// The remembered states of one process; shared by the writer lanes and the
/// readers.
pub struct ProjectionStates {
    /// `None` when turned off.
    inner: Option<Mutex<Inner>>,
    hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
    evictions: prometheus::IntCounter,
    /// Per projector being evaluated with no remembered state: held by the
    /// request evaluating it.
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while projectors with no remembered state are evaluated; see
/// [`ProjectionStates::first_evaluations`].
pub struct FirstEvaluations<'a> {
    states: &'a ProjectionStates,
    guards: Vec<OwnedMutexGuard<()>>,
    /// Whether a gate was looked up (and may have to be dropped).
    gated: bool,
}

impl FirstEvaluations<'_> {
    /// Whether this request evaluates some projector first (holds a gate).
    pub fn is_first(&self) -> bool {
        !self.guards.is_empty()
    }
}

impl Drop for FirstEvaluations<'_> {
    fn drop(&mut self) {
        if !self.gated {
            return;
        }
        self.guards.clear();
        // Gates nobody holds or waits for are dropped.
        lock(&self.states.gates).retain(|_, gate| Arc::strong_count(gate) > 1);
    }
}

struct Inner {
    entries: LruCache<String, Remembered>,
    bytes: usize,
    cap_bytes: usize,
}

fn size(key: &str, remembered: &Remembered) -> usize {
    key.len() + remembered.state.len() + ENTRY_OVERHEAD
}

impl ProjectionStates {
    /// Remembers states up to `cap_bytes` in all; 0 remembers nothing.
    pub fn new(cap_bytes: usize, metrics: &Metrics) -> Self {
        let counter = |result: &str| metrics.projection_states_total.with_label_values(&[result]);
        ProjectionStates {
            inner: (cap_bytes > 0).then(|| {
                Mutex::new(Inner {
                    entries: LruCache::unbounded(),
                    bytes: 0,
                    cap_bytes,
                })
            }),
            hits: counter("hit"),
            misses: counter("miss"),
            evictions: counter("evicted"),
            gates: Mutex::default(),
        }
    }

    /// Waits until this request is the only one evaluating each projector of
    /// `specs` that has no remembered state, and holds that until the
    /// returned value is dropped: a request that waited finds the state the
    /// one before it remembered, holds nothing, and folds only what came
    /// since, alongside the others.
    pub async fn first_evaluations<'a>(
        &'a self,
        specs: impl IntoIterator<Item = &'a ProjectorSpec>,
    ) -> FirstEvaluations<'a> {
        let mut held = FirstEvaluations {
            states: self,
            guards: Vec::new(),
            gated: false,
        };
        if !self.is_enabled() {
            return held;
        }
        let mut cold: Vec<&str> = specs
            .into_iter()
            .filter(|spec| !self.remembers(spec))
            .map(ProjectorSpec::canonical)
            .collect();
        // One order for every request: no two wait for each other.
        cold.sort_unstable();
        cold.dedup();
        for key in cold {
            held.gated = true;
            let gate = lock(&self.gates)
                .entry(key.to_string())
                .or_default()
                .clone();
            let guard = gate.lock_owned().await;
            // Remembered meanwhile, by the request that held the gate: this
            // one continues from that state, alongside any others.
            let remembered = self.remembers_key(key);
            if !remembered {
                held.guards.push(guard);
            }
        }
        held
    }

    /// Whether states are remembered at all (a cap above 0).
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether a state of `spec` is remembered (counts nothing, and does not
    /// make it more recently used).
    pub fn remembers(&self, spec: &ProjectorSpec) -> bool {
        self.remembers_key(spec.canonical())
    }

    fn remembers_key(&self, key: &str) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| lock(inner).entries.contains(key))
    }

    /// The remembered state of `spec`, if any (and counts a hit or a miss).
    pub fn recall(&self, spec: &ProjectorSpec) -> Option<Remembered> {
        let inner = self.inner.as_ref()?;
        let found = lock(inner).entries.get(spec.canonical()).cloned();
        match found {
            Some(_) => self.hits.inc(),
            None => self.misses.inc(),
        }
        found
    }

    /// Remembers `state` of `spec` through `through`, unless a state through
    /// a later position is remembered already.
    pub fn remember(&self, spec: &ProjectorSpec, state: String, through: Position) {
        let Some(inner) = self.inner.as_ref() else {
            return;
        };
        let key = spec.canonical();
        let remembered = Remembered { state, through };
        let added = size(key, &remembered);
        let mut inner = lock(inner);
        if added > inner.cap_bytes {
            return;
        }
        if let Some(known) = inner.entries.get_mut(key) {
            if known.through > through {
                return;
            }
            let old = size(key, known);
            *known = remembered;
            inner.bytes = inner.bytes - old + added;
        } else {
            inner.entries.put(key.to_string(), remembered);
            inner.bytes += added;
        }
        while inner.bytes > inner.cap_bytes {
            let Some((key, old)) = inner.entries.pop_lru() else {
                break;
            };
            inner.bytes -= size(&key, &old);
            self.evictions.inc();
        }
    }

    /// The projectors as `crablet_reduce_all` takes them, each with the
    /// state remembered for it: a JSON array of `{"q": projector, "s": state,
    /// "h": position, "b": budget}` (`s` absent and `h` 0 when none is
    /// remembered; `b`, the index entries an evaluation may visit, only with
    /// a `budget`).
    pub fn arguments<'a>(
        &self,
        specs: impl IntoIterator<Item = &'a ProjectorSpec>,
        budget: Option<i64>,
    ) -> String {
        let mut json = String::from("[");
        for (n, spec) in specs.into_iter().enumerate() {
            if n > 0 {
                json.push(',');
            }
            json.push_str("{\"q\":");
            json.push_str(spec.canonical());
            match self.recall(spec) {
                Some(known) => {
                    json.push_str(",\"s\":");
                    json.push_str(&known.state);
                    json.push_str(",\"h\":");
                    json.push_str(&known.through.to_string());
                }
                None => json.push_str(",\"h\":0"),
            }
            if let Some(budget) = budget {
                json.push_str(",\"b\":");
                json.push_str(&budget.to_string());
            }
            json.push('}');
        }
        json.push(']');
        json
    }

    /// Forgets every state: the store was emptied.
    pub fn forget_all(&self) {
        if let Some(inner) = self.inner.as_ref() {
            let mut inner = lock(inner);
            inner.entries.clear();
            inner.bytes = 0;
        }
    }

    /// Entries and bytes held (for tests).
    pub fn usage(&self) -> (usize, usize) {
        self.inner.as_ref().map_or((0, 0), |inner| {
            let inner = lock(inner);
            (inner.entries.len(), inner.bytes)
        })
    }
}

/// The cache holds no invariant a panic elsewhere could break halfway (every
/// update is a few assignments), so a poisoned lock is taken as it is.
fn lock<T>(inner: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcb::projection::{check_projector, Projector, Reducer};
    use crate::dcb::{Limits, Query, QueryItem};

    fn spec(tag: &str) -> ProjectorSpec {
        let projector = Projector {
            id: Some("p".into()),
            query: Query {
                items: vec![QueryItem {
                    types: vec![],
                    tags: vec![tag.into()],
                }],
            },
            reduce: Reducer::Count,
            path: None,
            limit: None,
            map: None,
        };
        check_projector("p", &projector, &Limits::default()).unwrap()
    }

    #[test]
    fn a_later_state_wins_and_an_earlier_one_never_replaces_it() {
        let states = ProjectionStates::new(1 << 20, &Metrics::new());
        let a = spec("course:1");
        assert_eq!(states.recall(&a), None);
        states.remember(&a, "5".into(), 50);
        states.remember(&a, "3".into(), 30);
        assert_eq!(
            states.recall(&a),
            Some(Remembered {
                state: "5".into(),
                through: 50
            })
        );
        states.remember(&a, "6".into(), 60);
        assert_eq!(states.recall(&a).unwrap().through, 60);
    }

    #[test]
    fn the_least_recently_used_states_go_first_and_the_bytes_stay_under_the_cap() {
        let one = size(
            spec("course:0").canonical(),
            &Remembered {
                state: "1".into(),
                through: 1,
            },
        );
        let states = ProjectionStates::new(one * 3, &Metrics::new());
        let specs: Vec<_> = (0..4).map(|k| spec(&format!("course:{k}"))).collect();
        for s in &specs[..3] {
            states.remember(s, "1".into(), 1);
        }
        assert!(states.recall(&specs[0]).is_some(), "course:0 used again");
        states.remember(&specs[3], "1".into(), 1);
        assert!(states.recall(&specs[1]).is_none(), "course:1 went first");
        assert!(states.recall(&specs[0]).is_some());
        let (entries, bytes) = states.usage();
        assert_eq!(entries, 3);
        assert!(bytes <= one * 3);
    }

    #[tokio::test]
    async fn a_cold_projector_is_evaluated_first_by_one_request_and_its_gate_is_dropped_after() {
        let states = ProjectionStates::new(1 << 20, &Metrics::new());
        let a = spec("course:1");
        let first = states.first_evaluations([&a]).await;
        assert!(first.is_first());
        // A second request waits while the first holds the gate...
        let waiting = states.first_evaluations([&a]);
        tokio::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        // ...and holds nothing once the first has remembered the state.
        states.remember(&a, "7".into(), 70);
        drop(first);
        let second = waiting.await;
        assert!(!second.is_first());
        drop(second);
        assert!(lock(&states.gates).is_empty(), "no gate left behind");
        let warm = states.first_evaluations([&a]).await;
        assert!(!warm.is_first(), "a remembered projector needs no gate");
    }

    #[test]
    fn a_cap_of_zero_remembers_nothing() {
        let states = ProjectionStates::new(0, &Metrics::new());
        let a = spec("course:1");
        states.remember(&a, "1".into(), 1);
        assert_eq!(states.recall(&a), None);
        assert_eq!(states.usage(), (0, 0));
    }
}
