//! The engines that run N virtual clients for a bounded time.
//!
//! - **Closed loop**: each client sends, awaits the reply, and sends again, until
//!   the deadline. Latency is the time of each operation.
//! - **Open loop**: operations are scheduled at a constant rate (slot `i` is due at
//!   `start + i / rate`). A pacer thread releases each slot at its due time (OS
//!   sleep, tens of µs of slack, where tokio's timer has 1 ms) into a queue; a free
//!   client takes the next slot and sends at once. Latency is measured from the
//!   slot's *intended* time, so a stalled server shows up as queueing delay instead
//!   of being hidden by clients that stopped sending (coordinated omission); the
//!   service time from the actual send is kept beside it. Slots still unsent at the
//!   deadline are counted as `unsent`.
//!
//! Clients connect before the clock starts. Each owns its connection, random stream
//! and stats; nothing is shared on the hot path but two relaxed atomic counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, watch, Barrier, Mutex};

use crate::http::{Conn, Target};
use crate::procfs::CpuSnapshot;
use crate::report::Report;
use crate::scenario::{ClientCtx, Scenario, ScenarioConfig};
use crate::stats::{Outcome, Stats};

/// Pause after a transport failure before the next attempt, so a dead server does
/// not turn a client into a busy loop.
const TRANSPORT_ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// Open loop: a slot due before the deadline is still sent this long after it (a
/// slot released just before the deadline is not "unsent").
const OPEN_LOOP_DRAIN_GRACE: Duration = Duration::from_millis(100);
/// Interval of progress lines.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// Spreads per-client seeds apart.
const SEED_STRIDE: u64 = 0x9E37_79B9_7F4A_7C15;

/// One run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The server.
    pub target: Target,
    /// The workload.
    pub scenario: ScenarioConfig,
    /// Virtual clients, one connection each.
    pub clients: usize,
    /// How long the load lasts.
    pub duration: Duration,
    /// Open loop at this many operations per second; None: closed loop.
    pub rate: Option<f64>,
    /// Seed of the clients' random streams.
    pub seed: u64,
    /// Bound on one request.
    pub request_timeout: Duration,
    /// Print a progress line every few seconds (stderr).
    pub progress: bool,
    /// Run the scenario's setup (preloading read tags when missing).
    pub setup: bool,
    /// Verify the log afterwards (scenarios that can).
    pub verify: bool,
}

/// Counters shared with observers while a run is going (the bench's RSS sampler).
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Operations completed so far.
    pub completed: AtomicU64,
}

/// Runs the load and returns its report.
pub async fn run(cfg: &RunConfig, live: Arc<LiveCounters>) -> anyhow::Result<Report> {
    anyhow::ensure!(cfg.clients >= 1, "at least one client");
    if let Some(rate) = cfg.rate {
        anyhow::ensure!(rate.is_finite() && rate > 0.0, "rate must be > 0");
    }
    let scenario = Arc::new(Scenario::new(cfg.scenario.clone())?);
    let mut probe = Conn::new(cfg.target.clone(), cfg.request_timeout);
    probe
        .health()
        .await
        .with_context(|| format!("server at {} is not healthy", cfg.target.url()))?;
    if cfg.setup {
        scenario.setup(&cfg.target).await?;
    }

    let (start_tx, start_rx) = watch::channel::<Option<Instant>>(None);
    let ready = Arc::new(Barrier::new(cfg.clients + 1));
    let (slot_tx, slot_rx) = mpsc::channel::<Instant>(slot_queue_capacity(cfg.rate));
    let slots = Arc::new(Mutex::new(slot_rx));
    let mut handles = Vec::with_capacity(cfg.clients);
    for id in 0..cfg.clients {
        let mut ctx = ClientCtx {
            id,
            seq: 0,
            rng: SmallRng::seed_from_u64(cfg.seed ^ (id as u64).wrapping_mul(SEED_STRIDE)),
            conn: Conn::new(cfg.target.clone(), cfg.request_timeout),
            stats: Stats::default(),
            acked: Vec::new(),
        };
        let (scenario, ready, live, slots) =
            (scenario.clone(), ready.clone(), live.clone(), slots.clone());
        let mut start_rx = start_rx.clone();
        let (duration, rate) = (cfg.duration, cfg.rate);
        handles.push(tokio::spawn(async move {
            // Connect before the clock starts; a failure shows up on the first op.
            let _ = ctx.conn.health().await;
            ready.wait().await;
            let start = match start_rx.wait_for(Option::is_some).await {
                Ok(start) => start.unwrap_or_else(Instant::now),
                Err(_) => return ctx,
            };
            let deadline = start + duration;
            match rate {
                None => closed_loop(&scenario, &mut ctx, deadline, &live).await,
                Some(_) => open_loop(&scenario, &mut ctx, deadline, &slots, &live).await,
            }
            ctx
        }));
    }
    // Only the clients hold the slot queue now: when they are all gone, the pacer's
    // next send fails and it stops.
    drop(slots);
    ready.wait().await;
    let cpu = CpuSnapshot::now();
    let start = Instant::now();
    // Receivers live in the client tasks until they end, so this cannot fail.
    let _ = start_tx.send(Some(start));
    if let Some(rate) = cfg.rate {
        let scheduled = scheduled_slots(cfg.duration, rate);
        std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || pace(&slot_tx, start, scheduled, rate))
            .context("starting the pacer thread")?;
    } else {
        drop(slot_tx);
    }
    let progress = cfg
        .progress
        .then(|| tokio::spawn(progress_lines(start, live.clone())));

    let mut stats = Stats::default();
    let mut acked = Vec::new();
    for handle in handles {
        let ctx = handle.await.context("a client task panicked")?;
        stats.merge(&ctx.stats);
        acked.extend(ctx.acked);
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let cpu = cpu.usage_since();
    if let Some(p) = progress {
        p.abort();
    }
    let unsent = match cfg.rate {
        Some(rate) => {
            let scheduled = scheduled_slots(cfg.duration, rate);
            let sent: u64 = stats.labels.values().map(|s| s.total()).sum();
            scheduled.saturating_sub(sent)
        }
        None => 0,
    };
    let mut report = Report::build(
        cfg.scenario.kind.name(),
        cfg.clients,
        cfg.rate,
        cfg.duration.as_secs_f64(),
        elapsed_s,
        &cfg.scenario.run_id,
        scenario.primary_label(),
        &stats,
        unsent,
    );
    report.set_cpu(cpu);
    if cfg.verify && scenario.verifies() {
        report.verification = scenario.verify(&cfg.target, &acked).await?;
    }
    Ok(report)
}

