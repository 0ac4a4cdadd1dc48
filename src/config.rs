//! Settings: `config/default.toml` (built in), an optional file, `CRABLET_*`
//! environment variables and command-line flags, in that order of precedence.
//!
//! Durations carry their unit in the key name (`_ms`, `_s`). Nothing here
//! opens a connection or a socket: [`crate::app`] turns settings into a
//! running server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

use crate::dcb::Limits;
use crate::faults::Faults;

/// The built-in defaults, documented key by key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// `impl $settings` with one accessor per listed duration setting, turning
/// the `_ms` or `_s` number it names into a [`Duration`].
macro_rules! durations {
    ($settings:ty { $($name:ident = $unit:ident($field:ident)),* $(,)? }) => {
        impl $settings {
            $(
                pub fn $name(&self) -> Duration {
                    Duration::$unit(self.$field)
                }
            )*
        }
    };
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub listen: String,
    /// Empty: run the embedded PostgreSQL under `data_dir`.
    pub database_url: String,
    pub data_dir: PathBuf,
    pub http: HttpSettings,
    pub writer: WriterSettings,
    pub reader: ReaderSettings,
    pub database: DatabaseSettings,
    pub replicas: ReplicaSettings,
    pub limits: Limits,
    pub subscriptions: SubscriptionSettings,
    pub projections: ProjectionSettings,
    pub compat: CompatSettings,
    pub auth: crate::auth::AuthSettings,
    pub tls: crate::tls::TlsSettings,
}

/// Projections and requirements (see `store::states`).
#[derive(Debug, Clone, Deserialize)]
pub struct ProjectionSettings {
    /// Bytes of remembered projector states per process; 0: none.
    pub state_cache_bytes: usize,
}

/// Compatibility front ends mounted beside the native API.
#[derive(Debug, Clone, Deserialize)]
pub struct CompatSettings {
    /// Serve go-crablet's web-app contract under `/go-crablet` (404 there when off).
    pub go_crablet: bool,
    /// Let `POST /go-crablet/cleanup` delete every event; it answers 403 otherwise.
    pub allow_cleanup: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub max_body_bytes: usize,
    pub workers: usize,
    pub max_connections_per_worker: usize,
    pub shutdown_timeout_s: u64,
    /// After SIGINT/SIGTERM, how long open connections are still served
    /// (no new ones accepted) before the graceful stop closes idle ones.
    pub shutdown_drain_ms: u64,
    pub request_timeout_ms: u64,
    pub keep_alive_s: u64,
    /// Origins whose browsers may call the API (CORS); empty: no CORS
    /// headers at all.
    #[serde(default)]
    pub cors_origins: Vec<String>,
}

durations!(HttpSettings {
    request_timeout = from_millis(request_timeout_ms),
    keep_alive = from_secs(keep_alive_s),
});

#[derive(Debug, Clone, Deserialize)]
pub struct WriterSettings {
    pub lanes: usize,
    pub max_batch_appends: usize,
    pub max_batch_events: usize,
    pub max_batch_keys: usize,
    /// Index entries written by one batch (see `limits.max_index_entries_per_append`).
    pub max_batch_index_entries: usize,
    pub max_pending_appends: usize,
    pub mailbox_capacity: usize,
    pub connect_timeout_ms: u64,
    pub restart_backoff_ms: u64,
    /// Index entries one append's decision may visit (see `store::append`).
    pub decision_budget_entries: i64,
    /// Test-only panics at named points of the lanes; never configured.
    #[serde(skip)]
    pub faults: Faults,
}

durations!(WriterSettings {
    connect_timeout = from_millis(connect_timeout_ms),
    restart_backoff = from_millis(restart_backoff_ms),
});

#[derive(Debug, Clone, Deserialize)]
pub struct ReaderSettings {
    pub pool_size: u32,
    pub pool_timeout_ms: u64,
    /// Connections for costly reads and projections (see `actors::reader`).
    pub costly_pool_size: u32,
    /// Time budget of one costly statement; 0: the database's own timeout.
    pub costly_statement_timeout_ms: u64,
    pub page_size: i64,
    pub page_max_bytes: usize,
    pub mailbox_capacity: usize,
    /// Test-only panics at named points of the readers; never configured.
    #[serde(skip)]
    pub faults: Faults,
}

durations!(ReaderSettings {
    pool_timeout = from_millis(pool_timeout_ms),
    costly_statement_timeout = from_millis(costly_statement_timeout_ms),
});

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub statement_timeout_ms: u64,
    /// How long start-up waits for the database before giving up.
    pub startup_timeout_s: u64,
    /// Bound on opening one connection (TCP connect and start-up handshake).
    pub connect_timeout_ms: u64,
    /// Hot standbys of the primary that serve reads (see [`ReplicaSettings`]).
    #[serde(default)]
    pub replica_urls: Vec<String>,
    /// What sits between crablet and the primary.
    #[serde(default)]
    pub pooler: Pooler,
    /// Direct URL of the connection that follows the log; empty: the primary's.
    #[serde(default)]
    pub listen_database_url: String,
}

/// A connection pooler in front of the primary (`database.pooler`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooler {
    /// Direct connections: named prepared statements, settings per session.
    #[default]
    None,
    /// A pooler in transaction mode (PgBouncer `pool_mode = transaction`):
    /// no named statement, no session state, settings per transaction.
    Transaction,
}

impl std::str::FromStr for Pooler {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Pooler::None),
            "transaction" => Ok(Pooler::Transaction),
            other => Err(format!(
                "database.pooler is \"none\" or \"transaction\", not {other:?}"
            )),
        }
    }
}

