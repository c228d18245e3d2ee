//! Reads from a PostgreSQL streaming replica (`SHORTFLEET_DATABASE_READ_URL`)
//! so the primary keeps its capacity for writes. Which read may go there:
//!
//! - **A resolve miss** (`GetLink` without an owner: read-svc filling its
//!   caches) goes to the replica while the replica is no more than
//!   `SHORTFLEET_READ_REPLICA_MAX_LAG_MS` behind the primary; past that
//!   bound, to the primary. A code the replica does not know is asked of
//!   the primary too: a link created a moment ago must never be cached as
//!   missing.
//! - **An owner's read** (`ListLinks`, `GetLink` with an owner) must see
//!   that owner's own writes, whichever write-svc replica took them. It goes
//!   to the replica only once the replica has replayed everything the
//!   primary had committed when the read arrived (the primary's WAL
//!   position, one trivial query, against the replica's replay position),
//!   so a read right after a write never misses it.
//!
//! When the replica is down, lagging or refuses a query, the read goes to
//! the primary: a replica can only take load off, never fail a read. The
//! lag is measured by sampling the primary's WAL position every 100 ms and
//! noting the latest sample the replica has replayed past.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use deadpool_postgres::{Object, Pool};
use tokio_util::sync::CancellationToken;

/// How often the replica's lag is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Where a read went, for `shortfleet_db_reads_total{target}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Replica,
    Primary,
}

/// A WAL position (`pg_lsn`) as a number: `X/Y` is `X << 32 | Y`.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Tracks how far behind the primary the replica is, from samples of the
/// primary's WAL position and the replica's replay position.
#[derive(Debug, Default)]
pub struct LagTracker {
    /// Primary positions sampled and when, oldest first; trimmed to those
    /// the replica has not yet replayed past (plus the latest it has).
    samples: VecDeque<(Instant, u64)>,
    /// The replica holds every commit the primary had made by this instant.
    fresh_as_of: Option<Instant>,
}

impl LagTracker {
    /// Records one sample pair taken at `at`.
    pub fn record(&mut self, at: Instant, primary: u64, replayed: u64) {
        self.samples.push_back((at, primary));
        while let Some(&(t, p)) = self.samples.front() {
            if p > replayed {
                break;
            }
            self.fresh_as_of = Some(t);
            self.samples.pop_front();
        }
    }

    /// The replica could not be asked: it is stale from now on.
    pub fn unreachable(&mut self) {
        self.fresh_as_of = None;
        self.samples.clear();
    }

    /// How far behind the replica is at `now`; `None` if unknown or down.
    pub fn lag(&self, now: Instant) -> Option<Duration> {
        self.fresh_as_of.map(|t| now.saturating_duration_since(t))
    }
}

pub struct ReadReplica {
    replica: Pool,
    primary: Pool,
    max_lag: Duration,
    lag: Arc<Mutex<LagTracker>>,
}

