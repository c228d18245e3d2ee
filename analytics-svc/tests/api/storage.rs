//! How a batch reaches PostgreSQL: all new clicks by COPY; a batch holding
//! a click already stored, or one click twice, rolled back and inserted
//! again skipping those. Either way each click counts once, in the rollups
//! once its batch's increments are folded in.

use std::time::Duration;

use analytics_svc::{enrich::Click, fold, migrations::MIGRATIONS, store};
use chrono::{TimeDelta, TimeZone, Utc};
use shortfleet_common::postgres;
use shortfleet_testkit::TestDatabase;

const CODE: &str = "stored1";

fn click(id: &str, minute: i64) -> Click {
    Click {
        event_id: id.into(),
        code: CODE.into(),
        owner: "alice".into(),
        occurred_at: Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap()
            + TimeDelta::minutes(minute),
        is_bot: false,
        referrer_host: "direct".into(),
        browser: "Firefox",
        os: "Linux",
        device: "desktop",
        country: String::new(),
        visitor: vec![minute as u8; 32],
        rule: None,
    }
}

/// Raw clicks stored for [`CODE`].
async fn raw_clicks(db: &TestDatabase) -> i64 {
    let client = db.client().await;
    client
        .query_one("SELECT count(*) FROM clicks WHERE code = $1", &[&CODE])
        .await
        .unwrap()
        .get(0)
}

/// A pool on `db` with the analytics schema in place.
async fn migrated(db: &TestDatabase) -> deadpool_postgres::Pool {
    postgres::open(db.url(), 2, Duration::from_secs(5), MIGRATIONS)
        .await
        .unwrap()
}

#[tokio::test]
async fn each_click_counts_once_whichever_path_its_batch_took() {
    let db = TestDatabase::fresh();
    let pool = migrated(&db).await;
    let write = |clicks: Vec<Click>| {
        let pool = pool.clone();
        async move {
            store::write_batch(&pool, &clicks, Duration::from_secs(10))
                .await
                .unwrap()
        }
    };
    // All new: copied.
    let first = write(vec![click("a", 1), click("b", 2), click("c", 3)]).await;
    assert_eq!(first.new, 3);
    assert_eq!(first.counted[&("alice".into(), CODE.into())], 3);
    // Two already stored (a redelivery) and two new: only the new count.
    let second = write(vec![
        click("b", 2),
        click("d", 4),
        click("c", 3),
        click("e", 5),
    ])
    .await;
    assert_eq!(second.new, 2);
    assert_eq!(second.counted[&("alice".into(), CODE.into())], 2);
    // One new click twice in a batch: once.
    let third = write(vec![click("f", 6), click("f", 6)]).await;
    assert_eq!(third.new, 1);
    // The very same batch again: nothing.
    let again = write(vec![click("f", 6), click("a", 1)]).await;
    assert_eq!(again.new, 0);
    assert!(again.counted.is_empty());

    fold_everything(&pool).await;
    let ten = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
    let hours = store::hourly(&pool, CODE, None, ten, ten + TimeDelta::hours(1))
        .await
        .unwrap();
    assert_eq!(hours, vec![(ten, 6, 0)], "a to f, once each");
    assert_eq!(raw_clicks(&db).await, 6);
    pool.close();
    db.remove().await;
}

/// A batch copied message by message in its own transaction counts like
/// one written at once; one that meets a click already stored does not
/// commit, leaves nothing behind, and its batch is then stored by
/// `write_batch`, counting only what is new. Abandoned without a commit,
/// a stream leaves nothing either, and its connection is not reused.
#[tokio::test]
async fn a_streamed_batch_counts_once_and_a_failed_one_leaves_nothing() {
    let db = TestDatabase::fresh();
    let pool = migrated(&db).await;
    let timeout = Duration::from_secs(10);
    let raw = || raw_clicks(&db);

    // Two messages, copied as they come, committed with their rollups.
    let batch = vec![click("a", 1), click("b", 2), click("c", 3)];
    let mut stream = store::CopyStream::open(&pool, timeout).await.unwrap();
    stream.write(&batch[..2]).await.unwrap();
    assert_eq!(raw().await, 0, "nothing is visible before the commit");
    stream.write(&batch[2..]).await.unwrap();
    let stored = stream.commit(&batch).await.unwrap();
    assert_eq!(stored.new, 3);
    assert_eq!(stored.counted[&("alice".into(), CODE.into())], 3);
    assert_eq!(raw().await, 3);

    // A redelivered click in the next batch: the stream does not commit…
    let next = vec![click("d", 4), click("b", 2)];
    let mut stream = store::CopyStream::open(&pool, timeout).await.unwrap();
    // (the server may report the duplicate now or only at the commit)
    let copied = stream.write(&next).await;
    let committed = match copied {
        Ok(()) => stream.commit(&next).await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        committed.is_err(),
        "a click already stored refuses the stream"
    );
    assert_eq!(raw().await, 3, "and leaves nothing behind");
    // …and the batch stored again whole counts only the new click.
    let again = store::write_batch(&pool, &next, timeout).await.unwrap();
    assert_eq!(again.new, 1);

    // Dropped mid-batch (a failure elsewhere, shutdown): nothing stored.
    let mut stream = store::CopyStream::open(&pool, timeout).await.unwrap();
    stream.write(&[click("e", 5)]).await.unwrap();
    drop(stream);
    assert_eq!(raw().await, 4);

    fold_everything(&pool).await;
    let ten = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
    let hours = store::hourly(&pool, CODE, None, ten, ten + TimeDelta::hours(1))
        .await
        .unwrap();
    assert_eq!(hours, vec![(ten, 4, 0)], "a to d, once each");
    pool.close();
    db.remove().await;
}

