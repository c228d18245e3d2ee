//! click-logger against a real RabbitMQ: confirmed publishing, validation,
//! an outage (a cut TCP proxy in front of the broker) spooled and replayed
//! exactly once, and a restart that replays a non-empty spool.

use std::{collections::BTreeMap, time::Duration};

use futures::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicConsumeOptions},
    types::FieldTable,
};
use prost::Message;
use shortfleet_common::{amqp, config::ConfigSource, time::to_proto};
use shortfleet_e2e::proxy::FaultProxy;
use shortfleet_proto::v1::{ClickBatch, ClickEvent, click_logger_client::ClickLoggerClient};
use shortfleet_testkit::{
    AMQP, broker,
    services::{self, Running},
};
use tonic::Code;

struct Names {
    exchange: String,
    queue: String,
    spool: std::path::PathBuf,
}

impl Names {
    fn fresh() -> Self {
        let id = shortfleet_testkit::unique_id();
        Self {
            exchange: format!("test.clicks.{id}"),
            queue: format!("test.clicks.{id}.analytics"),
            spool: std::env::temp_dir().join(format!("sf-click-spool-{id}")),
        }
    }

    async fn cleanup(&self, channel: &Channel) {
        broker::remove_click_topology(channel, &self.exchange, &self.queue).await;
        let _ = std::fs::remove_dir_all(&self.spool);
    }
}

async fn start(names: &Names, amqp_url: &str) -> (String, Running) {
    let source = ConfigSource::from_pairs([
        ("SHORTFLEET_GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("SHORTFLEET_OPS_ADDR", "127.0.0.1:0".to_owned()),
        ("SHORTFLEET_AMQP_URL", amqp_url.to_owned()),
        ("SHORTFLEET_AMQP_TIMEOUT_MS", "1000".to_owned()),
        ("SHORTFLEET_CLICKS_EXCHANGE", names.exchange.clone()),
        ("SHORTFLEET_CLICKS_QUEUE", names.queue.clone()),
        ("SHORTFLEET_SPOOL_DIR", names.spool.display().to_string()),
    ]);
    let running = services::start::<click_logger::App>(&source).await;
    (running.url(), running)
}

async fn broker_channel(names: &Names) -> (Connection, Channel) {
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    amqp::declare_click_topology(&conn, &names.exchange, &names.queue, Duration::from_secs(5))
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    (conn, channel)
}

/// When test clicks happened: an hour before the tests started (a click is
/// storable for 400 days), the same for every call so batches compare equal.
static CLICK_TIME: std::sync::LazyLock<chrono::DateTime<chrono::Utc>> =
    std::sync::LazyLock::new(|| chrono::Utc::now() - chrono::TimeDelta::hours(1));

fn batch(prefix: &str, n: usize) -> ClickBatch {
    ClickBatch {
        events: (0..n)
            .map(|i| ClickEvent {
                event_id: format!("{prefix}-{i}"),
                code: "abc1234".into(),
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                occurred_at: Some(to_proto(
                    *CLICK_TIME + chrono::TimeDelta::milliseconds(i as i64),
                )),
                ..Default::default()
            })
            .collect(),
        sequence: 0,
    }
}

/// The clicks of one message: a non-empty `ClickBatch`, typed as one.
fn clicks_of(delivery: &lapin::message::Delivery) -> Vec<ClickEvent> {
    assert_eq!(amqp::kind_of(&delivery.properties), amqp::CLICK_BATCH_TYPE);
    let events = ClickBatch::decode(delivery.data.as_slice()).unwrap().events;
    assert!(!events.is_empty());
    events
}

/// Consumes until `want` distinct events arrived (or 15 s); returns how many
/// times each event id was seen.
async fn drain(channel: &Channel, queue: &str, want: usize) -> BTreeMap<String, usize> {
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut seen = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while seen.len() < want {
        let Ok(Some(delivery)) = tokio::time::timeout_at(deadline, consumer.next()).await else {
            break;
        };
        let delivery = delivery.unwrap();
        let events = clicks_of(&delivery);
        assert_eq!(
            amqp::traceparent_of(&delivery.properties),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string()),
            Some(events[0].event_id.clone())
        );
        for event in events {
            *seen.entry(event.event_id).or_default() += 1;
        }
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    // Anything further would be a duplicate: give it a moment to show up.
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(300), consumer.next()).await
    {
        for event in clicks_of(&delivery) {
            *seen.entry(event.event_id).or_default() += 1;
        }
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    seen
}

#[tokio::test]
async fn batches_are_published_with_confirms_and_validated() {
    let names = Names::fresh();
    let (_conn, channel) = broker_channel(&names).await;
    let (url, stop) = start(&names, AMQP).await;
    let mut client = ClickLoggerClient::connect(url).await.unwrap();
    let ack = client
        .log_clicks(batch("a", 50))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.accepted, 50);
    let seen = drain(&channel, &names.queue, 50).await;
    assert_eq!(seen.len(), 50);
    assert!(seen.values().all(|n| *n == 1));

    let mut invalid = batch("b", 2);
    invalid.events[1].event_id.clear();
    let err = client.log_clicks(invalid).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    stop.cancel();
    names.cleanup(&channel).await;
}

