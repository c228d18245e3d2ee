//! Work repeated on a fixed period until shutdown: readiness pings, pool
//! gauges, key snapshots, replica lag, partition upkeep. One loop, so they
//! all stop the same way and pace themselves the same way.

use std::{future::Future, time::Duration};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Runs `tick` at once and then every `period` until `stop` fires. A tick
/// that takes longer than `period` delays the next one instead of being
/// followed by a burst of catch-up ticks; a tick under way when `stop`
/// fires is finished, not cut short.
pub async fn every<F, Fut>(period: Duration, stop: &CancellationToken, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        tick().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn ticks_at_once_then_every_period_until_stopped() {
        let stop = CancellationToken::new();
        let ticks = AtomicUsize::new(0);
        let run = every(Duration::from_millis(20), &stop, || async {
            ticks.fetch_add(1, Ordering::SeqCst);
        });
        let stopper = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.cancel();
        };
        tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(run, stopper) })
            .await
            .expect("stopped once cancelled");
        // At 0, 20, 40 … ms: about ten in 200 ms, never more than fit.
        let n = ticks.load(Ordering::SeqCst);
        assert!((2..=11).contains(&n), "{n} ticks");
    }
}
