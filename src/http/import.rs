//! `POST /admin/import`: an exported log written at its own positions.
//!
//! The body is parsed strictly and checked ([`CheckedImport`]) before
//! anything is written; the import then goes through the `EventStore`
//! facade to the store, all or nothing. Answers `{"imported": n, "head":
//! last}`, or 409: `position_taken` when its first position is not beyond
//! every position the store has used, `id_conflict` when an id is already
//! stored.

use actix_web::{web, HttpResponse};
use crablet_model::ImportResponse;

use super::{parse, ApiError, AppState, JsonBody};
use crate::dcb::import::ImportBody;
use crate::dcb::{CheckedImport, ImportOutcome};

pub async fn import(
    state: web::Data<AppState>,
    JsonBody(body): JsonBody,
) -> Result<HttpResponse, ApiError> {
    let limits = state.limits.clone();
    let import = parse::off_worker(body, move |body| {
        let body: ImportBody = parse::json("body", body)?;
        Ok(CheckedImport::new(body, &limits)?)
    })
    .await?;
    match state
        .store
        .import(import)
        .await
        .map_err(ApiError::of_import)?
    {
        ImportOutcome::Imported { count, last } => Ok(HttpResponse::Ok().json(ImportResponse {
            imported: count as u64,
            head: last,
        })),
        ImportOutcome::PositionTaken { first, used, head } => {
            Err(ApiError::PositionTaken { first, used, head })
        }
        ImportOutcome::IdsStored(ids) => Err(ApiError::ImportedIdsStored(ids)),
    }
}
