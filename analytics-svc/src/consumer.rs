//! Consumes clicks from RabbitMQ with manual acks and a prefetch window,
//! writes them in batches, and acknowledges only after the batch committed.
//!
//! A message holds a `ClickBatch` (type [`amqp::CLICK_BATCH_TYPE`], what
//! click-logger publishes) or, untyped, a single `ClickEvent` (what earlier
//! releases published; accepted so a queue filled before an upgrade
//! drains). A database batch is made of whole messages.
//!
//! - A message that cannot be decoded or stored (poison) is rejected without
//!   requeue: the queue dead-letters it, every click in it, to
//!   `<queue>.dlq`; it never blocks the queue.
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
use prost::bytes::Bytes;
use shortfleet_common::{
    amqp::{self, Backoff, SessionUp},
    click_counts::CountsSender,
    ops::Health,
    telemetry, trace,
};
use shortfleet_proto::{
    raw::{self, RawClickBatch},
    v1::{ClickCounts, ClickEvent, CodeCount},
};
use tokio_util::sync::CancellationToken;

use crate::{
    enrich::{Click, Enricher},
    pace::Pacer,
    store::{self, WriteError},
};

pub struct ClickConsumer {
    pub pool: deadpool_postgres::Pool,
    pub amqp_url: String,
    pub exchange: String,
    pub queue: String,
    pub prefetch: u16,
    pub batch_max: usize,
    pub batch_max_wait: Duration,
    pub batch_quiet: Duration,
    pub visitor_secret: String,
    /// Country lookups for clicks without a trusted country header.
    pub geoip: Option<std::sync::Arc<crate::geoip::GeoIp>>,
    /// Bounds each batch transaction; a timeout counts as "database down".
    pub db_timeout: Duration,
    pub health: Health,
    /// Where the new clicks of each stored batch are announced (live
    /// dashboards); best effort, never waited on.
    pub counts: CountsSender,
    /// Told when a stored batch was small or closed because the flow
    /// paused, so its rollups are folded at once rather than at the next
    /// interval ([`FOLD_AT_ONCE_BELOW`]).
    pub fold: crate::fold::FoldNudge,
}

/// A delivery and the clicks in it, each left encoded until its slice is
/// taken ([`shortfleet_proto::raw`]); `events` is `None` for a body that
/// does not decode (poison).
struct Received {
    tag: u64,
    events: Option<Vec<Bytes>>,
}

impl Received {
    /// Each click's `traceparent` is the context it continues: in a batch,
    /// click-logger's publish span for that click; for a single-click
    /// message, the message's header (where earlier releases put it).
    fn decode(delivery: Delivery) -> Self {
        let events = if amqp::kind_of(&delivery.properties) == amqp::CLICK_BATCH_TYPE {
            RawClickBatch::decode(Bytes::from(delivery.data))
                .ok()
                .map(|b| b.events)
        } else {
            ClickEvent::decode(delivery.data.as_slice())
                .ok()
                .map(|mut e| {
                    let header = amqp::traceparent_of(&delivery.properties);
                    if !header.is_empty() {
                        e.traceparent = header;
                    }
                    vec![Bytes::from(e.encode_to_vec())]
                })
        };
        Self {
            tag: delivery.delivery_tag,
            events,
        }
    }

    /// How many clicks it adds to a batch (a poison message counts one).
    fn weight(&self) -> usize {
        self.events.as_ref().map_or(1, |e| e.len().max(1))
    }
}

/// Clicks waiting for their batch to commit, in delivery order.
#[derive(Default)]
struct Pending {
    clicks: Vec<Click>,
    /// The delivery each click came in (shared by every click of a message).
    tags: Vec<u64>,
    /// Keep each click's `clicks process` span open until it is stored.
    _spans: Vec<Option<tracing::Span>>,
}

impl Pending {
    /// Forgets every click from the `len`th on.
    fn truncate(&mut self, len: usize) {
        self.clicks.truncate(len);
        self.tags.truncate(len);
        self._spans.truncate(len);
    }

