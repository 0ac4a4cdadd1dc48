//! A client for crablet, the DCB event store on PostgreSQL, that makes the
//! safe way the easy way:
//!
//! - [`Client::append`] gives every event an id before the first attempt and
//!   repeats the identical request when it may not have been written (no
//!   answer, 408, 429, 503, `outcome_unknown`), with jittered exponential
//!   back-off, `Retry-After` honoured and a total deadline ([`RetryPolicy`]).
//!   A failed condition or requirement is an [`AppendOutcome`], not an error.
//! - [`Client::read`] is a [`Stream`](futures_util::Stream) of events over any
//!   number of pages, with the head position the read reflected.
//! - [`Client::subscribe`] is a stream that reconnects on its own after a
//!   dropped connection, a restart or a lag disconnect, and resumes after the
//!   last event it delivered: every matching event once, in order.
//! - [`Client::project`], [`Client::head`], [`Client::health`].
//!
//! The types of the API come from [`crablet_model`], re-exported as
//! [`model`].
//!
//! # Deciding
//!
//! Read the state a decision needs with `project`, decide, and append with
//! the condition the projection answered: the append fails (and nothing is
//! written) if anything the decision read has changed since.
//!
//! ```no_run
//! use crablet_client::model::{NewEvent, Projector, Query, Reducer};
//! use crablet_client::{Append, AppendOutcome, Client};
//!
//! # async fn run() -> Result<(), crablet_client::Error> {
//! let client = Client::new("http://127.0.0.1:8080")?;
//! let taken = Projector {
//!     id: Some("taken".into()),
//!     query: Query::tag("username:ada"),
//!     reduce: Reducer::Exists,
//!     path: None,
//!     limit: None,
//!     map: None,
//! };
//! let projection = client.project(vec![taken]).await?;
//! if projection.states["taken"] == true {
//!     return Ok(()); // decided: the name is taken
//! }
//! let registered = NewEvent::new("UserRegistered", r#"{"name":"ada"}"#).tag("username:ada");
//! match client.append(Append::new([registered]).condition(projection.condition)).await? {
//!     AppendOutcome::Appended { positions, .. } => println!("registered at {positions:?}"),
//!     AppendOutcome::ConditionFailed => println!("taken meanwhile: decide again"),
//!     AppendOutcome::RequirementFailed { index } => println!("requirement {index} failed"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! `examples/decide.rs` and `examples/read_model.rs` are complete programs,
//! run by crablet's tests against a real server.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod append;
mod error;
mod read;
mod retry;
mod subscribe;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use crablet_model as model;
use crablet_model::{
    ErrorBody, HeadResponse, ImportRequest, ImportResponse, Position, ProjectRequest,
    ProjectResponse, Projector,
};

pub use append::{Append, AppendOutcome};
pub use error::Error;
pub use read::{Events, ReadBuilder};
pub use retry::RetryPolicy;
pub use subscribe::{SubscribeBuilder, Subscription};

use retry::Failure;

/// The header carrying the head position a read reflected.
pub const HEAD_HEADER: &str = "X-Crablet-Head";
/// The header asking a server with replicas to answer from a database that
/// holds at least this position.
pub const MIN_POSITION_HEADER: &str = "X-Crablet-Min-Position";

/// A connection to one crablet server. Cheap to clone: clones share their
/// connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The base URL, without a trailing slash.
    base: String,
    authorization: Option<HeaderValue>,
    retry: RetryPolicy,
    request_timeout: Duration,
    heartbeat_timeout: Duration,
    /// The highest position this client appended or read: later reads ask
    /// for it (`X-Crablet-Min-Position`), so a server reading from replicas
    /// never answers older than what this client has seen.
    seen: AtomicI64,
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    url: String,
    token: Option<String>,
    ca_cert_pem: Option<Vec<u8>>,
    retry: RetryPolicy,
    connect_timeout: Duration,
    request_timeout: Duration,
    heartbeat_timeout: Duration,
}

