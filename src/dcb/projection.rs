//! Projectors: a query plus a built-in reducer that folds the matching events
//! into a small state, computed by the database (`POST /project`), and
//! requirements: a projector's state compared with a value, checked inside an
//! append's batch (`require` on `POST /append`).
//!
//! Pure: this module validates and describes projectors; it runs nothing.
//! Their wire types ([`Projector`], [`Requirement`], ...) live in
//! [`super::model`] and are re-exported here. The store turns a [`ProjectorSpec`] into one call of the SQL
//! reducer (`sql/migrations/007_reduce.sql`), the HTTP layer renders states.
//!
//! Reducers, over the events matching the query (the store's snapshot):
//! - `exists`: whether one exists (bool);
//! - `count`: how many (integer);
//! - `last`: the last one, rendered as `/read` renders events, or null;
//! - `sum` of the number at `path` (a JSON pointer into `data`), 0 when none;
//! - `latest`: the value at `path` of the last event that has it, or null;
//! - `distinct` values at `path`, in order of first appearance, at most
//!   `limit`: `{"values": [...], "truncated": bool}`;
//! - `status`: `map[type]` of the last matching event whose type is a key of
//!   `map` (events of other types are ignored), or null.
//!
//! `sum`, `latest` and `distinct` skip an event whose `data` is not a JSON
//! object PostgreSQL's `jsonb` can hold (not JSON, not an object, a NUL
//! character anywhere), or that has nothing at `path`; `sum` also skips a
//! value that is not a number.

use serde::Serialize;
use serde_json::{Map, Value};

use super::footprint::{self, Key};
use super::model::{Position, Query, SequencedEvent};
use super::validate::{validate_query, Limits, ValidationError};

pub use super::model::{CompareOp, ProjectRequest, Projector, Reducer, Requirement};

/// `distinct` returns this many values unless `limit` says otherwise.
pub const DEFAULT_DISTINCT_LIMIT: u32 = 100;

/// A validated projector, in the form the store sends it to the database.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectorSpec {
    /// The reducer's name.
    pub r: &'static str,
    /// The query's probes (see [`footprint::probes`]); `None` for the
    /// all-query (every event).
    pub p: Option<Vec<SpecProbe>>,
    /// The pointer's reference tokens, unescaped.
    pub path: Vec<String>,
    /// `distinct`'s cap.
    pub l: u32,
    /// `status`'s map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub m: Option<Map<String, Value>>,
    #[serde(skip)]
    pub reducer: Reducer,
    /// The query, for the union condition of `/project` and for the
    /// batch events a requirement's state is folded with.
    #[serde(skip)]
    pub query: Query,
    /// The fields above as JSON: what the database is sent, and the key of
    /// the projector's remembered state (`store::states`).
    #[serde(skip)]
    canonical: String,
}

impl ProjectorSpec {
    /// The projector as JSON, in one canonical form: two projectors with the
    /// same reducer, query (items in the same order), path, cap and map have
    /// the same form, whatever their ids.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }
}

/// One index probe of a projector's query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpecProbe {
    pub k: Key,
    pub tags: Vec<String>,
    pub types: Vec<String>,
    /// The keys the probe may be driven by, when it is not exact (see
    /// [`footprint::Probe::candidate_keys`]): the database scans the rarest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ks: Option<Vec<Key>>,
}

/// A validated requirement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckedRequirement {
    pub q: ProjectorSpec,
    pub op: CompareOp,
    pub v: Value,
}

/// The state of one projector.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Every reducer but `last`.
    Json(Value),
    /// `last`: the event, or none.
    Last(Option<SequencedEvent>),
}

/// What `/project` computed: every state, at one head position.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    /// The head of the log in the snapshot the states were computed in.
    pub position: Position,
    /// In the order of the projectors.
    pub states: Vec<State>,
}

/// Parses a JSON pointer (RFC 6901) into its unescaped reference tokens.
pub fn parse_pointer(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err("a JSON pointer (RFC 6901) is empty or starts with \"/\"".into());
    };
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => out.push('~'),
                    Some('1') => out.push('/'),
                    _ => {
                        return Err(
                            "\"~\" must be followed by \"0\" or \"1\" in a JSON pointer (RFC 6901)"
                                .to_string(),
                        )
                    }
                }
            }
            if out.contains('\0') {
                return Err("must not contain the NUL character".into());
            }
            Ok(out)
        })
        .collect()
}

fn invalid(field: String, reason: impl Into<String>) -> ValidationError {
    ValidationError::Projector {
        field,
        reason: reason.into(),
    }
}