/// How replicas are used (`[replicas]`).
#[derive(Debug, Clone, Deserialize)]
pub struct ReplicaSettings {
    pub pool_size: u32,
    pub costly_pool_size: u32,
    pub check_interval_ms: u64,
    pub check_timeout_ms: u64,
    pub max_lag_ms: u64,
    pub min_position_wait_ms: u64,
}

durations!(ReplicaSettings {
    check_interval = from_millis(check_interval_ms),
    check_timeout = from_millis(check_timeout_ms),
    max_lag = from_millis(max_lag_ms),
    min_position_wait = from_millis(min_position_wait_ms),
});

durations!(DatabaseSettings {
    statement_timeout = from_millis(statement_timeout_ms),
    startup_timeout = from_secs(startup_timeout_s),
    connect_timeout = from_millis(connect_timeout_ms),
});

#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionSettings {
    pub max_subscribers: usize,
    /// Events a live subscriber's buffer holds before it is detached.
    pub buffer_events: usize,
    /// Bytes of events a live subscriber's buffer holds before it is
    /// detached (an empty buffer always takes one event, however large).
    pub buffer_bytes: usize,
    pub heartbeat_interval_ms: u64,
    pub poll_interval_ms: u64,
    /// 0: a detached subscriber is never disconnected for lagging.
    pub max_lag_events: i64,
    pub page_size: i64,
}

durations!(SubscriptionSettings {
    heartbeat_interval = from_millis(heartbeat_interval_ms),
    poll_interval = from_millis(poll_interval_ms),
});

/// Values given on the command line; each, when present, wins over every
/// other source.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// Replaces `database.replica_urls` when not empty.
    pub replica_urls: Vec<String>,
    pub pooler: Option<Pooler>,
    pub listen_database_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid configuration: {0}")]
    Invalid(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Value(String),
}

impl Settings {
    /// Loads the layered settings: defaults, then `file` if given, then the
    /// environment, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Self, SettingsError> {
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        builder = builder.add_source(
            Environment::with_prefix("CRABLET")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true),
        );
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        if let Some(listen) = overrides.listen {
            settings.listen = listen;
        }
        if let Some(url) = overrides.database_url {
            settings.database_url = url;
        }
        if let Some(dir) = overrides.data_dir {
            settings.data_dir = dir;
        }
        if !overrides.replica_urls.is_empty() {
            settings.database.replica_urls = overrides.replica_urls;
        }
        if let Some(pooler) = overrides.pooler {
            settings.database.pooler = pooler;
        }
        if let Some(url) = overrides.listen_database_url {
            settings.database.listen_database_url = url;
        }
        settings
            .database
            .replica_urls
            .retain(|url| !url.trim().is_empty());
        settings.check()?;
        Ok(settings)
    }

    /// The defaults alone, as the tests start from.
    pub fn defaults() -> Self {
        Self::load(None, Overrides::default()).expect("built-in defaults are valid")
    }

    fn check(&self) -> Result<(), SettingsError> {
        let positive = [
            ("writer.lanes", self.writer.lanes),
            ("writer.max_batch_appends", self.writer.max_batch_appends),
            ("writer.max_batch_events", self.writer.max_batch_events),
            ("writer.max_batch_keys", self.writer.max_batch_keys),
            ("writer.mailbox_capacity", self.writer.mailbox_capacity),
            ("reader.pool_size", self.reader.pool_size as usize),
            (
                "reader.costly_pool_size",
                self.reader.costly_pool_size as usize,
            ),
            (
                "writer.decision_budget_entries",
                self.writer.decision_budget_entries.max(0) as usize,
            ),
            ("reader.page_size", self.reader.page_size.max(0) as usize),
            ("reader.page_max_bytes", self.reader.page_max_bytes),
            ("reader.mailbox_capacity", self.reader.mailbox_capacity),
            (
                "writer.connect_timeout_ms",
                self.writer.connect_timeout_ms as usize,
            ),
            (
                "reader.pool_timeout_ms",
                self.reader.pool_timeout_ms as usize,
            ),
            (
                "database.connect_timeout_ms",
                self.database.connect_timeout_ms as usize,
            ),
            (
                "subscriptions.buffer_events",
                self.subscriptions.buffer_events,
            ),
            (
                "subscriptions.buffer_bytes",
                self.subscriptions.buffer_bytes,
            ),
            (
                "subscriptions.heartbeat_interval_ms",
                self.subscriptions.heartbeat_interval_ms as usize,
            ),
            (
                "subscriptions.poll_interval_ms",
                self.subscriptions.poll_interval_ms as usize,
            ),
            (
                "subscriptions.page_size",
                self.subscriptions.page_size.max(0) as usize,
            ),
            ("replicas.pool_size", self.replicas.pool_size as usize),
            (
                "replicas.costly_pool_size",
                self.replicas.costly_pool_size as usize,
            ),
            (
                "replicas.check_interval_ms",
                self.replicas.check_interval_ms as usize,
            ),
            (
                "replicas.check_timeout_ms",
                self.replicas.check_timeout_ms as usize,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(SettingsError::Value(format!("{key} must be at least 1")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_defaults_load_and_match_the_documented_values() {
        let s = Settings::defaults();
        assert_eq!(s.listen, "127.0.0.1:8080");
        assert_eq!(s.database_url, "");
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.limits, Limits::default());
    }

    #[test]
    fn flags_win_over_everything() {
        let s = Settings::load(
            None,
            Overrides {
                listen: Some("127.0.0.1:0".into()),
                database_url: Some("host=/tmp".into()),
                data_dir: None,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:0");
        assert_eq!(s.database_url, "host=/tmp");
    }
}