#[tokio::test]
async fn an_outage_is_spooled_and_replayed_exactly_once() {
    let names = Names::fresh();
    let (_conn, channel) = broker_channel(&names).await;
    let proxy = FaultProxy::start("127.0.0.1:5672".parse().unwrap())
        .await
        .unwrap();
    let (url, stop) = start(&names, &format!("amqp://guest:guest@{}/%2f", proxy.addr)).await;
    let mut client = ClickLoggerClient::connect(url).await.unwrap();
    assert_eq!(
        client
            .log_clicks(batch("before", 20))
            .await
            .unwrap()
            .into_inner()
            .accepted,
        20
    );

    proxy.cut();
    // Acknowledged while the broker is unreachable: on disk.
    for i in 0..5 {
        let ack = client
            .log_clicks(batch(&format!("during{i}"), 20))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ack.accepted, 20);
    }
    let spooled: u64 = std::fs::read_dir(&names.spool)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(spooled > 0, "nothing was spooled during the outage");

    proxy.restore();
    assert_eq!(
        client
            .log_clicks(batch("after", 20))
            .await
            .unwrap()
            .into_inner()
            .accepted,
        20
    );
    let seen = drain(&channel, &names.queue, 140).await;
    assert_eq!(seen.len(), 140, "clicks lost");
    let dupes: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "duplicated: {dupes:?}");
    stop.cancel();
    names.cleanup(&channel).await;
}

#[tokio::test]
async fn a_restart_replays_a_non_empty_spool() {
    let names = Names::fresh();
    let (_conn, channel) = broker_channel(&names).await;
    // Nothing listens on port 1: everything goes to the spool.
    let (url, stop) = start(&names, "amqp://guest:guest@127.0.0.1:1/%2f").await;
    let mut client = ClickLoggerClient::connect(url).await.unwrap();
    assert_eq!(
        client
            .log_clicks(batch("spooled", 30))
            .await
            .unwrap()
            .into_inner()
            .accepted,
        30
    );
    // Acknowledged means on disk: the spool holds exactly those clicks.
    let mut on_disk = Vec::new();
    for entry in std::fs::read_dir(&names.spool).unwrap() {
        let (events, left_over) =
            click_logger::spool::decode(&std::fs::read(entry.unwrap().path()).unwrap());
        assert_eq!(left_over, 0);
        on_disk.extend(events);
    }
    assert_eq!(on_disk, batch("spooled", 30).events);
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (_url, stop) = start(&names, AMQP).await;
    let seen = drain(&channel, &names.queue, 30).await;
    assert_eq!(seen.len(), 30);
    assert!(seen.values().all(|n| *n == 1));
    stop.cancel();
    names.cleanup(&channel).await;
}

#[tokio::test]
async fn a_full_batch_with_long_user_agents_is_published() {
    let names = Names::fresh();
    let (_conn, channel) = broker_channel(&names).await;
    let (url, stop) = start(&names, AMQP).await;
    let mut client = ClickLoggerClient::connect(url).await.unwrap();
    let mut full = batch("full", click_logger::service::MAX_BATCH);
    // ~5 MB in all: past tonic's default 4 MiB message limit.
    for e in &mut full.events {
        e.user_agent = "Mozilla/5.0 ".repeat(40);
    }
    let ack = client.log_clicks(full).await.unwrap().into_inner();
    assert_eq!(ack.accepted as usize, click_logger::service::MAX_BATCH);
    let seen = drain(&channel, &names.queue, click_logger::service::MAX_BATCH).await;
    assert_eq!(seen.len(), click_logger::service::MAX_BATCH);

    let too_big = batch("big", click_logger::service::MAX_BATCH + 1);
    let err = client.log_clicks(too_big).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut no_code = batch("nocode", 2);
    no_code.events[0].code.clear();
    let err = client.log_clicks(no_code).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    stop.cancel();
    names.cleanup(&channel).await;
}

