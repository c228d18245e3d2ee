//! The gateway against real Redis, PostgreSQL and a real write-svc, all on
//! ephemeral ports: shared rate limits across replicas, the degraded limiter,
//! key revocation reaching another replica, and error shapes.

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use shortfleet_common::{config::ConfigSource, service::Service};
use tokio_util::sync::CancellationToken;

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

struct Fixture {
    id: String,
    databases: Vec<String>,
    write_url: String,
    stops: Vec<CancellationToken>,
}

impl Fixture {
    async fn start() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let links_db = format!("sf_test_{id}_links");
        let config = write_svc::Config::from_source(&ConfigSource::from_pairs([
            ("SHORTFLEET_GRPC_ADDR", "127.0.0.1:0".to_owned()),
            ("SHORTFLEET_OPS_ADDR", "127.0.0.1:0".to_owned()),
            ("SHORTFLEET_DATABASE_URL", format!("{POSTGRES}/{links_db}")),
            (
                "SHORTFLEET_LINK_EVENTS_EXCHANGE",
                format!("test.links.{id}"),
            ),
        ]))
        .unwrap();
        let writer = write_svc::App::build(config).await.unwrap();
        let write_url = format!("http://{}", writer.grpc_addr());
        let stop = CancellationToken::new();
        tokio::spawn(writer.run_until(stop.clone()));
        Self {
            databases: vec![links_db, format!("sf_test_{id}_gateway")],
            id,
            write_url,
            stops: vec![stop],
        }
    }

    fn gateway_config(&self, redis_url: &str) -> gateway::Config {
        gateway::Config::from_source(&ConfigSource::from_pairs([
            ("SHORTFLEET_HTTP_ADDR", "127.0.0.1:0".to_owned()),
            (
                "SHORTFLEET_DATABASE_URL",
                format!("{POSTGRES}/{}", self.databases[1]),
            ),
            ("SHORTFLEET_REDIS_URL", redis_url.to_owned()),
            ("SHORTFLEET_REDIS_PREFIX", format!("sf:test:{}:", self.id)),
            ("SHORTFLEET_WRITE_SVC_URL", self.write_url.clone()),
            ("SHORTFLEET_TIER_PREMIUM", "10/60".to_owned()),
            ("SHORTFLEET_MAX_BODY_BYTES", "1024".to_owned()),
            // Nothing listens on port 1: these upstreams are down.
            ("SHORTFLEET_READ_SVC_URL", "http://127.0.0.1:1".to_owned()),
            (
                "SHORTFLEET_CLICK_LOGGER_URL",
                "http://127.0.0.1:1".to_owned(),
            ),
            ("SHORTFLEET_ANALYTICS_URL", "http://127.0.0.1:1".to_owned()),
        ]))
        .unwrap()
    }

    /// Starts a gateway replica; returns its base URL.
    async fn gateway(&mut self, redis_url: &str) -> String {
        self.gateway_with(self.gateway_config(redis_url)).await.0
    }

    /// Starts a gateway replica with `config`; returns its base URL and, if
    /// it has one, its ops port's.
    async fn gateway_with(&mut self, config: gateway::Config) -> (String, Option<String>) {
        let app = gateway::App::build(config).await.unwrap();
        let url = format!("http://{}", app.http_addr());
        let ops = app.ops_addr().map(|a| format!("http://{a}"));
        let stop = CancellationToken::new();
        tokio::spawn(app.run_until(stop.clone()));
        self.stops.push(stop);
        (url, ops)
    }

    async fn key_store(&self) -> gateway::keys::KeyStore {
        gateway::keys::KeyStore::open(&self.gateway_config("redis://127.0.0.1:6379").database_url)
            .await
            .unwrap()
    }

    async fn cleanup(self) {
        for stop in &self.stops {
            stop.cancel();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok((client, conn)) = tokio_postgres_connect(&format!("{POSTGRES}/postgres")).await {
            tokio::spawn(conn);
            for db in &self.databases {
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                    .await;
            }
        }
    }
}