impl ClientBuilder {
    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts this certificate authority (PEM) for `https://` besides the
    /// web's usual roots: for a server with a private CA.
    pub fn ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_cert_pem = Some(pem.into());
        self
    }

    /// How long requests are repeated, and the back-off between attempts
    /// (default: [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// How long to wait for a connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one attempt of a request may take, its answer included
    /// (default 30 s). Subscriptions are bounded by the heartbeat timeout
    /// instead.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// A subscription that receives nothing, not even a heartbeat, for this
    /// long reconnects (default 45 s: three of the server's default
    /// heartbeat intervals).
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = timeout;
        self
    }

    /// The client.
    pub fn build(self) -> Result<Client, Error> {
        let mut base = self.url.trim().trim_end_matches('/').to_owned();
        if !base.contains("://") {
            // `localhost:8080` means plain HTTP, as curl reads it.
            base = format!("http://{base}");
        }
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.len() < 8 {
            return Err(Error::Config(format!(
                "{}: the URL must be http://host:port or https://host:port",
                self.url
            )));
        }
        let mut http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(pem) = &self.ca_cert_pem {
            let certificate = reqwest::Certificate::from_pem(pem)
                .map_err(|e| Error::Config(format!("the CA certificate: {e}")))?;
            http = http.add_root_certificate(certificate);
        }
        let authorization = match &self.token {
            None => None,
            Some(token) => Some(
                HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                    .map_err(|_| Error::Config("the token is not a valid header value".into()))?,
            ),
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http: http
                    .build()
                    .map_err(|e| Error::Config(format!("the HTTP client: {e}")))?,
                base,
                authorization,
                retry: self.retry,
                request_timeout: self.request_timeout,
                heartbeat_timeout: self.heartbeat_timeout,
                seen: AtomicI64::new(0),
            }),
        })
    }
}

/// `GET /health` when the server is ready.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// Each replica's state and lag, when the server reads from replicas.
    #[serde(default)]
    pub replicas: Vec<serde_json::Value>,
}

/// One request as the client sends it (repeated as is on a retry).
pub(crate) struct Request<'a> {
    pub method: Method,
    pub path: &'a str,
    pub body: Option<Vec<u8>>,
    /// Whether to send `X-Crablet-Min-Position` (reads).
    pub read_your_writes: bool,
}

impl Client {
    /// A client of the server at `url` (`http://host:port` or `https://...`;
    /// `host:port` alone is plain HTTP), with the default settings.
    pub fn new(url: impl Into<String>) -> Result<Client, Error> {
        Client::builder(url).build()
    }

