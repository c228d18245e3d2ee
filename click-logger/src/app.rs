//! Wiring: the spool, the RabbitMQ link, and the gRPC server.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use shortfleet_common::{
    config::{ConfigError, ConfigSource},
    grpc::{self, Listeners},
    ops::Health,
    service::Service,
};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::{
    config::Config, publisher::Publisher, service::ClickLoggerService, spool::Spool,
    wire::ClickLoggerRoutes,
};

const MAX_MESSAGE: usize = 32 << 20;

pub struct App {
    config: Config,
    listeners: Listeners,
    publisher: Arc<Publisher>,
    spool: Arc<Spool>,
    health: Health,
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
    const NAME: &'static str = "click-logger";

    fn config(source: &ConfigSource) -> Result<Config, ConfigError> {
        Config::from_source(source)
    }

    async fn build(config: Config) -> anyhow::Result<Self> {
        let health = Health::new();
        crate::publisher::describe_metrics();
        crate::service::describe_metrics();
        // Not critical: the spool takes clicks while RabbitMQ is away.
        health.register("rabbitmq", false);
        let spool = Spool::open(&config.spool_dir, config.spool_max_bytes)
            .await
            .with_context(|| format!("opening the spool in {}", config.spool_dir.display()))?;
        let publisher = Publisher::new(
            config.amqp_url.clone(),
            config.clicks_exchange.clone(),
            config.clicks_queue.clone(),
            config.amqp_timeout,
            health.clone(),
        );
        let listeners = Listeners::bind(config.grpc_addr, config.ops_addr).await?;
        Ok(Self {
            config,
            listeners,
            publisher: Arc::new(publisher),
            spool: Arc::new(spool),
            health,
        })
    }

    async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(grpc = %self.grpc_addr(), ops = %self.ops_addr(), "listening");
        let background = grpc::Background::with_ops(self.listeners.ops, self.health.clone());
        let (publisher, spool) = (self.publisher.clone(), self.spool.clone());
        background.spawn(|stop| publisher.run(spool, stop));
        let service = ClickLoggerService {
            publisher: self.publisher.clone(),
            spool: self.spool.clone(),
            draining: shutdown.clone(),
        };
        // A full batch (MAX_BATCH clicks with long user agents) is larger
        // than tonic's 4 MiB default. Every acknowledged click is already
        // confirmed or on disk when the server has drained.
        grpc::Server {
            services: &[shortfleet_proto::v1::click_logger_server::SERVICE_NAME],
            routes: Routes::new(ClickLoggerRoutes::new(service, MAX_MESSAGE)),
            health: self.health.clone(),
            grace: self.config.shutdown_grace,
            tls: self.config.tls.as_ref(),
        }
        .serve_then_stop(self.listeners.grpc, shutdown, background)
        .await
    }
}
