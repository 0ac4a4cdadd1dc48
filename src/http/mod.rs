//! The HTTP front end (actix-web): routes, request parsing and responses.
//!
//! Routes speak the community DCB HTTP contract (`GET /read`, `POST /append`)
//! plus `POST /read`, `GET /health` and `GET /metrics`. Handlers parse and
//! validate, then call the [`EventStore`] facade; they never touch SQL or
//! actors directly. Errors become responses in [`error`] only.

pub mod append;
pub mod error;
pub mod read;

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use crate::actors::EventStore;
use crate::dcb::Limits;
use crate::metrics::Metrics;
pub use error::ApiError;

/// What every handler shares.
pub struct AppState {
    pub store: EventStore,
    pub limits: Limits,
    pub metrics: Metrics,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Events fetched per query when streaming a long read.
    pub page_size: i64,
}

/// Registers every route; used by the server and the tests alike.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/append")
            .route(web::post().to(append::append))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/read")
            .route(web::get().to(read::read_get))
            .route(web::post().to(read::read_post))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/health")
            .route(web::get().to(health))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/metrics")
            .route(web::get().to(metrics))
            .default_service(web::to(method_not_allowed)),
    )
    .default_service(web::to(not_found));
}

/// Answers 200 when a reader can reach the database, 503 otherwise.
async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let page = crate::dcb::Page {
        after: 0,
        before: 0,
        backwards: false,
        limit: 0,
    };
    state
        .store
        .read_page(std::sync::Arc::new(crate::dcb::Query::all()), page)
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ok"})))
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "{} {}",
        req.method(),
        req.path()
    )))
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// Reads a request body up to `limit` bytes; 413 beyond it, checked against
/// `Content-Length` first so an oversized body is not read at all.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::InvalidJson(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Middleware: counts requests and observes their latency by route template.
pub async fn record_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.metrics.clone());
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    let response = next.call(req).await?;
    if let Some(metrics) = metrics {
        let status = response.status();
        metrics
            .http_requests_total
            .with_label_values(&[&route, &method, status.as_str()])
            .inc();
        metrics
            .http_request_duration_seconds
            .with_label_values(&[&route])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(response)
}
