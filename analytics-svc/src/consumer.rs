//! Consumes clicks from RabbitMQ with manual acks and a prefetch window,
//! writes them in batches, and acknowledges only after the batch committed.
//!
//! - A message that cannot be decoded or stored (poison) is rejected without
//!   requeue: the queue dead-letters it to `<queue>.dlq`; it never blocks
//!   the queue.
//! - PostgreSQL down: the batch is kept (unacknowledged, so RabbitMQ holds
//!   it too) and retried with backoff until it commits; meanwhile new clicks
//!   wait in RabbitMQ (prefetch bounds what we hold). Deliberately not
//!   nack-with-requeue: on a quorum queue every requeue counts against
//!   `x-delivery-limit`, so a long database outage would dead-letter good
//!   clicks.
//! - RabbitMQ down: we reconnect with backoff; unacknowledged deliveries are
//!   redelivered and deduplicated by event id.
//! - Killed mid-batch: nothing was acknowledged, so everything is
//!   redelivered and the dedupe makes the counts exact.

use std::time::Duration;

use futures::StreamExt;
use lapin::{
    Channel, Consumer,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions},
    types::FieldTable,
};
use prost::Message;
use shortfleet_common::{
    amqp::{self, Backoff, SessionUp},
    ops::Health,
    telemetry, trace,
};
use shortfleet_proto::v1::ClickEvent;
use tokio_util::sync::CancellationToken;

use crate::store::{self, Click, WriteError};

pub struct ClickConsumer {
    pub pool: deadpool_postgres::Pool,
    pub amqp_url: String,
    pub exchange: String,
    pub queue: String,
    pub prefetch: u16,
    pub batch_max: usize,
    pub batch_max_wait: Duration,
    pub visitor_secret: String,
    /// Country lookups for clicks without a trusted country header.
    pub geoip: Option<std::sync::Arc<crate::geoip::GeoIp>>,
    /// Bounds each batch transaction; a timeout counts as "database down".
    pub db_timeout: Duration,
    pub health: Health,
}

/// A decoded delivery waiting for its batch to commit.
struct Pending {
    tag: u64,
    click: Click,
    /// Keeps the `clicks process` span open until the click is stored.
    _span: Option<tracing::Span>,
}

/// Bounds each broker round trip (connect, declare, qos, consume, ack).
const AMQP_TIMEOUT: Duration = Duration::from_secs(5);

impl ClickConsumer {
    pub async fn run(self, shutdown: CancellationToken) {
        let health = self.health.clone();
        let this = &self;
        amqp::supervise("rabbitmq", health, shutdown.clone(), |up| {
            let shutdown = shutdown.clone();
            async move { this.consume(up, &shutdown).await }
        })
        .await;
    }

