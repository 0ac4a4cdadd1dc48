//! HTTPS: the rustls server configuration built from `tls.cert` and
//! `tls.key` (PEM files), and its reload on SIGHUP.
//!
//! It owns reading and checking the certificate chain and the private key,
//! and the certificate resolver that lets a reload swap them under a running
//! server (new handshakes get the new certificate; open connections keep the
//! one they started with). It does not bind sockets ([`crate::app`] does) nor
//! speak to PostgreSQL (`store::tls` owns the database side).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;

/// `[tls]`: both empty serves plain HTTP.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TlsSettings {
    /// PEM file: the server certificate, then its intermediates.
    #[serde(default)]
    pub cert: String,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key: String,
}

impl TlsSettings {
    /// Whether HTTPS is configured (both files named).
    pub fn enabled(&self) -> bool {
        !self.cert.trim().is_empty() || !self.key.trim().is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert and tls.key must both be set (or neither)")]
    Incomplete,
    #[error("tls.cert {path}: {problem}")]
    Cert { path: PathBuf, problem: String },
    #[error("tls.key {path}: {problem}")]
    Key { path: PathBuf, problem: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificate in force, replaced by [`CertificateReloader::reload`].
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }
}

/// Reloads the certificate and key from their files.
#[derive(Debug, Clone)]
pub struct CertificateReloader {
    settings: TlsSettings,
    resolver: Arc<Resolver>,
}

impl CertificateReloader {
    /// Reads both files again and puts them in force; on any error the old
    /// certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = certified_key(&self.settings)?;
        let mut guard = match self.resolver.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(key);
        Ok(())
    }
}

/// The server configuration for `settings` (HTTP/1.1 over TLS 1.2 and 1.3),
/// and the handle that reloads its certificate.
pub fn server_config(
    settings: &TlsSettings,
) -> Result<(rustls::ServerConfig, CertificateReloader), TlsError> {
    let resolver = Arc::new(Resolver {
        current: RwLock::new(Arc::new(certified_key(settings)?)),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((
        config,
        CertificateReloader {
            settings: settings.clone(),
            resolver,
        },
    ))
}

fn certified_key(settings: &TlsSettings) -> Result<CertifiedKey, TlsError> {
    if settings.cert.trim().is_empty() || settings.key.trim().is_empty() {
        return Err(TlsError::Incomplete);
    }
    let cert_path = Path::new(settings.cert.trim());
    let key_path = Path::new(settings.key.trim());
    let cert_error = |problem: String| TlsError::Cert {
        path: cert_path.to_path_buf(),
        problem,
    };
    let key_error = |problem: String| TlsError::Key {
        path: key_path.to_path_buf(),
        problem,
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| key_error(e.to_string()))?;
    let signing_key = default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_error(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| key_error(format!("does not match tls.cert: {e}")))?;
    Ok(certified)
}