async fn tokio_postgres_connect(
    url: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    tokio_postgres::Error,
> {
    tokio_postgres::connect(url, tokio_postgres::NoTls).await
}

/// The body of a GET, as text.
async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

async fn list(http: &reqwest::Client, base: &str, key: &str) -> reqwest::Response {
    http.get(format!("{base}/api/v1/links"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_budget() {
    let mut f = Fixture::start().await;
    let a = f.gateway("redis://127.0.0.1:6379").await;
    let b = f.gateway("redis://127.0.0.1:6379").await;
    let key = f
        .key_store()
        .await
        .create("alice", "premium", None)
        .await
        .unwrap()
        .secret;
    let http = reqwest::Client::new();
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..20 {
        let base = if i % 2 == 0 { &a } else { &b };
        let r = list(&http, base, &key).await;
        assert_eq!(r.headers()["ratelimit-policy"], "\"premium\";q=10;w=60");
        match r.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(
                    r.headers()["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                        >= 1
                );
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // 10 per 60 s refills one token per 6 s: the run is far shorter.
    assert_eq!((ok, limited), (10, 10));
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_keeps_limiting_per_replica_without_5xx() {
    let mut f = Fixture::start().await;
    let base = f.gateway("redis://127.0.0.1:1").await;
    let key = f
        .key_store()
        .await
        .create("alice", "premium", None)
        .await
        .unwrap()
        .secret;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let statuses: Vec<StatusCode> = {
        let mut v = Vec::new();
        for _ in 0..12 {
            v.push(list(&http, &base, &key).await.status());
        }
        v
    };
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "degraded limiter must not stall"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        10
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        2
    );
    let metrics = get_text(&http, &format!("{base}/metrics")).await;
    assert!(
        metrics.contains("shortfleet_ratelimit_degraded 1"),
        "{metrics}"
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_by_another_replica_within_seconds() {
    let mut f = Fixture::start().await;
    let a = f.gateway("redis://127.0.0.1:6379").await;
    let b = f.gateway("redis://127.0.0.1:6379").await;
    let store = f.key_store().await;
    let issued = store.create("alice", "free", None).await.unwrap();
    let http = reqwest::Client::new();
    assert_eq!(
        list(&http, &a, &issued.secret).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        list(&http, &b, &issued.secret).await.status(),
        StatusCode::OK
    );
    assert!(store.revoke(&issued.id).await.unwrap());
    let revoked = Instant::now();
    loop {
        let status = list(&http, &b, &issued.secret).await.status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "still {status} after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_get_precise_problem_responses() {
    let mut f = Fixture::start().await;
    let base = f.gateway("redis://127.0.0.1:6379").await;
    let key = f
        .key_store()
        .await
        .create("alice", "free", None)
        .await
        .unwrap()
        .secret;
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
    let key = f
        .key_store()
        .await
        .create("alice", "premium", None)
        .await
        .unwrap()
        .secret;
    let http = reqwest::Client::new();
    let write_addr = f.write_url.trim_start_matches("http://").to_owned();

    // Kill write-svc; wait until its port refuses connections.
    f.stops[0].cancel();
    while tokio::net::TcpStream::connect(&write_addr).await.is_ok() {
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
    let config = write_svc::Config::from_source(&ConfigSource::from_pairs([
        ("SHORTFLEET_GRPC_ADDR", write_addr.clone()),
        ("SHORTFLEET_OPS_ADDR", "127.0.0.1:0".to_owned()),
        (
            "SHORTFLEET_DATABASE_URL",
            format!("{POSTGRES}/{}", f.databases[0]),
        ),
        (
            "SHORTFLEET_LINK_EVENTS_EXCHANGE",
            format!("test.links.{}", f.id),
        ),
    ]))
    .unwrap();
    let writer = write_svc::App::build(config).await.unwrap();
    let back = CancellationToken::new();
    tokio::spawn(writer.run_until(back.clone()));
    f.stops.push(back);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if list(&http, &base, &key).await.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "breaker never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_refuses_new_ones() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = Fixture::start().await;
    let app = gateway::App::build(f.gateway_config("redis://127.0.0.1:6379"))
        .await
        .unwrap();
    let addr = app.http_addr();
    let stop = CancellationToken::new();
    let served = tokio::spawn(app.run_until(stop.clone()));
    let key = f
        .key_store()
        .await
        .create("alice", "free", None)
        .await
        .unwrap()
        .secret;
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
    stop.cancel();
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
    tokio::time::timeout(Duration::from_secs(15), served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
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

/// Sends raw bytes on a fresh connection and returns everything the
/// gateway answered before closing (or within `wait`).
async fn raw_exchange(base: &str, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Reads until the peer closes; returns what it sent, or `None` if it kept
/// the connection past `limit`.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut chunk),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(String::from_utf8_lossy(&answer).into_owned()),
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_without_touching_the_breaker() {
    let mut f = Fixture::start().await;
    let mut config = f.gateway_config("redis://127.0.0.1:6379");
    config.tiers.insert(
        "premium".into(),
        gateway::ratelimit::Policy::parse("premium", "1000/60").unwrap(),
    );
    let (base, _) = f.gateway_with(config).await;
    let key = f
        .key_store()
        .await
        .create("mallory", "premium", None)
        .await
        .unwrap()
        .secret;
    let http = reqwest::Client::new();
    // Far more than the breaker's threshold (5): each is the client's
    // mistake, so each is a 400 and the breaker never opens.
    let forged_cursor = hex_of("1700000000000000.\u{0}abc");
    for query in [
        "tag=%00".to_owned(),
        "tag=a%00b".to_owned(),
        format!("cursor={forged_cursor}"),
        "cursor=zz".to_owned(),
        format!("tag={}", "t".repeat(5000)),
    ]
    .iter()
    .cycle()
    .take(15)
    {
        let r = http
            .get(format!("{base}/api/v1/links?{query}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: serde_json::Value = r.json().await.unwrap();
        let field = body["errors"][0]["field"].as_str().unwrap_or_default();
        assert!(["tag", "cursor"].contains(&field), "{query}: {body}");
    }
    let r = http
        .post(format!("{base}/api/v1/links"))
        .bearer_auth(&key)
        .json(&json!({"url": "https://example.com/\u{0}", "tags": ["a\u{0}"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Every owner's link management still works.
    assert_eq!(list(&http, &base, &key).await.status(), StatusCode::OK);
    let metrics = get_text(&http, &format!("{base}/metrics")).await;
    assert!(
        !metrics.contains("shortfleet_breaker_state{upstream=\"write-svc\"} 1"),
        "a client's mistakes opened the breaker"
    );
    f.cleanup().await;
}

fn hex_of(raw: &str) -> String {
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_and_reflection_edges_are_refused() {
    let mut f = Fixture::start().await;
    let mut config = f.gateway_config("redis://127.0.0.1:6379");
    config.auth_failures = gateway::ratelimit::Policy::parse("auth-failures", "5/60").unwrap();
    let (base, _) = f.gateway_with(config).await;
    let key = f
        .key_store()
        .await
        .create("alice", "premium", None)
        .await
        .unwrap()
        .secret;
    let http = reqwest::Client::new();
    let wait = Duration::from_secs(3);

    // RFC 6750: a 401 says which scheme to use; API answers are not sniffed.
    let r = http
        .get(format!("{base}/api/v1/links"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");

    // Guessing keys is limited per client address; a real key still works.
    let mut statuses = Vec::new();
    for i in 0..8 {
        let r = http
            .get(format!("{base}/api/v1/links"))
            .bearer_auth(format!("sf_guess{i}"))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().contains_key("retry-after"));
        }
        statuses.push(r.status().as_u16());
    }
    // The keyless request above was the first of five allowed failures.
    assert_eq!(statuses, [401, 401, 401, 401, 429, 429, 429, 429]);
    assert_eq!(list(&http, &base, &key).await.status(), StatusCode::OK);

    // Ambiguous framing: two Authorization headers, no Host, two Hosts.
    let auth = format!("authorization: Bearer {key}\r\n");
    for request in [
        format!("GET /api/v1/links HTTP/1.1\r\nhost: t\r\n{auth}{auth}connection: close\r\n\r\n"),
        format!("GET /api/v1/links HTTP/1.1\r\n{auth}connection: close\r\n\r\n"),
        format!(
            "GET /api/v1/links HTTP/1.1\r\nhost: a\r\nhost: b\r\n{auth}connection: close\r\n\r\n"
        ),
    ] {
        let answer = raw_exchange(&base, request.as_bytes(), wait).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{request:?} → {answer}");
    }

    // Bodies: an encoding we would not decode, and a key given twice.
    let r = http
        .post(format!("{base}/api/v1/links"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .header("content-encoding", "br")
        .body(r#"{"url": "https://example.com/br"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = http
        .post(format!("{base}/api/v1/links"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(r#"{"url": "https://example.com/a", "url": "https://example.com/b"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("duplicate"),
        "{body}"
    );

    // Nothing reflected: a long path is not echoed whole, a request id that
    // is not a plain token is replaced.
    let long = "a".repeat(20_000);
    let r = http.get(format!("{base}/api/{long}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.text().await.unwrap().len() < 500);
    let r = http
        .get(format!("{base}/healthz"))
        .header("x-request-id", "<script>alert(1)</script>")
        .send()
        .await
        .unwrap();
    let echoed = r.headers()["x-request-id"].to_str().unwrap();
    assert!(!echoed.contains('<'), "{echoed}");
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_send_nothing_are_closed_and_capped_per_address() {
    use tokio::io::AsyncWriteExt;
    let mut f = Fixture::start().await;
    let mut config = f.gateway_config("redis://127.0.0.1:6379");
    config.sockets = gateway::sockets::SocketPolicy {
        first_byte: Duration::from_millis(500),
        idle: Duration::from_millis(800),
        max_per_ip: 4,
    };
    config.body_read_timeout = Duration::from_millis(1000);
    let (base, _) = f.gateway_with(config).await;
    let addr = base.trim_start_matches("http://").to_owned();
    let request = b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n";

    // Silent: closed after the first-byte deadline.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let opened = Instant::now();
    let answer = read_until_closed(&mut silent, Duration::from_secs(5))
        .await
        .expect("a silent connection was kept");
    assert!(answer.is_empty(), "{answer}");
    assert!(opened.elapsed() >= Duration::from_millis(400));
    drop(silent);

    // Four connections from one address are served; a fifth is refused.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let refused = raw_exchange(&base, request, Duration::from_secs(2)).await;
    assert!(!refused.starts_with("HTTP/1.1"), "{refused}");
    for stream in &mut held {
        stream.write_all(request).await.unwrap();
    }
    let sent = Instant::now();
    // Idle keep-alive: each answered, then closed once quiet for 800 ms.
    for stream in &mut held {
        let answer = read_until_closed(stream, Duration::from_secs(5))
            .await
            .expect("an idle keep-alive connection was kept");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert!(sent.elapsed() >= Duration::from_millis(600));
    drop(held);
    // Slots are released: a new connection is served again.
    let answer = raw_exchange(
        &base,
        b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A body trickling in (one byte every 200 ms) is cut off at the body
    // deadline with 408.
    let key = f
        .key_store()
        .await
        .create("slowpoke", "premium", None)
        .await
        .unwrap()
        .secret;
    let slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut reader, mut writer) = slow.into_split();
    let head = format!(
        "POST /api/v1/links HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{{"
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(8),
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut answer),
    )
    .await;
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(8));
    f.cleanup().await;
}
