//! crablet: a Dynamic Consistency Boundary (DCB) event store on PostgreSQL.
//!
//! # Layout
//!
//! - [`dcb`]: the model (events, queries, conditions), validation, matching
//!   and the lock/index key footprint of an append. Pure: no I/O.
//! - [`store`]: the only module that speaks SQL: schema migrations, pooled
//!   connections with prepared statements, batch appends, paged reads.
//! - [`actors`]: supervised writer lanes (group commit, keyed routing) and
//!   reader actors, each owning its pooled connections, behind the small typed
//!   facade [`actors::EventStore`].
//! - [`subscriptions`]: following the log live: admission, the tailer, the
//!   fan-out to live subscribers and each subscription's stream.
//! - [`http`]: actix-web routes, request parsing, error mapping, streaming.
//! - [`head`]: the committed head this process knows, asked by writers,
//!   readers, subscriptions and metrics alike.
//! - [`metrics`]: every Prometheus metric, with its help text and buckets.
//! - [`auth`]: bearer tokens (digests, scopes, expiry) and their check.
//! - [`tls`]: the HTTPS server configuration and its reload.
//! - [`config`]: layered settings (`config/default.toml`, `CRABLET_*`, flags).
//! - [`embedded`]: the private PostgreSQL cluster used when no database URL
//!   is configured.
//! - [`faults`]: test-only panics at named points of the actors, inert
//!   unless a test arms them.
//! - [`app`]: [`app::Application`], which assembles all of the above; used by
//!   `main` and by the tests alike.

#![forbid(unsafe_code)]

pub mod actors;
pub mod app;
pub mod auth;
pub mod config;
pub mod dcb;
pub mod embedded;
pub mod faults;
pub mod head;
pub mod http;
pub mod metrics;
pub mod replicas;
pub mod store;
pub mod subscriptions;
pub mod tls;
