//! The hot-key goals: P3 (read-decide-append, and the same decision as one
//! `require` request, on 100 Zipf-picked keys against raw INSERTs, with the
//! log checked afterwards) and P10 (the same decisions on keys that already
//! hold long histories, against fresh keys).

use std::sync::Arc;

use anyhow::Context as _;

use super::plan::{Phase, DB_HISTORY, HOT_KEYS};
use super::postgres;
use super::runner::primary;
use super::table::{thousands, Row};
use super::Bench;
use crate::report::ms;

/// P3: decisions/s over raw INSERT tx/s, at least.
const P3_GOAL: f64 = 1.0;
/// P10: require decisions on keys holding a long history over the same on
/// fresh keys, at least.
const P10_GOAL: f64 = 0.8;
/// Events each hot key holds before P10's decisions.
const HISTORY_EVENTS_PER_KEY: u64 = 20_000;

impl Bench {
    /// P3 with `phase` (read-then-append, or one request with `require`),
    /// reported as row `id`.
    pub(super) async fn goal_p3(&mut self, phase: Phase, id: &str) -> anyhow::Result<Option<Row>> {
        let base = self.p1_baseline().await?;
        if self.cfg.baselines_only {
            return Ok(None);
        }
        let (_, run) = self.run_phase(&phase).await?;
        let p = primary(&run)?;
        let v = run
            .verification
            .clone()
            .context("hot-keys run was not verified")?;
        let rate = p.decisions_per_s;
        self.report.notes.push(format!(
            "{id}: {:.0} accepted + {:.0} rejected decisions/s, p50 {:.2} ms, p99 {:.2} ms; verification: {} events on {} keys, {} violations, {} unparsable, {} of {} acknowledged missing",
            p.ok_per_s,
            p.decisions_per_s - p.ok_per_s,
            ms(p.latency_us.p50_us),
            ms(p.latency_us.p99_us),
            v.events_checked,
            v.keys_checked,
            v.violations,
            v.unparsable,
            v.lost_acknowledged,
            v.acknowledged_checked
        ));
        for d in &v.details {
            self.report.notes.push(format!("{id} violation: {d}"));
        }
        let workload = format!(
            "hot keys (100, Zipf 1.0), 64 clients, {}",
            phase.decision.name()
        );
        let goal = format!(">= {P3_GOAL}x, 0 violations");
        let row = Row::compared(
            id,
            workload,
            (rate, &format!("decisions/s, {} violations", v.violations)),
            (base, "tx/s (INSERT)"),
        );
        Ok(Some(row.ratio_at_least(P3_GOAL, goal, v.passed())))
    }

    /// P10: the one-request decisions of P3 on keys that already hold
    /// [`HISTORY_EVENTS_PER_KEY`] events each, against the same decisions on
    /// fresh keys of the same store, measured just before on the same server
    /// (so both sides see the same store size and the same disk).
    pub(super) async fn goal_p10(&mut self) -> anyhow::Result<Option<Row>> {
        postgres::recreate_database(&self.tools, &self.admin, DB_HISTORY).await?;
        let target = self.server_on(DB_HISTORY).await?;
        let run_id = self.run_id("p10");
        let events = HISTORY_EVENTS_PER_KEY * HOT_KEYS as u64;
        eprintln!("bench: P10: preloading {events} events on {HOT_KEYS} hot keys");
        let tag_prefix = format!("hot:{run_id}");
        let loaded = self
            .preload(&target, events, tag_prefix, HISTORY_EVENTS_PER_KEY, true)
            .await?;
        // The load's dirty pages written out before anything is measured.
        self.tools
            .psql(&self.db(DB_HISTORY), "VACUUM ANALYZE")
            .await?;
        self.tools.psql(&self.db(DB_HISTORY), "CHECKPOINT").await?;
        let fresh_phase = Phase {
            name: "p10-hot-keys-require-fresh-64",
            ..self.plan.p10()
        };
        let fresh_run = self
            .crablet_run_as(&target, &fresh_phase, Arc::default(), None)
            .await?;
        let fresh = primary(&fresh_run)?.decisions_per_s;
        let phase = self.plan.p10();
        let run = self
            .crablet_run_as(&target, &phase, Arc::default(), Some(run_id))
            .await?;
        let p = primary(&run)?;
        let rate = p.decisions_per_s;
        self.report.notes.push(format!(
            "P10: {:.0} decisions/s on keys holding {HISTORY_EVENTS_PER_KEY} events each (preloaded in {:.1} s), p50 {:.2} ms, p99 {:.2} ms; {fresh:.0}/s on fresh keys",
            rate,
            loaded.elapsed_s,
            ms(p.latency_us.p50_us),
            ms(p.latency_us.p99_us),
        ));
        let history = thousands(HISTORY_EVENTS_PER_KEY as f64);
        let workload = format!("require, 100 hot keys holding {history} events each, 64 clients");
        let row = Row::compared(
            "P10",
            workload,
            (rate, "decisions/s"),
            (fresh, "decisions/s (fresh keys)"),
        );
        Ok(Some(row.at_least(P10_GOAL, true)))
    }
}
