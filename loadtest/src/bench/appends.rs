//! The append goals: P1 (conditional appends on disjoint keys against raw
//! INSERTs), P2 (the latency of one), P5 (P1 again with the volume stored), P6
//! (the server's RSS under P1, and over the soak) and the soak itself.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::plan::{DATA_BYTES, DB_RAW};
use super::postgres;
use super::runner::primary;
use super::server;
use super::table::{Figure, Row};
use super::{Bench, Goal, SoakReport};
use crate::preload::payload;
use crate::report::ms;

/// P1: conditional appends/s over raw INSERT tx/s, at least.
const P1_GOAL: f64 = 1.5;
/// P2: conditional append p50 over raw INSERT p50, at most.
const P2_GOAL: f64 = 2.0;
/// P5: P1 at volume over P1 on an empty store, at least.
const P5_GOAL: f64 = 0.8;
/// P6: server RSS under P1 load, MiB, at most.
const P6_GOAL_MIB: f64 = 100.0;
/// RSS lines printed during a soak, every...
const SOAK_PRINT_INTERVAL: Duration = Duration::from_secs(30);

impl Bench {
    /// Raw 1-row INSERT tx/s with P1's clients and duration (the P1/P3 baseline), on
    /// a truncated table.
    async fn insert_baseline(&mut self, name: &str) -> anyhow::Result<f64> {
        self.tools
            .psql(&self.db(DB_RAW), "TRUNCATE bench_insert; CHECKPOINT")
            .await?;
        let script = postgres::insert_script(&payload(DATA_BYTES));
        let p1 = self.plan.p1();
        let r = self
            .pgbench(name, DB_RAW, &script, p1.clients, p1.duration, false)
            .await?;
        Ok(r.tps)
    }

    /// The P1/P3 baseline: measured once, by whichever goal comes first.
    pub(super) async fn p1_baseline(&mut self) -> anyhow::Result<f64> {
        match self.p1_baseline {
            Some(b) => Ok(b),
            None => {
                let b = self.insert_baseline("p1-baseline-insert-64").await?;
                self.p1_baseline = Some(b);
                Ok(b)
            }
        }
    }

    /// crablet's P1 events/s on the empty store (P5's reference): P1's figure, or
    /// measured now on a fresh store when P1 did not run or failed.
    async fn p1_crablet(&mut self) -> anyhow::Result<f64> {
        if let Some(rate) = self.p1_crablet {
            return Ok(rate);
        }
        let phase = self.plan.p1();
        postgres::recreate_database(&self.tools, &self.admin, phase.db).await?;
        let target = self.warm_server_on(phase.db).await?;
        let run = self.crablet_run(&target, &phase, Arc::default()).await?;
        let rate = primary(&run)?.ok_per_s;
        self.p1_crablet = Some(rate);
        Ok(rate)
    }

    /// P1: conditional appends on disjoint keys against the raw INSERT
    /// baseline; the server's RSS is sampled throughout for P6.
    pub(super) async fn goal_p1(&mut self) -> anyhow::Result<Option<Row>> {
        let base = self.p1_baseline().await?;
        if self.cfg.baselines_only {
            return Ok(Some(Row::baseline_only(
                "P1",
                "raw INSERT, 64 clients",
                base,
                "tx/s",
            )));
        }
        // Warmed up, with the server's RSS sampled throughout for P6.
        let phase = self.plan.p1();
        let target = self.warm_server_on(phase.db).await?;
        let max_sampling = phase.duration * 2 + Duration::from_secs(60);
        let (run, rss) = self
            .crablet_run_sampling_rss(&target, &phase, max_sampling, None)
            .await?;
        self.report.rss_p1 = rss;
        let run = run?;
        let p = primary(&run)?;
        if p.conflicts > 0 {
            self.report.notes.push(format!(
                "P1: {} FALSE CONFLICTS (appends on disjoint keys rejected; must be 0)",
                p.conflicts
            ));
        }
        let rate = p.ok_per_s;
        self.p1_crablet = Some(rate);
        if !self.wants(Goal::P1) {
            return Ok(None);
        }
        self.report.notes.push(format!(
            "P1: crablet p50 {:.2} ms, p99 {:.2} ms; raw INSERT at 64 clients {:.0} tx/s",
            ms(p.latency_us.p50_us),
            ms(p.latency_us.p99_us),
            base
        ));
        let workload = "append-if, disjoint keys, 64 clients";
        let row = Row::compared("P1", workload, (rate, "events/s"), (base, "tx/s (INSERT)"));
        Ok(Some(row.times_at_least(P1_GOAL, p.conflicts == 0)))
    }

