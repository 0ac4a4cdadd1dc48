//! P14: what one client's expensive requests leave everyone else. P1's load
//! on the volume store, alone, then again while one more client loops on
//! `POST /project` of [`COLD_PROJECTORS`] sums over every stored event, each a
//! projector no server has seen (a first evaluation every time, which crablet
//! runs on its small costly pool within a time budget).

use std::sync::Arc;

use super::plan::Phase;
use super::runner::primary;
use super::table::Row;
use super::Bench;
use crate::driver;
use crate::report::ms;
use crate::scenario::{ScenarioKind, COLD_PROJECTORS};

/// P14: the innocent appends/s beside the expensive client over those alone,
/// at least ("others keep at least a third of their throughput").
const P14_GOAL: f64 = 0.33;
/// P14's goal as the table states it.
pub(super) const P14_GOAL_TEXT: &str = ">= 0.33, 0 failed";
/// Clients sending the expensive requests.
const EXPENSIVE_CLIENTS: usize = 1;

impl Bench {
    /// P14: [`super::Plan::p14`] alone, then the same load beside the
    /// expensive client, both on the volume store's server as it is.
    pub(super) async fn goal_p14(&mut self) -> anyhow::Result<Option<Row>> {
        let alone_phase = self.plan.p14();
        let (target, alone_run) = self.run_phase(&alone_phase).await?;
        let alone = primary(&alone_run)?;
        let beside_phase = Phase {
            name: "p14-append-if-64-volume-beside-expensive",
            tag: "p14b",
            ..alone_phase
        };
        let expensive_cfg = self.run_config(
            &target,
            ScenarioKind::ProjectCold,
            "p14x",
            EXPENSIVE_CLIENTS,
            beside_phase.duration,
        );
        let (beside_run, expensive_run) = tokio::join!(
            self.crablet_run(&target, &beside_phase, Arc::default()),
            driver::run(&expensive_cfg, Arc::default()),
        );
        let (beside_run, expensive_run) = (beside_run?, expensive_run?);
        self.report
            .runs
            .insert("p14-expensive-project-cold-1".into(), expensive_run.clone());
        let innocent = primary(&beside_run)?;
        let expensive = primary(&expensive_run)?;
        let status = |code: &str| expensive.errors.get(code).copied().unwrap_or(0);
        let (over_budget, busy) = (status("http_422"), status("http_503"));
        let other = expensive.error_count() - over_budget - busy;
        let failed = innocent.error_count() + innocent.conflicts;
        let (rate, base) = (innocent.ok_per_s, alone.ok_per_s);
        let volume = self.plan.volume_text();
        self.report.notes.push(format!(
            "P14: append-if x{} on {volume} stored events: {base:.0} appends/s alone (p50 {:.2} ms, p99 {:.2} ms), \
             {rate:.0} beside the expensive client (p50 {:.2} ms, p99 {:.2} ms), {failed} of them failed; \
             expensive requests (POST /project, {COLD_PROJECTORS} never-remembered sums over every event): \
             {} sent, {} answered 200, {over_budget} 422 over_budget, {busy} 503, {other} other, p50 {:.0} ms",
            beside_phase.clients,
            ms(alone.latency_us.p50_us),
            ms(alone.latency_us.p99_us),
            ms(innocent.latency_us.p50_us),
            ms(innocent.latency_us.p99_us),
            expensive.requests,
            expensive.ok,
            ms(expensive.latency_us.p50_us),
        ));
        let workload = format!(
            "P1 with {volume} events stored, beside 1 client of cold projections ({COLD_PROJECTORS} sums over all)"
        );
        let also = failed == 0 && expensive.requests > 0;
        let row = Row::compared(
            "P14",
            workload,
            (rate, &format!("events/s, {failed} failed")),
            (base, "events/s (alone)"),
        );
        Ok(Some(row.ratio_at_least(P14_GOAL, P14_GOAL_TEXT, also)))
    }
}
