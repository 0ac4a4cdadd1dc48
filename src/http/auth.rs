//! Who may call which route: the middleware that enforces what the route
//! table says each route needs ([`super::routes::access_of`]), and logs the
//! audit line of every append ([`super::audit`]).
//!
//! The middleware runs inside [`super::context::around_request`] (so refusals
//! carry the request id and are counted) and before any handler: a refused
//! request reads no body and writes nothing. It does not know how tokens are
//! checked ([`crate::auth`] does) and it never logs a token, only its name.

use std::sync::Arc;
use std::time::SystemTime;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::AUTHORIZATION;
use actix_web::middleware::Next;
use actix_web::web;

use super::audit::{audit_append, audit_enabled};
use super::routes::{access_of, Access};
use super::{context, ApiError};
use crate::auth::{Refusal, Scope, TokenStore};

/// The authentication settings the middleware needs, shared by every worker.
pub struct AuthState {
    pub tokens: Arc<TokenStore>,
    /// `auth.metrics_requires_token`.
    pub metrics_requires_token: bool,
}

/// Middleware: refuses with 401 (no valid token) or 403 (no scope) before the
/// handler runs; records the caller in the request's extensions; logs the
/// audit line of appends.
pub async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AuthState>>().cloned() else {
        // Every server registers the state; without it nothing is served.
        let refusal = ApiError::Internal("authentication state missing".into());
        return Ok(req.error_response(refusal).map_into_right_body());
    };
    let tokens = state.tokens.current();
    if tokens.is_empty() && !audit_enabled() {
        // Nothing to check and nothing to log: the route is not looked up.
        return Ok(next.call(req).await?.map_into_left_body());
    }
    // What the request needs: nothing, or a valid token with a scope, or
    // (a path matching no route) a valid token of any scope, so that a scan
    // learns nothing about which routes exist.
    let (needs_token, scope) = match req.match_pattern().as_deref().map(access_of) {
        Some(Access::Open) => (false, None),
        Some(Access::Needs(Scope::Metrics)) if !state.metrics_requires_token => (false, None),
        Some(Access::Needs(scope)) => (true, Some(scope)),
        None => (true, None),
    };
    // Who is calling: a token's name, or nobody when none was needed.
    let caller = if tokens.is_empty() || !needs_token {
        None
    } else {
        let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        match tokens.check(header, scope, SystemTime::now()) {
            Ok(caller) => Some(caller),
            Err(refusal) => {
                let error = refused(refusal);
                if scope == Some(Scope::Append) {
                    log::info!(
                        target: "crablet::audit",
                        "append request {} refused: {error}",
                        context::request_id(),
                    );
                }
                return Ok(req.error_response(error).map_into_right_body());
            }
        }
    };
    let response = next.call(req).await?;
    if scope == Some(Scope::Append) && audit_enabled() {
        let name = caller.as_ref().map_or("anonymous", |c| &*c.name);
        audit_append(name, &response);
    }
    Ok(response.map_into_left_body())
}

fn refused(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Missing => ApiError::Unauthorized {
            message: "this route needs a token: Authorization: Bearer <token>".into(),
            invalid: false,
        },
        Refusal::Invalid => ApiError::Unauthorized {
            message: "the token is not valid".into(),
            invalid: true,
        },
        Refusal::Expired => ApiError::Unauthorized {
            message: "the token has expired".into(),
            invalid: true,
        },
        Refusal::Forbidden { scope, name } => ApiError::Forbidden {
            message: format!("token {name:?} lacks the {:?} scope", scope.name()),
            scope: scope.name(),
        },
    }
}
