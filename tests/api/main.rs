//! Integration tests: the real server against a real PostgreSQL.
//!
//! Every test gets its own database and its own server on a free port
//! (see `helpers`). Concurrency tests count violations and assert zero.

mod helpers;

mod bad_input;
mod boundary;
mod concurrency;
mod model;
mod observability;
mod plans;
mod recovery;
mod semantics;
mod slow_clients;
