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

#[tokio::test]
async fn each_click_counts_once_whichever_path_its_batch_took() {
    let db = TestDatabase::fresh();
    let pool = postgres::open(db.url(), 2, Duration::from_secs(5), MIGRATIONS)
        .await
        .unwrap();
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
