//! Shared set-up for write-svc's integration tests: every test runs the real
//! [`write_svc::App`] on an ephemeral port against its own PostgreSQL
//! database (`sf_test_<uuid>`) and its own link-events exchange
//! (`test.links.<uuid>`), so tests run side by side without seeing each
//! other's rows or events.
//!
//! A test ends with `cleanup().await`, which stops the app (and checks it
//! drained cleanly) and then drops the database and the exchange. A failing
//! test leaves them behind for inspection.

pub mod events;

use std::net::SocketAddr;

use shortfleet_proto::v1::{CreateLinkResponse, link_writer_client::LinkWriterClient};
use shortfleet_testkit::{
    TestDatabase, broker,
    services::{self, Running},
};
use tonic::{Code, Status, transport::Channel as GrpcChannel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub use shortfleet_testkit::{
    AMQP as AMQP_URL, DEADLINE, eventually,
    links::{create_request, link_of},
};

/// Nothing listens on port 1: the relay's connects are refused at once.
pub const UNREACHABLE_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:1/%2f";
/// The shortener's own host in every test: targets may not point at it.
pub const PUBLIC_HOST: &str = "sho.rt";

/// The per-test names of everything shared with other tests.
#[derive(Debug)]
pub struct Names {
    pub database: TestDatabase,
    pub exchange: String,
}

impl Names {
    pub fn fresh() -> Self {
        Self {
            database: TestDatabase::fresh(),
            exchange: format!("test.links.{}", uuid::Uuid::new_v4()),
        }
    }

    /// Best effort: drops the database (closing any connection still open)
    /// and the exchange. Failures are printed, never raised.
    pub async fn remove(self) {
        self.database.remove().await;
        broker::delete_exchange(&self.exchange).await;
    }

    /// A direct connection to this test's database, for asserting on rows
    /// the API does not show (the outbox).
    pub async fn db(&self) -> tokio_postgres::Client {
        self.database.client().await
    }
}

/// A running write-svc and a client connected to it.
pub struct TestApp {
    pub names: Names,
    pub addr: SocketAddr,
    pub client: LinkWriterClient<GrpcChannel>,
    running: Running,
}

impl TestApp {
    /// An app on a fresh database and exchange, relaying to the real broker.
    pub async fn spawn() -> Self {
        Self::spawn_with(Names::fresh(), AMQP_URL).await
    }

    /// An app on `names` (possibly left by an earlier app) relaying to
    /// `amqp_url`.
    pub async fn spawn_with(names: Names, amqp_url: &str) -> Self {
        let source = services::write_svc(names.database.url(), &names.exchange)
            .with("SHORTFLEET_AMQP_URL", amqp_url)
            .with("SHORTFLEET_PUBLIC_HOSTS", PUBLIC_HOST)
            // Enough for the concurrency tests to race in the database
            // while several test apps share one PostgreSQL.
            .with("SHORTFLEET_DB_POOL_SIZE", "8")
            .with("SHORTFLEET_SHUTDOWN_GRACE_MS", "3000");
        let running = services::start::<write_svc::App>(&source).await;
        let client = LinkWriterClient::connect(running.url())
            .await
            .expect("connecting to write-svc");
        Self {
            names,
            addr: running.addr,
            client,
            running,
        }
    }

    /// Cancels the app and waits for it to drain; the database and exchange
    /// stay, so another app can take over. Panics if it does not stop in
    /// time or stops with an error.
    pub async fn stop(self) -> Names {
        let Self {
            names,
            client,
            running,
            ..
        } = self;
        drop(client);
        match running.stop().await {
            Ok(()) => names,
            Err(e) => {
                names.remove().await;
                panic!("write-svc: {e:#}")
            }
        }
    }

    /// Stops the app, then drops its database and exchange.
    pub async fn cleanup(self) {
        self.stop().await.remove().await;
    }

    pub async fn db(&self) -> tokio_postgres::Client {
        self.names.db().await
    }

    /// Creates `url` for `owner` with no options; panics on refusal.
    pub async fn create(&self, owner: &str, url: &str) -> CreateLinkResponse {
        shortfleet_testkit::links::create(&mut self.client.clone(), owner, url).await
    }
}

/// Asserts `result` failed with `code`, and returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Err(status) if status.code() == code => status,
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

/// Asserts `result` is INVALID_ARGUMENT naming `field` in `sf-field`.
#[track_caller]
pub fn expect_invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    let status = expect_code(result, Code::InvalidArgument);
    let named = status
        .metadata()
        .get("sf-field")
        .and_then(|v| v.to_str().ok());
    assert_eq!(named, Some(field), "sf-field of {status:?}");
}

/// A gRPC channel to the app, for the standard services' clients.
pub async fn grpc_channel(addr: SocketAddr) -> GrpcChannel {
    GrpcChannel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("connecting to write-svc")
}

/// Waits until the gRPC health service reports `service` ("" for the whole
/// server) as SERVING; fails the test after [`DEADLINE`].
pub async fn wait_until_serving(addr: SocketAddr, service: &str) {
    let health = HealthClient::new(grpc_channel(addr).await);
    eventually(&format!("{service:?} to report SERVING"), || {
        let mut health = health.clone();
        async move {
            let request = HealthCheckRequest {
                service: service.into(),
            };
            let status = health.check(request).await.ok()?.into_inner().status();
            (status == ServingStatus::Serving).then_some(())
        }
    })
    .await;
}

/// The outbox as (event_id, routing_key, published) in relay order.
pub async fn outbox_rows(db: &tokio_postgres::Client) -> Vec<(String, String, bool)> {
    db.query(
        "SELECT event_id, routing_key, published_at IS NOT NULL FROM outbox ORDER BY id",
        &[],
    )
    .await
    .expect("reading the outbox")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}
