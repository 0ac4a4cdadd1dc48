//! Which database serves a read, as the HTTP API speaks of it: the
//! `X-Crablet-Source` response header (`primary` or `replica`) and the
//! client's read-your-writes floor, `minPosition` (a query parameter, the
//! `X-Crablet-Min-Position` header, or `options.minPosition` in a `POST
//! /read` body). See [`crate::replicas`] for how the source is picked.

use actix_web::HttpRequest;

use super::{parse, ApiError};
use crate::dcb::Position;
use crate::replicas::{Route, Source};

/// The response header naming the database that served a request.
pub const SOURCE_HEADER: &str = "X-Crablet-Source";

/// The request header carrying a minimum position.
pub const MIN_POSITION_HEADER: &str = "X-Crablet-Min-Position";

/// The query parameter carrying a minimum position.
pub const MIN_POSITION_PARAMETER: &str = "minPosition";

/// `(SOURCE_HEADER, "primary" | "replica")`.
pub fn header(source: Source) -> (&'static str, &'static str) {
    (SOURCE_HEADER, source.name())
}

/// A minimum position as text (a query parameter or a header): a
/// non-negative integer.
pub fn parse_min_position(what: &str, text: &str) -> Result<Position, ApiError> {
    text.trim()
        .parse::<Position>()
        .ok()
        .filter(|p| *p >= 0)
        .ok_or_else(|| {
            ApiError::InvalidJson(format!(
                "{what}: must be a position (a non-negative integer), not {text:?}"
            ))
        })
}

/// The route of a request whose only query parameter is `minPosition`
/// (`GET /head`, `POST /project`), or its header.
pub fn route_of_query(req: &HttpRequest) -> Result<Route, ApiError> {
    let mut given = None;
    for (name, value) in parse::query_string(req.query_string(), &[MIN_POSITION_PARAMETER])? {
        given = Some(parse_min_position(name, &value)?);
    }
    route(req, given)
}

/// The route of a read: any source that has replayed through the request's
/// minimum position ([`min_position`]).
pub fn route(req: &HttpRequest, given: Option<Position>) -> Result<Route, ApiError> {
    Ok(Route::Any {
        min_position: min_position(req, given)?,
    })
}

/// The highest of the request's minimum positions: its header and `given`
/// (from its query string or body).
pub fn min_position(
    req: &HttpRequest,
    given: Option<Position>,
) -> Result<Option<Position>, ApiError> {
    let from_header = match req.headers().get(MIN_POSITION_HEADER) {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                ApiError::InvalidJson(format!("{MIN_POSITION_HEADER}: must be a position"))
            })?;
            Some(parse_min_position(MIN_POSITION_HEADER, text)?)
        }
    };
    Ok(given.max(from_header))
}
