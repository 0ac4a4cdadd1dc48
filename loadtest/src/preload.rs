//! Fast bulk loading: N events in large batched appends from a few concurrent
//! connections.
//!
//! Event `i` is of type `Preloaded` and carries the tag `<prefix>:<i / 10>`, so every
//! tag holds exactly [`EVENTS_PER_TAG`] events (the P4 read) and a batch of 1000
//! holds 100 complete tags. Batches are unconditional. A batch refused with 429/503
//! is retried a bounded number of times (nothing was written); any other failure
//! stops the preload, since retrying an unacknowledged batch could duplicate it.
//!
//! Also the data every event of the load tester carries ([`payload`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crablet_model::{AppendRequest, NewEvent};

use crate::http::{Conn, Target};

/// Events per preloaded tag.
pub const EVENTS_PER_TAG: u64 = 10;
/// Type of preloaded events.
pub const PRELOAD_TYPE: &str = "Preloaded";
/// Timeout of one batch append.
const BATCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Attempts per batch when the server sheds load.
const MAX_BATCH_ATTEMPTS: u32 = 20;
/// Pause after a shed batch, multiplied by the attempt number.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// Progress lines printed over a preload.
const PROGRESS_STEPS: u64 = 10;

/// What to preload.
#[derive(Debug, Clone)]
pub struct PreloadConfig {
    /// Total events.
    pub events: u64,
    /// Events per append request.
    pub batch: u64,
    /// Concurrent requests.
    pub concurrency: usize,
    /// Tag prefix (`<prefix>:<i / events_per_tag>`).
    pub tag_prefix: String,
    /// Events under each tag ([`EVENTS_PER_TAG`] for the P4 volume).
    pub events_per_tag: u64,
    /// Size of each event's data, bytes.
    pub data_bytes: usize,
    /// No progress lines.
    pub quiet: bool,
}

/// How the preload went.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PreloadResult {
    /// Events written.
    pub events: u64,
    /// Wall time.
    pub elapsed_s: f64,
    /// Events per second.
    pub events_per_s: f64,
    /// Batches retried after 429/503.
    pub retries: u64,
}

/// The data of an event, `{"p":"xx..."}`, `bytes` bytes long (at least the JSON
/// braces): what every scenario, the preload and the baselines store.
pub fn payload(bytes: usize) -> String {
    let filler = bytes.saturating_sub(r#"{"p":""}"#.len());
    format!(r#"{{"p":"{}"}}"#, "x".repeat(filler))
}

/// Event `i` of a preload whose tags hold `per_tag` events each.
pub fn preload_event(i: u64, tag_prefix: &str, per_tag: u64, data: &str) -> NewEvent {
    NewEvent::new(PRELOAD_TYPE, data).tag(format!("{tag_prefix}:{}", i / per_tag.max(1)))
}

/// Events `[first, end)` of batch `b`.
pub fn batch_range(b: u64, batch: u64, total: u64) -> (u64, u64) {
    let first = b.saturating_mul(batch).min(total);
    (first, first.saturating_add(batch).min(total))
}

/// Loads `cfg.events` events into the server at `target`.
pub async fn preload(target: &Target, cfg: &PreloadConfig) -> anyhow::Result<PreloadResult> {
    anyhow::ensure!(cfg.batch >= 1, "batch must be at least 1");
    anyhow::ensure!(cfg.concurrency >= 1, "concurrency must be at least 1");
    let batches = cfg.events.div_ceil(cfg.batch);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let data: Arc<str> = payload(cfg.data_bytes).into();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(cfg.concurrency);
    for _ in 0..cfg.concurrency {
        let (next, done, retries, data) =
            (next.clone(), done.clone(), retries.clone(), data.clone());
        let (target, cfg) = (target.clone(), cfg.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(target, BATCH_TIMEOUT);
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return anyhow::Ok(());
                }
                let (first, end) = batch_range(b, cfg.batch, cfg.events);
                let request = AppendRequest {
                    require: Vec::new(),
                    events: (first..end)
                        .map(|i| preload_event(i, &cfg.tag_prefix, cfg.events_per_tag, &data))
                        .collect(),
                    condition: None,
                };
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match conn.append(&request).await {
                        Ok(_) => break,
                        Err(e) if e.is_overload() && attempt < MAX_BATCH_ATTEMPTS => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(RETRY_BACKOFF * attempt).await;
                        }
                        Err(e) => {
                            return Err(e).with_context(|| {
                                format!("preload batch of events {first}..{end} failed")
                            })
                        }
                    }
                }
                let total = done.fetch_add(end - first, Ordering::Relaxed) + (end - first);
                let step = (cfg.events / PROGRESS_STEPS).max(1);
                if !cfg.quiet && total / step != (total - (end - first)) / step {
                    eprintln!(
                        "preload: {total}/{} events ({:.0} events/s)",
                        cfg.events,
                        total as f64 / started.elapsed().as_secs_f64()
                    );
                }
            }
        }));
    }
    for task in tasks {
        task.await.context("preload task panicked")??;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let events = done.load(Ordering::Relaxed);
    Ok(PreloadResult {
        events,
        elapsed_s,
        events_per_s: crate::report::per_second(events, elapsed_s),
        retries: retries.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_requested_size() {
        assert_eq!(payload(64).len(), 64);
        assert_eq!(payload(0), r#"{"p":""}"#);
    }

    #[test]
    fn every_tag_gets_ten_events_and_batches_hold_whole_tags() {
        let tag = |i| preload_event(i, "t", EVENTS_PER_TAG, "d").tags[0].clone();
        assert_eq!(tag(0), "t:0");
        assert_eq!(tag(9), "t:0");
        assert_eq!(tag(10), "t:1");
        assert_eq!(tag(999_999), "t:99999");
        assert_eq!(batch_range(0, 1000, 2500), (0, 1000));
        assert_eq!(batch_range(2, 1000, 2500), (2000, 2500));
        assert_eq!(batch_range(3, 1000, 2500), (2500, 2500));
    }
}