    /// P2: the p50 latency of one client's conditional appends against one
    /// client's raw INSERTs (from pgbench's per-transaction log).
    pub(super) async fn goal_p2(&mut self) -> anyhow::Result<Option<Row>> {
        let phase = self.plan.p2();
        self.tools
            .psql(&self.db(DB_RAW), "TRUNCATE bench_insert")
            .await?;
        let script = postgres::insert_script(&payload(DATA_BYTES));
        let base = self
            .pgbench(
                "p2-baseline-insert-1",
                DB_RAW,
                &script,
                phase.clients,
                phase.duration,
                true,
            )
            .await?;
        let base_p50 = base
            .latency
            .context("pgbench wrote no per-transaction log")?
            .p50_us;
        if self.cfg.baselines_only {
            return Ok(Some(Row::baseline_only(
                "P2",
                "raw INSERT p50, 1 client",
                ms(base_p50),
                "ms",
            )));
        }
        let (target, run) = self.run_phase(&phase).await?;
        let p = primary(&run)?;
        let ratio = p.latency_us.p50_us as f64 / base_p50.max(1) as f64;
        if let Some(floor) = self.http_floor(&target, phase.clients).await?.primary() {
            self.report.notes.push(format!(
                "P2: HTTP floor (GET /health, 1 client): p50 {:.3} ms",
                ms(floor.latency_us.p50_us)
            ));
        }
        self.report.notes.push(format!(
            "P2: crablet p50/p99 {:.3}/{:.3} ms at {:.0} appends/s; raw INSERT p50/p99 {:.3}/{:.3} ms at {:.0} tx/s",
            ms(p.latency_us.p50_us),
            ms(p.latency_us.p99_us),
            p.ok_per_s,
            ms(base_p50),
            ms(base.latency.map_or(0, |l| l.p99_us)),
            base.tps
        ));
        Ok(Some(Row {
            id: "P2".into(),
            workload: "append-if p50 latency, 1 client".into(),
            crablet: format!("{:.3} ms", ms(p.latency_us.p50_us)),
            baseline: format!("{:.3} ms (INSERT)", ms(base_p50)),
            ratio: Some(ratio),
            goal: format!("<= {P2_GOAL}x"),
            met: Some(ratio <= P2_GOAL),
            crablet_value: Some(ms(p.latency_us.p50_us)),
            baseline_value: Some(ms(base_p50)),
        }))
    }

    /// P5: P1's load on the volume store against P1 on the empty store.
    pub(super) async fn goal_p5(&mut self) -> anyhow::Result<Option<Row>> {
        if self.cfg.baselines_only {
            return Ok(None);
        }
        let empty = self.p1_crablet().await?;
        let (_, run) = self.run_phase(&self.plan.p5()).await?;
        let p = primary(&run)?;
        let rate = p.ok_per_s;
        if p.conflicts > 0 {
            self.report
                .notes
                .push(format!("P5: {} FALSE CONFLICTS (must be 0)", p.conflicts));
        }
        // The disk may have slowed down since P1 (it does on these machines): measure
        // the raw INSERT again so a drop can be told apart from crablet's own.
        if let Ok(again) = self.insert_baseline("p5-baseline-insert-64-again").await {
            if let Some(first) = self.p1_baseline {
                self.report.notes.push(format!(
                    "P5: raw INSERT at 64 clients re-measured now: {again:.0} tx/s (was {first:.0} at P1, ratio {:.2})",
                    again / first
                ));
            }
        }
        let workload = format!("P1 with {} events stored vs empty", self.plan.volume_text());
        let row = Row::compared(
            "P5",
            workload,
            (rate, "events/s"),
            (empty, "events/s (empty)"),
        );
        Ok(Some(row.at_least(P5_GOAL, p.conflicts == 0)))
    }

    /// The soak: P1's load for `--soak-s` on a store of its own, RSS sampled.
    pub(super) async fn soak(&mut self) -> anyhow::Result<()> {
        let phase = self.plan.soak(self.cfg.soak_duration);
        postgres::recreate_database(&self.tools, &self.admin, phase.db).await?;
        let target = self.server_on(phase.db).await?;
        let max_sampling = phase.duration + Duration::from_secs(120);
        let (run, samples) = self
            .crablet_run_sampling_rss(&target, &phase, max_sampling, Some(SOAK_PRINT_INTERVAL))
            .await?;
        let run = run?;
        let flatness = server::flatness(&samples);
        if let Some(f) = flatness {
            self.report.notes.push(format!(
                "soak: RSS {:.1} MiB in the first minute, {:.1} MiB in the last ({:+.1} MiB): {}",
                f.warm_mib,
                f.final_mib,
                f.growth_mib,
                if f.flat { "flat" } else { "GROWING" }
            ));
        }
        self.report.soak = Some(SoakReport {
            run,
            samples,
            flatness,
        });
        Ok(())
    }

    /// P6: the server's largest RSS under P1 (and over the soak, flat).
    pub(super) fn p6_row(&self) -> Row {
        let max = self
            .report
            .rss_p1
            .iter()
            .map(|s| s.rss_mib)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let Some(max) = max else {
            return Row::failed(
                "P6",
                "server RSS under P1 load",
                "<= 100 MiB",
                "no RSS samples",
            );
        };
        let soak = self.report.soak.as_ref().and_then(|s| {
            let f = s.flatness?;
            let max = s.samples.iter().map(|x| x.rss_mib).fold(0.0, f64::max);
            Some((f, max))
        });
        let (crablet, met, goal) = match soak {
            Some((f, soak_max)) => (
                format!(
                    "{max:.1} MiB max (soak: {soak_max:.1} max, {:+.1} MiB)",
                    f.growth_mib
                ),
                max.max(soak_max) <= P6_GOAL_MIB && f.flat,
                format!("<= {P6_GOAL_MIB:.0} MiB, flat"),
            ),
            None => (
                format!("{max:.1} MiB max"),
                max <= P6_GOAL_MIB,
                format!("<= {P6_GOAL_MIB:.0} MiB"),
            ),
        };
        let crablet = Figure {
            text: crablet,
            value: max,
        };
        Row::alone("P6", "server RSS under the P1 load", crablet).goal(goal, met)
    }
}
