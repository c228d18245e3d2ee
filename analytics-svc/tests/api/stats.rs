//! analytics-svc against real RabbitMQ and PostgreSQL: redelivered clicks
//! count once, bots and HEAD requests go apart, hour and day series across a
//! day boundary, unique visitors once per day, poison messages reach the
//! dead-letter queue, a consumer stopped mid-stream loses nothing, and a
//! configured GeoIP file supplies the country a trusted header did not.

use shortfleet_common::geoip::testing as mmdb;

use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::FieldTable,
};
use prost::Message;
use shortfleet_common::{amqp, config::ConfigSource, time::to_proto};
use shortfleet_proto::v1::{
    ClickBatch, ClickEvent, ClickTotalsRequest, GetLinkStatsRequest, Interval, LinkStats,
    TopLinksRequest, analytics_client::AnalyticsClient,
};
use shortfleet_testkit::{
    AMQP, TestDatabase, broker,
    services::{self, Running},
    within,
};
const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";

struct Fixture {
    database: TestDatabase,
    exchange: String,
    queue: String,
    _conn: Connection,
    channel: Channel,
}

impl Fixture {
    async fn new() -> Self {
        let id = shortfleet_testkit::unique_id();
        let (exchange, queue) = (
            format!("test.clicks.{id}"),
            format!("test.clicks.{id}.analytics"),
        );
        let conn = Connection::connect(AMQP, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        amqp::declare_click_topology(&conn, &exchange, &queue, Duration::from_secs(5))
            .await
            .unwrap();
        Self {
            database: TestDatabase::fresh(),
            exchange,
            queue,
            _conn: conn,
            channel,
        }
    }

    async fn start(&self) -> (AnalyticsClient<tonic::transport::Channel>, Running) {
        self.start_with([]).await
    }

    async fn start_with<const N: usize>(
        &self,
        extra: [(&'static str, String); N],
    ) -> (AnalyticsClient<tonic::transport::Channel>, Running) {
        let pairs = [
            ("SHORTFLEET_GRPC_ADDR", "127.0.0.1:0".to_owned()),
            ("SHORTFLEET_OPS_ADDR", "127.0.0.1:0".to_owned()),
            ("SHORTFLEET_DATABASE_URL", self.database.url().to_owned()),
            ("SHORTFLEET_CLICKS_EXCHANGE", self.exchange.clone()),
            ("SHORTFLEET_CLICKS_QUEUE", self.queue.clone()),
            ("SHORTFLEET_BATCH_MAX", "50".to_owned()),
        ];
        let running = services::start::<analytics_svc::App>(&ConfigSource::from_pairs(
            pairs.into_iter().chain(extra),
        ))
        .await;
        (
            AnalyticsClient::connect(running.url()).await.unwrap(),
            running,
        )
    }

    async fn publish_raw(&self, body: &[u8], id: &str) {
        self.publish_typed(body, id, None).await;
    }

    /// A message as click-logger sends it: many clicks, typed as a batch.
    async fn publish_batch(&self, events: &[ClickEvent]) {
        let body = ClickBatch {
            events: events.to_vec(),
            sequence: 0,
        }
        .encode_to_vec();
        self.publish_typed(&body, &events[0].event_id, Some(amqp::CLICK_BATCH_TYPE))
            .await;
    }

    async fn publish_typed(&self, body: &[u8], id: &str, kind: Option<&str>) {
        let mut properties = BasicProperties::default()
            .with_message_id(id.into())
            .with_delivery_mode(2);
        if let Some(kind) = kind {
            properties = properties.with_type(kind.into());
        }
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                amqp::CLICK_ROUTING_KEY.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn publish(&self, event: &ClickEvent) {
        self.publish_raw(&event.encode_to_vec(), &event.event_id)
            .await;
    }

    async fn messages_in(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| q.message_count())
            .unwrap_or(0)
    }

    async fn cleanup(self, analytics: Running) {
        services::cancel_all([&analytics]).await;
        broker::remove_click_topology(&self.channel, &self.exchange, &self.queue).await;
        self.database.remove().await;
    }
}

/// `hour:minute` on the `n`th day of a fixed window 60 days ago: old enough
/// to be history, recent enough to be a storable click (at most 400 days).
fn day(n: i64, hour: i64, minute: i64) -> DateTime<Utc> {
    let start = (Utc::now() - TimeDelta::days(60))
        .duration_trunc(TimeDelta::days(1))
        .expect("days divide time");
    start + TimeDelta::days(n) + TimeDelta::hours(hour) + TimeDelta::minutes(minute)
}

fn click(id: &str, code: &str, at: DateTime<Utc>, ua: &str, ip: &str) -> ClickEvent {
    ClickEvent {
        event_id: id.into(),
        code: code.into(),
        owner: "alice".into(),
        occurred_at: Some(to_proto(at)),
        user_agent: ua.into(),
        client_ip: ip.into(),
        referrer: "https://news.example.org/post".into(),
        country: "de".into(),
        ..Default::default()
    }
}

async fn stats(
    client: &mut AnalyticsClient<tonic::transport::Channel>,
    code: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    interval: Interval,
) -> LinkStats {
    client
        .get_link_stats(GetLinkStatsRequest {
            code: code.into(),
            from: Some(to_proto(from)),
            to: Some(to_proto(to)),
            interval: interval as i32,
            rule: None,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Polls until `total + bots` reaches `want` (or 15 s); the stats either
/// way, for the caller to assert on.
async fn settled(
    client: &mut AnalyticsClient<tonic::transport::Channel>,
    code: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    want: u64,
) -> LinkStats {
    let reached = within(Duration::from_secs(15), || {
        let mut client = client.clone();
        async move {
            let s = stats(&mut client, code, from, to, Interval::Hour).await;
            (s.total + s.bots >= want).then_some(s)
        }
    })
    .await;
    match reached {
        Some(s) => s,
        // Timed out: the latest stats, short of `want`.
        None => stats(client, code, from, to, Interval::Hour).await,
    }
}

#[tokio::test]
async fn counts_once_splits_bots_and_buckets_across_a_day_boundary() {
    let f = Fixture::new().await;
    let (mut client, stop) = f.start().await;
    let late = day(0, 23, 30);
    let early = day(1, 0, 30);
    let events = [
        click("e1", "code1", late, FIREFOX, "192.0.2.1"),
        click("e2", "code1", late, FIREFOX, "192.0.2.1"), // same visitor, same day
        click("e3", "code1", early, FIREFOX, "192.0.2.1"), // same person, next day
        click("e4", "code1", early, FIREFOX, "192.0.2.2"),
        click(
            "e5",
            "code1",
            early,
            "Googlebot/2.1 (+http://www.google.com/bot.html)",
            "192.0.2.3",
        ),
    ];
    for e in &events {
        f.publish(e).await;
    }
    let mut head = click("e6", "code1", early, FIREFOX, "192.0.2.4");
    head.head_request = true;
    f.publish(&head).await;
    // Redeliveries of events already counted.
    f.publish(&events[0]).await;
    f.publish(&events[3]).await;

    let from = day(0, 22, 0);
    let to = day(1, 2, 0);
    let s = settled(&mut client, "code1", from, to, 6).await;
    assert_eq!((s.total, s.bots), (4, 2), "humans and bots");
    // A person is a unique visitor once per day: 1 on the 1st, 2 on the 2nd.
    assert_eq!(s.unique_visitors, 3);
    let hourly: Vec<u64> = s.series.iter().map(|p| p.clicks).collect();
    assert_eq!(hourly, vec![0, 2, 2, 0], "22h, 23h, 00h, 01h");
    let daily = stats(&mut client, "code1", from, to, Interval::Day).await;
    let days: Vec<u64> = daily.series.iter().map(|p| p.clicks).collect();
    assert_eq!(days, vec![2, 2]);
    // Whole UTC days come from the daily rollup: same numbers.
    let day1 = day(0, 0, 0);
    let day3 = day(2, 0, 0);
    let whole = stats(&mut client, "code1", day1, day3, Interval::Day).await;
    let whole_days: Vec<u64> = whole.series.iter().map(|p| p.clicks).collect();
    assert_eq!((whole_days, whole.total, whole.bots), (vec![2, 2], 4, 2));
    assert_eq!(s.referrers[0].name, "news.example.org");
    assert_eq!(s.browsers[0].name, "Firefox");
    assert_eq!(s.countries[0].name, "DE");
    assert_eq!(s.countries[0].clicks, 4);

    let top = client
        .top_links(TopLinksRequest {
            owner: "alice".into(),
            from: Some(to_proto(from)),
            to: Some(to_proto(to)),
            limit: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(top.links.len(), 1);
    assert_eq!(
        (top.links[0].name.as_str(), top.links[0].clicks),
        ("code1", 4)
    );

    // All-time totals: humans only, the owner's links only, unknown absent.
    let totals = |owner: &str, codes: &[&str]| ClickTotalsRequest {
        owner: owner.into(),
        codes: codes.iter().map(|c| c.to_string()).collect(),
    };
    let mine = client
        .click_totals(totals("alice", &["code1", "nope"]))
        .await
        .unwrap()
        .into_inner()
        .totals;
    assert_eq!(
        mine.into_iter().collect::<Vec<_>>(),
        vec![("code1".to_owned(), 4)]
    );
    let theirs = client
        .click_totals(totals("mallory", &["code1"]))
        .await
        .unwrap()
        .into_inner()
        .totals;
    assert!(theirs.is_empty(), "{theirs:?}");
    for bad in [totals("alice", &[]), totals("", &["code1"])] {
        let status = client.click_totals(bad).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
    f.cleanup(stop).await;
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_without_blocking_the_queue() {
    let f = Fixture::new().await;
    let (mut client, stop) = f.start().await;
    f.publish_raw(b"\xff\xfe definitely not protobuf", "poison-1")
        .await;
    let mut no_id = click("", "code2", Utc::now(), FIREFOX, "192.0.2.1");
    no_id.event_id.clear();
    f.publish(&no_id).await;
    let now = Utc::now();
    f.publish(&click("good", "code2", now, FIREFOX, "192.0.2.1"))
        .await;
    let s = settled(
        &mut client,
        "code2",
        now - chrono::Duration::hours(1),
        now + chrono::Duration::hours(1),
        1,
    )
    .await;
    assert_eq!(s.total, 1, "the good click behind the poison was counted");
    let dlq = format!("{}.dlq", f.queue);
    within(Duration::from_secs(10), || async {
        (f.messages_in(&dlq).await >= 2).then_some(())
    })
    .await;
    assert_eq!(f.messages_in(&dlq).await, 2);
    f.cleanup(stop).await;
}

/// Asserts INVALID_ARGUMENT naming `field`, without the value in the message.
#[track_caller]
fn expect_invalid<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    field: &str,
) {
    let status = result.expect_err(field);
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(status.metadata().get("sf-field").unwrap(), field);
    assert!(status.message().len() < 100, "the value is not echoed");
}

/// Issue 11: empty, NUL and over-long owners and codes are INVALID_ARGUMENT
/// naming the field (not UNAVAILABLE from PostgreSQL, not echoed back);
/// clicks that break the shared click rule are dead-lettered; and the
/// service keeps counting and answering.
#[tokio::test]
async fn hostile_requests_are_invalid_and_unstorable_clicks_are_dead_lettered() {
    let f = Fixture::new().await;
    let (mut client, stop) = f.start().await;
    let stats_of = |code: &str| GetLinkStatsRequest {
        code: code.into(),
        ..Default::default()
    };
    let top_of = |owner: &str| TopLinksRequest {
        owner: owner.into(),
        ..Default::default()
    };
    let totals_of = |owner: &str, code: &str| ClickTotalsRequest {
        owner: owner.into(),
        codes: vec!["code9".into(), code.into()],
    };
    let huge = "c".repeat(3 << 20);
    for code in ["", "ab\0cd", &"x".repeat(65), &huge] {
        expect_invalid(client.get_link_stats(stats_of(code)).await, "code");
    }
    for owner in ["", "al\0ce", "\u{9f}", &"o".repeat(129)] {
        expect_invalid(client.top_links(top_of(owner)).await, "owner");
        expect_invalid(
            client.click_totals(totals_of(owner, "code9")).await,
            "owner",
        );
    }
    expect_invalid(
        client.click_totals(totals_of("alice", "a\0b")).await,
        "codes",
    );
    expect_invalid(
        client.click_totals(totals_of("alice", &huge)).await,
        "codes",
    );
    // Empty requests: a precise answer each.
    expect_invalid(
        client.get_link_stats(GetLinkStatsRequest::default()).await,
        "code",
    );
    expect_invalid(client.top_links(TopLinksRequest::default()).await, "owner");
    expect_invalid(
        client.click_totals(ClickTotalsRequest::default()).await,
        "owner",
    );
    // Printable but no link's shape: zero stats, like any code without clicks.
    let none = client.get_link_stats(stats_of("a/b")).await.unwrap();
    assert_eq!(none.into_inner().total, 0);

    let now = Utc::now();
    let mut nul_code = click("nul-code", "code9", now, FIREFOX, "192.0.2.1");
    nul_code.code = "code\0x".into();
    let dated_1970 = click("old", "code9", DateTime::UNIX_EPOCH, FIREFOX, "192.0.2.1");
    let long_id = click(&"e".repeat(256), "code9", now, FIREFOX, "192.0.2.1");
    let not_an_ip = click("bad-ip", "code9", now, FIREFOX, "no.such.ip");
    for bad in [&nul_code, &dated_1970, &not_an_ip] {
        f.publish(bad).await;
    }
    // Its id cannot be an AMQP message id (a short string): that is the point.
    f.publish_raw(&long_id.encode_to_vec(), "long-id").await;
    f.publish(&click("good", "code9", now, FIREFOX, "192.0.2.1"))
        .await;
    let s = settled(
        &mut client,
        "code9",
        now - chrono::Duration::hours(1),
        now + chrono::Duration::hours(1),
        1,
    )
    .await;
    assert_eq!(s.total, 1, "only the storable click was counted");
    let dlq = format!("{}.dlq", f.queue);
    within(Duration::from_secs(10), || async {
        (f.messages_in(&dlq).await >= 4).then_some(())
    })
    .await;
    assert_eq!(f.messages_in(&dlq).await, 4);
    let top = client
        .top_links(top_of("alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(top.links.len(), 1);
    f.cleanup(stop).await;
}

#[tokio::test]
async fn batch_messages_count_every_click_once_and_a_bad_batch_is_dead_lettered_whole() {
    let f = Fixture::new().await;
    let (mut client, stop) = f.start().await;
    let now = Utc::now();
    let firsts: Vec<ClickEvent> = (0..120)
        .map(|i| click(&format!("b1-{i}"), "batched", now, FIREFOX, "192.0.2.1"))
        .collect();
    f.publish_batch(&firsts).await;
    // A batch with one click that can never be stored (no time): the whole
    // message goes to the DLQ for inspection rather than half-counted. It
    // sits in the third of the message's slices, after two were copied in.
    let mut spoiled: Vec<ClickEvent> = (0..700)
        .map(|i| click(&format!("b2-{i}"), "batched", now, FIREFOX, "192.0.2.2"))
        .collect();
    spoiled[600].occurred_at = None;
    f.publish_batch(&spoiled).await;
    f.publish_typed(
        b"\xff\xfe not a batch",
        "poison-batch",
        Some(amqp::CLICK_BATCH_TYPE),
    )
    .await;
    // A redelivered batch overlapping the first, plus new clicks, and an
    // old-style single-click message: all counted exactly once.
    let mut again = firsts[100..].to_vec();
    again.extend((0..30).map(|i| click(&format!("b3-{i}"), "batched", now, FIREFOX, "192.0.2.3")));
    f.publish_batch(&again).await;
    f.publish(&click("single", "batched", now, FIREFOX, "192.0.2.4"))
        .await;

    let (from, to) = (
        now - chrono::Duration::hours(1),
        now + chrono::Duration::hours(1),
    );
    let s = settled(&mut client, "batched", from, to, 151).await;
    assert_eq!(s.total, 120 + 30 + 1);
    let dlq = format!("{}.dlq", f.queue);
    within(Duration::from_secs(10), || async {
        (f.messages_in(&dlq).await >= 2).then_some(())
    })
    .await;
    assert_eq!(
        f.messages_in(&dlq).await,
        2,
        "the spoiled batch and the garbage"
    );
    // Nothing more arrives later: the count stays exact.
    assert_eq!(
        stats(&mut client, "batched", from, to, Interval::Hour)
            .await
            .total,
        151
    );
    f.cleanup(stop).await;
}

/// A consumer whose batches of up to 1,000 clicks wait a minute to fill,
/// unless `prefetch` messages are in hand or none came for `quiet_ms`.
async fn start_waiting_a_minute(
    f: &Fixture,
    prefetch: u16,
    quiet_ms: u64,
) -> (AnalyticsClient<tonic::transport::Channel>, Running) {
    f.start_with([
        ("SHORTFLEET_PREFETCH", prefetch.to_string()),
        ("SHORTFLEET_BATCH_MAX", "1000".to_owned()),
        ("SHORTFLEET_BATCH_MAX_WAIT_MS", "60000".to_owned()),
        ("SHORTFLEET_BATCH_QUIET_MS", quiet_ms.to_string()),
    ])
    .await
}

/// The broker sends nothing beyond the prefetch window until an ack, so a
/// batch holding the whole window is written at once: with a one-minute
/// batch wait, these clicks would otherwise wait that minute.
#[tokio::test]
async fn a_batch_holding_the_whole_prefetch_window_is_written_without_waiting() {
    let f = Fixture::new().await;
    let (mut client, stop) = start_waiting_a_minute(&f, 2, 60_000).await;
    let now = Utc::now();
    for message in 0..2 {
        let events: Vec<ClickEvent> = (0..3)
            .map(|i| {
                click(
                    &format!("w{message}-{i}"),
                    "window",
                    now,
                    FIREFOX,
                    "192.0.2.9",
                )
            })
            .collect();
        f.publish_batch(&events).await;
    }
    let (from, to) = (now - TimeDelta::hours(1), now + TimeDelta::hours(1));
    let s = settled(&mut client, "window", from, to, 6).await;
    assert_eq!(
        s.total, 6,
        "both messages stored well before the batch wait"
    );
    f.cleanup(stop).await;
}

/// Once messages stop coming, what is in hand is written: a lone click
/// does not wait out the batch's full wait.
#[tokio::test]
async fn a_batch_is_written_once_the_flow_pauses() {
    let f = Fixture::new().await;
    let (mut client, stop) = start_waiting_a_minute(&f, 50, 200).await;
    let now = Utc::now();
    let events = [click("q-1", "quiet", now, FIREFOX, "192.0.2.9")];
    f.publish_batch(&events).await;
    let (from, to) = (now - TimeDelta::hours(1), now + TimeDelta::hours(1));
    let s = settled(&mut client, "quiet", from, to, 1).await;
    assert_eq!(s.total, 1, "stored well before the one-minute batch wait");
    f.cleanup(stop).await;
}

#[tokio::test]
async fn a_consumer_stopped_mid_stream_loses_and_duplicates_nothing() {
    let f = Fixture::new().await;
    let now = Utc::now();
    for i in 0..600 {
        f.publish(&click(&format!("m{i}"), "code3", now, FIREFOX, "192.0.2.9"))
            .await;
    }
    let (mut client, stop) = f.start().await;
    let (from, to) = (
        now - chrono::Duration::hours(1),
        now + chrono::Duration::hours(1),
    );
    // Stop it as soon as some, but not all, clicks are stored. Polled every
    // 5 ms, not at the testkit's 20 ms: the sooner the stop, the more
    // batches are still in flight when it lands.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = stats(&mut client, "code3", from, to, Interval::Hour).await;
        if s.total > 0 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut client, stop) = f.start().await;
    let s = settled(&mut client, "code3", from, to, 600).await;
    assert_eq!(s.total, 600);
    // Nothing more trickles in later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stats(&mut client, "code3", from, to, Interval::Hour)
            .await
            .total,
        600
    );
    f.cleanup(stop).await;
}

#[tokio::test]
async fn a_geoip_file_supplies_the_country_a_trusted_header_did_not() {
    let path = std::env::temp_dir().join(format!(
        "shortfleet-stats-{}.mmdb",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(
        &path,
        mmdb::build(&[mmdb::Network {
            addr: "203.0.113.0".parse().unwrap(),
            prefix: 24,
            record: mmdb::country("NL"),
        }]),
    )
    .unwrap();
    let f = Fixture::new().await;
    let (mut client, stop) = f
        .start_with([("SHORTFLEET_GEOIP_DB", path.display().to_string())])
        .await;
    let at = day(3, 10, 0);
    let without_header = |id: &str, ip: &str| {
        let mut c = click(id, "geo", at, FIREFOX, ip);
        c.country = String::new();
        c
    };
    f.publish(&without_header("g1", "203.0.113.7")).await;
    f.publish(&without_header("g2", "::ffff:203.0.113.8")).await;
    // Not in the database: no country rather than a guess.
    f.publish(&without_header("g3", "192.0.2.50")).await;
    // The CDN's header wins over the database (it sees the real client).
    f.publish(&click("g4", "geo", at, FIREFOX, "203.0.113.9"))
        .await;

    let from = day(3, 0, 0);
    let to = day(4, 0, 0);
    let s = settled(&mut client, "geo", from, to, 4).await;
    std::fs::remove_file(&path).unwrap();
    assert_eq!(s.total, 4);
    let countries: Vec<(&str, u64)> = s
        .countries
        .iter()
        .map(|c| (c.name.as_str(), c.clicks))
        .collect();
    assert_eq!(countries, vec![("NL", 2), ("DE", 1)]);
    f.cleanup(stop).await;
}
