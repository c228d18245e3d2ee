//! The live fan-out behind `GET /api/v1/events`: this replica's
//! subscription to `clicks.counted` (every analytics batch, from every
//! replica) is split by owner and handed to that owner's open streams.
//!
//! Bounds, so one client can never cost the others anything:
//! - at most `max_per_key` streams per API key (the next one gets 429);
//! - each stream has a bounded queue filled with `try_send`: a stream that
//!   cannot keep up is dropped (its body ends; the page reconnects and
//!   reloads its totals), never waited for. Publishing takes one short
//!   lock and never awaits, so neither the AMQP consumer nor the redirect
//!   path can be slowed by a subscriber.
//!
//! [`sse`] holds the `text/event-stream` framing.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use serde_json::json;
use shortfleet_common::click_counts::CountsSubscriber;
use shortfleet_proto::v1::ClickCounts;
use tokio::sync::{
    Notify,
    mpsc::{self, error::TrySendError},
};
use tokio_util::sync::CancellationToken;

/// Limits of the fan-out, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct LiveConfig {
    /// Open streams allowed per API key.
    pub max_per_key: usize,
    /// Events queued per stream before it counts as slow and is dropped.
    pub buffer: usize,
    /// A comment line this often keeps proxies and our idle timeout from
    /// closing a quiet stream.
    pub heartbeat: Duration,
}

struct Slot {
    id: u64,
    key_id: String,
    tx: mpsc::Sender<Bytes>,
}

/// This replica's open streams, by owner.
pub struct Hub {
    config: LiveConfig,
    streams: Mutex<HashMap<String, Vec<Slot>>>,
    next_slot: AtomicU64,
    /// Event ids, increasing per replica.
    next_event: AtomicU64,
    /// Ends every stream (graceful shutdown must not wait on them).
    pub closing: CancellationToken,
    /// Notified after each (re)subscription to `clicks.counted`.
    pub subscribed: Arc<Notify>,
}

/// Refusal of a new stream: the key already has `max_per_key` open.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyStreams;

/// One open stream; dropping it frees its slot.
pub struct Subscription {
    pub rx: mpsc::Receiver<Bytes>,
    hub: Arc<Hub>,
    owner: String,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.owner, self.id);
    }
}

impl Hub {
    pub fn new(config: LiveConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            streams: Mutex::new(HashMap::new()),
            next_slot: AtomicU64::new(1),
            next_event: AtomicU64::new(1),
            closing: CancellationToken::new(),
            subscribed: Arc::new(Notify::new()),
        })
    }

    /// Feeds the hub from `exchange` until `background` ends, and closes
    /// every stream as soon as `shutdown` fires, so the server's drain
    /// does not wait for streams that never end by themselves.
    pub async fn feed(
        self: Arc<Self>,
        amqp_url: String,
        exchange: String,
        shutdown: CancellationToken,
        background: CancellationToken,
    ) {
        let close = async {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = background.cancelled() => {}
            }
            self.closing.cancel();
        };
        let hub = self.clone();
        let subscriber = CountsSubscriber {
            amqp_url,
            exchange,
            on_counts: Arc::new(move |counts| hub.publish(&counts)),
            subscribed: self.subscribed.clone(),
        };
        tokio::join!(close, subscriber.run(background.clone()));
    }

    pub fn config(&self) -> LiveConfig {
        self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Slot>>> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every change is one push or retain), so poison is ignored.
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a stream for `owner` through key `key_id`.
    pub fn subscribe(
        self: &Arc<Self>,
        owner: &str,
        key_id: &str,
    ) -> Result<Subscription, TooManyStreams> {
        let mut streams = self.lock();
        let slots = streams.entry(owner.to_owned()).or_default();
        if slots.iter().filter(|s| s.key_id == key_id).count() >= self.config.max_per_key {
            metrics::counter!("shortfleet_live_refused_total").increment(1);
            return Err(TooManyStreams);
        }
        let (tx, rx) = mpsc::channel(self.config.buffer.max(1));
        let id = self.next_slot.fetch_add(1, Ordering::Relaxed);
        slots.push(Slot {
            id,
            key_id: key_id.to_owned(),
            tx,
        });
        metrics::gauge!("shortfleet_live_streams").increment(1.0);
        Ok(Subscription {
            rx,
            hub: self.clone(),
            owner: owner.to_owned(),
            id,
        })
    }

    fn remove(&self, owner: &str, id: u64) {
        let mut streams = self.lock();
        if let Some(slots) = streams.get_mut(owner) {
            let before = slots.len();
            slots.retain(|s| s.id != id);
            if slots.len() < before {
                metrics::gauge!("shortfleet_live_streams").decrement(1.0);
            }
            if slots.is_empty() {
                streams.remove(owner);
            }
        }
    }

    /// Streams open for `owner` (tests and metrics).
    pub fn streams_of(&self, owner: &str) -> usize {
        self.lock().get(owner).map_or(0, Vec::len)
    }

    /// The last event id handed out.
    pub fn last_event_id(&self) -> u64 {
        self.next_event.load(Ordering::Relaxed) - 1
    }

    /// Hands one analytics batch to the streams of every owner in it: one
    /// `clicks` event per owner, only with that owner's codes. Never awaits.
    pub fn publish(&self, counts: &ClickCounts) {
        let mut by_owner: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
        for c in counts.counts.iter().filter(|c| c.clicks > 0) {
            by_owner
                .entry(c.owner.as_str())
                .or_default()
                .push(json!({"code": c.code, "clicks": c.clicks}));
        }
        let mut streams = self.lock();
        for (owner, codes) in by_owner {
            let Some(slots) = streams.get_mut(owner) else {
                continue;
            };
            let id = self.next_event.fetch_add(1, Ordering::Relaxed);
            let frame = sse::event(
                "clicks",
                &id.to_string(),
                &json!({"counts": codes}).to_string(),
            );
            let before = slots.len();
            slots.retain(|slot| match slot.tx.try_send(frame.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    metrics::counter!("shortfleet_live_dropped_slow_total").increment(1);
                    false
                }
                Err(TrySendError::Closed(_)) => false,
            });
            let gone = before - slots.len();
            if gone > 0 {
                metrics::gauge!("shortfleet_live_streams").decrement(gone as f64);
            }
            if slots.is_empty() {
                streams.remove(owner);
            }
        }
    }
}

