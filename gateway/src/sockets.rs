//! Deadlines and caps on client sockets, so a client that holds connections
//! open without sending cannot keep them:
//!
//! - **first byte**: a connection that sends nothing within `first_byte` is
//!   closed (hyper's own header timeout starts only once the HTTP/1 vs h2
//!   detection has bytes to look at, so a silent socket would wait forever);
//! - **idle**: a connection is closed once it has been idle for `idle`,
//!   HTTP/1 keep-alive and h2 alike. Idle means either no byte moved
//!   either way (a peer that stopped reading a response, too), or no
//!   request in flight and none ended. The second is what closes
//!   a quiet h2 connection: its PINGs and their answers move bytes every
//!   PING interval without ever being a request. A streaming response
//!   that keeps writing is not idle;
//! - **per client address**: at most `max_per_ip` open connections from one
//!   peer address; the excess is closed at accept, before any parsing.
//!   Trusted proxies are exempt (every client behind them shares their
//!   address).
//!
//! - **request head** (HTTP/1): a connection with no request in flight
//!   must have a request head parsed within `header_read` of opening, or
//!   of its last request's end and our last write (a response may still be
//!   draining to a slow reader), so a peer trickling header bytes (or
//!   idling between keep-alive requests) is closed. An h2 connection (its
//!   whole preface seen, or an h2 request served) is left to `idle`, as h2
//!   has no such wait.
//!
//! The request-head deadline is watched here, by the one timer each
//! connection already has, not by hyper's `header_read_timeout`: hyper
//! allocates, arms and cancels a timer for every request on a keep-alive
//! connection, about 4 % of the gateway's CPU per redirect (BENCHMARKS.md).
//! Body read time is bounded where bodies are read
//! ([`crate::input::read_body`]).

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// The socket deadlines and caps (`SHORTFLEET_*` keys in docs/configuration.md).
#[derive(Debug, Clone, Copy)]
pub struct SocketPolicy {
    pub first_byte: Duration,
    pub idle: Duration,
    pub max_per_ip: usize,
    /// h2 PINGs a quiet peer this often and drops it if a PING is not
    /// answered within `h2_ping_timeout`: a vanished client frees its
    /// streams. (Answered PINGs do not keep a connection from `idle`.)
    pub h2_ping_interval: Duration,
    pub h2_ping_timeout: Duration,
}

/// Open connections per peer address.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; releases its slot when dropped.
#[derive(Debug)]
pub struct Slot {
    counts: Arc<ConnectionCounts>,
    ip: IpAddr,
}

impl ConnectionCounts {
    /// A slot for `ip`, or `None` when it already holds `max` connections.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Slot {
            counts: self.clone(),
            ip,
        })
    }

    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What moved on a connection: when bytes last moved and when a request
/// last ended (milliseconds since it opened), and how many requests are in
/// flight.
#[derive(Debug, Clone)]
pub struct Activity {
    opened: Instant,
    inner: Arc<Moved>,
}

#[derive(Debug, Default)]
struct Moved {
    bytes_ms: AtomicU64,
    /// When we last wrote: a response still draining to a slow reader
    /// after its body ended is not a wait for the next head.
    written_ms: AtomicU64,
    request_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// An h2 connection: no request-head deadline.
    http2: AtomicBool,
}

