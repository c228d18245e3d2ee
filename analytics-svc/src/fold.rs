//! Rollups folded in a few seconds after their clicks are stored.
//!
//! A stored batch does not upsert its rollup rows itself: it leaves what it
//! adds to them ([`Rollups`]) as one row of `rollup_pending`, written in the
//! batch's own transaction with its raw clicks ([`pend`]). A [`Folder`]
//! adds every pending row to the rollup tables and deletes them, many
//! batches in one transaction ([`fold_pending`]).
//!
//! Why: a batch touches about seven rollup rows per busy link (hour, day,
//! dimension values, visitors), whoever else touched them a second ago.
//! Upserting them per batch was about 2 µs of PostgreSQL CPU per click at
//! 20,000 clicks/s, a fifth of the whole click pipeline, and its burst once
//! a second is what redirects on the same machine waited behind
//! (BENCHMARKS.md, twelfth session). A fold over five batches upserts each
//! row once instead of five times.
//!
//! Exactly once: a click is stored if and only if its increments are in
//! `rollup_pending` or in the rollups, because its batch's pending row
//! commits with it. A pending row is deleted by the transaction that adds
//! it to the rollups, and a fold takes its rows `FOR UPDATE SKIP LOCKED`,
//! so two replicas folding at once take different rows. A fold that fails
//! or is killed halfway rolls back: its rows stay pending for the next
//! fold, by any replica. Nothing about a pending row belongs to the replica
//! that wrote it.
//!
//! Freshness: under load (batches of 5,000 clicks and more), stats trail
//! the clicks by up to the fold interval (`SHORTFLEET_ROLLUP_FOLD_MS`).
//! A smaller batch, or one closed because messages paused, nudges the
//! folder to fold at once, so a light flow is in the stats as soon as
//! before. Live dashboards hear of new clicks when their batch commits, as
//! before.
//!
//! PostgreSQL down: a fold fails, is logged, and is tried again at the next
//! interval; pending rows wait in the database, their clicks already safe.

use std::{borrow::Cow, sync::Arc, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Datelike, NaiveDate};
use deadpool_postgres::{GenericClient, Pool};
use prost::Message;
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    pace::Pacer,
    store::{Rollups, write_rollups},
};

