//! Publishing with publisher confirms: a publish succeeds only once the
//! broker took responsibility for the message. Two modes:
//! [`Mode::Mandatory`] also fails a message no queue receives (clicks: the
//! topology is missing, so "sent" would be a lie), [`Mode::Optional`] does
//! not (link events: an exchange nobody subscribes to yet is normal).

use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

use super::{bounded, open_channel};

/// One message to publish.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Unique per message; consumers dedupe on it.
    pub message_id: &'a str,
    pub payload: &'a [u8],
    /// W3C trace context of the work that produced it ("" for none), sent
    /// as the `traceparent` header.
    pub traceparent: &'a str,
    /// The protobuf message in the body, sent as the AMQP `type` property
    /// (e.g. [`CLICK_BATCH_TYPE`](super::CLICK_BATCH_TYPE)); "" leaves it unset.
    pub kind: &'a str,
}

/// Why a publish was not confirmed. Callers tell "the broker is away"
/// (retry later) from "the broker will never take this as sent"
/// (unroutable: the topology is missing).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No route to any queue: the broker returned the mandatory message.
    #[error("message {message_id} was unroutable")]
    Unroutable { message_id: String },
    /// The broker refused to take responsibility for the message.
    #[error("the broker nacked message {message_id}")]
    Nacked { message_id: String },
    #[error("publisher confirms did not arrive within {0:?}")]
    Timeout(Duration),
    /// The channel or connection failed.
    #[error("publishing failed")]
    Channel(#[from] lapin::Error),
}

/// Whether a message no queue receives is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Published `mandatory`: the broker returns an unroutable message and
    /// the publish fails with [`PublishError::Unroutable`].
    Mandatory,
    /// An exchange without subscribers swallows the message, and that is
    /// fine (events for whoever listens).
    Optional,
}

/// A channel in confirm mode: every publish is persistent and succeeds only
/// once the broker confirmed it (and, in [`Mode::Mandatory`], did not
/// return it).
#[derive(Clone)]
pub struct ConfirmedPublisher {
    channel: Channel,
    mode: Mode,
    timeout: Duration,
}

impl ConfirmedPublisher {
    /// Opens a channel on `connection` in confirm mode, publishing
    /// mandatory messages. `timeout` also bounds every later publish.
    pub async fn open(connection: &Connection, timeout: Duration) -> anyhow::Result<Self> {
        Self::open_with(connection, Mode::Mandatory, timeout).await
    }

    /// [`open`](Self::open) with the [`Mode`] of your choice.
    pub async fn open_with(
        connection: &Connection,
        mode: Mode,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let channel = open_channel(connection, timeout).await?;
        bounded(
            timeout,
            "enabling publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(Self {
            channel,
            mode,
            timeout,
        })
    }

    /// Whether the channel is still usable; a failed publish may have
    /// closed it, and then the caller should reconnect.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes one message and waits for its confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Outgoing<'_>,
    ) -> Result<(), PublishError> {
        self.publish_routed(exchange, &[(routing_key, message)])
            .await
    }

    /// Publishes every message with one routing key, then waits for all
    /// their confirms.
    pub async fn publish_all(
        &self,
        exchange: &str,
        routing_key: &str,
        messages: &[Outgoing<'_>],
    ) -> Result<(), PublishError> {
        let routed: Vec<(&str, Outgoing<'_>)> =
            messages.iter().map(|m| (routing_key, *m)).collect();
        self.publish_routed(exchange, &routed).await
    }

    /// Publishes every message with its own routing key, then waits for all
    /// their confirms: one round trip's latency for the whole batch instead
    /// of one per message. The whole call, sending included (the broker may
    /// throttle a publisher), is bounded by the timeout.
    pub async fn publish_routed(
        &self,
        exchange: &str,
        messages: &[(&str, Outgoing<'_>)],
    ) -> Result<(), PublishError> {
        let options = BasicPublishOptions {
            mandatory: self.mode == Mode::Mandatory,
            ..Default::default()
        };
        let all = async {
            let mut confirms = Vec::with_capacity(messages.len());
            for (routing_key, m) in messages {
                let confirm = self
                    .channel
                    .basic_publish(
                        exchange.into(),
                        (*routing_key).into(),
                        options,
                        m.payload,
                        properties(m),
                    )
                    .await?;
                confirms.push((m.message_id, confirm));
            }
            for (message_id, confirm) in confirms {
                let message_id = || message_id.to_owned();
                match confirm.await? {
                    Confirmation::Ack(None) => {}
                    // Confirms were enabled in `open`; this is unreachable,
                    // but "not confirmed" must never pass for "confirmed".
                    Confirmation::NotRequested | Confirmation::Nack(_) => {
                        return Err(PublishError::Nacked {
                            message_id: message_id(),
                        });
                    }
                    // Only a mandatory message comes back.
                    Confirmation::Ack(Some(_)) => {
                        return Err(PublishError::Unroutable {
                            message_id: message_id(),
                        });
                    }
                }
            }
            Ok(())
        };
        tokio::time::timeout(self.timeout, all)
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))?
    }
}

fn properties(m: &Outgoing<'_>) -> BasicProperties {
    let mut headers = FieldTable::default();
    if !m.traceparent.is_empty() {
        headers.insert(
            ShortString::from("traceparent"),
            AMQPValue::LongString(m.traceparent.into()),
        );
    }
    let properties = BasicProperties::default()
        // Persistent: survives a broker restart once confirmed.
        .with_delivery_mode(2)
        .with_message_id(m.message_id.into())
        .with_content_type("application/x-protobuf".into())
        .with_headers(headers);
    if m.kind.is_empty() {
        properties
    } else {
        properties.with_type(m.kind.into())
    }
}

/// The AMQP `type` of a delivery ("" when absent).
pub fn kind_of(properties: &BasicProperties) -> &str {
    properties.kind().as_ref().map_or("", |k| k.as_str())
}

/// The `traceparent` header of a delivery ("" when absent).
pub fn traceparent_of(properties: &BasicProperties) -> String {
    properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("traceparent"))
        .and_then(|v| match v {
            AMQPValue::LongString(s) => Some(s.to_string()),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            _ => None,
        })
        .unwrap_or_default()
}
