//! The live event browser: one HTML page with its script and style sheet,
//! built into the binary (no CDN, no framework, no files read at run time).
//!
//! The page speaks only the public API (`/read`, `/subscribe`, `/head`,
//! `/metrics`); this module serves static bytes and knows nothing else.

use actix_web::http::header;
use actix_web::HttpResponse;

const INDEX_HTML: &str = include_str!("../../static/index.html");
const APP_JS: &str = include_str!("../../static/app.js");
const STYLE_CSS: &str = include_str!("../../static/style.css");

/// The page's own resources may load; nothing from elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn serve(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(body)
}

pub async fn index() -> HttpResponse {
    serve("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn script() -> HttpResponse {
    serve("text/javascript; charset=utf-8", APP_JS)
}

pub async fn style() -> HttpResponse {
    serve("text/css; charset=utf-8", STYLE_CSS)
}