impl ReadReplica {
    pub fn new(replica: Pool, primary: Pool, max_lag: Duration) -> Self {
        Self {
            replica,
            primary,
            max_lag,
            lag: Arc::default(),
        }
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, LagTracker> {
        self.lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A replica connection for a resolve miss, if the replica is within the
    /// lag bound and answers.
    pub async fn within_lag(&self) -> Option<Object> {
        let lag = self.tracker().lag(Instant::now())?;
        if lag > self.max_lag {
            return None;
        }
        self.replica.get().await.ok()
    }

    /// A replica connection that sees every commit the primary had made
    /// when this was called (an owner's read), or `None`.
    pub async fn caught_up(&self) -> Option<Object> {
        // Cheap pre-check: a replica known to be far behind is not asked.
        if self
            .tracker()
            .lag(Instant::now())
            .is_none_or(|lag| lag > self.max_lag)
        {
            return None;
        }
        let primary_lsn = current_lsn(&self.primary).await?;
        let replica = self.replica.get().await.ok()?;
        let replayed = replay_lsn(&replica).await?;
        (replayed >= primary_lsn).then_some(replica)
    }

    /// Samples the lag every [`SAMPLE_EVERY`] until `stop`, publishing it as
    /// `shortfleet_db_replica_lag_seconds` (-1 while the replica is down).
    pub async fn track(self: Arc<Self>, stop: CancellationToken) {
        shortfleet_common::periodic::every(SAMPLE_EVERY, &stop, || async {
            let at = Instant::now();
            // Primary down: nothing to compare with; keep what we know.
            let Some(primary) = current_lsn(&self.primary).await else {
                return;
            };
            let sample = match self.replica.get().await.ok() {
                Some(replica) => replay_lsn(&replica).await.map(|r| (primary, r)),
                None => None,
            };
            let lag = {
                let mut tracker = self.tracker();
                match sample {
                    Some((primary, replayed)) => tracker.record(at, primary, replayed),
                    None => tracker.unreachable(),
                }
                tracker.lag(Instant::now())
            };
            metrics::gauge!("shortfleet_db_replica_lag_seconds")
                .set(lag.map_or(-1.0, |l| l.as_secs_f64()));
        })
        .await;
    }
}

/// The primary's WAL position flushed so far: every commit acknowledged is
/// at or before it (and only flushed WAL is streamed to replicas).
async fn current_lsn(pool: &Pool) -> Option<u64> {
    let client = pool.get().await.ok()?;
    let row = client
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await
        .ok()?;
    parse_lsn(row.get::<_, &str>(0))
}

/// How far a replica has replayed; `None` on a server that is no replica
/// (a misconfigured read URL pointing at a primary is never used).
async fn replay_lsn(client: &Object) -> Option<u64> {
    let row = client
        .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
        .await
        .ok()?;
    parse_lsn(row.get::<_, Option<&str>>(0)?)
}

/// Counts one read by where it went.
pub fn count(target: Target) {
    let target = match target {
        Target::Replica => "replica",
        Target::Primary => "primary",
    };
    metrics::counter!("shortfleet_db_reads_total", "target" => target).increment(1);
}

pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_db_reads_total",
        metrics::Unit::Count,
        "Link reads by the database that answered them (replica, primary)."
    );
    metrics::describe_gauge!(
        "shortfleet_db_replica_lag_seconds",
        metrics::Unit::Seconds,
        "How far the read replica is behind the primary; -1 while it cannot be asked."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_as_postgres_orders_them() {
        assert_eq!(parse_lsn("0/3000000"), Some(0x300_0000));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert!(parse_lsn("1/FF").unwrap() > parse_lsn("0/FFFFFFFF").unwrap());
        assert_eq!(parse_lsn("nonsense"), None);
        assert_eq!(parse_lsn("G/0"), None);
    }

    #[test]
    fn lag_is_the_age_of_the_newest_sample_the_replica_has_replayed() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut lag = LagTracker::default();
        assert_eq!(lag.lag(t0), None);
        // Caught up: fresh as of the sample just taken.
        lag.record(t0, 100, 100);
        assert_eq!(lag.lag(t0 + ms(50)), Some(ms(50)));
        // The primary moves on, the replica does not: it ages.
        lag.record(t0 + ms(100), 200, 100);
        lag.record(t0 + ms(200), 300, 150);
        assert_eq!(lag.lag(t0 + ms(300)), Some(ms(300)));
        // It replays past the second sample: fresh as of that one.
        lag.record(t0 + ms(300), 300, 250);
        assert_eq!(lag.lag(t0 + ms(300)), Some(ms(200)));
        lag.record(t0 + ms(400), 300, 300);
        assert_eq!(lag.lag(t0 + ms(400)), Some(ms(0)));
        // Unreachable: unknown until it answers again.
        lag.unreachable();
        assert_eq!(lag.lag(t0 + ms(500)), None);
    }
}
