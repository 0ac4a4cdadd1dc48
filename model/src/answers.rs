//! What crablet answers: appends, projections, the head, errors, the lines
//! of a subscription, and the import of an exported log.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{AppendCondition, Position, SequencedEvent};

/// The answer of `POST /append` (status 200): the contract's two fields, and
/// crablet's position of the last event written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppendResponse {
    /// Time the server spent on the append.
    pub duration_in_microseconds: u64,
    /// True when nothing was written because the condition (or a
    /// requirement, see `failed_requirement`) did not hold.
    pub append_condition_failed: bool,
    /// The position of the last event written (`None` when nothing was).
    #[serde(default)]
    pub last_position: Option<Position>,
    /// True only when the append was a retry of an append already stored
    /// with the same ids: `last_position` is the original's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// The index in `require` of the requirement that did not hold
    /// (`append_condition_failed` is then true; the condition held).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_requirement: Option<usize>,
}

/// The answer of `POST /project`: each projector's state by its id, from one
/// snapshot, and the condition that makes a decision taken on them safe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectResponse {
    /// The states, by projector id.
    pub states: Map<String, Value>,
    /// The head position of the snapshot.
    pub position: Position,
    /// Every projector's query after `position`: append with it and the
    /// append fails if anything the states depend on changed.
    pub condition: AppendCondition,
}

/// The answer of `GET /head`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadResponse {
    /// The highest position committed (0: empty store).
    pub position: Position,
}

/// The body of every error answer: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The detail of an error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// A stable machine-readable code (`invalid_json`, `id_conflict`,
    /// `unavailable`, `outcome_unknown`, ...).
    pub code: String,
    /// What a person reads.
    pub message: String,
    /// The request's `X-Request-Id`, to find it in the server's log.
    #[serde(default)]
    pub request_id: String,
}

/// The keep-alive of a subscription: the head the server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The server's head position when it was sent.
    pub head: Position,
}

/// The last line of a subscription the server ends: why, and after which
/// position to resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionEnd {
    /// `lagging` (the subscriber read too slowly), `shutdown`, ...
    pub reason: String,
    /// What a person reads.
    pub message: String,
    /// Every event up to this position was delivered: resume after it.
    pub after: Position,
}

/// One line of an NDJSON subscription (`/subscribe` without
/// `Accept: text/event-stream`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SubscriptionLine {
    /// `{"heartbeat":{"head":N}}`.
    Heartbeat {
        /// The heartbeat.
        heartbeat: Heartbeat,
    },
    /// `{"end":{...}}`: the server ends the stream.
    End {
        /// Why, and where to resume.
        end: SubscriptionEnd,
    },
    /// A matching event, as `/read` returns it.
    Event(SequencedEvent),
}

/// The body of `POST /admin/import`: events of an exported log, written at
/// their own positions with their own ids, metadata and `recordedAt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// In increasing position order, every position beyond the store's head.
    pub events: Vec<SequencedEvent>,
}

/// The answer of `POST /admin/import`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportResponse {
    /// Events written.
    pub imported: u64,
    /// The store's head after the import.
    pub head: Position,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_lines_are_told_apart() {
        let line: SubscriptionLine = serde_json::from_str(r#"{"heartbeat":{"head":7}}"#).unwrap();
        assert_eq!(
            line,
            SubscriptionLine::Heartbeat {
                heartbeat: Heartbeat { head: 7 }
            }
        );
        let line: SubscriptionLine =
            serde_json::from_str(r#"{"end":{"reason":"lagging","message":"too slow","after":3}}"#)
                .unwrap();
        assert!(matches!(line, SubscriptionLine::End { end } if end.after == 3));
        let line: SubscriptionLine = serde_json::from_str(
            r#"{"type":"E","tags":["a"],"data":"{}","position":4,"id":null,"recordedAt":"2026-01-01T00:00:00.000000Z"}"#,
        )
        .unwrap();
        assert!(matches!(line, SubscriptionLine::Event(e) if e.position == 4));
    }

    #[test]
    fn an_append_answer_without_the_extensions_reads() {
        let r: AppendResponse =
            serde_json::from_str(r#"{"durationInMicroseconds":5,"appendConditionFailed":true}"#)
                .unwrap();
        assert!(r.append_condition_failed);
        assert_eq!(
            (r.last_position, r.duplicate, r.failed_requirement),
            (None, false, None)
        );
    }
}
