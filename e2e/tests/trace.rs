//! One redirect, one trace: an OTLP receiver started here (the collector's
//! trace service from the published protos) gets spans from the gateway,
//! read-svc, click-logger and analytics-svc that share the trace id the
//! client sent in `traceparent`.

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};
use serde_json::json;
use shortfleet_e2e::{Fleet, FleetOptions};

/// Every hop a redirect and its click must pass through.
const EXPECTED_SERVICES: [&str; 4] = ["gateway", "read-svc", "click-logger", "analytics-svc"];

/// (service, span name, trace id hex, span id hex, parent span id hex)
type Span = (String, String, String, String, String);

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push((
                        service.clone(),
                        s.name,
                        hex(&s.trace_id),
                        hex(&s.span_id),
                        hex(&s.parent_span_id),
                    ));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_and_its_click_share_one_trace_across_the_fleet() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let fleet = Fleet::start(FleetOptions {
        all_env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint),
            ("OTEL_TRACES_SAMPLER".into(), "parentbased_always_on".into()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ],
        gateway_env: Vec::new(),
        ..Default::default()
    })
    .await
    .expect("fleet starts");
    let result = redirect_and_collect(&fleet, &receiver).await;
    fleet.shutdown().await.unwrap();
    let (trace_id, spans) = result.unwrap();
    let services: BTreeSet<&str> = spans.iter().map(|s| s.0.as_str()).collect();
    println!("trace {trace_id}:");
    for (service, name, _, span_id, parent) in &spans {
        println!("  {service:<14} {name:<40} span {span_id} parent {parent}");
    }
    for service in EXPECTED_SERVICES {
        assert!(
            services.contains(service),
            "no {service} span in trace {trace_id}: {services:?}"
        );
    }
    // The hops nest: client → gateway → click-logger → analytics-svc.
    let span = |service: &str, name: &str| {
        spans
            .iter()
            .find(|s| s.0 == service && s.1 == name)
            .unwrap_or_else(|| panic!("no {service} span {name:?}"))
    };
    let gateway = span("gateway", "http.server");
    let publish = span("click-logger", "clicks publish");
    let process = span("analytics-svc", "clicks process");
    assert_eq!(
        gateway.4, "00f067aa0ba902b7",
        "the client's span is the parent"
    );
    assert_eq!(publish.4, gateway.3, "publish continues the redirect");
    assert_eq!(process.4, publish.3, "process continues the publish");
}

async fn redirect_and_collect(
    fleet: &Fleet,
    receiver: &Receiver,
) -> anyhow::Result<(String, Vec<Span>)> {
    let key = fleet.create_key("alice", "free")?;
    let http = reqwest::Client::builder()
        .user_agent("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0")
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let link: serde_json::Value = http
        .post(format!("{}/api/v1/links", fleet.gateway_url))
        .bearer_auth(&key)
        .json(&json!({"url": "https://example.com/traced"}))
        .send()
        .await?
        .json()
        .await?;
    let code = link["code"].as_str().unwrap_or_default();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = http
        .get(format!("{}/{code}", fleet.gateway_url))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 302, "redirect answered {}", r.status());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans: Vec<Span> = receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.2 == trace_id)
            .cloned()
            .collect();
        let services: BTreeSet<&str> = spans.iter().map(|s| s.0.as_str()).collect();
        // write-svc shows up too when read-svc misses its caches, so wait
        // for the named services rather than for a count.
        let complete = EXPECTED_SERVICES.iter().all(|s| services.contains(s));
        if complete || Instant::now() > deadline {
            return Ok((trace_id.to_owned(), spans));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