    /// Frees a stored batch's clicks a piece at a time ([`crate::pace`]):
    /// a second's clicks are a hundred thousand allocations, milliseconds
    /// of `free` in one go.
    async fn release(mut self) {
        let mut pacer = Pacer::new();
        while !self.clicks.is_empty() {
            let keep = self.clicks.len().saturating_sub(RELEASE_PIECE);
            pacer.step(|| self.truncate(keep)).await;
        }
    }
}

/// Clicks freed between pauses when a batch is done with.
const RELEASE_PIECE: usize = 4_096;

/// A batch being gathered: its clicks so far and the transaction they are
/// copied into as they arrive.
struct Gathering<'a> {
    pending: Pending,
    enricher: Enricher<'a>,
    /// The exchange the clicks came through, for their spans.
    exchange: &'a str,
    /// `None` if it could not be opened or failed since: the batch is then
    /// written when it closes.
    stream: Option<store::CopyStream>,
    /// Messages received, poison included.
    messages: usize,
    /// Clicks received, a poison message counting one.
    weight: usize,
    /// Closed because no message came for `batch_quiet`, not because it
    /// was full or had waited `batch_max_wait`.
    flow_paused: bool,
    /// Spaces the slices of each message ([`Gathering::take`]).
    pacer: Pacer,
    /// Each click is decoded into this one in turn.
    event: ClickEvent,
}

impl Gathering<'_> {
    /// One delivery: its clicks enriched and copied into the stream, or,
    /// if any of them cannot be stored, the message dead-lettered (every
    /// click of a message is stored, or the message is poison). A message
    /// is taken in slices of [`PACED_SLICE`] clicks, each after a pause as
    /// long as the slice before took ([`crate::pace`]), unless its clicks
    /// are late: then catching up comes first.
    async fn take(&mut self, channel: &Channel, received: Received) -> anyhow::Result<()> {
        let (tag, weight) = (received.tag, received.weight());
        self.messages += 1;
        self.weight += weight;
        let events = match received.events {
            Some(events) if !events.is_empty() => events,
            Some(_) => return reject(channel, tag, 0, "an empty click batch").await,
            None => return reject(channel, tag, weight, "undecodable or invalid click").await,
        };
        let paced = is_on_time(&events, chrono::Utc::now());
        if !paced {
            self.pacer.forgive();
        }
        let first = self.pending.clicks.len();
        for slice in events.chunks(PACED_SLICE) {
            if paced {
                self.pacer.pause().await;
            }
            let started = tokio::time::Instant::now();
            if !self.take_slice(slice, tag).await {
                // Earlier slices of this message are in the stream: it is
                // abandoned, and the batch (without this message) is
                // written when it closes.
                if self.pending.clicks.len() > first {
                    self.pending.truncate(first);
                    self.stream = None;
                }
                return reject(channel, tag, weight, "undecodable or invalid click").await;
            }
            self.pacer.took(started.elapsed());
        }
        Ok(())
    }

    /// One slice of a message, tagged `tag`: decoded, enriched, then kept
    /// pending and copied into the stream. `false`, with nothing kept, if
    /// one of its clicks does not decode or can never be stored.
    async fn take_slice(&mut self, slice: &[Bytes], tag: u64) -> bool {
        let mut clicks = Vec::with_capacity(slice.len());
        for bytes in slice {
            if raw::decode_click_into(bytes, &mut self.event).is_err() {
                return false;
            }
            let Some(click) = self.enricher.enrich(&self.event) else {
                return false;
            };
            let span = process_span(self.exchange, &self.event.traceparent, &click);
            clicks.push((click, span));
        }
        let first = self.pending.clicks.len();
        for (click, span) in clicks {
            self.pending._spans.push(span);
            self.pending.tags.push(tag);
            self.pending.clicks.push(click);
        }
        if let Some(stream) = &mut self.stream
            && let Err(e) = stream.write(&self.pending.clicks[first..]).await
        {
            tracing::debug!(
                error = format!("{e:#}"),
                "the click COPY broke; the batch is written when it closes"
            );
            self.stream = None;
        }
        true
    }
}

