//! Shutdown draining what is in flight, and the optional ops port.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use shortfleet_testkit::{REDIS, services};

use crate::helpers::{Fixture, get_text, list};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_refuses_new_ones() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = Fixture::start().await;
    let served = services::start_with::<gateway::App>(f.gateway_config(REDIS)).await;
    let addr = served.addr;
    let key = f.key("alice", "free").await;
    // Warm the key snapshot so the in-flight request needs no look-up.
    assert_eq!(
        list(&reqwest::Client::new(), &format!("http://{addr}"), &key)
            .await
            .status(),
        StatusCode::OK
    );

    // A create whose headers have arrived but whose body has not: in flight.
    let body = json!({"url": "https://example.com/drained"}).to_string();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!(
            "POST /api/v1/links HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    served.cancel();
    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The in-flight request still completes.
    conn.write_all(body.as_bytes()).await.unwrap();
    let mut response = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut response))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&response[..n]);
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    drop(conn);
    served.stop_within(Duration::from_secs(15)).await.unwrap();
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_ops_port_metrics_leave_the_public_port() {
    let mut f = Fixture::start().await;
    let mut config = f.gateway_config("redis://127.0.0.1:6379");
    config.ops_addr = Some("127.0.0.1:0".parse().unwrap());
    let (base, ops) = f.gateway_with(config).await;
    let ops = ops.expect("an ops port was asked for");
    let http = reqwest::Client::new();

    let public_metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(public_metrics.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        public_metrics.headers()["content-type"],
        "application/problem+json"
    );
    // Load balancers keep probing the public port.
    let healthz = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), StatusCode::OK);
    // A request the public port served shows up in the ops port's metrics.
    let metrics = get_text(&http, &format!("{ops}/metrics")).await;
    assert!(
        metrics.contains("shortfleet_http_requests_total"),
        "{metrics}"
    );
    // Both ports report readiness from the same registry of dependencies.
    let checks = |body: serde_json::Value| {
        body["checks"]
            .as_object()
            .expect("a checks object")
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    let ops_ready: serde_json::Value =
        serde_json::from_str(&get_text(&http, &format!("{ops}/readyz")).await).unwrap();
    let public_ready: serde_json::Value =
        serde_json::from_str(&get_text(&http, &format!("{base}/readyz")).await).unwrap();
    let names = checks(ops_ready);
    assert!(names.contains(&"postgres".to_owned()), "{names:?}");
    assert_eq!(names, checks(public_ready));
    f.cleanup().await;
}
