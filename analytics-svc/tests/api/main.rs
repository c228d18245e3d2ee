//! analytics-svc's integration tests: the real [`analytics_svc::App`]
//! against real RabbitMQ and PostgreSQL, and its GeoIP lookup on real
//! MaxMind DB files. One test binary: one link step.

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod geoip;
mod rules;
mod stats;
mod storage;
