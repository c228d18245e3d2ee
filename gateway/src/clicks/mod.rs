//! Click hand-off: the redirect path drops each click into a bounded buffer
//! and returns at once; the [`forwarder`] sends the buffer to click-logger in
//! batches over one long-lived gRPC stream, one batch in flight at a time,
//! each acknowledged only once click-logger confirmed or spooled it, each
//! encoded once as it fills ([`wire`]). The redirect never waits on
//! analytics.
//!
//! click-logger slow or down: the batch in hand is retried with jittered
//! backoff (on a new stream if the old one broke) while new clicks queue in
//! the buffer. Once the buffer is full, further clicks go to the [`spill`]:
//! a small in-memory stage that a task appends to the on-disk spool
//! (`SHORTFLEET_CLICK_SPOOL_DIR`), from which the forwarder replays them
//! once click-logger takes batches again. Only when the stage is full too
//! (the disk cannot keep up), the spool is full, or no spool is configured
//! is a click dropped, and counted in `shortfleet_clicks_dropped_total`.
//!
//! A batch whose ack was lost is sent again, and a spool segment is deleted
//! only after all of it was acknowledged, so delivery is at least once;
//! analytics dedupes by event id, so every click is counted exactly once.
//! On shutdown the buffer is flushed within the grace period, and what
//! cannot be sent is spooled for the next start. `docs/architecture.md`
//! ("Click overflow") gives the bounds.

pub mod forwarder;
pub mod spill;
pub mod wire;

use std::sync::Arc;

use shortfleet_common::click::{ClickFields, EncodedClick};
use tokio::sync::mpsc::{self, error::TrySendError};

pub use forwarder::ClickForwarder;
pub use spill::{Spill, Spiller};

/// Registers the HELP text of the click hand-off's metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_clicks_dropped_total",
        "Clicks lost to every total: buffer, spill stage and spool all full (or no spool configured), refused as invalid, or unsendable at shutdown without a spool."
    );
    metrics::describe_counter!(
        "shortfleet_clicks_forwarded_total",
        "Clicks click-logger acknowledged (replayed ones included)."
    );
    metrics::describe_counter!(
        "shortfleet_clicks_replayed_total",
        "Spooled clicks click-logger acknowledged."
    );
    metrics::describe_gauge!(
        "shortfleet_click_buffer_depth",
        "Clicks waiting in the gateway's in-memory buffer."
    );
}

#[derive(Clone)]
pub struct ClickSink {
    tx: mpsc::Sender<EncodedClick>,
    /// Where clicks go when the buffer is full; `None` without a spool.
    spill: Option<Arc<Spill>>,
}

impl ClickSink {
    pub fn new(capacity: usize, spill: Option<Arc<Spill>>) -> (Self, mpsc::Receiver<EncodedClick>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx, spill }, rx)
    }

    /// Never blocks: a full buffer hands the click to the spill, and only a
    /// full spill (or none) drops it. The click is first fit to the fleet's
    /// click rule (referrer and user agent cut to their bounds, a malformed
    /// trace context or country dropped), so one redirect with a huge
    /// `Referer` never gets a whole batch refused, and encoded: from here
    /// on it is the bytes its batch will carry.
    pub fn record(&self, click: &ClickFields<'_>) {
        let event = match self.tx.try_send(click.encode()) {
            Ok(()) => return,
            Err(TrySendError::Full(event) | TrySendError::Closed(event)) => event,
        };
        if !self.spill.as_ref().is_some_and(|s| s.stage(event)) {
            metrics::counter!("shortfleet_clicks_dropped_total").increment(1);
        }
    }
}
