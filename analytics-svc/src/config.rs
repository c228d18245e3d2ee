//! analytics-svc's configuration; every key is documented in
//! `docs/configuration.md`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use shortfleet_common::config::{ConfigError, ConfigSource, Secret};
use shortfleet_common::tls::FleetTls;

/// Who may call us when TLS is on (see `shortfleet_common::tls`).
const ALLOWED_CALLERS: &str = "gateway";

#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub database_url: String,
    pub db_pool_size: usize,
    pub db_timeout: Duration,
    pub amqp_url: String,
    pub clicks_exchange: String,
    pub clicks_queue: String,
    /// Fanout exchange where each stored batch's new clicks are announced
    /// to live dashboards (every gateway replica subscribes).
    pub click_counts_exchange: String,
    /// Unacknowledged messages in flight (basic.qos).
    pub prefetch: u16,
    /// Clicks written per transaction (whole messages, so it may be passed
    /// by one message's worth), and how long a batch may wait to fill.
    pub batch_max: usize,
    pub batch_max_wait: Duration,
    /// A batch is also written once no message came for this long.
    pub batch_quiet: Duration,
    /// How often stored batches' rollup increments are folded into the
    /// rollups while clicks flow (at once when the flow pauses).
    pub rollup_fold_every: Duration,
    /// Raw click partitions older than this are dropped (rollups stay).
    pub retention_days: u32,
    /// Secret mixed into the daily salt of visitor hashes.
    pub visitor_secret: Secret,
    /// A MaxMind DB file for the country of clicks that arrive without a
    /// trusted country header; `None` leaves such clicks without one.
    pub geoip_db: Option<PathBuf>,
    pub shutdown_grace: Duration,
    /// Mutual TLS and the callers admitted; `None` on plaintext (loopback).
    pub tls: Option<FleetTls>,
}

impl Config {
    pub fn from_source(source: &ConfigSource) -> Result<Self, ConfigError> {
        let mut r = source.reader();
        let config = Self {
            grpc_addr: r.get("SHORTFLEET_GRPC_ADDR", ([127, 0, 0, 1], 50054).into()),
            ops_addr: r.get("SHORTFLEET_OPS_ADDR", ([127, 0, 0, 1], 9104).into()),
            database_url: r.string(
                "SHORTFLEET_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/analytics",
            ),
            db_pool_size: r.get("SHORTFLEET_DB_POOL_SIZE", 16),
            db_timeout: r.millis("SHORTFLEET_DB_TIMEOUT_MS", 3000),
            amqp_url: r.string("SHORTFLEET_AMQP_URL", shortfleet_common::amqp::LOCAL_URL),
            clicks_exchange: r.string(
                "SHORTFLEET_CLICKS_EXCHANGE",
                shortfleet_common::amqp::CLICKS_EXCHANGE,
            ),
            clicks_queue: r.string(
                "SHORTFLEET_CLICKS_QUEUE",
                shortfleet_common::amqp::CLICKS_QUEUE,
            ),
            click_counts_exchange: r.string(
                "SHORTFLEET_CLICK_COUNTS_EXCHANGE",
                shortfleet_common::amqp::CLICK_COUNTS_EXCHANGE,
            ),
            // Messages, each up to 2,000 clicks: several batches' worth, so
            // the next batch is already here while one commits, yet a
            // bounded amount of memory (~100k clicks at most).
            prefetch: r.get("SHORTFLEET_PREFETCH", 50),
            // Large transactions: a batch's rollup rows (per link and hour,
            // dimension value, visitor) are upserted once per batch, so
            // their cost per click falls as batches grow. Measured on
            // PostgreSQL 15 with 200 links: 500 clicks a batch cost 17 µs
            // of PostgreSQL CPU per click, 5,000 cost 8.5 µs; a second's
            // worth at 20,000 clicks/s cost 4.2 µs where 100 ms cost 6.6
            // (BENCHMARKS.md). A click waits at most `batch_max_wait` for
            // its batch, and only while messages keep coming: after
            // `batch_quiet` without one the batch is written. Gateways send
            // a batch at least every 100 ms while clicks flow, so under load
            // batches run to the full second; a lone click (a user trying
            // their link) is counted within about a quarter of a second.
            // 50,000 lets a second's worth be one transaction up to 50,000
            // clicks/s (20,000 split the bench's 65,000/s into three, each
            // upserting every link's rollup rows again: with 1,000 links,
            // PostgreSQL's CPU per click was then 3.1 µs against 1.9 with
            // 200). Memory stays bounded by the prefetch window (above),
            // which holds twice this.
            batch_max: r.get("SHORTFLEET_BATCH_MAX", 50_000),
            batch_max_wait: r.millis("SHORTFLEET_BATCH_MAX_WAIT_MS", 1_000),
            batch_quiet: r.millis("SHORTFLEET_BATCH_QUIET_MS", 250),
            // Each fold upserts every rollup row touched since the last
            // once, however many batches touched it: five seconds' worth
            // at a time upserts a fifth of what every batch did on its own
            // (BENCHMARKS.md, twelfth session), and stats trail busy links
            // by at most that.
            rollup_fold_every: r.millis("SHORTFLEET_ROLLUP_FOLD_MS", 5_000),
            retention_days: r.get("SHORTFLEET_RETENTION_DAYS", 400),
            visitor_secret: Secret::new(
                r.string("SHORTFLEET_VISITOR_SECRET", "shortfleet-dev-visitor-secret"),
            ),
            geoip_db: r
                .raw("SHORTFLEET_GEOIP_DB")
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            shutdown_grace: r.millis("SHORTFLEET_SHUTDOWN_GRACE_MS", 10_000),
            tls: FleetTls::read(&mut r, ALLOWED_CALLERS),
        };
        if config.batch_max == 0 || config.prefetch == 0 {
            r.invalid(
                "SHORTFLEET_BATCH_MAX",
                "batch size and prefetch must be positive",
            );
        }
        if config.rollup_fold_every.is_zero() {
            r.invalid("SHORTFLEET_ROLLUP_FOLD_MS", "must be positive");
        }
        if config.retention_days < 2 {
            r.invalid("SHORTFLEET_RETENTION_DAYS", "must be at least 2");
        }
        r.finish(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_redaction() {
        let source = ConfigSource::from_pairs([("SHORTFLEET_VISITOR_SECRET", "hunter2")]);
        let config = Config::from_source(&source).unwrap();
        assert_eq!(config.grpc_addr.port(), 50054);
        assert_eq!(config.batch_max, 50_000);
        assert_eq!(config.visitor_secret.expose(), "hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn every_invalid_key_is_reported() {
        let source = ConfigSource::from_pairs([
            ("SHORTFLEET_GRPC_ADDR", "nope"),
            ("SHORTFLEET_PREFETCH", "-1"),
        ]);
        let err = Config::from_source(&source).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
    }
}
