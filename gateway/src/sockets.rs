//! Deadlines and caps on client sockets, so a client that holds connections
//! open without sending cannot keep them:
//!
//! - **first byte**: a connection that sends nothing within `first_byte` is
//!   closed (hyper's own header timeout starts only once the HTTP/1 vs h2
//!   detection has bytes to look at, so a silent socket would wait forever);
//! - **idle**: a connection on which no byte moved either way for `idle` is
//!   closed, HTTP/1 keep-alive and h2 alike (a streaming response that keeps
//!   writing is not idle);
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
        atomic::{AtomicU64, Ordering},
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

/// When bytes last moved on a connection, in milliseconds since it opened.
#[derive(Debug, Clone)]
pub struct Activity {
    opened: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    pub fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago bytes last moved.
    pub fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
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

    #[tokio::test]
    async fn idle_expiry_counts_from_the_last_activity() {
        let activity = Activity::new();
        let idle = Duration::from_millis(300);
        // Bytes keep moving: the deadline keeps moving with them.
        let started = Instant::now();
        let busy = async {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                activity.touch();
            }
        };
        tokio::select! {
            () = idle_expired(&activity, idle) => panic!("expired while bytes were moving"),
            () = busy => {}
        }
        idle_expired(&activity, idle).await;
        assert!(started.elapsed() >= Duration::from_millis(700));
        assert!(activity.quiet_for() >= idle);
    }
}
