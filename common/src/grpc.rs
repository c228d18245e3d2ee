//! What every gRPC server of the fleet exposes besides its own service, the
//! way generic tools (grpcurl, grpcio, `grpc_health_probe`, Kubernetes gRPC
//! probes) expect it:
//!
//! - `grpc.health.v1.Health`, answering for `""` (the server) and for each
//!   fully-qualified service name it serves, kept in step with the service's
//!   [`Health`] and NOT_SERVING from the moment shutdown starts;
//! - server reflection in both `grpc.reflection.v1` and `v1alpha` (many
//!   clients still speak only the latter), listing exactly the services this
//!   server answers: its own, health and reflection, never the rest of
//!   `shortener.v1` that happens to live in the same descriptor file.

pub mod balance;
pub mod discovery;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Weak},
    time::Duration,
};

pub use balance::Balanced;
pub use discovery::Discovery;

use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    ops::{Health, Readiness},
    tls::FleetTls,
};

/// Names of the standard services every server adds to its own.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// How often the health service re-reads the service's readiness.
const HEALTH_POLL: Duration = Duration::from_millis(500);

/// The health service for the server (`""`) and each of `services`
/// (fully-qualified names), updated from `health` every 500 ms until
/// `shutdown`, when all report NOT_SERVING so balancers drain us first.
pub fn health_service(
    services: &'static [&'static str],
    health: Health,
    shutdown: CancellationToken,
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(track(reporter, services, health, shutdown));
    service
}

async fn track(
    reporter: HealthReporter,
    services: &'static [&'static str],
    health: Health,
    shutdown: CancellationToken,
) {
    let set_all = |status: ServingStatus| {
        let reporter = reporter.clone();
        async move {
            for name in std::iter::once(&"").chain(services) {
                reporter.set_service_status(*name, status).await;
            }
        }
    };
    crate::periodic::every(HEALTH_POLL, &shutdown, || {
        set_all(match health.readiness() {
            Readiness::Ready | Readiness::Degraded => ServingStatus::Serving,
            Readiness::Unready => ServingStatus::NotServing,
        })
    })
    .await;
    set_all(ServingStatus::NotServing).await;
}

fn reflection_builder(services: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    services
        .iter()
        .chain([&HEALTH_SERVICE, &REFLECTION_V1, &REFLECTION_V1ALPHA])
        .fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(shortfleet_proto::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(*name),
        )
}

/// Both reflection services, advertising `services` plus health and
/// reflection themselves.
#[allow(clippy::expect_used)] // the descriptor sets are compiled into the binary
pub fn reflection_services(
    services: &[&'static str],
) -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    (
        reflection_builder(services)
            .build_v1()
            .expect("embedded descriptor sets are valid"),
        reflection_builder(services)
            .build_v1alpha()
            .expect("embedded descriptor sets are valid"),
    )
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
    /// Read once at bind time, so asking later cannot fail.
    addrs: (std::net::SocketAddr, std::net::SocketAddr),
}

impl Listeners {
    pub async fn bind(
        grpc_addr: std::net::SocketAddr,
        ops_addr: std::net::SocketAddr,
    ) -> anyhow::Result<Self> {
        let grpc = bind(grpc_addr, "gRPC").await?;
        let ops = bind(ops_addr, "ops HTTP").await?;
        let addrs = (grpc.local_addr()?, ops.local_addr()?);
        Ok(Self { grpc, ops, addrs })
    }

    pub fn grpc_addr(&self) -> std::net::SocketAddr {
        self.addrs.0
    }

    pub fn ops_addr(&self) -> std::net::SocketAddr {
        self.addrs.1
    }
}

/// Serves a service's `routes` (answering the fully-qualified `services`),
/// plus health and reflection, on `listener` with a server span per call,
/// until `shutdown`; then stops accepting and lets in-flight calls finish,
/// abandoning them after `grace`. With `tls`, only its allowed callers get
/// through (see [`crate::tls`]).
pub async fn serve(
    services: &'static [&'static str],
    listener: tokio::net::TcpListener,
    routes: tonic::service::Routes,
    health: Health,
    shutdown: CancellationToken,
    grace: Duration,
    tls: Option<&FleetTls>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let (reflection_v1, reflection_v1alpha) = reflection_services(services);
    let routes = routes
        .add_service(health_service(services, health, shutdown.clone()))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let drained = shutdown.clone();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls.server_config())
            .context("configuring TLS")?;
    }
    let server = builder
        .trace_fn(crate::trace::grpc_server_span)
        .layer(tls.map(FleetTls::caller_check).unwrap_or_default())
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

