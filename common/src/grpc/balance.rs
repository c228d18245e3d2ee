//! Client-side load balancing over a backend's endpoints: the channel every
//! gRPC client of the fleet sends through.
//!
//! - **Spread per call**: each call goes to the less busy of two endpoints
//!   drawn at random (power of two choices on calls in flight), so a slow
//!   or far endpoint gets less and no endpoint is pinned by a long-lived
//!   HTTP/2 connection.
//! - **Ejection**: an endpoint whose connection fails or that answers
//!   UNAVAILABLE is left out for a backoff (100 ms doubling to 5 s, equal
//!   jitter: the fleet's one backoff formula) and then tried again by live
//!   traffic; one success clears it. When every endpoint is ejected, the one
//!   whose ejection ends first is tried anyway, so a backend of one endpoint
//!   behaves as a plain channel does and a caller's breaker sees the truth.
//!   An idempotent call the caller retries on UNAVAILABLE therefore lands on
//!   another endpoint: the failed one is ejected before the error returns.
//! - **Membership** follows [`super::discovery`]: endpoints that vanish are
//!   drained (no new calls; calls in flight finish on their connection),
//!   new ones get calls from the moment they appear.
//!
//! Hand-written rather than tonic's `balance_channel` (it gives every
//! endpoint load 0, so its choice is random, and keeps handing calls to an
//! endpoint it cannot connect to) or tower's p2c `Balance` (a `Buffer` task
//! per channel on the hot path, and an endpoint failing readiness is
//! dropped until discovery adds it again, which DNS never does while the
//! address is unchanged). Each endpoint is a tonic `Channel` of its own:
//! connection management, reconnects, deadlines, keep-alive and TLS stay
//! tonic's.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use rand::Rng as _;
use tokio::sync::watch;
use tonic::{body::Body, transport::Channel};
use tower::{Service, ServiceExt as _};

use crate::amqp::jittered_delay;

