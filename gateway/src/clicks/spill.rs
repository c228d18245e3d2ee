//! The overflow path of the click hand-off: clicks the full buffer could not
//! take are staged in memory (at most [`STAGE_MAX`]) and appended to the
//! on-disk spool by one task, so the redirect path never waits on a disk.
//! The forwarder replays the spool once click-logger is back.
//!
//! Never drops silently: a full stage, a full spool or a failed write drops
//! the clicks concerned and counts them in `shortfleet_clicks_dropped_total`.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::Context;
use shortfleet_common::{
    click::EncodedClick,
    spool::{Spool, SpoolError},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Clicks held in memory between the full buffer and the disk: about 3 MB
/// with typical headers (30 MB if every click carried maximal headers). At
/// 45,000 redirects/s it covers 200 ms of a disk that stalls.
pub const STAGE_MAX: usize = 10_000;

pub struct Spill {
    staged: Mutex<Vec<EncodedClick>>,
    /// Wakes the [`Spiller`] when the stage has something.
    wake: Notify,
    pub spool: Arc<Spool>,
}

impl Spill {
    /// Opens (and locks) the spool in `dir`; what a previous run left there
    /// is replayed by the forwarder.
    pub async fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<Arc<Self>> {
        let spool = Spool::open(dir, max_bytes)
            .await
            .with_context(|| format!("opening the click spool in {}", dir.display()))?;
        Ok(Arc::new(Self {
            staged: Mutex::new(Vec::new()),
            wake: Notify::new(),
            spool: Arc::new(spool),
        }))
    }

    /// Takes one click for the disk; `false` when the stage is full.
    pub fn stage(&self, event: EncodedClick) -> bool {
        let mut staged = self.lock();
        if staged.len() >= STAGE_MAX {
            return false;
        }
        staged.push(event);
        if staged.len() == 1 {
            self.wake.notify_one();
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<EncodedClick>> {
        self.staged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `events` to the spool, or counts them dropped.
    pub async fn write(&self, events: &[EncodedClick]) {
        if events.is_empty() {
            return;
        }
        match self.spool.append(events).await {
            Ok(()) => {}
            Err(SpoolError::Full(bytes)) => {
                tracing::warn!(
                    clicks = events.len(),
                    spool_bytes = bytes,
                    "click spool full; dropping clicks"
                );
                metrics::counter!("shortfleet_clicks_dropped_total").increment(events.len() as u64);
            }
            Err(SpoolError::Io(e)) => {
                tracing::error!(error = %e, clicks = events.len(), "click spool write failed; dropping clicks");
                metrics::counter!("shortfleet_clicks_dropped_total").increment(events.len() as u64);
            }
        }
    }

    /// Moves everything staged to the disk (one append, one fsync).
    async fn drain(&self) {
        let batch = std::mem::take(&mut *self.lock());
        self.write(&batch).await;
    }
}

/// The task that moves staged clicks to disk.
pub struct Spiller(pub Arc<Spill>);

impl Spiller {
    /// Runs until `shutdown`, then writes what is still staged (the HTTP
    /// server has drained by then, so nothing is staged after it).
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = self.0.wake.notified() => self.0.drain().await,
                () = shutdown.cancelled() => break,
            }
        }
        self.0.drain().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: usize) -> EncodedClick {
        EncodedClick::from(&shortfleet_proto::v1::ClickEvent {
            event_id: format!("e{i}"),
            code: "abc1234".into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn stages_up_to_its_bound_and_spills_to_disk() {
        let dir = std::env::temp_dir().join(format!("sf-gw-spill-{}", uuid::Uuid::new_v4()));
        let spill = Spill::open(&dir, 1 << 30).await.unwrap();
        for i in 0..STAGE_MAX {
            assert!(spill.stage(event(i)));
        }
        assert!(!spill.stage(event(STAGE_MAX)), "the stage is bounded");
        let stop = CancellationToken::new();
        stop.cancel();
        Spiller(spill.clone()).run(stop).await;
        let (path, events) = spill.spool.oldest().await.unwrap().unwrap();
        assert_eq!(events.len(), STAGE_MAX);
        assert_eq!(EncodedClick::from(&events[7]), event(7));
        spill.spool.remove(&path).await.unwrap();
        assert!(spill.stage(event(0)), "room again once spilled");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
