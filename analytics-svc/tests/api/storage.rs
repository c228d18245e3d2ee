//! How a batch reaches PostgreSQL: all new clicks by COPY; a batch holding
//! a click already stored, or one click twice, rolled back and inserted
//! again skipping those. Either way each click counts once.

use std::time::Duration;

use analytics_svc::{enrich::Click, migrations::MIGRATIONS, store};
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

    let ten = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
    let hours = store::hourly(&pool, CODE, None, ten, ten + TimeDelta::hours(1))
        .await
        .unwrap();
    assert_eq!(hours, vec![(ten, 6, 0)], "a to f, once each");
    let client = db.client().await;
    let raw: i64 = client
        .query_one("SELECT count(*) FROM clicks WHERE code = $1", &[&CODE])
        .await
        .unwrap()
        .get(0);
    assert_eq!(raw, 6);
    drop(client);
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

/// Each batch updates every rollup row it touches. With room on the row's
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
    let client = db.client().await;
    let before = rollup_pages(&client).await;
    let spread: std::collections::HashSet<_> = before
        .iter()
        .map(|(table, _, page)| (table, page))
        .collect();
    assert!(spread.len() > 6, "the rows span several pages: {spread:?}");

    // One more batch: every row gets a new version. The one before it is
    // pruned only once no snapshot anywhere in the cluster can see it, which
    // a concurrent test's transaction may delay; so a single update round,
    // which needs only the room, not the pruning.
    store::write_batch(&pool, &batch(2), Duration::from_secs(10))
        .await
        .unwrap();
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
