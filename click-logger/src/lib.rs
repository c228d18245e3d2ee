//! click-logger takes click batches from the gateways and publishes them to
//! RabbitMQ with publisher confirms; while the broker is unreachable it
//! spools them to disk and replays them, in order, when it is back.
//!
//! # Layout
//! - [`app`]: wiring and drain. [`service`]: the `ClickLogger` gRPC service.
//! - [`wire`]: `StreamClicks` taken as the bytes its clicks arrived in.
//! - [`publisher`]: the RabbitMQ link, reconnection and spool replay.
//! - [`spool`]: the bounded, fsync'd on-disk spool (shared with the gateway,
//!   so it lives in `shortfleet_common`).

pub mod app;
pub mod config;
pub mod publisher;
pub mod service;
pub mod wire;
pub use shortfleet_common::spool;

pub use app::App;
pub use config::Config;