    /// One broker session: consumes until shutdown (`Ok`) or a failure.
    async fn consume(&self, up: SessionUp, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let connection = amqp::connect(&self.amqp_url, AMQP_TIMEOUT).await?;
        amqp::declare_click_topology(&connection, &self.exchange, &self.queue, AMQP_TIMEOUT)
            .await?;
        let channel = amqp::open_channel(&connection, AMQP_TIMEOUT).await?;
        within(
            "setting the prefetch window",
            channel.basic_qos(self.prefetch, BasicQosOptions::default()),
        )
        .await?;
        let mut deliveries = within(
            "starting the consumer",
            channel.basic_consume(
                self.queue.as_str().into(),
                "analytics-svc".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        up.up();
        tracing::info!(queue = %self.queue, "consuming clicks");
        loop {
            let Some(batch) = self.next_batch(&mut deliveries, shutdown).await? else {
                return Ok(());
            };
            self.process(&channel, batch, shutdown).await?;
        }
    }

    /// Waits for one delivery, then gathers more for up to `batch_max_wait`.
    /// `None` on shutdown.
    async fn next_batch(
        &self,
        deliveries: &mut Consumer,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Vec<Delivery>>> {
        let first = tokio::select! {
            next = deliveries.next() => match next {
                Some(d) => d?,
                None => anyhow::bail!("the broker closed the consumer"),
            },
            () = shutdown.cancelled() => return Ok(None),
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + self.batch_max_wait;
        while batch.len() < self.batch_max {
            match tokio::time::timeout_at(deadline, deliveries.next()).await {
                Ok(Some(d)) => batch.push(d?),
                Ok(None) => anyhow::bail!("the broker closed the consumer"),
                Err(_) => break,
            }
        }
        Ok(Some(batch))
    }

    async fn process(
        &self,
        channel: &Channel,
        batch: Vec<Delivery>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut pending = Vec::with_capacity(batch.len());
        for delivery in batch {
            let decoded = ClickEvent::decode(delivery.data.as_slice())
                .ok()
                .and_then(|e| {
                    store::enrich(&e, &self.visitor_secret, self.geoip.as_deref()).map(|c| (e, c))
                });
            match decoded {
                Some((_, click)) => pending.push(Pending {
                    tag: delivery.delivery_tag,
                    _span: process_span(&delivery, &click),
                    click,
                }),
                None => {
                    reject(
                        channel,
                        delivery.delivery_tag,
                        "undecodable or invalid click",
                    )
                    .await?
                }
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        let clicks: Vec<Click> = pending.iter().map(|p| p.click.clone()).collect();
        let mut backoff = Backoff::reconnect();
        loop {
            match store::write_batch(&self.pool, &clicks, self.db_timeout).await {
                Ok(new) => {
                    self.health.set("postgres", true);
                    metrics::counter!("shortfleet_clicks_stored_total").increment(new as u64);
                    // Queue lag: how long after the redirect its click became
                    // countable (gateway buffer + click-logger + RabbitMQ + us).
                    let now = chrono::Utc::now();
                    for click in &clicks {
                        let lag = (now - click.occurred_at).to_std().unwrap_or_default();
                        metrics::histogram!("shortfleet_click_lag_seconds")
                            .record(lag.as_secs_f64());
                    }
                    metrics::counter!("shortfleet_clicks_duplicates_total")
                        .increment((clicks.len() - new) as u64);
                    break;
                }
                Err(WriteError::Refused(e)) => {
                    tracing::warn!(error = %e, "a batch was refused; storing its clicks one by one");
                    return self.store_one_by_one(channel, pending).await;
                }
                Err(WriteError::Unavailable(e)) => {
                    self.health.set("postgres", false);
                    tracing::warn!(
                        error = format!("{e:#}"),
                        clicks = clicks.len(),
                        "cannot store clicks yet; retrying"
                    );
                    if !backoff.wait(shutdown).await {
                        // Unacknowledged: RabbitMQ redelivers them to the
                        // next consumer.
                        return Ok(());
                    }
                }
            }
        }
        // Committed: now, and only now, the broker may forget them. Tags
        // grow within a channel and batches are processed in order, so one
        // cumulative ack covers exactly this batch (rejected poison tags
        // are no longer outstanding).
        let last = pending.iter().map(|p| p.tag).max().expect("not empty");
        within(
            "acknowledging a batch",
            channel.basic_ack(last, BasicAckOptions { multiple: true }),
        )
        .await?;
        Ok(())
    }

    async fn store_one_by_one(
        &self,
        channel: &Channel,
        pending: Vec<Pending>,
    ) -> anyhow::Result<()> {
        for p in pending {
            match store::write_batch(&self.pool, std::slice::from_ref(&p.click), self.db_timeout)
                .await
            {
                Ok(_) => {
                    within(
                        "acknowledging a click",
                        channel.basic_ack(p.tag, BasicAckOptions::default()),
                    )
                    .await?
                }
                Err(WriteError::Refused(_)) => {
                    reject(channel, p.tag, "click refused by the database").await?
                }
                Err(WriteError::Unavailable(e)) => {
                    return Err(e.context("storing clicks one by one"));
                }
            }
        }
        Ok(())
    }
}

async fn reject(channel: &Channel, tag: u64, why: &str) -> anyhow::Result<()> {
    tracing::warn!(delivery_tag = tag, why, "dead-lettering a click");
    metrics::counter!("shortfleet_clicks_dead_lettered_total").increment(1);
    within(
        "dead-lettering a click",
        channel.basic_reject(tag, BasicRejectOptions { requeue: false }),
    )
    .await
}

/// One broker round trip, bounded by [`AMQP_TIMEOUT`].
async fn within<T>(
    what: &'static str,
    call: impl std::future::Future<Output = lapin::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(AMQP_TIMEOUT, call)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no answer within {AMQP_TIMEOUT:?}"))?
        .map_err(|e| anyhow::Error::new(e).context(what))
}

/// A `clicks process` span continuing the click's trace, when spans leave
/// the process.
fn process_span(delivery: &Delivery, click: &Click) -> Option<tracing::Span> {
    if !telemetry::exporting_traces() {
        return None;
    }
    let span = tracing::info_span!(
        "clicks process",
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = "clicks",
        messaging.message.id = %click.event_id,
        link.code = %click.code,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    trace::continue_from_traceparent(&span, &amqp::traceparent_of(&delivery.properties));
    Some(span)
}
