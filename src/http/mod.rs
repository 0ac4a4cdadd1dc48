//! The HTTP front end (actix-web): routes, request parsing and responses.
//!
//! Routes speak the community DCB HTTP contract (`GET /read`, `POST /append`)
//! plus `POST /read`, `POST /project`, `GET|POST /subscribe`, `GET /head`,
//! `POST /admin/import` ([`import`]), the event browser at
//! `/`, `GET /health`, `GET /health/live`, `GET /metrics` and `GET /openapi.json`
//! (the API described in `openapi/crablet.json`), and go-crablet's web-app
//! contract under `/go-crablet` ([`gocrablet`]).
//! Handlers parse strictly ([`parse`]) and validate, then call the
//! [`EventStore`] facade; they never touch SQL or actors directly. Errors
//! become responses in [`error`] only; [`context`] gives every request an id
//! and a deadline; [`auth`] maps every route to the token scope it needs.

pub mod append;
pub mod audit;
pub mod auth;
pub mod browser;
pub mod context;
pub mod error;
pub mod gocrablet;
pub mod import;
pub mod operations;
pub mod parse;
pub mod project;
pub mod read;
pub mod routes;
pub mod source;
pub mod subscribe;

use std::time::Duration;

use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

use crate::actors::EventStore;
use crate::dcb::Limits;
use crate::metrics::Metrics;
use crate::subscriptions::Subscriptions;
pub use error::ApiError;
pub use routes::register as routes;

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
    /// The replicas reads may be served by, for `/health`.
    pub replicas: crate::replicas::Replicas,
}

/// The OpenAPI 3.1 document of this API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../openapi/crablet.json");

/// A JSON request body, read whole before the handler runs (see
/// [`read_json_body`] for what refuses it). Handlers take it as an argument.
pub struct JsonBody(pub web::BytesMut);

impl actix_web::FromRequest for JsonBody {
    type Error = ApiError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let (req, payload) = (req.clone(), payload.take());
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::Internal("the application state is missing".into()))?;
            read_json_body(&req, payload, state).await.map(JsonBody)
        })
    }
}

/// The most a body buffer is sized up front, whatever `Content-Length` says:
/// a client cannot make crablet allocate memory it has not sent.
const INITIAL_BODY_CAPACITY: usize = 16 * 1024;

/// Reads a JSON request body up to `limit` bytes: 415 unless the body is
/// declared JSON, 413 beyond the limit (checked against `Content-Length`
/// first, so an oversized body is not read at all), 408 when the body has not
/// arrived by the request's deadline.
async fn read_json_body(
    req: &HttpRequest,
    mut payload: actix_web::dev::Payload,
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
