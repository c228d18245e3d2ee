//! Runtime plumbing shared by every Shortfleet service, and nothing else.
//!
//! # Layout
//! - [`amqp`]: RabbitMQ connect, the click topology, confirmed publishing,
//!   reconnecting with jittered backoff.
//! - [`config`]: typed, layered configuration (defaults → file → `SHORTFLEET_*`
//!   environment) read through one function, every invalid key reported at once.
//! - [`telemetry`]: JSON logs with `EnvFilter` and the Prometheus recorder.
//! - [`service`]: the shared `main` (logs → config → build → serve → drain).
//! - [`shutdown`]: SIGTERM/SIGINT turned into a `CancellationToken`.
//! - [`link_events`]: one replica's subscription to `links.events`.
//! - [`click_counts`]: the best-effort `clicks.counted` fanout (analytics →
//!   every gateway replica) behind the live dashboard.
//! - [`ops`]: the `/healthz`, `/readyz`, `/metrics` HTTP endpoints.
//! - [`grpc`]: health and reflection services every gRPC server exposes.
//! - [`postgres`]: pools with timeouts, database creation, versioned migrations.
//! - [`redis`]: a fail-fast, self-reconnecting Redis client.
//! - [`trace`]: W3C trace context over HTTP, gRPC metadata and AMQP headers.
//! - [`time`]: conversions between `chrono` and protobuf timestamps.
//!
//! It must never hold domain logic: a service's rules live in that service.

pub mod amqp;
pub mod click_counts;
pub mod config;
pub mod grpc;
pub mod link_events;
pub mod ops;
pub mod postgres;
pub mod redis;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod trace;
