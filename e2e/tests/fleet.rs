//! The whole fleet, end to end, as a user drives it over HTTP: keys, links,
//! redirects, clicks reaching analytics, rate limits and error shapes.

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode, redirect::Policy};
use serde_json::{Value, json};
use shortfleet_e2e::{Fleet, FleetOptions, get_json};

fn client() -> Client {
    Client::builder()
        // A browser's user agent: tools like curl count as bots in analytics.
        .user_agent("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0")
        .redirect(Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn is_problem(r: &reqwest::Response) -> bool {
    r.headers()
        .get("content-type")
        .is_some_and(|v| v == "application/problem+json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_travels_through_every_service() {
    let fleet = Fleet::start(FleetOptions {
        all_env: Vec::new(),
        gateway_env: vec![
            // A tiny tier so the limit is reachable in a test.
            ("SHORTFLEET_TIER_PREMIUM".into(), "3/60".into()),
            ("SHORTFLEET_ANONYMOUS_LIMIT".into(), "100000/60".into()),
            // The test client plays a CDN that tells the country.
            ("SHORTFLEET_TRUSTED_PROXIES".into(), "127.0.0.0/8".into()),
            ("SHORTFLEET_COUNTRY_HEADER".into(), "CF-IPCountry".into()),
        ],
        ..Default::default()
    })
    .await
    .expect("fleet starts");
    let result = run_flows(&fleet).await;
    if result.is_err() {
        for svc in shortfleet_e2e::SERVICES {
            eprintln!("--- {svc} log tail ---\n{}", fleet.log_tail(svc, 15));
        }
    }
    fleet.shutdown().await.expect("fleet stops");
    result.expect("flows hold");
}

async fn run_flows(fleet: &Fleet) -> anyhow::Result<()> {
    let http = client();
    let base = &fleet.gateway_url;

    // Flow 1: a key from the admin command shortens a link; no key → 401.
    let key = fleet.create_key("alice", "free")?;
    let created = http
        .post(format!("{base}/api/v1/links"))
        .bearer_auth(&key)
        .json(&json!({"url": "https://example.com/x"}))
        .send()
        .await?;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert!(created.headers().contains_key("x-request-id"));
    assert!(created.headers().contains_key("location"));
    let link: Value = created.json().await?;
    let code = link["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 7);
    assert!(code.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(link["short_url"], format!("{base}/{code}"));
    assert_eq!(link["url"], "https://example.com/x");

    let anonymous = http
        .post(format!("{base}/api/v1/links"))
        .json(&json!({"url": "https://example.com/x"}))
        .send()
        .await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(is_problem(&anonymous));
    let bad_key = http
        .post(format!("{base}/api/v1/links"))
        .bearer_auth("sf_notarealkeynotarealkeynotareal")
        .json(&json!({"url": "https://example.com/x"}))
        .send()
        .await?;
    assert_eq!(bad_key.status(), StatusCode::UNAUTHORIZED);

    // Same owner + same URL → the existing link, 200.
    let again = http
        .post(format!("{base}/api/v1/links"))
        .bearer_auth(&key)
        .json(&json!({"url": "https://example.com/x"}))
        .send()
        .await?;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await?["code"], code.as_str());

    // Bad input: 400 problem+json naming the field.
    let invalid = http
        .post(format!("{base}/api/v1/links"))
        .bearer_auth(&key)
        .json(&json!({"url": "ftp://example.com/x"}))
        .send()
        .await?;
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    assert!(is_problem(&invalid));
    let problem: Value = invalid.json().await?;
    assert_eq!(problem["errors"][0]["field"], "url");

    // Flow 2: redirect; the second one never reaches write-svc/PostgreSQL.
    let upstream_calls = || {
        fleet.metric(
            "read-svc",
            "shortfleet_cache_requests_total",
            &["level=\"upstream\""],
        )
    };
    let first = http.get(format!("{base}/{code}")).send().await?;
    assert_eq!(first.status(), StatusCode::FOUND);
    assert_eq!(first.headers()["location"], "https://example.com/x");
    let calls_after_first = upstream_calls().await?;
    let second = http.get(format!("{base}/{code}")).send().await?;
    assert_eq!(second.status(), StatusCode::FOUND);
    assert_eq!(
        upstream_calls().await?,
        calls_after_first,
        "second redirect reached write-svc"
    );
    let local_hits = fleet
        .metric(
            "read-svc",
            "shortfleet_cache_requests_total",
            &["level=\"local\"", "result=\"hit\""],
        )
        .await?;
    assert!(
        local_hits >= 1.0,
        "second redirect was not a local cache hit"
    );

    let unknown = http.get(format!("{base}/zzzzzzz")).send().await?;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert!(is_problem(&unknown));

    // Flow 3: each redirect is one click in analytics within 2 seconds.
    let redirects = 5u64;
    for _ in 2..redirects {
        let r = http
            .get(format!("{base}/{code}"))
            .header("cf-ipcountry", "DE")
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::FOUND);
    }
    let sent = Instant::now();
    let total = loop {
        let stats: Value =
            get_json(&http, &format!("{base}/api/v1/links/{code}/stats"), &key).await?;
        let total = stats["total"].as_u64().unwrap_or(0);
        if total >= redirects || sent.elapsed() > Duration::from_secs(2) {
            break total;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(total, redirects, "clicks counted in analytics within 2 s");
    let stats: Value = get_json(&http, &format!("{base}/api/v1/links/{code}/stats"), &key).await?;
    assert_eq!(stats["countries"][0]["name"], "DE", "{stats}");
    assert_eq!(stats["countries"][0]["clicks"], redirects - 2);

    // The link, alone and in its owner's list, carries the same count; links
    // nobody clicked say 0, not "unknown".
    let one: Value = get_json(&http, &format!("{base}/api/v1/links/{code}"), &key).await?;
    assert_eq!(one["clicks"], redirects, "{one}");
    let unclicked = http
        .post(format!("{base}/api/v1/links"))
        .bearer_auth(&key)
        .json(&json!({"url": "https://example.com/never-clicked"}))
        .send()
        .await?;
    assert_eq!(unclicked.status(), StatusCode::CREATED);
    let list: Value = get_json(&http, &format!("{base}/api/v1/links"), &key).await?;
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{list}");
    for item in items {
        let want = if item["code"] == code.as_str() {
            redirects
        } else {
            0
        };
        assert_eq!(item["clicks"], want, "{item}");
    }

    // Another owner's link is 404, never 403.
    let bob = fleet.create_key("bob", "free")?;
    let foreign = http
        .get(format!("{base}/api/v1/links/{code}/stats"))
        .bearer_auth(&bob)
        .send()
        .await?;
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);

    // Flow 4: token bucket (premium tier set to 3/60 for this fleet).
    let limited_key = fleet.create_key("carol", "premium")?;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = http
            .get(format!("{base}/api/v1/links"))
            .bearer_auth(&limited_key)
            .send()
            .await?;
        assert_eq!(r.headers()["ratelimit-policy"], "\"premium\";q=3;w=60");
        assert!(
            r.headers()["ratelimit"]
                .to_str()?
                .starts_with("\"premium\";r=")
        );
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().contains_key("retry-after"));
            assert!(is_problem(&r));
        }
        statuses.push(r.status());
    }
    assert_eq!(
        statuses,
        vec![
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );

    // Flow last: after all that traffic every service's /metrics is full;
    // each series is described (HELP) and promtool finds nothing to report.
    fleet.check_metrics().await?;
    Ok(())
}
