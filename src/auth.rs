//! Bearer tokens: who may call crablet, and for what.
//!
//! This module owns the token settings (`auth.*`: names, SHA-256 digests,
//! scopes, expiry), loading them from the configuration and from
//! `auth.tokens_file`, minting new tokens (`crablet token new`), and the check
//! a request's `Authorization: Bearer <token>` header goes through. It knows
//! nothing of routes: [`crate::http::auth`] maps every route to a [`Scope`].
//! It never stores, logs or returns a token itself: only its digest and its
//! name.
//!
//! # Why a hash-map lookup is safe here
//!
//! A presented token is hashed (SHA-256) and the digest is looked up in a
//! `HashMap`. The lookup's timing depends on the digest of what the client
//! sent, never on a secret compared byte by byte: to learn anything about a
//! stored digest from timing, an attacker would have to choose inputs whose
//! SHA-256 share a prefix with it, which is what SHA-256 prevents. A stored
//! digest is not a secret worth guessing either: a token is 256 random bits,
//! so its digest cannot be inverted. The map's own hasher (SipHash with
//! per-process random keys) does not let a client aim at one bucket.
//! The whole check is one SHA-256 of a 72-byte token and one lookup.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a token allows. `admin` allows everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Reads, subscriptions, the head, projections.
    Read,
    /// Appends.
    Append,
    /// `/metrics` (when `auth.metrics_requires_token`).
    Metrics,
    /// Everything, including what a future administrative route needs.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Append, Scope::Metrics, Scope::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Append => "append",
            Scope::Metrics => "metrics",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == text.trim())
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// One token as configured (`[[auth.tokens]]` or `[[tokens]]` in the tokens
/// file).
#[derive(Debug, Clone, Deserialize)]
pub struct TokenSettings {
    /// Who holds the token: appears in the audit log, never the token.
    pub name: String,
    /// SHA-256 of the token, hex: the configuration never holds the token.
    pub sha256: String,
    pub scopes: Vec<Scope>,
    /// RFC 3339; the token is refused from then on.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    #[serde(default)]
    pub tokens: Vec<TokenSettings>,
    /// A TOML file with more `[[tokens]]` (empty: none); read at start and on
    /// SIGHUP, so tokens can be added and removed without a restart.
    #[serde(default)]
    pub tokens_file: String,
    /// Serve without tokens on a non-loopback address. Off by default: crablet
    /// refuses to start that way.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Whether `/metrics` needs a token with the `metrics` scope (only when
    /// tokens are configured).
    #[serde(default = "yes")]
    pub metrics_requires_token: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth token {name:?}: {problem}")]
    Token { name: String, problem: String },
    #[error("auth.tokens_file {path}: {problem}")]
    File { path: String, problem: String },
}

/// Who made a request: put in the request's extensions by the HTTP layer.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name, or `anonymous` when no tokens are configured.
    pub name: Arc<str>,
}

/// A configured token, by its digest.
#[derive(Debug)]
struct Holder {
    name: Arc<str>,
    scopes: u8,
    expires_at: Option<SystemTime>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that is not (or no longer) configured, or a malformed header.
    Invalid,
    /// A configured token past its `expires_at`.
    Expired,
    /// A valid token without the scope.
    Forbidden { scope: Scope, name: Arc<str> },
}

/// The configured tokens. Empty: authentication is off.
#[derive(Debug, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Holder>,
}

impl Tokens {
    /// Every token of the settings and of `tokens_file`, checked.
    pub fn load(settings: &AuthSettings) -> Result<Self, AuthError> {
        let mut all = settings.tokens.clone();
        if !settings.tokens_file.trim().is_empty() {
            all.extend(read_tokens_file(Path::new(settings.tokens_file.trim()))?);
        }
        Self::from_settings(&all)
    }

    pub fn from_settings(tokens: &[TokenSettings]) -> Result<Self, AuthError> {
        let mut by_digest = HashMap::with_capacity(tokens.len());
        for token in tokens {
            let problem = |problem: &str| AuthError::Token {
                name: token.name.clone(),
                problem: problem.to_owned(),
            };
            if token.name.trim().is_empty() {
                return Err(problem("name must not be empty"));
            }
            let mut digest = [0u8; 32];
            hex::decode_to_slice(token.sha256.trim(), &mut digest)
                .map_err(|_| problem("sha256 must be 64 hex digits (`crablet token new`)"))?;
            if token.scopes.is_empty() {
                return Err(problem("scopes must list at least one scope"));
            }
            let expires_at = match token.expires_at.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(text) => Some(parse_rfc3339(text).map_err(|e| problem(&e))?),
            };
            let holder = Holder {
                name: token.name.trim().into(),
                scopes: token.scopes.iter().fold(0, |bits, s| bits | s.bit()),
                expires_at,
            };
            if by_digest.insert(digest, holder).is_some() {
                return Err(problem("the same token is configured twice"));
            }
        }
        Ok(Tokens { by_digest })
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Checks an `Authorization` header value for `scope` at `now`.
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        scope: Option<Scope>,
        now: SystemTime,
    ) -> Result<Caller, Refusal> {
        let header = authorization.ok_or(Refusal::Missing)?;
        let token = bearer_token(header).ok_or(Refusal::Invalid)?;
        let digest: [u8; 32] = Sha256::digest(token).into();
        let holder = self.by_digest.get(&digest).ok_or(Refusal::Invalid)?;
        if holder.expires_at.is_some_and(|at| now >= at) {
            return Err(Refusal::Expired);
        }
        if let Some(scope) = scope {
            if holder.scopes & (scope.bit() | Scope::Admin.bit()) == 0 {
                return Err(Refusal::Forbidden {
                    scope,
                    name: holder.name.clone(),
                });
            }
        }
        Ok(Caller {
            name: holder.name.clone(),
        })
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive), if that is what
/// the header holds.
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[derive(Deserialize)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenSettings>,
}

