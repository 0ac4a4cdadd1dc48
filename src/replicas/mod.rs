//! Read replicas: which database serves a read.
//!
//! With `database.replica_urls` set, reads, subscriptions, `/head` and
//! `/project` are served by a hot standby of the primary; appends, their
//! conditions and their requirements always run on the primary. A physical
//! replica replays the primary's WAL in commit order, and crablet commits
//! in position order, so what a replica holds is always a gap-free prefix of
//! the log: it may be behind, never holey. That is what makes it safe to
//! read from: a page read "after P" on a replica misses nothing it will not
//! show later, and a head answered by a replica is a position every event
//! at or below which that replica has replayed.
//!
//! [`Sources`] picks the source of each request from its [`Route`]:
//! - round robin over the replicas *in rotation*: up, a standby of this
//!   primary, and lagging by at most `replicas.max_lag_ms` (the [`monitor`]
//!   checks each every `replicas.check_interval_ms`); none in rotation: the
//!   primary;
//! - read your writes: a request is served by a replica only once it has
//!   replayed through the request's minimum position (`minPosition`) and
//!   through every position this process has acknowledged or seen (so a
//!   client never reads older than what the process it talks to has
//!   answered), waiting up to `replicas.min_position_wait_ms`, then by the
//!   primary, which holds every acknowledged append. While requests wait
//!   for a replica, one task per replica asks it for its head every
//!   millisecond and wakes them: one query per replica, however many wait;
//! - a read of several pages stays on the source of its first page (a later
//!   page from a replica further behind would end the read early);
//! - a replica that fails a request is taken out of rotation at once and
//!   the request is served by the primary, so the client never sees it.
//!
//! Each source has its own head ([`crate::head::Head`]), the highest position
//! seen replayed there: the head a replica's read answers is that replica's,
//! never the primary's, so a client that appends after it never skips an
//! event the replica did not show.

pub mod monitor;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::actors::ReaderPools;
use crate::config::ReplicaSettings;
use crate::dcb::Position;
use crate::head::Head;
use crate::metrics::Metrics;
use crate::store::{self, StoreError};

/// The database a request was served by (`X-Crablet-Source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Primary,
    /// The replica at this index of `database.replica_urls`.
    Replica(usize),
}

impl Source {
    /// The value of the `X-Crablet-Source` header.
    pub fn name(self) -> &'static str {
        match self {
            Source::Primary => "primary",
            Source::Replica(_) => "replica",
        }
    }
}

/// Where a request may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Only by the primary: what decides an append, and `/health`.
    Primary,
    /// By any replica in rotation that has replayed through `min_position`
    /// (when given), else by the primary.
    Any { min_position: Option<Position> },
    /// By the source that served the first page of the same read, while it
    /// is in rotation; else by the primary.
    Pinned(Source),
    /// The subscription tailer's reads: any replica in rotation, else the
    /// direct connection of `database.listen_database_url` when set, else
    /// the primary.
    Follow,
}

/// Where one request runs: its pools, the source's name and head.
#[derive(Clone)]
pub struct Target {
    pub pools: ReaderPools,
    pub source: Source,
    /// The head of the source: the head a read answers is this one's.
    pub head: Head,
}

/// Every database a reader can read from; cheap to clone.
#[derive(Clone)]
pub struct Sources {
    pub primary: ReaderPools,
    /// The process's committed head, the primary's.
    pub head: Head,
    /// The log follower's direct connection (`database.listen_database_url`).
    pub follow: Option<ReaderPools>,
    pub replicas: Replicas,
}

impl Sources {
    /// The primary alone.
    pub fn primary(pools: ReaderPools, head: Head) -> Self {
        Sources {
            primary: pools,
            head,
            follow: None,
            replicas: Replicas::none(),
        }
    }

    fn on_primary(&self) -> Target {
        Target {
            pools: self.primary.clone(),
            source: Source::Primary,
            head: self.head.clone(),
        }
    }

    /// The target of a request routed by `route`; may wait for a replica to
    /// replay through the route's minimum position.
    pub async fn pick(&self, route: Route) -> Target {
        let replicas = &self.replicas;
        if replicas.is_empty() {
            return match (route, &self.follow) {
                (Route::Follow, Some(follow)) => Target {
                    pools: follow.clone(),
                    ..self.on_primary()
                },
                _ => self.on_primary(),
            };
        }
        let picked = match route {
            Route::Primary | Route::Pinned(Source::Primary) => return self.on_primary(),
            Route::Pinned(Source::Replica(index)) => {
                let replica = &replicas.0.replicas[index];
                if replica.in_rotation() {
                    Some(index)
                } else {
                    replicas.fell_back(replica.state().reason());
                    None
                }
            }
            Route::Follow => replicas.next_in_rotation(),
            Route::Any { min_position } => match replicas.next_in_rotation() {
                Some(index) => {
                    let min = min_position.unwrap_or(0).max(self.head.known());
                    if replicas.replayed(index, min).await {
                        Some(index)
                    } else {
                        replicas.fell_back("min_position");
                        None
                    }
                }
                None => None,
            },
        };
        match picked {
            Some(index) => {
                let replica = &replicas.0.replicas[index];
                Target {
                    pools: replica.pools.clone(),
                    source: Source::Replica(index),
                    head: replica.head.clone(),
                }
            }
            None if route == Route::Follow => Target {
                pools: self.follow.clone().unwrap_or_else(|| self.primary.clone()),
                ..self.on_primary()
            },
            None => self.on_primary(),
        }
    }

