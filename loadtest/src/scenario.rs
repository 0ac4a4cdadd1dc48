//! What one operation of each scenario sends, and the setup and verification around
//! a run.
//!
//! Owns the shapes of the workloads (tags, types, conditions, key distributions).
//! It does not time anything or decide when to send: that is the driver's job. Every
//! tag a scenario writes contains the run id, so runs against the same database do
//! not see each other (except `read`, which reads the shared preloaded tags).

use std::fmt;
use std::time::Duration;

use clap::ValueEnum;
use rand::rngs::SmallRng;
use rand::Rng;

use crate::http::{AppendOutcome, Conn, RequestError, Target};
use crate::preload::{self, PreloadConfig, EVENTS_PER_TAG};
use crate::report::Verification;
use crate::stats::{Outcome, Stats};
use crate::verify::{self, ChainLink, LoggedEvent, RecordedCondition};
use crate::wire::{
    payload, AppendCondition, AppendRequest, NewEvent, Query, QueryItem, ReadOptions,
};
use crate::zipf::Zipf;

/// Label of a read of one tag.
pub const LABEL_READ: &str = "read";
/// Label of an unconditional append.
pub const LABEL_APPEND: &str = "append";
/// Label of a conditional append on a key nobody else uses.
pub const LABEL_APPEND_IF: &str = "append-if";
/// Label of a read-decide-append round (hot-keys, consistency).
pub const LABEL_DECISION: &str = "decision";
/// Label of a quick round: conditional append, then read it back.
pub const LABEL_QUICK: &str = "quick";
/// Label of a `GET /health`.
pub const LABEL_HEALTH: &str = "health";
/// Label of a `POST /project`.
pub const LABEL_PROJECT: &str = "project";

/// One operation in this many of the project scenario is an append (the
/// trickle that keeps the projection's state moving).
const PROJECT_APPEND_EVERY: u64 = 20;
/// Projectors of one `project-cold` request.
pub const COLD_PROJECTORS: usize = 10;

/// Data of the events of the one-request hot-keys decision.
const HOT_KEY_REQUIRE_DATA: &str = "{\"decided\":\"require\"}";

/// Number of tags of the consistency scenario's tag space.
const CONSISTENCY_TAGS: usize = 6;
/// Number of event types of the consistency scenario.
const CONSISTENCY_TYPES: usize = 3;
/// Largest number of items in a consistency query.
const CONSISTENCY_MAX_ITEMS: usize = 2;
/// Timeout of the reads that verify a run (they return whole key histories).
const VERIFY_READ_TIMEOUT: Duration = Duration::from_secs(300);
/// Batch size of the read scenario's automatic seeding.
const SEED_BATCH: u64 = 1000;
/// Concurrent batches of the read scenario's automatic seeding.
const SEED_CONCURRENCY: usize = 4;
/// Percent of `mixed` operations that are reads.
const MIXED_READ_PERCENT: u32 = 50;
/// Percent of `mixed` operations that are conditional appends (the rest: plain).
const MIXED_APPEND_IF_PERCENT: u32 = 30;

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioKind {
    /// Read the events of one tag (10 events each, preloaded), uniformly chosen.
    Read,
    /// Append one event, no condition.
    Append,
    /// Append one event with condition "no event with this (unique) tag": never conflicts.
    AppendIf,
    /// Read-decide-append on 100 keys picked by Zipf: conflicts expected, violations not.
    HotKeys,
    /// The community suite's dcb-parallel-writes: unique tag per iteration, condition on it.
    ParallelWrites,
    /// Random queries over a small space, read-decide-append, whole log verified after.
    Consistency,
    /// 50% reads, 30% conditional appends, 20% plain appends.
    Mixed,
    /// Conditional append, then read it back and compare (a functional smoke loop).
    Quick,
    /// `GET /health`: the HTTP path alone, to calibrate the generator and the stack.
    Health,
    /// `POST /project`: a count over every preloaded event (their type), while
    /// one operation in 20 appends one more.
    Project,
    /// `POST /project` of 10 `sum`s over every stored event, each at a path no
    /// earlier request used: every projector is a first evaluation (P12's
    /// expensive request).
    ProjectCold,
}