fn read_tokens_file(path: &Path) -> Result<Vec<TokenSettings>, AuthError> {
    let problem = |problem: String| AuthError::File {
        path: path.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| problem(e.to_string()))?;
    let parsed: TokensFile = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| problem(e.to_string()))?;
    Ok(parsed.tokens)
}

/// The tokens in force, replaceable while the server runs (SIGHUP).
#[derive(Debug)]
pub struct TokenStore {
    current: RwLock<Arc<Tokens>>,
}

impl TokenStore {
    pub fn new(tokens: Tokens) -> Self {
        TokenStore {
            current: RwLock::new(Arc::new(tokens)),
        }
    }

    pub fn current(&self) -> Arc<Tokens> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `tokens` in force. Refused (the old ones stay) when it would turn
    /// authentication off: a reload never opens the server.
    pub fn replace(&self, tokens: Tokens) -> Result<(), &'static str> {
        if tokens.is_empty() && !self.current().is_empty() {
            return Err("the new configuration has no token; authentication stays on");
        }
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(tokens);
        Ok(())
    }
}

/// A new token: 256 random bits from the operating system, hex, with a
/// `crablet_` prefix so that secret scanners can recognise it.
pub fn mint() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(format!("crablet_{}", hex::encode(bytes)))
}

/// The SHA-256 of a token, hex: what the configuration stores.
pub fn digest_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The `[[auth.tokens]]` entry of a token.
pub fn config_entry(token: &str, name: &str, scopes: &[Scope], expires_at: Option<&str>) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| format!("{:?}", s.name())).collect();
    let mut entry = format!(
        "[[auth.tokens]]\nname = {name:?}\nsha256 = \"{}\"\nscopes = [{}]\n",
        digest_hex(token),
        scopes.join(", ")
    );
    if let Some(at) = expires_at {
        entry.push_str(&format!("expires_at = {at:?}\n"));
    }
    entry
}

/// An RFC 3339 time (`2027-01-31T00:00:00Z`, offsets allowed).
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| format!("expires_at {text:?} is not an RFC 3339 time: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn token(name: &str, secret: &str, scopes: &[Scope], expires: Option<&str>) -> TokenSettings {
        TokenSettings {
            name: name.into(),
            sha256: digest_hex(secret),
            scopes: scopes.to_vec(),
            expires_at: expires.map(str::to_owned),
        }
    }

    #[test]
    fn a_token_is_accepted_for_its_scopes_only_and_admin_allows_everything() {
        let tokens = Tokens::from_settings(&[
            token("reader", "r", &[Scope::Read], None),
            token("root", "a", &[Scope::Admin], None),
        ])
        .unwrap();
        let now = SystemTime::now();
        let ok = tokens.check(Some(b"Bearer r"), Some(Scope::Read), now);
        assert_eq!(&*ok.unwrap().name, "reader");
        assert!(matches!(
            tokens.check(Some(b"bearer r"), Some(Scope::Append), now),
            Err(Refusal::Forbidden {
                scope: Scope::Append,
                ..
            })
        ));
        assert!(tokens
            .check(Some(b"Bearer a"), Some(Scope::Append), now)
            .is_ok());
        assert_eq!(
            tokens.check(None, Some(Scope::Read), now).unwrap_err(),
            Refusal::Missing
        );
        assert_eq!(
            tokens
                .check(Some(b"Bearer x"), Some(Scope::Read), now)
                .unwrap_err(),
            Refusal::Invalid
        );
        assert_eq!(
            tokens
                .check(Some(b"Basic r"), Some(Scope::Read), now)
                .unwrap_err(),
            Refusal::Invalid
        );
    }

    #[test]
    fn a_token_past_its_expiry_is_refused() {
        let tokens = Tokens::from_settings(&[token(
            "ci",
            "t",
            &[Scope::Read],
            Some("2030-01-01T00:00:00Z"),
        )])
        .unwrap();
        let at = parse_rfc3339("2030-01-01T00:00:00Z").unwrap();
        assert!(tokens
            .check(Some(b"Bearer t"), None, at - Duration::from_secs(1))
            .is_ok());
        assert_eq!(
            tokens.check(Some(b"Bearer t"), None, at).unwrap_err(),
            Refusal::Expired
        );
    }

    #[test]
    fn bad_token_settings_are_refused_with_the_token_name() {
        let mut bad = token("ci", "t", &[Scope::Read], None);
        bad.sha256 = "abc".into();
        let e = Tokens::from_settings(&[bad]).unwrap_err().to_string();
        assert!(e.contains("\"ci\"") && e.contains("sha256"), "{e}");
        let e = Tokens::from_settings(&[token("ci", "t", &[], None)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("scopes"), "{e}");
        let e = Tokens::from_settings(&[token("ci", "t", &[Scope::Read], Some("tomorrow"))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn minted_tokens_are_random_and_their_config_entry_holds_only_the_digest() {
        let a = mint().unwrap();
        let b = mint().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), "crablet_".len() + 64);
        let entry = config_entry(&a, "ci", &[Scope::Read, Scope::Append], None);
        assert!(!entry.contains(&a));
        assert!(entry.contains(&digest_hex(&a)));
        assert!(entry.contains(r#"scopes = ["read", "append"]"#), "{entry}");
    }

    #[test]
    fn a_reload_cannot_turn_authentication_off() {
        let store = TokenStore::new(
            Tokens::from_settings(&[token("ci", "t", &[Scope::Read], None)]).unwrap(),
        );
        assert!(store.replace(Tokens::default()).is_err());
        assert_eq!(store.current().len(), 1);
    }
}
