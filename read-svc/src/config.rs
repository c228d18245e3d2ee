//! read-svc's configuration; every key is documented in
//! `docs/configuration.md`.

use std::{net::SocketAddr, time::Duration};

use shortfleet_common::config::{ConfigError, ConfigSource};
use shortfleet_common::{grpc::Discovery, tls::FleetTls};

/// Who may call us when TLS is on (see `shortfleet_common::tls`).
const ALLOWED_CALLERS: &str = "gateway";

#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub redis_url: String,
    /// Prefix of every Redis key, so several fleets (or tests) share a server.
    pub redis_prefix: String,
    /// Bounds each Redis command; past it the read model is skipped.
    pub redis_timeout: Duration,
    pub write_svc_url: String,
    /// Bounds each call to write-svc.
    pub upstream_timeout: Duration,
    pub amqp_url: String,
    pub link_events_exchange: String,
    /// Entries in the in-process cache.
    pub local_capacity: u64,
    pub local_ttl: Duration,
    /// How long an unknown code is remembered as unknown.
    pub negative_ttl: Duration,
    /// TTL of the Redis read model.
    pub redis_ttl: Duration,
    pub shutdown_grace: Duration,
    /// Mutual TLS and the callers admitted; `None` on plaintext (loopback).
    pub tls: Option<FleetTls>,
    /// How write-svc's name is resolved (its endpoints balanced over).
    pub discovery: Discovery,
}

impl Config {
    pub fn from_source(source: &ConfigSource) -> Result<Self, ConfigError> {
        let mut r = source.reader();
        let config = Self {
            grpc_addr: r.get("SHORTFLEET_GRPC_ADDR", ([127, 0, 0, 1], 50052).into()),
            ops_addr: r.get("SHORTFLEET_OPS_ADDR", ([127, 0, 0, 1], 9102).into()),
            redis_url: r.string("SHORTFLEET_REDIS_URL", "redis://127.0.0.1:6379"),
            redis_prefix: r.string("SHORTFLEET_REDIS_PREFIX", "sf:"),
            redis_timeout: r.millis("SHORTFLEET_REDIS_TIMEOUT_MS", 100),
            write_svc_url: r.string("SHORTFLEET_WRITE_SVC_URL", "http://127.0.0.1:50051"),
            upstream_timeout: r.millis("SHORTFLEET_UPSTREAM_TIMEOUT_MS", 1000),
            amqp_url: r.string("SHORTFLEET_AMQP_URL", shortfleet_common::amqp::LOCAL_URL),
            link_events_exchange: r.string(
                "SHORTFLEET_LINK_EVENTS_EXCHANGE",
                shortfleet_common::amqp::LINK_EVENTS_EXCHANGE,
            ),
            local_capacity: r.get("SHORTFLEET_LOCAL_CACHE_CAPACITY", 100_000),
            local_ttl: r.millis("SHORTFLEET_LOCAL_CACHE_TTL_MS", 300_000),
            negative_ttl: r.millis("SHORTFLEET_NEGATIVE_TTL_MS", 10_000),
            redis_ttl: r.millis("SHORTFLEET_REDIS_TTL_MS", 86_400_000),
            shutdown_grace: r.millis("SHORTFLEET_SHUTDOWN_GRACE_MS", 10_000),
            tls: FleetTls::read(&mut r, ALLOWED_CALLERS),
            discovery: Discovery::read(&mut r),
        };
        if config.redis_ttl < Duration::from_secs(1) {
            r.invalid("SHORTFLEET_REDIS_TTL_MS", "must be at least 1000");
        }
        r.finish(config)
    }
}
