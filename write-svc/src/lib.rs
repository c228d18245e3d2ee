//! write-svc owns links: it validates and stores them in PostgreSQL (database
//! `links`) and publishes every change as a `LinkEvent` through a
//! transactional outbox.
//!
//! # Layout
//! - [`app`]: wiring, listeners, background tasks, drain on shutdown.
//! - [`service`]: the `LinkWriter` gRPC service.
//! - [`validate`]: wire requests → validated domain values.
//! - [`code`], [`target`], [`cursor`]: domain types that parse, not validate.
//! - [`store`]: every query; the outbox row is written in the same transaction.
//! - [`outbox`]: the relay to RabbitMQ and periodic housekeeping.
//! - [`error`]: the boundary error and its gRPC mapping.

pub mod app;
pub mod behaviour;
pub mod code;
pub mod config;
pub mod cursor;
pub mod error;
pub mod migrations;
pub mod outbox;
pub mod replica;
pub mod service;
pub mod store;
pub mod target;
pub mod validate;

pub use app::App;
pub use config::Config;
