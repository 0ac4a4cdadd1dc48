//! Integration tests: the real server against a real PostgreSQL.
//!
//! Every test gets its own database and its own server on a free port
//! (see `helpers`). Concurrency tests count violations and assert zero.

mod helpers;

mod bad_input;
mod boundary;
mod concurrency;
mod deploy;
mod failures;
mod ids;
mod model;
mod observability;
mod openapi;
mod plans;
mod recovery;
mod semantics;
mod slow_clients;
mod supervision;
