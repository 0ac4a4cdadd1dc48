//! `POST /project`: the states of several projectors, from one snapshot,
//! with the head position they were computed at and the append condition
//! that makes a decision taken on them safe.
//!
//! Parses and validates only; the states are computed by the database,
//! through a reader ([`crate::actors::EventStore::project`]).

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use crablet_model::{AppendCondition, ProjectResponse};
use serde_json::{Map, Value};

use super::source;
use super::{parse, ApiError, AppState, JsonBody};
use crate::dcb::projection::{check_project, union_query, ProjectRequest, State};

pub async fn project(
    req: HttpRequest,
    state: web::Data<AppState>,
    JsonBody(body): JsonBody,
) -> Result<HttpResponse, ApiError> {
    let route = source::route_of_query(&req)?;
    let request: ProjectRequest = parse::json("body", &body)?;
    let specs = check_project(&request, &state.limits)?;
    let condition = union_query(&specs);
    let (projection, source) = state.store.project(Arc::new(specs), route).await?;
    let mut states = Map::new();
    for (projector, projected) in request.projectors.iter().zip(projection.states) {
        let value = match projected {
            State::Json(value) => value,
            State::Last(None) => Value::Null,
            State::Last(Some(event)) => {
                serde_json::to_value(event).map_err(|e| ApiError::Internal(e.to_string()))?
            }
        };
        states.insert(projector.id.clone().unwrap_or_default(), value);
    }
    Ok(HttpResponse::Ok()
        .insert_header(source::header(source))
        .json(ProjectResponse {
            states,
            position: projection.position,
            condition: AppendCondition::after(condition, projection.position),
        }))
}
