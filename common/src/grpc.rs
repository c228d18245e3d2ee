//! What every gRPC server of the fleet exposes besides its own service:
//! `grpc.health.v1.Health` (kept in step with the service's [`Health`]) and
//! server reflection over the `shortener.v1` descriptors.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::ops::{Health, Readiness};

/// The health service for `service_name`, updated from `health` every 500 ms
/// until `shutdown`, when it reports NOT_SERVING so balancers drain us first.
pub fn health_service(
    service_name: &'static str,
    health: Health,
    shutdown: CancellationToken,
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(track(reporter, service_name, health, shutdown));
    service
}

async fn track(
    reporter: HealthReporter,
    service_name: &'static str,
    health: Health,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        let status = match health.readiness() {
            Readiness::Ready | Readiness::Degraded => ServingStatus::Serving,
            Readiness::Unready => ServingStatus::NotServing,
        };
        reporter.set_service_status("", status).await;
        reporter.set_service_status(service_name, status).await;
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => break,
        }
    }
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status(service_name, ServingStatus::NotServing)
        .await;
}

/// gRPC server reflection (v1) over the fleet's descriptors.
pub fn reflection_service() -> tonic_reflection::server::v1::ServerReflectionServer<
    impl tonic_reflection::server::v1::ServerReflection,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(shortfleet_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("embedded descriptor sets are valid")
}

/// Binds a listener, naming what it is for in the error.
pub async fn bind(
    addr: std::net::SocketAddr,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} on {addr}"))
}

/// A gRPC service's two sockets: bound during start-up, so a port clash
/// fails the start (exit non-zero) and tests can ask for port 0.
pub struct Listeners {
    pub grpc: tokio::net::TcpListener,
    /// `/healthz`, `/readyz` and `/metrics`.
    pub ops: tokio::net::TcpListener,
}

impl Listeners {
    pub async fn bind(
        grpc_addr: std::net::SocketAddr,
        ops_addr: std::net::SocketAddr,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            grpc: bind(grpc_addr, "gRPC").await?,
            ops: bind(ops_addr, "ops HTTP").await?,
        })
    }

    pub fn grpc_addr(&self) -> std::net::SocketAddr {
        self.grpc
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn ops_addr(&self) -> std::net::SocketAddr {
        self.ops
            .local_addr()
            .expect("bound listener has an address")
    }
}

/// Serves a service's `routes`, plus health and reflection, on `listener`
/// with a server span per call, until `shutdown`; then stops accepting and
/// lets in-flight calls finish, abandoning them after `grace`.
pub async fn serve(
    service_name: &'static str,
    listener: tokio::net::TcpListener,
    routes: tonic::service::Routes,
    health: Health,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let routes = routes
        .add_service(health_service(service_name, health, shutdown.clone()))
        .add_service(reflection_service());
    let drained = shutdown.clone();
    let server = tonic::transport::Server::builder()
        .trace_fn(crate::trace::grpc_server_span)
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move { drained.cancelled().await },
        );
    tokio::select! {
        result = server => result.context("serving gRPC"),
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("grace period over, abandoning in-flight calls");
            Ok(())
        }
    }
}

/// Stops a service's background tasks (after the server drained, so they
/// can finish what the last calls started), waiting at most `grace`.
pub async fn stop_background(
    tracker: tokio_util::task::TaskTracker,
    background: CancellationToken,
    grace: Duration,
) {
    background.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("background tasks did not stop within the grace period");
    }
}
