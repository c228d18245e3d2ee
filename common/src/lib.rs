//! Runtime plumbing shared by every Shortfleet service, and nothing else.
//!
//! # Layout
//! - [`amqp`]: RabbitMQ connect and bounded round trips, with one module
//!   each for the topology, confirmed publishing (mandatory or not) and the
//!   supervised reconnect loop (jittered backoff); the wire names.
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
//! - [`tls`]: mutual TLS between services and the callers each admits.
//! - [`trace`]: W3C trace context over HTTP, gRPC metadata and AMQP headers.
//! - [`time`]: conversions between `chrono` and protobuf timestamps.
//! - [`input`]: the input policy of every gRPC edge (bounds, no control
//!   characters, INVALID_ARGUMENT naming the field).
//! - [`spool`]: the bounded, fsync'd on-disk click spool (click-logger while
//!   RabbitMQ is away, the gateway while click-logger is).
//! - [`click`]: the one definition of a storable click, shared by the
//!   gateway, click-logger and analytics-svc.
//!
//! - [`agent`]: the one user-agent classifier (analytics' dimensions and
//!   the gateway's redirect rules must agree on what "iOS" is) and the
//!   rule vocabulary write-svc validates against.
//! - [`geoip`] (feature `geoip`): the country of a client address from a
//!   MaxMind DB file, one lookup for analytics' country dimension and the
//!   gateway's country rules.
//!
//! It must never hold domain logic: a service's rules live in that service.
//! The exception is a wire rule both sides of a contract must agree on
//! ([`input`] bounds, [`click`]), which would drift if each side kept a copy.

pub mod accept;
pub mod agent;
pub mod amqp;
pub mod body;
pub mod click;
pub mod click_counts;
pub mod config;
#[cfg(feature = "geoip")]
pub mod geoip;
pub mod grpc;
pub mod input;
pub mod link_events;
pub mod ops;
pub mod periodic;
pub mod postgres;
pub mod redis;
pub mod rule_json;
pub mod service;
pub mod shutdown;
pub mod spool;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod trace;
