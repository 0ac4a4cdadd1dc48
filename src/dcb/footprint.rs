//! The 64-bit keys of tags and types, and the footprint of an append.
//!
//! One key space serves two purposes. In PostgreSQL, `event_keys(key,
//! position)` indexes every event under the key of each of its tags and of its
//! type, so a lookup is a B-tree range scan whatever the tag looks like. The
//! same keys are taken as advisory transaction locks by appends:
//!
//! - every append takes the keys of its own events' tags and types, and the
//!   [`GLOBAL_KEY`], **shared**;
//! - a conditional append takes, for each item of its condition, the key of
//!   one tag of the item (or of each type of a type-only item), and for the
//!   all-query the [`GLOBAL_KEY`], **exclusive**; so does an append with
//!   `require`, for the query of each requirement;
//! - an append whose events carry ids takes the key of each id
//!   ([`id_key`], a domain of its own) **exclusive**, so two transactions
//!   writing the same id, in any process, run one after the other and the
//!   second sees the first's commit. Id keys are lock keys only: they never
//!   enter `event_keys` (ids are looked up through their own unique index).
//! - an import (events written at their own positions, see
//!   [`super::import`]) takes the keys an unconditional append of its events
//!   takes, **exclusive**, but the [`GLOBAL_KEY`], which it holds shared
//!   like any append: every condition an imported event could match is
//!   decided wholly before or wholly after it.
//!
//! An event that matches a query item carries every tag of the item and one of
//! its types, so any append that could invalidate a condition meets it on at
//! least one key, while appends whose footprints do not overlap never wait for
//! each other. All keys of a transaction are taken in one sorted pass, so no
//! deadlock is possible. Keys are hashes: a collision can only make two
//! appends wait for each other, never let a conflict through, because every
//! index hit is verified against the stored event.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::model::{AppendRequest, NewEvent, Query};

/// A key of the shared lock and index key space.
pub type Key = i64;

/// Seeds separate the domains, so a tag and a type with the same name get
/// different keys. They are part of the stored format: never change them.
const TAG_SEED: u64 = 0x7461_6773; // "tags"
const TYPE_SEED: u64 = 0x7479_7065; // "type"
const ID_SEED: u64 = 0x6964_7320; // "ids "

/// Taken shared by every append and exclusive by a condition on all events.
pub const GLOBAL_KEY: Key = 0x4352_4142_4c45_5447; // "CRABLETG"

/// Serializes position assignment and commit (gap-free reading): held from the
/// insert of a batch to its commit. Taken after every other key.
pub const SEQUENCE_KEY: Key = 0x4352_4142_4c45_5453; // "CRABLETS"

/// An append whose footprint has more keys than this takes the [`GLOBAL_KEY`]
/// exclusive instead (lock escalation): every append holds that key shared,
/// so the one lock excludes everything the many would have, and PostgreSQL's
/// shared lock table (64 × `max_connections` entries by default) cannot be
/// exhausted by a few large appends.
pub const ESCALATION_KEYS: usize = 256;

pub fn tag_key(tag: &str) -> Key {
    xxh3_64_with_seed(tag.as_bytes(), TAG_SEED) as Key
}

pub fn type_key(event_type: &str) -> Key {
    xxh3_64_with_seed(event_type.as_bytes(), TYPE_SEED) as Key
}

/// The lock key of an event id.
pub fn id_key(id: &str) -> Key {
    xxh3_64_with_seed(id.as_bytes(), ID_SEED) as Key
}

/// The index keys of one event: one per distinct tag, and one for its type.
pub fn event_keys(event: &NewEvent) -> Vec<Key> {
    let mut keys: Vec<Key> = event.tags.iter().map(|t| tag_key(t)).collect();
    keys.push(type_key(&event.event_type));
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// How an advisory lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// One driving index scan of a condition or read: events under `key` that
/// also carry all of `tags` and (when not empty) have one of `types`.
/// A `key` of `None` means every event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe<'a> {
    /// The query item it probes for (0 for the all-query).
    pub item: usize,
    pub key: Option<Key>,
    pub tags: &'a [String],
    pub types: &'a [String],
}

