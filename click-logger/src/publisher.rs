//! The link to RabbitMQ: keeps one confirm-mode channel, reconnecting with
//! backoff, and replays the spool oldest first whenever the broker is back.
//!
//! RabbitMQ down or refusing: `publish` fails fast (no channel), callers
//! spool, and readiness reports "rabbitmq" down; click-logger stays ready
//! because the spool accepts clicks durably.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use lapin::Connection;
use prost::Message;
use shortfleet_common::{
    amqp::{self, Backoff, CLICK_ROUTING_KEY, ConfirmedPublisher, Outgoing},
    ops::Health,
    telemetry, trace,
};
use shortfleet_proto::v1::ClickEvent;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use crate::spool::Spool;

/// Events published per confirm round while replaying.
const REPLAY_CHUNK: usize = 1000;

pub struct Publisher {
    pub amqp_url: String,
    pub exchange: String,
    pub queue: String,
    pub timeout: Duration,
    pub health: Health,
    /// The connection is kept only so it lives as long as its channel.
    link: RwLock<Option<(Connection, ConfirmedPublisher)>>,
}

impl Publisher {
    pub fn new(
        amqp_url: String,
        exchange: String,
        queue: String,
        timeout: Duration,
        health: Health,
    ) -> Self {
        Self {
            amqp_url,
            exchange,
            queue,
            timeout,
            health,
            link: RwLock::new(None),
        }
    }

    /// The confirm-mode channel, if connected.
    pub async fn channel(&self) -> Option<ConfirmedPublisher> {
        let link = self.link.read().await;
        link.as_ref()
            .filter(|(_, publisher)| publisher.is_open())
            .map(|(_, publisher)| publisher.clone())
    }

    /// Publishes a batch and waits for every confirm. On failure the
    /// channel is dropped so the run loop reconnects.
    pub async fn publish(&self, events: &[ClickEvent]) -> anyhow::Result<()> {
        let channel = self.channel().await.context("not connected to RabbitMQ")?;
        let started = std::time::Instant::now();
        let payloads: Vec<(Vec<u8>, String)> = events
            .iter()
            .map(|e| (e.encode_to_vec(), publish_traceparent(e)))
            .collect();
        let messages: Vec<Outgoing<'_>> = events
            .iter()
            .zip(&payloads)
            .map(|(e, (payload, traceparent))| Outgoing {
                message_id: &e.event_id,
                payload,
                traceparent,
            })
            .collect();
        let result = channel
            .publish_all(&self.exchange, CLICK_ROUTING_KEY, &messages)
            .await;
        match &result {
            Ok(()) => {
                metrics::histogram!("shortfleet_click_publish_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("shortfleet_clicks_published_total")
                    .increment(events.len() as u64);
            }
            Err(_) => {
                *self.link.write().await = None;
                self.health.set("rabbitmq", false);
            }
        }
        result.context("publishing clicks")
    }

    async fn connect(&self) -> anyhow::Result<()> {
        let connection = amqp::connect(&self.amqp_url, self.timeout).await?;
        amqp::declare_click_topology(&connection, &self.exchange, &self.queue, self.timeout)
            .await?;
        let publisher = ConfirmedPublisher::open(&connection, self.timeout).await?;
        *self.link.write().await = Some((connection, publisher));
        Ok(())
    }

    /// Keeps the link up and drains the spool until shutdown.
    pub async fn run(self: Arc<Self>, spool: Arc<Spool>, shutdown: CancellationToken) {
        let mut backoff = Backoff::reconnect();
        while !shutdown.is_cancelled() {
            if self.channel().await.is_none() {
                match self.connect().await {
                    Ok(()) => {
                        tracing::info!("connected to RabbitMQ");
                        self.health.set("rabbitmq", true);
                        backoff.reset();
                    }
                    Err(e) => {
                        self.health.set("rabbitmq", false);
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "RabbitMQ unreachable; clicks go to the spool"
                        );
                        backoff.wait(&shutdown).await;
                        continue;
                    }
                }
            }
            match self.replay_one(&spool).await {
                Ok(true) => continue,
                // Idle: the spool only grows while the link is down, and a
                // failed publish drops the link, so polling is cheap.
                Ok(false) => pause(Duration::from_millis(200), &shutdown).await,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "spool replay interrupted");
                    backoff.wait(&shutdown).await;
                }
            }
        }
    }

    /// Replays the oldest segment; `Ok(false)` when the spool is empty.
    async fn replay_one(&self, spool: &Spool) -> anyhow::Result<bool> {
        let Some((path, events)) = spool.oldest().await? else {
            return Ok(false);
        };
        for chunk in events.chunks(REPLAY_CHUNK) {
            self.publish(chunk).await?;
        }
        spool.remove(&path).await?;
        tracing::info!(clicks = events.len(), "replayed a spool segment");
        Ok(true)
    }
}

/// The trace context a click travels on: a `clicks publish` span continuing
/// the redirect's trace when spans are exported, else the redirect's own.
fn publish_traceparent(event: &ClickEvent) -> String {
    if !telemetry::exporting_traces() {
        return event.traceparent.clone();
    }
    let span = tracing::info_span!(
        "clicks publish",
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "publish",
        messaging.destination.name = "clicks",
        messaging.message.id = %event.event_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    trace::continue_from_traceparent(&span, &event.traceparent);
    span.in_scope(trace::current_traceparent)
}

async fn pause(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = shutdown.cancelled() => {}
    }
}
