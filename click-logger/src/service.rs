//! The `ClickLogger` gRPC service: a batch is acknowledged only once every
//! click in it is confirmed by RabbitMQ or fsync'd to the spool.
//!
//! Every click of a batch must be storable ([`shortfleet_common::click`],
//! the rule analytics-svc applies too) before any of it is published: one
//! bad click refuses the whole batch, INVALID_ARGUMENT naming its index and
//! field, or only its index if its bytes are no `ClickEvent` at all (on a
//! stream: an ack with `invalid` set, and the stream goes on).
//! Whole-batch refusal keeps an ack meaning "all of these, durably", and a
//! sender that fits its clicks to the rule (the gateway does) never sees it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::bytes::Bytes;
use shortfleet_common::{
    click,
    input::{self, InputError},
};
use shortfleet_proto::{
    raw::{self, RawClickBatch},
    v1::{ClickAck, ClickBatch, ClickEvent, click_logger_server::ClickLogger},
};
use tonic::{Request, Response, Status};

use crate::{
    publisher::Publisher,
    spool::{Spool, SpoolError},
};

/// Bounds one request's memory and its time holding the spool lock.
pub const MAX_BATCH: usize = 10_000;

/// Why a batch was not accepted; the one mapping to gRPC codes is below.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("events: at most {MAX_BATCH} clicks per batch, got {0}")]
    TooLarge(usize),
    /// The click at `index` is not storable.
    #[error("events[{index}].{}", .source)]
    Invalid {
        index: usize,
        #[source]
        source: InputError,
    },
    /// The bytes at `index` are not a `ClickEvent` at all; `reason` is
    /// prost's (which field, and why).
    #[error("events[{index}]: {MALFORMED} ({reason})")]
    Malformed { index: usize, reason: String },
    #[error("RabbitMQ is unavailable and the spool is full")]
    SpoolFull(u64),
    #[error("RabbitMQ is unavailable and the spool cannot be written")]
    SpoolIo(#[source] std::io::Error),
}

impl From<IngestError> for Status {
    fn from(err: IngestError) -> Self {
        match &err {
            IngestError::TooLarge(_) => input::invalid_argument("events", err),
            IngestError::Invalid { index, source } => {
                input::invalid_argument(&format!("events[{index}].{}", source.field), &source.rule)
            }
            IngestError::Malformed { index, reason } => input::invalid_argument(
                &format!("events[{index}]"),
                format_args!("{MALFORMED} ({reason})"),
            ),
            IngestError::SpoolFull(bytes) => {
                tracing::warn!(spool_bytes = bytes, "refusing clicks: spool full");
                Status::unavailable(err.to_string())
            }
            IngestError::SpoolIo(cause) => {
                tracing::error!(error = %cause, "spool write failed");
                Status::unavailable(err.to_string())
            }
        }
    }
}

impl IngestError {
    /// The batch itself is at fault: sending it again cannot help.
    pub fn is_invalid(&self) -> bool {
        matches!(
            self,
            Self::TooLarge(_) | Self::Invalid { .. } | Self::Malformed { .. }
        )
    }
}

const MALFORMED: &str = "is not a valid ClickEvent message";

/// Checks a batch before anything is published or spooled, so a click
/// analytics could not store never reaches the queue, where it would
/// dead-letter the whole message it shares with other clicks. Each click is
/// decoded into one `ClickEvent` reused for the whole batch: its strings
/// keep their buffers from click to click.
///
/// A click is published and spooled as the bytes it came in, so those
/// bytes must hold no more than its fields: a decoder skips unknown fields
/// and keeps only the last of a repeated one, and either could carry
/// megabytes past every bound the checks apply. Bytes longer or shorter
/// than the click's own encoding are replaced by it (the gateway encodes
/// with prost, so its clicks never are).
pub fn validate(events: &mut [Bytes], now: DateTime<Utc>) -> Result<(), IngestError> {
    if events.len() > MAX_BATCH {
        return Err(IngestError::TooLarge(events.len()));
    }
    let acceptance = click::Acceptance::at(now);
    let mut event = ClickEvent::default();
    for (index, bytes) in events.iter_mut().enumerate() {
        raw::decode_click_into(bytes, &mut event).map_err(|e| IngestError::Malformed {
            index,
            reason: e.to_string(),
        })?;
        acceptance
            .check(&event)
            .map_err(|source| IngestError::Invalid { index, source })?;
        if prost::Message::encoded_len(&event) != bytes.len() {
            *bytes = Bytes::from(prost::Message::encode_to_vec(&event));
        }
    }
    Ok(())
}

