//! DCB types as they appear on the wire and in memory (events, queries,
//! conditions, read options, projectors and requirements), and query
//! matching: defined once in the `crablet-model` crate, which the client and
//! the load tester share, and re-exported here for the rest of the server.

pub use crablet_model::{
    null_as_default, AppendCondition, AppendRequest, CompareOp, NewEvent, Position, ProjectRequest,
    Projector, Query, QueryItem, ReadOptions, Reducer, Requirement, SequencedEvent,
};
