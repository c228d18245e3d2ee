//! A Redis client configured the same way for every service: it connects in
//! the background and reconnects forever with backoff, and every command
//! fails fast (instead of queueing) while the connection is down, bounded by
//! a per-command timeout. Callers decide what "Redis is down" means for them.

use std::time::Duration;

use anyhow::Context;
use fred::{
    prelude::{Builder, Client, ClientLike, Config, ReconnectPolicy},
    types::config::UnresponsiveConfig,
};

/// Builds a client for `url` and starts connecting; does not wait for it.
pub fn connect(url: &str, command_timeout: Duration) -> anyhow::Result<Client> {
    let mut config = Config::from_url(url).context("parsing the Redis URL")?;
    config.fail_fast = true;
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            // One attempt: a retry would only stretch the caller's timeout.
            c.max_command_attempts = 1;
            // A Redis that stopped answering is treated as down quickly.
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(Duration::from_secs(2)),
                interval: Duration::from_millis(500),
            };
        })
        .with_performance_config(|p| p.default_command_timeout = command_timeout)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
    let client = builder.build().context("building the Redis client")?;
    // The handle ends only when the client quits; reconnection is internal.
    drop(client.connect());
    Ok(client)
}

/// Every second: PINGs Redis and records it as readiness dependency
/// `name`, so readiness recovers even when no request needs Redis.
pub async fn track(
    client: Client,
    health: crate::ops::Health,
    name: &'static str,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use fred::interfaces::ClientLike as _;
    crate::periodic::every(Duration::from_secs(1), &shutdown, || async {
        health.set(name, client.ping::<String>(None).await.is_ok());
    })
    .await;
}