#[derive(Clone)]
pub struct ClickLoggerService {
    pub publisher: Arc<Publisher>,
    pub spool: Arc<Spool>,
    /// Cancelled on shutdown: open streams finish the batch in hand and end,
    /// so gateways move to another replica instead of holding us open.
    pub draining: tokio_util::sync::CancellationToken,
}

impl ClickLoggerService {
    /// Takes one batch, each click its `ClickEvent` bytes ([`crate::wire`]).
    async fn ingest(&self, mut events: Vec<Bytes>) -> Result<u32, IngestError> {
        validate(&mut events, Utc::now())?;
        if events.is_empty() {
            return Ok(0);
        }
        // Bounded by MAX_BATCH above.
        let accepted = events.len() as u32;
        // While older clicks wait in the spool, new ones queue behind them
        // so the broker sees clicks in order.
        if self.spool.bytes().await == 0 && self.publisher.channel().await.is_some() {
            match self.publisher.publish(&events).await {
                Ok(()) => return Ok(accepted),
                // Some clicks of the batch may have been confirmed already;
                // spooling all of them re-publishes those, and analytics
                // dedupes by event id.
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    clicks = events.len(),
                    "publish failed; spooling"
                ),
            }
        }
        match self.spool.append(&events).await {
            Ok(()) => Ok(accepted),
            Err(SpoolError::Full(bytes)) => {
                metrics::counter!("shortfleet_clicks_refused_total").increment(events.len() as u64);
                Err(IngestError::SpoolFull(bytes))
            }
            Err(SpoolError::Io(e)) => Err(IngestError::SpoolIo(e)),
        }
    }
}

/// The ack of one streamed batch: success, or why not (and whether a retry
/// could help).
fn stream_ack(sequence: u64, result: Result<u32, IngestError>) -> ClickAck {
    match result {
        Ok(accepted) => ClickAck {
            accepted,
            sequence,
            ..Default::default()
        },
        Err(e) => ClickAck {
            accepted: 0,
            sequence,
            invalid: e.is_invalid(),
            error: e.to_string(),
        },
    }
}

pub type AckStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<ClickAck, Status>> + Send>>;

