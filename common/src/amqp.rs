//! RabbitMQ plumbing shared by every service that talks to the broker:
//! connecting with a timeout, the click topology, confirmed publishing, and
//! the reconnect loop (exponential backoff with jitter, reported in
//! [`Health`]).
//!
//! Every broker round trip here is bounded by a timeout: a broker that
//! accepts TCP but stops answering must turn into an error, not a hang.
//! This module must never hold domain logic; what a message means is the
//! caller's business.
//!
//! # Click topology
//! Durable direct exchange `<exchange>` → queue `<queue>` (routing key
//! [`CLICK_ROUTING_KEY`]), dead-lettering to the fanout exchange
//! `<exchange>.dlx` → `<queue>.dlq`. The queue is a quorum queue where the
//! broker supports it, with `x-delivery-limit` so a message that keeps
//! coming back (a consumer crashing on it) is dead-lettered instead of
//! blocking the queue; otherwise a classic durable queue with the same
//! dead-lettering and no delivery limit.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio_util::sync::CancellationToken;

use crate::ops::Health;

/// The routing key clicks are published and bound with.
pub const CLICK_ROUTING_KEY: &str = "click";

/// The `type` of a click message whose body is a `ClickBatch` (many clicks
/// per message). A message without it holds one `ClickEvent`, as releases
/// before batching sent; consumers accept both.
pub const CLICK_BATCH_TYPE: &str = "shortener.v1.ClickBatch";

/// Deliveries of one message (quorum queues only) before it is
/// dead-lettered. High enough that a few consumer restarts never cost a
/// good message, low enough that a poison one stops cycling.
pub const DELIVERY_LIMIT: i64 = 20;

/// Connects to `url` within `timeout`.
pub async fn connect(url: &str, timeout: Duration) -> anyhow::Result<Connection> {
    bounded(
        timeout,
        "connecting to RabbitMQ",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
}

/// Awaits one broker round trip within `timeout`, naming it in the error.
async fn bounded<T>(
    timeout: Duration,
    what: &'static str,
    call: impl Future<Output = lapin::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no answer within {timeout:?}"))?
        .context(what)
}

/// Opens a channel within `timeout`.
pub async fn open_channel(connection: &Connection, timeout: Duration) -> anyhow::Result<Channel> {
    bounded(timeout, "opening a channel", connection.create_channel()).await
}

/// What kind of queue the click queue turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Quorum,
    /// The broker refused a quorum queue (feature disabled, or the queue
    /// already exists as a classic one): classic durable, no delivery limit.
    Classic,
}

/// Declares the click exchange, queue and dead-letter path (idempotent).
///
/// Takes the connection rather than a channel because a refused declaration
/// closes the channel it was sent on: each attempt uses a channel of its
/// own, so the caller's channels are never the casualty.
pub async fn declare_click_topology(
    connection: &Connection,
    exchange: &str,
    queue: &str,
    timeout: Duration,
) -> anyhow::Result<QueueKind> {
    let dlx = format!("{exchange}.dlx");
    let dlq = format!("{queue}.dlq");
    let channel = open_channel(connection, timeout).await?;
    declare_exchange(&channel, &dlx, ExchangeKind::Fanout, timeout).await?;
    declare_queue(&channel, &dlq, FieldTable::default(), timeout).await?;
    bind(&channel, &dlq, &dlx, "", timeout).await?;
    declare_exchange(&channel, exchange, ExchangeKind::Direct, timeout).await?;

    let quorum = declare_queue(&channel, queue, queue_arguments(&dlx, true), timeout).await;
    let (channel, kind) = match quorum {
        Ok(()) => (channel, QueueKind::Quorum),
        Err(quorum_error) => {
            let channel = open_channel(connection, timeout).await?;
            declare_queue(&channel, queue, queue_arguments(&dlx, false), timeout)
                .await
                .map_err(|classic_error| {
                    classic_error.context(format!(
                        "declaring {queue} as classic after the quorum declaration failed: \
                         {quorum_error:#}"
                    ))
                })?;
            tracing::warn!(
                queue,
                error = format!("{quorum_error:#}"),
                "quorum queue refused; using a classic durable queue"
            );
            (channel, QueueKind::Classic)
        }
    };
    bind(&channel, queue, exchange, CLICK_ROUTING_KEY, timeout).await?;
    // Best effort: the channel was only for declaring.
    let _ = tokio::time::timeout(timeout, channel.close(200, "declared".into())).await;
    Ok(kind)
}

/// Arguments of the main click queue.
fn queue_arguments(dlx: &str, quorum: bool) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(dlx.into()),
    );
    if quorum {
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            ShortString::from("x-delivery-limit"),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
    }
    args
}

async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
    timeout: Duration,
) -> anyhow::Result<()> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    bounded(
        timeout,
        "declaring an exchange",
        channel.exchange_declare(name.into(), kind, options, FieldTable::default()),
    )
    .await
    .with_context(|| format!("exchange {name}"))
}

