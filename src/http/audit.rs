//! The audit line of every append (`crablet::audit` at info): who appended
//! what, or why it was refused. The append handler leaves its outcome on the
//! response ([`AppendAudit`]); the token middleware, which knows the
//! caller, writes the line ([`audit_append`]).

use actix_web::dev::ServiceResponse;

use super::context;

use crate::dcb::{AppendOutcome, Position};

/// Positions of an append, left by the handler on its response for the
/// audit line.
#[derive(Debug, Clone, Copy)]
pub struct AppendAudit {
    pub outcome: &'static str,
    pub first: Option<Position>,
    pub last: Option<Position>,
}

impl AppendAudit {
    pub fn of(outcome: &AppendOutcome) -> Self {
        let (outcome, first, last) = match outcome {
            AppendOutcome::Appended { first, last } => ("appended", Some(*first), Some(*last)),
            AppendOutcome::Duplicate { first, last } => ("duplicate", Some(*first), Some(*last)),
            AppendOutcome::ConditionFailed => ("condition failed", None, None),
            AppendOutcome::RequirementFailed { .. } => ("requirement failed", None, None),
            AppendOutcome::IdConflict { .. } => ("id conflict", None, None),
            AppendOutcome::OverBudget { .. } => ("over budget", None, None),
        };
        AppendAudit {
            outcome,
            first,
            last,
        }
    }
}

/// Whether audit lines are logged (`crablet::audit` at info): when they are
/// not, appends skip gathering what the line would say.
pub fn audit_enabled() -> bool {
    log::log_enabled!(target: "crablet::audit", log::Level::Info)
}

/// One line per append: request id, token name, outcome, positions.
/// Info level on its own target, `crablet::audit`, so that it can be routed
/// or silenced apart from the rest (`RUST_LOG=info,crablet::audit=off`).
pub fn audit_append<B>(name: &str, response: &ServiceResponse<B>) {
    let request_id = context::request_id();
    let status = response.status();
    match response.response().extensions().get::<AppendAudit>() {
        Some(AppendAudit {
            outcome,
            first: Some(first),
            last: Some(last),
        }) => log::info!(
            target: "crablet::audit",
            "append request {request_id} token {name:?}: {outcome} positions {first}..={last}"
        ),
        Some(AppendAudit { outcome, .. }) => log::info!(
            target: "crablet::audit",
            "append request {request_id} token {name:?}: {outcome}"
        ),
        None => log::info!(
            target: "crablet::audit",
            "append request {request_id} token {name:?}: failed with {}",
            status.as_u16()
        ),
    }
}
