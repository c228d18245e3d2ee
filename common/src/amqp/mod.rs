//! RabbitMQ plumbing shared by every service that talks to the broker, one
//! idea per module:
//! - [`topology`]: what exists on the broker (the click queue with its
//!   dead-letter path, the `links.events` and `clicks.counted` exchanges,
//!   a replica's private subscription queue);
//! - [`publish`]: publishing with publisher confirms, mandatory (a message
//!   nobody can receive is an error) or not (an event nobody listens to is
//!   fine);
//! - [`supervise`]: the one reconnect loop, with jittered exponential
//!   backoff reported in [`Health`](crate::ops::Health).
//!
//! Every broker round trip goes through [`bounded`]: a broker that accepts
//! TCP but stops answering must turn into an error, not a hang. These
//! modules never hold domain logic; what a message means is the caller's
//! business.

use std::{future::Future, time::Duration};

use anyhow::Context;
use lapin::{Channel, Connection, ConnectionProperties};

pub mod publish;
pub mod supervise;
pub mod topology;

pub use publish::{ConfirmedPublisher, Mode, Outgoing, PublishError, kind_of, traceparent_of};
pub use supervise::{Backoff, SessionUp, jittered_delay, supervise};
pub use topology::{
    CLICK_ROUTING_KEY, DELIVERY_LIMIT, LINK_EVENTS_BINDING, QueueKind, declare_click_topology,
    declare_exchange, subscribe_private,
};

// The broker names every service agrees on, and the defaults of the
// `SHORTFLEET_*_EXCHANGE` / `_QUEUE` settings that rename them (tests run
// each against names of their own).

/// The exchange write-svc's outbox publishes `LinkEvent`s to (topic,
/// routing keys `link.created|updated|deleted`).
pub const LINK_EVENTS_EXCHANGE: &str = "links.events";
/// The broker `deploy/local/infra` runs: every service's default
/// `SHORTFLEET_AMQP_URL`.
pub const LOCAL_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The exchange click-logger publishes clicks to (direct).
pub const CLICKS_EXCHANGE: &str = "clicks";
/// The durable queue analytics-svc consumes clicks from.
pub const CLICKS_QUEUE: &str = "clicks.analytics";
/// The fanout exchange analytics-svc announces stored click counts on.
pub const CLICK_COUNTS_EXCHANGE: &str = "clicks.counted";

/// The `type` of a click message whose body is a `ClickBatch` (many clicks
/// per message). A message without it holds one `ClickEvent`, as releases
/// before batching sent; consumers accept both.
pub const CLICK_BATCH_TYPE: &str = "shortener.v1.ClickBatch";

/// Connects to `url` within `timeout`.
pub async fn connect(url: &str, timeout: Duration) -> anyhow::Result<Connection> {
    bounded(
        timeout,
        "connecting to RabbitMQ",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
}

/// Awaits one broker round trip within `timeout`, naming it in the error.
pub async fn bounded<T>(
    timeout: Duration,
    what: &'static str,
    call: impl Future<Output = lapin::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no answer within {timeout:?}"))?
        .context(what)
}

/// Opens a channel within `timeout`.
pub async fn open_channel(connection: &Connection, timeout: Duration) -> anyhow::Result<Channel> {
    bounded(timeout, "opening a channel", connection.create_channel()).await
}
