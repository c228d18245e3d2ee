//! The gateway's configuration; every key is documented in
//! `docs/configuration.md`.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use shortfleet_common::{
    config::{ConfigError, ConfigSource},
    grpc::Discovery,
    tls::FleetTls,
};

use crate::{proxies::TrustedProxies, ratelimit::Policy};

#[derive(Debug, Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    /// When set, `/metrics` (and a copy of `/healthz`, `/readyz`) is served
    /// here and no longer on the public port, so metrics need not be
    /// filtered at the load balancer.
    pub ops_addr: Option<SocketAddr>,
    /// Base of every `short_url` and `Location` we hand out.
    pub public_url: String,
    /// The gateway's own database: API keys (hashes only).
    pub database_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub redis_timeout: Duration,
    pub write_svc_url: String,
    pub read_svc_url: String,
    pub click_logger_url: String,
    pub analytics_url: String,
    /// Bounds every gRPC call to an upstream.
    pub upstream_timeout: Duration,
    /// Mutual TLS to the services (the gateway is a client only, so no
    /// callers apply); `None` on plaintext (loopback).
    pub tls: Option<FleetTls>,
    /// How backend names are resolved (their endpoints balanced over).
    pub discovery: Discovery,
    /// Rate-limit policies by tier name; "anonymous" limits redirects per IP.
    pub tiers: Tiers,
    pub anonymous: Policy,
    /// Peers whose `X-Forwarded-For` (and country header) we believe.
    pub trusted_proxies: TrustedProxies,
    /// The L7 route table (built-in, or `SHORTFLEET_ROUTES_FILE`).
    pub routes: crate::routes::RouteTable,
    /// Header carrying the client's ISO country code, set by a trusted
    /// proxy or CDN (e.g. `cf-ipcountry`); ignored from anyone else.
    pub country_header: Option<http::header::HeaderName>,
    /// A MaxMind DB file (`SHORTFLEET_GEOIP_DB`, as analytics-svc reads):
    /// the country of a client without a trusted country header, looked up
    /// only for links with a country rule.
    pub geoip_db: Option<std::path::PathBuf>,
    pub max_body_bytes: usize,
    pub header_read_timeout: Duration,
    /// Whole-body read deadline: a body that trickles in slower than
    /// `max_body_bytes` per this long is cut off with 408.
    pub body_read_timeout: Duration,
    /// First-byte and idle deadlines, connections per client address.
    pub sockets: crate::sockets::SocketPolicy,
    /// Failed authentications allowed per client address; beyond that 429,
    /// so keys cannot be guessed at line rate.
    pub auth_failures: Policy,
    /// Password attempts allowed per client address and link code; beyond
    /// that 429, so a link's password cannot be guessed at line rate.
    pub password_attempts: Policy,
    /// How often each replica reloads API keys (revocation latency).
    pub key_refresh: Duration,
    /// Clicks held in memory while click-logger is slow or down; the rest
    /// go to the spool (or are dropped without one).
    pub click_buffer: usize,
    /// Where clicks the full buffer cannot take wait on disk; `None` (the
    /// default, so tests and ad-hoc runs never share a directory) drops them.
    pub click_spool_dir: Option<std::path::PathBuf>,
    /// Bound of that spool; beyond it clicks are dropped and counted.
    pub click_spool_max_bytes: u64,
    pub click_batch_max: usize,
    pub click_batch_wait: Duration,
    pub shutdown_grace: Duration,
    pub amqp_url: String,
    pub link_events_exchange: String,
    /// Fanout exchange analytics-svc announces stored clicks on; each
    /// replica subscribes and feeds its live event streams.
    pub click_counts_exchange: String,
    /// Bounds of the live event streams (`/api/v1/events`).
    pub live: crate::live::LiveConfig,
    /// Resolved codes kept in the gateway; 0 disables the micro-cache.
    pub microcache_capacity: u64,
    pub microcache_ttl: Duration,
    /// How long past `microcache_ttl` a code may be answered from its stale
    /// copy while read-svc cannot answer (stale-if-error); 0 disables.
    pub microcache_stale: Duration,
    /// Memory bound of the micro-cache (URLs, codes, owners and overhead).
    pub microcache_max_bytes: u64,
    pub breaker: crate::resilience::BreakerPolicy,
    /// Concurrent calls allowed per upstream (bulkhead).
    pub max_in_flight: usize,
}

