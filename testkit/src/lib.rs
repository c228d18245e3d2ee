//! Test support shared by every crate's integration tests, so each fixture
//! mechanism has one home (STYLE.md habit 14).
//!
//! # Layout
//!
//! - [`database`]: a PostgreSQL database of one test's own, dropped at the end.
//! - [`eventually`]: polling a condition against a deadline, never a fixed sleep.
//! - [`services`]: any service of the fleet running in this process on
//!   ephemeral ports, with the token that stops it.
//! - [`broker`]: removing the RabbitMQ names a test declared.
//! - [`links`]: creating links through write-svc's gRPC API.
//! - [`metrics`]: summing a metric in Prometheus text.
//! - [`ports`]: free loopback ports for servers a test starts as processes.
//! - [`pg_replica`]: a PostgreSQL primary with a streaming replica.
//! - [`scripts`]: running the project's `deploy/local/*` scripts.
//!
//! Everything talks to the local infrastructure (`deploy/local/infra`) on
//! fixed loopback addresses. This crate is only ever a dev-dependency; it
//! must never grow into something a service binary links.

// Test support: a panic is how a test reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

pub mod broker;
pub mod database;
pub mod eventually;
pub mod links;
pub mod metrics;
pub mod pg_replica;
pub mod ports;
pub mod scripts;
pub mod services;

pub use database::TestDatabase;
pub use eventually::{eventually, within, within_or_last};

/// The PostgreSQL server every test database lives on.
pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
/// The Redis every test shares, apart by key prefix.
pub const REDIS: &str = "redis://127.0.0.1:6379";
/// The RabbitMQ every test shares, apart by exchange and queue names.
pub const AMQP: &str = shortfleet_common::amqp::LOCAL_URL;
/// How long to wait for an asynchronous effect before calling it lost;
/// generous because the test machine is small and shared.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A fresh id for one test's names (databases, exchanges, key prefixes).
pub fn unique_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
