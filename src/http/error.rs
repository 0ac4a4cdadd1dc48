//! The one place where failures become HTTP responses.
//!
//! Every error body is JSON, `{"error": {"code": "...", "message": "..."}}`,
//! with a stable machine-readable code: 400 for invalid input, 404/405 for
//! unknown routes, 413 for bodies over the limit, 503 (with `Retry-After`)
//! only when crablet knows nothing was written and a retry may succeed, 500
//! `outcome_unknown` when an append may have been written, and 500 with an
//! opaque message for anything else (the full error chain is logged, never
//! sent).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::actors::EventStoreError;
use crate::dcb::ValidationError;
use crate::store::Failure;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body or a parameter is not valid JSON of the expected shape.
    #[error("{0}")]
    InvalidJson(String),
    /// Well-formed input that breaks a DCB rule or a limit.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// crablet sheds load; retry later.
    #[error("{0}")]
    Overloaded(String),
    /// Nothing was written: the database is unreachable, refused the
    /// statement for a transient reason, or a worker restarted; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The append may or may not have been written (the connection or a
    /// worker failed after the batch was sent). The detail stays in the log.
    #[error(
        "the append may or may not have been written; retry it with the same event ids \
         (events[].id), which is safe, or read to find out"
    )]
    OutcomeUnknown(String),
    /// Anything else. The message stays in the log.
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::Invalid(_) => "invalid_request",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::OutcomeUnknown(_) => "outcome_unknown",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_) | ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Overloaded(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::OutcomeUnknown(_) | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Internal(detail) => log::error!("internal error: {detail}"),
            ApiError::OutcomeUnknown(detail) => log::error!("outcome unknown: {detail}"),
            _ => {}
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
            },
        };
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Overloaded(_) | ApiError::Unavailable(_)) {
            response.insert_header(("Retry-After", "1"));
        }
        response.json(body)
    }
}

impl From<EventStoreError> for ApiError {
    fn from(err: EventStoreError) -> Self {
        // The class comes from what the failure says was written.
        match (&err, err.failure()) {
            (EventStoreError::Overloaded, _) => ApiError::Overloaded(err.to_string()),
            (EventStoreError::Unavailable(message), _) => ApiError::Unavailable(message.clone()),
            (_, Failure::Unavailable) => {
                log::warn!("database unavailable: {err:?}");
                ApiError::Unavailable("database unavailable; nothing was written; retry".into())
            }
            (_, Failure::OutcomeUnknown) => ApiError::OutcomeUnknown(format!("{err}: {err:?}")),
            (_, Failure::Refused) => ApiError::Internal(format!("{err}: {err:?}")),
        }
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(err: serde_json::Error) -> Self {
        ApiError::InvalidJson(err.to_string())
    }
}
