//! crablet-loadtest: the load generator and benchmark of crablet.
//!
//! # Layout
//!
//! - [`paths`]: the URLs of `GET /read` and `GET /subscribe` (query and options,
//!   percent-encoded). The JSON shapes of the API (requests we send, replies we
//!   parse) are `crablet-model`'s. Pure, no I/O.
//! - [`http`]: one keep-alive HTTP/1.1 connection per virtual client and the typed
//!   `append`/`read` calls on it, with timeouts and error classification.
//! - [`stats`]: per-client latency histograms and outcome counters, merged at the end.
//! - [`report`]: the run report (percentiles, rates, verification) as JSON and as a
//!   human summary.
//! - [`scenario`]: what one operation of each scenario sends, and the setup and
//!   verification a scenario needs around its run.
//! - [`subscribe`]: the `subscribe` scenario: subscribers on `/subscribe` while
//!   writers append; delivery latency and a gap/duplicate/order check.
//! - [`zipf`]: the Zipf key picker of the hot-keys scenario.
//! - [`verify`]: pure checkers of DCB invariants over a log read back after a run.
//! - [`driver`]: the closed-loop and open-loop engines that run N virtual clients for
//!   a bounded time.
//! - [`procfs`]: RSS and CPU readings from `/proc` (what a run cost, whether the
//!   cores were full).
//! - [`preload`]: fast bulk loading of N events with large batched appends, and the
//!   events' data ([`preload::payload`]).
//! - [`bench`](mod@bench): the one-command benchmark: PostgreSQL, crablet server, baselines
//!   (pgbench/psql), the goal table (P1-P14, listed in [`bench::Goal`]).
//!
//! Traffic goes to loopback addresses only ([`http::Target`] refuses anything else),
//! and every loop is bounded by a deadline or a count.
#![forbid(unsafe_code)]

pub mod bench;
pub mod driver;
pub mod http;
pub mod paths;
pub mod preload;
pub mod procfs;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod subscribe;
pub mod verify;
pub mod zipf;
