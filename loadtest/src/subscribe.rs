//! The `subscribe` scenario: S subscribers follow `/subscribe` while W writers
//! append at a fixed total rate; measures delivery latency (append
//! acknowledged -> event received) and delivered events/s, and verifies that
//! every subscriber got exactly its events, once each, in order.
//!
//! Also here, for the bench: [`open_idle`] (P8, the memory a thousand idle
//! subscriptions cost the server) and [`catch_up`] (P9, how fast a new
//! subscriber reads its way through the stored log).
//!
//! Subscriber `i` asks for the events of its own tag; `everything` more
//! subscribers ask for every event of the run (the run's tag). Every append
//! writes one event tagged with the run and one subscriber's tag, round robin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crablet_model::{AppendRequest, NewEvent, Position, Query};
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, HOST};
use hyper::Request;
use serde::Serialize;

use crate::http::{connect, AppendOutcome, Conn, Target};
use crate::paths::subscribe_path;

/// How the scenario is shaped.
#[derive(Debug, Clone)]
pub struct SubscribeConfig {
    pub target: Target,
    /// Subscribers with a tag of their own.
    pub subscribers: usize,
    /// Subscribers to every event of the run.
    pub everything: usize,
    /// Writer connections.
    pub writers: usize,
    /// Appends per second over all writers (one event each).
    pub rate: f64,
    pub duration: Duration,
    pub data_bytes: usize,
    /// Part of every tag written, so runs do not see each other.
    pub run_id: String,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct SubscribeReport {
    pub subscribers: usize,
    pub appended: u64,
    pub delivered: u64,
    pub delivered_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub missing: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

impl SubscribeReport {
    pub fn passed(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.out_of_order == 0
    }

    pub fn summary(&self) -> String {
        format!(
            "subscribe: {} subscribers, {} events appended, {} delivered ({:.0} events/s)\n  delivery latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n  verification: {} missing, {} duplicated, {} out of order: {}\n",
            self.subscribers,
            self.appended,
            self.delivered,
            self.delivered_per_s,
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.latency_max_ms,
            self.missing,
            self.duplicated,
            self.out_of_order,
            if self.passed() { "passed" } else { "FAILED" }
        )
    }
}

/// Positions received by one subscriber, with when each arrived.
type Received = Arc<Mutex<Vec<(Position, Instant)>>>;

/// Opens `GET /subscribe` (NDJSON) on a connection of its own and returns
/// the body once the answer is `200`.
async fn open_stream(
    target: &Target,
    query: &Query,
    after: Position,
) -> anyhow::Result<hyper::body::Incoming> {
    let mut sender = connect(target)
        .await
        .map_err(|e| anyhow::anyhow!("subscribe: {e}"))?;
    let mut request = Request::builder()
        .uri(subscribe_path(query, after))
        .header(HOST, target.url().trim_start_matches("http://"))
        .header(ACCEPT, "application/x-ndjson");
    if let Some(authorization) = target.authorization() {
        request = request.header(hyper::header::AUTHORIZATION, authorization);
    }
    let request = request.body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(
        response.status() == 200,
        "subscribe answered {}",
        response.status()
    );
    Ok(response.into_body())
}

/// Opens one subscription and records what arrives until `until`.
async fn follow(
    target: Target,
    query: Query,
    after: Position,
    received: Received,
    until: Instant,
) -> anyhow::Result<()> {
    let mut body = open_stream(&target, &query, after).await?;
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let frame = match tokio::time::timeout(left, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            _ => return Ok(()),
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let now = Instant::now();
        buffer.extend_from_slice(data);
        let mut start = 0;
        let mut got = Vec::new();
        while let Some(end) = buffer[start..].iter().position(|b| *b == b'\n') {
            let line = &buffer[start..start + end];
            start += end + 1;
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) {
                if let Some(p) = value.get("position").and_then(|p| p.as_i64()) {
                    got.push((p, now));
                }
            }
        }
        buffer.drain(..start);
        if !got.is_empty() {
            received
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .extend(got);
        }
    }
}

/// Runs the scenario.
pub async fn run(cfg: &SubscribeConfig) -> anyhow::Result<SubscribeReport> {
    let run_tag = format!("run:{}", cfg.run_id);
    let own_tag = |i: usize| format!("sub:{}:{i}", cfg.run_id);
    let mut head_conn = Conn::new(cfg.target.clone(), Duration::from_secs(30));
    let after = match head_conn
        .append(&AppendRequest {
            require: Vec::new(),
            events: vec![NewEvent::new("SubscribeStart", "").tag(format!("start:{}", cfg.run_id))],
            condition: None,
        })
        .await
    {
        Ok(AppendOutcome::Appended {
            last_position: Some(p),
        }) => p,
        other => anyhow::bail!("cannot append the start marker: {other:?}"),
    };
    let drain = Duration::from_secs(5);
    let until = Instant::now() + cfg.duration + drain + Duration::from_secs(5);
    let total = cfg.subscribers + cfg.everything;
    let mut received: Vec<Received> = Vec::with_capacity(total);
    let mut followers = Vec::with_capacity(total);
    for i in 0..total {
        let query = if i < cfg.subscribers {
            Query::tag(own_tag(i))
        } else {
            Query::tag(run_tag.clone())
        };
        let r: Received = Arc::default();
        received.push(r.clone());
        followers.push(tokio::spawn(follow(
            cfg.target.clone(),
            query,
            after,
            r,
            until,
        )));
    }
    // Let every subscriber catch up and join the live feed.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Writers: position -> (subscriber, acknowledged at).
    let acks: Arc<Mutex<HashMap<Position, (usize, Instant)>>> = Arc::default();
    let started = Instant::now();
    let per_writer = cfg.rate / cfg.writers.max(1) as f64;
    let interval = Duration::from_secs_f64(1.0 / per_writer.max(0.001));
    let mut writers = Vec::new();
    for w in 0..cfg.writers {
        let (target, acks, run_tag) = (cfg.target.clone(), acks.clone(), run_tag.clone());
        let (subscribers, writers_n, duration) =
            (cfg.subscribers.max(1), cfg.writers, cfg.duration);
        let tags: Vec<String> = (0..subscribers).map(own_tag).collect();
        let data = "x".repeat(cfg.data_bytes);
        writers.push(tokio::spawn(async move {
            let mut conn = Conn::new(target, Duration::from_secs(30));
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0usize;
            while started.elapsed() < duration {
                ticker.tick().await;
                let k = (n * writers_n + w) % subscribers;
                n += 1;
                let request = AppendRequest {
                    require: Vec::new(),
                    events: vec![NewEvent {
                        tags: vec![run_tag.clone(), tags[k].clone()],
                        ..NewEvent::new("Delivered", data.clone())
                    }],
                    condition: None,
                };
                if let Ok(AppendOutcome::Appended {
                    last_position: Some(p),
                }) = conn.append(&request).await
                {
                    let now = Instant::now();
                    if let Ok(mut acks) = acks.lock() {
                        acks.insert(p, (k, now));
                    }
                }
            }
        }));
    }
    for w in writers {
        let _ = w.await;
    }
    let write_time = started.elapsed();
    let acks = acks
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let mut all: Vec<Position> = acks.keys().copied().collect();
    all.sort_unstable();
    let expected: Vec<Vec<Position>> = (0..total)
        .map(|i| {
            if i < cfg.subscribers {
                all.iter().copied().filter(|p| acks[p].0 == i).collect()
            } else {
                all.clone()
            }
        })
        .collect();
    // Wait until every subscriber has everything, or the drain time passes.
    let drain_until = Instant::now() + drain;
    while Instant::now() < drain_until {
        let done = received
            .iter()
            .zip(&expected)
            .all(|(r, e)| r.lock().map(|r| r.len() >= e.len()).unwrap_or(true));
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for f in &followers {
        f.abort();
    }
    let mut latencies_us: Vec<u64> = Vec::new();
    let (mut missing, mut duplicated, mut out_of_order, mut delivered) = (0u64, 0u64, 0u64, 0u64);
    for (r, e) in received.iter().zip(&expected) {
        let r = r.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
        delivered += r.len() as u64;
        let mut seen: HashMap<Position, usize> = HashMap::new();
        for (p, at) in &r {
            *seen.entry(*p).or_default() += 1;
            if let Some((_, acked)) = acks.get(p) {
                latencies_us.push(at.saturating_duration_since(*acked).as_micros() as u64);
            }
        }
        missing += e.iter().filter(|p| !seen.contains_key(p)).count() as u64;
        duplicated += seen.values().filter(|n| **n > 1).count() as u64;
        out_of_order += r.windows(2).filter(|w| w[0].0 >= w[1].0).count() as u64;
        // Events of other subscribers would be errors too.
        missing += r.iter().filter(|(p, _)| !acks.contains_key(p)).count() as u64;
    }
    latencies_us.sort_unstable();
    let pick = |q: f64| -> f64 {
        if latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((latencies_us.len() as f64 - 1.0) * q).round() as usize;
        latencies_us[i] as f64 / 1000.0
    };
    Ok(SubscribeReport {
        subscribers: total,
        appended: all.len() as u64,
        delivered,
        delivered_per_s: delivered as f64 / write_time.as_secs_f64().max(0.001),
        latency_p50_ms: pick(0.5),
        latency_p99_ms: pick(0.99),
        latency_max_ms: pick(1.0),
        missing,
        duplicated,
        out_of_order,
    })
}

/// Subscriptions held open on tags nobody writes, until dropped.
pub struct IdleSubscribers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl IdleSubscribers {
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl Drop for IdleSubscribers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Opens `n` subscriptions (one connection each) to tags of their own that
/// nobody writes, and returns once every one has been answered `200`.
pub async fn open_idle(target: &Target, n: usize, run_id: &str) -> anyhow::Result<IdleSubscribers> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..n {
        let target = target.clone();
        let query = Query::tag(format!("idle:{run_id}:{i}"));
        opening.spawn(async move { open_stream(&target, &query, 0).await });
    }
    let mut tasks = Vec::with_capacity(n);
    while let Some(opened) = opening.join_next().await {
        let mut body = opened??;
        // Read heartbeats (and anything else) so the stream stays healthy.
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(_)) = body.frame().await {}
        }));
    }
    Ok(IdleSubscribers { tasks })
}

