//! One keep-alive HTTP/1.1 connection per virtual client, and the typed calls of
//! crablet's API on it.
//!
//! Owns connecting (loopback only), per-request timeouts, reconnecting after a
//! transport failure, and turning replies into typed outcomes or classified errors.
//! It does not retry: what to do with an error is the caller's decision.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::IgnoredAny;
use serde::Serialize;
use tokio::net::TcpStream;

use crablet_model::{
    AppendRequest, AppendResponse, Position, ProjectRequest, ProjectResponse, Query, ReadOptions,
    SequencedEvent,
};

use crate::paths;

/// Default bound on one request, connect included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest error body kept in an error (enough to show crablet's JSON error).
const MAX_ERROR_BODY_CHARS: usize = 300;

/// The server under test: a loopback socket address.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header value (`host:port` as given).
    host_header: String,
    /// `Bearer <token>`, sent on every request when the server needs a token.
    authorization: Option<String>,
    /// When set, every reply's `X-Crablet-Source` header is counted here.
    sources: Option<Arc<SourceTally>>,
}

/// Name of the header saying which database served a read.
pub const SOURCE_HEADER: &str = "x-crablet-source";

/// How many replies named each database in their `X-Crablet-Source` header
/// (`primary`, `replica`, any other value, or none).
#[derive(Debug, Default)]
pub struct SourceTally {
    /// `X-Crablet-Source: primary`.
    pub primary: AtomicU64,
    /// `X-Crablet-Source: replica`.
    pub replica: AtomicU64,
    /// Any other value.
    pub other: AtomicU64,
    /// No such header.
    pub absent: AtomicU64,
}

/// A [`SourceTally`] read out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SourceCounts {
    /// `X-Crablet-Source: primary`.
    pub primary: u64,
    /// `X-Crablet-Source: replica`.
    pub replica: u64,
    /// Any other value.
    pub other: u64,
    /// No such header.
    pub absent: u64,
}

impl SourceTally {
    /// Counts one reply's header value.
    pub fn record(&self, value: Option<&[u8]>) {
        let counter = match value.map(<[u8]>::trim_ascii) {
            Some(b"primary") => &self.primary,
            Some(b"replica") => &self.replica,
            Some(_) => &self.other,
            None => &self.absent,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn counts(&self) -> SourceCounts {
        SourceCounts {
            primary: self.primary.load(Ordering::Relaxed),
            replica: self.replica.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
            absent: self.absent.load(Ordering::Relaxed),
        }
    }
}

impl SourceCounts {
    /// Every reply counted.
    pub fn total(&self) -> u64 {
        self.primary + self.replica + self.other + self.absent
    }
}

impl fmt::Display for SourceCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replica {}, primary {}, other {}, no header {}",
            self.replica, self.primary, self.other, self.absent
        )
    }
}

impl Target {
    /// Parses `http://HOST:PORT` (path ignored). The host must resolve to a loopback
    /// address: this tool never sends load anywhere else.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("url must start with http:// (got {url})"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let with_port = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| anyhow::anyhow!("cannot resolve {authority}: {e}"))?
            .find(|a| a.ip().is_loopback())
            .ok_or_else(|| {
                anyhow::anyhow!("{authority} is not a loopback address; load goes to loopback only")
            })?;
        Ok(Self {
            addr,
            host_header: authority.to_string(),
            authorization: None,
            sources: None,
        })
    }

    /// This target, with `token` sent as `Authorization: Bearer <token>`.
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.authorization = token.map(|t| format!("Bearer {}", t.trim()));
        self
    }

    /// This target, with every reply's `X-Crablet-Source` counted in `tally`.
    pub fn with_sources(mut self, tally: Arc<SourceTally>) -> Self {
        self.sources = Some(tally);
        self
    }

    /// The `Authorization` header value, when a token is set.
    pub fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }

    /// A target on `127.0.0.1:port`.
    pub fn loopback(port: u16) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Self {
            addr,
            host_header: addr.to_string(),
            authorization: None,
            sources: None,
        }
    }

    /// The base URL, for messages.
    pub fn url(&self) -> String {
        format!("http://{}", self.host_header)
    }
}