    /// A builder for a client of the server at `url`.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            token: None,
            ca_cert_pem: None,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(45),
        }
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.inner.base
    }

    /// The highest position committed (0: empty store).
    pub async fn head(&self) -> Result<Position, Error> {
        let request = Request {
            method: Method::GET,
            path: "/head",
            body: None,
            read_your_writes: true,
        };
        let (answer, _): (HeadResponse, _) = self.call_json(&request).await?;
        Ok(answer.position)
    }

    /// The states of `projectors` from one snapshot, with the position and
    /// the append condition that make a decision taken on them safe.
    pub async fn project(&self, projectors: Vec<Projector>) -> Result<ProjectResponse, Error> {
        let body = serde_json::to_vec(&ProjectRequest { projectors })
            .map_err(|e| Error::Config(format!("the projectors: {e}")))?;
        let request = Request {
            method: Method::POST,
            path: "/project",
            body: Some(body),
            read_your_writes: true,
        };
        let (answer, _): (ProjectResponse, _) = self.call_json(&request).await?;
        self.saw(answer.position);
        Ok(answer)
    }

    /// Whether the server is ready (`GET /health`), asked once: a server
    /// that is not answers [`Error::Api`] with status 503.
    pub async fn health(&self) -> Result<Health, Error> {
        let request = Request {
            method: Method::GET,
            path: "/health",
            body: None,
            read_your_writes: false,
        };
        match self.attempt(&request).await {
            Ok((_, body)) => parse(&self.inner.base, "/health", &body),
            Err(Failure::Final(error) | Failure::Transient { error, .. }) => Err(error),
        }
    }

    /// Writes events of an exported log at their own positions
    /// (`POST /admin/import`, admin scope); every position must be beyond
    /// the store's head. Repeated like an append: a repeat of an import
    /// that was written answers 409 `position_taken`.
    pub async fn import(
        &self,
        events: Vec<crablet_model::SequencedEvent>,
    ) -> Result<ImportResponse, Error> {
        let body = serde_json::to_vec(&ImportRequest { events })
            .map_err(|e| Error::Config(format!("the events: {e}")))?;
        let request = Request {
            method: Method::POST,
            path: "/admin/import",
            body: Some(body),
            read_your_writes: false,
        };
        let (answer, _): (ImportResponse, _) = self.call_json(&request).await?;
        self.saw(answer.head);
        Ok(answer)
    }

    /// Remembers that a position was seen (appended or read).
    pub(crate) fn saw(&self, position: Position) {
        self.inner.seen.fetch_max(position, Ordering::Relaxed);
    }

    /// `request` with retries; its answer parsed as `T`, and its headers.
    pub(crate) async fn call_json<T: DeserializeOwned>(
        &self,
        request: &Request<'_>,
    ) -> Result<(T, HeaderMap), Error> {
        retry::with_retries(&self.inner.retry, || async {
            let (headers, body) = self.attempt(request).await?;
            let value = parse(&self.inner.base, request.path, &body)?;
            Ok((value, headers))
        })
        .await
    }

    /// One attempt of `request`: the headers and the whole body of a 2xx
    /// answer, or how it failed.
    pub(crate) async fn attempt(
        &self,
        request: &Request<'_>,
    ) -> Result<(HeaderMap, Vec<u8>), Failure> {
        let response = self.send(request, Some(self.inner.request_timeout)).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.connection_failure(request.path, &e))?;
        if status.is_success() {
            return Ok((headers, body.to_vec()));
        }
        Err(self.api_failure(status, &headers, &body))
    }

    /// Sends `request` once and returns the response, whatever its status.
    pub(crate) async fn send(
        &self,
        request: &Request<'_>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, Failure> {
        let url = format!("{}{}", self.inner.base, request.path);
        let mut builder = self.inner.http.request(request.method.clone(), &url);
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(authorization) = &self.inner.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        if let Some(body) = &request.body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let seen = self.inner.seen.load(Ordering::Relaxed);
        if request.read_your_writes && seen > 0 {
            builder = builder.header(MIN_POSITION_HEADER, seen);
        }
        builder
            .send()
            .await
            .map_err(|e| self.connection_failure(request.path, &e))
    }

    /// A failure with no answer: transient.
    pub(crate) fn connection_failure(&self, path: &str, error: &reqwest::Error) -> Failure {
        let mut innermost: &dyn std::error::Error = error;
        while let Some(cause) = innermost.source() {
            innermost = cause;
        }
        let message = if error.is_timeout() {
            "timed out".to_owned()
        } else if error.is_connect() {
            format!("could not connect: {innermost}")
        } else if error.is_body() || error.is_decode() {
            format!("the answer was cut short: {innermost}")
        } else {
            innermost.to_string()
        };
        Failure::Transient {
            error: Error::Connection {
                url: format!("{}{path}", self.inner.base),
                message,
            },
            retry_after: None,
        }
    }

    /// An error answer: transient or final by its status and code.
    pub(crate) fn api_failure(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Failure {
        let (code, message, request_id) = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody { error }) => (error.code, error.message, error.request_id),
            // Not crablet's answer (a proxy's, say): the status says it all.
            Err(_) => (
                status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_ascii_lowercase()
                    .replace(' ', "_"),
                String::from_utf8_lossy(body)
                    .trim()
                    .chars()
                    .take(200)
                    .collect(),
                String::new(),
            ),
        };
        let transient = retry::is_transient(status.as_u16(), &code);
        let error = Error::Api {
            status: status.as_u16(),
            code,
            message,
            request_id,
        };
        if transient {
            let retry_after = headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Failure::Transient { error, retry_after }
        } else {
            Failure::Final(error)
        }
    }
}

/// `body` parsed as `T`, or [`Error::InvalidAnswer`].
fn parse<T: DeserializeOwned>(base: &str, path: &str, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::InvalidAnswer {
        url: format!("{base}{path}"),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_a_scheme_is_plain_http_and_other_schemes_are_refused() {
        let url = |u: &str| Client::new(u).map(|c| c.url().to_owned());
        assert_eq!(url("localhost:8080").unwrap(), "http://localhost:8080");
        assert_eq!(url("https://h:1/").unwrap(), "https://h:1");
        assert!(matches!(url("ftp://h"), Err(Error::Config(_))));
        assert!(matches!(url(""), Err(Error::Config(_))));
    }
}