impl ClickLoggerService {
    /// Takes streamed batches one at a time, in order; each is acknowledged
    /// once it is confirmed or spooled. A client that goes away mid-batch
    /// gets no ack and sends that batch again on its next stream (analytics
    /// dedupes).
    pub fn acknowledge<S>(&self, batches: S) -> AckStream
    where
        S: Stream<Item = Result<RawClickBatch, Status>> + Send + 'static,
    {
        let (acks, out) = tokio::sync::mpsc::channel(16);
        let service = self.clone();
        tokio::spawn(async move {
            let mut batches = std::pin::pin!(batches);
            loop {
                let batch = tokio::select! {
                    next = batches.next() => match next {
                        Some(Ok(batch)) => batch,
                        None => break,
                        // A batch whose own framing does not decode
                        // (INVALID_ARGUMENT; a click that does not is
                        // refused in its ack) or a broken stream: end the
                        // call with that status, so the caller learns why
                        // (a send to a caller that has gone fails, which is
                        // fine).
                        Some(Err(status)) => {
                            let _ = acks.send(Err(status)).await;
                            break;
                        }
                    },
                    () = service.draining.cancelled() => break,
                };
                let ack = stream_ack(batch.sequence, service.ingest(batch.events).await);
                if acks.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
    }
}

/// The generated interface. The server click-logger runs takes
/// `StreamClicks` raw ([`crate::wire::ClickLoggerRoutes`]); this one is
/// what a server built from the generated code alone would use.
#[tonic::async_trait]
impl ClickLogger for ClickLoggerService {
    async fn log_clicks(&self, request: Request<ClickBatch>) -> Result<Response<ClickAck>, Status> {
        let batch = RawClickBatch::from(request.into_inner());
        let accepted = self.ingest(batch.events).await?;
        Ok(Response::new(ClickAck {
            accepted,
            ..Default::default()
        }))
    }

    type StreamClicksStream = AckStream;

    async fn stream_clicks(
        &self,
        request: Request<tonic::Streaming<ClickBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        let batches = request.into_inner().map_ok(RawClickBatch::from);
        Ok(Response::new(self.acknowledge(batches)))
    }
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_clicks_refused_total",
        metrics::Unit::Count,
        "Clicks refused because RabbitMQ was away and the spool was full."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    use shortfleet_common::time::to_proto;

    fn event(id: &str, code: &str) -> ClickEvent {
        ClickEvent {
            event_id: id.into(),
            code: code.into(),
            occurred_at: Some(to_proto(Utc::now())),
            ..Default::default()
        }
    }

    fn check(events: &[ClickEvent], now: DateTime<Utc>) -> Result<(), IngestError> {
        validate(&mut raw::encode_clicks(events), now)
    }

    /// The index and field of a refused batch.
    fn refused(events: &[ClickEvent]) -> (usize, &'static str) {
        match check(events, Utc::now()) {
            Err(IngestError::Invalid { index, source }) => (index, source.field),
            other => panic!("expected an invalid click, got {other:?}"),
        }
    }

    #[test]
    fn a_batch_needs_storable_clicks_and_a_bounded_size() {
        let now = Utc::now();
        assert!(check(&[], now).is_ok());
        assert!(check(&[event("a", "abc")], now).is_ok());
        assert_eq!(
            refused(&[event("a", "abc"), event("", "abc")]),
            (1, "event_id")
        );
        assert_eq!(refused(&[event("a", "")]), (0, "code"));
        // One `ClickEvent` is reused from click to click: nothing of the
        // previous click may stay behind.
        assert_eq!(refused(&[event("a", "abc"), event("b", "")]), (1, "code"));
        let mut no_time = event("a", "abc");
        no_time.occurred_at = None;
        let mut bad_time = event("b", "abc");
        bad_time.occurred_at = Some(prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        });
        for bad in [no_time, bad_time] {
            assert_eq!(refused(&[event("x", "abc"), bad]), (1, "occurred_at"));
        }
        let big = vec![event("a", "abc"); MAX_BATCH + 1];
        assert!(matches!(check(&big, now), Err(IngestError::TooLarge(_))));
        assert_eq!(
            Status::from(IngestError::SpoolFull(1)).code(),
            tonic::Code::Unavailable
        );
    }

    /// Which clicks are storable is `shortfleet_common::click`'s rule (its
    /// tests try every field); here, how a refusal reaches the caller.
    #[test]
    fn a_refused_click_is_invalid_argument_naming_index_and_field() {
        // An id longer than AMQP's 255-byte short string once panicked the
        // publisher; it is refused before it gets there.
        let mut bad = event("b", "abc");
        bad.event_id = "e".repeat(256);
        let err = check(&[event("a", "abc"), bad], Utc::now()).unwrap_err();
        assert!(err.to_string().starts_with("events[1].event_id: "), "{err}");
        let status = Status::from(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.metadata().get(input::FIELD_METADATA).unwrap(),
            "events[1].event_id"
        );
        assert!(status.message().len() < 100, "{}", status.message());
    }

    #[test]
    fn bytes_that_are_no_click_are_refused_by_index_and_reason() {
        let mut events = raw::encode_clicks(&[event("a", "abc")]);
        // Field 3 (owner), length 1, a byte that is not UTF-8.
        events.push(Bytes::from_static(&[0x1a, 0x01, 0xff]));
        let err = validate(&mut events, Utc::now()).unwrap_err();
        let IngestError::Malformed { index: 1, reason } = &err else {
            panic!("expected click 1 refused as malformed, got {err:?}");
        };
        assert!(reason.contains("UTF-8"), "{reason}");
        assert!(err.is_invalid());
        let ack = stream_ack(9, Err(err));
        assert!(ack.invalid, "{ack:?}");
        assert!(ack.error.starts_with("events[1]: "), "{}", ack.error);
        let status = Status::from(IngestError::Malformed {
            index: 1,
            reason: "why".into(),
        });
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), format!("events[1]: {MALFORMED} (why)"));
        assert_eq!(
            status.metadata().get(input::FIELD_METADATA).unwrap(),
            "events[1]"
        );
    }

    /// What is published is no more than the click: an unknown field, or
    /// an earlier copy of a field that a later one replaces, is dropped.
    #[test]
    fn a_click_with_bytes_beyond_its_fields_is_published_as_its_fields() {
        let click = event("a", "abc");
        let canonical = Bytes::from(prost::Message::encode_to_vec(&click));
        let mut padded = Vec::new();
        // An earlier `referrer` (field 5) of 1 MiB, which the later empty
        // one replaces, then an unknown field 99 of 1 MiB.
        prost::encoding::string::encode(5, &"r".repeat(1 << 20), &mut padded);
        padded.extend_from_slice(&canonical);
        prost::encoding::string::encode(5, &String::new(), &mut padded);
        prost::encoding::bytes::encode(99, &vec![7u8; 1 << 20], &mut padded);
        let mut events = vec![canonical.clone(), Bytes::from(padded)];
        validate(&mut events, Utc::now()).unwrap();
        assert_eq!(
            events[0], canonical,
            "canonical bytes are kept as they came"
        );
        assert!(events[0].as_ptr() == canonical.as_ptr(), "and not copied");
        let kept = <ClickEvent as prost::Message>::decode(events[1].as_ref()).unwrap();
        assert_eq!(kept, click);
        assert_eq!(events[1].len(), canonical.len(), "{}", events[1].len());
    }
}
