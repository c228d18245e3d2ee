//! Wiring: database (created and migrated), partitions, the GeoIP file (if
//! configured), the click consumer and the gRPC server.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use deadpool_postgres::Pool;
use shortfleet_common::{
    click_counts::{CountsPublisher, CountsSender},
    config::{ConfigError, ConfigSource},
    grpc::{self, Listeners},
    ops::Health,
    postgres,
    service::Service,
};
use shortfleet_proto::v1::analytics_server::AnalyticsServer;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::{
    config::Config,
    consumer::ClickConsumer,
    fold::{FoldNudge, Folder},
    geoip::GeoIp,
    migrations::MIGRATIONS,
    partitions,
    service::AnalyticsService,
};

pub struct App {
    config: Config,
    listeners: Listeners,
    pool: Pool,
    health: Health,
    geoip: Option<Arc<GeoIp>>,
}

impl App {
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listeners.grpc_addr()
    }

    pub fn ops_addr(&self) -> SocketAddr {
        self.listeners.ops_addr()
    }
}

impl Service for App {
    type Config = Config;
    const NAME: &'static str = "analytics-svc";

    fn config(source: &ConfigSource) -> Result<Config, ConfigError> {
        Config::from_source(source)
    }

    async fn build(config: Config) -> anyhow::Result<Self> {
        let health = Health::new();
        crate::consumer::describe_metrics();
        crate::store::describe_metrics();
        crate::fold::describe_metrics();
        crate::geoip::describe_metrics();
        health.register("postgres", true);
        // Not critical: stats are served while clicks wait in RabbitMQ.
        health.register("rabbitmq", false);
        let pool = postgres::open(
            &config.database_url,
            config.db_pool_size,
            config.db_timeout,
            MIGRATIONS,
        )
        .await
        .context("opening the analytics database")?;
        partitions::prepare(&pool)
            .await
            .context("preparing click partitions")?;
        health.set("postgres", true);
        let geoip = config
            .geoip_db
            .as_deref()
            .map(GeoIp::open)
            .transpose()?
            .map(Arc::new);
        let listeners = Listeners::bind(config.grpc_addr, config.ops_addr).await?;
        Ok(Self {
            config,
            listeners,
            pool,
            health,
            geoip,
        })
    }

    async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(grpc = %self.grpc_addr(), ops = %self.ops_addr(), "listening");
        let c = &self.config;
        let background = grpc::Background::with_ops(self.listeners.ops, self.health.clone());
        let (pool, health) = (self.pool.clone(), self.health.clone());
        background.spawn(|stop| postgres::track(pool, health, "postgres", stop));
        let (pool, retention_days) = (self.pool.clone(), c.retention_days);
        background.spawn(|stop| partitions::maintain(pool, retention_days, stop));
        let (counts, counts_rx) = CountsSender::new();
        let publisher = CountsPublisher {
            amqp_url: c.amqp_url.clone(),
            exchange: c.click_counts_exchange.clone(),
            rx: counts_rx,
        };
        background.spawn(|stop| publisher.run(stop));
        // Background work stops once the server drained, after the
        // consumer's shutdown signal: its last fold comes after the last
        // batches as a rule. Anything still pending is folded at the next
        // start, or by another replica.
        let nudge = FoldNudge::default();
        let folder = Folder {
            pool: self.pool.clone(),
            every: c.rollup_fold_every,
            timeout: c.db_timeout,
            nudge: nudge.clone(),
        };
        background.spawn(|stop| folder.run(stop));
        // The consumer stops with the shutdown signal: a batch in hand is
        // either committed and acked, or left unacked for redelivery.
        let consumer = ClickConsumer {
            pool: self.pool.clone(),
            amqp_url: c.amqp_url.clone(),
            exchange: c.clicks_exchange.clone(),
            queue: c.clicks_queue.clone(),
            prefetch: c.prefetch,
            batch_max: c.batch_max,
            batch_max_wait: c.batch_max_wait,
            batch_quiet: c.batch_quiet,
            visitor_secret: c.visitor_secret.expose().to_owned(),
            geoip: self.geoip.clone(),
            db_timeout: c.db_timeout,
            health: self.health.clone(),
            counts,
            fold: nudge,
        };
        let stop_consuming = shutdown.clone();
        background.spawn(|_| consumer.run(stop_consuming));
        grpc::Server {
            services: &[shortfleet_proto::v1::analytics_server::SERVICE_NAME],
            routes: Routes::new(AnalyticsServer::new(AnalyticsService {
                pool: self.pool.clone(),
                db_timeout: c.db_timeout,
            })),
            health: self.health.clone(),
            grace: c.shutdown_grace,
            tls: c.tls.as_ref(),
        }
        .serve_then_stop(self.listeners.grpc, shutdown, background)
        .await
    }
}
