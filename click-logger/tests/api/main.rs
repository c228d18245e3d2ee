//! click-logger's integration tests against a real RabbitMQ: the pipeline
//! through the real [`click_logger::App`], and the shared click topology
//! and confirmed publisher it is built on. One test binary: one link step.

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pipeline;
mod topology;