    /// Runs `work` on the target of `route`: a replica that fails it is
    /// taken out of rotation and the primary runs it again (see
    /// [`Sources::served`]). Answers the target that ran it last.
    pub async fn serve<T, Work, Done>(
        &self,
        route: Route,
        work: Work,
    ) -> (Target, Result<T, StoreError>)
    where
        Work: Fn(Target) -> Done,
        Done: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut target = self.pick(route).await;
        loop {
            let result = work(target.clone()).await;
            match &result {
                Err(e) if self.served(target.source, Some(e)) => target = self.on_primary(),
                Err(_) => return (target, result),
                Ok(_) => {
                    self.served(target.source, None);
                    return (target, result);
                }
            }
        }
    }

    /// Records that `source` served a request, or failed it with `error`:
    /// a replica that failed for want of a connection or a database is
    /// taken out of rotation until its next good check. Answers whether the
    /// request should be served again by the primary.
    fn served(&self, source: Source, error: Option<&StoreError>) -> bool {
        let Source::Replica(index) = source else {
            return false;
        };
        let replicas = &self.replicas;
        let replica = &replicas.0.replicas[index];
        match error {
            None => {
                replicas
                    .0
                    .metrics
                    .replica_requests_total
                    .with_label_values(&[&replica.name])
                    .inc();
                false
            }
            Some(e) if e.is_statement_timeout() => false,
            Some(e) => {
                log::warn!(
                    "replica {} failed a read ({e}); out of rotation until it answers its checks",
                    replica.name
                );
                replica.set_state(State::Down, &replicas.0.metrics);
                replicas.fell_back("failed");
                true
            }
        }
    }
}

/// How often a replica is asked for its head while requests wait for it.
const ASK_INTERVAL: Duration = Duration::from_millis(1);

/// A request waiting for a replica, counted while it lives.
struct Waiting<'a>(&'a Replica);

impl<'a> Waiting<'a> {
    fn on(replica: &'a Replica) -> Self {
        replica.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(replica)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The replicas of `database.replica_urls`; cheap to clone.
#[derive(Clone)]
pub struct Replicas(Arc<Inner>);

struct Inner {
    replicas: Vec<Replica>,
    /// Round robin.
    next: AtomicUsize,
    settings: ReplicaSettings,
    metrics: Metrics,
}

/// One replica: its pools, its head and what its checks found.
pub struct Replica {
    /// `host:port` of its URL, the `replica` label of its metrics.
    pub name: String,
    pub pools: ReaderPools,
    /// The highest position seen replayed on it.
    pub head: Head,
    state: AtomicU8,
    lag_positions: AtomicI64,
    lag_millis: AtomicU64,
    /// Requests waiting for it to replay a position, and whether the task
    /// that asks it for its head meanwhile runs.
    waiting: AtomicUsize,
    asking: AtomicBool,
}

/// What a replica's last check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not checked yet: out of rotation until its first good check.
    Unknown = 0,
    Up = 1,
    /// Unreachable, or its check failed or timed out.
    Down = 2,
    /// Behind the primary by more than `replicas.max_lag_ms`.
    Lagging = 3,
    /// Reachable but not a hot standby of this primary: never used.
    Refused = 4,
}

impl State {
    fn of(value: u8) -> Self {
        match value {
            1 => State::Up,
            2 => State::Down,
            3 => State::Lagging,
            4 => State::Refused,
            _ => State::Unknown,
        }
    }

    /// As `/health` names it.
    pub fn name(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Up => "up",
            State::Down => "down",
            State::Lagging => "lagging",
            State::Refused => "refused",
        }
    }

    /// The `reason` label of a fallback while a replica is in this state.
    fn reason(self) -> &'static str {
        match self {
            State::Lagging => "lagging",
            _ => "down",
        }
    }
}

impl Replica {
    pub fn new(name: String, pools: ReaderPools) -> Self {
        Replica {
            name,
            pools,
            head: Head::new(),
            state: AtomicU8::new(State::Unknown as u8),
            lag_positions: AtomicI64::new(0),
            lag_millis: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            asking: AtomicBool::new(false),
        }
    }

    pub fn state(&self) -> State {
        State::of(self.state.load(Ordering::Acquire))
    }

    fn in_rotation(&self) -> bool {
        self.state() == State::Up
    }

