//! Per-upstream protection, in the order a call meets it:
//!
//! 1. circuit breaker: after `failure_threshold` consecutive server-side
//!    failures the upstream is skipped (callers get 503 at once instead of
//!    waiting on timeouts), then one probe is let through (half-open); its
//!    success closes the breaker, its failure reopens it. The wait before a
//!    probe starts at `first_probe_after` and doubles with each failed probe
//!    up to `open_for`, with equal jitter (the fleet's one backoff formula,
//!    [`jittered_delay`]): a restarted upstream is found within `open_for`
//!    (1 s by default) while a long outage costs one probe a second, and
//!    replicas do not probe in step;
//! 2. bulkhead: at most `max_in_flight` concurrent calls, so one slow
//!    upstream cannot take every connection and task of the gateway; excess
//!    calls are shed with 503;
//! 3. retries, only for idempotent calls, only on UNAVAILABLE, with
//!    exponential backoff and full jitter, at most `MAX_RETRIES`, and within a
//!    retry budget (tower's `TpsBudget`: retries may add at most 20 % on top
//!    of recent requests) so retries cannot amplify an outage.
//!
//! A call whose connection broke (the upstream died mid-call, a reset, a
//! GOAWAY) is reported by tonic as INTERNAL or UNKNOWN, or as CANCELLED when
//! the dying connection dropped the request before sending it; none is an
//! answer of the upstream, so [`connection_failure`] turns it into
//! UNAVAILABLE: retried when idempotent (on another replica: the balancer
//! has ejected the broken one), 503 with `Retry-After` at the edge, never
//! 502.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::Rng;
use shortfleet_common::amqp::jittered_delay;
use tokio::sync::Semaphore;
use tonic::{Code, Status};
use tower::retry::budget::{Budget, TpsBudget};

const MAX_RETRIES: u32 = 2;
const FIRST_BACKOFF: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    pub failure_threshold: u32,
    /// The wait before the first probe after the breaker opens.
    pub first_probe_after: Duration,
    /// The longest wait between probes (the ladder's cap).
    pub open_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; everyone else is refused until it reports.
    HalfOpen,
}

/// What the breaker says about one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    Allowed,
    Probe,
    Refused { retry_after: Duration },
}

/// The breaker's state machine, driven by explicit instants; pure unless
/// built [`Breaker::jittered`].
#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    state: State,
    /// Failed probes since the breaker last closed: the backoff step.
    failed_probes: u32,
    /// Draws the jitter of each wait, a number in `[0, 1]`; 1 is no jitter.
    jitter: fn() -> f64,
}

impl Breaker {
    /// Without jitter: each wait is the full step of the ladder.
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            state: State::Closed {
                consecutive_failures: 0,
            },
            failed_probes: 0,
            jitter: || 1.0,
        }
    }

    /// With random equal jitter, as every live breaker runs.
    pub fn jittered(policy: BreakerPolicy) -> Self {
        Self {
            jitter: rand::random::<f64>,
            ..Self::new(policy)
        }
    }

    fn open_until(&mut self, now: Instant) -> State {
        let wait = jittered_delay(
            self.policy.first_probe_after,
            self.policy.open_for,
            self.failed_probes,
            (self.jitter)(),
        );
        State::Open { until: now + wait }
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            State::Closed { .. } => Admission::Allowed,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                Admission::Probe
            }
            State::Open { until } => Admission::Refused {
                retry_after: until - now,
            },
            State::HalfOpen => Admission::Refused {
                retry_after: Duration::from_secs(1),
            },
        }
    }

    pub fn record(&mut self, success: bool, now: Instant) {
        self.state = match (self.state, success) {
            (_, true) => {
                self.failed_probes = 0;
                State::Closed {
                    consecutive_failures: 0,
                }
            }
            (
                State::Closed {
                    consecutive_failures,
                },
                false,
            ) if consecutive_failures + 1 < self.policy.failure_threshold => State::Closed {
                consecutive_failures: consecutive_failures + 1,
            },
            (State::HalfOpen, false) => {
                self.failed_probes = self.failed_probes.saturating_add(1);
                self.open_until(now)
            }
            (_, false) => self.open_until(now),
        };
    }

    /// 0 closed, 1 open, 2 half-open (the `shortfleet_breaker_state` gauge).
    pub fn gauge(&self) -> f64 {
        match self.state {
            State::Closed { .. } => 0.0,
            State::Open { .. } => 1.0,
            State::HalfOpen => 2.0,
        }
    }
}

/// Status metadata telling the HTTP layer when the breaker lets calls
/// through again, so `Retry-After` says the real time.
const RETRY_AFTER_METADATA: &str = "sf-retry-after-ms";

