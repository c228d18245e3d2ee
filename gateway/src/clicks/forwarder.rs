//! The one task that sends clicks to click-logger: live batches from the
//! buffer and, while the spool holds clicks, replayed chunks from it, each
//! retried with jittered backoff until acknowledged (see the module docs of
//! [`super`]).

use std::{path::PathBuf, sync::Arc, time::Duration};

use shortfleet_common::amqp::Backoff;
use shortfleet_common::click::EncodedClick;
use shortfleet_proto::v1::{ClickAck, ClickEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use super::{
    spill::Spill,
    wire::{BatchBody, ClickStreamClient, EncodedBatch, Framed},
};

/// Clicks per replayed batch (and per live batch while a backlog drains):
/// large, so a backlog drains many times faster than clicks arrive, yet
/// under click-logger's 10,000-click batch limit.
const REPLAY_BATCH: usize = 5_000;

/// How often a filling live batch takes the clicks buffered meanwhile: a
/// tenth of the default batch wait, so a batch still fills to within 10 ms
/// of its size or deadline, and the redirect path's try-send wakes nobody.
const FILL_TICK: Duration = Duration::from_millis(10);

/// Delivery retries: 50 ms doubling to 1 s, equal jitter, so a restarted
/// click-logger is noticed within about a second and many gateways do not
/// reconnect in step.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// How long one click stream is used before the next batch opens another.
/// The new one is opened while the old one is still open (and counted in
/// flight on its replica), so the balancer sends it to another replica: the
/// gateways' streams move round the click-logger replicas, and one that
/// joins gets streams within about this time, while a stream still carries
/// thousands of batches. The old one closes with every batch acknowledged
/// (each batch waits for its ack), so nothing is lost in the move.
const SESSION_MAX_AGE: Duration = Duration::from_secs(10);

/// One open stream to click-logger.
struct Session {
    batches: mpsc::Sender<Framed>,
    acks: Streaming<ClickAck>,
    opened: tokio::time::Instant,
}

/// How a batch fared.
enum Sent {
    Accepted,
    /// click-logger will never take it (invalid): drop it, counted.
    Refused,
    /// Try again later (and on a new stream if the session broke).
    Retry(String),
}

pub struct ClickForwarder {
    pub rx: mpsc::Receiver<EncodedClick>,
    pub client: ClickStreamClient,
    pub batch_max: usize,
    pub batch_wait: Duration,
    pub timeout: Duration,
    /// How long shutdown may spend flushing.
    pub grace: Duration,
    /// The overflow spool, replayed whenever it holds clicks.
    spill: Option<Arc<Spill>>,
    /// The spool segment being replayed and how far.
    replaying: Option<Replay>,
    session: Option<Session>,
    sequence: u64,
}

/// One spool segment in memory (at most the spool's 8 MiB segment size).
struct Replay {
    path: PathBuf,
    events: Vec<ClickEvent>,
    sent: usize,
}

impl ClickForwarder {
    pub fn new(
        rx: mpsc::Receiver<EncodedClick>,
        client: ClickStreamClient,
        batch_max: usize,
        batch_wait: Duration,
        timeout: Duration,
        grace: Duration,
        spill: Option<Arc<Spill>>,
    ) -> Self {
        Self {
            rx,
            client,
            batch_max,
            batch_wait,
            timeout,
            grace,
            spill,
            replaying: None,
            session: None,
            sequence: 0,
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if self.backlog().await {
                // Alternate a replayed chunk with whatever is buffered, so
                // the spool drains while live clicks keep moving.
                self.replay_chunk(&shutdown).await;
                let mut live = Vec::new();
                while live.len() < REPLAY_BATCH {
                    match self.rx.try_recv() {
                        Ok(event) => live.push(event),
                        Err(_) => break,
                    }
                }
                self.deliver_live(live, &shutdown).await;
                continue;
            }
            let first = tokio::select! {
                next = self.rx.recv() => match next {
                    Some(event) => event,
                    None => return,
                },
                () = shutdown.cancelled() => break,
            };
            let batch = self.fill(first).await;
            self.deliver_live(batch, &shutdown).await;
        }
        self.flush().await;
    }

    /// Whether spooled clicks wait for replay.
    async fn backlog(&self) -> bool {
        match &self.spill {
            Some(spill) => self.replaying.is_some() || spill.spool.bytes().await > 0,
            None => false,
        }
    }

    /// Replays the next chunk of the oldest spool segment; the segment is
    /// deleted once all of it was acknowledged. Unacknowledged at shutdown,
    /// it stays for the next start (sent again then; analytics dedupes).
    async fn replay_chunk(&mut self, shutdown: &CancellationToken) {
        let Some(spill) = self.spill.clone() else {
            return;
        };
        if self.replaying.is_none() {
            match spill.spool.oldest().await {
                Ok(Some((path, events))) => {
                    self.replaying = Some(Replay {
                        path,
                        events,
                        sent: 0,
                    });
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the click spool; replay paused");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_MAX) => {}
                        () = shutdown.cancelled() => {}
                    }
                    return;
                }
            }
        }
        let Some(replay) = self.replaying.as_ref() else {
            return;
        };
        let end = (replay.sent + REPLAY_BATCH).min(replay.events.len());
        let chunk = BatchBody::of_events(&replay.events[replay.sent..end]);
        if !chunk.is_empty() && !self.deliver(&chunk, shutdown).await {
            return;
        }
        metrics::counter!("shortfleet_clicks_replayed_total").increment(chunk.clicks() as u64);
        let Some(replay) = self.replaying.as_mut() else {
            return;
        };
        replay.sent = end;
        if replay.sent >= replay.events.len() {
            let path = replay.path.clone();
            self.replaying = None;
            if let Err(e) = spill.spool.remove(&path).await {
                tracing::error!(error = %e, segment = %path.display(), "cannot delete a replayed spool segment");
            }
        }
    }

    /// Delivers a live batch; if shutdown stops it first, the batch goes to
    /// the spool (or is counted dropped without one).
    async fn deliver_live(&mut self, batch: Vec<EncodedClick>, shutdown: &CancellationToken) {
        if batch.is_empty() || self.deliver(&BatchBody::of(&batch), shutdown).await {
            return;
        }
        match &self.spill {
            Some(spill) => spill.write(&batch).await,
            None => {
                metrics::counter!("shortfleet_clicks_dropped_total").increment(batch.len() as u64)
            }
        }
    }

    /// Collects up to `batch_max` clicks or until `batch_wait` passed,
    /// taking what the buffer holds every [`FILL_TICK`] rather than waiting
    /// on it click by click: a wait per click woke this task, and set a
    /// timer, once per redirect.
    async fn fill(&mut self, first: EncodedClick) -> Vec<EncodedClick> {
        let mut batch = Vec::with_capacity(self.batch_max);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + self.batch_wait;
        loop {
            let room = self.batch_max - batch.len();
            if room > 0 && !self.rx.is_empty() {
                // Returns at once: the buffer holds clicks, and this task
                // is its only reader.
                self.rx.recv_many(&mut batch, room).await;
            }
            let now = tokio::time::Instant::now();
            let ended = self.rx.is_closed() && self.rx.is_empty();
            if batch.len() >= self.batch_max || now >= deadline || ended {
                break;
            }
            tokio::time::sleep_until((now + FILL_TICK).min(deadline)).await;
        }
        metrics::gauge!("shortfleet_click_buffer_depth").set(self.rx.len() as f64);
        batch
    }

    /// Sends one batch, retrying with backoff until it is acknowledged (or
    /// refused as invalid, counted dropped): `true`. If shutdown begins
    /// first, one last try; `false` if that fails too.
    async fn deliver(&mut self, batch: &EncodedBatch, shutdown: &CancellationToken) -> bool {
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        loop {
            match self.send(batch).await {
                Sent::Accepted | Sent::Refused => return true,
                Sent::Retry(why) => {
                    tracing::warn!(error = %why, clicks = batch.clicks(), "click batch not acknowledged; retrying");
                }
            }
            if !backoff.wait(shutdown).await {
                return matches!(self.send(batch).await, Sent::Accepted | Sent::Refused);
            }
        }
    }

    async fn open(&mut self) -> Result<Session, String> {
        let (batches, outgoing) = mpsc::channel(4);
        let call = self.client.stream(outgoing);
        let acks = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| "opening the click stream timed out".to_owned())?
            .map_err(|s| format!("opening the click stream: {}", s.message()))?;
        Ok(Session {
            batches,
            acks,
            opened: tokio::time::Instant::now(),
        })
    }

    /// One attempt: send on the open stream (opening one if needed) and wait
    /// for this batch's ack.
    async fn send(&mut self, batch: &EncodedBatch) -> Sent {
        let session = match self.session.take() {
            Some(old) if old.opened.elapsed() >= SESSION_MAX_AGE => match self.open().await {
                Ok(new) => new,
                // Keep what works; the move is tried again next batch.
                Err(_) => old,
            },
            Some(session) => session,
            None => match self.open().await {
                Ok(session) => session,
                Err(why) => return Sent::Retry(why),
            },
        };
        self.sequence += 1;
        let sequence = self.sequence;
        let session = self.session.insert(session);
        let outcome = async {
            session
                .batches
                .send(batch.framed(sequence))
                .await
                .map_err(|_| "the click stream closed".to_owned())?;
            loop {
                match session.acks.message().await {
                    Ok(Some(ack)) if ack.sequence == sequence => return Ok(ack),
                    // An ack of an earlier, abandoned batch: skip it.
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err("click-logger ended the stream".to_owned()),
                    Err(s) => return Err(format!("click stream failed: {}", s.message())),
                }
            }
        };
        match tokio::time::timeout(self.timeout, outcome).await {
            Ok(Ok(ack)) if ack.error.is_empty() => {
                metrics::counter!("shortfleet_clicks_forwarded_total")
                    .increment(batch.clicks() as u64);
                Sent::Accepted
            }
            Ok(Ok(ack)) if ack.invalid => {
                tracing::error!(error = %ack.error, clicks = batch.clicks(), "click-logger refused a batch as invalid");
                metrics::counter!("shortfleet_clicks_dropped_total")
                    .increment(batch.clicks() as u64);
                Sent::Refused
            }
            Ok(Ok(ack)) => Sent::Retry(ack.error),
            Ok(Err(why)) => {
                self.session = None;
                Sent::Retry(why)
            }
            Err(_) => {
                // A late ack would confuse the next batch: start afresh.
                self.session = None;
                Sent::Retry("click-logger did not acknowledge in time".to_owned())
            }
        }
    }

    /// Shutdown: send what is buffered, bounded by the grace period; what
    /// cannot be sent in time is spooled (or, without a spool, dropped and
    /// counted).
    async fn flush(mut self) {
        let deadline = tokio::time::Instant::now() + self.grace;
        self.rx.close();
        let mut pending = Vec::new();
        while let Ok(event) = self.rx.try_recv() {
            pending.push(event);
        }
        for chunk in pending.chunks(self.batch_max) {
            let accepted = tokio::time::Instant::now() < deadline
                && matches!(
                    self.send(&BatchBody::of(chunk)).await,
                    Sent::Accepted | Sent::Refused
                );
            if accepted {
                continue;
            }
            match &self.spill {
                Some(spill) => spill.write(chunk).await,
                None => {
                    tracing::warn!(clicks = chunk.len(), "clicks lost at shutdown");
                    metrics::counter!("shortfleet_clicks_dropped_total")
                        .increment(chunk.len() as u64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clicks::ClickSink;
    use shortfleet_common::click::ClickFields;
    use tokio::time::Instant;

    const WAIT: Duration = Duration::from_millis(500);

    fn record(sink: &ClickSink, i: usize) {
        let event_id = format!("event-{i}");
        sink.record(&ClickFields {
            event_id: &event_id,
            code: "abc1234",
            owner: "alice",
            occurred_at: shortfleet_common::time::to_proto(chrono::Utc::now()),
            referrer: "",
            user_agent: "Mozilla/5.0",
            client_ip: "203.0.113.7",
            head_request: false,
            traceparent: "",
            country: "",
            rule: None,
        });
    }

    /// A forwarder whose batches hold at most `batch_max` clicks; it never
    /// sends here (nothing listens on the discard port).
    fn forwarder(rx: mpsc::Receiver<EncodedClick>, batch_max: usize) -> ClickForwarder {
        let second = Duration::from_secs(1);
        let channel = shortfleet_common::grpc::channel(
            "http://127.0.0.1:9",
            "SHORTFLEET_CLICK_LOGGER_URL",
            second,
            None,
            "click-logger",
            &Default::default(),
        )
        .expect("a channel");
        ClickForwarder::new(
            rx,
            ClickStreamClient::new(channel),
            batch_max,
            WAIT,
            second,
            second,
            None,
        )
    }

    fn ids(batch: &[EncodedClick]) -> Vec<String> {
        batch
            .iter()
            .map(|c| c.decode().expect("decodes").event_id)
            .collect()
    }

    #[tokio::test]
    async fn a_batch_takes_buffered_clicks_up_to_its_size_without_waiting() {
        let (sink, rx) = ClickSink::new(100, None);
        (0..7).for_each(|i| record(&sink, i));
        let mut forwarder = forwarder(rx, 5);
        let started = Instant::now();
        let first = forwarder.rx.recv().await.expect("a click");
        let batch = forwarder.fill(first).await;
        assert_eq!(
            ids(&batch),
            (0..5).map(|i| format!("event-{i}")).collect::<Vec<_>>()
        );
        assert!(
            started.elapsed() < WAIT,
            "a full batch does not wait for its deadline"
        );
        assert_eq!(forwarder.rx.len(), 2, "the rest stays buffered, in order");
    }

    #[tokio::test]
    async fn a_batch_that_does_not_fill_takes_clicks_arriving_until_its_deadline() {
        let (sink, rx) = ClickSink::new(100, None);
        record(&sink, 0);
        let mut forwarder = forwarder(rx, 1_000);
        let started = Instant::now();
        let first = forwarder.rx.recv().await.expect("a click");
        // Clicks keep arriving while the batch waits (each a few ticks apart).
        let late = tokio::spawn(async move {
            for i in 1..4 {
                tokio::time::sleep(FILL_TICK * 2).await;
                record(&sink, i);
            }
            sink
        });
        let batch = forwarder.fill(first).await;
        assert!(
            started.elapsed() >= WAIT,
            "ended at its deadline, not before"
        );
        assert!(started.elapsed() < WAIT * 3, "and not long after it");
        drop(late.await.expect("the sender ran"));
        assert_eq!(
            ids(&batch),
            (0..4).map(|i| format!("event-{i}")).collect::<Vec<_>>()
        );
    }
}
