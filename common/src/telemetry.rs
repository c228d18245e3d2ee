//! One telemetry setup for every service: JSON logs filtered by
//! `SHORTFLEET_LOG` (or `RUST_LOG`), OpenTelemetry traces exported over OTLP
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (sampler from the standard
//! `OTEL_TRACES_SAMPLER*` variables, service name from `OTEL_SERVICE_NAME` or
//! the binary), and a process-wide Prometheus recorder for `/metrics`.

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans leave the process. Per-message spans (one per click) are
/// only worth their cost when they do.
pub fn exporting_traces() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Flushes buffered spans when the service stops.
#[must_use = "dropping the guard early loses the last spans"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing spans failed: {e}");
        }
    }
}

/// Installs logs (and traces, when configured). Safe to call more than once
/// (tests): later calls install nothing.
pub fn init_logs(service: &'static str, default_filter: &str) -> TelemetryGuard {
    let filter = std::env::var("SHORTFLEET_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let logs = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true);
    // W3C trace context is what every hop speaks, exporter or not.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = tracer_provider(service);
    let traces = provider.as_ref().map(|p| {
        opentelemetry::global::set_tracer_provider(p.clone());
        tracing_opentelemetry::layer().with_tracer(p.tracer(service))
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if installed {
        tracing::info!(
            service,
            version = env!("CARGO_PKG_VERSION"),
            traces = provider.is_some(),
            "starting"
        );
    }
    TelemetryGuard {
        provider: provider.filter(|_| installed),
    }
}

/// An OTLP/gRPC exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
fn tracer_provider(service: &'static str) -> Option<SdkTracerProvider> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("{service}: OTLP exporter disabled: {e}");
            return None;
        }
    };
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service);
    }
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    )
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus handle, installing the recorder on first use.
/// Several services may share one process in tests; they share one registry.
#[allow(clippy::expect_used)] // reason: the bucket list is a non-empty constant
pub fn metrics_handle() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ])
                .expect("static bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness); then
            // this handle renders an empty registry, which is harmless.
            let _ = metrics::set_global_recorder(recorder);
            describe_common_metrics();
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// A recorder built without the exporter's own HTTP listener keeps every
/// histogram sample until someone folds them into buckets. Without this
/// thread that happened only at a scrape: memory grew by every request's
/// samples while nothing scraped (8 bytes each, without bound), and the
/// scrape that came folded all of them at once on a request worker. A
/// thread of its own, so it runs whatever the async runtime is doing.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the metrics upkeep thread; samples are folded at each scrape");
    }
}

/// The HELP text of the metrics `common` itself records, registered with
/// the recorder; each service registers its own at start-up.
fn describe_common_metrics() {
    crate::ops::describe_metrics();
    crate::postgres::describe_metrics();
    crate::spool::describe_metrics();
    crate::tls::describe_metrics();
    crate::link_events::describe_metrics();
    crate::click_counts::describe_metrics();
}
