//! The HTTP front end (actix-web): routes, request parsing and responses.
//!
//! Routes speak the community DCB HTTP contract (`GET /read`, `POST /append`)
//! plus `POST /read`, `POST /project`, `GET|POST /subscribe`, `GET /head`, the event browser at
//! `/`, `GET /health`, `GET /health/live`, `GET /metrics` and `GET /openapi.json`
//! (the API described in `openapi/crablet.json`), and go-crablet's web-app
//! contract under `/go-crablet` ([`gocrablet`]).
//! Handlers parse strictly ([`parse`]) and validate, then call the
//! [`EventStore`] facade; they never touch SQL or actors directly. Errors
//! become responses in [`error`] only; [`context`] gives every request an id
//! and a deadline; [`auth`] maps every route to the token scope it needs.

pub mod append;
pub mod auth;
pub mod browser;
pub mod context;
pub mod error;
pub mod gocrablet;
pub mod parse;
pub mod project;
pub mod read;
pub mod subscribe;

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use crate::actors::EventStore;
use crate::dcb::Limits;
use crate::metrics::Metrics;
use crate::subscriptions::Subscriptions;
pub use error::ApiError;

/// What every handler shares.
pub struct AppState {
    pub store: EventStore,
    /// The live feed of this process, shared by every worker.
    pub subscriptions: Subscriptions,
    pub limits: Limits,
    pub metrics: Metrics,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Events fetched per query when streaming a long read.
    pub page_size: i64,
    /// Bytes at which the reader cuts a page short (`reader.page_max_bytes`).
    pub page_max_bytes: usize,
    /// Whole-request deadline: the body must have arrived this long after
    /// the request started.
    pub request_timeout: Duration,
    /// Which compatibility front ends answer (`compat.*`).
    pub compat: crate::config::CompatSettings,
}

/// Every route [`routes`] registers, with its methods: the OpenAPI document
/// must describe exactly these (the tests compare both, and the server).
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/append", &["POST"]),
    ("/project", &["POST"]),
    ("/read", &["GET", "POST"]),
    ("/health", &["GET"]),
    ("/health/live", &["GET"]),
    ("/metrics", &["GET"]),
    ("/openapi.json", &["GET"]),
    ("/subscribe", &["GET", "POST"]),
    ("/head", &["GET"]),
    ("/", &["GET"]),
    ("/static/app.js", &["GET"]),
    ("/static/style.css", &["GET"]),
    ("/go-crablet/health", &["GET"]),
    ("/go-crablet/append", &["POST"]),
    ("/go-crablet/read", &["POST"]),
    ("/go-crablet/load-test-data", &["POST"]),
    ("/go-crablet/cleanup", &["POST"]),
    ("/go-crablet/project", &["POST"]),
];

/// The OpenAPI 3.1 document of this API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../openapi/crablet.json");

/// Registers every route; used by the server and the tests alike.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/append")
            .route(web::post().to(append::append))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/project")
            .route(web::post().to(project::project))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/read")
            .route(web::get().to(read::read_get))
            .route(web::post().to(read::read_post))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/")
            .route(web::get().to(browser::index))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/static/app.js")
            .route(web::get().to(browser::script))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/static/style.css")
            .route(web::get().to(browser::style))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/subscribe")
            .route(web::get().to(subscribe::subscribe_get))
            .route(web::post().to(subscribe::subscribe_post))
            .default_service(web::to(method_not_allowed)),
    )
    .configure(gocrablet::routes)
    .service(
        web::resource("/head")
            .route(web::get().to(subscribe::head))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/health")
            .route(web::get().to(health))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/health/live")
            .route(web::get().to(live))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/metrics")
            // gzip when the scraper asks for it (Prometheus does); the
            // exposition compresses about tenfold.
            .wrap(actix_web::middleware::Compress::default())
            .route(web::get().to(metrics))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/openapi.json")
            .route(web::get().to(openapi))
            .default_service(web::to(method_not_allowed)),
    )
    .default_service(web::to(not_found));
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// Liveness: 200 while the process serves HTTP, whatever the database does,
/// so that an orchestrator never restarts crablet because PostgreSQL is down.
async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "live"}))
}

/// Readiness: 200 when every writer lane is up and a reader can reach the
/// database, 503 naming what is not otherwise.
pub(crate) async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
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

pub(crate) async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// The most a body buffer is sized up front, whatever `Content-Length` says:
/// a client cannot make crablet allocate memory it has not sent.
const INITIAL_BODY_CAPACITY: usize = 16 * 1024;

/// Reads a JSON request body up to `limit` bytes: 415 unless the body is
/// declared JSON, 413 beyond the limit (checked against `Content-Length`
/// first, so an oversized body is not read at all), 408 when the body has not
/// arrived by the request's deadline.
pub async fn read_json_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    state: &AppState,
) -> Result<web::BytesMut, ApiError> {
    parse::require_json(req.headers())?;
    let limit = state.max_body_bytes;
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let started = context::current().map_or_else(std::time::Instant::now, |c| c.started);
    let deadline = tokio::time::Instant::from_std(started + state.request_timeout);
    let capacity = declared
        .unwrap_or(1024)
        .min(limit)
        .min(INITIAL_BODY_CAPACITY);
    let read = async {
        let mut body = web::BytesMut::with_capacity(capacity);
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::InvalidJson(format!("reading the body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout_at(deadline, read)
        .await
        .map_err(|_| ApiError::RequestTimeout {
            seconds: state.request_timeout.as_secs(),
        })?
}