/// `text/event-stream` framing (WHATWG HTML §9.2).
pub mod sse {
    use bytes::Bytes;

    /// The first event of a fresh stream: the subscription exists, so no
    /// click from now on is missed (clients and tools can stop waiting).
    pub const READY: &[u8] = b"event: ready\ndata: {}\n\n";

    /// A comment line: ignored by clients, keeps the connection warm.
    pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

    /// The stream's first bytes: the reconnection delay clients should use.
    pub fn hello(retry_ms: u64) -> Bytes {
        Bytes::from(format!("retry: {retry_ms}\n: connected\n\n"))
    }

    /// One event. `data` may hold newlines (each line gets its own `data:`);
    /// `event` and `id` must not (they are ours, never client input).
    pub fn event(event: &str, id: &str, data: &str) -> Bytes {
        debug_assert!(!event.contains(['\n', '\r']) && !id.contains(['\n', '\r', '\0']));
        let mut out = format!("event: {event}\nid: {id}\n");
        for line in data.split('\n') {
            out.push_str("data: ");
            out.push_str(line.strip_suffix('\r').unwrap_or(line));
            out.push('\n');
        }
        out.push('\n');
        Bytes::from(out)
    }
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_live_refused_total",
        metrics::Unit::Count,
        "Live event streams refused: the key had its maximum open."
    );
    metrics::describe_gauge!(
        "shortfleet_live_streams",
        metrics::Unit::Count,
        "Live event streams open on this replica."
    );
    metrics::describe_counter!(
        "shortfleet_live_dropped_slow_total",
        metrics::Unit::Count,
        "Live event streams closed because their client read too slowly."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use shortfleet_proto::v1::CodeCount;

    fn hub(max_per_key: usize, buffer: usize) -> Arc<Hub> {
        Hub::new(LiveConfig {
            max_per_key,
            buffer,
            heartbeat: Duration::from_secs(15),
        })
    }

    fn batch(items: &[(&str, &str, u64)]) -> ClickCounts {
        ClickCounts {
            counts: items
                .iter()
                .map(|(owner, code, clicks)| CodeCount {
                    owner: (*owner).into(),
                    code: (*code).into(),
                    clicks: *clicks,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn sse_frames_are_well_formed() {
        assert_eq!(
            text(&sse::event("clicks", "7", "{\"a\":1}")),
            "event: clicks\nid: 7\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            text(&sse::event("x", "1", "one\r\ntwo\nthree")),
            "event: x\nid: 1\ndata: one\ndata: two\ndata: three\n\n"
        );
        assert!(sse::HEARTBEAT.starts_with(b":") && sse::HEARTBEAT.ends_with(b"\n\n"));
        assert_eq!(text(&sse::hello(2000)), "retry: 2000\n: connected\n\n");
    }

    #[test]
    fn each_owner_sees_only_its_own_codes() {
        let h = hub(5, 8);
        let mut alice = h.subscribe("alice", "k1").unwrap();
        let mut bob = h.subscribe("bob", "k2").unwrap();
        h.publish(&batch(&[
            ("alice", "a1", 2),
            ("bob", "b1", 1),
            ("carol", "c", 9),
        ]));
        let a = alice.rx.try_recv().unwrap();
        assert!(text(&a).contains("\"a1\"") && !text(&a).contains("b1"));
        let b = bob.rx.try_recv().unwrap();
        assert!(text(&b).contains("\"b1\"") && !text(&b).contains("a1"));
        assert!(alice.rx.try_recv().is_err() && bob.rx.try_recv().is_err());
        assert_eq!(h.last_event_id(), 2);
    }

    #[test]
    fn streams_per_key_are_bounded_and_freed_on_drop() {
        let h = hub(2, 8);
        let a = h.subscribe("o", "k").unwrap();
        let _b = h.subscribe("o", "k").unwrap();
        assert_eq!(h.subscribe("o", "k").err(), Some(TooManyStreams));
        // Another key of the same owner has its own allowance.
        let _c = h.subscribe("o", "k2").unwrap();
        drop(a);
        assert_eq!(h.streams_of("o"), 2);
        assert!(h.subscribe("o", "k").is_ok());
    }

    #[test]
    fn a_slow_stream_is_dropped_and_the_others_keep_receiving() {
        let h = hub(5, 2);
        let mut slow = h.subscribe("o", "k").unwrap();
        let mut fast = h.subscribe("o", "k").unwrap();
        for i in 0..5 {
            h.publish(&batch(&[("o", "c", 1)]));
            // The fast one reads everything as it comes.
            assert!(fast.rx.try_recv().is_ok(), "event {i}");
        }
        assert_eq!(h.streams_of("o"), 1, "the slow one lost its slot");
        // It keeps what was queued, then its channel ends.
        assert!(slow.rx.try_recv().is_ok());
        assert!(slow.rx.try_recv().is_ok());
        assert!(matches!(
            slow.rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        drop(slow);
        assert_eq!(h.streams_of("o"), 1);
    }
}
