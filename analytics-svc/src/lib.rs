//! analytics-svc consumes clicks from RabbitMQ, stores them (raw, by day,
//! and rolled up per link per hour) in its own PostgreSQL database
//! `analytics`, and serves stats over gRPC.
//!
//! # Layout
//! - [`app`]: wiring and drain. [`service`]: the `Analytics` gRPC service.
//! - [`consumer`]: manual-ack batch consumption, poison handling, retries.
//! - [`enrich`]: what a click event becomes before it is stored.
//! - [`store`]: idempotent batch writes, rollup upserts and stats queries.
//! - [`fold`]: rollup increments left pending by each batch, folded in later.
//! - [`pace`]: heavy work in short pieces, so redirects on the machine never wait long.
//! - [`agent`]: user agent and referrer classification, bot detection.
//! - [`geoip`]: country of a client IP from a MaxMind DB file, if configured.
//! - [`partitions`]: daily partitions ahead, retention behind.

/// Moved to `shortfleet_common` (the gateway's redirect rules classify with it too).
pub use shortfleet_common::agent;
/// Moved to `shortfleet_common` (the gateway's country rules look up with it too).
pub use shortfleet_common::geoip;
pub mod app;
pub mod config;
pub mod consumer;
pub mod enrich;
pub mod fold;
pub mod migrations;
pub mod pace;
pub mod partitions;
pub mod service;
pub mod store;

pub use app::App;
pub use config::Config;