async fn closed_loop(
    scenario: &Scenario,
    ctx: &mut ClientCtx,
    deadline: Instant,
    live: &LiveCounters,
) {
    while Instant::now() < deadline {
        let began = Instant::now();
        let (label, outcome) = scenario.op(ctx).await;
        ctx.stats.record(label, began.elapsed(), outcome.clone());
        after_op(&outcome, live).await;
    }
}

/// Slots due before the deadline.
fn scheduled_slots(duration: Duration, rate: f64) -> u64 {
    (duration.as_secs_f64() * rate).ceil() as u64
}

/// Room for about a second of slots (bounded), so the pacer rarely waits on a
/// stalled server; when it does, slots still carry their intended time.
fn slot_queue_capacity(rate: Option<f64>) -> usize {
    const MIN_CAPACITY: usize = 1024;
    const MAX_CAPACITY: usize = 100_000;
    rate.map_or(1, |r| (r as usize).clamp(MIN_CAPACITY, MAX_CAPACITY))
}

/// The pacer thread: releases slot `i` at `start + i / rate`, `scheduled` slots.
fn pace(slots: &mpsc::Sender<Instant>, start: Instant, scheduled: u64, rate: f64) {
    for slot in 0..scheduled {
        let intended = start + Duration::from_secs_f64(slot as f64 / rate);
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        if slots.blocking_send(intended).is_err() {
            return;
        }
    }
}

async fn open_loop(
    scenario: &Scenario,
    ctx: &mut ClientCtx,
    deadline: Instant,
    slots: &Mutex<mpsc::Receiver<Instant>>,
    live: &LiveCounters,
) {
    loop {
        let slot = slots.lock().await.recv().await;
        let Some(intended) = slot else { return };
        if Instant::now() >= deadline + OPEN_LOOP_DRAIN_GRACE {
            return;
        }
        let sent = Instant::now();
        let (label, outcome) = scenario.op(ctx).await;
        let done = Instant::now();
        ctx.stats
            .record_open(label, done - intended, done - sent, outcome.clone());
        after_op(&outcome, live).await;
    }
}

/// Counts the operation and backs off after a transport failure.
async fn after_op(outcome: &Outcome, live: &LiveCounters) {
    let transport_failure = matches!(
        outcome,
        Outcome::Error { label, .. } if matches!(label.as_str(), "connect" | "io")
    );
    live.completed.fetch_add(1, Ordering::Relaxed);
    if transport_failure {
        tokio::time::sleep(TRANSPORT_ERROR_BACKOFF).await;
    }
}

async fn progress_lines(start: Instant, live: Arc<LiveCounters>) {
    let mut last = live.completed.load(Ordering::Relaxed);
    let mut ticker =
        tokio::time::interval_at((start + PROGRESS_INTERVAL).into(), PROGRESS_INTERVAL);
    loop {
        ticker.tick().await;
        let now = live.completed.load(Ordering::Relaxed);
        eprintln!(
            "t={:>4.0}s ops={now} ({:.0}/s)",
            start.elapsed().as_secs_f64(),
            now.saturating_sub(last) as f64 / PROGRESS_INTERVAL.as_secs_f64()
        );
        last = now;
    }
}
