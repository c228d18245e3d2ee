//! The `clicks.counted` fanout exchange: analytics-svc publishes, after each
//! batch it stored, how many new human clicks each owner+code received (a
//! `ClickCounts`); every gateway replica subscribes with its own exclusive,
//! auto-deleted queue and fans the counts out to its live subscribers
//! (`GET /api/v1/events`).
//!
//! Best effort on both sides, by design: the numbers of record are in
//! analytics' database, and the dashboard reloads them after any gap. So
//! - publishing never waits on the broker: [`CountsSender::offer`] is a
//!   `try_send` into a bounded queue, a full queue drops the message (and
//!   counts it), and the publishing task's every broker call is bounded in
//!   time. Click storage can never be slowed or failed by it.
//! - no publisher confirms, non-persistent messages, auto-ack consumers.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, ExchangeKind,
    options::{
        BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use prost::Message;
use shortfleet_proto::v1::ClickCounts;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, Backoff};

/// The exchange's default name (`SHORTFLEET_CLICK_COUNTS_EXCHANGE`).
pub const DEFAULT_EXCHANGE: &str = "clicks.counted";
/// The AMQP `type` of a message on it.
pub const CLICK_COUNTS_TYPE: &str = "shortener.v1.ClickCounts";
/// Bounds every broker round trip (connect, declare, publish).
const BROKER_TIMEOUT: Duration = Duration::from_secs(2);
/// Batches waiting for the broker; beyond this they are dropped.
const QUEUE: usize = 256;

async fn declare(channel: &Channel, exchange: &str) -> anyhow::Result<()> {
    bounded(
        "declaring the click counts exchange",
        channel.exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
}

async fn bounded<T>(
    what: &'static str,
    call: impl Future<Output = lapin::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(BROKER_TIMEOUT, call)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no answer within {BROKER_TIMEOUT:?}"))?
        .map_err(|e| anyhow::Error::new(e).context(what))
}

/// The storing side's handle: never blocks, never fails.
#[derive(Clone)]
pub struct CountsSender {
    tx: mpsc::Sender<ClickCounts>,
}

impl CountsSender {
    /// A sender and its receiver, for a [`CountsPublisher`] (or a test).
    pub fn new() -> (Self, mpsc::Receiver<ClickCounts>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { tx }, rx)
    }

    /// Queues `counts` for publishing, or drops them when the queue is full
    /// (the broker is slow or away). Empty batches are not sent.
    pub fn offer(&self, counts: ClickCounts) {
        if counts.counts.is_empty() {
            return;
        }
        if self.tx.try_send(counts).is_err() {
            metrics::counter!("shortfleet_click_counts_dropped_total").increment(1);
        }
    }
}

/// Publishes what a [`CountsSender`] queued, reconnecting on failure; while
/// disconnected, queued batches are dropped rather than kept (they would be
/// stale by the time the broker is back).
pub struct CountsPublisher {
    pub amqp_url: String,
    pub exchange: String,
    pub rx: mpsc::Receiver<ClickCounts>,
}

impl CountsPublisher {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::reconnect();
        while !shutdown.is_cancelled() {
            match self.session(&shutdown, &mut backoff).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "click counts publisher interrupted; live updates pause"
                ),
            }
            let deadline = tokio::time::Instant::now() + backoff.next_delay();
            // Drain (and drop) while waiting, so the storing side never
            // finds a queue full of stale batches.
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    () = shutdown.cancelled() => return,
                    next = self.rx.recv() => match next {
                        Some(_) => metrics::counter!("shortfleet_click_counts_dropped_total").increment(1),
                        None => return,
                    },
                }
            }
        }
    }

    async fn session(
        &mut self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> anyhow::Result<()> {
        let connection = amqp::connect(&self.amqp_url, BROKER_TIMEOUT).await?;
        let channel = amqp::open_channel(&connection, BROKER_TIMEOUT).await?;
        declare(&channel, &self.exchange).await?;
        backoff.reset();
        tracing::info!(exchange = %self.exchange, "publishing click counts");
        loop {
            let counts = tokio::select! {
                next = self.rx.recv() => match next {
                    Some(c) => c,
                    None => return Ok(()),
                },
                () = shutdown.cancelled() => return Ok(()),
            };
            let body = counts.encode_to_vec();
            let properties = BasicProperties::default()
                .with_type(CLICK_COUNTS_TYPE.into())
                .with_message_id(counts.event_id.as_str().into());
            // Without confirms the publish completes once written to the
            // socket; the timeout covers a broker applying back-pressure.
            bounded(
                "publishing click counts",
                channel.basic_publish(
                    self.exchange.as_str().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                ),
            )
            .await?;
            metrics::counter!("shortfleet_click_counts_published_total").increment(1);
        }
    }
}

/// One gateway replica's subscription: every `ClickCounts` published by any
/// analytics replica reaches `on_counts`.
pub struct CountsSubscriber {
    pub amqp_url: String,
    pub exchange: String,
    pub on_counts: Arc<dyn Fn(ClickCounts) + Send + Sync>,
    /// Notified after each (re)subscription, so tests can wait for it.
    pub subscribed: Arc<Notify>,
}

impl CountsSubscriber {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::reconnect();
        while !shutdown.is_cancelled() {
            match self.consume(&shutdown, &mut backoff).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "click counts subscription interrupted; live updates pause"
                ),
            }
            if !backoff.wait(&shutdown).await {
                return;
            }
        }
    }

    async fn consume(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> anyhow::Result<()> {
        let connection = amqp::connect(&self.amqp_url, BROKER_TIMEOUT).await?;
        let channel = amqp::open_channel(&connection, BROKER_TIMEOUT).await?;
        declare(&channel, &self.exchange).await?;
        let queue = bounded(
            "declaring this replica's click counts queue",
            channel.queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                // Live counts are worthless once old: a replica that cannot
                // keep up loses the oldest, never the broker's memory.
                live_queue_arguments(),
            ),
        )
        .await?;
        bounded(
            "binding the click counts queue",
            channel.queue_bind(
                queue.name().clone(),
                self.exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        let mut deliveries = bounded(
            "consuming click counts",
            channel.basic_consume(
                queue.name().clone(),
                "gateway-live".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        backoff.reset();
        self.subscribed.notify_one();
        tracing::info!(queue = %queue.name(), "consuming click counts");
        loop {
            let delivery = tokio::select! {
                next = deliveries.next() => match next {
                    Some(d) => d?,
                    None => anyhow::bail!("the broker closed the consumer"),
                },
                () = shutdown.cancelled() => return Ok(()),
            };
            match ClickCounts::decode(delivery.data.as_slice()) {
                Ok(counts) => (self.on_counts)(counts),
                Err(e) => tracing::warn!(error = %e, "undecodable click counts, ignored"),
            }
        }
    }
}

fn live_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-max-length"),
        AMQPValue::LongLongInt(1000),
    );
    args.insert(
        ShortString::from("x-message-ttl"),
        AMQPValue::LongLongInt(10_000),
    );
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use shortfleet_proto::v1::CodeCount;

    fn counts(n: u64) -> ClickCounts {
        ClickCounts {
            counts: vec![CodeCount {
                owner: "o".into(),
                code: "c".into(),
                clicks: n,
            }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn offer_never_blocks_and_drops_when_full() {
        let (sender, mut rx) = CountsSender::new();
        for n in 0..(QUEUE as u64 + 50) {
            sender.offer(counts(n));
        }
        sender.offer(ClickCounts::default());
        let mut got = 0;
        while rx.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, QUEUE, "the queue holds its bound, the rest dropped");
    }
}