#[tokio::test]
async fn a_stream_acknowledges_each_batch_in_order_and_flags_invalid_ones() {
    let names = Names::fresh();
    let (_conn, channel) = broker_channel(&names).await;
    let (url, stop) = start(&names, AMQP).await;
    let mut client = ClickLoggerClient::connect(url).await.unwrap();
    let mut invalid = batch("bad", 2);
    invalid.events[0].code.clear();
    let mut batches = vec![batch("s1", 10), invalid, batch("s2", 10)];
    for (i, b) in batches.iter_mut().enumerate() {
        b.sequence = i as u64 + 1;
    }
    let mut acks = client
        .stream_clicks(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(ack) = acks.message().await.unwrap() {
        seen.push((
            ack.sequence,
            ack.accepted,
            ack.invalid,
            ack.error.is_empty(),
        ));
    }
    assert_eq!(
        seen,
        vec![
            (1, 10, false, true),
            (2, 0, true, false),
            (3, 10, false, true)
        ]
    );
    let delivered = drain(&channel, &names.queue, 20).await;
    assert_eq!(delivered.len(), 20);
    assert!(
        delivered
            .keys()
            .all(|id| id.starts_with("s1") || id.starts_with("s2"))
    );
    stop.cancel();
    names.cleanup(&channel).await;
}

/// Issue 11: clicks analytics could never store (a 256-byte event id that
/// would panic lapin, dates in 1970 or the year 10000, a client IP that is
/// not one, a NUL in the code, a 5 MB referrer) refuse their whole batch,
/// naming index and field, on both methods; nothing of it reaches the
/// queue, and valid batches go on being published.
#[tokio::test]
async fn unstorable_clicks_are_refused_naming_index_and_field() {
    type Probe = fn(&mut ClickEvent);
    let probes: [(&str, Probe); 8] = [
        ("event_id", |e| e.event_id = "e".repeat(256)),
        ("occurred_at", |e| {
            e.occurred_at = Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            })
        }),
        ("occurred_at", |e| {
            e.occurred_at = Some(prost_types::Timestamp {
                seconds: 253_402_300_800,
                nanos: 0,
            })
        }),
        ("client_ip", |e| e.client_ip = "not-an-ip".into()),
        ("code", |e| e.code = "abc\0xyz".into()),
        ("referrer", |e| e.referrer = "r".repeat(5 << 20)),
        ("user_agent", |e| e.user_agent = "Mozilla\n".into()),
        ("owner", |e| e.owner = "\u{9b}".into()),
    ];
    let names = Names::fresh();
    let (_conn, channel) = broker_channel(&names).await;
    let (url, stop) = start(&names, AMQP).await;
    let mut client = ClickLoggerClient::connect(url)
        .await
        .unwrap()
        .max_encoding_message_size(32 << 20);

    let mut stream_batches = Vec::new();
    for (i, (field, probe)) in probes.iter().enumerate() {
        let mut bad = batch(&format!("bad{i}"), 3);
        probe(&mut bad.events[1]);
        stream_batches.push(bad.clone());
        let err = client.log_clicks(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        let named = format!("events[1].{field}");
        assert_eq!(err.metadata().get("sf-field").unwrap(), named.as_str());
        assert!(err.message().starts_with(&named), "{}", err.message());
        assert!(err.message().len() < 100, "the value is not echoed");
    }
    // An empty batch is genuinely valid: nothing to log.
    let empty = client.log_clicks(ClickBatch::default()).await.unwrap();
    assert_eq!(empty.into_inner().accepted, 0);

    // The same probes on a stream: each batch's ack says invalid; the
    // stream goes on and takes the valid batch after them.
    stream_batches.push(batch("good", 5));
    for (i, b) in stream_batches.iter_mut().enumerate() {
        b.sequence = i as u64 + 1;
    }
    let mut acks = client
        .stream_clicks(tokio_stream::iter(stream_batches))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(ack) = acks.message().await.unwrap() {
        seen.push((ack.sequence, ack.accepted, ack.invalid));
    }
    let mut expected: Vec<_> = (1..=probes.len() as u64).map(|s| (s, 0, true)).collect();
    expected.push((probes.len() as u64 + 1, 5, false));
    assert_eq!(seen, expected);
    // An empty stream ends cleanly.
    let mut none = client
        .stream_clicks(tokio_stream::iter(Vec::<ClickBatch>::new()))
        .await
        .unwrap()
        .into_inner();
    assert!(none.message().await.unwrap().is_none());

    // Still publishing; only valid clicks ever reached the queue.
    let ack = client.log_clicks(batch("after", 5)).await.unwrap();
    assert_eq!(ack.into_inner().accepted, 5);
    let delivered = drain(&channel, &names.queue, 10).await;
    assert_eq!(delivered.len(), 10);
    assert!(
        delivered
            .keys()
            .all(|id| id.starts_with("good") || id.starts_with("after")),
        "{delivered:?}"
    );
    stop.cancel();
    names.cleanup(&channel).await;
}
