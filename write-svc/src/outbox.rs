//! The outbox relay: publishes committed `LinkEvent` rows to the
//! `links.events` exchange with publisher confirms, and marks them sent only
//! after the broker confirmed them. A crash between commit and publish loses
//! nothing (the row is still pending); a crash between confirm and marking
//! republishes (at-least-once; read-svc's invalidation is idempotent).
//!
//! RabbitMQ down: rows accumulate in PostgreSQL and the relay reconnects
//! through [`amqp::supervise`]; writes keep working. PostgreSQL down: the relay waits and retries.

use std::{sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use lapin::ExchangeKind;
use shortfleet_common::{
    amqp::{self, ConfirmedPublisher, Mode, Outgoing, SessionUp},
    ops::Health,
};
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
        let this = &self;
        amqp::supervise(
            "rabbitmq",
            "outbox relay",
            Some(self.health.clone()),
            shutdown.clone(),
            |up| {
                let shutdown = shutdown.clone();
                async move { this.session(up, &shutdown).await }
            },
        )
        .await;
    }

    /// One broker session: relays until shutdown (`Ok`) or a broker
    /// failure (`Err`). Link events are published non-mandatory: an
    /// exchange nobody subscribes to yet is normal.
    async fn session(&self, up: SessionUp, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let connection = amqp::connect(&self.amqp_url, self.timeout).await?;
        let channel = amqp::open_channel(&connection, self.timeout).await?;
        amqp::declare_exchange(&channel, &self.exchange, ExchangeKind::Topic, self.timeout).await?;
        let publisher =
            ConfirmedPublisher::open_with(&connection, Mode::Optional, self.timeout).await?;
        up.up();
        self.drain_until_error(&publisher, shutdown).await
    }

    async fn drain_until_error(
        &self,
        publisher: &ConfirmedPublisher,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let published = match self.publish_batch(publisher).await {
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
                    let _ = self.publish_batch(publisher).await;
                    return Ok(());
                }
            }
        }
    }

    async fn publish_batch(&self, publisher: &ConfirmedPublisher) -> Result<usize, RelayError> {
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
        let rows: Vec<(i64, String, String, Vec<u8>)> = rows
            .iter()
            .map(|r| {
                (
                    r.get("id"),
                    r.get("event_id"),
                    r.get("routing_key"),
                    r.get("payload"),
                )
            })
            .collect();
        let messages: Vec<(&str, Outgoing<'_>)> = rows
            .iter()
            .map(|(_, event_id, routing_key, payload)| {
                let message = Outgoing {
                    message_id: event_id,
                    payload,
                    traceparent: "",
                    kind: "",
                };
                (routing_key.as_str(), message)
            })
            .collect();
        publisher
            .publish_routed(&self.exchange, &messages)
            .await
            .map_err(|e| {
                RelayError::Broker(anyhow::Error::new(e).context("publishing link events"))
            })?;
        let ids: Vec<i64> = rows.iter().map(|(id, ..)| *id).collect();
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

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_outbox_published_total",
        metrics::Unit::Count,
        "Outbox link events published and confirmed."
    );
}
