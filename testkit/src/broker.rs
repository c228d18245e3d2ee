//! Removing the RabbitMQ names one test declared; best effort, since a
//! test's outcome is already decided when it cleans up.

use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueDeleteOptions},
};

use crate::{AMQP, DEADLINE};

/// Deletes the click topology `shortfleet_common::amqp` declares for
/// `exchange` and `queue`: both, and their dead-letter pair.
pub async fn remove_click_topology(channel: &Channel, exchange: &str, queue: &str) {
    for q in [queue.to_owned(), format!("{queue}.dlq")] {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for x in [exchange.to_owned(), format!("{exchange}.dlx")] {
        let _ = channel
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// Deletes `exchange` over a connection of its own. Failures are printed,
/// never raised.
pub async fn delete_exchange(exchange: &str) {
    let delete = async {
        let connection = Connection::connect(AMQP, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await?;
        let _ = connection.close(200, "test cleanup".into()).await;
        anyhow::Ok(())
    };
    match tokio::time::timeout(DEADLINE, delete).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("could not delete exchange {exchange}: {e:#}"),
        Err(_) => eprintln!("deleting exchange {exchange} timed out"),
    }
}
