//! The HTTP server: one App per worker thread over the shared core (each
//! worker gets its own reader and its own shard of live subscribers), the
//! middleware, and the connection settings.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};

use super::door::{cors, Door};
use super::{AppError, Core};
use crate::actors::EventStore;
use crate::config::Settings;
use crate::http::{self, AppState};

/// Binds the listening socket (before any worker starts, so that a port in
/// use fails the start).
pub fn bind(listen: &str) -> Result<(TcpListener, u16), AppError> {
    let failed = |source| AppError::Listen {
        address: listen.to_owned(),
        source,
    };
    let listener = TcpListener::bind(listen).map_err(failed)?;
    let port = listener.local_addr().map_err(failed)?.port();
    Ok((listener, port))
}

/// The server on `listener`, not yet running; and the certificate reloader
/// when it serves HTTPS.
pub fn start(
    listener: TcpListener,
    settings: &Settings,
    core: &Core,
    door: Door,
) -> Result<(Server, Option<crate::tls::CertificateReloader>), AppError> {
    let Core {
        writers,
        reader_pools,
        subscriptions,
        metrics,
        listen: _,
    } = core.clone();
    let (limits, reader_settings) = (settings.limits.clone(), settings.reader.clone());
    let max_body_bytes = settings.http.max_body_bytes;
    let request_timeout = settings.http.request_timeout();
    let compat = settings.compat.clone();
    let auth_state = web::Data::new(http::auth::AuthState {
        tokens: door.tokens.clone(),
        metrics_requires_token: settings.auth.metrics_requires_token,
    });
    let cors_origins = settings.http.cors_origins.clone();
    let server = HttpServer::new(move || {
        // Runs once on each worker thread: its reader lives there.
        let store =
            EventStore::on_this_thread(&writers, reader_pools.clone(), &reader_settings, &metrics);
        let state = web::Data::new(AppState {
            store,
            // This worker's subscribers are fanned out here.
            subscriptions: subscriptions.on_this_thread(),
            limits: limits.clone(),
            metrics: metrics.clone(),
            max_body_bytes,
            page_size: reader_settings.page_size,
            page_max_bytes: reader_settings.page_max_bytes,
            request_timeout,
            compat: compat.clone(),
        });
        App::new()
            .app_data(state)
            .app_data(auth_state.clone())
            .wrap(middleware::from_fn(http::auth::require_token))
            .wrap(middleware::from_fn(http::context::around_request))
            .wrap(middleware::Condition::new(
                !cors_origins.is_empty(),
                cors(&cors_origins),
            ))
            .configure(http::routes(&compat))
    })
    // A subscription writes many small chunks on one connection; with
    // Nagle's algorithm each would wait for the client's delayed ACK
    // (about 40 ms). Replies are written whole, so nothing is lost.
    .on_connect(|connection, _| {
        if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = tcp.set_nodelay(true);
        }
        if let Some(tls) = connection.downcast_ref::<TlsStream>() {
            let _ = tls.get_ref().0.set_nodelay(true);
        }
    })
    // A client that closes its side of the connection is gone: its
    // connection is closed at once and the response it was being sent
    // dropped. Actix's default keeps a half-closed connection until a
    // write fails, so a closed subscription (a stream with nothing to
    // send until its next heartbeat) would hold its place among
    // `subscriptions.max_subscribers` for up to two heartbeats.
    .h1_allow_half_closed(false)
    .workers(http_workers(settings.http.workers))
    // Signals are handled in `run_until_signalled`: actix's own handling
    // makes SIGINT a forced stop that drops the requests in flight.
    .disable_signals()
    .max_connections(settings.http.max_connections_per_worker)
    .shutdown_timeout(settings.http.shutdown_timeout_s)
    // The head's share of the whole-request deadline; the body's is
    // enforced where it is read (http::read_json_body).
    .client_request_timeout(request_timeout)
    .keep_alive(settings.http.keep_alive());
    let (server, certificate) = match door.https {
        Some((config, reloader)) => (server.listen_rustls_0_23(listener, config), Some(reloader)),
        None => (server.listen(listener), None),
    };
    let server = server.map_err(|source| AppError::Listen {
        address: settings.listen.clone(),
        source,
    })?;
    Ok((server.run(), certificate))
}

/// An HTTPS connection, as `on_connect` sees it.
type TlsStream = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;

/// Raises the soft limit on open files to the hard limit: every connection is
/// a file descriptor, and the common soft default (1,024) would let a few
/// thousand idle clients stop crablet from accepting anyone else.
pub fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => log::debug!("open files limit: {limit}"),
        Err(e) => log::warn!("cannot raise the open files limit: {e}"),
    }
}

/// The number of HTTP worker threads: as configured, or one per two cores.
fn http_workers(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).max(1)
}
