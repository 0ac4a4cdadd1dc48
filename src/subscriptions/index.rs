//! Live subscribers indexed by the keys of their query items, so that an
//! event is matched only against the subscribers it can concern.
//!
//! An event matches a query item only if it carries every tag of the item
//! and, when the item names types, one of them. So each item is filed where
//! every event it matches looks: a tagged item under one of its tags (the
//! one with the fewest subscribers filed under it when it is added), an
//! item with types only under each of its types. The query that
//! matches everything (no items) is kept in a list of its own. An event's
//! candidates are the subscribers filed under its type, under one of its
//! tags, or in that list; only those are matched in full with
//! [`Query::matches`]. However many subscribers are filed under other keys,
//! they cost an event nothing: it costs one hash lookup for its type and one
//! per tag. Nothing here knows about channels or threads: the index is plain
//! data, owned by one [`super::fanout`] shard.

use std::collections::HashMap;
use std::sync::Arc;

use crate::dcb::Query;

/// Where one query item is filed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Tag(String),
    Type(String),
    /// The all-query, or an item with neither types nor tags.
    All,
}

struct Entry<T> {
    query: Arc<Query>,
    /// Every key the subscriber is filed under (to unfile it).
    keys: Vec<Key>,
    value: T,
}

/// Subscribers (an id, a query and a `T` each) indexed by the keys of their
/// query items.
pub struct SubscriberIndex<T> {
    entries: HashMap<u64, Entry<T>>,
    by_tag: HashMap<String, Vec<u64>>,
    by_type: HashMap<String, Vec<u64>>,
    all: Vec<u64>,
}

impl<T> Default for SubscriberIndex<T> {
    fn default() -> Self {
        SubscriberIndex {
            entries: HashMap::new(),
            by_tag: HashMap::new(),
            by_type: HashMap::new(),
            all: Vec::new(),
        }
    }
}

impl<T> SubscriberIndex<T> {
    /// Files subscriber `id` (not yet in the index) under its query's keys.
    pub fn insert(&mut self, id: u64, query: Arc<Query>, value: T) {
        let keys = self.keys_of(&query);
        for key in &keys {
            match key {
                Key::Tag(tag) => self.by_tag.entry(tag.clone()).or_default().push(id),
                Key::Type(kind) => self.by_type.entry(kind.clone()).or_default().push(id),
                Key::All => self.all.push(id),
            }
        }
        let previous = self.entries.insert(id, Entry { query, keys, value });
        debug_assert!(previous.is_none(), "subscriber {id} indexed twice");
    }

    /// Unfiles subscriber `id`; its value, if it was in the index.
    pub fn remove(&mut self, id: u64) -> Option<T> {
        let entry = self.entries.remove(&id)?;
        for key in &entry.keys {
            match key {
                Key::Tag(tag) => unlist(&mut self.by_tag, tag, id),
                Key::Type(kind) => unlist(&mut self.by_type, kind, id),
                Key::All => remove_id(&mut self.all, id),
            }
        }
        Some(entry.value)
    }

    /// Empties the index; the values of every subscriber that was in it.
    pub fn drain(&mut self) -> Vec<T> {
        self.by_tag.clear();
        self.by_type.clear();
        self.all.clear();
        self.entries.drain().map(|(_, entry)| entry.value).collect()
    }

    /// The value of subscriber `id`.
    pub fn get(&self, id: u64) -> Option<&T> {
        self.entries.get(&id).map(|entry| &entry.value)
    }

    /// How many subscribers are in the index.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The subscribers whose query matches an event of `event_type` with
    /// `tags`, in ascending id order, each once.
    pub fn matching(&self, event_type: &str, tags: &[String]) -> Vec<u64> {
        let mut ids = self.candidates(event_type, tags);
        ids.retain(|id| self.entries[id].query.matches(event_type, tags));
        ids
    }

