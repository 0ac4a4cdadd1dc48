//! go-crablet's web-app contract, mounted under `/go-crablet`.
//!
//! go-crablet (a Go DCB library) shipped an HTTP app and k6 scripts to
//! benchmark it. This module serves the same routes and answers in the same
//! shapes, so those scripts run unchanged against crablet with
//! `BASE_URL=http://host:port/go-crablet`:
//!
//! - `GET /go-crablet/health`: `{"status":"ok"}` (crablet's readiness check);
//! - `POST /go-crablet/append`: `events` one event or an array, an optional
//!   condition; `200 {"durationInMicroseconds", "appendConditionFailed"}`,
//!   a failed condition included;
//! - `POST /go-crablet/read`: `200 {"durationInMicroseconds",
//!   "numberOfMatchingEvents", "checkpointEventId"}` (the last position read,
//!   as a string, absent when nothing matched), with `X-Crablet-Head`;
//! - `POST /go-crablet/load-test-data?size=tiny|small`: appends a synthetic
//!   data set ([`dataset`]);
//! - `POST /go-crablet/cleanup`: deletes every event, only when
//!   `compat.allow_cleanup` is set (403 otherwise);
//! - `POST /go-crablet/project`: every projector's count of matching events
//!   after `after` (its `initialState` when none matched), as go-crablet's
//!   web app computed it, in `200 {"durationInMicroseconds", "states",
//!   "appendCondition"}`.
//!
//! Requests are translated into crablet's native model ([`wire`]) and go
//! through the same facade, validation, writer lanes and readers as the
//! native routes; only the parsing is lenient, and only here. Errors keep
//! crablet's JSON shape and statuses (go-crablet answered plain text).
//! go-crablet picked a PostgreSQL isolation level per request from
//! `X-Isolation-Level` / `X-Append-If-Isolation`; crablet accepts and
//! ignores them: every conditional append is decided under locks as if
//! appends ran one at a time, which it says in `X-Crablet-Isolation`.
//! The routes are listed in [`super::routes::GO_CRABLET`], one scope mounted
//! only when `compat.go_crablet` is on (404 otherwise).

pub mod dataset;
pub mod wire;

use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::read::{Cursor, HEAD_HEADER};
use super::{parse, ApiError, AppState, JsonBody};
use crate::dcb::projection::{
    check_project, union_query, ProjectRequest, Projector, Reducer, State,
};
use crate::dcb::validate::{validate_query, validate_read_options};
use crate::dcb::{AppendOutcome, AppendRequest, CheckedAppend, Position, Query, ReadOptions};
use crate::replicas::Route;

/// Response header saying what isolation an append got, whatever level the
/// request asked for.
pub const ISOLATION_HEADER: &str = "X-Crablet-Isolation";

/// Conditional appends are decided under advisory locks taken before the
/// check's snapshot, in one order per batch: the outcome is the one a
/// serial execution of the appends would give, for any requested level.
pub const ISOLATION: &str = "serializable-equivalent";

/// go-crablet's durations were never 0 (its scripts check `> 0`).
fn micros(started: Instant) -> u64 {
    (started.elapsed().as_micros() as u64).max(1)
}

pub async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    super::operations::health(state).await
}

/// go-crablet's append answer: exactly these two fields.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GoAppendResponse {
    pub duration_in_microseconds: u64,
    pub append_condition_failed: bool,
}

/// Appends through the writer lanes; `true` when the condition failed.
async fn append_native(state: &AppState, request: AppendRequest) -> Result<bool, ApiError> {
    let checked = CheckedAppend::new(request, &state.limits)?;
    match state
        .store
        .append(checked)
        .await
        .map_err(ApiError::of_append)?
    {
        AppendOutcome::Appended { .. } | AppendOutcome::Duplicate { .. } => Ok(false),
        AppendOutcome::ConditionFailed => Ok(true),
        // Unreachable: this contract never sends requirements.
        AppendOutcome::RequirementFailed { .. } => Ok(true),
        // Unreachable without ids, which this contract never sends.
        AppendOutcome::IdConflict { ids } => Err(ApiError::IdConflict(ids)),
        AppendOutcome::OverBudget { over, budget } => {
            Err(ApiError::over_decision_budget(over, budget))
        }
    }
}

