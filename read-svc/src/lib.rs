//! read-svc resolves short codes on the redirect hot path: in-process cache
//! (moka) → Redis read model → write-svc, kept fresh by `LinkEvent`s.
//!
//! # Layout
//! - [`app`]: wiring and drain on shutdown.
//! - [`service`]: the `LinkResolver` gRPC service.
//! - [`resolver`]: the three cache levels, single-flight, negative caching.
//! - [`lookup`]: pure rules (code plausibility, active vs gone).
//! - [`events`]: what a link event does to the caches.

pub mod app;
pub mod config;
pub mod events;
pub mod lookup;
pub mod resolver;
pub mod service;

pub use app::App;
pub use config::Config;
