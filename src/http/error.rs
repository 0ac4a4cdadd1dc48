//! The one place where failures become HTTP responses.
//!
//! Every error body is JSON, `{"error": {"code": "...", "message": "...",
//! "requestId": "..."}}`, with a stable machine-readable code: 400 for invalid
//! input, 404/405 for unknown routes, 408 for a request not received in time,
//! 401 without a valid bearer token (`unauthorized`, with `WWW-Authenticate`), 403
//! for a token without the route's scope (`forbidden`), 409 for an append that
//! reuses stored ids (`id_conflict`) and for an import of ids already stored
//! (`id_conflict`) or of positions not beyond the store's (`position_taken`), 413 for bodies over the limit, 415 for a body that is not JSON,
//! 422 for a valid request over a cost budget (`over_budget`), 503 (with
//! `Retry-After`) only when crablet knows nothing was written, 500
//! `outcome_unknown` when an append may have been written, and 500 with an
//! opaque message for anything else (the full error chain is logged
//! with the request id, never sent). A request whose head cannot be parsed
//! (malformed framing or request line, a head over the parser's limit, a head
//! not sent in time) never reaches crablet: actix-http answers it with its
//! own status (400, 431, 408) and an empty body.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use crablet_model::{ErrorBody, ErrorDetail};

use super::context;
use crate::actors::EventStoreError;
use crate::dcb::{IdClash, OverBudget, Position, ValidationError};
use crate::store::Failure;

/// The message of a 409: every clashing id, by its path.
fn id_conflict_message(ids: &[IdClash]) -> String {
    let named: Vec<String> = ids
        .iter()
        .map(|c| format!("events[{}].id {:?}", c.index, c.id))
        .collect();
    format!(
        "{}: already stored by a different append (a retry must repeat the \
         original append exactly: the same events with the same ids, in the same order)",
        named.join(", ")
    )
}

/// The message of an import's 409 for ids already stored.
fn ids_stored_message(ids: &[IdClash]) -> String {
    let named: Vec<String> = ids
        .iter()
        .map(|c| format!("events[{}].id {:?}", c.index, c.id))
        .collect();
    format!(
        "{}: already stored; an import writes only events the store does not hold \
         (nothing was written)",
        named.join(", ")
    )
}

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
    /// An append reuses ids stored by a different append; nothing written.
    #[error("{}", id_conflict_message(.0))]
    IdConflict(Vec<IdClash>),
    /// An import carries ids already stored; nothing written.
    #[error("{}", ids_stored_message(.0))]
    ImportedIdsStored(Vec<IdClash>),
    /// An import's first position is not beyond every position the store
    /// has used; nothing written.
    #[error(
        "events[0].position {first} is not beyond position {used}, the last this store has \
         used (its head is {head}): an import writes only beyond it; import into an empty \
         store, or only the events after its head (nothing was written)"
    )]
    PositionTaken {
        first: Position,
        used: Position,
        head: Position,
    },
    #[error("no route for {0}")]
    NotFound(String),
    /// The route exists, the method does not: 405 with `Allow`.
    #[error("method not allowed; this route answers {allow}")]
    MethodNotAllowed { allow: String },
    /// The route exists but the configuration does not allow it.
    #[error("{0}")]
    Disabled(String),
    /// The body is not JSON (by its `Content-Type`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request body did not arrive before the request's deadline.
    #[error("the request body was not received within {seconds} s")]
    RequestTimeout { seconds: u64 },
    /// crablet sheds load; retry later.
    #[error("{0}")]
    Overloaded(String),
    /// Valid, but it would cost more than its budget: 422 `over_budget`,
    /// nothing read or written; the same request will be refused again.
    #[error("{0}")]
    OverBudget(String),
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
    /// The import may or may not have been written (the connection failed
    /// after it was sent). The detail stays in the log.
    #[error(
        "the import may or may not have been written; retry it (if it was written, the retry \
         is answered 409 position_taken), or read /head to find out"
    )]
    ImportOutcomeUnknown(String),
    /// No valid bearer token (missing, unknown or expired): 401 with
    /// `WWW-Authenticate: Bearer`.
    #[error("{message}")]
    Unauthorized {
        message: String,
        /// A token was sent but is not valid (`error="invalid_token"`).
        invalid: bool,
    },
    /// A valid token without the route's scope: 403.
    #[error("{message}")]
    Forbidden {
        message: String,
        scope: &'static str,
    },
    /// Anything else. The message stays in the log.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::Invalid(_) => "invalid_request",
            ApiError::IdConflict(_) | ApiError::ImportedIdsStored(_) => "id_conflict",
            ApiError::PositionTaken { .. } => "position_taken",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Disabled(_) => "disabled",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::RequestTimeout { .. } => "request_timeout",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::OverBudget(_) => "over_budget",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::OutcomeUnknown(_) | ApiError::ImportOutcomeUnknown(_) => "outcome_unknown",
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_) | ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::IdConflict(_)
            | ApiError::ImportedIdsStored(_)
            | ApiError::PositionTaken { .. } => StatusCode::CONFLICT,
            ApiError::OverBudget(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Disabled(_) => StatusCode::FORBIDDEN,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Overloaded(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::OutcomeUnknown(_)
            | ApiError::ImportOutcomeUnknown(_)
            | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let request_id = context::request_id();
        match self {
            ApiError::Internal(detail) => {
                log::error!("request {request_id}: internal error: {detail}")
            }
            ApiError::OutcomeUnknown(detail) | ApiError::ImportOutcomeUnknown(detail) => {
                log::error!("request {request_id}: outcome unknown: {detail}")
            }
            e if e.status_code().is_server_error() => {
                log::warn!("request {request_id}: {} {e}", e.code())
            }
            e => log::debug!("request {request_id}: {} {e}", e.code()),
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                request_id,
            },
        };
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Overloaded(_) | ApiError::Unavailable(_)) {
            response.insert_header(("Retry-After", "1"));
        }
        match self {
            ApiError::MethodNotAllowed { allow } => {
                response.insert_header(("Allow", allow.as_str()));
            }
            ApiError::Unauthorized { invalid: false, .. } => {
                response.insert_header(("WWW-Authenticate", r#"Bearer realm="crablet""#));
            }
            ApiError::Unauthorized { invalid: true, .. } => {
                response.insert_header((
                    "WWW-Authenticate",
                    r#"Bearer realm="crablet", error="invalid_token""#,
                ));
            }
            ApiError::Forbidden { scope, .. } => {
                response.insert_header((
                    "WWW-Authenticate",
                    format!(
                        r#"Bearer realm="crablet", error="insufficient_scope", scope="{scope}""#
                    ),
                ));
            }
            _ => {}
        }
        if matches!(self, ApiError::RequestTimeout { .. }) {
            // The rest of the body may still be on its way: start afresh.
            response.insert_header((actix_web::http::header::CONNECTION, "close"));
        }
        response.json(body)
    }
}