impl Probe<'_> {
    /// Whether every event under `key` matches the probe (a single tag, or a
    /// single type, and nothing else to check): each index entry it visits
    /// is then a match, so a probe that looks for one match visits at most
    /// one entry.
    pub fn is_exact(&self) -> bool {
        match (self.tags.len(), self.types.len()) {
            (1, 0) | (0, 1) => true,
            (0, 0) => self.key.is_none(),
            _ => false,
        }
    }

    /// For a probe that is not exact, every key it may be driven by: the key
    /// of each of its tags, and of its type when it has exactly one. Every
    /// matching event is indexed under each of them, so the store scans the
    /// one with the fewest entries (`crablet_rarest`): an item costs its
    /// rarest tag, not its first. `None` for an exact probe.
    pub fn candidate_keys(&self) -> Option<Vec<Key>> {
        if self.is_exact() || self.key.is_none() {
            return None;
        }
        let mut keys: Vec<Key> = self.tags.iter().map(|t| tag_key(t)).collect();
        if let [only] = self.types {
            keys.push(type_key(only));
        }
        keys.dedup();
        Some(keys)
    }
}

/// Whether some probe of `query` is not exact ([`Probe::is_exact`]): an item
/// with several tags, or with tags and types. Such a query may visit index
/// entries that it does not return; computed without building the probes
/// (it is asked on every read and append).
pub fn filters(query: &Query) -> bool {
    query
        .items
        .iter()
        .any(|item| !item.tags.is_empty() && (item.tags.len() > 1 || !item.types.is_empty()))
}

/// The probes that together find every event matching `query`: one per
/// tagged item (driven by its first tag), one per type of a type-only item,
/// and a single unkeyed probe for the all-query.
pub fn probes(query: &Query) -> Vec<Probe<'_>> {
    if query.is_all() {
        return vec![Probe {
            item: 0,
            key: None,
            tags: &[],
            types: &[],
        }];
    }
    let mut out = Vec::with_capacity(query.items.len());
    for (index, item) in query.items.iter().enumerate() {
        if let Some(first) = item.tags.first() {
            out.push(Probe {
                item: index,
                key: Some(tag_key(first)),
                tags: &item.tags,
                types: &item.types,
            });
        } else {
            for t in &item.types {
                out.push(Probe {
                    item: index,
                    key: Some(type_key(t)),
                    tags: &[],
                    types: std::slice::from_ref(t),
                });
            }
        }
    }
    out
}

/// The advisory locks one append (or a batch of appends) needs, each key with
/// the strongest mode asked for it, in the order they must be taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Footprint {
    locks: BTreeMap<Key, LockMode>,
    /// The key a writer lane is chosen by, if the append must meet others
    /// in one lane: the smallest key its condition probes (appends that may
    /// conflict are decided in one batch), else the key of its first id (a
    /// retry queues behind its original), or the global key once escalated.
    route: Option<Key>,
}

impl Footprint {
    /// The footprint of one append: its events' keys shared, its condition's
    /// probe keys exclusive.
    #[cfg(test)]
    pub fn of_append(request: &AppendRequest) -> Self {
        let keys: Vec<Vec<Key>> = request.events.iter().map(event_keys).collect();
        let ids: Vec<Key> = request
            .events
            .iter()
            .filter_map(|e| e.id.as_deref().map(id_key))
            .collect();
        Self::with_event_keys(request, &keys, &ids)
    }

    /// As `Footprint::of_append` (the tests' shortcut), given the [`event_keys`] of each of the
    /// append's events and the [`id_key`] of each of its ids, computed once
    /// by the caller.
    pub fn with_event_keys(
        request: &AppendRequest,
        keys_per_event: &[Vec<Key>],
        id_keys: &[Key],
    ) -> Self {
        let mut fp = Footprint::default();
        fp.add(GLOBAL_KEY, LockMode::Shared);
        for &key in keys_per_event.iter().flatten() {
            fp.add(key, LockMode::Shared);
        }
        // A requirement reads every event its query matches, as a
        // condition does after its `after`: its probe keys are exclusive.
        let queries = request
            .condition
            .iter()
            .map(|c| &c.fail_if_events_match)
            .chain(request.require.iter().map(|r| &r.projector.query));
        for query in queries {
            for probe in probes(query) {
                let key = probe.key.unwrap_or(GLOBAL_KEY);
                fp.add(key, LockMode::Exclusive);
                fp.route = Some(fp.route.map_or(key, |r| r.min(key)));
            }
        }
        for &key in id_keys {
            fp.add(key, LockMode::Exclusive);
        }
        if fp.route.is_none() {
            fp.route = id_keys.first().copied();
        }
        if fp.len() > ESCALATION_KEYS {
            fp.locks.clear();
            fp.add(GLOBAL_KEY, LockMode::Exclusive);
            fp.route = Some(GLOBAL_KEY);
        }
        fp
    }

