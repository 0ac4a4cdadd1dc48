//! `POST /append`, repeated safely.

use std::ops::RangeInclusive;

use crablet_model::{
    AppendCondition, AppendRequest, AppendResponse, NewEvent, Position, Query, Requirement,
};
use reqwest::Method;

use crate::{Client, Error, Request};

/// An append: events written atomically and in order, with an optional
/// condition and requirements.
#[derive(Debug, Clone, PartialEq)]
pub struct Append {
    request: AppendRequest,
}

impl Append {
    /// An unconditional append of `events`.
    pub fn new(events: impl IntoIterator<Item = NewEvent>) -> Self {
        Append {
            request: AppendRequest {
                events: events.into_iter().collect(),
                condition: None,
                require: Vec::new(),
            },
        }
    }

    /// The append with one more event.
    pub fn event(mut self, event: NewEvent) -> Self {
        self.request.events.push(event);
        self
    }

    /// Written only if no event matching the condition's query exists after
    /// its `after` (the condition `project` answers, or one built with
    /// [`AppendCondition::after`]).
    pub fn condition(mut self, condition: AppendCondition) -> Self {
        self.request.condition = Some(condition);
        self
    }

    /// Written only if no event matches `query` after position `after`.
    pub fn fail_if_events_match(self, query: Query, after: Position) -> Self {
        self.condition(AppendCondition::after(query, after))
    }

    /// Written only if the requirement holds too (all of them must).
    pub fn require(mut self, requirement: Requirement) -> Self {
        self.request.require.push(requirement);
        self
    }

    /// The request as it is sent.
    pub fn request(&self) -> &AppendRequest {
        &self.request
    }
}

impl From<NewEvent> for Append {
    fn from(event: NewEvent) -> Self {
        Append::new([event])
    }
}

impl From<AppendRequest> for Append {
    fn from(request: AppendRequest) -> Self {
        Append { request }
    }
}

/// What became of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The events are stored at `positions`. `duplicate` is true when an
    /// earlier attempt (this call's, or an earlier call with the same ids)
    /// had already stored them: nothing was written twice.
    Appended {
        /// The positions of the events, in order.
        positions: RangeInclusive<Position>,
        /// Stored by an earlier attempt.
        duplicate: bool,
    },
    /// An event matching the condition exists after its `after`: nothing
    /// was written. Read again, decide again.
    ConditionFailed,
    /// The requirement at `index` did not hold (the condition did): nothing
    /// was written.
    RequirementFailed {
        /// Its index in the append's requirements.
        index: usize,
    },
}

impl AppendOutcome {
    /// Whether the events are stored.
    pub fn is_appended(&self) -> bool {
        matches!(self, AppendOutcome::Appended { .. })
    }

    /// The position of the last event, when stored.
    pub fn last_position(&self) -> Option<Position> {
        match self {
            AppendOutcome::Appended { positions, .. } => Some(*positions.end()),
            _ => None,
        }
    }
}

impl Client {
    /// Appends, repeating the identical request while it may not have been
    /// written (see [`crate::RetryPolicy`]). Every event without an id gets
    /// one (a random UUID) before the first attempt, so a repeat of an
    /// append that was written is recognised (`duplicate: true`) and never
    /// stored twice.
    ///
    /// A 4xx that says the request is wrong (400, 401, 403, 409
    /// `id_conflict`, 413, 422) is never repeated: it is the `Err`.
    pub async fn append(&self, append: impl Into<Append>) -> Result<AppendOutcome, Error> {
        let mut request = append.into().request;
        for event in &mut request.events {
            if event.id.is_none() {
                event.id = Some(uuid::Uuid::new_v4().to_string());
            }
        }
        let count = request.events.len() as Position;
        let body =
            serde_json::to_vec(&request).map_err(|e| Error::Config(format!("the append: {e}")))?;
        let request = Request {
            method: Method::POST,
            path: "/append",
            body: Some(body),
            read_your_writes: false,
        };
        let (answer, _): (AppendResponse, _) = self.call_json(&request).await?;
        let outcome = match (answer.append_condition_failed, answer.last_position) {
            (false, Some(last)) => {
                self.saw(last);
                AppendOutcome::Appended {
                    positions: (last - count + 1)..=last,
                    duplicate: answer.duplicate,
                }
            }
            (true, _) => match answer.failed_requirement {
                Some(index) => AppendOutcome::RequirementFailed { index },
                None => AppendOutcome::ConditionFailed,
            },
            (false, None) => {
                return Err(Error::InvalidAnswer {
                    url: format!("{}/append", self.url()),
                    message: "neither a position nor a failed condition".into(),
                })
            }
        };
        Ok(outcome)
    }
}
