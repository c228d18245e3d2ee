//! What exists on the broker, declared idempotently by whoever needs it
//! first (producers and consumers both declare, so start-up order never
//! matters). Every declaration is bounded in time.
//!
//! # Click topology
//! Durable direct exchange `<exchange>` → queue `<queue>` (routing key
//! [`CLICK_ROUTING_KEY`]), dead-lettering to the fanout exchange
//! `<exchange>.dlx` → `<queue>.dlq`. The queue is a quorum queue where the
//! broker supports it, with `x-delivery-limit` so a message that keeps
//! coming back (a consumer crashing on it) is dead-lettered instead of
//! blocking the queue; otherwise a classic durable queue with the same
//! dead-lettering and no delivery limit.
//!
//! # Private subscriptions
//! `links.events` (topic) and `clicks.counted` (fanout) are read by every
//! replica through an exclusive, auto-deleted queue of its own
//! ([`subscribe_private`]), because every replica must see every message.

use std::time::Duration;

use anyhow::Context;
use lapin::{
    Channel, Connection, Consumer, ExchangeKind,
    options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

use super::{bounded, open_channel};

/// The routing key clicks are published and bound with.
pub const CLICK_ROUTING_KEY: &str = "click";

/// The binding of a subscription to every `LinkEvent` on `links.events`.
pub const LINK_EVENTS_BINDING: &str = "link.#";

/// Deliveries of one message (quorum queues only) before it is
/// dead-lettered. High enough that a few consumer restarts never cost a
/// good message, low enough that a poison one stops cycling.
pub const DELIVERY_LIMIT: i64 = 20;

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

/// Declares the durable exchange `name` of `kind` (idempotent).
pub async fn declare_exchange(
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

/// Declares `exchange` (durable, of `kind`), an exclusive auto-deleted
/// queue of this connection's own with `arguments`, binds it with
/// `binding`, and starts consuming it as `consumer_tag` (`no_ack`: the
/// broker forgets a message once sent). The queue's name is
/// [`Consumer::queue`].
#[allow(clippy::too_many_arguments)] // reason: one call per subscription, each argument named at the call site
pub async fn subscribe_private(
    channel: &Channel,
    exchange: &str,
    kind: ExchangeKind,
    binding: &str,
    arguments: FieldTable,
    consumer_tag: &str,
    no_ack: bool,
    timeout: Duration,
) -> anyhow::Result<Consumer> {
    declare_exchange(channel, exchange, kind, timeout).await?;
    let queue = bounded(
        timeout,
        "declaring a private queue",
        channel.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            arguments,
        ),
    )
    .await?;
    bind(channel, queue.name().as_str(), exchange, binding, timeout).await?;
    bounded(
        timeout,
        "starting a consumer",
        channel.basic_consume(
            queue.name().clone(),
            consumer_tag.into(),
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

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