/// Clicks per paced slice of a message: about 0.4 ms of analytics-svc's
/// CPU and as much of PostgreSQL's, and about 56 KiB of COPY rows, handed
/// over at once. Slices of 128 cost analytics-svc about a tenth more CPU
/// per click (more hand-overs and timers) and did not lower the p99.
const PACED_SLICE: usize = 256;

/// A message whose newest click is older than this is late (the consumer
/// is behind, or catching up after a stop): its slices are not paced.
const PACED_WITHIN: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// Whether the newest click of `events` (the last; clicks are batched in
/// the order of their redirects) happened within [`PACED_WITHIN`] of
/// `now`. A click that does not decode or has no time is poison, found
/// when it is enriched.
fn is_on_time(events: &[Bytes], now: chrono::DateTime<chrono::Utc>) -> bool {
    events
        .last()
        .and_then(|bytes| ClickEvent::decode(bytes.as_ref()).ok())
        .and_then(|e| e.occurred_at)
        .and_then(|at| shortfleet_common::time::from_proto(&at))
        .is_none_or(|at| now - at <= PACED_WITHIN)
}

/// A batch of fewer clicks is folded into the rollups at once, as is one
/// that closed because messages paused: the flow is light, a fold costs
/// little, and stats stay as fresh as a batch (a steady trickle of clicks
/// never pauses long enough to close a batch early, and would otherwise
/// wait for the fold interval). Larger batches, under load, are folded
/// together every `SHORTFLEET_ROLLUP_FOLD_MS` ([`crate::fold`]).
const FOLD_AT_ONCE_BELOW: usize = 5_000;

/// Bounds each broker round trip (connect, declare, qos, consume, ack).
const AMQP_TIMEOUT: Duration = Duration::from_secs(5);

impl ClickConsumer {
    pub async fn run(self, shutdown: CancellationToken) {
        let health = self.health.clone();
        let this = &self;
        amqp::supervise(
            "rabbitmq",
            "click consumer",
            Some(health),
            shutdown.clone(),
            |up| {
                let shutdown = shutdown.clone();
                async move { this.consume(up, &shutdown).await }
            },
        )
        .await;
    }

    /// One broker session: consumes until shutdown (`Ok`) or a failure.
    async fn consume(&self, up: SessionUp, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let connection = amqp::connect(&self.amqp_url, AMQP_TIMEOUT).await?;
        amqp::declare_click_topology(&connection, &self.exchange, &self.queue, AMQP_TIMEOUT)
            .await?;
        let channel = amqp::open_channel(&connection, AMQP_TIMEOUT).await?;
        amqp::bounded(
            AMQP_TIMEOUT,
            "setting the prefetch window",
            channel.basic_qos(self.prefetch, BasicQosOptions::default()),
        )
        .await?;
        let mut deliveries = amqp::bounded(
            AMQP_TIMEOUT,
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
            let Some(batch) = self.gather(&channel, &mut deliveries, shutdown).await? else {
                return Ok(());
            };
            self.store(&channel, batch, shutdown).await?;
        }
    }

