//! The operator endpoints every service serves over HTTP: `/healthz`
//! (liveness: the process answers), `/readyz` (readiness: its critical
//! dependencies answer) and `/metrics` (Prometheus text).
//!
//! Dependency state lives in a [`Health`] that background tasks update as they
//! connect and fail, so a probe never waits on a network call.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, RwLock},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How one dependency is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DependencyState {
    up: bool,
    /// A critical dependency that is down makes the service unready; a
    /// non-critical one only degrades it (it still serves, more slowly).
    critical: bool,
}

/// Shared, cheap-to-read dependency states of one service.
#[derive(Debug, Clone, Default)]
pub struct Health {
    states: Arc<RwLock<BTreeMap<&'static str, DependencyState>>>,
}

/// The verdict `/readyz` and the gRPC health service report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Serving, with a non-critical dependency down.
    Degraded,
    Unready,
}

impl Health {
    /// Every service builds one `Health` first thing, so this is also where
    /// the Prometheus recorder is installed: metrics recorded before it would
    /// be lost.
    pub fn new() -> Self {
        crate::telemetry::metrics_handle();
        Self::default()
    }

    /// Declares a dependency (down until first reported up).
    pub fn register(&self, name: &'static str, critical: bool) {
        self.write().insert(
            name,
            DependencyState {
                up: false,
                critical,
            },
        );
    }

    /// Records whether `name` is currently reachable.
    pub fn set(&self, name: &'static str, up: bool) {
        let mut states = self.write();
        let state = states
            .entry(name)
            .or_insert(DependencyState { up, critical: true });
        if state.up != up {
            if up {
                tracing::info!(dependency = name, "dependency up");
            } else {
                tracing::warn!(dependency = name, "dependency down");
            }
        }
        state.up = up;
        metrics::gauge!("shortfleet_dependency_up", "dependency" => name)
            .set(f64::from(u8::from(up)));
    }

    pub fn readiness(&self) -> Readiness {
        let states = self.read();
        if states.values().any(|s| s.critical && !s.up) {
            Readiness::Unready
        } else if states.values().any(|s| !s.up) {
            Readiness::Degraded
        } else {
            Readiness::Ready
        }
    }

    fn report(&self) -> (StatusCode, String) {
        let readiness = self.readiness();
        let checks: serde_json::Map<String, serde_json::Value> = self
            .read()
            .iter()
            .map(|(name, s)| {
                (
                    (*name).to_owned(),
                    (if s.up { "up" } else { "down" }).into(),
                )
            })
            .collect();
        let (status, word) = match readiness {
            Readiness::Ready => (StatusCode::OK, "ready"),
            Readiness::Degraded => (StatusCode::OK, "degraded"),
            Readiness::Unready => (StatusCode::SERVICE_UNAVAILABLE, "unready"),
        };
        let body = serde_json::json!({ "status": word, "checks": checks });
        (status, body.to_string())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<&'static str, DependencyState>> {
        self.states.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<&'static str, DependencyState>> {
        self.states.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Answers `/healthz`, `/readyz` and `/metrics`; `None` for any other path,
/// so the gateway can serve these on its public port too.
pub fn respond(path: &str, health: &Health) -> Option<Response<Full<Bytes>>> {
    let (status, content_type, body) = match path {
        "/healthz" => (
            StatusCode::OK,
            "application/json",
            r#"{"status":"ok"}"#.to_owned(),
        ),
        "/readyz" => {
            let (status, body) = health.report();
            (status, "application/json", body)
        }
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::telemetry::metrics_handle().render(),
        ),
        _ => return None,
    };
    #[allow(clippy::expect_used)] // reason: a known status and header name, a fixed content type
    let response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid");
    Some(response)
}

/// Serves the operator endpoints on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, health: Health, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    while let Some((stream, _)) = crate::accept::next(&listener, &shutdown, "ops").await {
        let health = health.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let response = respond(req.uri().path(), &health).unwrap_or_else(not_found);
            async move { Ok::<_, Infallible>(response) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    // Probes are short; a second is plenty for any in flight.
    let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
}

#[allow(clippy::expect_used)] // reason: static response parts
fn not_found() -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .body(Full::new(Bytes::from_static(b"not found\n")))
        .expect("static response parts are valid")
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "shortfleet_dependency_up",
        "Whether each dependency of this service is reachable (1) or not (0), by dependency."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_critical_dependency_down_makes_the_service_unready() {
        let health = Health::new();
        health.register("postgres", true);
        health.register("redis", false);
        assert_eq!(health.readiness(), Readiness::Unready);
        health.set("postgres", true);
        assert_eq!(health.readiness(), Readiness::Degraded);
        health.set("redis", true);
        assert_eq!(health.readiness(), Readiness::Ready);
    }

    #[test]
    fn readyz_answers_503_when_unready() {
        let health = Health::new();
        health.register("postgres", true);
        let response = respond("/readyz", &health).unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(respond("/nope", &health).is_none());
    }
}
