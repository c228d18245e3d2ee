//! The public HTTP gateway: authenticates API keys, rate-limits with token
//! buckets shared through Redis, routes to the fleet over gRPC, and answers
//! the redirect hot path.
//!
//! # Layout
//! - [`app`]: wiring and drain on shutdown; [`state`]: what handlers share;
//!   [`server`]: the HTTP listener.
//! - [`handlers`]: request phases and the endpoints (links, stats, redirect).
//! - [`routes`]: the routing table. [`keys`]: API keys. [`ratelimit`]: buckets.
//! - [`microcache`]: resolved codes cached in the gateway, dropped on link
//!   events; stale copies answer while read-svc cannot (stale-if-error).
//! - [`clicks`]: the bounded, batched click hand-off to click-logger, with
//!   an on-disk spool for what the buffer cannot hold.
//! - [`live`]: the per-owner fan-out of `clicks.counted` to event streams.
//! - [`upstream`]: gRPC channels with deadlines. [`resilience`]: breaker,
//!   bulkhead and budgeted retries per upstream. [`problem`]: problem+json and
//!   the gRPC → HTTP status table. [`input`]: bodies, fields, query.
//! - [`proxies`]: trusted proxies (addresses or CIDR blocks) and the client IP.
//! - [`sockets`]: first-byte and idle deadlines, connections per client address.
//! - [`admin`]: the `keys` admin commands.
//! - What a link does on redirect, decided from the link the gateway holds:
//!   [`rules`] (device, OS, browser, country, language), [`forward`] (query
//!   forwarding), [`password`] (the form and the one hash check);
//!   [`robots`]: the replica's cached `robots.txt`.

pub mod admin;
pub mod app;
pub mod clicks;
pub mod config;
pub mod forward;
pub mod handlers;
pub mod input;
pub mod keys;
pub mod live;
pub mod microcache;
pub mod password;
pub mod problem;
pub mod proxies;
pub mod ratelimit;
pub mod resilience;
pub mod robots;
pub mod routes;
pub mod rules;
pub mod server;
pub mod sockets;
pub mod state;
pub mod upstream;

pub use app::App;
pub use config::Config;
