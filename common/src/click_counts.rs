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
    BasicProperties, ExchangeKind,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable, ShortString},
};
use prost::Message;
use shortfleet_proto::v1::ClickCounts;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, SessionUp};

/// The AMQP `type` of a message on it.
pub const CLICK_COUNTS_TYPE: &str = "shortener.v1.ClickCounts";
/// Bounds every broker round trip (connect, declare, publish).
const BROKER_TIMEOUT: Duration = Duration::from_secs(2);
/// Batches waiting for the broker; beyond this they are dropped.
const QUEUE: usize = 256;

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
    pub async fn run(self, shutdown: CancellationToken) {
        let Self {
            amqp_url,
            exchange,
            rx,
        } = self;
        let rx = tokio::sync::Mutex::new(rx);
        // Set when a session failed: what queued up while disconnected is
        // stale by the time the broker is back, and is dropped.
        let lost = std::sync::atomic::AtomicBool::new(false);
        let (amqp_url, exchange, rx, lost) = (&amqp_url, &exchange, &rx, &lost);
        amqp::supervise(
            "rabbitmq",
            "click counts publisher (live updates pause)",
            None,
            shutdown.clone(),
            |up| {
                let shutdown = shutdown.clone();
                async move {
                    let mut rx = rx.lock().await;
                    if lost.swap(false, std::sync::atomic::Ordering::Relaxed) {
                        while rx.try_recv().is_ok() {
                            metrics::counter!("shortfleet_click_counts_dropped_total").increment(1);
                        }
                    }
                    let result = publish_session(amqp_url, exchange, &mut rx, up, &shutdown).await;
                    if result.is_err() {
                        lost.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    result
                }
            },
        )
        .await;
    }
}

/// One broker session of a [`CountsPublisher`].
async fn publish_session(
    amqp_url: &str,
    exchange: &str,
    rx: &mut mpsc::Receiver<ClickCounts>,
    up: SessionUp,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let connection = amqp::connect(amqp_url, BROKER_TIMEOUT).await?;
    let channel = amqp::open_channel(&connection, BROKER_TIMEOUT).await?;
    amqp::declare_exchange(&channel, exchange, ExchangeKind::Fanout, BROKER_TIMEOUT).await?;
    up.up();
    tracing::info!(exchange = %exchange, "publishing click counts");
    loop {
        let counts = tokio::select! {
            next = rx.recv() => match next {
                Some(c) => c,
                None => return Ok(()),
            },
            () = shutdown.cancelled() => return Ok(()),
        };
        let body = counts.encode_to_vec();
        let properties = BasicProperties::default()
            .with_type(CLICK_COUNTS_TYPE.into())
            .with_message_id(counts.event_id.as_str().into());
        // Best effort, so no confirms: the publish completes once written
        // to the socket; the timeout covers a broker applying back-pressure.
        amqp::bounded(
            BROKER_TIMEOUT,
            "publishing click counts",
            channel.basic_publish(
                exchange.into(),
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
        let this = &self;
        amqp::supervise(
            "rabbitmq",
            "click counts subscription (live updates pause)",
            None,
            shutdown.clone(),
            |up| {
                let shutdown = shutdown.clone();
                async move { this.consume(up, &shutdown).await }
            },
        )
        .await;
    }

    async fn consume(&self, up: SessionUp, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let connection = amqp::connect(&self.amqp_url, BROKER_TIMEOUT).await?;
        let channel = amqp::open_channel(&connection, BROKER_TIMEOUT).await?;
        let mut deliveries = amqp::subscribe_private(
            &channel,
            &self.exchange,
            ExchangeKind::Fanout,
            "",
            // Live counts are worthless once old: a replica that cannot
            // keep up loses the oldest, never the broker's memory.
            live_queue_arguments(),
            "gateway-live",
            true,
            BROKER_TIMEOUT,
        )
        .await?;
        up.up();
        self.subscribed.notify_one();
        tracing::info!(queue = %deliveries.queue(), "consuming click counts");
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

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_click_counts_dropped_total",
        metrics::Unit::Count,
        "Click count announcements dropped because the broker was slow or away (live dashboards reload instead)."
    );
    metrics::describe_counter!(
        "shortfleet_click_counts_published_total",
        metrics::Unit::Count,
        "Click count announcements published to the clicks.counted exchange."
    );
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
