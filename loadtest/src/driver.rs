//! The engines that run N virtual clients for a bounded time.
//!
//! - **Closed loop**: each client sends, awaits the reply, and sends again, until
//!   the deadline. Latency is the time of each operation.
//! - **Open loop**: operations are scheduled at a constant rate (slot `i` is due at
//!   `start + i / rate`); each client takes the next slot, waits for its due time if
//!   it is early, and sends. Latency is measured from the slot's *intended* time, so
//!   a stalled server shows up as queueing delay instead of being hidden by clients
//!   that stopped sending (coordinated omission). Slots still unsent at the deadline
//!   are counted as `unsent`.
//!
//! Clients connect before the clock starts. Each owns its connection, random stream
//! and stats; nothing is shared on the hot path but two relaxed atomic counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::{watch, Barrier};

use crate::http::{Conn, Target};
use crate::report::Report;
use crate::scenario::{ClientCtx, Scenario, ScenarioConfig};
use crate::stats::{Outcome, Stats};

/// Pause after a transport failure before the next attempt, so a dead server does
/// not turn a client into a busy loop.
const TRANSPORT_ERROR_BACKOFF: Duration = Duration::from_millis(10);
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
    let next_slot = Arc::new(AtomicU64::new(0));
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
        let (scenario, ready, live, next_slot) = (
            scenario.clone(),
            ready.clone(),
            live.clone(),
            next_slot.clone(),
        );
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
                Some(rate) => {
                    open_loop(
                        &scenario, &mut ctx, start, deadline, rate, &next_slot, &live,
                    )
                    .await
                }
            }
            ctx
        }));
    }
    ready.wait().await;
    let start = Instant::now();
    // Receivers live in the client tasks until they end, so this cannot fail.
    let _ = start_tx.send(Some(start));
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
    if let Some(p) = progress {
        p.abort();
    }
    let unsent = match cfg.rate {
        Some(rate) => {
            let scheduled = (cfg.duration.as_secs_f64() * rate).ceil() as u64;
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
        finish(ctx, label, began, outcome, live).await;
    }
}

async fn open_loop(
    scenario: &Scenario,
    ctx: &mut ClientCtx,
    start: Instant,
    deadline: Instant,
    rate: f64,
    next_slot: &AtomicU64,
    live: &LiveCounters,
) {
    loop {
        let slot = next_slot.fetch_add(1, Ordering::Relaxed);
        let intended = start + Duration::from_secs_f64(slot as f64 / rate);
        if intended >= deadline || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(intended.into()).await;
        let (label, outcome) = scenario.op(ctx).await;
        finish(ctx, label, intended, outcome, live).await;
    }
}

async fn finish(
    ctx: &mut ClientCtx,
    label: &'static str,
    since: Instant,
    outcome: Outcome,
    live: &LiveCounters,
) {
    let transport_failure = matches!(
        &outcome,
        Outcome::Error { label, .. } if matches!(label.as_str(), "connect" | "io")
    );
    ctx.stats.record(label, since.elapsed(), outcome);
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