impl ScenarioKind {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Append => "append",
            Self::AppendIf => "append-if",
            Self::HotKeys => "hot-keys",
            Self::ParallelWrites => "parallel-writes",
            Self::Consistency => "consistency",
            Self::Mixed => "mixed",
            Self::Quick => "quick",
            Self::Health => "health",
            Self::Project => "project",
            Self::ProjectCold => "project-cold",
        }
    }
}

/// How a hot-keys decision is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Decision {
    /// Read the key's last event, then append conditionally on nothing
    /// newer (two requests; the chain of `after`s is verified).
    #[default]
    ReadAppend,
    /// One request: append with `require: count(key) lt HOT_KEY_CAP`,
    /// decided by the server under the append's locks (the cap is
    /// verified).
    Require,
}

impl Decision {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::ReadAppend => "read-append",
            Self::Require => "require",
        }
    }
}

/// The cap of the one-request hot-keys decision: events per key. High
/// enough that a run never reaches it, so both forms make the same number
/// of appends.
pub const HOT_KEY_CAP: u64 = 1_000_000_000;

impl fmt::Display for ScenarioKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a scenario is shaped.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    /// Which workload.
    pub kind: ScenarioKind,
    /// Unique id of this run, part of the tags it writes.
    pub run_id: String,
    /// Reads pick one of this many preloaded tags (`<prefix>:<k>`, 10 events each).
    pub read_tags: u64,
    /// Prefix of the preloaded tags.
    pub tag_prefix: String,
    /// Number of hot keys.
    pub hot_keys: usize,
    /// Zipf exponent of the hot keys.
    pub zipf_exponent: f64,
    /// How a hot-keys decision is sent.
    pub decision: Decision,
    /// Size of the data string of appended events, bytes.
    pub data_bytes: usize,
    /// Whether `read`/`mixed` may preload their tags when they are missing.
    pub seed_reads: bool,
}

/// The per-client state a scenario works with.
pub struct ClientCtx {
    /// Client number, 0-based.
    pub id: usize,
    /// Operations started by this client (makes unique keys).
    pub seq: u64,
    /// This client's random stream.
    pub rng: SmallRng,
    /// This client's connection.
    pub conn: Conn,
    /// What this client measured.
    pub stats: Stats,
    /// Positions of the appends acknowledged to this client (scenarios that verify).
    pub acked: Vec<u64>,
}

/// A configured scenario, shared read-only by all clients.
pub struct Scenario {
    /// Its configuration.
    cfg: ScenarioConfig,
    /// Hot-key picker.
    zipf: Zipf,
    /// Data of appended events.
    payload: String,
    /// Consistency scenario's types.
    cons_types: Vec<String>,
    /// Consistency scenario's tags.
    cons_tags: Vec<String>,
    /// Tag every consistency event carries, to read the run's log back.
    cons_run_tag: String,
}

impl Scenario {
    /// Builds the scenario.
    pub fn new(cfg: ScenarioConfig) -> anyhow::Result<Self> {
        let zipf = Zipf::new(cfg.hot_keys, cfg.zipf_exponent)?;
        anyhow::ensure!(
            cfg.read_tags >= 1 || !matches!(cfg.kind, ScenarioKind::Read | ScenarioKind::Mixed),
            "--read-tags must be at least 1"
        );
        let run = &cfg.run_id;
        Ok(Self {
            zipf,
            payload: payload(cfg.data_bytes),
            cons_types: (0..CONSISTENCY_TYPES)
                .map(|i| format!("Cons{run}T{i}"))
                .collect(),
            cons_tags: (0..CONSISTENCY_TAGS)
                .map(|i| format!("c{run}:{i}"))
                .collect(),
            cons_run_tag: format!("cons:{run}"),
            cfg,
        })
    }

