//! The operator's routes: readiness (`/health`), liveness (`/health/live`),
//! the Prometheus exposition (`/metrics`) and the OpenAPI document
//! (`/openapi.json`).

use actix_web::{web, HttpResponse};

use serde_json::{json, Value};

use super::{ApiError, AppState, OPENAPI};
use crate::replicas::Route;

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// Liveness: 200 while the process serves HTTP, whatever the database does,
/// so that an orchestrator never restarts crablet because PostgreSQL is down.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "live"}))
}

/// Readiness: 200 when every writer lane is up and a reader can reach the
/// primary, 503 naming what is not otherwise. With replicas, the body lists
/// each one's state and lag; a replica out of rotation never makes crablet
/// unready (the primary serves its reads).
pub async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let down = state.store.lanes_down();
    if !down.is_empty() {
        let lanes: Vec<String> = down.iter().map(usize::to_string).collect();
        return Err(ApiError::Unavailable(format!(
            "writer lane {} down (restarting or stopped)",
            lanes.join(", ")
        )));
    }
    let page = crate::dcb::Page {
        after: 0,
        before: 0,
        backwards: false,
        limit: 0,
    };
    state
        .store
        .read_page::<crate::store::JsonEvents>(
            std::sync::Arc::new(crate::dcb::Query::all()),
            page,
            Route::Primary,
        )
        .await?;
    if state.replicas.is_empty() {
        return Ok(HttpResponse::Ok().json(json!({"status": "ok"})));
    }
    let replicas: Vec<Value> = state
        .replicas
        .all()
        .iter()
        .map(|replica| {
            let (positions, time) = replica.lag();
            json!({
                "replica": replica.name,
                "state": replica.state().name(),
                "head": replica.head.known(),
                "lagPositions": positions,
                "lagSeconds": time.as_secs_f64(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"status": "ok", "replicas": replicas})))
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