pub async fn append(
    state: web::Data<AppState>,
    JsonBody(body): JsonBody,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let request = parse::json::<wire::GoAppendBody>("body", &body)?.native()?;
    let failed = append_native(&state, request).await?;
    Ok(HttpResponse::Ok()
        .insert_header((ISOLATION_HEADER, ISOLATION))
        .json(GoAppendResponse {
            duration_in_microseconds: micros(started),
            append_condition_failed: failed,
        }))
}

/// go-crablet's read answer: a count, not the events.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GoReadResponse {
    pub duration_in_microseconds: u64,
    pub number_of_matching_events: u64,
    /// The position of the last event read, as a string (go-crablet's
    /// `EventId`); absent when nothing matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_event_id: Option<String>,
}

pub async fn read(
    state: web::Data<AppState>,
    JsonBody(body): JsonBody,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let (query, options) = parse::json::<wire::GoReadBody>("body", &body)?.native()?;
    validate_query("query", &query, &state.limits)?;
    validate_read_options(&options)?;
    // The same paged reads as the native route; events are counted as
    // they come and not kept.
    let Counted { count, last, head } = count_matches(&state, query, &options).await?;
    Ok(HttpResponse::Ok()
        .insert_header((HEAD_HEADER, head.to_string()))
        .json(GoReadResponse {
            duration_in_microseconds: micros(started),
            number_of_matching_events: count,
            checkpoint_event_id: last.map(|p| p.to_string()),
        }))
}

/// The value of query parameter `name`, read as Go's `URL.Query().Get` does:
/// other parameters ignored, the first occurrence wins.
fn query_parameter(raw: &str, name: &str) -> Option<String> {
    raw.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (decode(key) == name).then(|| decode(value))
    })
}

#[derive(Serialize)]
struct LoadTestDataResponse {
    success: bool,
    message: String,
    dataset_size: &'static str,
    courses: usize,
    students: usize,
    enrollments: usize,
}

pub async fn load_test_data(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = query_parameter(req.query_string(), "size").unwrap_or_default();
    let name = if name.is_empty() { "tiny" } else { &name };
    let size = dataset::size(name).ok_or_else(|| {
        ApiError::InvalidJson(format!(
            "size: unknown data set size {name:?}; expected \"tiny\" or \"small\""
        ))
    })?;
    // Appended in chunks through the writer lanes like any append.
    let mut events = dataset::events(size);
    let chunk = state.limits.max_events_per_append.max(1);
    while !events.is_empty() {
        let rest = events.split_off(chunk.min(events.len()));
        let request = AppendRequest {
            events,
            condition: None,
            require: Vec::new(),
        };
        append_native(&state, request).await?;
        events = rest;
    }
    Ok(HttpResponse::Ok().json(LoadTestDataResponse {
        success: true,
        message: format!(
            "Test data loaded successfully: {} courses, {} students, {} enrollments",
            size.courses, size.students, size.enrollments
        ),
        dataset_size: size.name,
        courses: size.courses,
        students: size.students,
        enrollments: size.enrollments,
    }))
}

pub async fn cleanup(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.compat.allow_cleanup {
        return Err(ApiError::Disabled(
            "POST /go-crablet/cleanup deletes every event and is disabled; set \
             compat.allow_cleanup = true (CRABLET_COMPAT__ALLOW_CLEANUP=true) to allow it"
                .into(),
        ));
    }
    state.store.clear().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "success": true,
        "message": "Database cleaned up successfully",
    })))
}

