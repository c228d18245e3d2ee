//! write-svc's configuration; every key is documented in
//! `docs/configuration.md`.

use std::{net::SocketAddr, time::Duration};

use shortfleet_common::config::{ConfigError, ConfigSource, Secret};
use shortfleet_common::tls::FleetTls;

/// Who may call us when TLS is on (see `shortfleet_common::tls`).
const ALLOWED_CALLERS: &str = "gateway,read-svc:GetLink";

#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub database_url: String,
    /// A streaming replica for reads ([`crate::replica`]); `None`: all
    /// reads go to the primary.
    pub database_read_url: Option<String>,
    /// Past this lag, resolve misses go to the primary instead.
    pub read_replica_max_lag: Duration,
    pub db_pool_size: usize,
    /// Bounds every wait on PostgreSQL: pool checkout, connect, recycle.
    pub db_timeout: Duration,
    pub amqp_url: String,
    pub link_events_exchange: String,
    /// Hosts the shortener answers on; targets may not point at them.
    pub public_hosts: Vec<String>,
    /// Whether targets may be loopback, private or link-local addresses.
    pub allow_private_targets: bool,
    pub shutdown_grace: Duration,
    /// Mutual TLS and the callers admitted; `None` on plaintext (loopback).
    pub tls: Option<FleetTls>,
    /// Signs `ListLinks` cursors; every replica must share it, or a cursor
    /// issued by one is refused by the next.
    pub cursor_secret: Secret,
}

/// The documented development value of `SHORTFLEET_CURSOR_SECRET`: fine on
/// one machine, never in production (anyone reading the source could forge
/// cursors, though only for pagination positions of their own owner id).
pub const DEV_CURSOR_SECRET: &str = "shortfleet-dev-cursor-secret";
/// Shortest accepted cursor secret, in bytes.
const MIN_CURSOR_SECRET: usize = 16;

impl Config {
    pub fn from_source(source: &ConfigSource) -> Result<Self, ConfigError> {
        let mut r = source.reader();
        let config = Self {
            grpc_addr: r.get("SHORTFLEET_GRPC_ADDR", ([127, 0, 0, 1], 50051).into()),
            ops_addr: r.get("SHORTFLEET_OPS_ADDR", ([127, 0, 0, 1], 9101).into()),
            database_url: r.string(
                "SHORTFLEET_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/links",
            ),
            database_read_url: r.raw("SHORTFLEET_DATABASE_READ_URL").map(str::to_owned),
            read_replica_max_lag: r.millis("SHORTFLEET_READ_REPLICA_MAX_LAG_MS", 1000),
            db_pool_size: r.get("SHORTFLEET_DB_POOL_SIZE", 16),
            db_timeout: r.millis("SHORTFLEET_DB_TIMEOUT_MS", 3000),
            amqp_url: r.string("SHORTFLEET_AMQP_URL", shortfleet_common::amqp::LOCAL_URL),
            link_events_exchange: r.string(
                "SHORTFLEET_LINK_EVENTS_EXCHANGE",
                shortfleet_common::amqp::LINK_EVENTS_EXCHANGE,
            ),
            public_hosts: r.list(
                "SHORTFLEET_PUBLIC_HOSTS",
                &["127.0.0.1:8080", "localhost:8080"],
            ),
            allow_private_targets: r.get("SHORTFLEET_ALLOW_PRIVATE_TARGETS", false),
            shutdown_grace: r.millis("SHORTFLEET_SHUTDOWN_GRACE_MS", 10_000),
            tls: FleetTls::read(&mut r, ALLOWED_CALLERS),
            cursor_secret: Secret::new(r.string("SHORTFLEET_CURSOR_SECRET", DEV_CURSOR_SECRET)),
        };
        if config.cursor_secret.expose().len() < MIN_CURSOR_SECRET {
            r.invalid(
                "SHORTFLEET_CURSOR_SECRET",
                format!("must be at least {MIN_CURSOR_SECRET} bytes"),
            );
        }
        if config.db_pool_size == 0 {
            r.invalid("SHORTFLEET_DB_POOL_SIZE", "must be at least 1");
        }
        r.finish(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_secret_is_redacted_and_long_enough() {
        let source = ConfigSource::from_pairs([("SHORTFLEET_CURSOR_SECRET", "0123456789abcdef-x")]);
        let config = Config::from_source(&source).unwrap();
        assert_eq!(config.cursor_secret.expose(), "0123456789abcdef-x");
        assert!(!format!("{config:?}").contains("0123456789abcdef"));
        let default = Config::from_source(&ConfigSource::default()).unwrap();
        assert_eq!(default.cursor_secret.expose(), DEV_CURSOR_SECRET);
        let short = ConfigSource::from_pairs([("SHORTFLEET_CURSOR_SECRET", "short")]);
        let err = Config::from_source(&short).unwrap_err();
        assert!(
            err.problems[0].starts_with("SHORTFLEET_CURSOR_SECRET"),
            "{err}"
        );
    }
}
