//! The shared click topology and confirmed publisher (`shortfleet_common::amqp`)
//! against a real RabbitMQ: idempotent declaration, the classic fallback,
//! and unroutable messages reported as errors rather than confirmed.

use std::time::Duration;

use lapin::{
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable, ShortString},
};
use shortfleet_common::amqp::{
    self, CLICK_ROUTING_KEY, ConfirmedPublisher, Outgoing, PublishError, QueueKind,
};

use shortfleet_testkit::{AMQP, broker};
const TIMEOUT: Duration = Duration::from_secs(5);

fn names() -> (String, String) {
    let id = shortfleet_testkit::unique_id();
    (format!("test.topo.{id}"), format!("test.topo.{id}.q"))
}

async fn cleanup(connection: &lapin::Connection, exchange: &str, queue: &str) {
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    broker::remove_click_topology(&channel, exchange, queue).await;
}

#[tokio::test]
async fn declaring_twice_is_harmless_and_yields_a_quorum_queue() {
    let (exchange, queue) = names();
    let connection = amqp::connect(AMQP, TIMEOUT).await.unwrap();
    for _ in 0..2 {
        let kind = amqp::declare_click_topology(&connection, &exchange, &queue, TIMEOUT)
            .await
            .unwrap();
        assert_eq!(kind, QueueKind::Quorum);
    }
    let publisher = ConfirmedPublisher::open(&connection, TIMEOUT)
        .await
        .unwrap();
    let message = Outgoing {
        message_id: "m1",
        payload: b"x",
        traceparent: "",
        kind: "",
    };
    publisher
        .publish(&exchange, CLICK_ROUTING_KEY, message)
        .await
        .unwrap();
    // No queue is bound with this key: the broker returns the message.
    let err = publisher
        .publish(&exchange, "nowhere", message)
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Unroutable { .. }), "{err:?}");
    assert!(publisher.is_open());
    cleanup(&connection, &exchange, &queue).await;
}

#[tokio::test]
async fn an_existing_classic_queue_is_kept() {
    let (exchange, queue) = names();
    let connection = amqp::connect(AMQP, TIMEOUT).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(format!("{exchange}.dlx").as_str().into()),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    let kind = amqp::declare_click_topology(&connection, &exchange, &queue, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(kind, QueueKind::Classic);
    // The caller's own channel survived the refused quorum declaration.
    assert!(channel.status().connected());
    cleanup(&connection, &exchange, &queue).await;
}

#[tokio::test]
async fn a_broker_that_never_answers_fails_within_the_timeout() {
    // Accepts TCP and then says nothing: only the timeout can end the wait.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let started = std::time::Instant::now();
    let result = amqp::connect(
        &format!("amqp://guest:guest@{addr}/%2f"),
        Duration::from_millis(300),
    )
    .await;
    let err = result.expect_err("connecting to a silent peer must fail");
    assert!(format!("{err:#}").contains("no answer"), "{err:#}");
    assert!(started.elapsed() < Duration::from_secs(3));
    hold.abort();
}