/// The one way the fleet builds a client channel to another service.
///
/// `url` is one `http(s)://host:port` or a comma-separated list; every
/// address its names resolve to is an endpoint, re-resolved as
/// `discovery` says, and calls are balanced over them ([`balance`]). Each
/// endpoint's connection is lazy (a caller starts, and serves what it can,
/// while the callee is down), with a connect deadline of at most a second,
/// `timeout` per call, `TCP_NODELAY` and HTTP/2 keep-alive pings so a dead
/// peer is noticed. With `tls` the URLs must be `https://` and the peer must
/// prove it is `service` (whatever address it was reached at); without, they
/// must be `http://`, so a typo can never silently fall back to plaintext.
/// `key` names the setting `url` came from, for errors and metrics.
pub fn channel(
    url: &str,
    key: &str,
    timeout: Duration,
    tls: Option<&FleetTls>,
    service: &str,
    discovery: &Discovery,
) -> anyhow::Result<Balanced> {
    use anyhow::Context as _;
    describe_client_metrics();
    let targets = discovery::parse_targets(url).with_context(|| format!("{key}: {url:?}"))?;
    match (tls, targets[0].https) {
        (Some(_), true) | (None, false) => {}
        (Some(_), false) => {
            anyhow::bail!("{key}: {url:?} must be https:// when SHORTFLEET_TLS_* is set")
        }
        (None, true) => {
            anyhow::bail!("{key}: {url:?} must be http:// (set SHORTFLEET_TLS_* for https://)")
        }
    }
    let connector = Connector {
        timeout,
        tls: tls.map(|t| t.client_config(service)),
    };
    // Proves the TLS settings once, so a bad one fails start-up, not a call
    // (an endpoint only: no connection or task is made for it).
    connector
        .endpoint(SocketAddr::from(([127, 0, 0, 1], 1)))
        .with_context(|| format!("{key}: configuring TLS"))?;
    let needs_dns = targets
        .iter()
        .any(|t| matches!(t.host, discovery::Host::Name(_)));
    let resolver = if needs_dns {
        Some(
            discovery
                .resolver()
                .with_context(|| format!("{key}: {url:?}"))?,
        )
    } else {
        None
    };
    let pool = Arc::new(balance::Pool::new(key.to_owned(), timeout));
    let membership = Membership {
        pool: Arc::downgrade(&pool),
        connector,
        targets,
        resolver,
        refresh: discovery.refresh,
    };
    // IP literals are known now; names join when the first lookup answers.
    let current = membership
        .apply(&membership.literal_addresses(), &HashMap::new())
        .unwrap_or_default();
    if needs_dns {
        tokio::spawn(membership.run(current));
    }
    Ok(Balanced::new(pool))
}

/// Registers the HELP text of the client-side balancing metrics (from
/// [`channel`] itself, so no caller can forget; registering twice is
/// harmless).
fn describe_client_metrics() {
    metrics::describe_gauge!(
        "shortfleet_grpc_endpoints",
        metrics::Unit::Count,
        "Endpoints a gRPC client balances its calls over, by backend setting."
    );
    metrics::describe_counter!(
        "shortfleet_grpc_endpoint_ejections_total",
        metrics::Unit::Count,
        "gRPC endpoints left out for a backoff after a failed connection or an UNAVAILABLE answer."
    );
    metrics::describe_counter!(
        "shortfleet_dns_lookup_failures_total",
        metrics::Unit::Count,
        "Backend name lookups that failed or answered nothing (the last addresses were kept)."
    );
}

/// How an endpoint's channel is made: the same for every endpoint of a
/// backend.
struct Connector {
    timeout: Duration,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Connector {
    fn endpoint(&self, addr: SocketAddr) -> anyhow::Result<tonic::transport::Endpoint> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?
            .connect_timeout(self.timeout.min(Duration::from_secs(1)))
            .timeout(self.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(endpoint)
    }
}

/// Keeps a backend's endpoints in step with its targets' addresses, until
/// every client of the backend is gone.
struct Membership {
    pool: Weak<balance::Pool>,
    connector: Connector,
    targets: Vec<discovery::Target>,
    resolver: Option<hickory_resolver::TokioResolver>,
    refresh: Duration,
}

impl Membership {
    fn literal_addresses(&self) -> Vec<SocketAddr> {
        self.targets
            .iter()
            .filter_map(|t| match t.host {
                discovery::Host::Ip(ip) => Some(SocketAddr::new(ip, t.port)),
                discovery::Host::Name(_) => None,
            })
            .collect()
    }