/// Why a request did not produce a usable 200 reply.
#[derive(Debug, Clone)]
pub enum RequestError {
    /// The server answered with a non-200 status.
    Status {
        /// HTTP status code.
        status: u16,
        /// Start of the reply body.
        body: String,
    },
    /// No reply within the request timeout.
    Timeout,
    /// The TCP connection could not be opened.
    Connect(String),
    /// The connection failed mid-request.
    Io(String),
    /// A 200 reply whose body is not what the contract says.
    Decode(String),
}

impl RequestError {
    /// A short stable label for counting (`http_503`, `timeout`, ...).
    pub fn label(&self) -> String {
        match self {
            Self::Status { status, .. } => format!("http_{status}"),
            Self::Timeout => "timeout".into(),
            Self::Connect(_) => "connect".into(),
            Self::Io(_) => "io".into(),
            Self::Decode(_) => "decode".into(),
        }
    }

    /// True for the statuses crablet uses to shed load (429, 503).
    pub fn is_overload(&self) -> bool {
        matches!(
            self,
            Self::Status {
                status: 429 | 503,
                ..
            }
        )
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status { status, body } => write!(f, "HTTP {status}: {body}"),
            Self::Timeout => write!(f, "timed out"),
            Self::Connect(e) => write!(f, "connect failed: {e}"),
            Self::Io(e) => write!(f, "connection failed: {e}"),
            Self::Decode(e) => write!(f, "unexpected reply body: {e}"),
        }
    }
}

impl std::error::Error for RequestError {}

/// What a `POST /append` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Written; the position of the last event when the server says it.
    Appended {
        /// `lastPosition` of the reply.
        last_position: Option<Position>,
    },
    /// The condition failed; nothing written.
    ConditionFailed,
}

/// A 200 reply.
struct Reply {
    /// The whole body.
    body: Bytes,
}

/// One HTTP/1.1 keep-alive connection, opened lazily and reopened after a failure.
pub struct Conn {
    /// Where to connect.
    target: Target,
    /// The open connection, if any.
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Bound on one request (connect + send + whole reply).
    timeout: Duration,
}

impl Conn {
    /// A connection to `target` (nothing is opened yet).
    pub fn new(target: Target, timeout: Duration) -> Self {
        Self {
            target,
            sender: None,
            timeout,
        }
    }

