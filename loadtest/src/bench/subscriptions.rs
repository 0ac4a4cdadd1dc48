//! The subscription goals: P7 (delivery latency under appends), P8 (the
//! memory idle subscriptions cost the server) and P9 (how fast a new
//! subscriber catches up through the stored log).

use anyhow::Context as _;
use crablet_model::Query;

use super::plan::{DATA_BYTES, DB_EMPTY, DB_VOLUME};
use super::table::{thousands, Figure, Row};
use super::Bench;
use crate::http::Conn;

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
        let crablet = Figure {
            text: format!(
                "p99 {:.2} ms, {:.0} events/s delivered, {} gaps/dups/reorders",
                report.latency_p99_ms,
                report.delivered_per_s,
                report.missing + report.duplicated + report.out_of_order
            ),
            value: report.latency_p99_ms,
        };
        let met = report.latency_p99_ms <= P7_GOAL_MS && report.passed();
        let workload = "subscriptions: 100 own-tag + 10 all, 2,000 appends/s";
        Ok(Some(
            Row::alone("P7", workload, crablet)
                .goal(format!("p99 <= {P7_GOAL_MS:.0} ms, no gaps"), met),
        ))
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
        let workload = format!("{} idle subscriptions", thousands(held as f64));
        let crablet = Figure {
            text: format!("+{added:.1} MiB RSS ({before:.1} -> {after:.1} MiB)"),
            value: added,
        };
        let met = held == P8_SUBSCRIBERS && added <= P8_GOAL_MIB;
        Ok(Some(
            Row::alone("P8", workload, crablet).goal(format!("<= {P8_GOAL_MIB:.0} MiB"), met),
        ))
    }

    /// P9: one subscriber to every event, from position 0 of the volume
    /// store to its head.
    pub(super) async fn goal_p9(&mut self) -> anyhow::Result<Option<Row>> {
        let target = self.server_on(DB_VOLUME).await?;
        let mut conn = Conn::new(target.clone(), std::time::Duration::from_secs(30));
        let head = conn
            .last_position(&Query::all())
            .await
            .map_err(|e| anyhow::anyhow!("reading the head: {e}"))?;
        let run = crate::subscribe::catch_up(&target, head).await?;
        self.report.notes.push(format!(
            "P9: caught up through {} events (head {head}) in {:.2} s = {:.0} events/s",
            run.events, run.seconds, run.events_per_s
        ));
        let workload = format!(
            "new subscriber catching up through {} events",
            thousands(run.events as f64)
        );
        let crablet = Figure::rate(run.events_per_s, "events/s");
        let goal = format!(">= {} events/s", thousands(P9_GOAL_EVENTS_PER_S));
        let met = run.events_per_s >= P9_GOAL_EVENTS_PER_S && (head < 1 || run.events >= 1);
        Ok(Some(Row::alone("P9", workload, crablet).goal(goal, met)))
    }
}
