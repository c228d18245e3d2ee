//! PostgreSQL plumbing: pools whose every wait is bounded, creating a
//! service's database when absent, and versioned migrations applied at
//! start-up under an advisory lock (so two replicas starting together do not
//! race).

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::{Config, NoTls};

/// One versioned migration; `version` values must increase and never change.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Builds a pool for `url`. Waiting for a connection, connecting and
/// recycling are each bounded by `timeout`, so a down database turns into a
/// quick error instead of a hung request.
pub fn pool(url: &str, max_size: usize, timeout: Duration) -> anyhow::Result<Pool> {
    let mut config: Config = url.parse().context("parsing the database URL")?;
    config.connect_timeout(timeout);
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(timeout),
            create: Some(timeout),
            recycle: Some(timeout),
        })
        .build()
        .context("building the connection pool")
}

/// Creates the database named in `url` if it does not exist, by connecting to
/// the `postgres` maintenance database of the same server.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let config: Config = url.parse().context("parsing the database URL")?;
    let name = config
        .get_dbname()
        .context("the database URL names no database")?
        .to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    admin.connect_timeout(Duration::from_secs(5));
    let (client, connection) = admin
        .connect(NoTls)
        .await
        .context("connecting to the maintenance database")?;
    tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .context("looking up the database")?
        .is_some();
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match client
            .execute(&format!("CREATE DATABASE {quoted}"), &[])
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it between our check and our create.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(e).context("creating the database"),
        }
    }
    Ok(())
}

/// Applies every migration not yet recorded in `schema_migrations`, each in
/// its own transaction, holding an advisory lock for the whole run.
pub async fn migrate(pool: &Pool, migrations: &[Migration]) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("getting a connection")?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .context("creating schema_migrations")?;
    // Any constant works; it only has to be the same for every replica.
    client
        .execute("SELECT pg_advisory_lock(727272)", &[])
        .await
        .context("taking the migration lock")?;
    let result = apply_pending(&mut client, migrations).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock(727272)", &[])
        .await;
    result
}

async fn apply_pending(
    client: &mut deadpool_postgres::Object,
    migrations: &[Migration],
) -> anyhow::Result<()> {
    for m in migrations {
        let done = client
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&m.version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(m.sql)
            .await
            .with_context(|| format!("applying migration {} ({})", m.version, m.name))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
    }
    Ok(())
}

/// Every 2 s: checks the database answers (readiness dependency `name`)
/// and publishes the pool's use (`shortfleet_db_pool_connections`).
pub async fn track(
    pool: Pool,
    health: crate::ops::Health,
    name: &'static str,
    shutdown: tokio_util::sync::CancellationToken,
) {
    crate::periodic::every(Duration::from_secs(2), &shutdown, || async {
        let status = pool.status();
        let in_use = status.size.saturating_sub(status.available);
        metrics::gauge!("shortfleet_db_pool_connections", "state" => "in_use").set(in_use as f64);
        metrics::gauge!("shortfleet_db_pool_connections", "state" => "idle")
            .set(status.available as f64);
        metrics::gauge!("shortfleet_db_pool_max_connections").set(status.max_size as f64);
        metrics::gauge!("shortfleet_db_pool_waiting").set(status.waiting as f64);
        let up = match pool.get().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        };
        health.set(name, up);
    })
    .await;
}

/// A service's own database, ready to use: created if absent (best effort:
/// a managed database may forbid CREATE DATABASE, and the migrations then
/// say clearly if it is really missing), pooled, and migrated.
pub async fn open(
    url: &str,
    max_size: usize,
    timeout: Duration,
    migrations: &[Migration],
) -> anyhow::Result<Pool> {
    if let Err(e) = ensure_database(url).await {
        tracing::warn!(
            error = format!("{e:#}"),
            "could not ensure the database exists"
        );
    }
    let pool = pool(url, max_size, timeout)?;
    migrate(&pool, migrations)
        .await
        .context("migrating the database")?;
    Ok(pool)
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "shortfleet_db_pool_connections",
        metrics::Unit::Count,
        "PostgreSQL pool connections, by state (in_use, idle)."
    );
    metrics::describe_gauge!(
        "shortfleet_db_pool_max_connections",
        metrics::Unit::Count,
        "The PostgreSQL pool's connection limit."
    );
    metrics::describe_gauge!(
        "shortfleet_db_pool_waiting",
        metrics::Unit::Count,
        "Callers waiting for a PostgreSQL pool connection."
    );
}