    /// Sends one request and returns the body of a 200 reply.
    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Reply, RequestError> {
        match tokio::time::timeout(self.timeout, self.request_inner(method, path, body)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                if !matches!(e, RequestError::Status { .. } | RequestError::Decode(_)) {
                    self.sender = None;
                }
                Err(e)
            }
            Err(_) => {
                // The connection may still carry the late reply: never reuse it.
                self.sender = None;
                Err(RequestError::Timeout)
            }
        }
    }

    async fn request_inner(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Reply, RequestError> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(connect(&self.target).await?);
        }
        let Some(sender) = self.sender.as_mut() else {
            return Err(RequestError::Connect("no connection".into()));
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.target.host_header.as_str())
            .header(CONTENT_TYPE, "application/json");
        if let Some(authorization) = self.target.authorization() {
            request = request.header(hyper::header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| RequestError::Io(format!("building request: {e}")))?;
        sender
            .ready()
            .await
            .map_err(|e| RequestError::Io(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| RequestError::Io(e.to_string()))?;
        let status = response.status().as_u16();
        if let Some(tally) = &self.target.sources {
            tally.record(response.headers().get(SOURCE_HEADER).map(|v| v.as_bytes()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| RequestError::Io(e.to_string()))?
            .to_bytes();
        if status != 200 {
            let text = String::from_utf8_lossy(&body);
            return Err(RequestError::Status {
                status,
                body: text.chars().take(MAX_ERROR_BODY_CHARS).collect(),
            });
        }
        Ok(Reply { body })
    }

    /// `POST /append`.
    pub async fn append(&mut self, req: &AppendRequest) -> Result<AppendOutcome, RequestError> {
        let body = serde_json::to_vec(req).map_err(|e| RequestError::Decode(e.to_string()))?;
        let reply = self.request(Method::POST, "/append", body.into()).await?;
        let parsed: AppendResponse = serde_json::from_slice(&reply.body)
            .map_err(|e| RequestError::Decode(format!("{e}: {}", snippet(&reply.body))))?;
        Ok(if parsed.append_condition_failed {
            AppendOutcome::ConditionFailed
        } else {
            AppendOutcome::Appended {
                last_position: parsed.last_position,
            }
        })
    }

    /// `GET /read`, returning the events.
    pub async fn read(
        &mut self,
        query: &Query,
        options: Option<&ReadOptions>,
    ) -> Result<Vec<SequencedEvent>, RequestError> {
        let path = paths::read_path(query, options);
        let reply = self.request(Method::GET, &path, Bytes::new()).await?;
        serde_json::from_slice(&reply.body)
            .map_err(|e| RequestError::Decode(format!("{e}: {}", snippet(&reply.body))))
    }

    /// `GET /read`, returning only how many events came back (cheaper to decode).
    pub async fn read_count(
        &mut self,
        query: &Query,
        options: Option<&ReadOptions>,
    ) -> Result<u64, RequestError> {
        let path = paths::read_path(query, options);
        let reply = self.request(Method::GET, &path, Bytes::new()).await?;
        let events: Vec<IgnoredAny> = serde_json::from_slice(&reply.body)
            .map_err(|e| RequestError::Decode(format!("{e}: {}", snippet(&reply.body))))?;
        Ok(events.len() as u64)
    }

    /// The position of the newest event matching `query` (0: none), read with
    /// `GET /read` (`limit` 1, backwards).
    pub async fn last_position(&mut self, query: &Query) -> Result<Position, RequestError> {
        let events = self.read(query, Some(&paths::newest_only())).await?;
        Ok(events.first().map_or(0, |e| e.position))
    }

    /// `POST /project`; returns the answer.
    pub async fn project(
        &mut self,
        request: &ProjectRequest,
    ) -> Result<ProjectResponse, RequestError> {
        let body = serde_json::to_vec(request).map_err(|e| RequestError::Decode(e.to_string()))?;
        let reply = self.request(Method::POST, "/project", body.into()).await?;
        serde_json::from_slice(&reply.body)
            .map_err(|e| RequestError::Decode(format!("{e}: {}", snippet(&reply.body))))
    }

    /// `GET /health`: Ok when the server answers 200.
    pub async fn health(&mut self) -> Result<(), RequestError> {
        self.request(Method::GET, "/health", Bytes::new())
            .await
            .map(|_| ())
    }
}

/// Opens a keep-alive HTTP/1.1 connection; its driver runs as a task.
pub(crate) async fn connect(target: &Target) -> Result<SendRequest<Full<Bytes>>, RequestError> {
    let stream = TcpStream::connect(target.addr)
        .await
        .map_err(|e| RequestError::Connect(e.to_string()))?;
    // Requests are small and latency-sensitive: no Nagle delay.
    stream
        .set_nodelay(true)
        .map_err(|e| RequestError::Connect(e.to_string()))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| RequestError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        // The connection ends when the sender is dropped or the peer closes; either
        // way the next request reconnects, so the error carries nothing to act on.
        let _ = connection.await;
    });
    Ok(sender)
}

/// The start of a body, for error messages.
fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(MAX_ERROR_BODY_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_be_loopback() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert!(Target::parse("http://localhost:9000/x").is_ok());
        assert!(Target::parse("http://[::1]:9000").is_ok());
        assert!(Target::parse("http://10.0.0.1:8080").is_err());
        assert!(Target::parse("https://127.0.0.1:8080").is_err());
    }

    #[test]
    fn source_headers_are_counted_by_value() {
        let tally = SourceTally::default();
        for value in [
            Some(&b"replica"[..]),
            Some(b"replica "),
            Some(b"primary"),
            Some(b"elsewhere"),
            None,
        ] {
            tally.record(value);
        }
        let counts = tally.counts();
        assert_eq!(
            counts,
            SourceCounts {
                primary: 1,
                replica: 2,
                other: 1,
                absent: 1
            }
        );
        assert_eq!(counts.total(), 5);
        assert_eq!(
            counts.to_string(),
            "replica 2, primary 1, other 1, no header 1"
        );
    }

    #[test]
    fn append_answers_without_a_last_position_decode() {
        let r: AppendResponse =
            serde_json::from_str(r#"{"durationInMicroseconds":5,"appendConditionFailed":true}"#)
                .unwrap();
        assert!(r.append_condition_failed);
        assert_eq!(r.last_position, None);
    }

    #[test]
    fn error_labels_are_stable() {
        let e = RequestError::Status {
            status: 503,
            body: String::new(),
        };
        assert_eq!(e.label(), "http_503");
        assert!(e.is_overload());
        assert_eq!(RequestError::Timeout.label(), "timeout");
    }
}
