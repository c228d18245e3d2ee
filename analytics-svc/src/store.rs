//! The analytics database: batched, idempotent writes of clicks, the
//! rollup upserts, and the queries behind the stats endpoints.
//!
//! A batch is one transaction: raw clicks are copied in (the primary key
//! refuses any already stored, and the batch is then inserted again with
//! ON CONFLICT DO NOTHING), and only the rows actually inserted feed the
//! rollups, so a redelivered click never counts twice. What they add to
//! the rollups is left pending in the same transaction and folded in a few
//! seconds later, many batches at once ([`crate::fold`]). The consumer
//! copies each message in as it arrives ([`CopyStream`]) and falls back to
//! [`write_batch`] for the whole batch if that transaction cannot commit.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::{GenericClient, Pool};
use futures::SinkExt;
use tokio_postgres::{
    CopyInSink,
    error::SqlState,
    types::{IsNull, ToSql, Type},
};

use crate::enrich::Click;

/// A rule index as the "rule" dimension and the REST `?rule=` name it.
pub fn rule_name(rule: Option<i16>) -> Cow<'static, str> {
    // Indexes are 0..64 (enrich refuses others): named without allocating.
    const NAMES: [&str; 64] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31",
        "32", "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46",
        "47", "48", "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60", "61",
        "62", "63",
    ];
    match rule {
        None => Cow::Borrowed("none"),
        Some(r) => usize::try_from(r)
            .ok()
            .and_then(|i| NAMES.get(i))
            .map_or_else(|| Cow::Owned(r.to_string()), |name| Cow::Borrowed(*name)),
    }
}

/// The rollups' key for "sent by no rule" (a click of a link without rules,
/// or of one whose rules all missed).
pub const NO_RULE: i16 = -1;

/// A link's hour sent by one rule: (code, hour, rule).
pub type HourKey<'a> = (&'a str, DateTime<Utc>, i16);

/// A link's day, rule, dimension and value: (code, day, rule, dimension, value).
pub type DimensionKey<'a> = (&'a str, NaiveDate, i16, &'static str, Cow<'a, str>);

/// The dimensions of [`DimensionKey`], by the names stats report them under.
pub const DIMENSIONS: [&str; 6] = ["referrer", "browser", "os", "device", "country", "rule"];

/// A human visitor of a link on a day, by rule: (code, day, rule, visitor).
pub type VisitorKey<'a> = (&'a str, NaiveDate, i16, &'a [u8]);

/// Hash maps with a fast (not DoS-hardened) hasher: their keys are the
/// batch's own clicks, already validated, and every human click updates
/// seven entries, which a tree paid for in key comparisons (about a seventh
/// of analytics-svc's CPU in the profile). Rows are sorted when written.
type Fast = foldhash::fast::RandomState;

/// Rollup increments for a set of newly stored clicks, borrowing their
/// strings. Every key carries the rule that sent the clicks ([`NO_RULE`]:
/// none), so stats by rule read rollups like whole-link stats do.
#[derive(Debug, Default, PartialEq)]
pub struct Rollups<'a> {
    /// (code, hour, rule) → (owner, clicks, bots)
    pub hourly: HashMap<HourKey<'a>, (&'a str, i64, i64), Fast>,
    /// (code, day, rule, dimension, value) → human clicks
    pub dimensions: HashMap<DimensionKey<'a>, i64, Fast>,
    /// (code, day, rule, visitor) of humans
    pub visitors: HashSet<VisitorKey<'a>, Fast>,
}

impl<'a> Rollups<'a> {
    /// Adds human clicks and bots to a link's hour.
    pub fn add_to_hour(&mut self, key: HourKey<'a>, owner: &'a str, clicks: i64, bots: i64) {
        let entry = self.hourly.entry(key).or_insert((owner, 0, 0));
        // A link has one owner; should clicks disagree, the least, as the
        // daily rollup's `min(owner)` takes it.
        entry.0 = entry.0.min(owner);
        entry.1 += clicks;
        entry.2 += bots;
    }
}

/// Everything a click adds to the rollups except its visitor. Clicks of a
/// batch agree on all of it far more often than not (the same link, hour,
/// rule, browser, referrer…), so they are counted by this key first, one
/// hash-map entry per click, and only each distinct group is spread over
/// the hourly and dimension rows: seven entries per group instead of per
/// click (BENCHMARKS.md, eighth session).
#[derive(PartialEq, Eq, Hash)]
struct Group<'a> {
    code: &'a str,
    owner: &'a str,
    hour: DateTime<Utc>,
    rule: Option<i16>,
    is_bot: bool,
    referrer_host: &'a str,
    browser: &'static str,
    os: &'static str,
    device: &'static str,
    country: &'a str,
}

