//! Security at the door: the bearer tokens in force (refusing to serve a
//! non-loopback address without any, unless `auth.allow_anonymous`), HTTPS
//! when `tls.*` is set, CORS for the origins of `http.cors_origins`, and
//! what a SIGHUP reloads.

use std::sync::Arc;

use super::AppError;
use crate::auth::{AuthSettings, TokenStore, Tokens};
use crate::config::Settings;
use crate::http;

/// What guards the door: the tokens in force and the HTTPS configuration.
pub struct Door {
    pub tokens: Arc<TokenStore>,
    pub https: Option<(rustls::ServerConfig, crate::tls::CertificateReloader)>,
}

impl Door {
    /// Loads the tokens and the certificate; refuses a non-loopback address
    /// without tokens unless anonymous access is allowed.
    pub fn load(settings: &Settings) -> Result<Self, AppError> {
        let tokens = Tokens::load(&settings.auth)?;
        if tokens.is_empty() && !is_loopback(&settings.listen) {
            if !settings.auth.allow_anonymous {
                return Err(AppError::Anonymous {
                    address: settings.listen.clone(),
                });
            }
            log::warn!(
                "no auth token configured and auth.allow_anonymous = true: every request to {} \
                 is served without authentication",
                settings.listen
            );
        }
        let https = if settings.tls.enabled() {
            Some(crate::tls::server_config(&settings.tls)?)
        } else {
            None
        };
        Ok(Door {
            tokens: Arc::new(TokenStore::new(tokens)),
            https,
        })
    }
}

/// Whether every address `listen` resolves to is a loopback one.
fn is_loopback(listen: &str) -> bool {
    use std::net::ToSocketAddrs;
    match listen.to_socket_addrs() {
        Ok(addresses) => {
            let addresses: Vec<_> = addresses.collect();
            !addresses.is_empty() && addresses.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// What a SIGHUP reloads: the tokens (configuration and tokens file) and the
/// HTTPS certificate.
#[derive(Clone)]
pub struct Reload {
    auth: AuthSettings,
    tokens: Arc<TokenStore>,
    certificate: Option<crate::tls::CertificateReloader>,
}

impl Reload {
    /// Reloads the tokens of `auth` into `tokens`.
    pub fn new(auth: &AuthSettings, tokens: &Arc<TokenStore>) -> Self {
        Reload {
            auth: auth.clone(),
            tokens: tokens.clone(),
            certificate: None,
        }
    }

    /// Reloads `certificate` too, when the server has one.
    pub fn with_certificate(self, certificate: Option<crate::tls::CertificateReloader>) -> Self {
        Reload {
            certificate,
            ..self
        }
    }

    /// Reads the tokens file and the certificate again; what fails to load
    /// is logged and the old one stays in force.
    pub fn reload(&self) {
        match Tokens::load(&self.auth)
            .map_err(|e| e.to_string())
            .and_then(|tokens| {
                let count = tokens.len();
                self.tokens
                    .replace(tokens)
                    .map(|()| count)
                    .map_err(str::to_owned)
            }) {
            Ok(count) => log::info!("reloaded the tokens: {count} in force"),
            Err(e) => log::error!("tokens not reloaded (the old ones stay): {e}"),
        }
        if let Some(certificate) = &self.certificate {
            match certificate.reload() {
                Ok(()) => log::info!("reloaded the TLS certificate"),
                Err(e) => log::error!("TLS certificate not reloaded (the old one stays): {e}"),
            }
        }
    }
}

/// CORS for `origins`: those origins may call every route from a browser,
/// with a token; other origins get no CORS header.
pub fn cors(origins: &[String]) -> actix_cors::Cors {
    use actix_web::http::header;
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            http::context::REQUEST_ID_HEADER,
        ])
        .expose_headers([http::context::REQUEST_ID_HEADER, header::WWW_AUTHENTICATE])
        .max_age(3600);
    for origin in origins {
        cors = cors.allowed_origin(origin);
    }
    cors
}
