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
//! Header read time is hyper's `header_read_timeout`; body read time is
//! bounded where bodies are read ([`crate::input::read_body`]).

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
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
    request_ms: AtomicU64,
    in_flight: AtomicUsize,
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

    fn stamp(&self, at: &AtomicU64) {
        at.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn touch(&self) {
        self.stamp(&self.inner.bytes_ms);
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
            self.activity.touch();
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
            self.activity.touch();
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

/// Resolves once the connection has been quiet for `idle`.
pub async fn idle_expired(activity: &Activity, idle: Duration) {
    loop {
        let quiet = activity.quiet_for();
        if quiet >= idle {
            return;
        }
        tokio::time::sleep(idle - quiet).await;
    }
}

/// Resolves once `stream` has a byte to read (or is closed), or fails after
/// `within`.
pub async fn first_byte(stream: &tokio::net::TcpStream, within: Duration) -> bool {
    let mut probe = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.peek(&mut probe)).await,
        Ok(Ok(n)) if n > 0
    )
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
}
