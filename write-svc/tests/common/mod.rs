//! Shared set-up for write-svc's integration tests: every test runs the real
//! [`write_svc::App`] on an ephemeral port against its own PostgreSQL
//! database (`sf_test_<uuid>`) and its own link-events exchange
//! (`test.links.<uuid>`), so tests run side by side without seeing each
//! other's rows or events.
//!
//! Nothing here implements `Drop`: a test ends with `cleanup().await`, which
//! stops the app (and checks it drained cleanly) and then drops the database
//! and the exchange. A failing test leaves them behind for inspection.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod events;

use std::{future::Future, net::SocketAddr, time::Duration};

use lapin::{Connection, ConnectionProperties, options::ExchangeDeleteOptions};
use shortfleet_common::{config::ConfigSource, service::Service};
use shortfleet_proto::v1::{
    CreateLinkRequest, CreateLinkResponse, Link, link_writer_client::LinkWriterClient,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, transport::Channel as GrpcChannel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Nothing listens on port 1: the relay's connects are refused at once.
pub const UNREACHABLE_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:1/%2f";
const POSTGRES_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
/// The shortener's own host in every test: targets may not point at it.
pub const PUBLIC_HOST: &str = "sho.rt";
/// How long to wait for an asynchronous effect (a relay publish) before
/// calling it lost; generous because the test machine is small and shared.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// How long a stopping app may take to drain before the test fails.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// The per-test names of everything shared with other tests.
#[derive(Debug, Clone)]
pub struct Names {
    pub database: String,
    pub database_url: String,
    pub exchange: String,
}

impl Names {
    pub fn fresh() -> Self {
        let id = uuid::Uuid::new_v4();
        let database = format!("sf_test_{}", id.simple());
        Self {
            database_url: format!("{POSTGRES_SERVER}/{database}"),
            database,
            exchange: format!("test.links.{id}"),
        }
    }

    /// Best effort: drops the database (closing any connection still open)
    /// and the exchange. Failures are printed, never raised.
    pub async fn remove(&self) {
        let drop_database = async {
            let client = connect_postgres(&format!("{POSTGRES_SERVER}/postgres")).await?;
            client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.database
                ))
                .await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(DEADLINE, drop_database).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop {}: {e:#}", self.database),
            Err(_) => eprintln!("dropping {} timed out", self.database),
        }
        let delete_exchange = async {
            let connection = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            channel
                .exchange_delete(
                    self.exchange.as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await?;
            let _ = connection.close(200, "test cleanup".into()).await;
            anyhow::Ok(())
        };
        match tokio::time::timeout(DEADLINE, delete_exchange).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not delete exchange {}: {e:#}", self.exchange),
            Err(_) => eprintln!("deleting exchange {} timed out", self.exchange),
        }
    }

    /// A direct connection to this test's database, for asserting on rows
    /// the API does not show (the outbox).
    pub async fn db(&self) -> tokio_postgres::Client {
        connect_postgres(&self.database_url)
            .await
            .expect("connecting to the test database")
    }
}

async fn connect_postgres(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A running write-svc and a client connected to it.
pub struct TestApp {
    pub names: Names,
    pub addr: SocketAddr,
    pub client: LinkWriterClient<GrpcChannel>,
    shutdown: CancellationToken,
    running: JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// An app on a fresh database and exchange, relaying to the real broker.
    pub async fn spawn() -> Self {
        Self::spawn_with(Names::fresh(), AMQP_URL).await
    }

    /// An app on `names` (possibly left by an earlier app) relaying to
    /// `amqp_url`.
    pub async fn spawn_with(names: Names, amqp_url: &str) -> Self {
        let source = ConfigSource::from_pairs([
            ("SHORTFLEET_GRPC_ADDR", "127.0.0.1:0"),
            ("SHORTFLEET_OPS_ADDR", "127.0.0.1:0"),
            ("SHORTFLEET_DATABASE_URL", names.database_url.as_str()),
            ("SHORTFLEET_LINK_EVENTS_EXCHANGE", names.exchange.as_str()),
            ("SHORTFLEET_AMQP_URL", amqp_url),
            ("SHORTFLEET_PUBLIC_HOSTS", PUBLIC_HOST),
            // Enough for the concurrency tests to race in the database
            // while several test apps share one PostgreSQL.
            ("SHORTFLEET_DB_POOL_SIZE", "8"),
            ("SHORTFLEET_SHUTDOWN_GRACE_MS", "3000"),
        ]);
        let config = write_svc::Config::from_source(&source).expect("test configuration is valid");
        let app = write_svc::App::build(config)
            .await
            .expect("write-svc builds against the test database");
        let addr = app.grpc_addr();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(app.run_until(shutdown.clone()));
        let client = LinkWriterClient::connect(format!("http://{addr}"))
            .await
            .expect("connecting to write-svc");
        Self {
            names,
            addr,
            client,
            shutdown,
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
            shutdown,
            running,
            ..
        } = self;
        drop(client);
        shutdown.cancel();
        let outcome = tokio::time::timeout(STOP_DEADLINE, running).await;
        match outcome {
            Ok(Ok(Ok(()))) => names,
            Ok(Ok(Err(e))) => {
                names.remove().await;
                panic!("write-svc stopped with an error: {e:#}")
            }
            Ok(Err(join)) => {
                names.remove().await;
                panic!("write-svc panicked: {join}")
            }
            Err(_) => {
                names.remove().await;
                panic!("write-svc did not stop within {STOP_DEADLINE:?}")
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
        self.client
            .clone()
            .create_link(create_request(owner, url))
            .await
            .unwrap_or_else(|s| panic!("creating {url} for {owner}: {s:?}"))
            .into_inner()
    }
}

pub fn create_request(owner: &str, url: &str) -> CreateLinkRequest {
    CreateLinkRequest {
        owner: owner.into(),
        url: url.into(),
        ..Default::default()
    }
}

/// The link of a create response, which must carry one.
pub fn link_of(response: &CreateLinkResponse) -> Link {
    response
        .link
        .clone()
        .expect("a create response carries its link")
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

/// Polls `check` until it returns `Some`, failing the test after
/// [`DEADLINE`]. For effects that happen asynchronously (the relay).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