/// go-crablet's `/project`: its web app never ran `transitionFunction`;
/// every projector counted the events matching its query after `after`, and
/// answered `initialState` when there were none. crablet computes the same:
/// without `after`, every count in one statement (the native `count`
/// reducer, one snapshot); with it, by counting the matching events read
/// after that position, as `/go-crablet/read` does. `appendCondition` is the
/// union of the queries after the position the counts saw (go-crablet sent
/// a placeholder with no items), so a decision on these states can use it.
pub async fn project(
    state: web::Data<AppState>,
    JsonBody(body): JsonBody,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let (projectors, after) = parse::json::<wire::GoProjectBody>("body", &body)?.native()?;
    let native: Vec<Projector> = projectors
        .iter()
        .map(|(p, query)| Projector {
            id: Some(p.id.clone()),
            query: query.clone(),
            reduce: Reducer::Count,
            path: None,
            limit: None,
            map: None,
        })
        .collect();
    let specs = check_project(&ProjectRequest { projectors: native }, &state.limits)?;
    let condition = union_query(&specs);
    let (counts, position) = if after == 0 {
        let (projection, _) = state.store.project(Arc::new(specs), Route::Primary).await?;
        let counts = projection
            .states
            .iter()
            .map(|s| match s {
                State::Json(Value::Number(n)) => n.as_u64().unwrap_or(0),
                _ => 0,
            })
            .collect();
        (counts, projection.position)
    } else {
        count_after(&state, &projectors, after).await?
    };
    let mut states = Map::new();
    for ((projector, _), count) in projectors.into_iter().zip(counts) {
        let value = if count == 0 {
            projector.initial_state
        } else {
            Value::from(count)
        };
        states.insert(projector.id, value);
    }
    Ok(HttpResponse::Ok().json(json!({
        "durationInMicroseconds": micros(started),
        "states": states,
        "appendCondition": {
            "failIfEventsMatch": condition,
            "after": position.to_string(),
        },
    })))
}

/// Each projector's count of matching events after `after`, and a head no
/// later than any of the reads (the lowest of their heads).
/// What [`count_matches`] found.
struct Counted {
    count: u64,
    /// The last position read, if any.
    last: Option<Position>,
    /// The read's head position (`X-Crablet-Head`).
    head: Position,
}

/// Counts the events of a read page by page, through the readers, without
/// holding them.
async fn count_matches(
    state: &AppState,
    query: Query,
    options: &ReadOptions,
) -> Result<Counted, ApiError> {
    let mut cursor = Cursor::new(
        Arc::new(query),
        options,
        state.page_size,
        state.page_max_bytes,
    )
    // go-crablet's contract knows nothing of replicas.
    .routed(Route::Primary);
    let (mut count, mut last) = (0, None);
    while let Some(page) = cursor
        .next_page::<Vec<crate::dcb::SequencedEvent>>(&state.store)
        .await?
    {
        count += page.len() as u64;
        if let Some(event) = page.last() {
            last = Some(event.position);
        }
        if cursor.is_done() {
            break;
        }
    }
    Ok(Counted {
        count,
        last,
        head: cursor.head().unwrap_or(0),
    })
}

async fn count_after(
    state: &AppState,
    projectors: &[(wire::GoProjector, Query)],
    after: Position,
) -> Result<(Vec<u64>, Position), ApiError> {
    let options = ReadOptions {
        from: None,
        after: Some(after),
        limit: None,
        backwards: false,
        min_position: None,
    };
    let (mut counts, mut head) = (Vec::with_capacity(projectors.len()), Position::MAX);
    for (_, query) in projectors {
        let counted = count_matches(state, query.clone(), &options).await?;
        head = head.min(counted.head);
        counts.push(counted.count);
    }
    Ok((counts, head))
}

#[cfg(test)]
mod tests {
    use super::query_parameter;

    #[test]
    fn query_parameters_are_read_like_go_does() {
        assert_eq!(
            query_parameter("size=small", "size").as_deref(),
            Some("small")
        );
        assert_eq!(
            query_parameter("x=1&size=tiny&size=small", "size").as_deref(),
            Some("tiny")
        );
        assert_eq!(query_parameter("", "size"), None);
        assert_eq!(query_parameter("size", "size").as_deref(), Some(""));
    }
}
