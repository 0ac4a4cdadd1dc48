//! When an attempt is repeated, and how long to wait before the next one.
//!
//! A request is repeated, identical, when it may not have reached crablet or
//! crablet says nothing was done or that it does not know: no answer (the
//! connection failed, was reset or timed out), 408, 429, 503, and 500
//! `outcome_unknown`. Anything else that is not a success is the answer.
//! Repeating an append is safe because every event carries an id chosen
//! before the first attempt: an append that was written answers
//! `duplicate: true` with its positions the second time.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::Error;

/// How long to keep repeating a request, and the back-off between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// No attempt starts later than this after the first one.
    pub deadline: Duration,
    /// The wait after the first failed attempt; it doubles after each.
    pub first_backoff: Duration,
    /// The longest wait between two attempts (before a `Retry-After`).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Keep trying for 30 s, waiting 50 ms, 100 ms, ... up to 2 s (each
    /// jittered to between half and all of it).
    fn default() -> Self {
        RetryPolicy {
            deadline: Duration::from_secs(30),
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// One attempt, never repeated.
    pub fn none() -> Self {
        RetryPolicy {
            deadline: Duration::ZERO,
            ..RetryPolicy::default()
        }
    }

    /// The wait before attempt `attempt + 1` (after `attempt` failures):
    /// exponential, jittered between half and all of it, at least what the
    /// server asked for with `Retry-After`.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exponential = self
            .first_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_backoff);
        let half = exponential / 2;
        let jittered = half + rand::thread_rng().gen_range(Duration::ZERO..=half);
        jittered.max(retry_after.unwrap_or_default())
    }
}

/// How one attempt failed.
pub(crate) enum Failure {
    /// Worth repeating (after at least `retry_after` when the server said).
    Transient {
        error: Error,
        retry_after: Option<Duration>,
    },
    /// The answer: repeating would not change it.
    Final(Error),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Final(error)
    }
}

/// Whether a status with crablet's error `code` is worth repeating.
pub(crate) fn is_transient(status: u16, code: &str) -> bool {
    matches!(status, 408 | 429 | 503) || (status == 500 && code == "outcome_unknown")
}

/// Runs `attempt` until it succeeds, fails for good, or the policy's
/// deadline passes (then [`Error::GaveUp`] with the last failure).
pub(crate) async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    mut attempt: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let deadline = Instant::now() + policy.deadline;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let (error, retry_after) = match attempt().await {
            Ok(value) => return Ok(value),
            Err(Failure::Final(error)) => return Err(error),
            Err(Failure::Transient { error, retry_after }) => (error, retry_after),
        };
        let wait = policy.backoff(attempts, retry_after);
        let now = Instant::now();
        if now + wait > deadline {
            return Err(if attempts == 1 {
                error
            } else {
                Error::GaveUp {
                    attempts,
                    last: Box::new(error),
                }
            });
        }
        log::debug!("attempt {attempts} failed ({error}); next in {wait:?}");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_bound_and_honours_retry_after() {
        let policy = RetryPolicy::default();
        for (attempt, full) in [
            (1, 50),
            (2, 100),
            (3, 200),
            (6, 1600),
            (7, 2000),
            (30, 2000),
        ] {
            let wait = policy.backoff(attempt, None);
            let full = Duration::from_millis(full);
            assert!(wait >= full / 2 && wait <= full, "{attempt}: {wait:?}");
        }
        let wait = policy.backoff(1, Some(Duration::from_secs(1)));
        assert!(wait >= Duration::from_secs(1));
    }

    #[test]
    fn only_what_may_not_have_happened_is_repeated() {
        for status in [408, 429, 503] {
            assert!(is_transient(status, "anything"));
        }
        assert!(is_transient(500, "outcome_unknown"));
        assert!(!is_transient(500, "internal"));
        for status in [400, 401, 403, 404, 409, 413, 422] {
            assert!(!is_transient(status, "invalid_request"));
        }
    }
}