/// The first ejection's length; each consecutive failure doubles it.
const FIRST_EJECTION: Duration = Duration::from_millis(100);
/// The longest an endpoint is left out before live traffic tries it again.
const MAX_EJECTION: Duration = Duration::from_secs(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One backend endpoint: its own connection and what the balancer knows.
pub(crate) struct Member {
    pub(crate) addr: SocketAddr,
    channel: Channel,
    in_flight: AtomicUsize,
    /// Consecutive failures: the ejection backoff's step.
    failures: AtomicU32,
    /// Left out until this many nanoseconds after [`epoch`]; 0 when healthy.
    ejected_until: AtomicU64,
}

/// The instant ejection deadlines are counted from (an `Instant` fits no
/// atomic).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

impl Member {
    pub(crate) fn new(addr: SocketAddr, channel: Channel) -> Self {
        Self {
            addr,
            channel,
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    fn available(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) <= now
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn eject(&self) {
        let step = self.failures.fetch_add(1, Ordering::Relaxed);
        let wait = jittered_delay(FIRST_EJECTION, MAX_EJECTION, step, rand::random());
        let until = nanos_since_epoch(Instant::now() + wait);
        self.ejected_until.store(until, Ordering::Relaxed);
        tracing::warn!(endpoint = %self.addr, ?wait, "endpoint ejected");
        metrics::counter!("shortfleet_grpc_endpoint_ejections_total").increment(1);
    }

    fn succeeded(&self) {
        // Loads first: the common case (healthy) writes nothing shared.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }
}

/// The endpoints of one backend, swapped whole by discovery.
pub(crate) struct Pool {
    members: RwLock<Arc<[Arc<Member>]>>,
    /// Bumped on every membership change, so a call can wait for the first.
    generation: watch::Sender<u64>,
    /// Named in errors and logs: the setting the endpoints came from.
    backend: String,
    /// How long a call may wait for a first endpoint to be known.
    wait_for_members: Duration,
}

impl Pool {
    pub(crate) fn new(backend: String, wait_for_members: Duration) -> Self {
        Self {
            members: RwLock::new(Arc::from([])),
            generation: watch::Sender::new(0),
            backend,
            wait_for_members,
        }
    }

    pub(crate) fn backend(&self) -> &str {
        &self.backend
    }

    pub(crate) fn members(&self) -> Arc<[Arc<Member>]> {
        // A poisoned lock still holds a whole slice: it is only ever
        // replaced, never edited in place.
        self.members
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn replace(&self, members: Arc<[Arc<Member>]>) {
        metrics::gauge!("shortfleet_grpc_endpoints", "backend" => self.backend.clone())
            .set(members.len() as f64);
        *self
            .members
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = members;
        self.generation.send_modify(|g| *g += 1);
    }

    /// The endpoint for the next call (see the module docs), `None` when
    /// there is none.
    fn pick(&self) -> Option<Arc<Member>> {
        let members = self.members();
        let n = members.len();
        if n <= 1 {
            return members.first().cloned();
        }
        let now = nanos_since_epoch(Instant::now());
        let mut rng = rand::rng();
        let a = rng.random_range(0..n);
        let b = (a + rng.random_range(1..n)) % n;
        let (first, second) = (&members[a], &members[b]);
        let chosen = match (first.available(now), second.available(now)) {
            (true, true) if second.in_flight() < first.in_flight() => second,
            (true, _) => first,
            (false, true) => second,
            // Both drawn are out: any available one, else the one back
            // soonest.
            (false, false) => (0..n)
                .map(|i| &members[(a + i) % n])
                .find(|m| m.available(now))
                .or_else(|| {
                    members
                        .iter()
                        .min_by_key(|m| m.ejected_until.load(Ordering::Relaxed))
                })?,
        };
        Some(chosen.clone())
    }

    /// Waits (up to `wait_for_members`) until some endpoint is known.
    async fn wait_for_first(&self) -> Option<Arc<Member>> {
        let mut changes = self.generation.subscribe();
        let wait = async {
            loop {
                if let Some(member) = self.pick() {
                    return member;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(self.wait_for_members, wait).await.ok()
    }
}

/// Counts a call in flight on its endpoint until dropped: with the
/// response body, so a stream counts for as long as it is open.
struct InFlight(Arc<Member>);

impl InFlight {
    fn start(member: Arc<Member>) -> Self {
        member.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(member)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A call's answer says the endpoint itself cannot serve: `UNAVAILABLE` in
/// the headers (a trailers-only gRPC answer), or a proxy's 502/503/504
/// without any gRPC status.
fn says_unavailable(response: &http::Response<Body>) -> bool {
    match response.headers().get("grpc-status") {
        // 14 is UNAVAILABLE's number on the wire.
        Some(status) => status.as_bytes() == b"14",
        None => matches!(response.status().as_u16(), 502..=504),
    }
}

/// The channel a generated client is built on: cheap to clone, every clone
/// balancing over the same endpoints.
#[derive(Clone)]
pub struct Balanced {
    pool: Arc<Pool>,
}

impl Balanced {
    pub(crate) fn new(pool: Arc<Pool>) -> Self {
        Self { pool }
    }

    /// The endpoints calls are spread over now.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.pool.members().iter().map(|m| m.addr).collect()
    }
}

impl std::fmt::Debug for Balanced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balanced")
            .field("backend", &self.pool.backend)
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

impl Service<http::Request<Body>> for Balanced {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    /// Always ready: readiness is each endpoint's, awaited in the call.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let picked = self.pool.pick();
        let pool = self.pool.clone();
        Box::pin(async move {
            let member = match picked {
                Some(member) => member,
                None => pool.wait_for_first().await.ok_or_else(|| {
                    Box::new(tonic::Status::unavailable(format!(
                        "{}: no endpoint known yet",
                        pool.backend
                    ))) as BoxError
                })?,
            };
            let in_flight = InFlight::start(member);
            let mut channel = in_flight.0.channel.clone();
            let result = match channel.ready().await {
                Ok(ready) => ready.call(request).await,
                Err(e) => Err(e),
            };
            let member = in_flight.0.clone();
            match result {
                Ok(response) if !says_unavailable(&response) => {
                    member.succeeded();
                    Ok(response.map(|inner| {
                        // Counted in flight until the body is done.
                        Body::new(crate::body::Holding::new(inner, in_flight))
                    }))
                }
                Ok(response) => {
                    member.eject();
                    Ok(response)
                }
                Err(e) => {
                    member.eject();
                    Err(e.into())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn pool_of(n: u8) -> Pool {
        let pool = Pool::new("test".into(), Duration::from_millis(10));
        let members: Vec<Arc<Member>> = (1..=n)
            .map(|i| {
                let addr = SocketAddr::from(([127, 0, 0, i], 1));
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect_lazy();
                Arc::new(Member::new(addr, channel))
            })
            .collect();
        pool.replace(members.into());
        pool
    }

    fn picks(pool: &Pool, n: usize) -> std::collections::HashMap<SocketAddr, usize> {
        let mut counts = std::collections::HashMap::new();
        for _ in 0..n {
            *counts.entry(pool.pick().unwrap().addr).or_default() += 1;
        }
        counts
    }

    #[tokio::test]
    async fn idle_endpoints_share_calls_evenly() {
        let pool = pool_of(3);
        let counts = picks(&pool, 30_000);
        for (addr, count) in counts {
            assert!((9_000..11_000).contains(&count), "{addr}: {count}");
        }
    }

    #[tokio::test]
    async fn the_busier_of_two_is_never_chosen_over_an_idle_one() {
        let pool = pool_of(2);
        let busy = InFlight::start(pool.members()[0].clone());
        let counts = picks(&pool, 1_000);
        assert_eq!(counts.get(&busy.0.addr), None);
    }

    #[tokio::test]
    async fn an_ejected_endpoint_gets_nothing_until_its_backoff_ends() {
        let pool = pool_of(3);
        let ejected = pool.members()[1].clone();
        ejected.eject();
        assert!(!picks(&pool, 3_000).contains_key(&ejected.addr));
        // Its time is up: live traffic tries it again.
        ejected.ejected_until.store(1, Ordering::Relaxed);
        assert!(picks(&pool, 3_000).contains_key(&ejected.addr));
        ejected.succeeded();
        assert_eq!(ejected.failures.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn with_every_endpoint_ejected_the_one_back_soonest_is_tried() {
        let pool = pool_of(3);
        let members = pool.members();
        for m in members.iter() {
            m.eject();
        }
        members[2].ejected_until.store(2, Ordering::Relaxed);
        members[0].ejected_until.store(u64::MAX, Ordering::Relaxed);
        members[1].ejected_until.store(u64::MAX, Ordering::Relaxed);
        // 2 is "ejected" until a moment already past: available.
        assert_eq!(picks(&pool, 100).len(), 1);
        members[2]
            .ejected_until
            .store(u64::MAX - 1, Ordering::Relaxed);
        assert_eq!(pool.pick().unwrap().addr, members[2].addr);
    }

    #[tokio::test]
    async fn backoff_doubles_with_consecutive_failures() {
        let pool = pool_of(1);
        let m = pool.members()[0].clone();
        let now = nanos_since_epoch(Instant::now());
        for _ in 0..10 {
            m.eject();
        }
        let left = m.ejected_until.load(Ordering::Relaxed) - now;
        // Ten failures reach the cap (equal jitter: at least half of it).
        assert!(left >= u64::try_from((MAX_EJECTION / 2).as_nanos()).unwrap());
        assert!(left <= u64::try_from((MAX_EJECTION * 2).as_nanos()).unwrap());
    }

    #[tokio::test]
    async fn an_empty_pool_answers_unavailable_after_its_wait() {
        let pool = Arc::new(Pool::new(
            "SHORTFLEET_X_URL".into(),
            Duration::from_millis(20),
        ));
        let mut channel = Balanced::new(pool);
        let err = channel
            .call(http::Request::new(Body::empty()))
            .await
            .unwrap_err();
        let status = err.downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("SHORTFLEET_X_URL"));
    }

    #[test]
    fn unavailable_answers_are_recognised() {
        let with = |status: u16, grpc: Option<&str>| {
            let mut r = http::Response::builder().status(status);
            if let Some(g) = grpc {
                r = r.header("grpc-status", g);
            }
            says_unavailable(&r.body(Body::empty()).unwrap())
        };
        assert!(with(200, Some("14")));
        assert!(!with(200, Some("0")));
        assert!(!with(200, Some("5")));
        assert!(!with(200, None));
        assert!(with(503, None));
        assert!(with(502, None));
        assert!(!with(404, None));
    }
}
