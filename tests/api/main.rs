//! Integration tests: the real server against a real PostgreSQL.
//!
//! Every test gets its own database and its own server on a free port
//! (see `helpers`). Concurrency tests count violations and assert zero.

mod helpers;

mod bad_input;
mod boundary;
mod browser;
mod cli;
mod client;
mod concurrency;
mod crash;
mod decisions;
mod deploy;
mod docs;
mod embedded;
mod failures;
mod gocrablet;
mod ids;
mod import;
mod lifecycle;
mod migrations;
mod model;
mod observability;
mod openapi;
mod plans;
mod pooler;
mod project;
mod recovery;
mod replicas;
mod require;
mod security;
mod semantics;
mod slow_clients;
mod streaming;
mod subscribe;
mod supervision;
mod transfer;
