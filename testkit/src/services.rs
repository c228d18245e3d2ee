//! Any service of the fleet running in this process on `127.0.0.1:0`, the
//! same `App` its binary runs, with the token that stops it.
//!
//! Each service is behind a feature of the same name so a crate's tests
//! compile only what they start. Configuration stays the caller's: the
//! builders here give the keys every test of write-svc and read-svc sets,
//! and a test adds its own with `ConfigSource::with`.

use std::{net::SocketAddr, time::Duration};

use shortfleet_common::{config::ConfigSource, service::Service};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a stopping service may take to drain before a test fails.
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// What a test needs to know about a service it started.
pub trait InProcess: Service + Send + 'static {
    /// Where clients call it: gRPC, or the gateway's public HTTP.
    fn addr(&self) -> SocketAddr;
    /// Its ops port (`/metrics`, `/readyz`), when it has one of its own.
    fn ops(&self) -> Option<SocketAddr>;
}

/// A service serving on a task of the test's runtime.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub ops: Option<SocketAddr>,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Starts `S` configured from `source`; panics if it does not start.
pub async fn start<S: InProcess>(source: &ConfigSource) -> Running {
    let config = S::config(source)
        .unwrap_or_else(|e| panic!("{}: the test configuration is invalid: {e}", S::NAME));
    start_with::<S>(config).await
}

/// Starts `S` with a configuration the test has already adjusted.
pub async fn start_with<S: InProcess>(config: S::Config) -> Running {
    let app = S::build(config)
        .await
        .unwrap_or_else(|e| panic!("{} did not start: {e:#}", S::NAME));
    let (addr, ops) = (app.addr(), app.ops());
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until(stop.clone()));
    Running {
        addr,
        ops,
        stop,
        task,
    }
}

impl Running {
    /// `http://` and the address, as other services and clients take it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://` and the ops address; panics if the service has none.
    pub fn ops_url(&self) -> String {
        format!("http://{}", self.ops.expect("the service has an ops port"))
    }

    /// Starts the service's shutdown without waiting for it.
    pub fn cancel(&self) {
        self.stop.cancel();
    }

    /// Stops the service and waits up to [`STOP_DEADLINE`] for it to drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop_within(STOP_DEADLINE).await
    }

    /// Stops the service and waits up to `limit` for it to drain; an error
    /// if it stopped with one, panicked, or did not stop in time.
    pub async fn stop_within(self, limit: Duration) -> anyhow::Result<()> {
        self.stop.cancel();
        match tokio::time::timeout(limit, self.task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(join)) => anyhow::bail!("the service panicked: {join}"),
            Err(_) => anyhow::bail!("the service did not stop within {limit:?}"),
        }
    }
}

/// Cancels every service, then gives them a moment to let go of their
/// connections before the test drops the databases and names they used.
pub async fn cancel_all<'a>(services: impl IntoIterator<Item = &'a Running>) {
    for service in services {
        service.cancel();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// write-svc on ephemeral ports, storing links in `database_url` and
/// publishing link events to `exchange`.
pub fn write_svc(database_url: &str, exchange: &str) -> ConfigSource {
    ConfigSource::from_pairs([
        ("SHORTFLEET_GRPC_ADDR", "127.0.0.1:0"),
        ("SHORTFLEET_OPS_ADDR", "127.0.0.1:0"),
        ("SHORTFLEET_DATABASE_URL", database_url),
        ("SHORTFLEET_LINK_EVENTS_EXCHANGE", exchange),
    ])
}

/// read-svc on ephemeral ports, falling back to write-svc at `write_url`,
/// keeping its Redis keys under `redis_prefix` and following `exchange`.
pub fn read_svc(write_url: &str, redis_prefix: &str, exchange: &str) -> ConfigSource {
    ConfigSource::from_pairs([
        ("SHORTFLEET_GRPC_ADDR", "127.0.0.1:0"),
        ("SHORTFLEET_OPS_ADDR", "127.0.0.1:0"),
        ("SHORTFLEET_WRITE_SVC_URL", write_url),
        ("SHORTFLEET_REDIS_PREFIX", redis_prefix),
        ("SHORTFLEET_LINK_EVENTS_EXCHANGE", exchange),
    ])
}

/// The gRPC services: one listener for clients, one for ops.
macro_rules! grpc_service {
    ($feature:literal, $app:ty) => {
        #[cfg(feature = $feature)]
        impl InProcess for $app {
            fn addr(&self) -> SocketAddr {
                self.grpc_addr()
            }
            fn ops(&self) -> Option<SocketAddr> {
                Some(self.ops_addr())
            }
        }
    };
}

grpc_service!("write-svc", write_svc::App);
grpc_service!("read-svc", read_svc::App);
grpc_service!("click-logger", click_logger::App);
grpc_service!("analytics-svc", analytics_svc::App);

/// The gateway: public HTTP, and an ops port only when configured.
#[cfg(feature = "gateway")]
impl InProcess for gateway::App {
    fn addr(&self) -> SocketAddr {
        self.http_addr()
    }
    fn ops(&self) -> Option<SocketAddr> {
        self.ops_addr()
    }
}
