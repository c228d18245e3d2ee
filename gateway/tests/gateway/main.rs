//! The gateway against real Redis, PostgreSQL, RabbitMQ and a real
//! write-svc (and read-svc), all on ephemeral ports: shared rate limits
//! across replicas, the degraded limiter, key revocation reaching another
//! replica, error shapes, hostile input, shutdown, and the redirect hot
//! path. One test binary: one link step, one fixture ([`helpers`]).

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod errors;
mod helpers;
mod hostile;
mod hot_path;
mod lifecycle;
mod replicas;