async fn declare_queue(
    channel: &Channel,
    name: &str,
    args: FieldTable,
    timeout: Duration,
) -> anyhow::Result<()> {
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    bounded(
        timeout,
        "declaring a queue",
        channel.queue_declare(name.into(), options, args),
    )
    .await
    .with_context(|| format!("queue {name}"))?;
    Ok(())
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    bounded(
        timeout,
        "binding a queue",
        channel.queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .with_context(|| format!("{queue} to {exchange}"))
}

/// One message to publish.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Unique per message; consumers dedupe on it.
    pub message_id: &'a str,
    pub payload: &'a [u8],
    /// W3C trace context of the work that produced it ("" for none), sent
    /// as the `traceparent` header.
    pub traceparent: &'a str,
    /// The protobuf message in the body, sent as the AMQP `type` property
    /// (e.g. [`CLICK_BATCH_TYPE`]); "" leaves it unset.
    pub kind: &'a str,
}

/// Why a publish was not confirmed. Callers tell "the broker is away"
/// (retry later) from "the broker will never take this as sent"
/// (unroutable: the topology is missing).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No route to any queue: the broker returned the mandatory message.
    #[error("message {message_id} was unroutable")]
    Unroutable { message_id: String },
    /// The broker refused to take responsibility for the message.
    #[error("the broker nacked message {message_id}")]
    Nacked { message_id: String },
    #[error("publisher confirms did not arrive within {0:?}")]
    Timeout(Duration),
    /// The channel or connection failed.
    #[error("publishing failed")]
    Channel(#[from] lapin::Error),
}

/// A channel in confirm mode: every publish is persistent and mandatory and
/// succeeds only once the broker confirmed it and did not return it.
#[derive(Clone)]
pub struct ConfirmedPublisher {
    channel: Channel,
    timeout: Duration,
}

impl ConfirmedPublisher {
    /// Opens a channel on `connection` and puts it in confirm mode. `timeout`
    /// also bounds every later wait for confirms.
    pub async fn open(connection: &Connection, timeout: Duration) -> anyhow::Result<Self> {
        let channel = open_channel(connection, timeout).await?;
        bounded(
            timeout,
            "enabling publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(Self { channel, timeout })
    }

    /// Whether the channel is still usable; a failed publish may have
    /// closed it, and then the caller should reconnect.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes one message and waits for its confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Outgoing<'_>,
    ) -> Result<(), PublishError> {
        self.publish_all(exchange, routing_key, &[message]).await
    }

    /// Publishes every message, then waits for all their confirms: one
    /// round trip's latency for the whole batch instead of one per message.
    /// The whole call, sending included (the broker may throttle a
    /// publisher), is bounded by the timeout.
    pub async fn publish_all(
        &self,
        exchange: &str,
        routing_key: &str,
        messages: &[Outgoing<'_>],
    ) -> Result<(), PublishError> {
        let all = async {
            let mut confirms = Vec::with_capacity(messages.len());
            for m in messages {
                let confirm = self
                    .channel
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        m.payload,
                        properties(m),
                    )
                    .await?;
                confirms.push((m.message_id, confirm));
            }
            for (message_id, confirm) in confirms {
                match confirm.await? {
                    Confirmation::Ack(None) => {}
                    // Confirms were enabled in `open`; this is unreachable,
                    // but "not confirmed" must never pass for "confirmed".
                    Confirmation::NotRequested => {
                        return Err(PublishError::Nacked {
                            message_id: message_id.to_owned(),
                        });
                    }
                    Confirmation::Ack(Some(_)) => {
                        return Err(PublishError::Unroutable {
                            message_id: message_id.to_owned(),
                        });
                    }
                    Confirmation::Nack(_) => {
                        return Err(PublishError::Nacked {
                            message_id: message_id.to_owned(),
                        });
                    }
                }
            }
            Ok(())
        };
        tokio::time::timeout(self.timeout, all)
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))?
    }
}

fn properties(m: &Outgoing<'_>) -> BasicProperties {
    let mut headers = FieldTable::default();
    if !m.traceparent.is_empty() {
        headers.insert(
            ShortString::from("traceparent"),
            AMQPValue::LongString(m.traceparent.into()),
        );
    }
    let properties = BasicProperties::default()
        // Persistent: survives a broker restart once confirmed.
        .with_delivery_mode(2)
        .with_message_id(m.message_id.into())
        .with_content_type("application/x-protobuf".into())
        .with_headers(headers);
    if m.kind.is_empty() {
        properties
    } else {
        properties.with_type(m.kind.into())
    }
}

/// The AMQP `type` of a delivery ("" when absent).
pub fn kind_of(properties: &BasicProperties) -> &str {
    properties.kind().as_ref().map_or("", |k| k.as_str())
}

