//! A load generator with two modes, both over keep-alive HTTP/1.1
//! connections on loopback:
//!
//! - closed loop: each connection sends its next request when the last one
//!   answered (saturation throughput);
//! - open loop: requests are due at a fixed rate whatever happens, and each
//!   latency is measured from when the request was *due*, not when it was
//!   sent, so a stall is charged to every request it delayed (coordinated
//!   omission corrected, as wrk2 and `oha --latency-correction` do).
//!
//! Every run is bounded by its duration (and may be stopped earlier with
//! [`run_until`]); nothing here retries forever. Used by the benchmark and
//! the chaos test.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Builds request number `seq` for connection `conn`.
pub type RequestFactory = Arc<dyn Fn(usize, u64) -> Request<Full<Bytes>> + Send + Sync>;

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Closed { connections: usize },
    Open { connections: usize, rate: u64 },
}

/// What one run measured.
#[derive(Debug)]
pub struct Outcome {
    pub requests: u64,
    pub errors: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub elapsed: Duration,
    /// Microseconds.
    pub latency: Histogram<u64>,
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("static bounds are valid")
}

impl Outcome {
    fn empty() -> Self {
        Self {
            requests: 0,
            errors: 0,
            statuses: BTreeMap::new(),
            elapsed: Duration::ZERO,
            latency: histogram(),
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        let _ = self.latency.add(&other.latency);
    }

    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

/// Runs `mode` against `addr` for `duration`.
pub async fn run(
    addr: SocketAddr,
    mode: Mode,
    duration: Duration,
    make: RequestFactory,
) -> Outcome {
    run_until(addr, mode, duration, make, Arc::new(AtomicBool::new(false))).await
}

/// Like [`run`], but every connection also stops (after its request in
/// flight) once `stop` is set.
pub async fn run_until(
    addr: SocketAddr,
    mode: Mode,
    duration: Duration,
    make: RequestFactory,
    stop: Arc<AtomicBool>,
) -> Outcome {
    let (connections, rate) = match mode {
        Mode::Closed { connections } => (connections, None),
        Mode::Open { connections, rate } => (connections, Some(rate)),
    };
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::with_capacity(connections);
    for conn in 0..connections {
        let (make, stop) = (make.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let w = Worker {
                addr,
                conn,
                connections,
                rate,
                start,
                deadline,
                stop,
            };
            w.run(make).await
        }));
    }
    let mut total = Outcome::empty();
    for w in workers {
        if let Ok(outcome) = w.await {
            total.merge(outcome);
        }
    }
    total.elapsed = start.elapsed().min(duration + Duration::from_secs(5));
    total
}

async fn connect(addr: SocketAddr) -> Option<http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// One connection's schedule.
struct Worker {
    addr: SocketAddr,
    conn: usize,
    connections: usize,
    rate: Option<u64>,
    start: Instant,
    deadline: Instant,
    stop: Arc<AtomicBool>,
}

impl Worker {
    async fn run(self, make: RequestFactory) -> Outcome {
        let Self {
            addr,
            conn,
            connections,
            rate,
            start,
            deadline,
            stop,
        } = self;
        let mut out = Outcome::empty();
        let mut sender = None;
        let mut seq = conn as u64;
        loop {
            // Open loop: request `seq` is due at start + seq / rate.
            let due = match rate {
                Some(rate) => start + Duration::from_secs_f64(seq as f64 / rate as f64),
                None => Instant::now(),
            };
            if due >= deadline || stop.load(Ordering::Relaxed) {
                break;
            }
            if rate.is_some() {
                tokio::time::sleep_until(due.into()).await;
            }
            if sender.is_none() {
                sender = connect(addr).await;
                if sender.is_none() {
                    out.errors += 1;
                    seq += connections as u64;
                    continue;
                }
            }
            let request = make(conn, seq);
            let sent = sender.as_mut().map(|s| s.send_request(request));
            let result = match sent {
                Some(fut) => tokio::time::timeout(Duration::from_secs(10), fut).await,
                None => break,
            };
            match result {
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    let _ = response.into_body().collect().await;
                    let latency = Instant::now().saturating_duration_since(due);
                    let _ = out.latency.record(latency.as_micros().max(1) as u64);
                    *out.statuses.entry(status).or_default() += 1;
                    out.requests += 1;
                }
                _ => {
                    out.errors += 1;
                    sender = None;
                }
            }
            seq += connections as u64;
        }
        out
    }
}
