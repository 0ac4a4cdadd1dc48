//! Verifying a run's log after the load stopped (hot keys, consistency):
//! violations counted, the first of them described, and acknowledged
//! positions missing from the log.

use super::*;

impl Scenario {
    /// Verifies the run's log after the load stopped (hot-keys, consistency).
    pub async fn verify(
        &self,
        target: &Target,
        acknowledged: &[Position],
    ) -> anyhow::Result<Option<Verification>> {
        let mut conn = Conn::new(target.clone(), VERIFY_READ_TIMEOUT);
        match self.cfg.kind {
            ScenarioKind::HotKeys => {
                let invariant = match self.cfg.decision {
                    Decision::ReadAppend => "each event's after = previous event of its key",
                    Decision::Require => "no key holds more events than its required cap",
                };
                let mut v = Verification {
                    invariant: invariant.into(),
                    ..Verification::default()
                };
                let mut positions = Vec::new();
                for k in 0..self.cfg.hot_keys {
                    let key = self.hot_key(k);
                    let events = conn.read(&Query::tag(key.clone()), None).await?;
                    if self.cfg.decision == Decision::Require {
                        positions.extend(events.iter().map(|e| e.position));
                        v.keys_checked += 1;
                        v.events_checked += events.len() as u64;
                        if events.len() as u64 > HOT_KEY_CAP {
                            v.violations += 1;
                            v.details.push(format!(
                                "key {key}: {} events, over the cap of {HOT_KEY_CAP}",
                                events.len()
                            ));
                        }
                        continue;
                    }
                    let links: Vec<ChainLink> = events
                        .iter()
                        .map(|e| ChainLink {
                            position: e.position,
                            after: verify::parse_hot_key_data(&e.data),
                        })
                        .collect();
                    positions.extend(events.iter().map(|e| e.position));
                    let check = verify::check_chain(&links);
                    v.keys_checked += 1;
                    v.events_checked += events.len() as u64;
                    v.unparsable += check.unparsable;
                    add_violations(&mut v, &check.violations, |bad| {
                        format!(
                            "key {key}: event at {} was appended with after={} but the key's previous event is at {}",
                            bad.position, bad.after, bad.previous
                        )
                    });
                }
                add_missing(&mut v, acknowledged, &positions);
                Ok(Some(v))
            }
            ScenarioKind::Consistency => {
                let events = conn
                    .read(&Query::tag(self.cons_run_tag.clone()), None)
                    .await?;
                let mut v = Verification {
                    invariant: "no event matching a condition lies in (after, own position)".into(),
                    events_checked: events.len() as u64,
                    ..Verification::default()
                };
                let positions: Vec<Position> = events.iter().map(|e| e.position).collect();
                let logged: Vec<LoggedEvent> = events
                    .into_iter()
                    .map(|e| {
                        let condition = RecordedCondition::decode(&e.data);
                        if condition.is_none() {
                            v.unparsable += 1;
                        }
                        LoggedEvent {
                            position: e.position,
                            event_type: e.event_type,
                            tags: e.tags,
                            condition,
                        }
                    })
                    .collect();
                add_violations(&mut v, &verify::check_conditions(&logged), |bad| {
                    format!(
                        "event at {} (condition after {}) was accepted although matching event {} precedes it",
                        bad.position, bad.after, bad.conflicting_position
                    )
                });
                add_missing(&mut v, acknowledged, &positions);
                Ok(Some(v))
            }
            _ => Ok(None),
        }
    }
}

/// Violations described in a report, at most.
const MAX_DETAILS: usize = 20;

fn push_detail(v: &mut Verification, detail: String) {
    if v.details.len() < MAX_DETAILS {
        v.details.push(detail);
    }
}

/// Counts `violations` into `v` and describes the first of them.
fn add_violations<T>(v: &mut Verification, violations: &[T], describe: impl Fn(&T) -> String) {
    v.violations += violations.len() as u64;
    for bad in violations.iter().take(MAX_DETAILS) {
        push_detail(v, describe(bad));
    }
}

fn add_missing(v: &mut Verification, acknowledged: &[Position], log: &[Position]) {
    let missing = verify::missing_positions(acknowledged, log);
    v.acknowledged_checked = acknowledged.len() as u64;
    v.lost_acknowledged = missing.len() as u64;
    if let Some(first) = missing.first() {
        push_detail(
            v,
            format!(
                "{} acknowledged positions are missing from the log, e.g. {first}",
                missing.len()
            ),
        );
    }
}