/// What one stored batch adds to the rollups, as kept in `rollup_pending`
/// (protobuf, so a row written by one release folds in the next).
#[derive(Clone, PartialEq, prost::Message)]
struct Delta {
    #[prost(message, repeated, tag = "1")]
    hourly: Vec<HourRow>,
    #[prost(message, repeated, tag = "2")]
    dimensions: Vec<DimensionRow>,
    #[prost(message, repeated, tag = "3")]
    visitors: Vec<VisitorRow>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HourRow {
    #[prost(string, tag = "1")]
    code: String,
    /// The hour's start, Unix seconds.
    #[prost(int64, tag = "2")]
    hour: i64,
    #[prost(sint32, tag = "3")]
    rule: i32,
    #[prost(string, tag = "4")]
    owner: String,
    #[prost(int64, tag = "5")]
    clicks: i64,
    #[prost(int64, tag = "6")]
    bots: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DimensionRow {
    #[prost(string, tag = "1")]
    code: String,
    /// Days since 0001-01-01 (day 1), as chrono counts from the common era.
    #[prost(int32, tag = "2")]
    day: i32,
    #[prost(sint32, tag = "3")]
    rule: i32,
    #[prost(string, tag = "4")]
    dimension: String,
    #[prost(string, tag = "5")]
    value: String,
    #[prost(int64, tag = "6")]
    clicks: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct VisitorRow {
    #[prost(string, tag = "1")]
    code: String,
    #[prost(int32, tag = "2")]
    day: i32,
    #[prost(sint32, tag = "3")]
    rule: i32,
    #[prost(bytes = "vec", tag = "4")]
    visitor: Vec<u8>,
}

/// `r` as a pending row's bytes.
fn encode(r: &Rollups<'_>) -> Vec<u8> {
    Delta {
        hourly: r
            .hourly
            .iter()
            .map(|(&(code, hour, rule), &(owner, clicks, bots))| HourRow {
                code: code.to_owned(),
                hour: hour.timestamp(),
                rule: rule.into(),
                owner: owner.to_owned(),
                clicks,
                bots,
            })
            .collect(),
        dimensions: r
            .dimensions
            .iter()
            .map(
                |((code, day, rule, dimension, value), &clicks)| DimensionRow {
                    code: (*code).to_owned(),
                    day: day.num_days_from_ce(),
                    rule: (*rule).into(),
                    dimension: (*dimension).to_owned(),
                    value: value.clone().into_owned(),
                    clicks,
                },
            )
            .collect(),
        visitors: r
            .visitors
            .iter()
            .map(|&(code, day, rule, visitor)| VisitorRow {
                code: code.to_owned(),
                day: day.num_days_from_ce(),
                rule: rule.into(),
                visitor: visitor.to_vec(),
            })
            .collect(),
    }
    .encode_to_vec()
}

/// Adds one pending row to `into`, borrowing its strings; an invalid row
/// (which only a bug or a hand edit makes) adds nothing.
fn absorb<'d>(into: &mut Rollups<'d>, d: &'d Delta) -> anyhow::Result<()> {
    fn rule(r: i32) -> anyhow::Result<i16> {
        i16::try_from(r).context("a rule out of range")
    }
    fn day(d: i32) -> anyhow::Result<NaiveDate> {
        NaiveDate::from_num_days_from_ce_opt(d).context("a day out of range")
    }
    // Every key checked first, so a bad row leaves `into` as it was.
    let hourly = d
        .hourly
        .iter()
        .map(|h| {
            let hour = DateTime::from_timestamp(h.hour, 0).context("an hour out of range")?;
            Ok((
                (h.code.as_str(), hour, rule(h.rule)?),
                (h.owner.as_str(), h.clicks, h.bots),
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let dimensions = d
        .dimensions
        .iter()
        .map(|x| {
            let dimension = crate::store::DIMENSIONS
                .into_iter()
                .find(|name| *name == x.dimension)
                .with_context(|| format!("an unknown dimension {:?}", x.dimension))?;
            let key = (
                x.code.as_str(),
                day(x.day)?,
                rule(x.rule)?,
                dimension,
                Cow::Borrowed(x.value.as_str()),
            );
            Ok((key, x.clicks))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let visitors = d
        .visitors
        .iter()
        .map(|v| {
            Ok((
                v.code.as_str(),
                day(v.day)?,
                rule(v.rule)?,
                v.visitor.as_slice(),
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (key, (owner, clicks, bots)) in hourly {
        into.add_to_hour(key, owner, clicks, bots);
    }
    for (key, clicks) in dimensions {
        *into.dimensions.entry(key).or_default() += clicks;
    }
    into.visitors.extend(visitors);
    Ok(())
}

/// Leaves what a batch's new clicks add to the rollups as a pending row,
/// in the batch's transaction (`client`). Nothing for no clicks.
pub async fn pend(
    client: &impl GenericClient,
    r: &Rollups<'_>,
    clicks: usize,
) -> Result<(), tokio_postgres::Error> {
    if clicks == 0 {
        return Ok(());
    }
    let insert = client
        .prepare_cached("INSERT INTO rollup_pending (clicks, delta) VALUES ($1, $2)")
        .await?;
    let clicks = i64::try_from(clicks).unwrap_or(i64::MAX);
    client.execute(&insert, &[&clicks, &encode(r)]).await?;
    Ok(())
}

/// Pending rows per fold transaction: bounds one fold's work, memory and
/// locks. A backlog (after an outage) is folded over several passes.
const BATCHES_PER_FOLD: i64 = 30;

/// What one fold did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Folded {
    /// Batches whose increments were added to the rollups.
    pub batches: usize,
    /// Rows left pending because they do not decode (logged).
    pub invalid: usize,
    /// The fold took as many rows as one may: more may be waiting.
    pub more: bool,
}

/// Adds up to [`BATCHES_PER_FOLD`] pending rows, oldest first, to the
/// rollups and deletes them, in one transaction within `timeout`.
pub async fn fold_pending(pool: &Pool, timeout: Duration) -> anyhow::Result<Folded> {
    let mut client = tokio::time::timeout(timeout, pool.get())
        .await
        .map_err(|_| anyhow::anyhow!("no database connection within {timeout:?}"))??;
    match tokio::time::timeout(timeout, fold_on(&mut client)).await {
        Ok(folded) => folded,
        Err(_) => {
            // Possibly mid-statement: the connection is closed rather than
            // pooled, which rolls the fold back and frees its rows.
            drop(deadpool_postgres::Object::take(client));
            anyhow::bail!("folding pending rollups took longer than {timeout:?}")
        }
    }
}

async fn fold_on(client: &mut deadpool_postgres::Object) -> anyhow::Result<Folded> {
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "SELECT id, delta FROM rollup_pending ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            &[&BATCHES_PER_FOLD],
        )
        .await?;
    let more = rows.len() as i64 == BATCHES_PER_FOLD;
    // Decoding and merging a few seconds' increments is milliseconds of
    // CPU: paced row by row, like the statements that write them
    // ([`crate::pace`]).
    let mut pacer = Pacer::new();
    let mut decoded = Vec::with_capacity(rows.len());
    let mut invalid = 0;
    for row in &rows {
        let id: i64 = row.get(0);
        match pacer.step(|| Delta::decode(row.get::<_, &[u8]>(1))).await {
            Ok(delta) => decoded.push((id, delta)),
            Err(e) => {
                invalid += 1;
                tracing::error!(id, error = %e, "a pending rollup row does not decode; left in rollup_pending");
            }
        }
    }
    let mut merged = Rollups::default();
    let mut ids = Vec::with_capacity(decoded.len());
    for (id, delta) in &decoded {
        match pacer.step(|| absorb(&mut merged, delta)).await {
            Ok(()) => ids.push(*id),
            Err(e) => {
                invalid += 1;
                tracing::error!(
                    id,
                    error = format!("{e:#}"),
                    "a pending rollup row is invalid; left in rollup_pending"
                );
            }
        }
    }
    if !ids.is_empty() {
        write_rollups(&tx, &merged).await?;
        tx.execute("DELETE FROM rollup_pending WHERE id = ANY($1)", &[&ids])
            .await?;
    }
    tx.commit().await?;
    metrics::counter!("shortfleet_rollup_folded_batches_total").increment(ids.len() as u64);
    if invalid > 0 {
        metrics::counter!("shortfleet_rollup_invalid_pending_total").increment(invalid as u64);
    }
    Ok(Folded {
        batches: ids.len(),
        invalid,
        more,
    })
}

/// Batches stored but not yet folded, all replicas together.
pub async fn pending_batches(pool: &Pool, timeout: Duration) -> anyhow::Result<i64> {
    let counting = async {
        let client = pool.get().await?;
        let row = client
            .query_one("SELECT count(*) FROM rollup_pending", &[])
            .await?;
        anyhow::Ok(row.get::<_, i64>(0))
    };
    tokio::time::timeout(timeout, counting)
        .await
        .map_err(|_| anyhow::anyhow!("counting pending rollups took longer than {timeout:?}"))?
}

/// Tells the [`Folder`] to fold now rather than at the next interval, so
/// what was just stored shows in the stats at once (the consumer does when
/// the flow is light).
#[derive(Clone, Default)]
pub struct FoldNudge(Arc<Notify>);

impl FoldNudge {
    pub fn fold_now(&self) {
        // A permit is kept if the folder is busy: it folds again after.
        self.0.notify_one();
    }
}

/// Folds pending rollups every `every`, when nudged, and once more when
/// stopped.
pub struct Folder {
    pub pool: Pool,
    pub every: Duration,
    /// Bounds each fold transaction, and each count of what is pending.
    pub timeout: Duration,
    pub nudge: FoldNudge,
}

/// Fold passes in a row before waiting again: a backlog of more rows is
/// folded over the next intervals rather than in one go.
const PASSES_PER_TURN: usize = 20;

impl Folder {
    pub async fn run(self, stop: CancellationToken) {
        // At once on start: rows a stopped replica left.
        let mut next = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    self.fold_all().await;
                    return;
                }
                () = self.nudge.0.notified() => {}
                () = tokio::time::sleep_until(next) => {}
            }
            next = Instant::now() + self.every;
            self.fold_all().await;
        }
    }

    /// Folds until nothing is pending (or [`PASSES_PER_TURN`]), then
    /// publishes what is left as a gauge.
    async fn fold_all(&self) {
        for _ in 0..PASSES_PER_TURN {
            let started = Instant::now();
            match fold_pending(&self.pool, self.timeout).await {
                Ok(folded) => {
                    metrics::histogram!("shortfleet_rollup_fold_seconds")
                        .record(started.elapsed().as_secs_f64());
                    if !folded.more {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "cannot fold pending rollups yet; trying again later"
                    );
                    break;
                }
            }
        }
        match pending_batches(&self.pool, self.timeout).await {
            Ok(n) => metrics::gauge!("shortfleet_rollup_pending_batches").set(n as f64),
            Err(e) => tracing::debug!(error = format!("{e:#}"), "pending rollups not counted"),
        }
    }
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "shortfleet_rollup_pending_batches",
        metrics::Unit::Count,
        "Stored click batches whose rollup increments wait to be folded in (all replicas), as of this replica's last fold."
    );
    metrics::describe_counter!(
        "shortfleet_rollup_folded_batches_total",
        metrics::Unit::Count,
        "Stored click batches whose rollup increments this replica folded in."
    );
    metrics::describe_counter!(
        "shortfleet_rollup_invalid_pending_total",
        metrics::Unit::Count,
        "Pending rollup rows found undecodable or invalid and left in place (a bug or a hand edit: look at rollup_pending)."
    );
    metrics::describe_histogram!(
        "shortfleet_rollup_fold_seconds",
        metrics::Unit::Seconds,
        "Time to fold one transaction's worth of pending rollup increments."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{enrich::Click, store::rollups};
    use chrono::{TimeDelta, TimeZone, Utc};

    fn clicks(picks: &[(usize, i64, Option<i16>, bool, usize)]) -> Vec<Click> {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 22, 0, 0).unwrap();
        picks
            .iter()
            .enumerate()
            .map(|(i, &(code, minutes, rule, is_bot, value))| Click {
                event_id: i.to_string(),
                code: format!("code{code}"),
                owner: format!("owner{}", code % 2),
                occurred_at: start + TimeDelta::minutes(minutes),
                is_bot,
                referrer_host: ["", "t.co", "example.org"][value % 3].into(),
                browser: ["", "Firefox", "Chrome"][value % 3],
                os: "Linux",
                device: "desktop",
                country: ["", "DE", "FR"][(value + 1) % 3].into(),
                visitor: vec![value as u8],
                rule,
            })
            .collect()
    }

    fn pick() -> impl proptest::strategy::Strategy<Value = (usize, i64, Option<i16>, bool, usize)> {
        (
            0..4usize,
            0..200i64,
            proptest::option::of(0..3i16),
            proptest::bool::weighted(0.2),
            0..5usize,
        )
    }

    proptest::proptest! {
        /// Batches folded together add up to what their clicks add in one
        /// batch: nothing lost, nothing twice, across hours and days.
        #[test]
        fn folded_batches_add_up_to_their_clicks_rolled_up_at_once(
            first in proptest::collection::vec(pick(), 0..150),
            second in proptest::collection::vec(pick(), 0..150),
        ) {
            let (a, b) = (clicks(&first), clicks(&second));
            let deltas: Vec<Delta> = [&a, &b]
                .iter()
                .map(|batch| Delta::decode(encode(&rollups(batch.iter())).as_slice()).unwrap())
                .collect();
            let mut folded = Rollups::default();
            for d in &deltas {
                absorb(&mut folded, d).unwrap();
            }
            proptest::prop_assert_eq!(folded, rollups(a.iter().chain(&b)));
        }
    }

    #[test]
    fn an_invalid_row_adds_nothing() {
        let batch = clicks(&[(0, 1, None, false, 1), (1, 2, Some(2), false, 2)]);
        let good = Delta::decode(encode(&rollups(&batch)).as_slice()).unwrap();
        let mut bad = good.clone();
        bad.dimensions[0].dimension = "shoe size".into();
        let mut r = Rollups::default();
        assert!(absorb(&mut r, &bad).is_err());
        assert_eq!(r, Rollups::default(), "nothing of the bad row is kept");
        absorb(&mut r, &good).unwrap();
        assert_eq!(r, rollups(&batch));
    }
}
