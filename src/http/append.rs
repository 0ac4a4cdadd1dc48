//! `POST /append`.

use std::time::Instant;

use actix_web::{web, HttpResponse};

use super::{parse, ApiError, AppState, JsonBody};
use crate::dcb::{AppendOutcome, AppendRequest, CheckedAppend};
use crablet_model::AppendResponse;

pub async fn append(
    state: web::Data<AppState>,
    JsonBody(body): JsonBody,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let limits = state.limits.clone();
    let append = parse::off_worker(body, move |body| {
        let request: AppendRequest = parse::json("body", body)?;
        Ok(CheckedAppend::new(request, &limits)?)
    })
    .await?;
    let outcome = state
        .store
        .append(append)
        .await
        .map_err(ApiError::of_append)?;
    let audit = super::audit::audit_enabled().then(|| super::audit::AppendAudit::of(&outcome));
    let mut failed_requirement = None;
    let (failed, last_position, duplicate) = match outcome {
        AppendOutcome::Appended { last, .. } => (false, Some(last), false),
        AppendOutcome::ConditionFailed => (true, None, false),
        AppendOutcome::RequirementFailed { index } => {
            failed_requirement = Some(index);
            (true, None, false)
        }
        AppendOutcome::Duplicate { last, .. } => (false, Some(last), true),
        AppendOutcome::IdConflict { ids } => return Err(ApiError::IdConflict(ids)),
        AppendOutcome::OverBudget { over, budget } => {
            return Err(ApiError::over_decision_budget(over, budget))
        }
    };
    let mut response = HttpResponse::Ok().json(AppendResponse {
        duration_in_microseconds: started.elapsed().as_micros() as u64,
        append_condition_failed: failed,
        last_position,
        duplicate,
        failed_requirement,
    });
    if let Some(audit) = audit {
        response.extensions_mut().insert(audit);
    }
    Ok(response)
}