/// One request in flight on a connection, until dropped (with the end of
/// its response body).
#[derive(Debug)]
pub struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.stamp(&self.0.inner.request_ms);
        // Release: whoever sees the count fall also sees the stamp above.
        self.0.inner.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl Activity {
    pub fn new() -> Self {
        Self {
            opened: Instant::now(),
            inner: Arc::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn stamp(&self, at: &AtomicU64) {
        at.store(self.now_ms(), Ordering::Relaxed);
    }

    fn touch(&self) {
        self.stamp(&self.inner.bytes_ms);
    }

    fn touch_written(&self) {
        let now = self.now_ms();
        self.inner.bytes_ms.store(now, Ordering::Relaxed);
        self.inner.written_ms.store(now, Ordering::Relaxed);
    }

    /// A request begins; it is in flight until the guard drops. (Only its
    /// end is stamped: while it is in flight the request clock is not read.)
    pub fn request(&self) -> InFlight {
        self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn since(&self, at: &AtomicU64) -> Duration {
        let last = Duration::from_millis(at.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }

    /// Whether the connection speaks h2 (no request-head deadline): from
    /// its opening bytes, then from each request it serves, so a peer that
    /// looked like h2 but sends HTTP/1 requests is held to HTTP/1's.
    pub fn serving_http2(&self, http2: bool) {
        self.inner.http2.store(http2, Ordering::Relaxed);
    }

    /// How long an HTTP/1 connection has been waiting for a request head,
    /// counted from the later of its last request's end and its last write
    /// (a response may still be draining after its body ended): zero while
    /// a request is in flight, `None` on h2.
    fn awaiting_head(&self) -> Option<Duration> {
        if self.inner.http2.load(Ordering::Relaxed) {
            return None;
        }
        if self.inner.in_flight.load(Ordering::Acquire) > 0 {
            return Some(Duration::ZERO);
        }
        Some(
            self.since(&self.inner.request_ms)
                .min(self.since(&self.inner.written_ms)),
        )
    }

    /// How long the connection has been idle (see the module docs).
    pub fn quiet_for(&self) -> Duration {
        let bytes = self.since(&self.inner.bytes_ms);
        if self.inner.in_flight.load(Ordering::Acquire) > 0 {
            return bytes;
        }
        bytes.max(self.since(&self.inner.request_ms))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// An I/O stream that records [`Activity`] on every read or write that moved
/// bytes.
pub struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S> Watched<S> {
    pub fn new(inner: S, activity: Activity) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch_written();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch_written();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The deadlines a connection's watch enforces (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub idle: Duration,
    pub header_read: Duration,
}

/// Why a connection's watch ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Idle,
    /// HTTP/1, no request head within `header_read`.
    HeaderRead,
}

/// Resolves once the connection is past one of its deadlines. One timer,
/// re-armed only when it fires: requests and bytes just move the stamps
/// it reads then. On HTTP/1 it fires at least every `header_read`, so the
/// wait for a head that follows a long request is checked on time.
pub async fn expired(activity: &Activity, deadlines: Deadlines) -> Expiry {
    loop {
        let quiet = activity.quiet_for();
        if quiet >= deadlines.idle {
            return Expiry::Idle;
        }
        let mut wake_in = deadlines.idle - quiet;
        if let Some(waiting) = activity.awaiting_head() {
            if waiting >= deadlines.header_read {
                return Expiry::HeaderRead;
            }
            wake_in = wake_in.min(deadlines.header_read - waiting);
        }
        tokio::time::sleep(wake_in).await;
    }
}

/// How a connection opened, from the bytes it sent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Nothing within the first-byte deadline, or closed.
    Silent,
    /// The HTTP/2 connection preface (h2c with prior knowledge).
    Http2,
    /// Anything else: HTTP/1, as far as the deadlines go.
    Http1,
}

/// What every h2 connection sends first (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits up to `within` for `stream`'s first bytes and looks at them
/// without consuming them. Only the whole preface counts as h2 (as for
/// hyper's own detection): a peer cannot escape the HTTP/1 deadline by
/// starting like h2. An h2 peer whose preface arrives in pieces is held
/// to it until its first request.
pub async fn opening(stream: &tokio::net::TcpStream, within: Duration) -> Opening {
    let mut probe = [0u8; H2_PREFACE.len()];
    match tokio::time::timeout(within, stream.peek(&mut probe)).await {
        Ok(Ok(n)) if probe[..n] == *H2_PREFACE => Opening::Http2,
        Ok(Ok(n)) if n > 0 => Opening::Http1,
        _ => Opening::Silent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_address_and_released_on_drop() {
        let counts = Arc::new(ConnectionCounts::default());
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let first = counts.admit(a, 2).expect("first");
        let second = counts.admit(a, 2).expect("second");
        assert!(counts.admit(a, 2).is_none(), "third from one address");
        assert!(
            counts.admit(b, 2).is_some(),
            "another address is not affected"
        );
        drop(first);
        assert_eq!(counts.open(a), 1);
        assert!(counts.admit(a, 2).is_some());
        drop(second);
    }

    /// A request-head deadline far inside the idle one.
    const HEAD_DEADLINES: Deadlines = Deadlines {
        idle: Duration::from_secs(5),
        header_read: Duration::from_millis(300),
    };

    /// Only the idle deadline (the request-head one an hour away).
    async fn idle_expired(activity: &Activity, idle: Duration) {
        let deadlines = Deadlines {
            idle,
            header_read: Duration::from_secs(3600),
        };
        assert_eq!(expired(activity, deadlines).await, Expiry::Idle);
    }

    /// Bytes moving on the socket: `times` touches, `every` apart.
    async fn bytes_moving(activity: &Activity, times: u32, every: Duration) {
        for _ in 0..times {
            tokio::time::sleep(every).await;
            activity.touch();
        }
    }

    #[tokio::test]
    async fn idle_expiry_counts_from_the_last_activity() {
        let activity = Activity::new();
        let idle = Duration::from_millis(300);
        // A response writing: bytes keep moving, and the deadline with them.
        let started = Instant::now();
        let in_flight = activity.request();
        let busy = bytes_moving(&activity, 4, Duration::from_millis(100));
        tokio::select! {
            () = idle_expired(&activity, idle) => panic!("expired while bytes were moving"),
            () = busy => {}
        }
        drop(in_flight);
        idle_expired(&activity, idle).await;
        assert!(started.elapsed() >= Duration::from_millis(700));
        assert!(activity.quiet_for() >= idle);
    }

    #[tokio::test]
    async fn bytes_without_requests_are_idle_but_a_request_in_flight_is_not() {
        let activity = Activity::new();
        let idle = Duration::from_millis(300);
        // PINGs and their answers: bytes move, no request begins.
        let pings = bytes_moving(&activity, 10, Duration::from_millis(50));
        tokio::select! {
            () = idle_expired(&activity, idle) => {}
            () = pings => panic!("bytes alone kept an h2 connection open"),
        }
        // A request in flight (a long response still writing) is not idle.
        let in_flight = activity.request();
        let writing = bytes_moving(&activity, 8, Duration::from_millis(50));
        tokio::select! {
            () = idle_expired(&activity, idle) => panic!("expired with a request in flight"),
            () = writing => {}
        }
        drop(in_flight);
        assert!(activity.quiet_for() < idle, "the request just ended");
        idle_expired(&activity, idle).await;
    }

    #[tokio::test]
    async fn an_http1_connection_must_send_a_request_head_within_the_header_deadline() {
        let deadlines = HEAD_DEADLINES;
        // Header bytes trickling in (the idle clock keeps resetting): cut
        // off at the header deadline all the same.
        let activity = Activity::new();
        let started = Instant::now();
        let trickle = bytes_moving(&activity, 40, Duration::from_millis(50));
        tokio::select! {
            expiry = expired(&activity, deadlines) => assert_eq!(expiry, Expiry::HeaderRead),
            () = trickle => panic!("a trickled head outlived its deadline"),
        }
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(1), "{waited:?}");

        // A request in flight longer than the header deadline is not cut
        // off; the next head is due `header_read` after it ended.
        let activity = Activity::new();
        let in_flight = activity.request();
        let answering = bytes_moving(&activity, 12, Duration::from_millis(50));
        tokio::select! {
            expiry = expired(&activity, deadlines) => panic!("{expiry:?} with a request in flight"),
            () = answering => {}
        }
        drop(in_flight);
        let ended = Instant::now();
        assert_eq!(expired(&activity, deadlines).await, Expiry::HeaderRead);
        assert!(ended.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn one_watch_checks_the_head_that_follows_a_long_request_on_time() {
        let deadlines = HEAD_DEADLINES;
        let activity = Activity::new();
        let watch = expired(&activity, deadlines);
        tokio::pin!(watch);
        // In flight when the watch first wakes (at 300 ms), ends at 450.
        let in_flight = activity.request();
        let answering = bytes_moving(&activity, 9, Duration::from_millis(50));
        tokio::select! {
            expiry = &mut watch => panic!("{expiry:?} with a request in flight"),
            () = answering => {}
        }
        drop(in_flight);
        let ended = Instant::now();
        let expiry = tokio::time::timeout(Duration::from_secs(2), &mut watch)
            .await
            .expect("the next head was not checked until the idle deadline");
        assert_eq!(expiry, Expiry::HeaderRead);
        assert!(ended.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn a_response_draining_after_its_body_ended_is_not_a_head_wait() {
        let deadlines = HEAD_DEADLINES;
        let activity = Activity::new();
        drop(activity.request());
        // Our writes go on (a slow reader taking the rest of a response).
        let draining = async {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                activity.touch_written();
            }
        };
        tokio::select! {
            expiry = expired(&activity, deadlines) => panic!("{expiry:?} while writing"),
            () = draining => {}
        }
        let drained = Instant::now();
        assert_eq!(expired(&activity, deadlines).await, Expiry::HeaderRead);
        assert!(drained.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn an_h2_connection_has_no_request_head_deadline() {
        let deadlines = Deadlines {
            idle: Duration::from_millis(400),
            header_read: Duration::from_millis(100),
        };
        let activity = Activity::new();
        activity.serving_http2(true);
        let started = Instant::now();
        assert_eq!(expired(&activity, deadlines).await, Expiry::Idle);
        assert!(started.elapsed() >= Duration::from_millis(400));
    }

    #[tokio::test]
    async fn the_h2_preface_is_told_from_http1_by_its_first_bytes() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (sent, expected) in [
            (H2_PREFACE, Opening::Http2),
            (&b"PRI * HTTP/2.0\r\n"[..], Opening::Http1),
            (&b"POST /api/v1/links HTTP/1.1\r\n"[..], Opening::Http1),
            (&b"PUT"[..], Opening::Http1),
            (&b""[..], Opening::Silent),
        ] {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            client.write_all(sent).await.unwrap();
            let seen = opening(&server, Duration::from_millis(200)).await;
            assert_eq!(seen, expected, "{:?}", String::from_utf8_lossy(sent));
        }
    }
}
