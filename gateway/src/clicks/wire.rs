//! Click batches on the wire, encoded once: a redirect encodes its click
//! ([`shortfleet_common::click::ClickFields`]), the forwarder lays those
//! bytes end to end as the batch's protobuf body (a copy, no encoding), and
//! a retry sends the same bytes again.
//!
//! Why not the generated client: it takes an owned `ClickBatch`, so every
//! attempt cloned the batch (2,000 clicks of eight strings each, every
//! 100 ms at 20,000 redirects/s) and then encoded it in one burst on a
//! redirect worker. Here nothing is cloned or encoded twice, and the bytes
//! are what prost writes for the same `ClickBatch` (a test compares them),
//! so click-logger cannot tell.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::{Message, encoding::WireType};
use shortfleet_common::{click::EncodedClick, grpc::Balanced as Channel};
use shortfleet_proto::v1::{ClickAck, ClickEvent};
use tonic::{
    Status, Streaming,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// The `events` field of `ClickBatch` (repeated, field 1).
const EVENTS_FIELD: u32 = 1;
/// The `sequence` field of `ClickBatch` (uint64, field 2).
const SEQUENCE_FIELD: u32 = 2;

/// A batch being built: its clicks' encoding so far.
pub struct BatchBody {
    body: BytesMut,
    clicks: usize,
}

impl BatchBody {
    fn with_capacity(clicks: usize) -> Self {
        Self {
            // Typical clicks encode to about 200 bytes.
            body: BytesMut::with_capacity(clicks * 200),
            clicks: 0,
        }
    }

    /// Adds a click as one more element of `events` (field 1: its key,
    /// its length, its bytes).
    fn push(&mut self, click: &EncodedClick) {
        let bytes = click.as_bytes();
        prost::encoding::encode_key(EVENTS_FIELD, WireType::LengthDelimited, &mut self.body);
        prost::encoding::encode_varint(bytes.len() as u64, &mut self.body);
        self.body.extend_from_slice(bytes);
        self.clicks += 1;
    }

    pub fn of(clicks: &[EncodedClick]) -> EncodedBatch {
        let mut body = Self::with_capacity(clicks.len());
        clicks.iter().for_each(|c| body.push(c));
        body.finish()
    }

    /// Clicks read back from the spool.
    pub fn of_events(events: &[ClickEvent]) -> EncodedBatch {
        let mut body = Self::with_capacity(events.len());
        for event in events {
            prost::encoding::message::encode(EVENTS_FIELD, event, &mut body.body);
            body.clicks += 1;
        }
        body.finish()
    }

    fn finish(self) -> EncodedBatch {
        EncodedBatch {
            body: self.body.freeze(),
            clicks: self.clicks,
        }
    }
}

/// A whole batch's clicks, encoded; cheap to send again.
#[derive(Clone, Debug)]
pub struct EncodedBatch {
    body: Bytes,
    clicks: usize,
}

impl EncodedBatch {
    pub fn clicks(&self) -> usize {
        self.clicks
    }

    pub fn is_empty(&self) -> bool {
        self.clicks == 0
    }

    /// The streamed message carrying this batch under `sequence`.
    pub fn framed(&self, sequence: u64) -> Framed {
        Framed {
            body: self.body.clone(),
            sequence,
        }
    }
}

/// One `ClickBatch` message of a stream: the batch's bytes and its
/// sequence.
#[derive(Debug)]
pub struct Framed {
    body: Bytes,
    sequence: u64,
}

/// Writes [`Framed`] batches as they are and reads acks with prost.
#[derive(Clone, Copy, Debug, Default)]
pub struct FramedCodec;

impl Codec for FramedCodec {
    type Encode = Framed;
    type Decode = ClickAck;
    type Encoder = FramedCodec;
    type Decoder = FramedCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for FramedCodec {
    type Item = Framed;
    type Error = Status;

    fn encode(&mut self, item: Framed, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        write_framed(&item, dst);
        Ok(())
    }
}

/// The bytes prost writes for `ClickBatch { events, sequence }`: the events
/// in order, then the sequence unless it is 0 (proto3 leaves defaults out).
fn write_framed(item: &Framed, dst: &mut impl BufMut) {
    dst.put_slice(&item.body);
    if item.sequence != 0 {
        prost::encoding::uint64::encode(SEQUENCE_FIELD, &item.sequence, dst);
    }
}

impl Decoder for FramedCodec {
    type Item = ClickAck;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ClickAck>, Status> {
        let ack = ClickAck::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|e| Status::internal(format!("a click ack did not decode: {e}")))?;
        Ok(Some(ack))
    }
}

/// `ClickLogger.StreamClicks` with batches sent as [`Framed`] bytes.
#[derive(Clone)]
pub struct ClickStreamClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl ClickStreamClient {
    pub fn new(channel: Channel) -> Self {
        Self {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// Opens a stream sending `batches`; its acks.
    pub async fn stream(
        &mut self,
        batches: tokio::sync::mpsc::Receiver<Framed>,
    ) -> Result<Streaming<ClickAck>, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("click-logger is not reachable: {e}")))?;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(batches));
        request.extensions_mut().insert(tonic::GrpcMethod::new(
            "shortener.v1.ClickLogger",
            "StreamClicks",
        ));
        let path = http::uri::PathAndQuery::from_static("/shortener.v1.ClickLogger/StreamClicks");
        self.grpc
            .streaming(request, path, FramedCodec)
            .await
            .map(tonic::Response::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shortfleet_proto::v1::ClickBatch;

    fn click(i: u32, referrer: String, rule: Option<u32>) -> ClickEvent {
        ClickEvent {
            event_id: format!("e{i}"),
            code: "abc1234".into(),
            owner: "alice".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000 + i64::from(i),
                nanos: 7,
            }),
            referrer,
            user_agent: "Mozilla/5.0".into(),
            client_ip: "203.0.113.7".into(),
            country: "DE".into(),
            rule,
            ..Default::default()
        }
    }

    proptest! {
        /// Whatever the clicks and sequence, the bytes are prost's for the
        /// same `ClickBatch`.
        #[test]
        fn a_framed_batch_is_the_bytes_of_the_same_click_batch(
            referrers in proptest::collection::vec(".{0,40}", 0..20),
            rules in proptest::collection::vec(proptest::option::of(0u32..64), 20),
            sequence in any::<u64>(),
        ) {
            let events: Vec<ClickEvent> = referrers
                .into_iter()
                .enumerate()
                .map(|(i, r)| click(i as u32, r, rules[i]))
                .collect();
            let clicks: Vec<EncodedClick> = events.iter().map(EncodedClick::from).collect();
            let mut wire = Vec::new();
            write_framed(&BatchBody::of(&clicks).framed(sequence), &mut wire);
            let expected = ClickBatch { events: events.clone(), sequence }.encode_to_vec();
            prop_assert_eq!(&wire, &expected);
            let mut replayed = Vec::new();
            write_framed(&BatchBody::of_events(&events).framed(sequence), &mut replayed);
            prop_assert_eq!(&replayed, &expected);
            prop_assert_eq!(ClickBatch::decode(wire.as_slice()).unwrap().events, events);
        }
    }

    #[test]
    fn a_batch_counts_its_clicks_and_sends_the_same_bytes_again() {
        let mut body = BatchBody::with_capacity(2);
        assert!(body.clicks == 0);
        body.push(&EncodedClick::from(&click(1, "https://t.co/".into(), None)));
        body.push(&EncodedClick::from(&click(2, String::new(), Some(3))));
        let batch = body.finish();
        assert_eq!(batch.clicks(), 2);
        assert!(!batch.is_empty());
        let (mut first, mut again) = (Vec::new(), Vec::new());
        write_framed(&batch.framed(9), &mut first);
        write_framed(&batch.framed(10), &mut again);
        let decoded = ClickBatch::decode(again.as_slice()).unwrap();
        assert_eq!(decoded.sequence, 10);
        assert_eq!(
            decoded.events,
            ClickBatch::decode(first.as_slice()).unwrap().events
        );
        assert!(BatchBody::of(&[]).is_empty());
    }
}
