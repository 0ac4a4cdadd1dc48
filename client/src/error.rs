//! What can go wrong talking to crablet.

/// A failed call. Outcomes that are answers, such as an append whose
/// condition failed, are not errors (see [`crate::AppendOutcome`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// crablet answered with an error: the request is wrong (400, 409, 413,
    /// 422), not allowed (401, 403), or failed on the server.
    #[error("{code} ({status}): {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// crablet's error code (`invalid_json`, `id_conflict`, `forbidden`, ...).
        code: String,
        /// What a person reads.
        message: String,
        /// The request's `X-Request-Id`, to find it in the server's log.
        request_id: String,
    },
    /// No answer: the connection could not be made, was reset or timed out.
    #[error("no answer from {url}: {message}")]
    Connection {
        /// The URL called.
        url: String,
        /// Why.
        message: String,
    },
    /// Every attempt failed in a way worth retrying, until the deadline.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        last: Box<Error>,
    },
    /// The answer is not what crablet sends.
    #[error("unexpected answer from {url}: {message}")]
    InvalidAnswer {
        /// The URL called.
        url: String,
        /// What was wrong with it.
        message: String,
    },
    /// The client's configuration: a bad URL, an unreadable certificate.
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// crablet's error code, when crablet answered with an error (for
    /// [`Error::GaveUp`], the last attempt's).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            Error::GaveUp { last, .. } => last.code(),
            _ => None,
        }
    }

    /// The HTTP status, when crablet answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            Error::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }
}
