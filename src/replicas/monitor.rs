//! The replica checks: every `replicas.check_interval_ms`, one statement on
//! the primary (its head) and one on each replica (its head, and whether it
//! is still a hot standby), each bounded by `replicas.check_timeout_ms`.
//! They set each replica's state, lag and metrics, so a replica that is
//! down, lagging or promoted leaves the rotation within one interval plus
//! one timeout, and rejoins at its first good check.
//!
//! Lag in time is measured against the primary's heads as sampled here: a
//! replica whose head is R is as old as the first sample in which the
//! primary held a position above R (0 when the primary holds nothing it has
//! not replayed). Unlike `pg_last_xact_replay_timestamp()`, it does not grow
//! while the primary is idle.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Replica, Sources, State};
use crate::dcb::Position;
use crate::metrics::Metrics;
use crate::store::{self, standby, StoreError};

/// Why a replica can never be used.
#[derive(Debug, thiserror::Error)]
#[error("replica {name}: {reason}")]
pub struct Refusal {
    pub name: String,
    pub reason: String,
}

/// The primary's heads of the last checks, oldest first.
struct Samples {
    samples: VecDeque<(Instant, Position)>,
    /// Samples kept: enough to measure lags well past `replicas.max_lag_ms`.
    keep: usize,
}

impl Samples {
    fn new(interval: Duration, max_lag: Duration) -> Self {
        let horizon = (max_lag * 4).max(Duration::from_secs(60));
        let keep = (horizon.as_millis() / interval.as_millis().max(1)).clamp(16, 10_000) as usize;
        Samples {
            samples: VecDeque::with_capacity(keep),
            keep,
        }
    }

    fn push(&mut self, at: Instant, head: Position) {
        if self.samples.len() == self.keep {
            self.samples.pop_front();
        }
        self.samples.push_back((at, head));
    }

    /// How long ago the primary first held a position above `replayed`.
    fn lag(&self, replayed: Position, now: Instant) -> Duration {
        self.samples
            .iter()
            .find(|(_, head)| *head > replayed)
            .map_or(Duration::ZERO, |(at, _)| now.saturating_duration_since(*at))
    }
}

/// Runs the checks until the process ends. The first round has run already
/// ([`first_check`]).
pub async fn run(sources: Sources, metrics: Metrics) {
    let settings = &sources.replicas.0.settings;
    let (interval, max_lag) = (settings.check_interval(), settings.max_lag());
    let mut samples = Samples::new(interval, max_lag);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        check_all(&sources, &mut samples, &metrics).await;
    }
}

/// The first round of checks, at start-up: a replica that answers but is
/// not a hot standby of the primary is refused (crablet does not start); one
/// that does not answer stays out of rotation until it does.
pub async fn first_check(sources: &Sources, metrics: &Metrics) -> Result<(), Refusal> {
    let settings = &sources.replicas.0.settings;
    let mut samples = Samples::new(settings.check_interval(), settings.max_lag());
    let primary_id = match store::checkout(&sources.primary.plain).await {
        Ok(conn) => standby::system_identifier(&conn.client).await,
        Err(_) => None,
    };
    for replica in sources.replicas.all() {
        let Ok(conn) = store::checkout(&replica.pools.plain).await else {
            continue;
        };
        let id = standby::system_identifier(&conn.client).await;
        if let (Some(primary), Some(id)) = (&primary_id, &id) {
            if primary != id {
                return Err(Refusal {
                    name: replica.name.clone(),
                    reason: format!(
                        "it belongs to another cluster (system identifier {id}, the primary's \
                         is {primary}): give hot standbys of the primary as replica URLs"
                    ),
                });
            }
        }
    }
    check_all(sources, &mut samples, metrics).await;
    match sources
        .replicas
        .all()
        .iter()
        .find(|r| r.state() == State::Refused)
    {
        Some(replica) => Err(Refusal {
            name: replica.name.clone(),
            reason: "it is not a hot standby (pg_is_in_recovery() is false): a replica URL must \
                     name a streaming replica of the primary, never the primary or another \
                     primary"
                .into(),
        }),
        None => Ok(()),
    }
}

