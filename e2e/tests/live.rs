//! `GET /api/v1/events` against the real fleet and RabbitMQ: clicks counted
//! by analytics reach their owner's streams on every gateway replica, never
//! another owner's; streams per key are bounded; a reader that stops
//! reading is dropped while redirects and the other streams carry on.

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use shortfleet_e2e::{Fleet, FleetOptions};
use tokio::io::AsyncWriteExt;

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn create(http: &reqwest::Client, base: &str, key: &str, alias: &str) -> String {
    let r = http
        .post(format!("{base}/api/v1/links"))
        .bearer_auth(key)
        .json(&json!({"url": format!("https://example.com/{alias}"), "alias": alias}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    alias.to_owned()
}

async fn redirect(http: &reqwest::Client, base: &str, code: &str) -> Duration {
    let started = Instant::now();
    let r = http
        .get(format!("{base}/{code}"))
        .header("user-agent", BROWSER)
        .send()
        .await
        .expect("redirect");
    let status = r.status();
    let headers = format!("{:?}", r.headers());
    assert_eq!(status, 302, "{headers} {:?}", r.text().await);
    started.elapsed()
}

async fn open(http: &reqwest::Client, base: &str, key: &str) -> reqwest::Response {
    http.get(format!("{base}/api/v1/events"))
        .bearer_auth(key)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("events")
}

/// Reads `stream` into `seen` until `done(seen)` or `within` passes.
async fn read_until(
    stream: &mut reqwest::Response,
    seen: &mut String,
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !done(seen) {
        match tokio::time::timeout_at(deadline, stream.chunk()).await {
            Ok(Ok(Some(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            _ => return false,
        }
    }
    true
}

/// Clicks announced for `code` in the `clicks` events of `text`.
fn clicks_of(text: &str, code: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .flat_map(|v| v["counts"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["code"] == code)
        .map(|c| c["clicks"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_clicks_reach_their_owner_from_every_replica_and_slow_readers_are_dropped() {
    let mut fleet = Fleet::start(FleetOptions {
        gateway_env: env(&[
            ("SHORTFLEET_ANONYMOUS_LIMIT", "100000/60"),
            ("SHORTFLEET_LIVE_MAX_STREAMS_PER_KEY", "2"),
            ("SHORTFLEET_LIVE_STREAM_BUFFER", "4"),
            ("SHORTFLEET_CLICK_BATCH_WAIT_MS", "5"),
        ]),
        all_env: env(&[("SHORTFLEET_BATCH_MAX_WAIT_MS", "5")]),
        ..Default::default()
    })
    .await
    .expect("fleet starts");
    let one = fleet.gateway_url.clone();
    let two = fleet
        .start_gateway_replica("gateway-2")
        .await
        .expect("second replica");
    let alice = fleet.create_key("alice", "premium").unwrap();
    let alice_slow = fleet.create_key("alice", "premium").unwrap();
    let bob = fleet.create_key("bob", "premium").unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let a = create(&http, &one, &alice, "live-alice").await;
    let b = create(&http, &one, &bob, "live-bob").await;

    // Streams on replica two; clicks served by replica one.
    let mut alice_stream = open(&http, &two, &alice).await;
    assert_eq!(alice_stream.status(), 200);
    assert!(
        alice_stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut bob_stream = open(&http, &two, &bob).await;
    let (mut alice_seen, mut bob_seen) = (String::new(), String::new());
    assert!(
        read_until(
            &mut alice_stream,
            &mut alice_seen,
            Duration::from_secs(5),
            |s| s.contains("retry:")
        )
        .await
    );
    // The replica's subscription may still be starting: click until the
    // first count arrives, then count exactly from there.
    let mut sent_a = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while clicks_of(&alice_seen, &a) == 0 {
        assert!(Instant::now() < deadline, "no live count within 30 s");
        redirect(&http, &one, &a).await;
        sent_a += 1;
        read_until(
            &mut alice_stream,
            &mut alice_seen,
            Duration::from_secs(1),
            |s| clicks_of(s, &a) > 0,
        )
        .await;
    }
    for _ in 0..3 {
        redirect(&http, &one, &a).await;
    }
    for _ in 0..2 {
        redirect(&http, &one, &b).await;
    }
    let started = Instant::now();
    assert!(
        read_until(
            &mut alice_stream,
            &mut alice_seen,
            Duration::from_secs(10),
            |s| { clicks_of(s, &a) >= sent_a + 3 }
        )
        .await,
        "alice saw {} of {} clicks:\n{alice_seen}",
        clicks_of(&alice_seen, &a),
        sent_a + 3
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "live within about 2 s"
    );
    assert!(
        read_until(
            &mut bob_stream,
            &mut bob_seen,
            Duration::from_secs(10),
            |s| { clicks_of(s, &b) >= 2 }
        )
        .await
    );
    assert!(!alice_seen.contains(&b), "bob's code in alice's stream");
    assert!(!bob_seen.contains(&a), "alice's code in bob's stream");
    assert_eq!(clicks_of(&bob_seen, &b), 2);

    // Bounded per key: the third stream of a key is refused.
    let second = open(&http, &two, &alice).await;
    assert_eq!(second.status(), 200);
    let third = open(&http, &two, &alice).await;
    assert_eq!(third.status(), 429);
    let problem: Value = third.json().await.unwrap();
    assert_eq!(problem["type"], "urn:shortfleet:problem:too-many-streams");
    drop(second);

    // Resuming: Last-Event-ID gets a resync cue first.
    let mut resumed = http
        .get(format!("{one}/api/v1/events"))
        .bearer_auth(&bob)
        .header("last-event-id", "41")
        .send()
        .await
        .unwrap();
    let mut resumed_seen = String::new();
    assert!(
        read_until(
            &mut resumed,
            &mut resumed_seen,
            Duration::from_secs(5),
            |s| s.contains("event: resync")
        )
        .await
    );
    drop(resumed);

    // A reader that never reads: a tiny receive window, then silence.
    let host = two.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(2048).unwrap();
        let mut conn = socket.connect(host.parse().unwrap()).await.unwrap();
        conn.write_all(
            format!(
                "GET /api/v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {alice_slow}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        stalled.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        open(&http, &two, &alice_slow).await.status(),
        429,
        "both stalled streams hold their slots"
    );
    // Many long codes, so each event is large and the stalled socket fills.
    let mut codes = Vec::new();
    for i in 0..30 {
        let alias = format!("slow-{i:02}-{}", "x".repeat(50));
        codes.push(create(&http, &one, &alice, &alias).await);
    }
    let healthy_events = Arc::new(AtomicUsize::new(0));
    let counter = healthy_events.clone();
    let healthy = tokio::spawn(async move {
        while let Ok(Some(bytes)) = alice_stream.chunk().await {
            let n = String::from_utf8_lossy(&bytes)
                .matches("event: clicks")
                .count();
            counter.fetch_add(n, Ordering::Relaxed);
        }
    });
    let mut slowest = Duration::ZERO;
    let mut dropped = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        // One at a time: concurrent first redirects would each lease a
        // slice of the anonymous bucket and drain it (see the report).
        for c in &codes {
            slowest = slowest.max(redirect(&http, &one, c).await);
        }
        let probe = open(&http, &two, &alice_slow).await;
        if probe.status() == 200 {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "a stalled stream was never dropped");
    assert!(
        slowest < Duration::from_secs(1),
        "a redirect waited {slowest:?} while a reader stalled"
    );
    assert!(!healthy.is_finished(), "the reading stream was not ended");
    healthy.abort();
    let healthy_events = healthy_events.load(Ordering::Relaxed);
    assert!(
        healthy_events > 5,
        "the reading stream kept receiving ({healthy_events} events)"
    );
    drop(stalled);
    fleet.shutdown().await.expect("fleet stops");
}
