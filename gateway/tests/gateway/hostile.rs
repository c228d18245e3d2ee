//! Hostile input: malformed queries and bodies, ambiguous framing,
//! reflection, and sockets that send nothing or trickle.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Fixture, get_text, list};

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
    let key = f.key("mallory", "premium").await;
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
    let key = f.key("alice", "premium").await;
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

/// Writes `head` on a fresh connection, then one byte of `trickle` every
/// `every` (up to `count`), reading whatever the gateway answers until it
/// closes: the answer (`None` if still open after `wait`) and how long
/// after the head the connection lasted.
async fn trickled(
    addr: &str,
    head: Vec<u8>,
    trickle: &'static [u8],
    every: Duration,
    count: usize,
    wait: Duration,
) -> (Option<String>, Duration) {
    use tokio::io::AsyncWriteExt;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(&head).await.unwrap();
    let started = Instant::now();
    let trickling = tokio::spawn(async move {
        for _ in 0..count {
            tokio::time::sleep(every).await;
            if writer.write_all(trickle).await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        wait,
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut answer),
    )
    .await;
    trickling.abort();
    let answer = read
        .is_ok()
        .then(|| String::from_utf8_lossy(&answer).into_owned());
    (answer, started.elapsed())
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
        ..config.sockets
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
    let key = f.key("slowpoke", "premium").await;
    let head = format!(
        "POST /api/v1/links HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{{"
    );
    let wait = Duration::from_secs(8);
    let (answer, lasted) = trickled(
        &addr,
        head.into_bytes(),
        b" ",
        Duration::from_millis(200),
        50,
        wait,
    )
    .await;
    let answer = answer.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(lasted < wait);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_h2_connection_is_closed_though_it_answers_pings() {
    let mut f = Fixture::start().await;
    let mut config = f.gateway_config("redis://127.0.0.1:6379");
    config.sockets.idle = Duration::from_millis(800);
    // PINGs (each answered by the client) far more often than the idle
    // deadline: bytes keep moving on the socket the whole time.
    config.sockets.h2_ping_interval = Duration::from_millis(100);
    let (base, _) = f.gateway_with(config).await;
    // No request in flight or begun for 800 ms: the gateway closes it.
    let lasted = h2_quiet_after_one_request(&base, Duration::from_secs(5)).await;
    assert!(lasted >= Duration::from_millis(600), "{lasted:?}");
    f.cleanup().await;
}

/// Opens an h2 connection (prior knowledge), asks for `/healthz` once,
/// then sends nothing: how long after the answer the gateway closed it
/// (panics if it kept it past `limit`).
async fn h2_quiet_after_one_request(base: &str, limit: Duration) -> Duration {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let request = http::Request::get(format!("{base}/healthz"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    let answered = Instant::now();
    tokio::time::timeout(limit, conn)
        .await
        .expect("a quiet h2 connection was kept past the limit")
        .unwrap()
        .ok();
    answered.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_trickled_or_long_awaited_is_cut_off_on_http1_only() {
    use tokio::io::AsyncWriteExt;
    let mut f = Fixture::start().await;
    let mut config = f.gateway_config("redis://127.0.0.1:6379");
    config.header_read_timeout = Duration::from_millis(700);
    config.sockets.idle = Duration::from_millis(4000);
    let (base, _) = f.gateway_with(config).await;
    let addr = base.trim_start_matches("http://").to_owned();

    // Slowloris: header bytes keep coming (so the idle deadline never
    // passes), but no head is ever complete. Cut off, with no answer.
    let (answer, cut) = trickled(
        &addr,
        b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-pad: ".to_vec(),
        b"a",
        Duration::from_millis(100),
        60,
        Duration::from_secs(5),
    )
    .await;
    let answer = answer.expect("a trickled head was kept past its deadline");
    assert!(answer.is_empty(), "{answer}");
    assert!(cut >= Duration::from_millis(600), "{cut:?}");
    assert!(cut < Duration::from_millis(3000), "{cut:?}");

    // Keep-alive: answered, then closed once no next head came within the
    // header deadline (well before the idle one).
    let mut kept = tokio::net::TcpStream::connect(&addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let sent = Instant::now();
    let answer = read_until_closed(&mut kept, Duration::from_secs(5))
        .await
        .expect("an HTTP/1 connection waited past the header deadline");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let closed = sent.elapsed();
    assert!(closed >= Duration::from_millis(600), "{closed:?}");
    assert!(closed < Duration::from_millis(3000), "{closed:?}");

    // h2 has no request-head wait: a quiet h2 connection lasts until the
    // idle deadline, well past the header one.
    let lasted = h2_quiet_after_one_request(&base, Duration::from_secs(9)).await;
    assert!(lasted >= Duration::from_millis(3500), "{lasted:?}");
    f.cleanup().await;
}
