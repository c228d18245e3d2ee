//! Wiring: API key snapshot, rate limiter, upstream channels, the click
//! forwarder and the HTTP server.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use shortfleet_common::{
    config::{ConfigError, ConfigSource},
    grpc,
    link_events::LinkEventSubscriber,
    ops::{self, Health},
    postgres, redis,
    service::Service,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    clicks::{self, ClickForwarder, ClickSink, Spill, Spiller},
    config::Config,
    keys::{self, KeyCache, KeyStore},
    live::Hub,
    microcache::MicroCache,
    ratelimit::RateLimiter,
    server,
    upstream::Upstreams,
};

/// Everything a request handler may use.
pub struct State {
    pub config: Config,
    pub keys: KeyCache,
    pub key_store: KeyStore,
    pub limiter: RateLimiter,
    pub upstreams: Upstreams,
    pub clicks: ClickSink,
    pub microcache: MicroCache,
    pub health: Health,
    /// This replica's live event streams.
    pub live: Arc<Hub>,
    /// The cached `GET /robots.txt` body.
    pub robots: crate::handlers::robots::Robots,
    /// Country rules' lookup when no trusted header says (`SHORTFLEET_GEOIP_DB`).
    pub geoip: Option<Arc<shortfleet_common::geoip::GeoIp>>,
}

pub struct App {
    listener: TcpListener,
    /// The operator port, when `SHORTFLEET_OPS_ADDR` asks for one.
    ops_listener: Option<TcpListener>,
    state: Arc<State>,
    key_store: KeyStore,
    forwarder: ClickForwarder,
    /// Moves overflowing clicks to disk, when a spool is configured.
    spiller: Option<Spiller>,
}

impl App {
    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_listener
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener has an address"))
    }
}

/// Opens the key database, creating and migrating it when needed (also used
/// by the `keys` admin commands).
pub async fn key_store(config: &Config) -> anyhow::Result<KeyStore> {
    let pool = postgres::open(
        &config.database_url,
        4,
        std::time::Duration::from_secs(3),
        keys::MIGRATIONS,
    )
    .await
    .context("opening the gateway database")?;
    Ok(KeyStore::new(pool))
}

impl Service for App {
    type Config = Config;
    const NAME: &'static str = "gateway";

    fn config(source: &ConfigSource) -> Result<Config, ConfigError> {
        Config::from_source(source)
    }

    async fn build(config: Config) -> anyhow::Result<Self> {
        let health = Health::new();
        clicks::describe_metrics();
        crate::microcache::describe_metrics();
        // Not critical once the key snapshot is loaded: with PostgreSQL down
        // the gateway keeps verifying keys from memory, and redirects need no
        // database at all. An unready gateway would stop every redirect.
        health.register("postgres", false);
        health.register("rabbitmq", false);
        let key_store = key_store(&config).await?;
        let keys = KeyCache::default();
        let n = key_store.refresh(&keys).await.context("loading API keys")?;
        health.set("postgres", true);
        tracing::info!(keys = n, "API keys loaded");
        let redis = redis::connect(&config.redis_url, config.redis_timeout)?;
        let limiter = RateLimiter::new(redis, &config.redis_prefix);
        let upstreams = Upstreams::new(&config)?;
        let spill = match &config.click_spool_dir {
            Some(dir) => Some(Spill::open(dir, config.click_spool_max_bytes).await?),
            None => None,
        };
        let (clicks, rx) = ClickSink::new(config.click_buffer, spill.clone());
        let forwarder = ClickForwarder::new(
            rx,
            upstreams.clicks.clone(),
            config.click_batch_max,
            config.click_batch_wait,
            config.upstream_timeout,
            config.shutdown_grace,
            spill.clone(),
        );
        let microcache = MicroCache::new(
            config.microcache_capacity,
            config.microcache_max_bytes,
            config.microcache_ttl,
            config.microcache_stale,
        );
        let live = Hub::new(config.live);
        // A missing or corrupt file stops the start, as in analytics-svc.
        let geoip = config
            .geoip_db
            .as_deref()
            .map(shortfleet_common::geoip::GeoIp::open)
            .transpose()?
            .map(Arc::new);
        let listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding HTTP on {}", config.http_addr))?;
        let ops_listener = match config.ops_addr {
            Some(addr) => Some(grpc::bind(addr, "ops HTTP").await?),
            None => None,
        };
        let state = Arc::new(State {
            config,
            keys,
            key_store: key_store.clone(),
            limiter,
            upstreams,
            clicks,
            live,
            microcache,
            health,
            robots: crate::handlers::robots::Robots::default(),
            geoip,
        });
        Ok(Self {
            listener,
            ops_listener,
            state,
            key_store,
            forwarder,
            spiller: spill.map(Spiller),
        })
    }

    async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(http = %self.http_addr(), "listening");
        let config = &self.state.config;
        let tracker = TaskTracker::new();
        let background = CancellationToken::new();
        tracker.spawn(self.key_store.keep_fresh(
            self.state.keys.clone(),
            config.key_refresh,
            self.state.health.clone(),
            background.clone(),
        ));
        tracker.spawn(self.forwarder.run(background.clone()));
        if let Some(spiller) = self.spiller {
            tracker.spawn(spiller.run(background.clone()));
        }
        if let Some(ops_listener) = self.ops_listener {
            tracing::info!(ops = %ops_listener.local_addr()?, "serving /metrics on the ops port only");
            tracker.spawn(ops::serve(
                ops_listener,
                self.state.health.clone(),
                background.clone(),
            ));
        }
        if config.microcache_capacity > 0 {
            tracker.spawn(
                LinkEventSubscriber {
                    amqp_url: config.amqp_url.clone(),
                    exchange: config.link_events_exchange.clone(),
                    consumer_tag: "gateway",
                    handlers: self.state.microcache.handlers(),
                    health: self.state.health.clone(),
                    subscribed: Arc::new(tokio::sync::Notify::new()),
                }
                .run(background.clone()),
            );
        }
        tracker.spawn(self.state.live.clone().feed(
            config.amqp_url.clone(),
            config.click_counts_exchange.clone(),
            shutdown.clone(),
            background.clone(),
        ));
        server::serve(
            self.listener,
            self.state.clone(),
            config.header_read_timeout,
            config.shutdown_grace,
            shutdown,
        )
        .await;
        // In-flight requests are done: flush their clicks, then stop.
        background.cancel();
        tracker.close();
        let _ = tokio::time::timeout(config.shutdown_grace, tracker.wait()).await;
        Ok(())
    }
}
