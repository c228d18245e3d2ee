//! Click hand-off: the redirect path drops each click into a bounded buffer
//! and returns at once; one task sends the buffer to click-logger in batches
//! over one long-lived gRPC stream, one batch in flight at a time, each
//! acknowledged only once click-logger confirmed or spooled it. The
//! redirect never waits on analytics.
//!
//! click-logger slow or down: the batch in hand is retried with backoff
//! (on a new stream if the old one broke) while new clicks queue in the
//! buffer; once the buffer is full further clicks are dropped and counted in
//! `shortfleet_clicks_dropped_total`. A batch whose ack was lost is sent
//! again, so delivery is at least once; analytics dedupes by event id. On
//! shutdown the buffer is flushed within the grace period.

use std::time::Duration;

use shortfleet_proto::v1::{
    ClickAck, ClickBatch, ClickEvent, click_logger_client::ClickLoggerClient,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Streaming, transport::Channel};

#[derive(Clone)]
pub struct ClickSink {
    tx: mpsc::Sender<ClickEvent>,
}

impl ClickSink {
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<ClickEvent>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    /// Never blocks: a full buffer drops the click. The click is first fit
    /// to the fleet's click rule (referrer and user agent cut to their
    /// bounds, a malformed trace context or country dropped), so one
    /// redirect with a huge `Referer` never gets a whole batch refused.
    pub fn record(&self, mut event: ClickEvent) {
        shortfleet_common::click::fit(&mut event);
        if self.tx.try_send(event).is_err() {
            metrics::counter!("shortfleet_clicks_dropped_total").increment(1);
        }
    }
}

/// One open stream to click-logger.
struct Session {
    batches: mpsc::Sender<ClickBatch>,
    acks: Streaming<ClickAck>,
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
    pub rx: mpsc::Receiver<ClickEvent>,
    pub client: ClickLoggerClient<Channel>,
    pub batch_max: usize,
    pub batch_wait: Duration,
    pub timeout: Duration,
    /// How long shutdown may spend flushing.
    pub grace: Duration,
    session: Option<Session>,
    sequence: u64,
}

impl ClickForwarder {
    pub fn new(
        rx: mpsc::Receiver<ClickEvent>,
        client: ClickLoggerClient<Channel>,
        batch_max: usize,
        batch_wait: Duration,
        timeout: Duration,
        grace: Duration,
    ) -> Self {
        Self {
            rx,
            client,
            batch_max,
            batch_wait,
            timeout,
            grace,
            session: None,
            sequence: 0,
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                next = self.rx.recv() => match next {
                    Some(event) => event,
                    None => return,
                },
                () = shutdown.cancelled() => break,
            };
            let batch = self.fill(first).await;
            self.deliver(batch, &shutdown).await;
        }
        self.flush().await;
    }

    /// Collects up to `batch_max` clicks or until `batch_wait` passed.
    async fn fill(&mut self, first: ClickEvent) -> Vec<ClickEvent> {
        let mut batch = Vec::with_capacity(self.batch_max);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + self.batch_wait;
        while batch.len() < self.batch_max {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(event)) => batch.push(event),
                Ok(None) | Err(_) => break,
            }
        }
        metrics::gauge!("shortfleet_click_buffer_depth").set(self.rx.len() as f64);
        batch
    }

    /// Sends one batch, retrying with backoff until it is acknowledged or
    /// shutdown begins (then one last try).
    async fn deliver(&mut self, events: Vec<ClickEvent>, shutdown: &CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.send(&events).await {
                Sent::Accepted | Sent::Refused => return,
                Sent::Retry(why) => {
                    tracing::warn!(error = %why, clicks = events.len(), "click batch not acknowledged; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => {
                    if !matches!(self.send(&events).await, Sent::Accepted | Sent::Refused) {
                        metrics::counter!("shortfleet_clicks_dropped_total").increment(events.len() as u64);
                    }
                    return;
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn open(&mut self) -> Result<(), String> {
        let (batches, outgoing) = mpsc::channel(4);
        let call = self
            .client
            .stream_clicks(tokio_stream::wrappers::ReceiverStream::new(outgoing));
        let acks = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| "opening the click stream timed out".to_owned())?
            .map_err(|s| format!("opening the click stream: {}", s.message()))?
            .into_inner();
        self.session = Some(Session { batches, acks });
        Ok(())
    }

    /// One attempt: send on the open stream (opening one if needed) and wait
    /// for this batch's ack.
    async fn send(&mut self, events: &[ClickEvent]) -> Sent {
        if self.session.is_none()
            && let Err(why) = self.open().await
        {
            return Sent::Retry(why);
        }
        self.sequence += 1;
        let sequence = self.sequence;
        let session = self.session.as_mut().expect("opened above");
        let batch = ClickBatch {
            events: events.to_vec(),
            sequence,
        };
        let outcome = async {
            session
                .batches
                .send(batch)
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
                    .increment(events.len() as u64);
                Sent::Accepted
            }
            Ok(Ok(ack)) if ack.invalid => {
                tracing::error!(error = %ack.error, clicks = events.len(), "click-logger refused a batch as invalid");
                metrics::counter!("shortfleet_clicks_dropped_total").increment(events.len() as u64);
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

    /// Shutdown: send what is buffered, bounded by the grace period.
    async fn flush(mut self) {
        let deadline = tokio::time::Instant::now() + self.grace;
        self.rx.close();
        let mut pending = Vec::new();
        while let Ok(event) = self.rx.try_recv() {
            pending.push(event);
        }
        let chunks: Vec<Vec<ClickEvent>> = pending
            .chunks(self.batch_max)
            .map(<[ClickEvent]>::to_vec)
            .collect();
        for chunk in chunks {
            let accepted = tokio::time::Instant::now() < deadline
                && matches!(self.send(&chunk).await, Sent::Accepted | Sent::Refused);
            if !accepted {
                tracing::warn!(clicks = chunk.len(), "clicks lost at shutdown");
                metrics::counter!("shortfleet_clicks_dropped_total").increment(chunk.len() as u64);
            }
        }
    }
}