/// The rollups of `clicks` at once (tests compare with it);
/// [`RollupBuilder`] takes them in pieces, as batches are written.
#[cfg(test)]
pub(crate) fn rollups<'a>(clicks: impl IntoIterator<Item = &'a Click>) -> Rollups<'a> {
    let mut builder = RollupBuilder::default();
    builder.add(clicks);
    builder.finish()
}

/// Rollups gathered piece by piece: clicks are counted by [`Group`] (and
/// their visitors kept) as they are added, then each group is spread over
/// the hourly and dimension rows once, by [`RollupBuilder::finish`].
#[derive(Default)]
pub struct RollupBuilder<'a> {
    groups: HashMap<Group<'a>, i64, Fast>,
    rollups: Rollups<'a>,
}

impl<'a> RollupBuilder<'a> {
    pub fn add(&mut self, clicks: impl IntoIterator<Item = &'a Click>) {
        for c in clicks {
            let hour = hour_of(c.occurred_at);
            if !c.is_bot {
                // An hour's truncation keeps its UTC day.
                self.rollups.visitors.insert((
                    &c.code,
                    hour.date_naive(),
                    c.rule.unwrap_or(NO_RULE),
                    &c.visitor,
                ));
            }
            *self
                .groups
                .entry(Group {
                    code: &c.code,
                    owner: &c.owner,
                    hour,
                    rule: c.rule,
                    is_bot: c.is_bot,
                    referrer_host: &c.referrer_host,
                    browser: c.browser,
                    os: c.os,
                    device: c.device,
                    country: &c.country,
                })
                .or_default() += 1;
        }
    }

    pub fn finish(self) -> Rollups<'a> {
        let mut r = self.rollups;
        for (g, n) in self.groups {
            let rule = g.rule.unwrap_or(NO_RULE);
            if g.is_bot {
                r.add_to_hour((g.code, g.hour, rule), g.owner, 0, n);
                continue;
            }
            r.add_to_hour((g.code, g.hour, rule), g.owner, n, 0);
            let day = g.hour.date_naive();
            for (dimension, value) in [
                ("referrer", g.referrer_host),
                ("browser", g.browser),
                ("os", g.os),
                ("device", g.device),
                ("country", g.country),
            ] {
                if !value.is_empty() {
                    *r.dimensions
                        .entry((g.code, day, rule, dimension, Cow::Borrowed(value)))
                        .or_default() += n;
                }
            }
            *r.dimensions
                .entry((g.code, day, rule, "rule", rule_name(g.rule)))
                .or_default() += n;
        }
        r
    }
}

/// The UTC hour `t` falls in (the rollups' hour, and where a stats query
/// starts reading them), by arithmetic on its timestamp: chrono's
/// `duration_trunc`, once per click, was 2.6 % of analytics-svc's CPU.
pub fn hour_of(t: DateTime<Utc>) -> DateTime<Utc> {
    let secs = t.timestamp();
    DateTime::from_timestamp(secs - secs.rem_euclid(3600), 0).unwrap_or(t)
}

/// What a committed batch added.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// Clicks inserted (redeliveries already stored are not).
    pub new: usize,
    /// New human clicks per (owner, code): what live dashboards are told.
    pub counted: BTreeMap<(String, String), u64>,
}

/// Stores a batch in one transaction within `timeout`: what it added. A
/// timeout is `Unavailable`: if the commit did land, the retry finds every
/// click already stored and adds nothing.
pub async fn write_batch(
    pool: &Pool,
    clicks: &[Click],
    timeout: Duration,
) -> Result<Stored, WriteError> {
    tokio::time::timeout(timeout, write_batch_now(pool, clicks))
        .await
        .map_err(|_| {
            WriteError::Unavailable(anyhow::anyhow!(
                "storing {} clicks took longer than {timeout:?}",
                clicks.len()
            ))
        })?
}

