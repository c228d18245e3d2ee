//! Wiring: API key snapshot, rate limiter, upstream channels, the click
//! forwarder and the HTTP server.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use shortfleet_common::{
    config::{ConfigError, ConfigSource},
    grpc,
    link_events::LinkEventSubscriber,
    ops::Health,
    redis,
    service::Service,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    clicks::{self, ClickForwarder, ClickSink, Spill, Spiller},
    config::Config,
    keys::KeyStore,
    live::Hub,
    microcache::MicroCache,
    ratelimit::RateLimiter,
    server,
    state::State,
    upstream::Upstreams,
};

pub struct App {
    listener: TcpListener,
    /// The listeners' addresses, read once at bind time.
    http_addr: SocketAddr,
    ops_addr: Option<SocketAddr>,
    /// The operator port, when `SHORTFLEET_OPS_ADDR` asks for one.
    ops_listener: Option<TcpListener>,
    state: Arc<State>,
    forwarder: ClickForwarder,
    /// Moves overflowing clicks to disk, when a spool is configured.
    spiller: Option<Spiller>,
}

impl App {
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }
}

impl Service for App {
    type Config = Config;
    const NAME: &'static str = "gateway";

    fn config(source: &ConfigSource) -> Result<Config, ConfigError> {
        Config::from_source(source)
    }

    async fn build(config: Config) -> anyhow::Result<Self> {
        let health = Health::new();
        crate::keys::describe_metrics();
        crate::live::describe_metrics();
        crate::ratelimit::describe_metrics();
        crate::resilience::describe_metrics();
        crate::server::describe_metrics();
        crate::handlers::describe_metrics();
        clicks::describe_metrics();
        crate::microcache::describe_metrics();
        shortfleet_common::geoip::describe_metrics();
        // Not critical once the key snapshot is loaded: with PostgreSQL down
        // the gateway keeps verifying keys from memory, and redirects need no
        // database at all. An unready gateway would stop every redirect.
        health.register("postgres", false);
        health.register("rabbitmq", false);
        let key_store = KeyStore::open(&config.database_url).await?;
        let n = key_store.refresh().await.context("loading API keys")?;
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
            key_store,
            limiter,
            upstreams,
            clicks,
            live,
            microcache,
            health,
            robots: crate::robots::Robots::default(),
            geoip,
        });
        let http_addr = listener.local_addr()?;
        let ops_addr = match &ops_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        Ok(Self {
            listener,
            http_addr,
            ops_addr,
            ops_listener,
            state,
            forwarder,
            spiller: spill.map(Spiller),
        })
    }

    async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(http = %self.http_addr(), "listening");
        let config = &self.state.config;
        let background = match self.ops_listener {
            Some(ops_listener) => {
                tracing::info!(ops = %ops_listener.local_addr()?, "serving /metrics on the ops port only");
                grpc::Background::with_ops(ops_listener, self.state.health.clone())
            }
            None => grpc::Background::new(),
        };
        let health = self.state.health.clone();
        let key_store = self.state.key_store.clone();
        let key_refresh = config.key_refresh;
        background.spawn(|stop| key_store.keep_fresh(key_refresh, health, stop));
        let forwarder = self.forwarder;
        background.spawn(|stop| forwarder.run(stop));
        if let Some(spiller) = self.spiller {
            background.spawn(|stop| spiller.run(stop));
        }
        if config.microcache_capacity > 0 {
            let subscriber = LinkEventSubscriber {
                amqp_url: config.amqp_url.clone(),
                exchange: config.link_events_exchange.clone(),
                consumer_tag: "gateway",
                // Both caches forget what an event (or a gap) may change.
                handlers: self
                    .state
                    .robots
                    .handlers()
                    .then(self.state.microcache.handlers()),
                health: self.state.health.clone(),
                subscribed: Arc::new(tokio::sync::Notify::new()),
            };
            background.spawn(|stop| subscriber.run(stop));
        }
        let live = self.state.live.clone();
        let (amqp_url, exchange) = (
            config.amqp_url.clone(),
            config.click_counts_exchange.clone(),
        );
        let draining = shutdown.clone();
        background.spawn(|stop| live.feed(amqp_url, exchange, draining, stop));
        server::serve(
            self.listener,
            self.state.clone(),
            config.header_read_timeout,
            config.shutdown_grace,
            shutdown,
        )
        .await;
        // In-flight requests are done: flush their clicks, then stop.
        background.stop(config.shutdown_grace).await;
        Ok(())
    }
}