    /// The key that picks the append's writer lane; `None`: any lane.
    pub fn route(&self) -> Option<Key> {
        self.route
    }

    pub fn add(&mut self, key: Key, mode: LockMode) {
        let entry = self.locks.entry(key).or_insert(mode);
        if mode > *entry {
            *entry = mode;
        }
    }

    pub fn merge(&mut self, other: &Footprint) {
        for (&key, &mode) in &other.locks {
            self.add(key, mode);
        }
    }

    pub fn len(&self) -> usize {
        self.locks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }

    /// The keys in ascending order, the order in which they are locked.
    pub fn iter(&self) -> impl Iterator<Item = (Key, LockMode)> + '_ {
        self.locks.iter().map(|(&k, &m)| (k, m))
    }

    /// The exclusive keys, in ascending order: what a writer routes by.
    pub fn exclusive_keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.iter()
            .filter(|(_, m)| *m == LockMode::Exclusive)
            .map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcb::model::{AppendCondition, QueryItem};

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn conditional(tag: &str, condition_tags: &[&str], condition_types: &[&str]) -> AppendRequest {
        AppendRequest {
            events: vec![NewEvent {
                event_type: "Registered".into(),
                tags: strings(&[tag]),
                data: "{}".into(),
                id: None,
                metadata: None,
            }],
            condition: Some(AppendCondition {
                fail_if_events_match: Query {
                    items: vec![QueryItem {
                        types: strings(condition_types),
                        tags: strings(condition_tags),
                    }],
                },
                after: None,
            }),
            require: Vec::new(),
        }
    }

    fn overlap_exclusively(a: &Footprint, b: &Footprint) -> bool {
        a.iter().any(|(k, ma)| {
            b.locks
                .get(&k)
                .is_some_and(|mb| ma == LockMode::Exclusive || *mb == LockMode::Exclusive)
        })
    }

    #[test]
    fn appends_on_the_same_key_conflict_and_disjoint_ones_do_not() {
        let a = Footprint::of_append(&conditional("user:a", &["user:a"], &[]));
        let a2 = Footprint::of_append(&conditional("user:a", &["user:a"], &[]));
        let b = Footprint::of_append(&conditional("user:b", &["user:b"], &[]));
        assert!(overlap_exclusively(&a, &a2));
        assert!(!overlap_exclusively(&a, &b));
    }

    #[test]
    fn a_type_only_condition_meets_every_append_of_that_type() {
        let cond = Footprint::of_append(&conditional("x", &[], &["Registered"]));
        let other = Footprint::of_append(&conditional("y", &["y"], &[]));
        assert!(overlap_exclusively(&cond, &other));
    }

    #[test]
    fn a_condition_on_all_events_meets_every_append() {
        let mut req = conditional("x", &["x"], &[]);
        req.condition.as_mut().unwrap().fail_if_events_match = Query::all();
        let all = Footprint::of_append(&req);
        let other = Footprint::of_append(&conditional("y", &["y"], &[]));
        assert!(overlap_exclusively(&all, &other));
    }

    #[test]
    fn a_large_footprint_escalates_to_the_global_key_and_still_meets_everything() {
        let mut big = conditional("x", &["x"], &[]);
        big.events = (0..ESCALATION_KEYS)
            .map(|i| NewEvent {
                event_type: "Imported".into(),
                tags: vec![format!("item:{i}")],
                data: "{}".into(),
                id: None,
                metadata: None,
            })
            .collect();
        let escalated = Footprint::of_append(&big);
        assert_eq!(
            escalated.iter().collect::<Vec<_>>(),
            vec![(GLOBAL_KEY, LockMode::Exclusive)]
        );
        let plain = Footprint::of_append(&AppendRequest {
            events: vec![NewEvent {
                event_type: "Other".into(),
                tags: vec!["unrelated".into()],
                data: "{}".into(),
                id: None,
                metadata: None,
            }],
            condition: None,
            require: Vec::new(),
        });
        assert!(overlap_exclusively(&escalated, &plain));
    }

    #[test]
    fn tag_and_type_keys_are_separate_domains() {
        assert_ne!(tag_key("Registered"), type_key("Registered"));
        assert_ne!(id_key("Registered"), tag_key("Registered"));
        assert_ne!(id_key("Registered"), type_key("Registered"));
    }

    fn with_ids(ids: &[&str], condition: Option<&str>) -> AppendRequest {
        let mut request = conditional("user:a", &[condition.unwrap_or("x")], &[]);
        if condition.is_none() {
            request.condition = None;
        }
        request.events = ids
            .iter()
            .map(|id| NewEvent {
                event_type: "Registered".into(),
                tags: strings(&["user:a"]),
                data: "{}".into(),
                id: Some(id.to_string()),
                metadata: None,
            })
            .collect();
        request
    }

    #[test]
    fn ids_are_locked_exclusive_so_appends_sharing_an_id_meet_and_others_do_not() {
        let a = Footprint::of_append(&with_ids(&["id-1", "id-2"], None));
        let retry = Footprint::of_append(&with_ids(&["id-2"], None));
        let other = Footprint::of_append(&with_ids(&["id-3"], None));
        assert_eq!(
            a.iter().find(|(k, _)| *k == id_key("id-2")),
            Some((id_key("id-2"), LockMode::Exclusive))
        );
        assert!(overlap_exclusively(&a, &retry));
        assert!(!overlap_exclusively(&a, &other));
        let plain = Footprint::of_append(&conditional("user:a", &["user:z"], &[]));
        assert_eq!(plain.exclusive_keys().count(), 1, "no id, no id lock");
    }

    #[test]
    fn appends_route_by_condition_then_by_first_id() {
        let unconditional = Footprint::of_append(&with_ids(&["id-1", "id-2"], None));
        assert_eq!(unconditional.route(), Some(id_key("id-1")));
        let conditional = Footprint::of_append(&with_ids(&["id-1"], Some("user:z")));
        assert_eq!(conditional.route(), Some(tag_key("user:z")));
        let mut plain = with_ids(&["id-1"], None);
        plain.events[0].id = None;
        assert_eq!(Footprint::of_append(&plain).route(), None);
    }

    #[test]
    fn a_requirement_locks_its_query_keys_exclusive_and_routes_by_them() {
        let mut request = conditional("user:a", &["x"], &[]);
        request.condition = None;
        request.require = vec![serde_json::from_value(serde_json::json!({
            "projector": {"query": {"items": [{"tags": ["course:42"]}]}, "reduce": "count"},
            "op": "lt", "value": 30
        }))
        .unwrap()];
        let fp = Footprint::of_append(&request);
        assert_eq!(
            fp.iter().find(|(k, _)| *k == tag_key("course:42")),
            Some((tag_key("course:42"), LockMode::Exclusive))
        );
        assert_eq!(fp.route(), Some(tag_key("course:42")));
    }

    #[test]
    fn a_probe_with_several_tags_or_a_type_filter_offers_every_key_it_may_be_driven_by() {
        let item = |tags: &[&str], types: &[&str]| Query {
            items: vec![QueryItem {
                tags: strings(tags),
                types: strings(types),
            }],
        };
        let single = item(&["a"], &[]);
        assert!(probes(&single)[0].is_exact());
        assert_eq!(probes(&single)[0].candidate_keys(), None);
        let type_only = item(&[], &["T", "U"]);
        assert!(probes(&type_only).iter().all(Probe::is_exact));
        assert!(probes(&Query::all())[0].is_exact());
        let two = item(&["common", "rare"], &["T"]);
        assert!(!probes(&two)[0].is_exact());
        assert_eq!(
            probes(&two)[0].candidate_keys(),
            Some(vec![tag_key("common"), tag_key("rare"), type_key("T")])
        );
        let typed = item(&["a"], &["T", "U"]);
        assert_eq!(probes(&typed)[0].candidate_keys(), Some(vec![tag_key("a")]));
        for query in [&single, &type_only, &Query::all(), &two, &typed] {
            assert_eq!(
                filters(query),
                probes(query).iter().any(|p| !p.is_exact()),
                "{query:?}"
            );
        }
    }

    #[test]
    fn merged_footprints_keep_the_strongest_mode() {
        let mut fp = Footprint::default();
        fp.add(5, LockMode::Shared);
        fp.add(5, LockMode::Exclusive);
        fp.add(5, LockMode::Shared);
        assert_eq!(
            fp.iter().collect::<Vec<_>>(),
            vec![(5, LockMode::Exclusive)]
        );
    }
}
