//! Error shapes: a client's mistakes as precise problem responses, and an
//! upstream's outage behind the breaker.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use shortfleet_testkit::within;

use crate::helpers::{Fixture, get_text, list};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_get_precise_problem_responses() {
    let mut f = Fixture::start().await;
    let base = f.gateway("redis://127.0.0.1:6379").await;
    let key = f.key("alice", "free").await;
    let http = reqwest::Client::new();
    let post = |body: String| {
        http.post(format!("{base}/api/v1/links"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases = [
        (post("{not json".into()).await.unwrap(), 400),
        (post("[1,2]".into()).await.unwrap(), 400),
        (
            post(json!({"url": "x".repeat(2000)}).to_string())
                .await
                .unwrap(),
            413,
        ),
        (
            post(json!({"url": 7, "tags": "a"}).to_string())
                .await
                .unwrap(),
            400,
        ),
        (
            http.get(format!("{base}/no/such/route"))
                .send()
                .await
                .unwrap(),
            404,
        ),
        (
            http.put(format!("{base}/api/v1/links"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap(),
            405,
        ),
        (
            http.get(format!("{base}/api/v1/links?limit=0"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap(),
            400,
        ),
        (
            http.get(format!("{base}/api/v1/links/abc"))
                .header("authorization", "Basic x")
                .send()
                .await
                .unwrap(),
            401,
        ),
    ];
    for (response, status) in cases {
        assert_eq!(response.status().as_u16(), status, "{:?}", response.url());
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert!(response.headers().contains_key("x-request-id"));
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], status);
    }
    // A supplied request id is echoed back.
    let r = http
        .get(format!("{base}/healthz"))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-123");
    // read-svc is down: redirects answer 503 with Retry-After, quickly.
    let started = Instant::now();
    let r = http.get(format!("{base}/abcdefg")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(3));
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_while_write_svc_is_down_and_closes_when_it_returns() {
    let mut f = Fixture::start().await;
    let mut config = f.gateway_config("redis://127.0.0.1:6379");
    config.breaker.open_for = Duration::from_millis(500);
    let (base, _) = f.gateway_with(config).await;
    let key = f.key("alice", "premium").await;
    let http = reqwest::Client::new();
    let write_addr = f.write_svc.addr;

    // Kill write-svc; wait until its port refuses connections.
    f.write_svc.cancel();
    while tokio::net::TcpStream::connect(write_addr).await.is_ok() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A connection opened before the stop may serve a last request or two.
    let deadline = Instant::now() + Duration::from_secs(10);
    while list(&http, &base, &key).await.status() != StatusCode::SERVICE_UNAVAILABLE {
        assert!(
            Instant::now() < deadline,
            "write-svc still answers after its stop"
        );
    }
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = list(&http, &base, &key).await;
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(r.headers().contains_key("retry-after"));
        }
        statuses.push(r.status());
    }
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    let metrics = get_text(&http, &format!("{base}/metrics")).await;
    assert!(
        metrics.contains("shortfleet_breaker_state{upstream=\"write-svc\"} 1"),
        "breaker not open: {}",
        metrics
            .lines()
            .filter(|l| l.contains("breaker"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // While open, refusals are immediate.
    let started = Instant::now();
    assert_eq!(
        list(&http, &base, &key).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(started.elapsed() < Duration::from_millis(200));

    // Bring write-svc back on the same address: the breaker closes by itself.
    f.restart_write_svc().await;
    let closed = within(Duration::from_secs(10), || async {
        (list(&http, &base, &key).await.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert!(closed.is_some(), "breaker never closed");
    f.cleanup().await;
}
