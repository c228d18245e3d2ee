//! Several gateway replicas sharing Redis: one rate-limit budget, a
//! degraded limiter of their own when Redis is down, and a revoked key
//! refused everywhere within seconds.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use shortfleet_testkit::within_or_last;

use crate::helpers::{Fixture, get_text, list};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_budget() {
    let mut f = Fixture::start().await;
    let a = f.gateway("redis://127.0.0.1:6379").await;
    let b = f.gateway("redis://127.0.0.1:6379").await;
    let key = f.key("alice", "premium").await;
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
    let key = f.key("alice", "premium").await;
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
    let refused = within_or_last(Duration::from_secs(5), || async {
        let status = list(&http, &b, &issued.secret).await.status();
        (status == StatusCode::UNAUTHORIZED)
            .then_some(())
            .ok_or(status)
    })
    .await;
    if let Err(status) = refused {
        panic!("still {status} after 5 s");
    }
    f.cleanup().await;
}