/// The rows of each rollup table as (key, heap page).
async fn rollup_pages(client: &tokio_postgres::Client) -> Vec<(String, String, u32)> {
    let mut pages = Vec::new();
    for table in ["rollup_hourly", "rollup_daily", "rollup_dimensions"] {
        // A ctid is "(page,item)"; the key is the row's text minus its counters.
        let sql = format!(
            "SELECT (ctid::text::point)[0]::int, \
                    (row_to_json(t)::jsonb - 'clicks' - 'bots')::text \
             FROM {table} t"
        );
        for row in client.query(&sql, &[]).await.unwrap() {
            let page: i32 = row.get(0);
            pages.push((table.to_owned(), row.get(1), page as u32));
        }
    }
    pages.sort();
    pages
}

/// Each fold updates every rollup row it touches. With room on the row's
/// page the new version stays there (a HOT update: no new index entries, the
/// old version pruned with the page); on full pages it moves, as every row
/// did before the rollup tables were filled to 40 %.
#[tokio::test]
async fn counting_a_link_again_keeps_its_rollup_rows_on_their_pages() {
    let db = TestDatabase::fresh();
    let pool = migrated(&db).await;
    // Enough links that each table spans several pages.
    let batch = |round: usize| -> Vec<Click> {
        (0..300)
            .map(|link| Click {
                event_id: format!("r{round}-{link}"),
                code: format!("link{link:03}"),
                ..click("", 0)
            })
            .collect()
    };
    store::write_batch(&pool, &batch(1), Duration::from_secs(10))
        .await
        .unwrap();
    fold_everything(&pool).await;
    let client = db.client().await;
    let before = rollup_pages(&client).await;
    let spread: std::collections::HashSet<_> = before
        .iter()
        .map(|(table, _, page)| (table, page))
        .collect();
    assert!(spread.len() > 6, "the rows span several pages: {spread:?}");

    // One more batch, folded: every row gets a new version. The one before
    // it is pruned only once no snapshot anywhere in the cluster can see it,
    // which a concurrent test's transaction may delay; so a single update
    // round, which needs only the room, not the pruning.
    store::write_batch(&pool, &batch(2), Duration::from_secs(10))
        .await
        .unwrap();
    fold_everything(&pool).await;
    let after = rollup_pages(&client).await;
    assert_eq!(after.len(), before.len());
    let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
    assert!(
        moved.is_empty(),
        "{} of {} rows moved to another page, the first: {:?}",
        moved.len(),
        before.len(),
        moved.first()
    );
    let ten = click("", 0).occurred_at;
    let hours = store::hourly(&pool, "link042", None, ten, ten + TimeDelta::hours(1))
        .await
        .unwrap();
    assert_eq!(hours, vec![(ten, 2, 0)], "two batches, one click each");
    drop(client);
    pool.close();
    db.remove().await;
}