async fn write_batch_now(pool: &Pool, clicks: &[Click]) -> Result<Stored, WriteError> {
    let mut client = pool.get().await?;
    // Nearly every batch is all new clicks: COPY them, which costs
    // PostgreSQL about a third of an INSERT that checks each for a
    // conflict (BENCHMARKS.md). The primary key still refuses any click
    // already stored (a redelivery, a batch resent upstream) or repeated
    // in the batch; then the whole batch is rolled back and written again
    // click by click with ON CONFLICT DO NOTHING. So a click counts once
    // whichever way its batch went.
    let tx = client.transaction().await?;
    match copy_clicks(&tx, clicks).await {
        Ok(()) => {
            let stored = roll_up(&tx, &clicks.iter().collect::<Vec<_>>()).await?;
            tx.commit().await?;
            metrics::counter!("shortfleet_click_batches_total", "path" => "copy").increment(1);
            return Ok(stored);
        }
        Err(CopyFailed::Database(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.rollback().await?;
        }
        Err(e) => return Err(e.into()),
    }
    metrics::counter!("shortfleet_click_batches_total", "path" => "dedupe").increment(1);
    let tx = client.transaction().await?;
    let new = insert_new_clicks(&tx, clicks).await?;
    // A click repeated inside one batch is inserted once; count it once.
    let mut seen = HashSet::new();
    let fresh: Vec<&Click> = clicks
        .iter()
        .filter(|c| new.contains(c.event_id.as_str()) && seen.insert(c.event_id.as_str()))
        .collect();
    let stored = roll_up(&tx, &fresh).await?;
    tx.commit().await?;
    Ok(stored)
}

/// Leaves what `fresh` (clicks just stored, each once) adds to the rollups
/// pending, in the caller's transaction ([`crate::fold`]): what they add.
async fn roll_up(
    client: &impl GenericClient,
    fresh: &[&Click],
) -> Result<Stored, tokio_postgres::Error> {
    // A second's clicks are milliseconds of counting: paced
    // ([`crate::pace`]), the transaction open a little longer.
    let mut builder = RollupBuilder::default();
    let mut pacer = crate::pace::Pacer::new();
    for piece in fresh.chunks(ROLL_UP_PIECE) {
        pacer.step(|| builder.add(piece.iter().copied())).await;
    }
    crate::fold::pend(client, &builder.finish(), fresh.len()).await?;
    Ok(Stored {
        new: fresh.len(),
        counted: human_counts(fresh),
    })
}

/// Clicks counted into the rollups between pauses: about half a
/// millisecond of CPU.
const ROLL_UP_PIECE: usize = 2_048;

/// The columns of a raw click, in the order both writes use.
const CLICK_COLUMNS: &str = "occurred_at, event_id, code, owner, is_bot, referrer_host, browser, os, device, country, visitor, rule";

/// The raw-click COPY, in [`CLICK_COLUMNS`] order, binary.
fn copy_statement() -> String {
    format!("COPY clicks ({CLICK_COLUMNS}) FROM STDIN (FORMAT binary)")
}

/// The COPY's column types, in [`CLICK_COLUMNS`] order.
const CLICK_TYPES: [Type; 12] = [
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::BOOL,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::INT2,
];

/// One click as a COPY row, in [`CLICK_COLUMNS`] order.
fn copy_row(c: &Click) -> [&(dyn ToSql + Sync); 12] {
    [
        &c.occurred_at,
        &c.event_id,
        &c.code,
        &c.owner,
        &c.is_bot,
        &c.referrer_host,
        &c.browser,
        &c.os,
        &c.device,
        &c.country,
        &c.visitor,
        &c.rule,
    ]
}

/// Every click by binary COPY; fails (unique violation) if any is stored
/// already or repeats within `clicks`.
async fn copy_clicks(
    tx: &deadpool_postgres::Transaction<'_>,
    clicks: &[Click],
) -> Result<(), CopyFailed> {
    let mut rows = CopyRows::new(tx.copy_in(&copy_statement()).await?);
    rows.write(clicks).await?;
    rows.finish().await
}

/// Why clicks could not be copied.
#[derive(Debug, thiserror::Error)]
enum CopyFailed {
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
    /// A value its column type refused (types are fixed: not expected).
    #[error("a click could not be encoded for COPY: {0}")]
    Encoding(Box<dyn std::error::Error + Sync + Send>),
}

/// Bytes of rows handed to the connection at a time. tokio-postgres's
/// `BinaryCopyInWriter` hands over every 4 KiB, about 20 clicks, through
/// a one-slot channel: each hand-over waits for the connection task to
/// take the one before, a wake-up and a context switch per 20 clicks, and
/// the sends and wake-ups were about a tenth of analytics-svc's CPU
/// (BENCHMARKS.md, twelfth session). 64 KiB is about 300 clicks.
const COPY_CHUNK: usize = 64 * 1024;

/// An open binary COPY of raw clicks, in [`CLICK_COLUMNS`] order: rows
/// framed as PostgreSQL's binary COPY format defines them (the signature,
/// then per row its field count and each field's length and bytes, each
/// value encoded by its `ToSql`), sent [`COPY_CHUNK`] bytes at a time.
struct CopyRows {
    sink: std::pin::Pin<Box<CopyInSink<Bytes>>>,
    buf: BytesMut,
}

impl CopyRows {
    /// The binary COPY header: the 11-byte signature (ending in a NUL),
    /// then the flags and the header extension's length, both 0 as i32.
    const HEADER: &'static [u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

    fn new(sink: CopyInSink<Bytes>) -> Self {
        let mut buf = BytesMut::with_capacity(COPY_CHUNK + 4096);
        buf.put_slice(Self::HEADER);
        Self {
            sink: Box::pin(sink),
            buf,
        }
    }

    async fn write(&mut self, clicks: &[Click]) -> Result<(), CopyFailed> {
        for c in clicks {
            self.buf.put_i16(CLICK_TYPES.len() as i16);
            for (value, ty) in copy_row(c).into_iter().zip(&CLICK_TYPES) {
                let at = self.buf.len();
                self.buf.put_i32(0);
                let len = match value
                    .to_sql_checked(ty, &mut self.buf)
                    .map_err(CopyFailed::Encoding)?
                {
                    IsNull::Yes => -1,
                    IsNull::No => i32::try_from(self.buf.len() - at - 4)
                        .map_err(|e| CopyFailed::Encoding(e.into()))?,
                };
                self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
            if self.buf.len() >= COPY_CHUNK {
                self.sink.send(self.buf.split().freeze()).await?;
            }
        }
        Ok(())
    }

    /// Hands what is gathered to the connection now, so PostgreSQL works
    /// on a paced piece while analytics-svc pauses.
    async fn flush(&mut self) -> Result<(), CopyFailed> {
        if !self.buf.is_empty() {
            self.sink.send(self.buf.split().freeze()).await?;
        }
        Ok(())
    }

    /// Sends the rest and the trailer, and ends the COPY.
    async fn finish(&mut self) -> Result<(), CopyFailed> {
        self.buf.put_i16(-1);
        self.sink.send(self.buf.split().freeze()).await?;
        self.sink.as_mut().finish().await?;
        Ok(())
    }
}

/// A batch written while it is gathered: one transaction whose COPY takes
/// each message's clicks as the message arrives, then the batch's pending
/// rollup row ([`crate::fold`]) and the commit when the batch closes. PostgreSQL's work for the raw rows is
/// thereby spread over the batch's second instead of arriving at once
/// when it closes, where it made every redirect of the moment wait behind
/// it on a shared machine (the fixed-rate tail, BENCHMARKS.md).
///
/// A fast path only, like [`write_batch`]'s COPY: any failure (a click
/// already stored, a broken connection, a deadline) abandons it, which
/// closes its connection and so rolls the transaction back, and the
/// caller stores the batch with [`write_batch`], whose primary key makes
/// the count exact whichever way the batch went.
pub struct CopyStream {
    /// `None` once committed (the connection went back to the pool).
    client: Option<deadpool_postgres::Object>,
    rows: CopyRows,
    timeout: Duration,
}

impl CopyStream {
    /// Begins the transaction and its COPY, within `timeout`.
    pub async fn open(pool: &Pool, timeout: Duration) -> anyhow::Result<Self> {
        let opening = async {
            let client = pool.get().await?;
            client.batch_execute("BEGIN").await?;
            let rows = CopyRows::new(client.copy_in(&copy_statement()).await?);
            anyhow::Ok(Self {
                client: Some(client),
                rows,
                timeout,
            })
        };
        tokio::time::timeout(timeout, opening)
            .await
            .map_err(|_| anyhow::anyhow!("opening a click COPY took longer than {timeout:?}"))?
    }

    /// Copies `clicks` in and hands them to the connection, within the
    /// stream's timeout.
    pub async fn write(&mut self, clicks: &[Click]) -> anyhow::Result<()> {
        let rows = &mut self.rows;
        let writing = async move {
            rows.write(clicks).await?;
            rows.flush().await
        };
        tokio::time::timeout(self.timeout, writing)
            .await
            .map_err(|_| anyhow::anyhow!("copying {} clicks took too long", clicks.len()))?
            .map_err(Into::into)
    }

    /// Ends the COPY, leaves what every click of `clicks` (all that were
    /// written, in any order) adds to the rollups pending, and commits,
    /// within the timeout.
    pub async fn commit(mut self, clicks: &[Click]) -> anyhow::Result<Stored> {
        let timeout = self.timeout;
        let committing = async {
            self.rows.finish().await?;
            let client = self
                .client
                .as_ref()
                .context("the stream has no connection")?;
            let stored = roll_up(client, &clicks.iter().collect::<Vec<_>>()).await?;
            client.batch_execute("COMMIT").await?;
            anyhow::Ok(stored)
        };
        let stored = tokio::time::timeout(timeout, committing)
            .await
            .map_err(|_| {
                anyhow::anyhow!("committing a click COPY took longer than {timeout:?}")
            })??;
        // Committed: the connection is clean and goes back to the pool.
        self.client = None;
        metrics::counter!("shortfleet_click_batches_total", "path" => "stream").increment(1);
        Ok(stored)
    }
}

impl Drop for CopyStream {
    /// Not committed: the connection is closed rather than pooled, which
    /// ends the COPY and rolls the transaction back on the server.
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// Inserts the clicks not stored yet; their event ids.
async fn insert_new_clicks(
    tx: &deadpool_postgres::Transaction<'_>,
    clicks: &[Click],
) -> Result<HashSet<String>, tokio_postgres::Error> {
    // Columns borrow the clicks' strings: no copy per click.
    let col = |f: fn(&Click) -> &str| clicks.iter().map(f).collect::<Vec<&str>>();
    let times: Vec<DateTime<Utc>> = clicks.iter().map(|c| c.occurred_at).collect();
    let bots: Vec<bool> = clicks.iter().map(|c| c.is_bot).collect();
    let visitors: Vec<&[u8]> = clicks.iter().map(|c| c.visitor.as_slice()).collect();
    let rules: Vec<Option<i16>> = clicks.iter().map(|c| c.rule).collect();
    let inserted = tx
        .query(
            &tx.prepare_cached(&format!(
                "INSERT INTO clicks ({CLICK_COLUMNS})
                 SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::bool[],
                                      $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bytea[],
                                      $12::int2[])
                 ON CONFLICT DO NOTHING
                 RETURNING event_id"
            ))
            .await?,
            &[
                &times,
                &col(|c| &c.event_id),
                &col(|c| &c.code),
                &col(|c| &c.owner),
                &bots,
                &col(|c| &c.referrer_host),
                &col(|c| c.browser),
                &col(|c| c.os),
                &col(|c| c.device),
                &col(|c| &c.country),
                &visitors,
                &rules,
            ],
        )
        .await?;
    Ok(inserted.iter().map(|r| r.get(0)).collect())
}

/// New human clicks per (owner, code), as the link's `clicks` counts them.
pub fn human_counts(fresh: &[&Click]) -> BTreeMap<(String, String), u64> {
    // Counted on borrowed keys; each distinct pair is copied once.
    let mut counted: HashMap<(&str, &str), u64, Fast> = HashMap::default();
    for c in fresh.iter().filter(|c| !c.is_bot) {
        *counted.entry((&c.owner, &c.code)).or_insert(0) += 1;
    }
    counted
        .into_iter()
        .map(|((owner, code), n)| ((owner.to_owned(), code.to_owned()), n))
        .collect()
}

/// Rollup rows per statement. A fold touches about seven rollup rows per
/// link clicked since the last (hour, day, five dimension values,
/// visitors); with 1,000 busy links that is ~7,000 upserts at ~3–6 µs
/// each, which as one statement per table took PostgreSQL's backend
/// 40–50 ms of one core in one go, while every redirect on the machine
/// waited behind it (BENCHMARKS.md, eleventh session). Chunks let a
/// [`crate::pace::Pacer`] spread it: before each statement but the first
/// it pauses as long as the previous one took. 1,000 rows a statement
/// still held PostgreSQL's core for about 3 ms at a time; 250 keep each
/// piece under a millisecond (thirteenth session).
const ROLLUP_CHUNK: usize = 250;

/// Adds `r` to the rollup tables, in the caller's transaction.
pub(crate) async fn write_rollups(
    tx: &impl GenericClient,
    r: &Rollups<'_>,
) -> Result<(), tokio_postgres::Error> {
    // One array per column (a pass over the chunk's rollup rows each:
    // nothing next to the statement).
    fn column<'m, K: 'm, V: 'm, T>(
        rows: &[(&'m K, &'m V)],
        f: impl Fn(&'m K, &'m V) -> T,
    ) -> Vec<T> {
        rows.iter().map(|&(k, v)| f(k, v)).collect()
    }
    // Rows in key order, chunks in that order too: concurrent batches
    // (two analytics-svc replicas) then take the same rows' locks in the
    // same order, and cannot deadlock on each other.
    fn sorted<'m, K: Ord, V>(
        rows: impl IntoIterator<Item = (&'m K, &'m V)>,
    ) -> Vec<(&'m K, &'m V)> {
        let mut rows: Vec<_> = rows.into_iter().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        rows
    }
    let mut pacer = crate::pace::Pacer::new();
    let hourly = tx
        .prepare_cached(
            "INSERT INTO rollup_hourly (code, hour, rule, owner, clicks, bots)
             SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::int2[], $4::text[], $5::int8[], $6::int8[])
             ON CONFLICT (code, hour, rule) DO UPDATE
             SET clicks = rollup_hourly.clicks + EXCLUDED.clicks, bots = rollup_hourly.bots + EXCLUDED.bots",
        )
        .await?;
    // Whole days, whatever the rule: the daily rollup has no rule. A day
    // split over two chunks is added to twice, which sums the same.
    let daily = tx
        .prepare_cached(
            "INSERT INTO rollup_daily (code, day, owner, clicks, bots)
             SELECT code, (hour AT TIME ZONE 'UTC')::date, min(owner), sum(clicks)::int8, sum(bots)::int8
             FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::int8[], $5::int8[])
                  AS t(code, hour, owner, clicks, bots)
             GROUP BY 1, 2
             ON CONFLICT (code, day) DO UPDATE
             SET clicks = rollup_daily.clicks + EXCLUDED.clicks, bots = rollup_daily.bots + EXCLUDED.bots",
        )
        .await?;
    for h in sorted(&r.hourly).chunks(ROLLUP_CHUNK) {
        let codes = column(h, |k, _| k.0);
        let hours = column(h, |k, _| k.1);
        let rules = column(h, |k, _| k.2);
        let owners = column(h, |_, v| v.0);
        let clicks = column(h, |_, v| v.1);
        let bots = column(h, |_, v| v.2);
        pacer
            .run(tx.execute(&hourly, &[&codes, &hours, &rules, &owners, &clicks, &bots]))
            .await?;
        pacer
            .run(tx.execute(&daily, &[&codes, &hours, &owners, &clicks, &bots]))
            .await?;
    }
    let dimensions = tx
        .prepare_cached(
            "INSERT INTO rollup_dimensions (code, day, rule, dimension, value, clicks)
             SELECT * FROM unnest($1::text[], $2::date[], $3::int2[], $4::text[], $5::text[], $6::int8[])
             ON CONFLICT (code, day, dimension, value, rule) DO UPDATE
             SET clicks = rollup_dimensions.clicks + EXCLUDED.clicks",
        )
        .await?;
    for d in sorted(&r.dimensions).chunks(ROLLUP_CHUNK) {
        pacer
            .run(tx.execute(
                &dimensions,
                &[
                    &column(d, |k, _| k.0),
                    &column(d, |k, _| k.1),
                    &column(d, |k, _| k.2),
                    &column(d, |k, _| k.3),
                    &column(d, |k, _| k.4.as_ref()),
                    &column(d, |_, n| *n),
                ],
            ))
            .await?;
    }
    let visitors = tx
        .prepare_cached(
            "INSERT INTO visitors_daily (code, day, rule, visitor)
             SELECT * FROM unnest($1::text[], $2::date[], $3::int2[], $4::bytea[]) ON CONFLICT DO NOTHING",
        )
        .await?;
    for v in sorted(r.visitors.iter().map(|k| (k, &()))).chunks(ROLLUP_CHUNK) {
        let (codes, days) = (column(v, |k, _| k.0), column(v, |k, _| k.1));
        let (rules, ids) = (column(v, |k, _| k.2), column(v, |k, _| k.3));
        pacer
            .run(tx.execute(&visitors, &[&codes, &days, &rules, &ids]))
            .await?;
    }
    Ok(())
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_click_batches_total",
        metrics::Unit::Count,
        "Click batches stored, by path: stream (all new, copied as its messages arrived), copy (all new, one COPY) or dedupe (some already stored: inserted again skipping those)."
    );
}

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Unreachable, timed out, or a transient failure: retry the same batch.
    #[error("database unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// The data itself was refused (SQLSTATE classes 22 and 23): retrying
    /// the same batch cannot help.
    #[error("a click was refused: {0:#}")]
    Refused(anyhow::Error),
}

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code().map(|c| &c.code()[..2]) {
            Some("22" | "23") => Self::Refused(e.into()),
            _ => Self::Unavailable(e.into()),
        }
    }
}

