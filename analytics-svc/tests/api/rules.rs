//! Stats by redirect rule come from rollups keyed by rule (schema version
//! 4). A database rolled up before that (version 3: every rule's clicks
//! under one row) is split by rule from its raw clicks when it migrates,
//! so the answers by rule are the ones version 3 summed from raw clicks.

use std::time::Duration;

use analytics_svc::{migrations::MIGRATIONS, store};
use chrono::{NaiveDate, TimeDelta, TimeZone, Utc};
use shortfleet_common::postgres;
use shortfleet_testkit::TestDatabase;

const CODE: &str = "ruled01";

/// One raw click as version 3 stored it: (minute past 10:00 on 2026-03-01,
/// visitor, rule, bot).
type Raw = (i64, u8, Option<i16>, bool);

const CLICKS: &[Raw] = &[
    (1, 1, None, false),
    (2, 1, Some(2), false), // visitor 1 came by no rule and by rule 2
    (3, 2, Some(2), false), // visitor 2 only by rule 2
    (4, 2, Some(2), false),
    (5, 3, Some(0), false),
    (6, 9, Some(2), true), // a bot sent by rule 2
    (70, 4, None, false),  // the next hour, no rule
];

#[tokio::test]
async fn a_version_3_database_is_split_by_rule_when_it_migrates() {
    let db = TestDatabase::fresh();
    postgres::ensure_database(db.url()).await.unwrap();
    let pool = postgres::pool(db.url(), 2, Duration::from_secs(5)).unwrap();
    postgres::migrate(&pool, &MIGRATIONS[..3]).await.unwrap();
    let client = db.client().await;
    write_as_version_3(&client, CLICKS).await;

    postgres::migrate(&pool, MIGRATIONS).await.unwrap();

    let ten = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
    let eleven = ten + TimeDelta::hours(1);
    let (from, to) = (ten, ten + TimeDelta::days(1));
    let day = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
    let hourly = |rule| store::hourly(&pool, CODE, rule, from, to);
    // The whole link is what it was.
    assert_eq!(
        hourly(None).await.unwrap(),
        vec![(ten, 5, 1), (eleven, 1, 0)]
    );
    assert_eq!(hourly(Some(2)).await.unwrap(), vec![(ten, 3, 1)]);
    assert_eq!(hourly(Some(0)).await.unwrap(), vec![(ten, 1, 0)]);
    assert_eq!(
        hourly(Some(store::NO_RULE)).await.unwrap(),
        vec![(ten, 1, 0), (eleven, 1, 0)]
    );

    let audience = |rule| store::audience(&pool, CODE, rule, day, day);
    let (visitors, dims) = audience(None).await.unwrap();
    assert_eq!(visitors, 4, "visitors 1-4 (the bot is none)");
    assert_eq!(dims["browser"], vec![("Firefox".to_owned(), 6)]);
    let (visitors, dims) = audience(Some(2)).await.unwrap();
    assert_eq!(visitors, 2, "visitors 1 and 2");
    assert_eq!(dims["browser"], vec![("Firefox".to_owned(), 3)]);
    assert_eq!(dims["rule"], vec![("2".to_owned(), 3)]);
    let (visitors, dims) = audience(Some(store::NO_RULE)).await.unwrap();
    assert_eq!(visitors, 2, "visitors 1 and 4");
    assert_eq!(dims["rule"], vec![("none".to_owned(), 2)]);
    let (visitors, _) = audience(Some(0)).await.unwrap();
    assert_eq!(visitors, 1);

    // The raw clicks keep only their key's index.
    let indexes: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'clicks'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(indexes, 1);
    drop(client);
    pool.close();
    db.remove().await;
}

/// The rows version 3 wrote for `clicks`: raw clicks with their rule,
/// rollups without it.
async fn write_as_version_3(client: &tokio_postgres::Client, clicks: &[Raw]) {
    let ten = Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap();
    for (i, (minute, visitor, rule, bot)) in clicks.iter().enumerate() {
        let at = ten + TimeDelta::minutes(*minute);
        let hour = ten + TimeDelta::hours(minute / 60);
        let day = at.date_naive();
        let visitor = vec![*visitor; 32];
        client
            .execute(
                "INSERT INTO clicks (occurred_at, event_id, code, owner, is_bot, referrer_host,
                                     browser, os, device, country, visitor, rule)
                 VALUES ($1, $2, $3, 'alice', $4, '', 'Firefox', 'Linux', 'desktop', '', $5, $6)",
                &[&at, &format!("e{i}"), &CODE, bot, &visitor, rule],
            )
            .await
            .unwrap();
        let (humans, bots) = if *bot { (0i64, 1i64) } else { (1, 0) };
        client
            .execute(
                "INSERT INTO rollup_hourly (code, hour, owner, clicks, bots) VALUES ($1, $2, 'alice', $3, $4)
                 ON CONFLICT (code, hour) DO UPDATE
                 SET clicks = rollup_hourly.clicks + $3, bots = rollup_hourly.bots + $4",
                &[&CODE, &hour, &humans, &bots],
            )
            .await
            .unwrap();
        if *bot {
            continue;
        }
        let rule_value = rule.map_or_else(|| "none".to_owned(), |r| r.to_string());
        for (dimension, value) in [
            ("browser", "Firefox"),
            ("os", "Linux"),
            ("device", "desktop"),
            ("rule", rule_value.as_str()),
        ] {
            client
                .execute(
                    "INSERT INTO rollup_dimensions (code, day, dimension, value, clicks)
                     VALUES ($1, $2, $3, $4, 1)
                     ON CONFLICT (code, day, dimension, value) DO UPDATE
                     SET clicks = rollup_dimensions.clicks + 1",
                    &[&CODE, &day, &dimension, &value],
                )
                .await
                .unwrap();
        }
        client
            .execute(
                "INSERT INTO visitors_daily (code, day, visitor) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&CODE, &day, &visitor],
            )
            .await
            .unwrap();
    }
}
