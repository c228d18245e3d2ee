//! The one reconnect loop of the fleet's broker links: [`supervise`] runs
//! a session, and after it fails waits a jittered, growing [`Backoff`]
//! before the next one, reporting the dependency in [`Health`].

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use crate::ops::Health;

/// Exponential backoff with jitter, for reconnecting. Jitter keeps a fleet
/// of replicas that lost the broker together from reconnecting in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// 100 ms doubling up to 1 s: what the fleet uses for its broker links.
    /// The cap keeps a restarted broker found within about a second, at
    /// the cost of one connection attempt a second per client while it is
    /// away.
    pub const fn reconnect() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// The next delay; each call moves one step up the ladder.
    pub fn next_delay(&mut self) -> Duration {
        let d = jittered_delay(self.initial, self.max, self.attempt, rand::random());
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleeps the next delay; `false` if `shutdown` fired first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = shutdown.cancelled() => false,
        }
    }
}

/// The delay before retry number `attempt` (0-based): the exponential step
/// `initial * 2^attempt`, capped at `max`, of which the first half is fixed
/// and the second half scaled by `unit` (a random number in `[0, 1)`).
/// "Equal jitter": spread out, yet never a near-zero hammering retry.
pub fn jittered_delay(initial: Duration, max: Duration, attempt: u32, unit: f64) -> Duration {
    let step = initial
        .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .min(max);
    let half = step / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// Handed to a [`supervise`] session so it can say "connected".
pub struct SessionUp {
    health: Option<Health>,
    dependency: &'static str,
    up: Arc<AtomicBool>,
}

impl SessionUp {
    /// Marks the dependency up and resets the backoff for the next failure.
    pub fn up(&self) {
        if let Some(health) = &self.health {
            health.set(self.dependency, true);
        }
        self.up.store(true, Ordering::Relaxed);
    }
}

/// Runs `session` until `shutdown`: each call connects and works until it
/// returns `Ok` (it saw shutdown) or `Err` (the broker link failed). After a
/// failure `dependency` is marked down in `health` (when the link is part
/// of readiness), the failure logged with `what` the session does, and
/// the next call waits out a jittered, growing backoff, which resets once
/// a session reports up.
pub async fn supervise<F, Fut>(
    dependency: &'static str,
    what: &'static str,
    health: Option<Health>,
    shutdown: CancellationToken,
    mut session: F,
) where
    F: FnMut(SessionUp) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Backoff::reconnect();
    while !shutdown.is_cancelled() {
        let up = Arc::new(AtomicBool::new(false));
        let result = session(SessionUp {
            health: health.clone(),
            dependency,
            up: up.clone(),
        })
        .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                if let Some(health) = &health {
                    health.set(dependency, false);
                }
                tracing::warn!(
                    dependency,
                    error = format!("{e:#}"),
                    "{what} interrupted; reconnecting"
                );
            }
        }
        if up.load(Ordering::Relaxed) {
            backoff.reset();
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_up_to_the_cap() {
        let at = |attempt, unit| jittered_delay(100 * MS, 5000 * MS, attempt, unit);
        // With the random half at its maximum the delay is the full step.
        assert_eq!(at(0, 1.0), 100 * MS);
        assert_eq!(at(1, 1.0), 200 * MS);
        assert_eq!(at(5, 1.0), 3200 * MS);
        assert_eq!(at(6, 1.0), 5000 * MS);
        assert_eq!(at(u32::MAX, 1.0), 5000 * MS);
    }

    #[test]
    fn jitter_spans_the_upper_half_of_each_step() {
        assert_eq!(jittered_delay(100 * MS, 5000 * MS, 3, 0.0), 400 * MS);
        assert_eq!(jittered_delay(100 * MS, 5000 * MS, 3, 0.5), 600 * MS);
        // Out-of-range randomness cannot escape the bounds.
        assert_eq!(jittered_delay(100 * MS, 5000 * MS, 3, 7.0), 800 * MS);
        assert_eq!(jittered_delay(100 * MS, 5000 * MS, 3, -1.0), 400 * MS);
    }

    #[test]
    fn backoff_climbs_and_resets() {
        let mut b = Backoff::new(100 * MS, 5000 * MS);
        let first = b.next_delay();
        assert!((50 * MS..=100 * MS).contains(&first), "{first:?}");
        for _ in 0..10 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!((2500 * MS..=5000 * MS).contains(&late), "{late:?}");
        b.reset();
        assert!(b.next_delay() <= 100 * MS);
    }
}