/// Whether a JSON value holds the NUL character (which `jsonb` cannot).
fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Validates a projector; `field` names it in messages (`projectors[0]`).
pub fn check_projector(
    field: &str,
    projector: &Projector,
    limits: &Limits,
) -> Result<ProjectorSpec, ValidationError> {
    validate_query(&format!("{field}.query"), &projector.query, limits)?;
    let reducer = projector.reduce;
    let path = match (&projector.path, reducer.needs_path()) {
        (Some(pointer), true) => {
            parse_pointer(pointer).map_err(|reason| invalid(format!("{field}.path"), reason))?
        }
        (None, true) => {
            return Err(invalid(
                format!("{field}.path"),
                format!("required by the \"{}\" reducer", reducer.name()),
            ))
        }
        (Some(_), false) => {
            return Err(invalid(
                format!("{field}.path"),
                format!(
                    "only for \"sum\", \"latest\" and \"distinct\", not \"{}\"",
                    reducer.name()
                ),
            ))
        }
        (None, false) => Vec::new(),
    };
    let limit = match (projector.limit, reducer) {
        (None, _) => DEFAULT_DISTINCT_LIMIT.min(limits.max_distinct_values),
        (Some(l), Reducer::Distinct) if l >= 1 && l <= limits.max_distinct_values => l,
        (Some(_), Reducer::Distinct) => {
            return Err(invalid(
                format!("{field}.limit"),
                format!("between 1 and {}", limits.max_distinct_values),
            ))
        }
        (Some(_), _) => {
            return Err(invalid(
                format!("{field}.limit"),
                "only for the \"distinct\" reducer",
            ))
        }
    };
    let map = match (&projector.map, reducer) {
        (Some(map), Reducer::Status) => {
            if map.is_empty() {
                return Err(invalid(format!("{field}.map"), "must not be empty"));
            }
            for (event_type, value) in map {
                if event_type.is_empty() || event_type.contains('\0') || has_nul(value) {
                    return Err(invalid(
                        format!("{field}.map"),
                        "types must not be empty, and neither types nor values may contain the NUL character",
                    ));
                }
            }
            Some(map.clone())
        }
        (None, Reducer::Status) => {
            return Err(invalid(
                format!("{field}.map"),
                "required by the \"status\" reducer",
            ))
        }
        (Some(_), _) => {
            return Err(invalid(
                format!("{field}.map"),
                "only for the \"status\" reducer",
            ))
        }
        (None, _) => None,
    };
    let probes = (!projector.query.is_all()).then(|| {
        footprint::probes(&projector.query)
            .into_iter()
            .filter_map(|p| {
                p.key.map(|k| SpecProbe {
                    k,
                    tags: p.tags.to_vec(),
                    types: p.types.to_vec(),
                    ks: p.candidate_keys(),
                })
            })
            .collect()
    });
    let mut spec = ProjectorSpec {
        r: reducer.name(),
        p: probes,
        path,
        l: limit,
        m: map,
        reducer,
        query: projector.query.clone(),
        canonical: String::new(),
    };
    spec.canonical = serde_json::to_string(&spec).expect("a projector serializes");
    Ok(spec)
}

