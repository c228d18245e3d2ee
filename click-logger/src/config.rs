//! click-logger's configuration; every key is documented in
//! `docs/configuration.md`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use shortfleet_common::config::{ConfigError, ConfigSource};
use shortfleet_common::tls::FleetTls;

/// Who may call us when TLS is on (see `shortfleet_common::tls`).
const ALLOWED_CALLERS: &str = "gateway";

#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub amqp_url: String,
    pub clicks_exchange: String,
    pub clicks_queue: String,
    /// Where clicks wait while RabbitMQ is unreachable; must survive restarts.
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// Bounds connecting and each wait for publisher confirms.
    pub amqp_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Mutual TLS and the callers admitted; `None` on plaintext (loopback).
    pub tls: Option<FleetTls>,
}

impl Config {
    pub fn from_source(source: &ConfigSource) -> Result<Self, ConfigError> {
        let mut r = source.reader();
        let config = Self {
            grpc_addr: r.get("SHORTFLEET_GRPC_ADDR", ([127, 0, 0, 1], 50053).into()),
            ops_addr: r.get("SHORTFLEET_OPS_ADDR", ([127, 0, 0, 1], 9103).into()),
            amqp_url: r.string("SHORTFLEET_AMQP_URL", shortfleet_common::amqp::LOCAL_URL),
            clicks_exchange: r.string(
                "SHORTFLEET_CLICKS_EXCHANGE",
                shortfleet_common::amqp::CLICKS_EXCHANGE,
            ),
            clicks_queue: r.string(
                "SHORTFLEET_CLICKS_QUEUE",
                shortfleet_common::amqp::CLICKS_QUEUE,
            ),
            spool_dir: PathBuf::from(r.string("SHORTFLEET_SPOOL_DIR", ".local/spool/click-logger")),
            spool_max_bytes: r.get("SHORTFLEET_SPOOL_MAX_BYTES", 1 << 30),
            amqp_timeout: r.millis("SHORTFLEET_AMQP_TIMEOUT_MS", 5000),
            shutdown_grace: r.millis("SHORTFLEET_SHUTDOWN_GRACE_MS", 10_000),
            tls: FleetTls::read(&mut r, ALLOWED_CALLERS),
        };
        r.finish(config)
    }
}
