//! Work spread into short pieces with pauses between them, so that on a
//! machine the pipeline shares with the redirect path no piece holds a core
//! (analytics-svc's own, or its PostgreSQL backend's) for longer than a
//! redirect can wait. The scheduler lets a running task finish its slice
//! before a woken one runs, so it is the length of each burst, more than
//! the CPU in all, that sets the redirects' p99: two processes burning
//! 4 ms every 100 ms took a bare hyper server's p99 at 20,000 req/s from
//! 0.52 to 2.4–2.6 ms; the same CPU as 0.4 ms every 10 ms, to 0.71
//! (BENCHMARKS.md, thirteenth session).
//!
//! Users: [`crate::consumer`]'s slices of each click message and the
//! freeing of a stored batch; [`crate::store`]'s counting of a batch's
//! rollups and its rollup statements; [`crate::fold`]'s decoding and
//! adding up of pending rollups.

use std::time::Duration;

/// Pauses before each piece but the first as long as the previous piece
/// took, which keeps the work to about half of one core while it runs.
/// The work itself is unchanged; it only ends later.
#[derive(Debug, Default)]
pub struct Pacer {
    last: Option<Duration>,
}

impl Pacer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs one piece after the pause the previous one earned.
    pub async fn run<T>(&mut self, piece: impl Future<Output = T>) -> T {
        self.pause().await;
        let started = tokio::time::Instant::now();
        let out = piece.await;
        self.took(started.elapsed());
        out
    }

    /// Runs one piece of synchronous work after the pause the previous
    /// one earned.
    pub async fn step<T>(&mut self, piece: impl FnOnce() -> T) -> T {
        self.run(async { piece() }).await
    }

    /// The pause the previous piece earned, if any (for pieces whose pause
    /// is conditional: call [`Pacer::took`] after each).
    pub async fn pause(&mut self) {
        if let Some(pause) = self.last.take() {
            tokio::time::sleep(pause).await;
        }
    }

    /// A piece took `elapsed`: the next one waits as long.
    pub fn took(&mut self, elapsed: Duration) {
        self.last = Some(elapsed);
    }

    /// No pause before the next piece (the work is behind: catching up
    /// comes first).
    pub fn forgive(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_piece_waits_as_long_as_the_last_took() {
        let mut pacer = Pacer::new();
        let mut spans = Vec::new();
        for work in [30, 10, 20] {
            let span = pacer
                .run(async {
                    let started = tokio::time::Instant::now();
                    tokio::time::sleep(Duration::from_millis(work)).await;
                    (started, tokio::time::Instant::now())
                })
                .await;
            spans.push(span);
        }
        for pair in spans.windows(2) {
            let ((started, ended), (next, _)) = (pair[0], pair[1]);
            assert!(
                next - ended >= ended - started,
                "paused {:?} after a piece of {:?}",
                next - ended,
                ended - started
            );
        }
    }

    #[tokio::test]
    async fn a_forgiven_piece_starts_at_once() {
        let mut pacer = Pacer::new();
        pacer.took(Duration::from_secs(60));
        pacer.forgive();
        let started = tokio::time::Instant::now();
        pacer.pause().await;
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
