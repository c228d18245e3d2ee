//! Subscribes one replica to the `links.events` exchange: an exclusive,
//! auto-deleted queue per replica bound to `link.#`, because every replica
//! must see every event to keep its own in-process cache fresh. read-svc and
//! the gateway both use it.
//!
//! RabbitMQ down: the subscriber reconnects with the fleet's jittered
//! backoff (at most a second apart) and reports the
//! "rabbitmq" dependency down; the caller's caches fall back on their TTLs.
//! After every (re)subscription the caller is told, since events published
//! during a gap never reach this replica's queue.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use anyhow::Context;
use futures::StreamExt;
use lapin::{
    Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use prost::Message;
use shortfleet_proto::v1::LinkEvent;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::ops::Health;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the subscriber calls; both run before the next delivery is taken.
#[derive(Clone)]
pub struct Handlers {
    /// One decoded event.
    pub on_event: Arc<dyn Fn(LinkEvent) -> BoxFuture + Send + Sync>,
    /// The subscription was (re)established: anything cached may have
    /// missed events and should be forgotten.
    pub on_subscribed: Arc<dyn Fn() -> BoxFuture + Send + Sync>,
    /// The subscription broke; events may be missed until the next
    /// `on_subscribed`.
    pub on_lost: Arc<dyn Fn() + Send + Sync>,
}

pub struct LinkEventSubscriber {
    pub amqp_url: String,
    pub exchange: String,
    /// Names the consumer in the broker's management UI.
    pub consumer_tag: &'static str,
    pub handlers: Handlers,
    pub health: Health,
    /// Notified after each (re)subscription, so start-up can wait for it.
    pub subscribed: Arc<Notify>,
}

impl LinkEventSubscriber {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = crate::amqp::Backoff::reconnect();
        while !shutdown.is_cancelled() {
            match self.consume(&shutdown, &mut backoff).await {
                Ok(()) => return,
                Err(e) => {
                    self.health.set("rabbitmq", false);
                    (self.handlers.on_lost)();
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "link event subscription interrupted"
                    );
                }
            }
            if !backoff.wait(&shutdown).await {
                return;
            }
        }
    }

    /// Consumes until shutdown (`Ok`) or a broker failure (`Err`).
    async fn consume(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut crate::amqp::Backoff,
    ) -> anyhow::Result<()> {
        let connection = tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(&self.amqp_url, ConnectionProperties::default()),
        )
        .await
        .context("connecting to RabbitMQ timed out")?
        .context("connecting to RabbitMQ")?;
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                self.exchange.as_str().into(),
                "link.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel.basic_qos(256, BasicQosOptions::default()).await?;
        let mut deliveries = channel
            .basic_consume(
                queue.name().clone(),
                self.consumer_tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.health.set("rabbitmq", true);
        backoff.reset();
        (self.handlers.on_subscribed)().await;
        self.subscribed.notify_one();
        tracing::info!(queue = %queue.name(), "consuming link events");
        loop {
            let delivery = tokio::select! {
                next = deliveries.next() => match next {
                    Some(delivery) => delivery?,
                    None => anyhow::bail!("the broker closed the consumer"),
                },
                () = shutdown.cancelled() => return Ok(()),
            };
            match LinkEvent::decode(delivery.data.as_slice()) {
                Ok(event) => {
                    metrics::counter!("shortfleet_link_events_total").increment(1);
                    (self.handlers.on_event)(event).await;
                }
                // Acked anyway: a message we cannot read will not improve
                // with redelivery, and caches fall back on their TTLs.
                Err(e) => tracing::warn!(error = %e, "undecodable link event, ignored"),
            }
            delivery.ack(BasicAckOptions::default()).await?;
        }
    }
}
