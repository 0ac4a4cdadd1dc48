//! The subscription goals: P7 (delivery latency under appends), P8 (the
//! memory idle subscriptions cost the server) and P9 (how fast a new
//! subscriber catches up through the stored log).

use anyhow::Context as _;

use super::plan::{DATA_BYTES, DB_EMPTY, DB_VOLUME};
use super::table::Row;
use super::Bench;
use crate::http::Conn;
use crate::wire::{Query, ReadOptions};

/// P7: subscription delivery p99 (append acknowledged -> received), ms, at most.
const P7_GOAL_MS: f64 = 10.0;
/// P8: server RSS added by the idle subscriptions, at most.
const P8_GOAL_MIB: f64 = 64.0;
/// P8: idle subscriptions held open.
const P8_SUBSCRIBERS: usize = 1000;
/// P9: catch-up rate, at least.
const P9_GOAL_EVENTS_PER_S: f64 = 100_000.0;

impl Bench {
    /// P7: 100 subscribers to a tag of their own and 10 to everything while
    /// 8 writers append 2,000 events/s; delivery latency and a gap check.
    pub(super) async fn goal_p7(&mut self) -> anyhow::Result<Option<Row>> {
        let target = self.server_on(DB_EMPTY).await?;
        let duration = self.plan.p2().duration;
        let report = crate::subscribe::run(&crate::subscribe::SubscribeConfig {
            target,
            subscribers: 100,
            everything: 10,
            writers: 8,
            rate: 2000.0,
            duration,
            data_bytes: DATA_BYTES,
            run_id: self.run_id("p7"),
        })
        .await?;
        eprint!("bench: {}", report.summary());
        self.report.notes.push(format!(
            "P7: {} events appended, {} delivered ({:.0}/s), delivery p50/p99/max {:.2}/{:.2}/{:.2} ms, {} missing, {} duplicated, {} out of order",
            report.appended,
            report.delivered,
            report.delivered_per_s,
            report.latency_p50_ms,
            report.latency_p99_ms,
            report.latency_max_ms,
            report.missing,
            report.duplicated,
            report.out_of_order
        ));
        Ok(Some(Row {
            id: "P7".into(),
            workload: "subscriptions: 100 own-tag + 10 all, 2,000 appends/s".into(),
            crablet: format!(
                "p99 {:.2} ms, {:.0} events/s delivered, {} gaps/dups/reorders",
                report.latency_p99_ms,
                report.delivered_per_s,
                report.missing + report.duplicated + report.out_of_order
            ),
            baseline: "-".into(),
            ratio: None,
            goal: format!("p99 <= {P7_GOAL_MS:.0} ms, no gaps"),
            met: Some(report.latency_p99_ms <= P7_GOAL_MS && report.passed()),
            crablet_value: Some(report.latency_p99_ms),
            baseline_value: None,
        }))
    }

    /// P8: the server's RSS before and after opening 1,000 subscriptions
    /// that receive nothing (tags nobody writes), once they have all been
    /// answered and have settled.
    pub(super) async fn goal_p8(&mut self) -> anyhow::Result<Option<Row>> {
        let target = self.server_on(DB_EMPTY).await?;
        let pid = self.server_pid().context("no server pid")?;
        let rss_mib = || crate::procfs::rss_kib(pid).map(|kib| kib as f64 / 1024.0);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let before = rss_mib().context("cannot read the server's RSS")?;
        let idle = crate::subscribe::open_idle(&target, P8_SUBSCRIBERS, &self.run_id("p8")).await?;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let after = rss_mib().context("cannot read the server's RSS")?;
        let held = idle.len();
        drop(idle);
        let added = after - before;
        self.report.notes.push(format!(
            "P8: {held} idle subscriptions; server RSS {before:.1} MiB before, {after:.1} MiB with them open (+{added:.1} MiB)"
        ));
        Ok(Some(Row {
            id: "P8".into(),
            workload: format!(
                "{} idle subscriptions",
                super::table::thousands(held as f64)
            ),
            crablet: format!("+{added:.1} MiB RSS ({before:.1} -> {after:.1} MiB)"),
            baseline: "-".into(),
            ratio: None,
            goal: format!("<= {P8_GOAL_MIB:.0} MiB"),
            met: Some(held == P8_SUBSCRIBERS && added <= P8_GOAL_MIB),
            crablet_value: Some(added),
            baseline_value: None,
        }))
    }

    /// P9: one subscriber to every event, from position 0 of the volume
    /// store to its head.
    pub(super) async fn goal_p9(&mut self) -> anyhow::Result<Option<Row>> {
        let target = self.server_on(DB_VOLUME).await?;
        let mut conn = Conn::new(target.clone(), std::time::Duration::from_secs(30));
        let head = conn
            .read(&Query { items: Vec::new() }, Some(&ReadOptions::last_one()))
            .await
            .map_err(|e| anyhow::anyhow!("reading the head: {e}"))?
            .first()
            .map_or(0, |e| e.position);
        let run = crate::subscribe::catch_up(&target, head).await?;
        self.report.notes.push(format!(
            "P9: caught up through {} events (head {head}) in {:.2} s = {:.0} events/s",
            run.events, run.seconds, run.events_per_s
        ));
        Ok(Some(Row {
            id: "P9".into(),
            workload: format!(
                "new subscriber catching up through {} events",
                super::table::thousands(run.events as f64)
            ),
            crablet: format!("{} events/s", super::table::thousands(run.events_per_s)),
            baseline: "-".into(),
            ratio: None,
            goal: format!(
                ">= {} events/s",
                super::table::thousands(P9_GOAL_EVENTS_PER_S)
            ),
            met: Some(run.events_per_s >= P9_GOAL_EVENTS_PER_S && run.events >= head.min(1)),
            crablet_value: Some(run.events_per_s),
            baseline_value: None,
        }))
    }
}
