//! The `ClickLogger` gRPC service: a batch is acknowledged only once every
//! click in it is confirmed by RabbitMQ or fsync'd to the spool.

use std::sync::Arc;

use shortfleet_common::time::from_proto;
use shortfleet_proto::v1::{ClickAck, ClickBatch, ClickEvent, click_logger_server::ClickLogger};
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
    #[error("events[{0}]: event_id, code and a valid occurred_at are required")]
    Incomplete(usize),
    #[error("RabbitMQ is unavailable and the spool is full")]
    SpoolFull(u64),
    #[error("RabbitMQ is unavailable and the spool cannot be written")]
    SpoolIo(#[source] std::io::Error),
}

impl From<IngestError> for Status {
    fn from(err: IngestError) -> Self {
        match &err {
            IngestError::TooLarge(_) | IngestError::Incomplete(_) => {
                Status::invalid_argument(err.to_string())
            }
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

/// Checks a batch before anything is published or spooled, so a click
/// analytics could not store never reaches the queue, where it would
/// dead-letter the whole message it shares with other clicks.
pub fn validate(events: &[ClickEvent]) -> Result<(), IngestError> {
    if events.len() > MAX_BATCH {
        return Err(IngestError::TooLarge(events.len()));
    }
    let storable = |e: &ClickEvent| {
        !e.event_id.is_empty()
            && !e.code.is_empty()
            && e.occurred_at.as_ref().and_then(from_proto).is_some()
    };
    match events.iter().position(|e| !storable(e)) {
        Some(bad) => Err(IngestError::Incomplete(bad)),
        None => Ok(()),
    }
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
    async fn ingest(&self, events: Vec<ClickEvent>) -> Result<u32, IngestError> {
        validate(&events)?;
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
            invalid: matches!(e, IngestError::TooLarge(_) | IngestError::Incomplete(_)),
            error: e.to_string(),
        },
    }
}

type AckStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<ClickAck, Status>> + Send>>;

#[tonic::async_trait]
impl ClickLogger for ClickLoggerService {
    async fn log_clicks(&self, request: Request<ClickBatch>) -> Result<Response<ClickAck>, Status> {
        let accepted = self.ingest(request.into_inner().events).await?;
        Ok(Response::new(ClickAck {
            accepted,
            ..Default::default()
        }))
    }

    type StreamClicksStream = AckStream;

    /// Batches are taken one at a time, in order; each is acknowledged once
    /// it is confirmed or spooled. A client that goes away mid-batch gets no
    /// ack and sends that batch again on its next stream (analytics dedupes).
    async fn stream_clicks(
        &self,
        request: Request<tonic::Streaming<ClickBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        let mut batches = request.into_inner();
        let (acks, out) = tokio::sync::mpsc::channel(16);
        let service = self.clone();
        tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    next = batches.message() => match next {
                        Ok(Some(batch)) => batch,
                        _ => break,
                    },
                    () = service.draining.cancelled() => break,
                };
                let ack = stream_ack(batch.sequence, service.ingest(batch.events).await);
                if acks.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, code: &str) -> ClickEvent {
        ClickEvent {
            event_id: id.into(),
            code: code.into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_763_856_000,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_needs_ids_and_codes_and_a_bounded_size() {
        assert!(validate(&[]).is_ok());
        assert!(validate(&[event("a", "c")]).is_ok());
        assert!(matches!(
            validate(&[event("a", "c"), event("", "c")]),
            Err(IngestError::Incomplete(1))
        ));
        assert!(matches!(
            validate(&[event("a", "")]),
            Err(IngestError::Incomplete(0))
        ));
        let mut no_time = event("a", "c");
        no_time.occurred_at = None;
        let mut bad_time = event("b", "c");
        bad_time.occurred_at = Some(prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        });
        for bad in [no_time, bad_time] {
            assert!(matches!(
                validate(&[event("x", "c"), bad]),
                Err(IngestError::Incomplete(1))
            ));
        }
        let big = vec![event("a", "c"); MAX_BATCH + 1];
        assert!(matches!(validate(&big), Err(IngestError::TooLarge(_))));
        let status = Status::from(IngestError::Incomplete(3));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            Status::from(IngestError::SpoolFull(1)).code(),
            tonic::Code::Unavailable
        );
    }
}