impl From<CopyFailed> for WriteError {
    fn from(e: CopyFailed) -> Self {
        match e {
            CopyFailed::Database(e) => e.into(),
            // The click itself cannot be stored: as the database refusing it.
            CopyFailed::Encoding(_) => Self::Refused(e.into()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for WriteError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Unavailable(e.into())
    }
}

/// Daily rollup rows of one link for whole UTC days `[first, last]`, as
/// midnight timestamps.
pub async fn daily(
    pool: &Pool,
    code: &str,
    first: NaiveDate,
    last: NaiveDate,
) -> anyhow::Result<Vec<(DateTime<Utc>, i64, i64)>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT day, clicks, bots FROM rollup_daily WHERE code = $1 AND day BETWEEN $2 AND $3 ORDER BY day",
            &[&code, &first, &last],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let day: NaiveDate = r.get(0);
            (
                day.and_time(chrono::NaiveTime::MIN).and_utc(),
                r.get(1),
                r.get(2),
            )
        })
        .collect())
}

/// Hourly rollup rows of one link in `[from, to)`: all its clicks, or
/// with `rule` only those that rule sent ([`NO_RULE`]: sent by none).
pub async fn hourly(
    pool: &Pool,
    code: &str,
    rule: Option<i16>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<Vec<(DateTime<Utc>, i64, i64)>> {
    let client = pool.get().await?;
    let rows = match rule {
        None => {
            client
                .query(
                    "SELECT hour, sum(clicks)::int8, sum(bots)::int8 FROM rollup_hourly
                     WHERE code = $1 AND hour >= $2 AND hour < $3 GROUP BY hour ORDER BY hour",
                    &[&code, &from, &to],
                )
                .await?
        }
        Some(rule) => {
            client
                .query(
                    "SELECT hour, clicks, bots FROM rollup_hourly
                     WHERE code = $1 AND hour >= $2 AND hour < $3 AND rule = $4 ORDER BY hour",
                    &[&code, &from, &to, &rule],
                )
                .await?
        }
    };
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Human visitors (distinct per day) and dimension counts over days: of
/// all the link's clicks, or with `rule` of those that rule sent.
pub async fn audience(
    pool: &Pool,
    code: &str,
    rule: Option<i16>,
    first_day: NaiveDate,
    last_day: NaiveDate,
) -> anyhow::Result<(i64, HashMap<String, Vec<(String, i64)>>)> {
    let client = pool.get().await?;
    // A visitor brought by two rules on one day is one visitor of the link.
    let (visitors_sql, dimensions_sql) = match rule {
        None => (
            "SELECT count(*) FROM (SELECT DISTINCT day, visitor FROM visitors_daily
                                   WHERE code = $1 AND day BETWEEN $2 AND $3) v",
            "SELECT dimension, value, sum(clicks)::int8 FROM rollup_dimensions
             WHERE code = $1 AND day BETWEEN $2 AND $3
             GROUP BY dimension, value ORDER BY 3 DESC, 2",
        ),
        Some(_) => (
            "SELECT count(*) FROM visitors_daily
             WHERE code = $1 AND day BETWEEN $2 AND $3 AND rule = $4",
            "SELECT dimension, value, sum(clicks)::int8 FROM rollup_dimensions
             WHERE code = $1 AND day BETWEEN $2 AND $3 AND rule = $4
             GROUP BY dimension, value ORDER BY 3 DESC, 2",
        ),
    };
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        vec![&code, &first_day, &last_day];
    if let Some(rule) = &rule {
        params.push(rule);
    }
    let visitors: i64 = client.query_one(visitors_sql, &params).await?.get(0);
    let rows = client.query(dimensions_sql, &params).await?;
    let mut dims: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for r in rows {
        dims.entry(r.get(0)).or_default().push((r.get(1), r.get(2)));
    }
    Ok((visitors, dims))
}

/// All-time human clicks of `owner`'s `codes`, from the daily rollup (one
/// row per link per day, read through its primary key); codes without
/// clicks are absent.
pub async fn click_totals(
    pool: &Pool,
    owner: &str,
    codes: &[String],
) -> anyhow::Result<Vec<(String, i64)>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT code, sum(clicks)::int8 FROM rollup_daily
             WHERE code = ANY($1) AND owner = $2 GROUP BY code",
            &[&codes, &owner],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// An owner's codes by human clicks in `[from, to)`.
pub async fn top_links(
    pool: &Pool,
    owner: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
) -> anyhow::Result<Vec<(String, i64)>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT code, sum(clicks)::int8 AS n FROM rollup_hourly
             WHERE owner = $1 AND hour >= $2 AND hour < $3
             GROUP BY code HAVING sum(clicks) > 0 ORDER BY n DESC, code LIMIT $4",
            &[&owner, &from, &to, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::{
        enrich,
        testing::{FIREFOX, event},
    };
    use chrono::{DurationRound, TimeDelta, TimeZone};

    #[test]
    fn live_counts_are_new_human_clicks_per_owner_and_code() {
        let t = Utc::now();
        let mut other = event("4", FIREFOX, t);
        other.owner = "bob".into();
        let mut head = event("5", FIREFOX, t);
        head.head_request = true;
        let clicks: Vec<Click> = [
            event("1", FIREFOX, t),
            event("2", FIREFOX, t),
            event("3", "Googlebot/2.1", t),
            other,
            head,
        ]
        .iter()
        .map(|e| enrich(e, t, "s", None).unwrap())
        .collect();
        let refs: Vec<&Click> = clicks.iter().collect();
        let counted = human_counts(&refs);
        assert_eq!(
            counted,
            BTreeMap::from([
                (("alice".into(), "abc1234".into()), 2),
                (("bob".into(), "abc1234".into()), 1),
            ])
        );
    }

    #[test]
    fn rollups_split_bots_and_humans_by_hour() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 10, 15, 0).unwrap();
        let clicks: Vec<Click> = [
            event("1", FIREFOX, t),
            event("2", FIREFOX, t + TimeDelta::minutes(50)),
            event("3", "Googlebot/2.1", t),
        ]
        .iter()
        .map(|e| enrich(e, t + TimeDelta::hours(1), "s", None).unwrap())
        .collect();
        let r = rollups(&clicks);
        let ten = Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 0).unwrap();
        let eleven = Utc.with_ymd_and_hms(2026, 1, 1, 11, 0, 0).unwrap();
        assert_eq!(r.hourly[&("abc1234", ten, NO_RULE)], ("alice", 1, 1));
        assert_eq!(r.hourly[&("abc1234", eleven, NO_RULE)], ("alice", 1, 0));
        assert_eq!(r.visitors.len(), 1);
        let day = t.date_naive();
        assert_eq!(
            r.dimensions[&("abc1234", day, NO_RULE, "browser", "Firefox".into())],
            2
        );
        assert_eq!(
            r.dimensions[&("abc1234", day, NO_RULE, "referrer", "t.co".into())],
            2
        );
        assert_eq!(
            r.dimensions[&("abc1234", day, NO_RULE, "rule", "none".into())],
            2
        );
    }

    #[test]
    fn rollups_keep_the_rule_that_sent_each_click() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 10, 15, 0).unwrap();
        let mut by_rule = event("2", FIREFOX, t);
        by_rule.rule = Some(3);
        let clicks: Vec<Click> = [event("1", FIREFOX, t), by_rule]
            .iter()
            .map(|e| enrich(e, t, "s", None).unwrap())
            .collect();
        let r = rollups(&clicks);
        let ten = Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 0).unwrap();
        assert_eq!(r.hourly[&("abc1234", ten, NO_RULE)], ("alice", 1, 0));
        assert_eq!(r.hourly[&("abc1234", ten, 3)], ("alice", 1, 0));
        let day = t.date_naive();
        assert_eq!(r.dimensions[&("abc1234", day, 3, "rule", "3".into())], 1);
        assert_eq!(
            r.dimensions[&("abc1234", day, 3, "browser", "Firefox".into())],
            1
        );
        // The same visitor under each rule that brought them.
        assert_eq!(r.visitors.len(), 2);
    }

    /// The grouped count against the plain one it replaced: every click
    /// straight into each of its rollup rows.
    fn rollups_click_by_click<'a>(clicks: &'a [Click]) -> Rollups<'a> {
        let mut r = Rollups::default();
        for c in clicks {
            let hour = c.occurred_at.duration_trunc(TimeDelta::hours(1)).unwrap();
            let rule = c.rule.unwrap_or(NO_RULE);
            let entry = r
                .hourly
                .entry((c.code.as_str(), hour, rule))
                .or_insert_with(|| (c.owner.as_str(), 0, 0));
            if c.is_bot {
                entry.2 += 1;
                continue;
            }
            entry.1 += 1;
            let day = c.occurred_at.date_naive();
            for (dimension, value) in [
                ("referrer", c.referrer_host.as_str()),
                ("browser", c.browser),
                ("os", c.os),
                ("device", c.device),
                ("country", &c.country),
            ] {
                if !value.is_empty() {
                    *r.dimensions
                        .entry((&c.code, day, rule, dimension, Cow::Borrowed(value)))
                        .or_default() += 1;
                }
            }
            *r.dimensions
                .entry((&c.code, day, rule, "rule", rule_name(c.rule)))
                .or_default() += 1;
            r.visitors.insert((&c.code, day, rule, &c.visitor));
        }
        r
    }

    proptest::proptest! {
        #[test]
        fn grouped_rollups_count_what_click_by_click_counts(
            picks in proptest::collection::vec(
                (0..4usize, 0..200i64, proptest::option::of(0..3i16), proptest::bool::weighted(0.2),
                 0..3usize, 0..3usize, 0..3usize, 0..3usize),
                0..300,
            )
        ) {
            const NAMES: [&str; 3] = ["", "Firefox", "Chrome"];
            let start = Utc.with_ymd_and_hms(2026, 1, 1, 22, 0, 0).unwrap();
            let clicks: Vec<Click> = picks
                .iter()
                .enumerate()
                .map(|(i, &(code, minutes, rule, is_bot, referrer, agent, country, visitor))| Click {
                    event_id: i.to_string(),
                    code: format!("code{code}"),
                    // One owner per link, as links have.
                    owner: format!("owner{}", code % 2),
                    // Across an hour and a day boundary.
                    occurred_at: start
                        + TimeDelta::minutes(minutes)
                        + TimeDelta::microseconds(i as i64 * 1_234_567 % 60_000_000),
                    is_bot,
                    referrer_host: ["", "t.co", "example.org"][referrer].into(),
                    browser: NAMES[agent],
                    os: NAMES[(agent + 1) % 3],
                    device: NAMES[(agent + 2) % 3],
                    country: ["", "DE", "FR"][country].into(),
                    visitor: vec![visitor as u8],
                    rule,
                })
                .collect();
            proptest::prop_assert_eq!(rollups(&clicks), rollups_click_by_click(&clicks));
            // Taken in pieces (as a batch is, paced), the same rollups.
            let mut builder = RollupBuilder::default();
            for piece in clicks.chunks(7) {
                builder.add(piece);
            }
            proptest::prop_assert_eq!(builder.finish(), rollups_click_by_click(&clicks));
        }
    }
}