    /// Waits for one delivery, then gathers more until `batch_max` clicks,
    /// `batch_max_wait`, `batch_quiet` without a delivery (the flow has
    /// paused: what is in hand should not wait for the next burst), or the
    /// whole prefetch window is in hand (the broker sends nothing more
    /// before an ack, so waiting longer would only delay the batch). Whole
    /// messages only, so a batch may pass `batch_max` by one message's
    /// clicks. Each message is enriched and copied into the batch's open
    /// transaction as it arrives ([`store::CopyStream`]), so the batch's
    /// work is spread over its gathering. `None` on shutdown.
    async fn gather(
        &self,
        channel: &Channel,
        deliveries: &mut Consumer,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Gathering<'_>>> {
        let first = tokio::select! {
            next = deliveries.next() => match next {
                Some(d) => Received::decode(d?),
                None => anyhow::bail!("the broker closed the consumer"),
            },
            () = shutdown.cancelled() => return Ok(None),
        };
        let deadline = tokio::time::Instant::now() + self.batch_max_wait;
        // PostgreSQL down or slow: no stream; `store` writes the batch when
        // it closes, retrying as it always did.
        let stream = match store::CopyStream::open(&self.pool, self.db_timeout).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::debug!(error = format!("{e:#}"), "no click COPY for this batch");
                None
            }
        };
        let mut batch = Gathering {
            pending: Pending::default(),
            enricher: Enricher::new(
                chrono::Utc::now(),
                &self.visitor_secret,
                self.geoip.as_deref(),
            ),
            exchange: &self.exchange,
            stream,
            messages: 0,
            weight: 0,
            flow_paused: false,
            pacer: Pacer::new(),
            event: ClickEvent::default(),
        };
        batch.take(channel, first).await?;
        while batch.weight < self.batch_max && batch.messages < usize::from(self.prefetch) {
            let quiet_until = tokio::time::Instant::now() + self.batch_quiet;
            match tokio::time::timeout_at(deadline.min(quiet_until), deliveries.next()).await {
                Ok(Some(d)) => batch.take(channel, Received::decode(d?)).await?,
                Ok(None) => anyhow::bail!("the broker closed the consumer"),
                Err(_) => {
                    batch.flow_paused = quiet_until < deadline;
                    break;
                }
            }
        }
        Ok(Some(batch))
    }

    /// Commits a gathered batch (its own transaction, or, if that did not
    /// commit, the whole batch again by [`store::write_batch`]), then
    /// acknowledges it.
    async fn store(
        &self,
        channel: &Channel,
        batch: Gathering<'_>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let Gathering {
            pending,
            stream,
            flow_paused,
            ..
        } = batch;
        let fold_at_once = flow_paused || pending.clicks.len() < FOLD_AT_ONCE_BELOW;
        if pending.clicks.is_empty() {
            return Ok(());
        }
        let clicks = &pending.clicks;
        let mut streamed = match stream {
            Some(stream) => match stream.commit(clicks).await {
                Ok(stored) => Some(stored),
                Err(e) => {
                    tracing::debug!(
                        error = format!("{e:#}"),
                        "the streamed batch did not commit; storing it again"
                    );
                    None
                }
            },
            None => None,
        };
        let mut backoff = Backoff::reconnect();
        loop {
            let written = match streamed.take() {
                Some(stored) => Ok(stored),
                None => store::write_batch(&self.pool, clicks, self.db_timeout).await,
            };
            match written {
                Ok(stored) => {
                    let new = stored.new;
                    self.announce(stored);
                    self.health.set("postgres", true);
                    metrics::counter!("shortfleet_clicks_stored_total").increment(new as u64);
                    // Queue lag: how long after the redirect its click became
                    // countable (gateway buffer + click-logger + RabbitMQ + us).
                    let now = chrono::Utc::now();
                    let lags = metrics::histogram!("shortfleet_click_lag_seconds");
                    for click in clicks {
                        let lag = (now - click.occurred_at).to_std().unwrap_or_default();
                        lags.record(lag.as_secs_f64());
                    }
                    metrics::counter!("shortfleet_clicks_duplicates_total")
                        .increment((clicks.len() - new) as u64);
                    break;
                }
                Err(WriteError::Refused(e)) => {
                    tracing::warn!(error = %e, "a batch was refused; storing its clicks one by one");
                    let stored = self.store_one_by_one(channel, pending).await;
                    if fold_at_once {
                        self.fold.fold_now();
                    }
                    return stored;
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
        let Some(&last) = pending.tags.iter().max() else {
            return Ok(());
        };
        amqp::bounded(
            AMQP_TIMEOUT,
            "acknowledging a batch",
            channel.basic_ack(last, BasicAckOptions { multiple: true }),
        )
        .await?;
        if fold_at_once {
            self.fold.fold_now();
        }
        pending.release().await;
        Ok(())
    }

    /// After the database refused a batch: each message on its own, so
    /// one bad message is dead-lettered and the others are stored.
    async fn store_one_by_one(&self, channel: &Channel, pending: Pending) -> anyhow::Result<()> {
        let mut start = 0;
        for message in pending.tags.chunk_by(|a, b| a == b) {
            let tag = message[0];
            let clicks = &pending.clicks[start..start + message.len()];
            start += message.len();
            match store::write_batch(&self.pool, clicks, self.db_timeout).await {
                Ok(stored) => {
                    self.announce(stored);
                    amqp::bounded(
                        AMQP_TIMEOUT,
                        "acknowledging a message",
                        channel.basic_ack(tag, BasicAckOptions::default()),
                    )
                    .await?
                }
                Err(WriteError::Refused(_)) => {
                    reject(channel, tag, clicks.len(), "clicks refused by the database").await?
                }
                Err(WriteError::Unavailable(e)) => {
                    return Err(e.context("storing clicks one message at a time"));
                }
            }
        }
        Ok(())
    }
}

impl ClickConsumer {
    /// Hands a committed batch's new human clicks to the live publisher:
    /// a `try_send`, so storage never waits on it.
    fn announce(&self, stored: store::Stored) {
        self.counts.offer(ClickCounts {
            event_id: uuid::Uuid::now_v7().to_string(),
            occurred_at: Some(shortfleet_common::time::to_proto(chrono::Utc::now())),
            counts: stored
                .counted
                .into_iter()
                .map(|((owner, code), clicks)| CodeCount {
                    owner,
                    code,
                    clicks,
                })
                .collect(),
        });
    }
}

/// Dead-letters one message holding `clicks` clicks.
async fn reject(channel: &Channel, tag: u64, clicks: usize, why: &str) -> anyhow::Result<()> {
    tracing::warn!(delivery_tag = tag, clicks, why, "dead-lettering a message");
    metrics::counter!("shortfleet_clicks_dead_lettered_total").increment(clicks as u64);
    amqp::bounded(
        AMQP_TIMEOUT,
        "dead-lettering a message",
        channel.basic_reject(tag, BasicRejectOptions { requeue: false }),
    )
    .await
}

/// A `clicks process` span continuing the click's trace, when spans leave
/// the process.
fn process_span(destination: &str, traceparent: &str, click: &Click) -> Option<tracing::Span> {
    if !telemetry::exporting_traces() {
        return None;
    }
    let span = trace::messaging_span(
        amqp::CLICKS_EXCHANGE,
        destination,
        trace::Messaging::Process,
        &click.event_id,
        traceparent,
    );
    span.record("link.code", tracing::field::display(&click.code));
    Some(span)
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_clicks_stored_total",
        metrics::Unit::Count,
        "Clicks stored for the first time (duplicates excluded)."
    );
    metrics::describe_histogram!(
        "shortfleet_click_lag_seconds",
        metrics::Unit::Seconds,
        "Time from the redirect to its click being stored."
    );
    metrics::describe_counter!(
        "shortfleet_clicks_duplicates_total",
        metrics::Unit::Count,
        "Redelivered clicks recognised by event id and not counted again."
    );
    metrics::describe_counter!(
        "shortfleet_clicks_dead_lettered_total",
        metrics::Unit::Count,
        "Clicks dead-lettered as undecodable or unstorable."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: chrono::DateTime<chrono::Utc>) -> Bytes {
        let event = ClickEvent {
            occurred_at: Some(shortfleet_common::time::to_proto(t)),
            ..Default::default()
        };
        Bytes::from(event.encode_to_vec())
    }

    #[test]
    fn a_message_is_on_time_by_its_newest_click() {
        let now = chrono::Utc::now();
        let late = now - PACED_WITHIN - chrono::TimeDelta::milliseconds(1);
        assert!(is_on_time(&[at(late), at(now)], now));
        assert!(
            !is_on_time(&[at(now), at(late)], now),
            "the last is the newest"
        );
        assert!(is_on_time(&[at(now - PACED_WITHIN)], now));
        // No time: poison, refused when enriched; no reason to hurry it.
        assert!(is_on_time(&[Bytes::new()], now));
        assert!(is_on_time(&[Bytes::from_static(&[0xff])], now));
    }
}
