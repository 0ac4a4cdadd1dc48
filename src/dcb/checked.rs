//! An append that passed every check, in the form a writer takes it: the
//! request, its requirements validated, and its footprint computed once.

use super::footprint::{self, Footprint, Key};
use super::model::AppendRequest;
use super::projection::{self, CheckedRequirement};
use super::validate::{validate_append, Limits, ValidationError};

/// An append that passed validation, with its footprint computed once: the
/// only form in which an append reaches a writer.
#[derive(Debug, Clone)]
pub struct CheckedAppend {
    pub request: AppendRequest,
    /// The index keys of each event, in event order (see
    /// [`footprint::event_keys`]): hashed once, used for the locks,
    /// the in-batch conflict index and the inserted `event_keys` rows.
    pub event_keys: Vec<Vec<Key>>,
    /// The lock key of each id, in event order (empty when no event has an
    /// id): taken exclusive, and compared by a lane so that two appends with
    /// a common id never share a batch.
    pub id_keys: Vec<Key>,
    pub footprint: Footprint,
    /// The validated `require` entries, in request order (empty: none, and
    /// the batch sends no requirement at all).
    pub requirements: Vec<CheckedRequirement>,
}

impl CheckedAppend {
    pub fn new(mut request: AppendRequest, limits: &Limits) -> Result<Self, ValidationError> {
        validate_append(&mut request, limits)?;
        let requirements = projection::check_requirements(&request.require, limits)?;
        let event_keys: Vec<Vec<Key>> = request.events.iter().map(footprint::event_keys).collect();
        let entries: usize = event_keys.iter().map(Vec::len).sum();
        if entries > limits.max_index_entries_per_append {
            return Err(ValidationError::TooManyIndexEntries {
                max: limits.max_index_entries_per_append,
                got: entries,
            });
        }
        let id_keys: Vec<Key> = request
            .events
            .iter()
            .filter_map(|e| e.id.as_deref().map(footprint::id_key))
            .collect();
        let footprint = Footprint::with_event_keys(&request, &event_keys, &id_keys);
        Ok(CheckedAppend {
            request,
            event_keys,
            id_keys,
            footprint,
            requirements,
        })
    }

    /// Whether deciding the append may visit index entries that do not
    /// decide it: it has requirements (they fold their projectors), or a
    /// condition item that filters (several tags, or tags and types).
    pub fn scans_to_decide(&self) -> bool {
        !self.requirements.is_empty()
            || self
                .request
                .condition
                .as_ref()
                .is_some_and(|c| footprint::filters(&c.fail_if_events_match))
    }

    /// Index entries the append writes (see `event_keys`).
    pub fn index_entries(&self) -> usize {
        self.event_keys.iter().map(Vec::len).sum()
    }

    /// Number of events the append writes.
    pub fn len(&self) -> usize {
        self.request.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.request.events.is_empty()
    }
}
