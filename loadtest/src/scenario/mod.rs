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
use crablet_model::{
    AppendCondition, AppendRequest, CompareOp, NewEvent, Position, ProjectRequest, Projector,
    Query, QueryItem, Reducer, Requirement,
};
use rand::rngs::SmallRng;
use rand::Rng;

use crate::http::{AppendOutcome, Conn, RequestError, Target};
use crate::preload::{self, payload, PreloadConfig, EVENTS_PER_TAG};
use crate::report::Verification;
use crate::stats::{Outcome, Stats};
use crate::verify::{self, ChainLink, LoggedEvent, RecordedCondition};
use crate::zipf::Zipf;

mod checks;

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
    /// earlier request used: every projector is a first evaluation (P14's
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
    pub acked: Vec<Position>,
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
        let present = conn.read_count(&Query::tag(last.clone()), None).await?;
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
        let query = Query::tag(self.read_tag(k));
        match ctx.conn.read_count(&query, None).await {
            Ok(items) => Outcome::Ok { items },
            Err(e) => error(&e),
        }
    }

    /// `POST /project`: how many preloaded events there are.
    async fn project_all(&self, ctx: &mut ClientCtx) -> Outcome {
        let projector = Projector {
            id: Some("all".into()),
            query: Query::of([QueryItem::types([preload::PRELOAD_TYPE])]),
            reduce: Reducer::Count,
            path: None,
            limit: None,
            map: None,
        };
        project(ctx, vec![projector]).await
    }

    /// The projectors of `project-cold` request `seq` of client `client`:
    /// [`COLD_PROJECTORS`] sums over every event (`{"items": []}`), at paths
    /// that name the run, the client, the request and the projector, so no
    /// server has seen any of them before (none is remembered). The events
    /// have nothing there: the sums are 0, but each still reads every event.
    fn cold_sums(&self, client: usize, seq: u64) -> Vec<Projector> {
        (0..COLD_PROJECTORS)
            .map(|j| Projector {
                id: Some(format!("s{j}")),
                query: Query::all(),
                reduce: Reducer::Sum,
                path: Some(format!("/amount/{}/{client}/{seq}/{j}", self.cfg.run_id)),
                limit: None,
                map: None,
            })
            .collect()
    }

    /// One more preloaded event (the project scenario's trickle).
    async fn append_preloaded(&self, ctx: &mut ClientCtx) -> Outcome {
        let request = AppendRequest {
            require: Vec::new(),
            events: vec![NewEvent {
                tags: vec![self.unique_key(ctx)],
                ..NewEvent::new(preload::PRELOAD_TYPE, self.payload.clone())
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
                tags: vec![self.unique_key(ctx)],
                ..NewEvent::new("Appended", self.payload.clone())
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
        let query = Query::tag(key.clone());
        if self.cfg.decision == Decision::Require {
            let request = AppendRequest {
                require: vec![Requirement {
                    projector: Projector {
                        id: None,
                        query,
                        reduce: Reducer::Count,
                        path: None,
                        limit: None,
                        map: None,
                    },
                    op: CompareOp::Lt,
                    value: HOT_KEY_CAP.into(),
                }],
                events: vec![NewEvent {
                    tags: vec![key],
                    ..NewEvent::new("Decided", HOT_KEY_REQUIRE_DATA)
                }],
                condition: None,
            };
            let result = ctx.conn.append(&request).await;
            return append_outcome(result, 1, Some(&mut ctx.acked));
        }
        let after = match ctx.conn.last_position(&query).await {
            Ok(position) => position,
            Err(e) => return error(&e),
        };
        let request = AppendRequest {
            require: Vec::new(),
            events: vec![NewEvent {
                tags: vec![key],
                ..NewEvent::new("Decided", verify::hot_key_data(after))
            }],
            condition: Some(AppendCondition::after(query, after)),
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
        let after = match ctx.conn.last_position(&query).await {
            Ok(position) => position,
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
                tags,
                ..NewEvent::new(event_type, data)
            }],
            condition: Some(AppendCondition::after(query, after)),
        };
        let result = ctx.conn.append(&request).await;
        append_outcome(result, 1, Some(&mut ctx.acked))
    }

    async fn quick_round(&self, ctx: &mut ClientCtx) -> Outcome {
        let key = self.unique_key(ctx);
        let data = format!("{}-{}", self.payload, ctx.seq);
        let query = Query::tag(key.clone());
        let request = AppendRequest {
            require: Vec::new(),
            events: vec![NewEvent {
                tags: vec![key.clone()],
                ..NewEvent::new("Quick", data.clone())
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
}

/// One element of `from`, uniformly.
fn pick(rng: &mut SmallRng, from: &[String]) -> String {
    from[rng.gen_range(0..from.len())].clone()
}

/// One event tagged `tag`, on the condition that no `event_type` event carries that
/// tag yet: it conflicts only when the tag was used before.
fn append_once(event_type: &str, tag: String, data: String) -> AppendRequest {
    AppendRequest {
        require: Vec::new(),
        events: vec![NewEvent {
            tags: vec![tag.clone()],
            ..NewEvent::new(event_type, data)
        }],
        condition: Some(AppendCondition {
            fail_if_events_match: Query::of([QueryItem {
                types: vec![event_type.into()],
                tags: vec![tag],
            }]),
            after: None,
        }),
    }
}

/// `POST /project` of `projectors` (each with an `id`): ok when every one of
/// them has a number for its state.
async fn project(ctx: &mut ClientCtx, projectors: Vec<Projector>) -> Outcome {
    let ids: Vec<String> = projectors.iter().filter_map(|p| p.id.clone()).collect();
    let request = ProjectRequest { projectors };
    match ctx.conn.project(&request).await {
        Ok(answer)
            if ids
                .iter()
                .all(|id| answer.states.get(id).is_some_and(|s| s.is_number())) =>
        {
            Outcome::Ok {
                items: ids.len() as u64,
            }
        }
        Ok(answer) => Outcome::Error {
            label: "bad_state".into(),
            message: serde_json::to_string(&answer).unwrap_or_default(),
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
    acked: Option<&mut Vec<Position>>,
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
mod tests;