    /// The scenario's configuration.
    pub fn config(&self) -> &ScenarioConfig {
        &self.cfg
    }

    /// The label whose rate is the headline figure.
    pub fn primary_label(&self) -> &'static str {
        match self.cfg.kind {
            ScenarioKind::Read | ScenarioKind::Mixed => LABEL_READ,
            ScenarioKind::Append => LABEL_APPEND,
            ScenarioKind::AppendIf | ScenarioKind::ParallelWrites => LABEL_APPEND_IF,
            ScenarioKind::HotKeys | ScenarioKind::Consistency => LABEL_DECISION,
            ScenarioKind::Quick => LABEL_QUICK,
            ScenarioKind::Health => LABEL_HEALTH,
            ScenarioKind::Project | ScenarioKind::ProjectCold => LABEL_PROJECT,
        }
    }

    /// Whether the run is verified afterwards.
    pub fn verifies(&self) -> bool {
        matches!(
            self.cfg.kind,
            ScenarioKind::HotKeys | ScenarioKind::Consistency
        )
    }

    /// Prepares the store: `read` and `mixed` need their tags present.
    pub async fn setup(&self, target: &Target) -> anyhow::Result<()> {
        if !matches!(self.cfg.kind, ScenarioKind::Read | ScenarioKind::Mixed) {
            return Ok(());
        }
        let mut conn = Conn::new(target.clone(), VERIFY_READ_TIMEOUT);
        let last = self.read_tag(self.cfg.read_tags - 1);
        let present = conn
            .read_count(&Query::single(QueryItem::tag(last.clone())), None)
            .await?;
        if present >= EVENTS_PER_TAG {
            return Ok(());
        }
        anyhow::ensure!(
            self.cfg.seed_reads,
            "tag {last} has {present} events, expected {EVENTS_PER_TAG}: preload first"
        );
        let events = self.cfg.read_tags * EVENTS_PER_TAG;
        eprintln!("setup: tag {last} missing, preloading {events} events");
        let result = preload::preload(
            target,
            &PreloadConfig {
                events,
                batch: SEED_BATCH,
                concurrency: SEED_CONCURRENCY,
                tag_prefix: self.cfg.tag_prefix.clone(),
                events_per_tag: EVENTS_PER_TAG,
                data_bytes: self.cfg.data_bytes,
                quiet: true,
            },
        )
        .await?;
        eprintln!(
            "setup: preloaded {} events in {:.1} s",
            result.events, result.elapsed_s
        );
        Ok(())
    }

    fn read_tag(&self, k: u64) -> String {
        format!("{}:{k}", self.cfg.tag_prefix)
    }

    /// One operation of this scenario; returns its label and outcome.
    pub async fn op(&self, ctx: &mut ClientCtx) -> (&'static str, Outcome) {
        ctx.seq += 1;
        match self.cfg.kind {
            ScenarioKind::Read => (LABEL_READ, self.read_one(ctx).await),
            ScenarioKind::Append => (LABEL_APPEND, self.append_plain(ctx).await),
            ScenarioKind::AppendIf => (LABEL_APPEND_IF, self.append_if_unique(ctx).await),
            ScenarioKind::ParallelWrites => (LABEL_APPEND_IF, self.parallel_write(ctx).await),
            ScenarioKind::HotKeys => (LABEL_DECISION, self.hot_key_decision(ctx).await),
            ScenarioKind::Consistency => (LABEL_DECISION, self.consistency_decision(ctx).await),
            ScenarioKind::Quick => (LABEL_QUICK, self.quick_round(ctx).await),
            ScenarioKind::Project if ctx.seq.is_multiple_of(PROJECT_APPEND_EVERY) => {
                (LABEL_APPEND, self.append_preloaded(ctx).await)
            }
            ScenarioKind::Project => (LABEL_PROJECT, self.project_all(ctx).await),
            ScenarioKind::ProjectCold => {
                let projectors = self.cold_sums(ctx.id, ctx.seq);
                (LABEL_PROJECT, project(ctx, projectors).await)
            }
            ScenarioKind::Health => (
                LABEL_HEALTH,
                match ctx.conn.health().await {
                    Ok(()) => Outcome::Ok { items: 0 },
                    Err(e) => error(&e),
                },
            ),
            ScenarioKind::Mixed => {
                let roll = ctx.rng.gen_range(0..100);
                if roll < MIXED_READ_PERCENT {
                    (LABEL_READ, self.read_one(ctx).await)
                } else if roll < MIXED_READ_PERCENT + MIXED_APPEND_IF_PERCENT {
                    (LABEL_APPEND_IF, self.append_if_unique(ctx).await)
                } else {
                    (LABEL_APPEND, self.append_plain(ctx).await)
                }
            }
        }
    }

    async fn read_one(&self, ctx: &mut ClientCtx) -> Outcome {
        let k = ctx.rng.gen_range(0..self.cfg.read_tags);
        let query = Query::single(QueryItem::tag(self.read_tag(k)));
        match ctx.conn.read_count(&query, None).await {
            Ok(items) => Outcome::Ok { items },
            Err(e) => error(&e),
        }
    }

    /// `POST /project`: how many preloaded events there are.
    async fn project_all(&self, ctx: &mut ClientCtx) -> Outcome {
        let projector = serde_json::json!({
            "id": "all",
            "query": Query::single(QueryItem {
                types: vec![preload::PRELOAD_TYPE.into()],
                tags: Vec::new(),
            }),
            "reduce": "count",
        });
        project(ctx, vec![projector]).await
    }

    /// The projectors of `project-cold` request `seq` of client `client`:
    /// [`COLD_PROJECTORS`] sums over every event (`{"items": []}`), at paths
    /// that name the run, the client, the request and the projector, so no
    /// server has seen any of them before (none is remembered). The events
    /// have nothing there: the sums are 0, but each still reads every event.
    fn cold_sums(&self, client: usize, seq: u64) -> Vec<serde_json::Value> {
        (0..COLD_PROJECTORS)
            .map(|j| {
                serde_json::json!({
                    "id": format!("s{j}"),
                    "query": Query { items: Vec::new() },
                    "reduce": "sum",
                    "path": format!("/amount/{}/{client}/{seq}/{j}", self.cfg.run_id),
                })
            })
            .collect()
    }

    /// One more preloaded event (the project scenario's trickle).
    async fn append_preloaded(&self, ctx: &mut ClientCtx) -> Outcome {
        let request = AppendRequest {
            require: Vec::new(),
            events: vec![NewEvent {
                event_type: preload::PRELOAD_TYPE.into(),
                tags: vec![self.unique_key(ctx)],
                data: self.payload.clone(),
            }],
            condition: None,
        };
        let result = ctx.conn.append(&request).await;
        append_outcome(result, 1, None)
    }

    fn unique_key(&self, ctx: &ClientCtx) -> String {
        format!("u:{}:{}:{}", self.cfg.run_id, ctx.id, ctx.seq)
    }

    async fn append_plain(&self, ctx: &mut ClientCtx) -> Outcome {
        let request = AppendRequest {
            require: Vec::new(),
            events: vec![NewEvent {
                event_type: "Appended".into(),
                tags: vec![self.unique_key(ctx)],
                data: self.payload.clone(),
            }],
            condition: None,
        };
        let result = ctx.conn.append(&request).await;
        append_outcome(result, 1, None)
    }

    async fn append_if_unique(&self, ctx: &mut ClientCtx) -> Outcome {
        let request = append_once("Registered", self.unique_key(ctx), self.payload.clone());
        let result = ctx.conn.append(&request).await;
        append_outcome(result, 1, None)
    }

    async fn parallel_write(&self, ctx: &mut ClientCtx) -> Outcome {
        // The community k6 script: tag `vu<id>-iter<n>`, type SomeEvent, data "{}".
        let tag = format!("r{}-vu{}-iter{}", self.cfg.run_id, ctx.id, ctx.seq);
        let request = append_once("SomeEvent", tag, "{}".into());
        let result = ctx.conn.append(&request).await;
        append_outcome(result, 1, None)
    }

    fn hot_key(&self, k: usize) -> String {
        format!("hot:{}:{k}", self.cfg.run_id)
    }

    async fn hot_key_decision(&self, ctx: &mut ClientCtx) -> Outcome {
        let key = self.hot_key(self.zipf.sample(&mut ctx.rng));
        let query = Query::single(QueryItem::tag(key.clone()));
        if self.cfg.decision == Decision::Require {
            let request = AppendRequest {
                require: vec![serde_json::json!({
                    "projector": {"query": &query, "reduce": "count"},
                    "op": "lt",
                    "value": HOT_KEY_CAP,
                })],
                events: vec![NewEvent {
                    event_type: "Decided".into(),
                    tags: vec![key],
                    data: HOT_KEY_REQUIRE_DATA.into(),
                }],
                condition: None,
            };
            let result = ctx.conn.append(&request).await;
            return append_outcome(result, 1, Some(&mut ctx.acked));
        }
        let after = match ctx.conn.read(&query, Some(&ReadOptions::last_one())).await {
            Ok(events) => events.first().map_or(0, |e| e.position),
            Err(e) => return error(&e),
        };
        let request = AppendRequest {
            require: Vec::new(),
            events: vec![NewEvent {
                event_type: "Decided".into(),
                tags: vec![key],
                data: verify::hot_key_data(after),
            }],
            condition: Some(AppendCondition {
                fail_if_events_match: query,
                after: Some(after),
            }),
        };
        let result = ctx.conn.append(&request).await;
        append_outcome(result, 1, Some(&mut ctx.acked))
    }

    fn random_consistency_query(&self, rng: &mut SmallRng) -> Query {
        let n_items = rng.gen_range(1..=CONSISTENCY_MAX_ITEMS);
        let items = (0..n_items)
            .map(|_| match rng.gen_range(0..4) {
                // Tags only (sometimes two of them).
                0 => QueryItem {
                    types: Vec::new(),
                    tags: vec![pick(rng, &self.cons_tags)],
                },
                1 => QueryItem {
                    types: Vec::new(),
                    tags: vec![pick(rng, &self.cons_tags), pick(rng, &self.cons_tags)],
                },
                // Type only.
                2 => QueryItem {
                    types: vec![pick(rng, &self.cons_types)],
                    tags: Vec::new(),
                },
                // Both.
                _ => QueryItem {
                    types: vec![pick(rng, &self.cons_types)],
                    tags: vec![pick(rng, &self.cons_tags)],
                },
            })
            .collect();
        Query { items }
    }

    async fn consistency_decision(&self, ctx: &mut ClientCtx) -> Outcome {
        let query = self.random_consistency_query(&mut ctx.rng);
        let after = match ctx.conn.read(&query, Some(&ReadOptions::last_one())).await {
            Ok(events) => events.first().map_or(0, |e| e.position),
            Err(e) => return error(&e),
        };
        let mut tags = vec![self.cons_run_tag.clone()];
        for _ in 0..ctx.rng.gen_range(1..=2) {
            let tag = &self.cons_tags[ctx.rng.gen_range(0..CONSISTENCY_TAGS)];
            if !tags.contains(tag) {
                tags.push(tag.clone());
            }
        }
        let event_type = self.cons_types[ctx.rng.gen_range(0..CONSISTENCY_TYPES)].clone();
        let data = RecordedCondition {
            after,
            query: query.clone(),
        }
        .encode();
        let request = AppendRequest {
            require: Vec::new(),
            events: vec![NewEvent {
                event_type,
                tags,
                data,
            }],
            condition: Some(AppendCondition {
                fail_if_events_match: query,
                after: Some(after),
            }),
        };
        let result = ctx.conn.append(&request).await;
        append_outcome(result, 1, Some(&mut ctx.acked))
    }

    async fn quick_round(&self, ctx: &mut ClientCtx) -> Outcome {
        let key = self.unique_key(ctx);
        let data = format!("{}-{}", self.payload, ctx.seq);
        let query = Query::single(QueryItem::tag(key.clone()));
        let request = AppendRequest {
            require: Vec::new(),
            events: vec![NewEvent {
                event_type: "Quick".into(),
                tags: vec![key.clone()],
                data: data.clone(),
            }],
            condition: Some(AppendCondition {
                fail_if_events_match: query.clone(),
                after: None,
            }),
        };
        match ctx.conn.append(&request).await {
            Ok(AppendOutcome::Appended { .. }) => {}
            Ok(AppendOutcome::ConditionFailed) => return Outcome::Conflict,
            Err(e) => return error(&e),
        }
        match ctx.conn.read(&query, None).await {
            Ok(events)
                if events.len() == 1
                    && events[0].data == data
                    && events[0].event_type == "Quick"
                    && events[0].tags == [key.clone()] =>
            {
                Outcome::Ok { items: 2 }
            }
            Ok(events) => Outcome::Error {
                label: "read_mismatch".into(),
                message: format!(
                    "read of {key} after appending it returned {} events: {:?}",
                    events.len(),
                    events.first()
                ),
            },
            Err(e) => error(&e),
        }
    }

    /// Verifies the run's log after the load stopped (hot-keys, consistency).
    pub async fn verify(
        &self,
        target: &Target,
        acknowledged: &[u64],
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
                    let events = conn
                        .read(&Query::single(QueryItem::tag(key.clone())), None)
                        .await?;
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
                    .read(
                        &Query::single(QueryItem::tag(self.cons_run_tag.clone())),
                        None,
                    )
                    .await?;
                let mut v = Verification {
                    invariant: "no event matching a condition lies in (after, own position)".into(),
                    events_checked: events.len() as u64,
                    ..Verification::default()
                };
                let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
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

/// One element of `from`, uniformly.
fn pick(rng: &mut SmallRng, from: &[String]) -> String {
    from[rng.gen_range(0..from.len())].clone()
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

/// One event tagged `tag`, on the condition that no `event_type` event carries that
/// tag yet: it conflicts only when the tag was used before.
fn append_once(event_type: &str, tag: String, data: String) -> AppendRequest {
    AppendRequest {
        require: Vec::new(),
        events: vec![NewEvent {
            event_type: event_type.into(),
            tags: vec![tag.clone()],
            data,
        }],
        condition: Some(AppendCondition {
            fail_if_events_match: Query::single(QueryItem {
                types: vec![event_type.into()],
                tags: vec![tag],
            }),
            after: None,
        }),
    }
}

fn add_missing(v: &mut Verification, acknowledged: &[u64], log: &[u64]) {
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

/// `POST /project` of `projectors` (each with an `id`): ok when every one of
/// them has a number for its state.
async fn project(ctx: &mut ClientCtx, projectors: Vec<serde_json::Value>) -> Outcome {
    let ids: Vec<String> = projectors
        .iter()
        .filter_map(|p| p["id"].as_str().map(str::to_owned))
        .collect();
    let body = serde_json::json!({ "projectors": projectors });
    match ctx.conn.project(&body).await {
        Ok(answer)
            if ids
                .iter()
                .all(|id| answer["states"][id.as_str()].is_number()) =>
        {
            Outcome::Ok {
                items: ids.len() as u64,
            }
        }
        Ok(answer) => Outcome::Error {
            label: "bad_state".into(),
            message: answer.to_string(),
        },
        Err(e) => error(&e),
    }
}

/// An error outcome from a request error.
fn error(e: &RequestError) -> Outcome {
    Outcome::Error {
        label: e.label(),
        message: e.to_string(),
    }
}

/// The outcome of an append; records the acknowledged position when asked to.
fn append_outcome(
    result: Result<AppendOutcome, RequestError>,
    events: u64,
    acked: Option<&mut Vec<u64>>,
) -> Outcome {
    match result {
        Ok(AppendOutcome::Appended { last_position }) => {
            if let (Some(acked), Some(p)) = (acked, last_position) {
                acked.push(p);
            }
            Outcome::Ok { items: events }
        }
        Ok(AppendOutcome::ConditionFailed) => Outcome::Conflict,
        Err(e) => error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn scenario(kind: ScenarioKind) -> Scenario {
        Scenario::new(ScenarioConfig {
            kind,
            run_id: "r1".into(),
            read_tags: 10,
            tag_prefix: "t".into(),
            hot_keys: 100,
            zipf_exponent: 1.0,
            decision: Decision::ReadAppend,
            data_bytes: 64,
            seed_reads: true,
        })
        .unwrap()
    }

    #[test]
    fn consistency_queries_are_valid_and_stay_in_the_run_space() {
        let s = scenario(ScenarioKind::Consistency);
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..1000 {
            let q = s.random_consistency_query(&mut rng);
            assert!((1..=CONSISTENCY_MAX_ITEMS).contains(&q.items.len()));
            for item in &q.items {
                assert!(!item.types.is_empty() || !item.tags.is_empty());
                assert!(item.tags.iter().all(|t| t.starts_with("cr1:")));
                assert!(item.types.iter().all(|t| t.starts_with("Consr1T")));
            }
        }
    }

    #[test]
    fn append_outcomes_record_acknowledged_positions() {
        let mut acked = Vec::new();
        let ok = append_outcome(
            Ok(AppendOutcome::Appended {
                last_position: Some(9),
            }),
            1,
            Some(&mut acked),
        );
        assert_eq!(ok, Outcome::Ok { items: 1 });
        assert_eq!(acked, vec![9]);
        assert_eq!(
            append_outcome(Ok(AppendOutcome::ConditionFailed), 1, None),
            Outcome::Conflict
        );
        let err = append_outcome(Err(RequestError::Timeout), 1, None);
        assert!(matches!(err, Outcome::Error { label, .. } if label == "timeout"));
    }

    #[test]
    fn cold_projections_never_repeat_a_projector() {
        let s = scenario(ScenarioKind::ProjectCold);
        let paths = |client, seq| -> Vec<String> {
            s.cold_sums(client, seq)
                .iter()
                .map(|p| {
                    assert_eq!(p["reduce"], "sum");
                    assert_eq!(p["query"], serde_json::json!({"items": []}));
                    p["path"].as_str().unwrap().to_owned()
                })
                .collect()
        };
        let mut seen = std::collections::HashSet::new();
        for (client, seq) in [(0, 1), (0, 2), (1, 1)] {
            let request = paths(client, seq);
            assert_eq!(request.len(), COLD_PROJECTORS);
            assert!(request.into_iter().all(|p| seen.insert(p)));
        }
        assert!(seen.iter().all(|p| p.starts_with("/amount/r1/")));
    }

    #[test]
    fn primary_labels() {
        assert_eq!(
            scenario(ScenarioKind::HotKeys).primary_label(),
            LABEL_DECISION
        );
        assert_eq!(
            scenario(ScenarioKind::ParallelWrites).primary_label(),
            LABEL_APPEND_IF
        );
        assert!(scenario(ScenarioKind::Consistency).verifies());
        assert!(!scenario(ScenarioKind::Read).verifies());
    }
}