fn refusal(upstream: &str, retry_after: Duration) -> Status {
    let millis = retry_after.as_millis();
    let mut status = Status::unavailable(format!("{upstream} circuit open; retry in {millis} ms"));
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(millis.to_string()) {
        status.metadata_mut().insert(RETRY_AFTER_METADATA, v);
    }
    status
}

/// How long a breaker refusal asked callers to wait, if `status` is one.
pub fn retry_after_hint(status: &Status) -> Option<Duration> {
    let millis = status
        .metadata()
        .get(RETRY_AFTER_METADATA)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_millis(millis))
}

/// A server-side failure: counts against the breaker and may be retried.
///
/// Only faults of the upstream itself count: it is unreachable or
/// overloaded (UNAVAILABLE, CANCELLED), too slow (DEADLINE_EXCEEDED), or
/// broke (INTERNAL, UNKNOWN). Every answer about the request itself
/// (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION,
/// PERMISSION_DENIED, UNAUTHENTICATED, OUT_OF_RANGE, RESOURCE_EXHAUSTED…)
/// is a working upstream and resets the count: a client can only reach a
/// breaker by finding an upstream bug, and every service refuses bad input
/// with INVALID_ARGUMENT before it reaches a datastore.
pub fn is_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
    )
}

/// A status tonic made from a broken connection (it carries the transport
/// error as its source; an upstream's own answer never does) becomes
/// UNAVAILABLE: the upstream did not answer, it went away.
pub fn connection_failure(status: Status) -> Status {
    let broken = matches!(
        status.code(),
        Code::Internal | Code::Unknown | Code::Cancelled
    ) && std::error::Error::source(&status).is_some();
    if broken {
        Status::unavailable(format!("connection lost: {}", status.message()))
    } else {
        status
    }
}

pub struct Guard {
    name: &'static str,
    breaker: Mutex<Breaker>,
    permits: Arc<Semaphore>,
    budget: TpsBudget,
}

impl Guard {
    pub fn new(name: &'static str, policy: BreakerPolicy, max_in_flight: usize) -> Self {
        Self {
            name,
            breaker: Mutex::new(Breaker::jittered(policy)),
            permits: Arc::new(Semaphore::new(max_in_flight)),
            budget: TpsBudget::new(Duration::from_secs(10), 10, 0.2),
        }
    }

