//! The DCB model: events, queries, append conditions and read options, with
//! their validation and their matching semantics.
//!
//! This module is pure: it knows nothing of PostgreSQL, HTTP or actors. The
//! store and the writer lanes call [`Query::matches`] to decide conditions
//! inside a batch, and [`footprint`] to derive the lock and index keys that
//! make those decisions safe across transactions and processes.
//!
//! Layout, each module depending only on those listed before it:
//! - [`model`]: the types, as they appear on the wire (serde) and in memory,
//!   projectors and requirements included.
//! - [`validate`]: the limits and the checks every request passes before it is
//!   queued; a request that fails them is never written.
//! - [`footprint`]: the 64-bit keys of tags, types and ids, and which keys
//!   an append takes shared or exclusive.
//! - [`projection`]: projectors (query + built-in reducer) and the
//!   requirements an append can carry on their states, validated and
//!   described for the store.
//! - [`checked`]: an append that passed every check, with its footprint: the
//!   form a writer takes.
//! - [`outcome`]: what became of an append (appended, condition failed,
//!   duplicate, id conflict) and one page of a read, shared by the store and
//!   the HTTP layer.
//! - [`import`]: an import of an exported log (events at their own
//!   positions), checked as the append of its events and more, with the
//!   locks it takes.

pub mod checked;
pub mod footprint;
pub mod import;
pub mod model;
pub mod outcome;
pub mod projection;
pub mod validate;

pub use checked::CheckedAppend;
pub use footprint::{Footprint, Key, LockMode};
pub use import::{CheckedImport, ImportOutcome};
pub use model::{
    AppendCondition, AppendRequest, NewEvent, Position, Query, QueryItem, ReadOptions,
    SequencedEvent,
};
pub use outcome::{AppendOutcome, IdClash, OverBudget, Page, StoredEvent};
pub use validate::{Limits, ValidationError};
