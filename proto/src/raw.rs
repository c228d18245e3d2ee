//! A `ClickBatch` read with its clicks left encoded.
//!
//! An embedded message and a `bytes` field are the same on the wire (both
//! length-delimited), so a [`RawClickBatch`] decodes any `ClickBatch` and
//! encodes back to the same bytes. Decoded from a `Bytes` buffer (tonic's
//! request buffer, an AMQP body), each click is a slice of it: no copy, and
//! none of the eight strings per click a decoded `ClickEvent` allocates.
//! Readers then decode each click into one reused `ClickEvent` (whose
//! strings keep their buffers from click to click) as they need it:
//! click-logger to check it and publish the bytes as they came,
//! analytics-svc to enrich it.

use prost::bytes::Bytes;

use crate::v1::{ClickBatch, ClickEvent};

/// A `ClickBatch` whose clicks are left encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawClickBatch {
    /// Each one `ClickEvent`'s bytes (field 1 of `ClickBatch`).
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub events: Vec<Bytes>,
    #[prost(uint64, tag = "2")]
    pub sequence: u64,
}

impl From<ClickBatch> for RawClickBatch {
    /// For batches that came decoded (`LogClicks`, or a server built from
    /// the generated code alone).
    fn from(batch: ClickBatch) -> Self {
        Self {
            events: encode_clicks(&batch.events),
            sequence: batch.sequence,
        }
    }
}

/// Each click's bytes, as a `RawClickBatch` holds them.
pub fn encode_clicks(events: &[ClickEvent]) -> Vec<Bytes> {
    events
        .iter()
        .map(|e| Bytes::from(prost::Message::encode_to_vec(e)))
        .collect()
}

/// Decodes one click into `event`, all of it replaced, its strings reusing
/// their buffers. After an `Err`, `event` holds whatever was decoded before
/// the fault: callers drop it (the next call clears it first).
pub fn decode_click_into(bytes: &[u8], event: &mut ClickEvent) -> Result<(), prost::DecodeError> {
    prost::Message::clear(event);
    prost::Message::merge(event, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_raw_batch_is_a_click_batch_left_encoded() {
        let batch = ClickBatch {
            events: (0..3)
                .map(|i| ClickEvent {
                    event_id: format!("e{i}"),
                    code: "abc1234".into(),
                    user_agent: "ü".repeat(i * 100),
                    ..Default::default()
                })
                .collect(),
            sequence: 7,
        };
        let raw = RawClickBatch::decode(batch.encode_to_vec().as_slice()).unwrap();
        assert_eq!(raw.sequence, 7);
        let events: Vec<ClickEvent> = raw
            .events
            .iter()
            .map(|e| ClickEvent::decode(e.as_ref()).unwrap())
            .collect();
        assert_eq!(events, batch.events);
        assert_eq!(RawClickBatch::from(batch.clone()), raw);
        assert_eq!(raw.encode_to_vec(), batch.encode_to_vec());
    }

    #[test]
    fn a_click_decoded_into_a_used_event_keeps_nothing_of_the_last() {
        let full = ClickEvent {
            event_id: "e1".into(),
            code: "abc1234".into(),
            referrer: "https://news.example/".into(),
            head_request: true,
            rule: Some(3),
            ..Default::default()
        };
        let bare = ClickEvent {
            event_id: "e2".into(),
            ..Default::default()
        };
        let mut event = ClickEvent::default();
        decode_click_into(&full.encode_to_vec(), &mut event).unwrap();
        assert_eq!(event, full);
        decode_click_into(&bare.encode_to_vec(), &mut event).unwrap();
        assert_eq!(event, bare);
        assert!(decode_click_into(&[0xff, 0xff], &mut event).is_err());
    }
}