    fn set_state(&self, state: State, metrics: &Metrics) {
        self.state.store(state as u8, Ordering::Release);
        metrics
            .replica_up
            .with_label_values(&[&self.name])
            .set(i64::from(state == State::Up));
    }

    /// Lag in positions and in time, as the last check measured it.
    pub fn lag(&self) -> (Position, Duration) {
        (
            self.lag_positions.load(Ordering::Acquire),
            Duration::from_millis(self.lag_millis.load(Ordering::Acquire)),
        )
    }

    /// Asks the replica for its head (a plain connection, one index probe)
    /// and raises [`Replica::head`] to it.
    async fn check_head(&self) -> Result<Position, StoreError> {
        let conn = store::checkout(&self.pools.plain).await?;
        let head = store::standby::last_position_of(&conn.client).await?;
        self.head.saw(head);
        Ok(head)
    }
}

impl Replicas {
    pub fn new(replicas: Vec<Replica>, settings: &ReplicaSettings, metrics: &Metrics) -> Self {
        for replica in &replicas {
            replica.set_state(State::Unknown, metrics);
            metrics
                .replica_requests_total
                .with_label_values(&[&replica.name]);
        }
        for reason in ["down", "lagging", "min_position", "failed"] {
            metrics.replica_fallbacks_total.with_label_values(&[reason]);
        }
        Replicas(Arc::new(Inner {
            replicas,
            next: AtomicUsize::new(0),
            settings: settings.clone(),
            metrics: metrics.clone(),
        }))
    }

    /// No replica: every request goes to the primary.
    pub fn none() -> Self {
        Replicas(Arc::new(Inner {
            replicas: Vec::new(),
            next: AtomicUsize::new(0),
            settings: ReplicaSettings {
                pool_size: 1,
                costly_pool_size: 1,
                check_interval_ms: 1000,
                check_timeout_ms: 1000,
                max_lag_ms: 0,
                min_position_wait_ms: 0,
            },
            metrics: Metrics::new(),
        }))
    }

    pub fn is_empty(&self) -> bool {
        self.0.replicas.is_empty()
    }

    /// Where the live feed is read now: a replica while one is in rotation.
    pub fn follows(&self) -> Source {
        self.0
            .replicas
            .iter()
            .position(Replica::in_rotation)
            .map_or(Source::Primary, Source::Replica)
    }

    /// Every replica, in the order of `database.replica_urls`.
    pub fn all(&self) -> &[Replica] {
        &self.0.replicas
    }

    /// The next replica in rotation, round robin; `None` (counted as a
    /// fallback) when none is.
    fn next_in_rotation(&self) -> Option<usize> {
        let replicas = &self.0.replicas;
        let start = self.0.next.fetch_add(1, Ordering::Relaxed);
        let found = (0..replicas.len())
            .map(|i| (start + i) % replicas.len())
            .find(|&i| replicas[i].in_rotation());
        if found.is_none() {
            let lagging = replicas.iter().any(|r| r.state() == State::Lagging);
            self.fell_back(if lagging { "lagging" } else { "down" });
        }
        found
    }

    fn fell_back(&self, reason: &str) {
        self.0
            .metrics
            .replica_fallbacks_total
            .with_label_values(&[reason])
            .inc();
    }

    /// Whether replica `index` has replayed through `min`, waiting up to
    /// `replicas.min_position_wait_ms` for it to.
    async fn replayed(&self, index: usize, min: Position) -> bool {
        let replica = &self.0.replicas[index];
        if replica.head.known() >= min {
            return true;
        }
        let deadline = tokio::time::Instant::now() + self.0.settings.min_position_wait();
        let mut advances = replica.head.advances();
        let _waiting = Waiting::on(replica);
        self.keep_asking(index);
        loop {
            if replica.head.known() >= min {
                return true;
            }
            if !replica.in_rotation() {
                return false;
            }
            tokio::select! {
                changed = advances.changed() => if changed.is_err() { return false },
                _ = tokio::time::sleep_until(deadline) => return replica.head.known() >= min,
            }
        }
    }

    /// Starts the task that asks replica `index` for its head every
    /// millisecond while requests wait for it, unless it runs already.
    fn keep_asking(&self, index: usize) {
        let replica = &self.0.replicas[index];
        if replica.asking.swap(true, Ordering::AcqRel) {
            return;
        }
        let replicas = self.clone();
        actix_rt::spawn(async move {
            let replica = &replicas.0.replicas[index];
            while replica.waiting.load(Ordering::Acquire) > 0 && replica.in_rotation() {
                if let Err(e) = replica.check_head().await {
                    log::warn!("replica {}: {e}", replica.name);
                    replica.set_state(State::Down, &replicas.0.metrics);
                }
                tokio::time::sleep(ASK_INTERVAL).await;
            }
            replica.asking.store(false, Ordering::Release);
            // A request that began waiting as the task was ending.
            if replica.waiting.load(Ordering::Acquire) > 0 && replica.in_rotation() {
                replicas.keep_asking(index);
            }
        });
    }
}
