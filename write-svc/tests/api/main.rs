//! write-svc's integration tests: the real [`write_svc::App`] over gRPC
//! against real PostgreSQL and RabbitMQ. One test binary (one link step),
//! one fixture ([`helpers`]).

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod create;
mod grpc_surface;
mod helpers;
mod idempotency;
mod lifecycle;
mod outbox;
