//! The test side of the link-events exchange: a private queue that sees
//! every event the relay publishes for one test.

use futures::StreamExt;
use lapin::{Channel, Connection, Consumer, ExchangeKind, types::FieldTable};
use prost::Message;
use shortfleet_common::amqp;
use shortfleet_proto::v1::LinkEvent;

use super::{AMQP_URL, DEADLINE};

/// A `LinkEvent` as it arrived from the broker.
#[derive(Debug)]
pub struct Received {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub event: LinkEvent,
}

/// A private queue bound to a test's exchange with `link.#`.
pub struct EventQueue {
    connection: Connection,
    _channel: Channel,
    consumer: Consumer,
}

impl EventQueue {
    /// Declares the exchange as the relay does (through the same
    /// topology code), so binding works whichever of the two comes first,
    /// then binds a fresh exclusive, auto-delete queue to it.
    pub async fn bind(exchange: &str) -> Self {
        let connection = amqp::connect(AMQP_URL, DEADLINE)
            .await
            .expect("connecting to RabbitMQ");
        let channel = amqp::open_channel(&connection, DEADLINE)
            .await
            .expect("opening a channel");
        let consumer = amqp::subscribe_private(
            &channel,
            exchange,
            ExchangeKind::Topic,
            amqp::LINK_EVENTS_BINDING,
            FieldTable::default(),
            "",
            true,
            DEADLINE,
        )
        .await
        .expect("subscribing the test queue");
        Self {
            connection,
            _channel: channel,
            consumer,
        }
    }

    /// The next event, decoded; fails the test after [`DEADLINE`].
    pub async fn next(&mut self) -> Received {
        let delivery = tokio::time::timeout(DEADLINE, self.consumer.next())
            .await
            .unwrap_or_else(|_| panic!("no link event within {DEADLINE:?}"))
            .expect("the consumer stream is open")
            .expect("a delivery, not an error");
        let event = LinkEvent::decode(delivery.data.as_slice()).expect("a protobuf LinkEvent");
        Received {
            routing_key: delivery.routing_key.as_str().to_owned(),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned()),
            event,
        }
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "test done".into()).await;
    }
}
