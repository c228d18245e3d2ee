//! Subscribes one replica to the `links.events` exchange: an exclusive,
//! auto-deleted queue per replica bound to `link.#`, because every replica
//! must see every event to keep its own in-process cache fresh. read-svc and
//! the gateway both use it.
//!
//! RabbitMQ down: the subscriber reconnects through [`amqp::supervise`]
//! (jittered backoff, at most a second apart) and reports the
//! "rabbitmq" dependency down; the caller's caches fall back on their TTLs.
//! After every (re)subscription the caller is told, since events published
//! during a gap never reach this replica's queue.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use futures::StreamExt;
use lapin::{
    ExchangeKind,
    options::{BasicAckOptions, BasicQosOptions},
    types::FieldTable,
};
use prost::Message;
use shortfleet_proto::v1::LinkEvent;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    amqp::{self, SessionUp},
    ops::Health,
};

/// Bounds every broker round trip (connect, declare, consume, ack).
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

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

impl Handlers {
    /// These handlers, then `next`'s, on every call: two caches of one
    /// replica fed by one subscription.
    pub fn then(self, next: Handlers) -> Handlers {
        let (event_first, event_next) = (self.on_event, next.on_event);
        let (subscribed_first, subscribed_next) = (self.on_subscribed, next.on_subscribed);
        let (lost_first, lost_next) = (self.on_lost, next.on_lost);
        Handlers {
            on_event: Arc::new(move |event: LinkEvent| {
                let (first, next) = (event_first(event.clone()), event_next.clone());
                Box::pin(async move {
                    first.await;
                    next(event).await;
                })
            }),
            on_subscribed: Arc::new(move || {
                let (first, next) = (subscribed_first(), subscribed_next.clone());
                Box::pin(async move {
                    first.await;
                    next().await;
                })
            }),
            on_lost: Arc::new(move || {
                lost_first();
                lost_next();
            }),
        }
    }
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
        let this = &self;
        amqp::supervise(
            "rabbitmq",
            "link event subscription",
            Some(self.health.clone()),
            shutdown.clone(),
            |up| {
                let shutdown = shutdown.clone();
                async move {
                    let result = this.consume(up, &shutdown).await;
                    if result.is_err() {
                        (this.handlers.on_lost)();
                    }
                    result
                }
            },
        )
        .await;
    }

    /// Consumes until shutdown (`Ok`) or a broker failure (`Err`).
    async fn consume(&self, up: SessionUp, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let connection = amqp::connect(&self.amqp_url, BROKER_TIMEOUT).await?;
        let channel = amqp::open_channel(&connection, BROKER_TIMEOUT).await?;
        amqp::bounded(
            BROKER_TIMEOUT,
            "setting the prefetch window",
            channel.basic_qos(256, BasicQosOptions::default()),
        )
        .await?;
        let mut deliveries = amqp::subscribe_private(
            &channel,
            &self.exchange,
            ExchangeKind::Topic,
            amqp::LINK_EVENTS_BINDING,
            FieldTable::default(),
            self.consumer_tag,
            false,
            BROKER_TIMEOUT,
        )
        .await?;
        // The caches go live first: once readiness says the subscription is
        // up, an answer cached from then on is one the events can correct
        // (reported the other way round, the first redirects after ready
        // were cached and then forgotten by `on_subscribed`).
        (self.handlers.on_subscribed)().await;
        up.up();
        self.subscribed.notify_one();
        tracing::info!(queue = %deliveries.queue(), "consuming link events");
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
            amqp::bounded(
                BROKER_TIMEOUT,
                "acknowledging a link event",
                delivery.ack(BasicAckOptions::default()),
            )
            .await?;
        }
    }
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_link_events_total",
        metrics::Unit::Count,
        "Link events received from the links.events exchange."
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use shortfleet_proto::v1::Link;

    use super::*;

    /// Handlers that write `name: what` to `log` on every call.
    fn logging(name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> Handlers {
        let (on_event, on_subscribed, on_lost) = (log.clone(), log.clone(), log.clone());
        Handlers {
            on_event: Arc::new(move |event: LinkEvent| {
                let log = on_event.clone();
                Box::pin(async move {
                    let code = event.link.map(|l| l.code).unwrap_or_default();
                    log.lock().unwrap().push(format!("{name}: event {code}"));
                })
            }),
            on_subscribed: Arc::new(move || {
                let log = on_subscribed.clone();
                Box::pin(async move { log.lock().unwrap().push(format!("{name}: subscribed")) })
            }),
            on_lost: Arc::new(move || on_lost.lock().unwrap().push(format!("{name}: lost"))),
        }
    }

    #[tokio::test]
    async fn chained_handlers_each_see_every_call_in_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let both = logging("a", &log).then(logging("b", &log));
        (both.on_subscribed)().await;
        let event = LinkEvent {
            link: Some(Link {
                code: "abc".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        (both.on_event)(event).await;
        (both.on_lost)();
        assert_eq!(
            *log.lock().unwrap(),
            [
                "a: subscribed",
                "b: subscribed",
                "a: event abc",
                "b: event abc",
                "a: lost",
                "b: lost"
            ]
        );
    }
}
