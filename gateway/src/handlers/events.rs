//! `GET /api/v1/events`: the caller's clicks, live, as `text/event-stream`.
//! Authenticated and rate-limited like every API call (Bearer key, so the
//! dashboard reads it with `fetch`, never with the key in a URL), scoped to
//! the key's owner, fed by [`crate::live`].
//!
//! Events: `clicks` with `{"counts": [{"code", "clicks"}]}`, the new human
//! clicks of each code since the previous event. Nothing is replayed: a
//! client that reconnects with `Last-Event-ID` first gets `resync`, its cue
//! to reload the current totals from the REST API and add events from there.
//! A comment line every `heartbeat` keeps the connection open.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::{
    keys::Principal,
    live::{Subscription, sse},
    problem::Problem,
};

/// The body of an event stream: frames written by the stream's own task.
pub type SseBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

/// How long a browser should wait before reconnecting.
const RETRY_MS: u64 = 2000;
/// Frames between the stream's task and hyper; the real bound is the hub's.
const WRITE_QUEUE: usize = 4;

pub fn events(
    ctx: &Ctx<'_>,
    principal: &Principal,
    req: &Request<Incoming>,
) -> Result<Response<SseBody>, Problem> {
    let hub = &ctx.state.live;
    // Our ids are numbers; anything that is not a plain token was not ours.
    let resuming = match req.headers().get("last-event-id").map(|v| v.to_str()) {
        None => false,
        Some(Ok(id)) if id.is_empty() || super::framing::is_plain_token(id, 128) => true,
        Some(_) => {
            return Err(Problem::field(
                "Last-Event-ID",
                "must be an id this stream sent (letters, digits, . _ : -)",
            ));
        }
    };
    let subscription = hub
        .subscribe(&principal.owner, &principal.key_id)
        .map_err(|_| {
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-streams",
                "Too many event streams",
                format!(
                    "at most {} open event streams per API key; close one first",
                    hub.config().max_per_key
                ),
            )
            .retry_after(5)
        })?;
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    tokio::spawn(pump(
        subscription,
        tx,
        resuming.then(|| hub.last_event_id()),
        hub.config().heartbeat,
        hub.closing.clone(),
    ));
    let mut response = Response::new(StreamBody::new(ReceiverStream::new(rx)));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Tells nginx-style proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Moves the subscription's events (and heartbeats) into the response body
/// until the client leaves, the hub drops the stream as slow, or the
/// gateway shuts down. Dropping `subscription` at the end frees the slot.
async fn pump(
    mut subscription: Subscription,
    tx: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    resync_at: Option<u64>,
    heartbeat: std::time::Duration,
    closing: CancellationToken,
) {
    let send = |bytes: Bytes| {
        let tx = tx.clone();
        let closing = closing.clone();
        async move {
            tokio::select! {
                sent = tx.send(Ok(Frame::data(bytes))) => sent.is_ok(),
                () = closing.cancelled() => false,
            }
        }
    };
    if !send(sse::hello(RETRY_MS)).await {
        return;
    }
    let first = match resync_at {
        Some(id) => sse::event("resync", &id.to_string(), "{}"),
        None => Bytes::from_static(sse::READY),
    };
    if !send(first).await {
        return;
    }
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    loop {
        let frame = tokio::select! {
            next = subscription.rx.recv() => match next {
                Some(frame) => frame,
                // Dropped by the hub as too slow: end the body, the client
                // reconnects and resyncs.
                None => return,
            },
            _ = beat.tick() => Bytes::from_static(sse::HEARTBEAT),
            () = tx.closed() => return,
            () = closing.cancelled() => return,
        };
        if !send(frame).await {
            return;
        }
    }
}
