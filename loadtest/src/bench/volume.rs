//! The goals on the preloaded volume: its load (crablet's store and the GIN
//! baseline table), P4 (reading one tag against pgbench on the GIN table) and
//! P11 (projections over the whole volume against P4's reads).

use std::time::Instant;

use super::plan::{DATA_BYTES, DB_RAW, DB_VOLUME, PRELOAD_BATCH, PRELOAD_CONCURRENCY};
use super::postgres;
use super::runner::primary;
use super::table::{thousands, Row};
use super::{Bench, Goal};
use crate::preload::{payload, EVENTS_PER_TAG};
use crate::report::ms;

/// P4: reads/s over pgbench GIN reads/s, at least.
const P4_GOAL: f64 = 1.0;
/// P11: `/project` counts over the whole volume per second over P4's
/// reads/s, at least.
const P11_GOAL: f64 = 0.5;

impl Bench {
    /// Stores the volume on both sides: crablet's preload (batched appends) and the
    /// GIN table, each vacuumed and analyzed.
    pub(super) async fn load_volume(&mut self) -> anyhow::Result<()> {
        let events = self.plan.volume_events;
        let data = payload(DATA_BYTES);
        if !self.cfg.baselines_only {
            postgres::recreate_database(&self.tools, &self.admin, DB_VOLUME).await?;
            let target = self.server_on(DB_VOLUME).await?;
            eprintln!(
                "bench: preloading {events} events ({PRELOAD_BATCH} per append, {PRELOAD_CONCURRENCY} concurrent)"
            );
            let result = self
                .preload(&target, events, "t".into(), EVENTS_PER_TAG, false)
                .await?;
            eprintln!(
                "bench: preloaded {} events in {:.1} s ({:.0} events/s)",
                result.events, result.elapsed_s, result.events_per_s
            );
            self.report.notes.push(format!(
                "preload: {} events in {:.1} s = {:.0} events/s ({} batches retried after 429/503)",
                result.events, result.elapsed_s, result.events_per_s, result.retries
            ));
            self.report.preload = Some(result);
            self.tools
                .psql(&self.db(DB_VOLUME), "VACUUM ANALYZE")
                .await?;
        }
        if self.wants(Goal::P4) {
            eprintln!("bench: building the GIN baseline table ({events} rows)");
            let t = Instant::now();
            for sql in postgres::gin_table_sql(events, &data) {
                self.tools.psql(&self.db(DB_RAW), &sql).await?;
            }
            self.report.gin_load_s = Some(t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// P4: reads of one stored tag at volume against pgbench on the GIN table.
    pub(super) async fn goal_p4(&mut self) -> anyhow::Result<Option<Row>> {
        let phase = self.plan.p4();
        let clients = phase.clients;
        let base = self
            .pgbench(
                "p4-baseline-gin-read-16",
                DB_RAW,
                &postgres::gin_read_script(self.plan.read_tags()),
                clients,
                phase.duration,
                false,
            )
            .await?;
        let volume = self.plan.volume_events;
        if self.cfg.baselines_only {
            return Ok(Some(Row::baseline_only(
                "P4",
                "GIN read, 16 clients",
                base.tps,
                "tx/s",
            )));
        }
        let (target, run) = self.run_phase(&phase).await?;
        let p = primary(&run)?;
        if let Some(floor) = self.http_floor(&target, clients).await?.primary() {
            self.report.notes.push(format!(
                "P4: HTTP floor (GET /health, {clients} clients): {:.0} req/s, p50 {:.3} ms",
                floor.ok_per_s,
                ms(floor.latency_us.p50_us)
            ));
        }
        let per_read = if p.ok > 0 {
            p.items as f64 / p.ok as f64
        } else {
            0.0
        };
        let off_by = (per_read - EVENTS_PER_TAG as f64).abs();
        if off_by > f64::EPSILON {
            self.report.notes.push(format!(
                "P4: reads returned {per_read:.2} events on average, expected {EVENTS_PER_TAG}"
            ));
        }
        let rate = p.ok_per_s;
        self.p4_reads = Some(rate);
        self.report.notes.push(format!(
            "P4: crablet p50 {:.2} ms, p99 {:.2} ms; pgbench latency avg {:.2} ms",
            ms(p.latency_us.p50_us),
            ms(p.latency_us.p99_us),
            base.latency_avg_ms
        ));
        let workload = format!(
            "read one tag (10 events), {} stored, 16 clients",
            thousands(volume as f64)
        );
        let goal = format!(">= {P4_GOAL}x");
        let row = Row::compared("P4", workload, (rate, "reads/s"), (base.tps, "tx/s (GIN)"));
        Ok(Some(row.ratio_at_least(
            P4_GOAL,
            goal,
            off_by < f64::EPSILON,
        )))
    }

    /// P11: `POST /project` of a count over every stored event, appends
    /// trickling in, against P4's reads/s (measured now if P4 did not run).
    pub(super) async fn goal_p11(&mut self) -> anyhow::Result<Option<Row>> {
        let reads = match self.p4_reads {
            Some(rate) => rate,
            None => {
                let (_, run) = self.run_phase(&self.plan.p4()).await?;
                primary(&run)?.ok_per_s
            }
        };
        let (_, run) = self.run_phase(&self.plan.p11()).await?;
        let p = primary(&run)?;
        let rate = p.ok_per_s;
        let appended = run
            .labels
            .iter()
            .find(|l| l.label == crate::scenario::LABEL_APPEND)
            .map_or(0.0, |l| l.ok_per_s);
        self.report.notes.push(format!(
            "P11: {rate:.0} projections/s over {} events, p50 {:.2} ms, p99 {:.2} ms, with {appended:.0} appends/s trickling in; P4 {reads:.0} reads/s",
            self.plan.volume_text(),
            ms(p.latency_us.p50_us),
            ms(p.latency_us.p99_us),
        ));
        let volume = self.plan.volume_text();
        let workload = format!("POST /project count over {volume} events, 16 clients");
        let row = Row::compared(
            "P11",
            workload,
            (rate, "projections/s"),
            (reads, "reads/s (P4)"),
        );
        Ok(Some(row.times_at_least(P11_GOAL, true)))
    }
}
