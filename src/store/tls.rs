//! TLS to PostgreSQL, decided by the database URL's `sslmode` and
//! `sslrootcert`, as libpq decides it:
//!
//! | sslmode                 | crablet                                              |
//! |-------------------------|------------------------------------------------------|
//! | absent, `disable`, `prefer` | plain TCP or unix socket, as before TLS support (`prefer` does not try TLS: crablet cannot verify what it would get, and a silent downgrade would hide a misconfiguration; ask for `require` or `verify-full`) |
//! | `require`               | TLS; the certificate is not checked, unless `sslrootcert` is given (then as `verify-ca`) |
//! | `verify-ca`             | TLS; the chain must lead to `sslrootcert`             |
//! | `verify-full`           | TLS; the chain must lead to `sslrootcert` and name the host |
//!
//! TLS modes need a TCP host (PostgreSQL never speaks TLS on a unix socket).
//! tokio-postgres parses only `disable`, `prefer` and `require` and knows no
//! `sslrootcert`: this module takes both out of the URL (URL or key-value
//! form) before tokio-postgres parses the rest. Everything else in the URL is
//! left to tokio-postgres. It opens no connection itself.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring::default_provider, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::embedded::conninfo_value;

/// How crablet secures its database connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbTlsMode {
    Plain,
    /// Encrypted, certificate not checked.
    Require,
    /// Encrypted, chain checked against `sslrootcert`.
    VerifyCa,
    /// Encrypted, chain and host name checked.
    VerifyFull,
}

