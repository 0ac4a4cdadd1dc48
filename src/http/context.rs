//! The request context: a request id and a deadline for every request, and
//! the HTTP metrics.
//!
//! One middleware ([`around_request`]) wraps every route. It takes the
//! client's `X-Request-Id` (when it is short, printable ASCII) or makes one,
//! returns it on the response, and makes it, together with the request's
//! start time, visible to the code that runs for the request through a
//! task-local [`RequestContext`]: error bodies and log lines carry the id, and
//! body reads stop at the request's deadline. It also counts requests and
//! observes their latency, labelled by route template and a bounded method.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web;

use super::AppState;

/// The header that carries the request id, both ways.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-chosen request id kept; longer ones are replaced.
const MAX_CLIENT_REQUEST_ID_BYTES: usize = 128;

/// What the code serving a request may want to know about it.
#[derive(Clone)]
pub struct RequestContext {
    /// Echoed on the response, in error bodies and in log lines.
    pub request_id: HeaderValue,
    /// When the middleware saw the request: body reads end at
    /// `started + request_timeout`.
    pub started: Instant,
}

tokio::task_local! {
    static CONTEXT: RequestContext;
}

/// The context of the request being served, if any.
pub fn current() -> Option<RequestContext> {
    CONTEXT.try_with(|c| c.clone()).ok()
}

/// The id of the request being served, or `-` outside a request.
pub fn request_id() -> String {
    CONTEXT
        .try_with(|c| c.request_id.to_str().unwrap_or("-").to_string())
        .unwrap_or_else(|_| "-".into())
}

/// Request ids made here: a per-process random prefix and a counter, unique
/// without a random number per request.
struct IdSource {
    prefix: u64,
    next: AtomicU64,
}

static IDS: std::sync::OnceLock<IdSource> = std::sync::OnceLock::new();

fn new_request_id() -> HeaderValue {
    let source = IDS.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        hasher.write_u32(std::process::id());
        IdSource {
            prefix: hasher.finish(),
            next: AtomicU64::new(1),
        }
    });
    let n = source.next.fetch_add(1, Ordering::Relaxed);
    // Hex digits written directly: this runs for every request.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'-'; 16 + 1 + 16];
    for (i, byte) in text[..16].iter_mut().enumerate() {
        *byte = HEX[(source.prefix >> (60 - 4 * i) & 0xf) as usize];
    }
    for (i, byte) in text[17..].iter_mut().enumerate() {
        *byte = HEX[(n >> (60 - 4 * i) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text).expect("hex is a valid header value")
}

fn client_request_id(req: &ServiceRequest) -> Option<HeaderValue> {
    let value = req.headers().get(REQUEST_ID_HEADER)?;
    let bytes = value.as_bytes();
    let acceptable = !bytes.is_empty()
        && bytes.len() <= MAX_CLIENT_REQUEST_ID_BYTES
        && bytes.iter().all(|b| b.is_ascii_graphic());
    acceptable.then(|| value.clone())
}

/// The method as a metric label: the standard methods by name, anything
/// else as `other`, so that clients cannot create series at will.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware: request id, deadline and metrics for every request.
pub async fn around_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id = client_request_id(&req).unwrap_or_else(new_request_id);
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.metrics.clone());
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method());
    let context = RequestContext {
        request_id: request_id.clone(),
        started,
    };
    let mut response = CONTEXT.scope(context, next.call(req)).await?;
    response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
    if let Some(metrics) = metrics {
        let status = response.status();
        metrics
            .http_requests_total
            .with_label_values(&[&route, method, status.as_str()])
            .inc();
        metrics
            .http_request_duration_seconds
            .with_label_values(&[&route])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_and_valid_headers() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16 + 1 + 16);
        let text = a.to_str().unwrap();
        assert!(text[..16].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(&text[16..17], "-");
        let (na, nb) = (&text[17..], &b.to_str().unwrap()[17..]);
        let (na, nb) = (
            u64::from_str_radix(na, 16).unwrap(),
            u64::from_str_radix(nb, 16).unwrap(),
        );
        assert_eq!(nb, na + 1, "the counter is the id's tail");
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let custom = actix_web::http::Method::from_bytes(b"FOO").unwrap();
        assert_eq!(method_label(&custom), "other");
        assert_eq!(method_label(&actix_web::http::Method::GET), "GET");
    }
}