/// Rollups are written in chunks of rows (paced): a batch over more links
/// than a chunk holds still adds every click to its link's hour, day and
/// dimensions exactly once, whichever chunk its rows fell in.
#[tokio::test]
async fn a_batch_over_more_links_than_a_rollup_chunk_counts_every_click_once() {
    let db = TestDatabase::fresh();
    let pool = migrated(&db).await;
    let links = 2_345;
    let codes: Vec<String> = (0..links).map(|i| format!("chunk{i:05}")).collect();
    // Two clicks per link, in two minutes of the same hour.
    let batch: Vec<Click> = (0..2 * links)
        .map(|i| Click {
            code: codes[i % links].clone(),
            ..click(&format!("ev{i}"), (i / links) as i64)
        })
        .collect();
    let stored = store::write_batch(&pool, &batch, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(stored.new, 2 * links);
    fold_everything(&pool).await;

    let client = db.client().await;
    for (table, column) in [
        ("rollup_hourly", "clicks"),
        ("rollup_daily", "clicks"),
        ("rollup_dimensions WHERE dimension = 'browser'", "clicks"),
    ] {
        let row = client
            .query_one(
                &format!("SELECT count(*), sum({column})::int8, min({column}), max({column}) FROM {table}"),
                &[],
            )
            .await
            .unwrap();
        let (rows, sum, min, max): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(rows, links as i64, "{table}: one row per link");
        assert_eq!(sum, 2 * links as i64, "{table}: every click once");
        assert_eq!((min, max), (2, 2), "{table}: two clicks on each link");
    }
    let visitors: i64 = client
        .query_one("SELECT count(*) FROM visitors_daily", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(visitors, 2 * links as i64, "two visitors on each link");
    drop(client);
    pool.close();
    db.remove().await;
}

/// Folds until nothing is pending; the batches folded.
async fn fold_everything(pool: &deadpool_postgres::Pool) -> usize {
    let mut batches = 0;
    loop {
        let folded = fold::fold_pending(pool, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(folded.invalid, 0);
        batches += folded.batches;
        if !folded.more {
            return batches;
        }
    }
}

/// Clicks of [`CODE`] in its hourly rollup.
async fn rolled_up(pool: &deadpool_postgres::Pool) -> i64 {
    let ten = click("", 0).occurred_at;
    store::hourly(pool, CODE, None, ten, ten + TimeDelta::hours(1))
        .await
        .unwrap()
        .iter()
        .map(|(_, clicks, bots)| clicks + bots)
        .sum()
}

/// A stored batch's rollup increments wait in `rollup_pending` until a
/// fold adds them, once: a second fold finds nothing, and a batch already
/// stored leaves no increment at all.
#[tokio::test]
async fn a_batch_counts_in_the_rollups_once_folded_and_only_once() {
    let db = TestDatabase::fresh();
    let pool = migrated(&db).await;
    let timeout = Duration::from_secs(10);
    let first = vec![click("a", 1), click("b", 2)];
    store::write_batch(&pool, &first, timeout).await.unwrap();
    store::write_batch(&pool, &[click("c", 3)], timeout)
        .await
        .unwrap();
    assert_eq!(raw_clicks(&db).await, 3);
    assert_eq!(rolled_up(&pool).await, 0, "not folded yet");
    assert_eq!(fold::pending_batches(&pool, timeout).await.unwrap(), 2);

    assert_eq!(fold_everything(&pool).await, 2);
    assert_eq!(rolled_up(&pool).await, 3);
    assert_eq!(fold::pending_batches(&pool, timeout).await.unwrap(), 0);
    assert_eq!(fold_everything(&pool).await, 0, "nothing left to fold");
    assert_eq!(rolled_up(&pool).await, 3);

    // A redelivered batch adds no clicks, so no pending row either.
    let again = store::write_batch(&pool, &first, timeout).await.unwrap();
    assert_eq!(again.new, 0);
    assert_eq!(fold::pending_batches(&pool, timeout).await.unwrap(), 0);
    pool.close();
    db.remove().await;
}

/// Two replicas folding at once take different pending rows (each fold
/// locks what it takes, skipping what another holds): over more batches
/// than one fold takes, every click is in the rollups exactly once.
#[tokio::test]
async fn concurrent_folds_add_every_batch_once() {
    let db = TestDatabase::fresh();
    let pool = migrated(&db).await;
    let other = migrated(&db).await;
    let batches = 75;
    for b in 0..batches {
        let batch: Vec<Click> = (0..4)
            .map(|i| click(&format!("b{b}-{i}"), i64::from(i)))
            .collect();
        store::write_batch(&pool, &batch, Duration::from_secs(10))
            .await
            .unwrap();
    }
    let (one, two) = tokio::join!(fold_everything(&pool), fold_everything(&other));
    assert_eq!(one + two, batches, "each batch folded by one of them");
    assert_eq!(rolled_up(&pool).await, 4 * batches as i64);
    other.close();
    pool.close();
    db.remove().await;
}

/// A fold that cannot finish (here: a rollup row it must update is held
/// by another transaction past the fold's deadline) rolls back whole: its
/// batches stay pending, and the next fold adds each once.
#[tokio::test]
async fn a_fold_that_fails_leaves_its_batches_pending() {
    let db = TestDatabase::fresh();
    let pool = migrated(&db).await;
    let timeout = Duration::from_secs(10);
    store::write_batch(&pool, &[click("a", 1)], timeout)
        .await
        .unwrap();
    fold_everything(&pool).await;
    store::write_batch(&pool, &[click("b", 2), click("c", 3)], timeout)
        .await
        .unwrap();

    let mut holder = db.client().await;
    let hold = holder.transaction().await.unwrap();
    hold.execute(
        "SELECT 1 FROM rollup_hourly WHERE code = $1 FOR UPDATE",
        &[&CODE],
    )
    .await
    .unwrap();
    let failed = fold::fold_pending(&pool, Duration::from_millis(500)).await;
    assert!(failed.is_err(), "the fold waited past its deadline");
    hold.rollback().await.unwrap();

    assert_eq!(fold::pending_batches(&pool, timeout).await.unwrap(), 1);
    assert_eq!(rolled_up(&pool).await, 1, "nothing of the failed fold");
    assert_eq!(fold_everything(&pool).await, 1);
    assert_eq!(rolled_up(&pool).await, 3);
    pool.close();
    db.remove().await;
}