#[derive(Debug, thiserror::Error)]
pub enum DbTlsError {
    #[error("sslmode={0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    Mode(String),
    #[error("sslmode={0} needs sslrootcert (the PEM file of the certificate authority)")]
    NoRootCert(&'static str),
    #[error("sslrootcert {path}: {problem}")]
    RootCert { path: PathBuf, problem: String },
    #[error("{0} is not supported by crablet (no client certificates)")]
    Unsupported(String),
    #[error("{0}")]
    Syntax(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Parse(#[source] tokio_postgres::Error),
}

/// The connector every connection of crablet uses: plain when the URL asks
/// for no TLS, rustls otherwise.
#[derive(Clone)]
pub struct DbTls {
    rustls: Option<MakeRustlsConnect>,
    pub mode: DbTlsMode,
}

impl DbTls {
    pub fn plain() -> Self {
        DbTls {
            rustls: None,
            mode: DbTlsMode::Plain,
        }
    }
}

/// Parses `url` (a postgres:// URL or a libpq key-value string) into the
/// tokio-postgres configuration and the connector its `sslmode` asks for.
pub fn parse_database_url(url: &str) -> Result<(tokio_postgres::Config, DbTls), DbTlsError> {
    let (rest, sslmode, sslrootcert) = split_tls_options(url)?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(DbTlsError::Parse)?;
    let tls = connector(&mut config, sslmode.as_deref(), sslrootcert.as_deref())?;
    Ok((config, tls))
}

/// Builds the connector for `sslmode` and `sslrootcert` as taken out of a URL;
/// also sets the configuration's own ssl mode to match.
pub fn connector(
    config: &mut tokio_postgres::Config,
    sslmode: Option<&str>,
    sslrootcert: Option<&str>,
) -> Result<DbTls, DbTlsError> {
    let mode = match sslmode.map(str::trim) {
        None | Some("disable") | Some("prefer") | Some("allow") => DbTlsMode::Plain,
        Some("require") if sslrootcert.is_some() => DbTlsMode::VerifyCa,
        Some("require") => DbTlsMode::Require,
        Some("verify-ca") => DbTlsMode::VerifyCa,
        Some("verify-full") => DbTlsMode::VerifyFull,
        Some(other) => return Err(DbTlsError::Mode(other.to_owned())),
    };
    if mode == DbTlsMode::Plain {
        config.ssl_mode(SslMode::Disable);
        return Ok(DbTls::plain());
    }
    config.ssl_mode(SslMode::Require);
    Ok(DbTls {
        rustls: Some(MakeRustlsConnect::new(client_config(mode, sslrootcert)?)),
        mode,
    })
}

/// The rustls client configuration of a TLS `mode` (not `Plain`), trusting
/// `root` (a PEM file) when given. Also what `crablet health` uses for
/// `https://` URLs.
pub fn client_config(
    mode: DbTlsMode,
    sslrootcert: Option<&str>,
) -> Result<rustls::ClientConfig, DbTlsError> {
    let provider = Arc::new(default_provider());
    let chain = match mode {
        DbTlsMode::Plain | DbTlsMode::Require => None,
        DbTlsMode::VerifyCa | DbTlsMode::VerifyFull => {
            let path =
                sslrootcert.ok_or(DbTlsError::NoRootCert(if mode == DbTlsMode::VerifyCa {
                    "verify-ca"
                } else {
                    "verify-full"
                }))?;
            let roots = root_store(path)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| DbTlsError::RootCert {
                        path: path.into(),
                        problem: e.to_string(),
                    })?;
            Some(webpki)
        }
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, chain) {
        (DbTlsMode::VerifyFull, Some(webpki)) => webpki,
        (_, chain) => Arc::new(LenientVerifier {
            chain,
            provider: provider.clone(),
        }),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn root_store(path: &str) -> Result<RootCertStore, DbTlsError> {
    let problem = |problem: String| DbTlsError::RootCert {
        path: path.into(),
        problem,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| problem(e.to_string()))? {
        roots
            .add(cert.map_err(|e| problem(e.to_string()))?)
            .map_err(|e| problem(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(problem("no CERTIFICATE in the file".into()));
    }
    Ok(roots)
}

/// Takes `sslmode` and `sslrootcert` out of a connection string: the rest
/// (for tokio-postgres), and the two values. Client certificate options are
/// refused rather than ignored.
pub fn split_tls_options(
    url: &str,
) -> Result<(String, Option<String>, Option<String>), DbTlsError> {
    let url = url.trim();
    let mut sslmode = None;
    let mut sslrootcert = None;
    let mut take = |key: &str, value: String| -> Result<bool, DbTlsError> {
        match key {
            "sslmode" => sslmode = Some(value),
            "sslrootcert" => sslrootcert = Some(value),
            "sslcert" | "sslkey" | "sslpassword" => {
                return Err(DbTlsError::Unsupported(key.to_owned()))
            }
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    let value = percent_encoding::percent_decode_str(value)
                        .decode_utf8()
                        .map_err(|e| DbTlsError::Syntax(format!("{key}: {e}")))?
                        .into_owned();
                    if !take(key, value)? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (key, value) in libpq_key_value_pairs(url)? {
            if !take(&key, value.clone())? {
                kept.push(format!("{key}={}", conninfo_value(&value)));
            }
        }
        kept.join(" ")
    };
    Ok((rest, sslmode, sslrootcert))
}

/// What a database URL that cannot be parsed should look like; the error is
/// shown after "invalid database URL: ".
const EXPECTED_URL: &str =
    "expected postgres://user@host:port/db or key=value pairs (host=… dbname=…)";

/// `text` with the password of a `scheme://user:password@host` URL hidden,
/// for an error message.
fn without_password(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, _)) if userinfo.contains(':') => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let host_on = &rest[userinfo.len()..];
            format!("{scheme}://{user}:***{host_on}")
        }
        _ => text.to_owned(),
    }
}

/// The pairs of a libpq key-value connection string (`key=value`,
/// `key = 'quoted \' value'`), in their order, unquoted and unescaped.
///
/// tokio-postgres parses this form too, but refuses what crablet must read
/// first (`sslmode=verify-ca`/`verify-full`, `sslrootcert`: "unknown option")
/// and gives no access to the pairs; so [`split_tls_options`] reads them
/// here, takes those out and hands the rest, re-quoted, to tokio-postgres.
/// Public for the other readers of connection strings (the load tester
/// hands psql and pgbench the same string with another `dbname`).
///
/// # Errors
///
/// [`DbTlsError::Syntax`] for a key without `=` or an unterminated quote;
/// the message never repeats a password.
pub fn libpq_key_value_pairs(text: &str) -> Result<Vec<(String, String)>, DbTlsError> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(DbTlsError::Syntax(format!(
                "{:?}: {EXPECTED_URL}",
                without_password(&key)
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(DbTlsError::Syntax(format!(
                            "unterminated quote after {key}=; {EXPECTED_URL}"
                        )))
                    }
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// The certificate check of `require` and `verify-ca`, libpq's meanings
/// (`verify-full` is rustls's own [`WebPkiServerVerifier`], unchanged). The
/// handshake's signatures are verified in both.
#[derive(Debug)]
struct LenientVerifier {
    /// `verify-ca`: the chain must lead to a trusted root, whatever name the
    /// certificate gives. `None` for `require`: encryption without checking
    /// who answers.
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl LenientVerifier {
    /// The provider's signature algorithms, which check the handshake's
    /// signatures in TLS 1.2 and 1.3 alike.
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

impl ServerCertVerifier for LenientVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

/// The connector for one connection: rustls, or none for a plain one (never
/// asked to connect: the configuration's ssl mode is `disable` then).
pub struct MaybeTls<T>(Option<T>);

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl<S> MakeTlsConnect<S> for DbTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = MaybeTls<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = BoxError;

    fn make_tls_connect(&mut self, hostname: &str) -> Result<Self::TlsConnect, Self::Error> {
        match &mut self.rustls {
            // A unix socket has no host name; TLS modes fail at the
            // handshake with tokio-postgres's "no hostname" error.
            Some(rustls) if !hostname.is_empty() => Ok(MaybeTls(Some(
                MakeTlsConnect::<S>::make_tls_connect(rustls, hostname)?,
            ))),
            _ => Ok(MaybeTls(None)),
        }
    }
}

impl<S, T> TlsConnect<S> for MaybeTls<T>
where
    T: TlsConnect<S> + Send + 'static,
    T::Future: Send,
    S: Send + 'static,
{
    type Stream = T::Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<T::Stream, BoxError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        match self.0 {
            Some(tls) => {
                let connecting = tls.connect(stream);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            None => Box::pin(async { Err("TLS is not configured for this connection".into()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_taken_out_of_urls_and_key_value_strings() {
        for (text, rest, mode, root) in [
            (
                "postgres://u:p@db:5432/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fca.pem",
                "postgres://u:p@db:5432/x?application_name=a",
                Some("verify-full"),
                Some("/ca.pem"),
            ),
            ("postgres://db/x", "postgres://db/x", None, None),
            (
                "host=db port=5432 sslmode = verify-ca sslrootcert='/a b/ca.pem' password='x y'",
                "host=db port=5432 password='x y'",
                Some("verify-ca"),
                Some("/a b/ca.pem"),
            ),
        ] {
            let split = split_tls_options(text).unwrap();
            assert_eq!(
                (split.0.as_str(), split.1.as_deref(), split.2.as_deref()),
                (rest, mode, root),
                "{text}"
            );
        }
        // The key-value rest is re-quoted so that tokio-postgres reads the
        // same values.
        let parsed: tokio_postgres::Config = "host=db port=5432 password='x y'".parse().unwrap();
        assert_eq!(parsed.get_password(), Some(&b"x y"[..]));
    }

    #[test]
    fn a_mistyped_database_url_says_what_was_expected() {
        for (url, shown) in [
            ("localhost:5432", "\"localhost:5432\""),
            (
                "postgress://crablet:secret@db:5432/crablet",
                "\"postgress://crablet:***@db:5432/crablet\"",
            ),
            ("host=db crablet", "\"crablet\""),
        ] {
            let Err(DbTlsError::Syntax(message)) = parse_database_url(url) else {
                panic!("{url} was accepted");
            };
            assert_eq!(
                message,
                format!(
                    "{shown}: expected postgres://user@host:port/db \
                     or key=value pairs (host=… dbname=…)"
                )
            );
        }
        assert_eq!(without_password("postgres://u@h/x"), "postgres://u@h/x");
        assert_eq!(
            without_password("postgres://u:p@h/x?a=@"),
            "postgres://u:***@h/x?a=@"
        );
    }

    #[test]
    fn plain_modes_disable_tls_and_verify_modes_need_a_root() {
        let mut config = tokio_postgres::Config::new();
        for mode in [None, Some("disable"), Some("prefer")] {
            let tls = connector(&mut config, mode, None).unwrap();
            assert_eq!(tls.mode, DbTlsMode::Plain);
            assert_eq!(config.get_ssl_mode(), SslMode::Disable);
        }
        let tls = connector(&mut config, Some("require"), None).unwrap();
        assert_eq!(tls.mode, DbTlsMode::Require);
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        assert!(matches!(
            connector(&mut config, Some("verify-full"), None),
            Err(DbTlsError::NoRootCert("verify-full"))
        ));
        assert!(matches!(
            connector(&mut config, Some("sometimes"), None),
            Err(DbTlsError::Mode(_))
        ));
        assert!(matches!(
            split_tls_options("host=db sslcert=/c.pem"),
            Err(DbTlsError::Unsupported(_))
        ));
    }
}