    async fn run(self, mut current: HashMap<SocketAddr, Arc<balance::Member>>) {
        // Each target's last good answer, kept when a lookup fails.
        let mut answers: Vec<Vec<SocketAddr>> = vec![Vec::new(); self.targets.len()];
        // Ends with the last client of the backend.
        while self.pool.strong_count() > 0 {
            for (target, answer) in self.targets.iter().zip(&mut answers) {
                match discovery::resolve(target, self.resolver.as_ref()).await {
                    Ok(addrs) => *answer = addrs,
                    Err(e) => {
                        metrics::counter!("shortfleet_dns_lookup_failures_total").increment(1);
                        tracing::warn!(error = format!("{e:#}"), "keeping the last endpoints");
                    }
                }
            }
            let mut wanted: Vec<SocketAddr> = answers.concat();
            wanted.sort_unstable();
            wanted.dedup();
            let unchanged =
                wanted.len() == current.len() && wanted.iter().all(|a| current.contains_key(a));
            if !unchanged {
                match self.apply(&wanted, &current) {
                    Some(members) => current = members,
                    None => return,
                }
            }
            tokio::time::sleep(self.refresh).await;
        }
    }

    /// Makes `wanted` the pool's endpoints, keeping the connection (and
    /// balancing state) of every endpoint already in `current`. `None`
    /// when the pool is gone.
    fn apply(
        &self,
        wanted: &[SocketAddr],
        current: &HashMap<SocketAddr, Arc<balance::Member>>,
    ) -> Option<HashMap<SocketAddr, Arc<balance::Member>>> {
        let pool = self.pool.upgrade()?;
        let mut next = HashMap::with_capacity(wanted.len());
        for &addr in wanted {
            let member = match current.get(&addr) {
                Some(member) => member.clone(),
                None => match self.connector.endpoint(addr) {
                    Ok(endpoint) => Arc::new(balance::Member::new(addr, endpoint.connect_lazy())),
                    Err(e) => {
                        tracing::warn!(endpoint = %addr, error = format!("{e:#}"), "endpoint skipped");
                        continue;
                    }
                },
            };
            next.insert(addr, member);
        }
        tracing::info!(backend = pool.backend(), endpoints = ?wanted, "endpoints changed");
        pool.replace(next.values().cloned().collect());
        Some(next)
    }
}

/// A service's background work (relays, consumers, trackers, the ops
/// endpoints): started before serving, stopped only after the server
/// drained, so it can finish what the last calls started.
pub struct Background {
    tracker: tokio_util::task::TaskTracker,
    stop: CancellationToken,
}

impl Background {
    pub fn new() -> Self {
        Self {
            tracker: tokio_util::task::TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Background work that starts with the ops endpoints (`/healthz`,
    /// `/readyz`, `/metrics`) served on `ops`, so they answer until the
    /// very end.
    pub fn with_ops(ops: tokio::net::TcpListener, health: Health) -> Self {
        let background = Self::new();
        background.spawn(|stop| crate::ops::serve(ops, health, stop));
        background
    }

    /// Runs `task`, handing it the signal that background work must stop.
    pub fn spawn<F>(&self, task: impl FnOnce(CancellationToken) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task(self.stop.clone()));
    }

    /// Stops every task, waiting at most `grace`.
    pub async fn stop(self, grace: Duration) {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within the grace period");
        }
    }
}

impl Default for Background {
    fn default() -> Self {
        Self::new()
    }
}

/// What a service serves over gRPC, for [`Server::serve_then_stop`].
pub struct Server<'a> {
    /// The fully-qualified names of the services in `routes`.
    pub services: &'static [&'static str],
    pub routes: tonic::service::Routes,
    pub health: Health,
    /// How long in-flight calls, then background work, may take to finish.
    pub grace: Duration,
    pub tls: Option<&'a FleetTls>,
}

impl Server<'_> {
    /// The tail of every gRPC service's `run_until`: serves on `listener`
    /// until `shutdown` (see [`serve`]), then stops `background`, each
    /// within the grace period.
    pub async fn serve_then_stop(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
        background: Background,
    ) -> anyhow::Result<()> {
        let served = serve(
            self.services,
            listener,
            self.routes,
            self.health,
            shutdown,
            self.grace,
            self.tls,
        )
        .await;
        background.stop(self.grace).await;
        served
    }
}
