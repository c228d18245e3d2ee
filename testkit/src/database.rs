//! A PostgreSQL database of one test's own, so tests run side by side
//! without seeing each other's rows.
//!
//! Only the name is made here: the service under test creates the database
//! at start-up, as it does in production (`postgres::ensure_database`).
//! A test ends with [`TestDatabase::remove`]. The `Drop` guard is a safety
//! net for a test that returned without it; a failing (panicking) test's
//! database is left behind for inspection, its name printed.

use crate::{DEADLINE, POSTGRES};

/// A uniquely named database on [`POSTGRES`].
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    /// Set once removed, so the guard does nothing.
    removed: bool,
}

impl TestDatabase {
    /// A database named `sf_test_<uuid>`.
    pub fn fresh() -> Self {
        Self::named(format!("sf_test_{}", crate::unique_id()))
    }

    /// A database named `name`, which the test must make unique.
    pub fn named(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            url: format!("{POSTGRES}/{name}"),
            name,
            removed: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection URL services are configured with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A direct connection, for asserting on rows the API does not show.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url)
            .await
            .expect("connecting to the test database")
    }

    /// Best effort: drops the database, closing any connection still open.
    /// Failures are printed, never raised.
    pub async fn remove(mut self) {
        self.removed = true;
        match tokio::time::timeout(DEADLINE, drop_database(&self.name)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop {}: {e:#}", self.name),
            Err(_) => eprintln!("dropping {} timed out", self.name),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        if std::thread::panicking() {
            eprintln!("left database {} for inspection", self.name);
            return;
        }
        // No await in `drop`, and a runtime may be running on this thread:
        // the drop runs on a thread of its own with a runtime of its own.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async { tokio::time::timeout(DEADLINE, drop_database(&name)).await? })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop {}: {dropped:?}", self.name);
        }
    }
}

async fn drop_database(name: &str) -> anyhow::Result<()> {
    drop_database_on(POSTGRES, name).await
}

/// Drops database `name` on the server at `server` (a URL without a
/// database), whoever is still connected to it.
pub async fn drop_database_on(server: &str, name: &str) -> anyhow::Result<()> {
    let client = connect(&format!("{server}/postgres")).await?;
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await?;
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}
