//! Wiring: binds the listeners, prepares the database, starts the relay and
//! serves gRPC until shutdown.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use shortfleet_common::{
    config::{ConfigError, ConfigSource},
    grpc::{self, Listeners},
    ops::Health,
    postgres,
    service::Service,
};
use shortfleet_proto::v1::link_writer_server::LinkWriterServer;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::{
    config::{Config, DEV_CURSOR_SECRET},
    cursor::CursorKey,
    migrations::MIGRATIONS,
    outbox::{self, OutboxRelay},
    replica::ReadReplica,
    service::LinkWriterService,
    store::Store,
    target::TargetRules,
};

pub struct App {
    config: Config,
    listeners: Listeners,
    store: Store,
    health: Health,
    outbox_wakeup: Arc<tokio::sync::Notify>,
    replica: Option<Arc<ReadReplica>>,
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
    const NAME: &'static str = "write-svc";

    fn config(source: &ConfigSource) -> Result<Config, ConfigError> {
        Config::from_source(source)
    }

    async fn build(config: Config) -> anyhow::Result<Self> {
        let health = Health::new();
        crate::outbox::describe_metrics();
        crate::store::describe_metrics();
        crate::service::describe_metrics();
        crate::replica::describe_metrics();
        health.register("postgres", true);
        health.register("rabbitmq", false);
        let pool = postgres::open(
            &config.database_url,
            config.db_pool_size,
            config.db_timeout,
            MIGRATIONS,
        )
        .await
        .context("opening the links database")?;
        health.set("postgres", true);
        let listeners = Listeners::bind(config.grpc_addr, config.ops_addr).await?;
        let outbox_wakeup = Arc::new(tokio::sync::Notify::new());
        let replica = match &config.database_read_url {
            Some(url) => {
                // Lazy: write-svc starts, and reads from the primary, while
                // the replica is down. Short waits: a replica that does not
                // answer quickly is skipped for the primary.
                let replica_pool = postgres::pool(
                    url,
                    config.db_pool_size,
                    config.db_timeout.min(std::time::Duration::from_millis(500)),
                )
                .context("SHORTFLEET_DATABASE_READ_URL")?;
                health.register("postgres-replica", false);
                Some(Arc::new(ReadReplica::new(
                    replica_pool,
                    pool.clone(),
                    config.read_replica_max_lag,
                )))
            }
            None => None,
        };
        let store = Store::new(pool, outbox_wakeup.clone(), replica.clone());
        Ok(Self {
            config,
            listeners,
            store,
            health,
            outbox_wakeup,
            replica,
        })
    }

    async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(grpc = %self.grpc_addr(), ops = %self.ops_addr(), "listening");
        if self.config.cursor_secret.expose() == DEV_CURSOR_SECRET {
            tracing::warn!(
                "SHORTFLEET_CURSOR_SECRET is the development default; set it in production"
            );
        }
        // Background work stops only after the gRPC server drained, so the
        // relay publishes what the last requests committed.
        let background = grpc::Background::with_ops(self.listeners.ops, self.health.clone());
        let relay = OutboxRelay {
            pool: self.store.pool().clone(),
            amqp_url: self.config.amqp_url.clone(),
            exchange: self.config.link_events_exchange.clone(),
            health: self.health.clone(),
            wakeup: self.outbox_wakeup.clone(),
            timeout: self.config.db_timeout,
        };
        background.spawn(|stop| relay.run(stop));
        let store = self.store.clone();
        background.spawn(|stop| outbox::housekeeping(store, stop));
        let (pool, health) = (self.store.pool().clone(), self.health.clone());
        background.spawn(|stop| postgres::track(pool, health, "postgres", stop));
        if let Some(replica) = self.replica.clone() {
            background.spawn(|stop| replica.track(stop));
        }

        let service = LinkWriterService::new(
            self.store.clone(),
            TargetRules {
                own_hosts: self.config.public_hosts.clone(),
                allow_private: self.config.allow_private_targets,
            },
            CursorKey::new(self.config.cursor_secret.expose().as_bytes()),
        );
        grpc::Server {
            services: &[shortfleet_proto::v1::link_writer_server::SERVICE_NAME],
            routes: Routes::new(LinkWriterServer::new(service)),
            health: self.health.clone(),
            grace: self.config.shutdown_grace,
            tls: self.config.tls.as_ref(),
        }
        .serve_then_stop(self.listeners.grpc, shutdown, background)
        .await
    }
}