    /// The subscribers filed under a key of the event (its type, one of its
    /// tags) or in the all-list, in ascending id order, each once: those
    /// whose query may match it.
    pub fn candidates(&self, event_type: &str, tags: &[String]) -> Vec<u64> {
        let mut ids = self.all.clone();
        if let Some(filed) = self.by_type.get(event_type) {
            ids.extend_from_slice(filed);
        }
        for tag in tags {
            if let Some(filed) = self.by_tag.get(tag.as_str()) {
                ids.extend_from_slice(filed);
            }
        }
        // A subscriber filed under several of the event's keys is one candidate.
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The keys `query` is filed under, each once.
    fn keys_of(&self, query: &Query) -> Vec<Key> {
        if query.is_all() {
            return vec![Key::All];
        }
        let mut keys = Vec::new();
        for item in &query.items {
            let least_crowded = item
                .tags
                .iter()
                .min_by_key(|tag| self.by_tag.get(tag.as_str()).map_or(0, Vec::len));
            match least_crowded {
                Some(tag) => keys.push(Key::Tag(tag.clone())),
                None if item.types.is_empty() => keys.push(Key::All),
                None => keys.extend(item.types.iter().cloned().map(Key::Type)),
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }
}

fn unlist(filed: &mut HashMap<String, Vec<u64>>, key: &str, id: u64) {
    if let Some(ids) = filed.get_mut(key) {
        remove_id(ids, id);
        if ids.is_empty() {
            filed.remove(key);
        }
    }
}

fn remove_id(ids: &mut Vec<u64>, id: u64) {
    if let Some(at) = ids.iter().position(|filed| *filed == id) {
        ids.swap_remove(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcb::QueryItem;

    fn item(types: &[&str], tags: &[&str]) -> QueryItem {
        QueryItem {
            types: types.iter().map(|t| t.to_string()).collect(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn query(items: Vec<QueryItem>) -> Arc<Query> {
        Arc::new(Query { items })
    }

    fn tags(tags: &[&str]) -> Vec<String> {
        tags.iter().map(|t| t.to_string()).collect()
    }

    /// Every subscriber whose query matches, found by looking at all of them.
    fn brute_force(queries: &[(u64, Arc<Query>)], event_type: &str, tags: &[String]) -> Vec<u64> {
        let mut ids: Vec<u64> = queries
            .iter()
            .filter(|(_, q)| q.matches(event_type, tags))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn an_event_reaches_exactly_the_subscribers_whose_query_matches_it() {
        let queries: Vec<(u64, Arc<Query>)> = vec![
            (0, query(vec![])),
            (1, query(vec![item(&[], &["red"])])),
            (2, query(vec![item(&["Shipped"], &[])])),
            (3, query(vec![item(&["Ordered", "Shipped"], &[])])),
            (4, query(vec![item(&["Ordered"], &["red", "big"])])),
            // Two items the same event can match: still one delivery.
            (5, query(vec![item(&[], &["red"]), item(&[], &["big"])])),
            (6, query(vec![item(&["Ordered"], &[]), item(&[], &["red"])])),
            (7, query(vec![item(&[], &["blue"])])),
            (8, query(vec![item(&["Other"], &[])])),
            (9, query(vec![item(&[], &["red", "blue"])])),
        ];
        let mut index = SubscriberIndex::default();
        for (id, q) in &queries {
            index.insert(*id, q.clone(), ());
        }
        let events = [
            ("Ordered", tags(&["red"])),
            ("Ordered", tags(&["red", "big"])),
            ("Shipped", tags(&["red", "big"])),
            ("Shipped", tags(&[])),
            ("Ordered", tags(&["blue"])),
            ("Ordered", tags(&["red", "blue"])),
            ("Cancelled", tags(&["green"])),
            ("Cancelled", tags(&["red", "red"])),
        ];
        for (event_type, event_tags) in &events {
            assert_eq!(
                index.matching(event_type, event_tags),
                brute_force(&queries, event_type, event_tags),
                "{event_type} {event_tags:?}"
            );
        }
        // Spot checks, spelled out.
        assert_eq!(index.matching("Ordered", &tags(&["red"])), [0, 1, 3, 5, 6]);
        assert_eq!(index.matching("Cancelled", &tags(&["green"])), [0]);

        // Removed subscribers are found no more; the others still are.
        for id in [1, 5, 6] {
            assert!(index.remove(id).is_some());
        }
        assert!(index.remove(5).is_none());
        let remaining: Vec<(u64, Arc<Query>)> = queries
            .iter()
            .filter(|(id, _)| ![1, 5, 6].contains(id))
            .cloned()
            .collect();
        for (event_type, event_tags) in &events {
            assert_eq!(
                index.matching(event_type, event_tags),
                brute_force(&remaining, event_type, event_tags)
            );
        }
        assert_eq!(index.len(), remaining.len());
        assert_eq!(index.drain().len(), remaining.len());
        assert_eq!(index.len(), 0);
        assert!(index.matching("Ordered", &tags(&["red"])).is_empty());
    }

    #[test]
    fn random_queries_and_events_match_as_a_scan_of_every_subscriber_does() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let names = |rng: &mut rand::rngs::StdRng, prefix: &str, most: usize| -> Vec<String> {
            (0..rng.gen_range(0..=most))
                .map(|_| format!("{prefix}{}", rng.gen_range(0..5)))
                .collect()
        };
        let mut index = SubscriberIndex::default();
        let mut queries = Vec::new();
        for id in 0..300 {
            let items = (0..rng.gen_range(0..4))
                .map(|_| QueryItem {
                    types: names(&mut rng, "T", 2),
                    tags: names(&mut rng, "t", 3),
                })
                .collect();
            let q = query(items);
            index.insert(id, q.clone(), id);
            queries.push((id, q));
        }
        for _ in 0..2_000 {
            let event_type = format!("T{}", rng.gen_range(0..5));
            let event_tags = names(&mut rng, "t", 4);
            assert_eq!(
                index.matching(&event_type, &event_tags),
                brute_force(&queries, &event_type, &event_tags)
            );
        }
    }

    #[test]
    fn subscribers_to_other_keys_are_not_even_looked_at() {
        let mut index = SubscriberIndex::default();
        for id in 0..2_000 {
            index.insert(id, query(vec![item(&[], &[&format!("s:{id}")])]), ());
        }
        // A tagged item with a type is filed under its tag, not its type.
        index.insert(2_000, query(vec![item(&["E"], &["s:7"])]), ());
        index.insert(2_001, query(vec![item(&["Rare"], &[])]), ());
        assert!(index.candidates("E", &tags(&["other"])).is_empty());
        assert_eq!(index.candidates("E", &tags(&["s:7"])), [7, 2_000]);
        assert_eq!(index.matching("F", &tags(&["s:7"])), [7]);
        assert_eq!(index.candidates("Rare", &tags(&["x", "y"])), [2_001]);
    }

    #[test]
    fn a_tagged_item_is_filed_under_its_least_crowded_tag() {
        let mut index = SubscriberIndex::default();
        for id in 0..10 {
            index.insert(id, query(vec![item(&[], &["tenant:1"])]), ());
        }
        index.insert(10, query(vec![item(&[], &["tenant:1", "order:42"])]), ());
        // An event of tenant 1 about another order does not look at it...
        assert_eq!(
            index.candidates("E", &tags(&["tenant:1", "order:7"])),
            (0..10).collect::<Vec<u64>>()
        );
        // ...one about order 42 does, and it matches.
        assert_eq!(
            index.matching("E", &tags(&["tenant:1", "order:42"])),
            (0..=10).collect::<Vec<u64>>()
        );
    }
}
