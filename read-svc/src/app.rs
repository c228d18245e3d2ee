//! Wiring: Redis client, write-svc channel, caches, the link event consumer
//! and the gRPC server.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use shortfleet_common::{
    config::{ConfigError, ConfigSource},
    grpc::{self, Listeners},
    link_events::LinkEventSubscriber,
    ops::Health,
    redis,
    service::Service,
};
use shortfleet_proto::v1::{
    link_resolver_server::LinkResolverServer, link_writer_client::LinkWriterClient,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::{
    config::Config,
    events,
    resolver::{Resolver, ResolverParts},
    service::LinkResolverService,
};

/// How long start-up waits for the link event subscription.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

pub struct App {
    config: Config,
    listeners: Listeners,
    resolver: Resolver,
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
    const NAME: &'static str = "read-svc";

    fn config(source: &ConfigSource) -> Result<Config, ConfigError> {
        Config::from_source(source)
    }

    async fn build(config: Config) -> anyhow::Result<Self> {
        // Every dependency is optional for serving: caches cover the others.
        let health = Health::new();
        crate::resolver::describe_metrics();
        crate::service::describe_metrics();
        health.register("redis", false);
        health.register("rabbitmq", false);
        let redis = redis::connect(&config.redis_url, config.redis_timeout)?;
        // Lazy: read-svc starts (and serves cached codes) while write-svc is down.
        let upstream = shortfleet_common::grpc::channel(
            &config.write_svc_url,
            "SHORTFLEET_WRITE_SVC_URL",
            config.upstream_timeout,
            config.tls.as_ref(),
            shortfleet_common::tls::names::WRITE_SVC,
            &config.discovery,
        )?;
        let resolver = Resolver::new(ResolverParts {
            redis,
            prefix: config.redis_prefix.clone(),
            redis_ttl: config.redis_ttl,
            local_capacity: config.local_capacity,
            local_ttl: config.local_ttl,
            negative_ttl: config.negative_ttl,
            upstream: LinkWriterClient::new(upstream),
            upstream_timeout: config.upstream_timeout,
            health: health.clone(),
        });
        let listeners = Listeners::bind(config.grpc_addr, config.ops_addr).await?;
        Ok(Self {
            config,
            listeners,
            resolver,
            health,
        })
    }

    async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(grpc = %self.grpc_addr(), ops = %self.ops_addr(), "listening");
        let background = grpc::Background::with_ops(self.listeners.ops, self.health.clone());
        let (redis, health) = (self.resolver.redis().clone(), self.health.clone());
        background.spawn(|stop| redis::track(redis, health, "redis", stop));
        let subscribed = Arc::new(Notify::new());
        let subscriber = LinkEventSubscriber {
            amqp_url: self.config.amqp_url.clone(),
            exchange: self.config.link_events_exchange.clone(),
            consumer_tag: "read-svc",
            handlers: events::handlers(self.resolver.clone()),
            health: self.health.clone(),
            subscribed: subscribed.clone(),
        };
        background.spawn(|stop| subscriber.run(stop));
        // Serving before the subscription exists could cache a link whose
        // next edit this replica never hears of. RabbitMQ down at start-up
        // must not keep us down, though: wait a bounded time.
        if tokio::time::timeout(SUBSCRIBE_WAIT, subscribed.notified())
            .await
            .is_err()
        {
            tracing::warn!(
                "serving without link events for now; caches may lag edits until their TTL"
            );
        }
        grpc::Server {
            services: &[shortfleet_proto::v1::link_resolver_server::SERVICE_NAME],
            routes: Routes::new(LinkResolverServer::new(LinkResolverService::new(
                self.resolver,
            ))),
            health: self.health.clone(),
            grace: self.config.shutdown_grace,
            tls: self.config.tls.as_ref(),
        }
        .serve_then_stop(self.listeners.grpc, shutdown, background)
        .await
    }
}