/// Validates the projectors of `/project`: at most `max_projectors`, each
/// with an id unique in the request.
pub fn check_project(
    request: &ProjectRequest,
    limits: &Limits,
) -> Result<Vec<ProjectorSpec>, ValidationError> {
    if request.projectors.is_empty() {
        return Err(invalid("projectors".into(), "at least one projector"));
    }
    if request.projectors.len() > limits.max_projectors {
        return Err(invalid(
            "projectors".into(),
            format!("at most {} projectors", limits.max_projectors),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    request
        .projectors
        .iter()
        .enumerate()
        .map(|(i, projector)| {
            let field = format!("projectors[{i}]");
            let Some(id) = projector.id.as_deref() else {
                return Err(invalid(format!("{field}.id"), "required"));
            };
            if id.is_empty() || id.len() > limits.max_name_bytes {
                return Err(invalid(
                    format!("{field}.id"),
                    format!("1 to {} bytes", limits.max_name_bytes),
                ));
            }
            if !seen.insert(id) {
                return Err(invalid(
                    format!("{field}.id"),
                    format!("{id:?} is the id of an earlier projector"),
                ));
            }
            check_projector(&field, projector, limits)
        })
        .collect()
}

/// Validates the requirements of an append. The comparison must make sense
/// for the reducer: `exists` compares with a bool by `eq`/`ne`; `count` and
/// `sum` with a number; `latest` and `status` with any value by `eq`/`ne`
/// and with a number or a string by the ordering ops. `last` and `distinct`
/// cannot be required.
pub fn check_requirements(
    require: &[Requirement],
    limits: &Limits,
) -> Result<Vec<CheckedRequirement>, ValidationError> {
    if require.len() > limits.max_projectors {
        return Err(invalid(
            "require".into(),
            format!("at most {} requirements", limits.max_projectors),
        ));
    }
    require
        .iter()
        .enumerate()
        .map(|(i, requirement)| {
            let field = format!("require[{i}]");
            let spec = check_projector(
                &format!("{field}.projector"),
                &requirement.projector,
                limits,
            )?;
            let (op, value) = (requirement.op, &requirement.value);
            let fits = match spec.reducer {
                Reducer::Exists => value.is_boolean() && !op.ordering(),
                Reducer::Count | Reducer::Sum => value.is_number(),
                Reducer::Latest | Reducer::Status => {
                    !op.ordering() || value.is_number() || value.is_string()
                }
                Reducer::Last | Reducer::Distinct => {
                    return Err(invalid(
                        format!("{field}.projector.reduce"),
                        format!("\"{}\" cannot be required", spec.r),
                    ))
                }
            };
            if !fits {
                return Err(invalid(
                    format!("{field}.op"),
                    format!(
                        "{:?} cannot compare a \"{}\" state with {value}: exists takes eq/ne \
                         and a bool, count and sum a number, ordering ops a number or a string",
                        op, spec.r
                    )
                    .to_lowercase(),
                ));
            }
            if has_nul(value) {
                return Err(invalid(
                    format!("{field}.value"),
                    "must not contain the NUL character",
                ));
            }
            Ok(CheckedRequirement {
                q: spec,
                op,
                v: value.clone(),
            })
        })
        .collect()
}

/// The condition that makes a decision taken on a projection safe: fail if
/// any event matching one of the projectors' queries was appended after
/// `position`. Its query is the union of the queries (their items
/// concatenated; the all-query if any is).
pub fn union_query(specs: &[ProjectorSpec]) -> Query {
    if specs.iter().any(|s| s.query.is_all()) {
        return Query::all();
    }
    Query {
        items: specs
            .iter()
            .flat_map(|s| s.query.items.iter().cloned())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcb::QueryItem;

    fn projector(reduce: Reducer) -> Projector {
        Projector {
            id: Some("p".into()),
            query: Query {
                items: vec![QueryItem {
                    types: vec!["E".into()],
                    tags: vec![],
                }],
            },
            reduce,
            path: None,
            limit: None,
            map: None,
        }
    }

    #[test]
    fn pointers_are_unescaped_per_rfc_6901() {
        assert_eq!(parse_pointer(""), Ok(vec![]));
        assert_eq!(parse_pointer("/a/b"), Ok(vec!["a".into(), "b".into()]));
        assert_eq!(
            parse_pointer("/a~1b/~0c"),
            Ok(vec!["a/b".into(), "~c".into()])
        );
        assert_eq!(parse_pointer("/"), Ok(vec!["".into()]));
        assert!(parse_pointer("a").is_err());
        assert!(parse_pointer("/a~2").is_err());
        assert!(parse_pointer("/a~").is_err());
    }

    #[test]
    fn reducers_that_need_a_path_refuse_to_go_without_and_others_refuse_one() {
        let limits = Limits::default();
        let err = check_projector("projectors[0]", &projector(Reducer::Sum), &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "projectors[0].path: required by the \"sum\" reducer"
        );
        let mut count = projector(Reducer::Count);
        count.path = Some("/a".into());
        assert!(check_projector("p", &count, &limits).is_err());
        let mut status = projector(Reducer::Status);
        assert!(check_projector("p", &status, &limits).is_err());
        status.map = Some(serde_json::from_str(r#"{"E": "open"}"#).unwrap());
        assert!(check_projector("p", &status, &limits).is_ok());
    }

    #[test]
    fn requirements_must_compare_what_the_reducer_yields() {
        let limits = Limits::default();
        let req = |reduce, op, value: Value| Requirement {
            projector: Projector {
                path: matches!(reduce, Reducer::Sum | Reducer::Latest).then(|| "/a".to_string()),
                ..projector(reduce)
            },
            op,
            value,
        };
        let ok = |r| check_requirements(&[r], &limits).is_ok();
        assert!(ok(req(Reducer::Exists, CompareOp::Eq, Value::Bool(false))));
        assert!(!ok(req(Reducer::Exists, CompareOp::Lt, Value::Bool(false))));
        assert!(!ok(req(Reducer::Exists, CompareOp::Eq, Value::from(1))));
        assert!(ok(req(Reducer::Count, CompareOp::Lt, Value::from(30))));
        assert!(!ok(req(Reducer::Count, CompareOp::Lt, Value::from("30"))));
        assert!(ok(req(Reducer::Sum, CompareOp::Ge, Value::from(2.5))));
        assert!(ok(req(Reducer::Latest, CompareOp::Lt, Value::from("m"))));
        assert!(!ok(req(Reducer::Latest, CompareOp::Lt, Value::Null)));
        assert!(ok(req(Reducer::Latest, CompareOp::Eq, Value::Null)));
        assert!(!ok(req(Reducer::Last, CompareOp::Eq, Value::Null)));
        assert!(!ok(req(Reducer::Latest, CompareOp::Eq, Value::from("a\0"))));
    }

    #[test]
    fn the_union_of_queries_is_the_all_query_when_one_is() {
        let limits = Limits::default();
        let a = check_projector("a", &projector(Reducer::Count), &limits).unwrap();
        let mut all = projector(Reducer::Count);
        all.query = Query::all();
        let all = check_projector("b", &all, &limits).unwrap();
        assert_eq!(union_query(&[a.clone(), a.clone()]).items.len(), 2);
        assert!(union_query(&[a, all]).is_all());
    }
}
