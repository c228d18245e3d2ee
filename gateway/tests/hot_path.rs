//! The redirect hot path against real write-svc, read-svc, Redis and
//! RabbitMQ: the micro-cache forgets a deleted link within a second, and the
//! leased anonymous limit never admits more than the shared budget across
//! two gateway replicas.

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use reqwest::{StatusCode, redirect::Policy};
use serde_json::json;
use shortfleet_common::{config::ConfigSource, service::Service};
use tokio_util::sync::CancellationToken;

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

struct Fleet {
    id: String,
    write_url: String,
    read_url: String,
    stops: Vec<CancellationToken>,
}

impl Fleet {
    async fn start() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let exchange = format!("test.links.{id}");
        let writer = write_svc::App::build(
            write_svc::Config::from_source(&ConfigSource::from_pairs([
                ("SHORTFLEET_GRPC_ADDR", "127.0.0.1:0".to_owned()),
                ("SHORTFLEET_OPS_ADDR", "127.0.0.1:0".to_owned()),
                (
                    "SHORTFLEET_DATABASE_URL",
                    format!("{POSTGRES}/sf_test_{id}_links"),
                ),
                ("SHORTFLEET_LINK_EVENTS_EXCHANGE", exchange.clone()),
            ]))
            .unwrap(),
        )
        .await
        .unwrap();
        let write_url = format!("http://{}", writer.grpc_addr());
        let reader = read_svc::App::build(
            read_svc::Config::from_source(&ConfigSource::from_pairs([
                ("SHORTFLEET_GRPC_ADDR", "127.0.0.1:0".to_owned()),
                ("SHORTFLEET_OPS_ADDR", "127.0.0.1:0".to_owned()),
                ("SHORTFLEET_WRITE_SVC_URL", write_url.clone()),
                ("SHORTFLEET_REDIS_PREFIX", format!("sf:test:{id}:")),
                ("SHORTFLEET_LINK_EVENTS_EXCHANGE", exchange),
            ]))
            .unwrap(),
        )
        .await
        .unwrap();
        let read_url = format!("http://{}", reader.grpc_addr());
        let (ws, rs) = (CancellationToken::new(), CancellationToken::new());
        tokio::spawn(writer.run_until(ws.clone()));
        tokio::spawn(reader.run_until(rs.clone()));
        Self {
            id,
            write_url,
            read_url,
            stops: vec![ws, rs],
        }
    }

    fn config(&self, anonymous_limit: &str) -> gateway::Config {
        gateway::Config::from_source(&ConfigSource::from_pairs([
            ("SHORTFLEET_HTTP_ADDR", "127.0.0.1:0".to_owned()),
            (
                "SHORTFLEET_DATABASE_URL",
                format!("{POSTGRES}/sf_test_{}_gateway", self.id),
            ),
            ("SHORTFLEET_REDIS_PREFIX", format!("sf:test:{}:", self.id)),
            ("SHORTFLEET_WRITE_SVC_URL", self.write_url.clone()),
            ("SHORTFLEET_READ_SVC_URL", self.read_url.clone()),
            (
                "SHORTFLEET_LINK_EVENTS_EXCHANGE",
                format!("test.links.{}", self.id),
            ),
            ("SHORTFLEET_ANONYMOUS_LIMIT", anonymous_limit.to_owned()),
            (
                "SHORTFLEET_CLICK_LOGGER_URL",
                "http://127.0.0.1:1".to_owned(),
            ),
            ("SHORTFLEET_ANALYTICS_URL", "http://127.0.0.1:1".to_owned()),
        ]))
        .unwrap()
    }

    async fn gateway(&mut self, anonymous_limit: &str) -> String {
        let app = gateway::App::build(self.config(anonymous_limit))
            .await
            .unwrap();
        let url = format!("http://{}", app.http_addr());
        let stop = CancellationToken::new();
        tokio::spawn(app.run_until(stop.clone()));
        self.stops.push(stop);
        // Ready means the link-event subscription is live too.
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let body = http
                .get(format!("{url}/readyz"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if body.contains("\"rabbitmq\":\"up\"") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "gateway never subscribed: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        url
    }

    async fn cleanup(self) {
        for stop in &self.stops {
            stop.cancel();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok((client, conn)) =
            tokio_postgres::connect(&format!("{POSTGRES}/postgres"), tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            for db in ["links", "gateway"] {
                let _ = client
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS \"sf_test_{}_{db}\" WITH (FORCE)",
                        self.id
                    ))
                    .await;
            }
        }
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_link_stops_redirecting_on_every_replica_within_a_second() {
    let mut f = Fleet::start().await;
    let a = f.gateway("100000/60").await;
    let b = f.gateway("100000/60").await;
    let key = gateway::keys::KeyStore::open(&f.config("100000/60").database_url)
        .await
        .unwrap()
        .create("alice", "free", None)
        .await
        .unwrap()
        .secret;
    let http = http();
    let link: serde_json::Value = http
        .post(format!("{a}/api/v1/links"))
        .bearer_auth(&key)
        .json(&json!({"url": "https://example.com/soon-gone"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let code = link["code"].as_str().unwrap();
    // Warm both micro-caches.
    for base in [&a, &b] {
        for _ in 0..3 {
            assert_eq!(
                http.get(format!("{base}/{code}"))
                    .send()
                    .await
                    .unwrap()
                    .status(),
                StatusCode::FOUND
            );
        }
    }
    let deleted = http
        .delete(format!("{a}/api/v1/links/{code}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let at = Instant::now();
    for base in [&a, &b] {
        loop {
            let status = http
                .get(format!("{base}/{code}"))
                .send()
                .await
                .unwrap()
                .status();
            if status == StatusCode::GONE {
                break;
            }
            assert_eq!(status, StatusCode::FOUND);
            assert!(
                at.elapsed() < Duration::from_secs(1),
                "{base} still redirects after {:?}",
                at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_anonymous_buckets_never_exceed_the_shared_budget() {
    let mut f = Fleet::start().await;
    // 40 per minute: leases of 2 tokens; refills 1 token per 1.5 s.
    let a = f.gateway("40/60").await;
    let b = f.gateway("40/60").await;
    let http = http();
    let mut admitted = 0;
    let started = Instant::now();
    for i in 0..120 {
        let base = if i % 2 == 0 { &a } else { &b };
        let r = http.get(format!("{base}/unknown{i}")).send().await.unwrap();
        assert!(r.headers().contains_key("ratelimit"));
        match r.status() {
            // Admitted: read-svc answers that the code is unknown.
            StatusCode::NOT_FOUND => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => assert!(r.headers().contains_key("retry-after")),
            other => panic!("unexpected {other}"),
        }
    }
    // Tokens that refilled while the loop ran may be admitted too.
    let refilled = (started.elapsed().as_secs_f64() / 1.5).ceil() as usize;
    assert!(
        admitted <= 40 + refilled,
        "admitted {admitted} of a 40 budget (+{refilled} refilled)"
    );
    // Leases may strand at most 2 tokens per replica.
    assert!(admitted >= 40 - 2 * 2, "admitted only {admitted}");
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_codes_are_served_from_the_micro_cache_without_read_svc() {
    let mut f = Fleet::start().await;
    let base = f.gateway("100000/60").await;
    let key = gateway::keys::KeyStore::open(&f.config("100000/60").database_url)
        .await
        .unwrap()
        .create("alice", "free", None)
        .await
        .unwrap()
        .secret;
    let http = http();
    let link: serde_json::Value = http
        .post(format!("{base}/api/v1/links"))
        .bearer_auth(&key)
        .json(&json!({"url": "https://example.com/hot"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let code = link["code"].as_str().unwrap();
    assert_eq!(
        http.get(format!("{base}/{code}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FOUND
    );
    // Take read-svc away; the gateway's micro-cache still answers.
    f.stops[1].cancel();
    let read_addr = f.read_url.trim_start_matches("http://").to_owned();
    while tokio::net::TcpStream::connect(&read_addr).await.is_ok() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Connections opened before the stop may linger: wait until an uncached
    // code really cannot be resolved (503, never a hang)…
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = http.get(format!("{base}/zzzzzzz")).send().await.unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "read-svc still answers: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // …then the hot code is still served, from the micro-cache.
    let r = http.get(format!("{base}/{code}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()["location"], "https://example.com/hot");
    f.cleanup().await;
}