/// The `traceparent` header of a delivery ("" when absent).
pub fn traceparent_of(properties: &BasicProperties) -> String {
    properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("traceparent"))
        .and_then(|v| match v {
            AMQPValue::LongString(s) => Some(s.to_string()),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Exponential backoff with jitter, for reconnecting. Jitter keeps a fleet
/// of replicas that lost the broker together from reconnecting in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// 100 ms doubling up to 1 s: what the fleet uses for its broker links.
    /// The cap keeps a restarted broker found within about a second, at
    /// the cost of one connection attempt a second per client while it is
    /// away.
    pub const fn reconnect() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// The next delay; each call moves one step up the ladder.
    pub fn next_delay(&mut self) -> Duration {
        let d = jittered_delay(self.initial, self.max, self.attempt, rand::random());
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleeps the next delay; `false` if `shutdown` fired first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = shutdown.cancelled() => false,
        }
    }
}

/// The delay before retry number `attempt` (0-based): the exponential step
/// `initial * 2^attempt`, capped at `max`, of which the first half is fixed
/// and the second half scaled by `unit` (a random number in `[0, 1)`).
/// "Equal jitter": spread out, yet never a near-zero hammering retry.
pub fn jittered_delay(initial: Duration, max: Duration, attempt: u32, unit: f64) -> Duration {
    let step = initial
        .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .min(max);
    let half = step / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// Handed to a [`supervise`] session so it can say "connected".
pub struct SessionUp {
    health: Health,
    dependency: &'static str,
    up: Arc<AtomicBool>,
}

impl SessionUp {
    /// Marks the dependency up and resets the backoff for the next failure.
    pub fn up(&self) {
        self.health.set(self.dependency, true);
        self.up.store(true, Ordering::Relaxed);
    }
}

/// Runs `session` until `shutdown`: each call connects and works until it
/// returns `Ok` (it saw shutdown) or `Err` (the broker link failed). After a
/// failure `dependency` is marked down in `health` and the next call waits
/// out a jittered, growing backoff, which resets once a session reports up.
pub async fn supervise<F, Fut>(
    dependency: &'static str,
    health: Health,
    shutdown: CancellationToken,
    mut session: F,
) where
    F: FnMut(SessionUp) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Backoff::reconnect();
    while !shutdown.is_cancelled() {
        let up = Arc::new(AtomicBool::new(false));
        let result = session(SessionUp {
            health: health.clone(),
            dependency,
            up: up.clone(),
        })
        .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                health.set(dependency, false);
                tracing::warn!(
                    dependency,
                    error = format!("{e:#}"),
                    "broker session ended; reconnecting"
                );
            }
        }
        if up.load(Ordering::Relaxed) {
            backoff.reset();
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_up_to_the_cap() {
        let at = |attempt, unit| jittered_delay(100 * MS, 5000 * MS, attempt, unit);
        // With the random half at its maximum the delay is the full step.
        assert_eq!(at(0, 1.0), 100 * MS);
        assert_eq!(at(1, 1.0), 200 * MS);
        assert_eq!(at(5, 1.0), 3200 * MS);
        assert_eq!(at(6, 1.0), 5000 * MS);
        assert_eq!(at(u32::MAX, 1.0), 5000 * MS);
    }

    #[test]
    fn jitter_spans_the_upper_half_of_each_step() {
        assert_eq!(jittered_delay(100 * MS, 5000 * MS, 3, 0.0), 400 * MS);
        assert_eq!(jittered_delay(100 * MS, 5000 * MS, 3, 0.5), 600 * MS);
        // Out-of-range randomness cannot escape the bounds.
        assert_eq!(jittered_delay(100 * MS, 5000 * MS, 3, 7.0), 800 * MS);
        assert_eq!(jittered_delay(100 * MS, 5000 * MS, 3, -1.0), 400 * MS);
    }

    #[test]
    fn backoff_climbs_and_resets() {
        let mut b = Backoff::new(100 * MS, 5000 * MS);
        let first = b.next_delay();
        assert!((50 * MS..=100 * MS).contains(&first), "{first:?}");
        for _ in 0..10 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!((2500 * MS..=5000 * MS).contains(&late), "{late:?}");
        b.reset();
        assert!(b.next_delay() <= 100 * MS);
    }

    #[test]
    fn quorum_arguments_carry_the_delivery_limit_classic_ones_do_not() {
        let quorum = queue_arguments("x.dlx", true);
        assert!(quorum.inner().contains_key("x-delivery-limit"));
        assert!(quorum.inner().contains_key("x-dead-letter-exchange"));
        let classic = queue_arguments("x.dlx", false);
        assert!(!classic.inner().contains_key("x-delivery-limit"));
        assert!(!classic.inner().contains_key("x-queue-type"));
        assert!(classic.inner().contains_key("x-dead-letter-exchange"));
    }
}
