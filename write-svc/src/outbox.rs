//! The outbox relay: publishes committed `LinkEvent` rows to the
//! `links.events` exchange with publisher confirms, and marks them sent only
//! after the broker confirmed them. A crash between commit and publish loses
//! nothing (the row is still pending); a crash between confirm and marking
//! republishes (at-least-once; read-svc's invalidation is idempotent).
//!
//! RabbitMQ down: rows accumulate in PostgreSQL and the relay reconnects with
//! backoff; writes keep working. PostgreSQL down: the relay waits and retries.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use deadpool_postgres::Pool;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::FieldTable,
};
use shortfleet_common::ops::Health;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Rows published per transaction.
const BATCH: i64 = 200;
/// Published rows are kept this long for forensics, then deleted.
const KEEP_PUBLISHED: &str = "1 day";

pub struct OutboxRelay {
    pub pool: Pool,
    pub amqp_url: String,
    pub exchange: String,
    pub health: Health,
    pub wakeup: Arc<Notify>,
    /// Bounds connecting and each confirm wait.
    pub timeout: Duration,
}

impl OutboxRelay {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.connect().await {
                Ok((_connection, channel)) => {
                    self.health.set("rabbitmq", true);
                    backoff = Duration::from_millis(100);
                    if let Err(e) = self.drain_until_error(&channel, &shutdown).await {
                        tracing::warn!(error = format!("{e:#}"), "outbox relay interrupted");
                    }
                }
                Err(e) => {
                    self.health.set("rabbitmq", false);
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "outbox relay cannot reach RabbitMQ"
                    );
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn connect(&self) -> anyhow::Result<(Connection, Channel)> {
        let connection = tokio::time::timeout(
            self.timeout,
            Connection::connect(&self.amqp_url, ConnectionProperties::default()),
        )
        .await
        .context("connecting to RabbitMQ timed out")?
        .context("connecting to RabbitMQ")?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .context("declaring the link events exchange")?;
        Ok((connection, channel))
    }

    async fn drain_until_error(
        &self,
        channel: &Channel,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let published = match self.publish_batch(channel).await {
                Ok(n) => n,
                // A database hiccup is not a broker problem: wait and retry
                // on the same channel.
                Err(RelayError::Database(e)) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "outbox relay cannot read the outbox"
                    );
                    0
                }
                Err(RelayError::Broker(e)) => return Err(e),
            };
            metrics::counter!("shortfleet_outbox_published_total").increment(published as u64);
            if published as i64 == BATCH {
                continue;
            }
            tokio::select! {
                () = self.wakeup.notified() => {}
                // Rows written by another replica, or left by a crash.
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.cancelled() => {
                    // Publish what this replica committed before exiting.
                    let _ = self.publish_batch(channel).await;
                    return Ok(());
                }
            }
        }
    }

    async fn publish_batch(&self, channel: &Channel) -> Result<usize, RelayError> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        // SKIP LOCKED lets several replicas relay side by side.
        let rows = tx
            .query(
                &tx.prepare_cached(
                    "SELECT id, event_id, routing_key, payload FROM outbox
                     WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                )
                .await
                .map_err(db)?,
                &[&BATCH],
            )
            .await
            .map_err(db)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut confirms = Vec::with_capacity(rows.len());
        for row in &rows {
            let event_id: String = row.get("event_id");
            let routing_key: String = row.get("routing_key");
            let payload: Vec<u8> = row.get("payload");
            let confirm = channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &payload,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_message_id(event_id.as_str().into())
                        .with_content_type("application/x-protobuf".into()),
                )
                .await
                .map_err(|e| RelayError::Broker(e.into()))?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirmation = tokio::time::timeout(self.timeout, confirm)
                .await
                .map_err(|_| RelayError::Broker(anyhow::anyhow!("publisher confirm timed out")))?
                .map_err(|e| RelayError::Broker(e.into()))?;
            if let Confirmation::Nack(_) = confirmation {
                return Err(RelayError::Broker(anyhow::anyhow!(
                    "broker refused a link event"
                )));
            }
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.get("id")).collect();
        tx.execute(
            &tx.prepare_cached("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
                .await
                .map_err(db)?,
            &[&ids],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(rows.len())
    }
}

/// Deletes published outbox rows and expired idempotency keys every minute.
pub async fn housekeeping(store: crate::store::Store, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match store.expire_idempotency_keys().await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "expired idempotency keys"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "idempotency key cleanup failed"),
        }
        if let Ok(client) = store.pool().get().await {
            let _ = client
                .execute(
                    &format!(
                        "DELETE FROM outbox WHERE published_at < now() - interval '{KEEP_PUBLISHED}'"
                    ),
                    &[],
                )
                .await;
        }
    }
}

enum RelayError {
    Database(anyhow::Error),
    Broker(anyhow::Error),
}

fn db(e: impl Into<anyhow::Error>) -> RelayError {
    RelayError::Database(e.into())
}
