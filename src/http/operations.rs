//! The operator's routes: readiness (`/health`), liveness (`/health/live`),
//! the Prometheus exposition (`/metrics`) and the OpenAPI document
//! (`/openapi.json`).

use actix_web::{web, HttpResponse};

use super::{ApiError, AppState, OPENAPI};

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
/// database, 503 naming what is not otherwise.
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
        .read_page::<crate::store::JsonEvents>(std::sync::Arc::new(crate::dcb::Query::all()), page)
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ok"})))
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