/// One round: the primary's head, then every replica at once.
async fn check_all(sources: &Sources, samples: &mut Samples, metrics: &Metrics) {
    let replicas = &sources.replicas.0;
    let timeout = replicas.settings.check_timeout();
    let primary = tokio::time::timeout(timeout, async {
        let conn = store::checkout(&sources.primary.plain).await?;
        standby::last_position_of(&conn.client).await
    })
    .await;
    // The process's own head counts too: it may know of later commits.
    let primary_head = match primary {
        Ok(Ok(head)) => head.max(sources.head.known()),
        _ => sources.head.known(),
    };
    let now = Instant::now();
    samples.push(now, primary_head);
    let checks = replicas.replicas.iter().map(|replica| async move {
        let found = tokio::time::timeout(timeout, check(replica)).await;
        (replica, found)
    });
    for (replica, found) in futures_util::future::join_all(checks).await {
        let state = match found {
            Err(_) => {
                log_change(replica, State::Down, "its check timed out");
                State::Down
            }
            Ok(Err(e)) => {
                log_change(replica, State::Down, &e.to_string());
                State::Down
            }
            Ok(Ok(status)) if !status.in_recovery => {
                log_change(replica, State::Refused, "it is not a hot standby");
                State::Refused
            }
            Ok(Ok(status)) => {
                let lag = samples.lag(status.head, now);
                let behind = (primary_head - status.head).max(0);
                replica
                    .lag_positions
                    .store(behind, std::sync::atomic::Ordering::Release);
                replica
                    .lag_millis
                    .store(lag.as_millis() as u64, std::sync::atomic::Ordering::Release);
                metrics
                    .replica_lag_positions
                    .with_label_values(&[&replica.name])
                    .set(behind);
                metrics
                    .replica_lag_seconds
                    .with_label_values(&[&replica.name])
                    .set(lag.as_secs_f64());
                if lag > replicas.settings.max_lag() {
                    let why = format!("{} ms behind", lag.as_millis());
                    log_change(replica, State::Lagging, &why);
                    State::Lagging
                } else {
                    log_change(replica, State::Up, "it answers and keeps up");
                    State::Up
                }
            }
        };
        replica.set_state(state, metrics);
    }
}

/// One replica's status, raising its head.
async fn check(replica: &Replica) -> Result<standby::Status, StoreError> {
    let conn = store::checkout(&replica.pools.plain).await?;
    let status = standby::status(&conn.client).await?;
    replica.head.saw(status.head);
    Ok(status)
}

/// Logs a replica's change of state, once per change.
fn log_change(replica: &Replica, to: State, why: &str) {
    let from = replica.state();
    if from == to {
        return;
    }
    match to {
        State::Up => log::info!("replica {} is in rotation: {why}", replica.name),
        State::Refused => log::error!("replica {} is never used: {why}", replica.name),
        _ => log::warn!(
            "replica {} is out of rotation ({}): {why}",
            replica.name,
            to.name()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_first_primary_head_the_replica_lacks() {
        let start = Instant::now();
        let mut samples = Samples::new(Duration::from_millis(100), Duration::from_secs(1));
        samples.push(start, 10);
        samples.push(start + Duration::from_millis(100), 20);
        samples.push(start + Duration::from_millis(200), 30);
        let now = start + Duration::from_millis(200);
        assert_eq!(samples.lag(30, now), Duration::ZERO, "caught up");
        assert_eq!(
            samples.lag(25, now),
            Duration::ZERO,
            "behind by less than one check"
        );
        assert_eq!(samples.lag(15, now), Duration::from_millis(100));
        assert_eq!(samples.lag(5, now), Duration::from_millis(200));
    }

    #[test]
    fn an_idle_primary_is_no_lag() {
        let start = Instant::now();
        let mut samples = Samples::new(Duration::from_millis(100), Duration::from_secs(1));
        for i in 0..50 {
            samples.push(start + Duration::from_millis(100 * i), 7);
        }
        assert_eq!(
            samples.lag(7, start + Duration::from_secs(60)),
            Duration::ZERO
        );
    }

    #[test]
    fn old_samples_are_dropped() {
        let start = Instant::now();
        let mut samples = Samples::new(Duration::from_millis(100), Duration::from_secs(1));
        for i in 0..(samples.keep as u64 + 10) {
            samples.push(start + Duration::from_millis(100 * i), i as i64);
        }
        assert_eq!(samples.samples.len(), samples.keep);
    }
}