/// What a catch-up subscriber measured.
#[derive(Debug, Clone, Serialize)]
pub struct CatchUp {
    /// Events received before reaching the head.
    pub events: u64,
    pub seconds: f64,
    pub events_per_s: f64,
}

/// Subscribes to every event from the start of the log and reads until the
/// event at `head` arrives. Lines are counted, not parsed (only the last one
/// of each chunk is), so the client keeps up with the server.
pub async fn catch_up(target: &Target, head: Position) -> anyhow::Result<CatchUp> {
    let started = Instant::now();
    let mut body = open_stream(target, &Query::all(), 0).await?;
    let (mut events, mut partial) = (0u64, Vec::new());
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .map_err(|_| anyhow::anyhow!("catch-up stalled after {events} events"))?
            .ok_or_else(|| anyhow::anyhow!("catch-up stream ended after {events} events"))??;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        partial.extend_from_slice(data);
        let Some(last_newline) = partial.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let complete = &partial[..last_newline];
        events += complete
            .split(|b| *b == b'\n')
            .filter(|line| line.starts_with(b"{\"type\""))
            .count() as u64;
        let last_line = complete.rsplit(|b| *b == b'\n').next().unwrap_or_default();
        let last = serde_json::from_slice::<serde_json::Value>(last_line)
            .ok()
            .and_then(|v| v.get("position").and_then(|p| p.as_i64()));
        partial.drain(..=last_newline);
        if last.is_some_and(|p| p >= head) {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(CatchUp {
        events,
        seconds,
        events_per_s: events as f64 / seconds.max(1e-9),
    })
}