    /// Runs `attempt` under the breaker and bulkhead, retrying idempotent
    /// calls as described in the module docs.
    pub async fn call<T, F, Fut>(&self, idempotent: bool, mut attempt: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.budget.deposit();
        let mut retries = 0;
        loop {
            let admission = self.lock().admit(Instant::now());
            if let Admission::Refused { retry_after } = admission {
                self.publish();
                return Err(refusal(self.name, retry_after));
            }
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                metrics::counter!("shortfleet_bulkhead_rejections_total", "upstream" => self.name)
                    .increment(1);
                if admission == Admission::Probe {
                    // The probe never ran: let the next caller probe.
                    self.lock().record(false, Instant::now());
                }
                return Err(Status::unavailable(format!("{} is saturated", self.name)));
            };
            let result = attempt().await.map_err(connection_failure);
            drop(permit);
            let failed = result.as_ref().err().is_some_and(|s| is_failure(s.code()));
            self.lock().record(!failed, Instant::now());
            self.publish();
            let retryable = matches!(&result, Err(s) if s.code() == Code::Unavailable);
            if !(idempotent && retryable && retries < MAX_RETRIES && self.budget.withdraw()) {
                return result;
            }
            retries += 1;
            metrics::counter!("shortfleet_upstream_retries_total", "upstream" => self.name)
                .increment(1);
            let cap = FIRST_BACKOFF * 2u32.pow(retries);
            let jitter = rand::rng().random_range(0..=cap.as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self) {
        let state = self.lock().gauge();
        metrics::gauge!("shortfleet_breaker_state", "upstream" => self.name).set(state);
    }
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_bulkhead_rejections_total",
        metrics::Unit::Count,
        "Upstream calls refused because the upstream's concurrency limit was reached, by upstream."
    );
    metrics::describe_counter!(
        "shortfleet_upstream_retries_total",
        metrics::Unit::Count,
        "Retried idempotent upstream calls, by upstream."
    );
    metrics::describe_gauge!(
        "shortfleet_breaker_state",
        "Circuit breaker state by upstream: 0 closed, 1 open, 2 half-open."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_threshold: 3,
            first_probe_after: Duration::from_secs(5),
            open_for: Duration::from_secs(5),
        }
    }

    #[test]
    fn probes_start_early_and_back_off_to_the_cap() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerPolicy {
            failure_threshold: 1,
            first_probe_after: Duration::from_millis(100),
            open_for: Duration::from_secs(1),
        });
        b.record(false, t0);
        let mut at = t0;
        let mut waits = Vec::new();
        for _ in 0..6 {
            let Admission::Refused { retry_after } = b.admit(at) else {
                panic!("open")
            };
            waits.push(retry_after.as_millis());
            at += retry_after;
            assert_eq!(b.admit(at), Admission::Probe);
            b.record(false, at);
        }
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        // A good probe closes it and resets the ladder.
        let Admission::Refused { retry_after } = b.admit(at) else {
            panic!("open")
        };
        at += retry_after;
        assert_eq!(b.admit(at), Admission::Probe);
        b.record(true, at);
        b.record(false, at);
        assert_eq!(
            b.admit(at),
            Admission::Refused {
                retry_after: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn jittered_waits_stay_within_half_and_full_step() {
        let t0 = Instant::now();
        for _ in 0..50 {
            let mut b = Breaker::jittered(BreakerPolicy {
                failure_threshold: 1,
                first_probe_after: Duration::from_millis(100),
                open_for: Duration::from_secs(1),
            });
            b.record(false, t0);
            let Admission::Refused { retry_after } = b.admit(t0) else {
                panic!("open")
            };
            assert!(
                (50..=100).contains(&retry_after.as_millis()),
                "{retry_after:?}"
            );
        }
    }

    #[test]
    fn a_broken_connection_is_unavailable_not_an_upstream_error() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let broken = Status::from_error(Box::new(io));
        assert!(matches!(
            broken.code(),
            Code::Unknown | Code::Internal | Code::Unavailable
        ));
        assert_eq!(connection_failure(broken).code(), Code::Unavailable);
        // A request the dying connection dropped unsent (hyper: canceled).
        let mut dropped = Status::cancelled("request has been canceled");
        dropped.set_source(std::sync::Arc::new(std::io::Error::other("canceled")));
        assert_eq!(connection_failure(dropped).code(), Code::Unavailable);
        // An upstream's own INTERNAL or CANCELLED answer stays what it is.
        assert_eq!(
            connection_failure(Status::internal("bug")).code(),
            Code::Internal
        );
        assert_eq!(
            connection_failure(Status::cancelled("gone")).code(),
            Code::Cancelled
        );
    }

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_probe() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        b.record(false, t0);
        b.record(false, t0);
        assert_eq!(b.admit(t0), Admission::Allowed);
        b.record(false, t0);
        assert_eq!(
            b.admit(t0 + Duration::from_secs(1)),
            Admission::Refused {
                retry_after: Duration::from_secs(4)
            }
        );
        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.admit(later), Admission::Probe);
        // Only one probe at a time.
        assert!(matches!(b.admit(later), Admission::Refused { .. }));
        b.record(true, later);
        assert_eq!(b.admit(later), Admission::Allowed);
        assert_eq!(b.gauge(), 0.0);
    }

    #[test]
    fn a_failed_probe_reopens_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        for _ in 0..3 {
            b.record(false, t0);
        }
        let probe_at = t0 + Duration::from_secs(5);
        assert_eq!(b.admit(probe_at), Admission::Probe);
        b.record(false, probe_at);
        assert!(matches!(b.admit(probe_at), Admission::Refused { .. }));
        assert_eq!(b.gauge(), 1.0);

        let mut c = Breaker::new(policy());
        c.record(false, t0);
        c.record(false, t0);
        c.record(true, t0);
        c.record(false, t0);
        c.record(false, t0);
        assert_eq!(c.admit(t0), Admission::Allowed);
    }

    #[tokio::test]
    async fn retries_only_idempotent_calls_on_unavailable() {
        let guard = Guard::new("test", policy(), 4);
        let mut calls = 0;
        let r: Result<(), Status> = guard
            .call(true, || {
                calls += 1;
                async { Err(Status::unavailable("down")) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 1 + MAX_RETRIES);

        let guard = Guard::new("test", policy(), 4);
        let mut calls = 0;
        let _ = guard
            .call(false, || {
                calls += 1;
                async { Err::<(), _>(Status::unavailable("down")) }
            })
            .await;
        assert_eq!(calls, 1);

        let guard = Guard::new("test", policy(), 4);
        let mut calls = 0;
        let _ = guard
            .call(true, || {
                calls += 1;
                async { Err::<(), _>(Status::not_found("no")) }
            })
            .await;
        assert_eq!(calls, 1, "client errors are never retried");
    }

    #[tokio::test]
    async fn an_open_breaker_refuses_without_calling() {
        let guard = Guard::new("test", policy(), 4);
        for _ in 0..3 {
            let _ = guard
                .call(false, || async {
                    Err::<(), _>(Status::unavailable("down"))
                })
                .await;
        }
        let mut called = false;
        let r = guard
            .call(false, || {
                called = true;
                async { Ok::<(), Status>(()) }
            })
            .await;
        assert_eq!(r.unwrap_err().code(), Code::Unavailable);
        assert!(!called);
    }
}