impl ApiError {
    /// An append's failure: a 503 says that nothing was written (what makes
    /// the retry safe without ids).
    pub fn of_append(err: EventStoreError) -> Self {
        match ApiError::from(err) {
            ApiError::Unavailable(message) if !message.contains("nothing was written") => {
                ApiError::Unavailable(format!("{message} (nothing was written)"))
            }
            other => other,
        }
    }

    /// An import's failure: an unknown outcome says how to find it out.
    pub fn of_import(err: EventStoreError) -> Self {
        match ApiError::from(err) {
            ApiError::OutcomeUnknown(detail) => ApiError::ImportOutcomeUnknown(detail),
            other => other,
        }
    }

    /// An append over its decision budget.
    pub fn over_decision_budget(over: OverBudget, budget: i64) -> Self {
        ApiError::OverBudget(format!(
            "{over}: deciding it would visit more than {budget} index entries \
             (writer.decision_budget_entries); nothing was written. Narrow it (a rarer \
             tag), or give the condition a later `after`"
        ))
    }
}

impl From<EventStoreError> for ApiError {
    fn from(err: EventStoreError) -> Self {
        // The class comes from what the failure says was written.
        match (&err, err.failure()) {
            (EventStoreError::Overloaded, _) => ApiError::Overloaded(err.to_string()),
            (EventStoreError::Unavailable(message), _) => ApiError::Unavailable(message.clone()),
            (EventStoreError::OverBudget(message), _) => ApiError::OverBudget(message.clone()),
            (_, Failure::Unavailable) => {
                log::warn!("database unavailable: {err:?}");
                ApiError::Unavailable("the database is unavailable; retry".into())
            }
            (_, Failure::OutcomeUnknown) => ApiError::OutcomeUnknown(format!("{err}: {err:?}")),
            (_, Failure::Refused) => ApiError::Internal(format!("{err}: {err:?}")),
        }
    }
}
