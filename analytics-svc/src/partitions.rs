//! Keeps daily partitions of `clicks` ready ahead of time and drops those
//! past retention. Runs at start-up and then hourly; a failure is logged and
//! retried (clicks meanwhile land in the default partition).

use std::time::Duration;

use chrono::{Days, NaiveDate, Utc};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

const DAYS_AHEAD: u64 = 7;

pub fn partition_name(day: NaiveDate) -> String {
    format!("clicks_{}", day.format("%Y%m%d"))
}

/// Creates partitions for yesterday through `DAYS_AHEAD` days ahead.
pub async fn prepare(pool: &Pool) -> anyhow::Result<()> {
    let client = pool.get().await?;
    let today = Utc::now().date_naive();
    let first = today - Days::new(1);
    for offset in 0..=DAYS_AHEAD + 1 {
        let day = first + Days::new(offset);
        let next = day + Days::new(1);
        let name = partition_name(day);
        let exists = client
            .query_opt("SELECT 1 FROM pg_class WHERE relname = $1", &[&name])
            .await?
            .is_some();
        if exists {
            continue;
        }
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {name} PARTITION OF clicks FOR VALUES FROM ('{day}') TO ('{next}')"
        );
        if let Err(e) = client.batch_execute(&sql).await {
            // Rows for that day already sit in the default partition; they
            // stay there and are still counted.
            tracing::warn!(partition = %name, error = %e, "could not create a click partition");
        }
    }
    Ok(())
}

/// Drops raw click partitions older than `retention_days`.
pub async fn drop_expired(pool: &Pool, retention_days: u32) -> anyhow::Result<u32> {
    let client = pool.get().await?;
    let cutoff = Utc::now().date_naive() - Days::new(u64::from(retention_days));
    let rows = client
        .query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'clicks'",
            &[],
        )
        .await?;
    let mut dropped = 0;
    for row in rows {
        let name: String = row.get(0);
        let Some(day) = name
            .strip_prefix("clicks_")
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
        else {
            continue;
        };
        if day < cutoff {
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                .await?;
            dropped += 1;
        }
    }
    Ok(dropped)
}

pub async fn maintain(pool: Pool, retention_days: u32, shutdown: CancellationToken) {
    shortfleet_common::periodic::every(Duration::from_secs(3600), &shutdown, || async {
        if let Err(e) = prepare(&pool).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "preparing click partitions failed"
            );
        }
        match drop_expired(&pool, retention_days).await {
            Ok(n) if n > 0 => tracing::info!(dropped = n, "dropped expired click partitions"),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "dropping expired partitions failed"
            ),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_sort_by_day() {
        let d = NaiveDate::from_ymd_opt(2026, 1, 9).unwrap();
        assert_eq!(partition_name(d), "clicks_20260109");
    }
}
