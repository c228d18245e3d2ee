//! The link to RabbitMQ: keeps one confirm-mode channel, reconnecting
//! through [`amqp::supervise`], and replays the spool oldest first whenever the broker is back.
//!
//! RabbitMQ down or refusing: `publish` fails fast (no channel), callers
//! spool, and readiness reports "rabbitmq" down; click-logger stays ready
//! because the spool accepts clicks durably.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use lapin::Connection;
use prost::{Message, bytes::Bytes};
use shortfleet_common::{
    amqp::{
        self, Backoff, CLICK_BATCH_TYPE, CLICK_ROUTING_KEY, ConfirmedPublisher, Outgoing, SessionUp,
    },
    ops::Health,
    telemetry,
    trace::{self, Messaging},
};
use shortfleet_proto::{raw, v1::ClickEvent};
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use crate::spool::Spool;

/// Events published per confirm round while replaying.
const REPLAY_CHUNK: usize = 5000;

/// Clicks carried per AMQP message. One message per click made the broker's
/// per-message work (routing, persisting, confirming, delivering, acking)
/// the largest CPU cost of the fleet at high redirect rates; batching
/// divides it by up to this factor. The broker's cost is per message far
/// more than per byte (wake-ups, the quorum log's writes and syncs): going
/// from 500 to 2,000 clicks a message halved RabbitMQ's CPU per click
/// (BENCHMARKS.md). The price: dead-lettering is per message, which is why
/// [`crate::service::validate`] refuses any click analytics could not
/// store before it is published.
pub const CLICKS_PER_MESSAGE: usize = 2000;

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

    /// Publishes clicks (each its `ClickEvent` bytes),
    /// [`CLICKS_PER_MESSAGE`] to a message, and waits for every confirm.
    /// On failure the channel is dropped so the run loop reconnects.
    pub async fn publish(&self, events: &[Bytes]) -> anyhow::Result<()> {
        let channel = self.channel().await.context("not connected to RabbitMQ")?;
        let started = std::time::Instant::now();
        // With spans exported, each click continues its trace through a
        // `clicks publish` span, and carries that span's context onwards.
        let traced: Option<Vec<Bytes>> = telemetry::exporting_traces()
            .then(|| through_publish_spans(&self.exchange, events))
            .transpose()?;
        let events = traced.as_deref().unwrap_or(events);
        // A message's id and trace context are its first click's.
        let payloads = events
            .chunks(CLICKS_PER_MESSAGE)
            .map(|chunk| Ok((encode_batch(chunk), ClickEvent::decode(chunk[0].as_ref())?)))
            .collect::<Result<Vec<_>, prost::DecodeError>>()
            .context("decoding a message's first click")?;
        let messages: Vec<Outgoing<'_>> = payloads
            .iter()
            .map(|(payload, first)| Outgoing {
                // Informational: analytics dedupes by each click's own id.
                message_id: &first.event_id,
                payload,
                traceparent: &first.traceparent,
                kind: CLICK_BATCH_TYPE,
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
        let (this, spool) = (&self, &spool);
        amqp::supervise(
            "rabbitmq",
            "RabbitMQ link (clicks go to the spool)",
            Some(self.health.clone()),
            shutdown.clone(),
            |up| {
                let shutdown = shutdown.clone();
                async move { this.session(up, spool, &shutdown).await }
            },
        )
        .await;
    }

    /// One broker session: connects, then replays the spool until shutdown
    /// (`Ok`) or until a failed publish dropped the link (`Err`).
    async fn session(
        &self,
        up: SessionUp,
        spool: &Spool,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        self.connect().await?;
        tracing::info!("connected to RabbitMQ");
        up.up();
        // Retries of a replay that failed with the link still up (a spool
        // read error): not a reconnect, so not the supervisor's backoff.
        let mut backoff = Backoff::reconnect();
        while !shutdown.is_cancelled() {
            match self.replay_one(spool).await {
                Ok(true) => backoff.reset(),
                // Idle: the spool only grows while the link is down, and a
                // failed publish drops the link, so polling is cheap.
                Ok(false) => pause(Duration::from_millis(200), shutdown).await,
                Err(e) if self.channel().await.is_none() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "spool replay interrupted");
                    backoff.wait(shutdown).await;
                }
            }
        }
        Ok(())
    }

    /// Replays the oldest segment; `Ok(false)` when the spool is empty.
    async fn replay_one(&self, spool: &Spool) -> anyhow::Result<bool> {
        let Some((path, events)) = spool.oldest().await? else {
            return Ok(false);
        };
        let events = raw::encode_clicks(&events);
        for chunk in events.chunks(REPLAY_CHUNK) {
            self.publish(chunk).await?;
        }
        spool.remove(&path).await?;
        tracing::info!(clicks = events.len(), "replayed a spool segment");
        Ok(true)
    }
}

/// The body of one click message: the bytes of a `ClickBatch` holding
/// `events` (field 1, repeated), each click's bytes as they came.
pub fn encode_batch(events: &[Bytes]) -> Vec<u8> {
    use prost::encoding::bytes;
    let mut body = Vec::with_capacity(bytes::encoded_len_repeated(1, events));
    bytes::encode_repeated(1, events, &mut body);
    body
}

/// The clicks as they leave: each `traceparent` now names a
/// `clicks publish` span that continues the redirect's trace.
fn through_publish_spans(exchange: &str, events: &[Bytes]) -> anyhow::Result<Vec<Bytes>> {
    events
        .iter()
        .map(|bytes| {
            let mut event = ClickEvent::decode(bytes.as_ref()).context("decoding a click")?;
            let span = trace::messaging_span(
                amqp::CLICKS_EXCHANGE,
                exchange,
                Messaging::Publish,
                &event.event_id,
                &event.traceparent,
            );
            event.traceparent = span.in_scope(trace::current_traceparent);
            Ok(Bytes::from(event.encode_to_vec()))
        })
        .collect()
}

async fn pause(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = shutdown.cancelled() => {}
    }
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_clicks_published_total",
        metrics::Unit::Count,
        "Clicks published to RabbitMQ and confirmed."
    );
    metrics::describe_histogram!(
        "shortfleet_click_publish_duration_seconds",
        metrics::Unit::Seconds,
        "Time to publish a batch of clicks and receive every confirm."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use shortfleet_proto::v1::ClickBatch;

    #[test]
    fn a_message_body_is_a_click_batch() {
        let events: Vec<ClickEvent> = (0..3)
            .map(|i| ClickEvent {
                event_id: format!("e{i}"),
                code: "abc1234".into(),
                user_agent: "ü".repeat(i * 100),
                ..Default::default()
            })
            .collect();
        let body = encode_batch(&raw::encode_clicks(&events));
        let decoded = ClickBatch::decode(body.as_slice()).unwrap();
        assert_eq!(decoded.events, events);
        // Byte for byte what the generated code writes for the same batch.
        assert_eq!(
            body,
            ClickBatch {
                events,
                sequence: 0
            }
            .encode_to_vec()
        );
        assert_eq!(decoded.sequence, 0);
        assert!(encode_batch(&[]).is_empty());
    }
}