impl Config {
    pub fn from_source(source: &ConfigSource) -> Result<Self, ConfigError> {
        let mut r = source.reader();
        let mut tiers = BTreeMap::new();
        for (tier, default) in [
            ("free", "100/60"),
            ("premium", "1000/60"),
            ("bench", "100000000/1"),
        ] {
            let key = format!("SHORTFLEET_TIER_{}", tier.to_ascii_uppercase());
            let raw = r.string(&key, default);
            match Policy::parse(tier, &raw) {
                Ok(p) => {
                    tiers.insert(tier.to_owned(), p);
                }
                Err(e) => r.invalid(&key, e),
            }
        }
        let anonymous_raw = r.string("SHORTFLEET_ANONYMOUS_LIMIT", "600/60");
        let anonymous = Policy::parse("anonymous", &anonymous_raw).unwrap_or_else(|e| {
            r.invalid("SHORTFLEET_ANONYMOUS_LIMIT", e);
            Policy::placeholder("anonymous")
        });
        let auth_failures_raw = r.string("SHORTFLEET_AUTH_FAILURE_LIMIT", "30/60");
        let auth_failures =
            Policy::parse("auth-failures", &auth_failures_raw).unwrap_or_else(|e| {
                r.invalid("SHORTFLEET_AUTH_FAILURE_LIMIT", e);
                Policy::placeholder("auth-failures")
            });
        let password_attempts_raw = r.string("SHORTFLEET_LINK_PASSWORD_LIMIT", "10/300");
        let password_attempts = Policy::parse("link-password", &password_attempts_raw)
            .unwrap_or_else(|e| {
                r.invalid("SHORTFLEET_LINK_PASSWORD_LIMIT", e);
                Policy::placeholder("link-password")
            });
        let trusted_proxies = r
            .raw("SHORTFLEET_TRUSTED_PROXIES")
            .unwrap_or_default()
            .parse()
            .unwrap_or_else(|e| {
                r.invalid("SHORTFLEET_TRUSTED_PROXIES", e);
                TrustedProxies::default()
            });
        let country_header = match r.raw("SHORTFLEET_COUNTRY_HEADER").map(str::to_owned) {
            None => None,
            Some(raw) => {
                match http::header::HeaderName::from_bytes(raw.to_ascii_lowercase().as_bytes()) {
                    Ok(name) => Some(name),
                    Err(_) => {
                        r.invalid(
                            "SHORTFLEET_COUNTRY_HEADER",
                            format!("{raw:?} is not a header name"),
                        );
                        None
                    }
                }
            }
        };
        let routes = match r.raw("SHORTFLEET_ROUTES_FILE").map(str::to_owned) {
            None => crate::routes::RouteTable::default(),
            Some(path) => match std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {path}: {e}"))
                .and_then(|text| crate::routes::RouteTable::parse(&text))
            {
                Ok(table) => table,
                Err(e) => {
                    r.invalid("SHORTFLEET_ROUTES_FILE", e);
                    crate::routes::RouteTable::default()
                }
            },
        };
        let public_url = r.string("SHORTFLEET_PUBLIC_URL", "http://127.0.0.1:8080");
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            r.invalid(
                "SHORTFLEET_PUBLIC_URL",
                "must start with http:// or https://",
            );
        }
        let ops_addr = match r.raw("SHORTFLEET_OPS_ADDR").map(str::trim) {
            None | Some("") => None,
            Some(raw) => match raw.parse() {
                Ok(addr) => Some(addr),
                Err(e) => {
                    r.invalid("SHORTFLEET_OPS_ADDR", format!("{raw:?}: {e}"));
                    None
                }
            },
        };
        let config = Self {
            http_addr: r.get("SHORTFLEET_HTTP_ADDR", ([127, 0, 0, 1], 8080).into()),
            ops_addr,
            public_url: public_url.trim_end_matches('/').to_owned(),
            database_url: r.string(
                "SHORTFLEET_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/gateway",
            ),
            redis_url: r.string("SHORTFLEET_REDIS_URL", "redis://127.0.0.1:6379"),
            redis_prefix: r.string("SHORTFLEET_REDIS_PREFIX", "sf:"),
            redis_timeout: r.millis("SHORTFLEET_REDIS_TIMEOUT_MS", 100),
            write_svc_url: r.string("SHORTFLEET_WRITE_SVC_URL", "http://127.0.0.1:50051"),
            read_svc_url: r.string("SHORTFLEET_READ_SVC_URL", "http://127.0.0.1:50052"),
            click_logger_url: r.string("SHORTFLEET_CLICK_LOGGER_URL", "http://127.0.0.1:50053"),
            analytics_url: r.string("SHORTFLEET_ANALYTICS_URL", "http://127.0.0.1:50054"),
            upstream_timeout: r.millis("SHORTFLEET_UPSTREAM_TIMEOUT_MS", 2000),
            tls: FleetTls::read(&mut r, ""),
            discovery: Discovery::read(&mut r),
            tiers: Tiers::new(tiers),
            anonymous,
            trusted_proxies,
            country_header,
            geoip_db: r
                .raw("SHORTFLEET_GEOIP_DB")
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from),
            routes,
            max_body_bytes: r.get("SHORTFLEET_MAX_BODY_BYTES", 64 * 1024),
            header_read_timeout: r.millis("SHORTFLEET_HEADER_READ_TIMEOUT_MS", 10_000),
            body_read_timeout: r.millis("SHORTFLEET_BODY_READ_TIMEOUT_MS", 10_000),
            sockets: crate::sockets::SocketPolicy {
                first_byte: r.millis("SHORTFLEET_FIRST_BYTE_TIMEOUT_MS", 5_000),
                idle: r.millis("SHORTFLEET_IDLE_TIMEOUT_MS", 60_000),
                max_per_ip: r.get("SHORTFLEET_MAX_CONNECTIONS_PER_IP", 256),
                h2_ping_interval: r.millis("SHORTFLEET_H2_PING_INTERVAL_MS", 20_000),
                h2_ping_timeout: r.millis("SHORTFLEET_H2_PING_TIMEOUT_MS", 10_000),
            },
            auth_failures,
            password_attempts,
            key_refresh: r.millis("SHORTFLEET_KEY_REFRESH_MS", 1000),
            click_buffer: r.get("SHORTFLEET_CLICK_BUFFER", 100_000),
            click_spool_dir: r
                .raw("SHORTFLEET_CLICK_SPOOL_DIR")
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(std::path::PathBuf::from),
            click_spool_max_bytes: r.get("SHORTFLEET_CLICK_SPOOL_MAX_BYTES", 512 << 20),
            // One batch becomes one click-logger call and one AMQP message:
            // every stage's cost is mostly per batch, so batches are as
            // large as click-logger's message (2,000 clicks, 20 ms of
            // redirects at 100k/s), and a quiet gateway still sends within
            // 100 ms.
            click_batch_max: r.get("SHORTFLEET_CLICK_BATCH_MAX", 2_000),
            click_batch_wait: r.millis("SHORTFLEET_CLICK_BATCH_WAIT_MS", 100),
            shutdown_grace: r.millis("SHORTFLEET_SHUTDOWN_GRACE_MS", 10_000),
            amqp_url: r.string("SHORTFLEET_AMQP_URL", shortfleet_common::amqp::LOCAL_URL),
            link_events_exchange: r.string(
                "SHORTFLEET_LINK_EVENTS_EXCHANGE",
                shortfleet_common::amqp::LINK_EVENTS_EXCHANGE,
            ),
            click_counts_exchange: r.string(
                "SHORTFLEET_CLICK_COUNTS_EXCHANGE",
                shortfleet_common::amqp::CLICK_COUNTS_EXCHANGE,
            ),
            live: crate::live::LiveConfig {
                max_per_key: r.get("SHORTFLEET_LIVE_MAX_STREAMS_PER_KEY", 5),
                buffer: r.get("SHORTFLEET_LIVE_STREAM_BUFFER", 64),
                heartbeat: r.millis("SHORTFLEET_LIVE_HEARTBEAT_MS", 15_000),
            },
            microcache_capacity: r.get("SHORTFLEET_MICROCACHE_CAPACITY", 100_000),
            microcache_ttl: r.millis("SHORTFLEET_MICROCACHE_TTL_MS", 5_000),
            microcache_stale: r.millis("SHORTFLEET_MICROCACHE_STALE_MS", 300_000),
            microcache_max_bytes: r.get("SHORTFLEET_MICROCACHE_MAX_BYTES", 64 << 20),
            breaker: crate::resilience::BreakerPolicy {
                failure_threshold: r.get("SHORTFLEET_BREAKER_FAILURES", 5),
                first_probe_after: r.millis("SHORTFLEET_BREAKER_FIRST_PROBE_MS", 100),
                open_for: r.millis("SHORTFLEET_BREAKER_OPEN_MS", 1_000),
            },
            max_in_flight: r.get("SHORTFLEET_UPSTREAM_MAX_IN_FLIGHT", 1024),
        };
        if config.breaker.failure_threshold == 0 || config.max_in_flight == 0 {
            r.invalid(
                "SHORTFLEET_BREAKER_FAILURES",
                "breaker threshold and in-flight limit must be positive",
            );
        }
        if config.live.max_per_key == 0
            || config.live.buffer == 0
            || config.live.heartbeat.is_zero()
        {
            r.invalid(
                "SHORTFLEET_LIVE_MAX_STREAMS_PER_KEY",
                "live stream limit, buffer and heartbeat must be positive",
            );
        }
        if config.microcache_capacity > 0
            && config.microcache_max_bytes < config.microcache_capacity
        {
            r.invalid(
                "SHORTFLEET_MICROCACHE_MAX_BYTES",
                "must be at least SHORTFLEET_MICROCACHE_CAPACITY (one byte per entry)",
            );
        }
        if config.breaker.open_for.is_zero() || config.breaker.first_probe_after.is_zero() {
            r.invalid(
                "SHORTFLEET_BREAKER_OPEN_MS",
                "the breaker's probe delays must be positive",
            );
        }
        if config.sockets.max_per_ip == 0 {
            r.invalid("SHORTFLEET_MAX_CONNECTIONS_PER_IP", "must be positive");
        }
        if config.sockets.h2_ping_interval.is_zero() || config.sockets.h2_ping_timeout.is_zero() {
            r.invalid(
                "SHORTFLEET_H2_PING_INTERVAL_MS",
                "the h2 PING interval and timeout must be positive",
            );
        }
        if config.click_buffer == 0 || config.click_batch_max == 0 {
            r.invalid(
                "SHORTFLEET_CLICK_BUFFER",
                "buffer and batch size must be positive",
            );
        }
        r.finish(config)
    }
}

/// Rate-limit policies by tier name. The free tier always exists (a
/// configuration without it is refused), so every key finds a policy.
#[derive(Debug, Clone)]
pub struct Tiers {
    by_name: BTreeMap<String, Policy>,
    free: Policy,
}

impl Tiers {
    fn new(by_name: BTreeMap<String, Policy>) -> Self {
        // Missing only when its setting was invalid, and then the whole
        // configuration is refused.
        let free = by_name
            .get("free")
            .cloned()
            .unwrap_or_else(|| Policy::placeholder("free"));
        Self { by_name, free }
    }

    /// The policy of `tier`; the free tier's for a tier this replica does
    /// not know (a key minted by a newer release).
    pub fn policy(&self, tier: &str) -> &Policy {
        self.by_name.get(tier).unwrap_or(&self.free)
    }

    pub fn contains_key(&self, tier: &str) -> bool {
        self.by_name.contains_key(tier)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.by_name.keys()
    }

    /// Adds or replaces a tier's policy.
    pub fn insert(&mut self, tier: String, policy: Policy) {
        if tier == "free" {
            self.free = policy.clone();
        }
        self.by_name.insert(tier, policy);
    }
}
