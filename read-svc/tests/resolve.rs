//! Resolution through the three levels, negative caching, Redis down, and
//! event-driven refresh across replicas.

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::Fixture;
use shortfleet_proto::v1::{DeleteLinkRequest, LinkState, UpdateLinkRequest};
use shortfleet_testkit::{DEADLINE, eventually, within};
use tonic::Code;

const REDIS: &str = "redis://127.0.0.1:6379";

#[tokio::test]
async fn resolves_and_keeps_serving_cached_codes_without_write_svc() {
    let mut f = Fixture::start().await;
    let replica = f.replica(REDIS).await;
    let link = f.create("https://example.com/cached").await;
    let resolved = replica.resolve(&link.code).await.unwrap();
    assert_eq!(resolved.url, "https://example.com/cached");
    assert_eq!(resolved.state, LinkState::Active as i32);
    assert_eq!(resolved.owner, "alice");
    assert_eq!(
        replica.resolve("unknown1").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        replica.resolve("../etc").await.unwrap_err().code(),
        Code::NotFound
    );

    // With write-svc gone, cached answers (positive and negative) still hold.
    f.stop_writer();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        replica.resolve(&link.code).await.unwrap().url,
        "https://example.com/cached"
    );
    assert_eq!(
        replica.resolve("unknown1").await.unwrap_err().code(),
        Code::NotFound
    );
    // An uncached code now needs write-svc: a clear UNAVAILABLE, not a hang.
    let err = replica.resolve("neverseen").await.unwrap_err();
    assert!(
        matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{err:?}"
    );
    f.cleanup().await;
}

/// Issue 11: a code that breaks the input policy (empty, NUL or other
/// control character, over 64 bytes) is INVALID_ARGUMENT naming `code`,
/// never sent on to Redis or write-svc; a printable code that is not
/// code-shaped stays NOT_FOUND; and the replica keeps resolving.
#[tokio::test]
async fn hostile_codes_are_invalid_and_resolving_goes_on() {
    let mut f = Fixture::start().await;
    let replica = f.replica(REDIS).await;
    let link = f.create("https://example.com/after-probes").await;
    let huge = "c".repeat(3 << 20);
    for bad in ["", "ab\0cd", "abc\u{85}", "\t\t\t", &"x".repeat(65), &huge] {
        let status = replica.resolve(bad).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{:?}",
            &bad[..bad.len().min(8)]
        );
        assert_eq!(status.metadata().get("sf-field").unwrap(), "code");
        assert!(status.message().len() < 100, "the value is not echoed");
    }
    for unknown in ["ab", "a/b/c", "héllo"] {
        assert_eq!(
            replica.resolve(unknown).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    let resolved = replica.resolve(&link.code).await.unwrap();
    assert_eq!(resolved.url, "https://example.com/after-probes");
    f.cleanup().await;
}

#[tokio::test]
async fn a_second_replica_is_served_by_the_redis_read_model() {
    let mut f = Fixture::start().await;
    let first = f.replica(REDIS).await;
    let link = f.create("https://example.com/shared").await;
    first.resolve(&link.code).await.unwrap();
    let second = f.replica(REDIS).await;
    f.stop_writer();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The second replica never saw the code locally and write-svc is down:
    // only Redis can answer.
    assert_eq!(
        second.resolve(&link.code).await.unwrap().url,
        "https://example.com/shared"
    );
    f.cleanup().await;
}

#[tokio::test]
async fn redis_down_degrades_but_resolves_keep_working() {
    let mut f = Fixture::start().await;
    // Nothing listens on port 1.
    let replica = f.replica("redis://127.0.0.1:1").await;
    let link = f.create("https://example.com/no-redis").await;
    let started = Instant::now();
    assert_eq!(
        replica.resolve(&link.code).await.unwrap().url,
        "https://example.com/no-redis"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "Redis down must not stall resolves"
    );
    let (status, body) = replica.readiness().await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"redis\":\"down\""), "{body}");
    assert!(body.contains("degraded"), "{body}");
    f.cleanup().await;
}

#[tokio::test]
async fn edits_and_deletes_reach_every_replica_within_a_second() {
    let mut f = Fixture::start().await;
    let a = f.replica(REDIS).await;
    let b = f.replica(REDIS).await;
    let link = f.create("https://example.com/before").await;
    // Warm both local caches.
    eventually("both replicas to resolve the new link", || async {
        (a.resolve(&link.code).await.is_ok() && b.resolve(&link.code).await.is_ok()).then_some(())
    })
    .await;

    let mut writer = f.writer().await;
    writer
        .update_link(UpdateLinkRequest {
            code: link.code.clone(),
            owner: "alice".into(),
            url: Some("https://example.com/after".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let edited = Instant::now();
    for replica in [&a, &b] {
        eventually("the edit to reach the replica", || async {
            replica
                .resolve(&link.code)
                .await
                .is_ok_and(|r| r.url == "https://example.com/after")
                .then_some(())
        })
        .await;
    }
    assert!(
        edited.elapsed() < Duration::from_secs(1),
        "edit took {:?}",
        edited.elapsed()
    );

    writer
        .delete_link(DeleteLinkRequest {
            code: link.code.clone(),
            owner: "alice".into(),
        })
        .await
        .unwrap();
    let deleted = Instant::now();
    for replica in [&a, &b] {
        eventually("the delete to reach the replica", || async {
            replica
                .resolve(&link.code)
                .await
                .is_ok_and(|r| r.state == LinkState::Gone as i32)
                .then_some(())
        })
        .await;
    }
    assert!(
        deleted.elapsed() < Duration::from_secs(1),
        "delete took {:?}",
        deleted.elapsed()
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clicks_is_exact_under_concurrent_redirects_across_replicas() {
    let mut f = Fixture::start().await;
    let a = f.replica(REDIS).await;
    let b = f.replica(REDIS).await;
    let link = f.create_limited("https://example.com/limited", 25).await;
    // 8 clients, 10 redirects each, split over both replicas.
    let mut tasks = Vec::new();
    for client in 0..8 {
        let mut resolver = if client % 2 == 0 {
            a.client().await
        } else {
            b.client().await
        };
        let code = link.code.clone();
        tasks.push(tokio::spawn(async move {
            let mut active = 0;
            for _ in 0..10 {
                let r = resolver
                    .resolve(shortfleet_proto::v1::ResolveRequest {
                        code: code.clone(),
                        unlocked: false,
                        refresh: false,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(
                    r.uncacheable,
                    "a counted link must not be cached by callers"
                );
                if r.state == LinkState::Active as i32 {
                    active += 1;
                }
            }
            active
        }));
    }
    let mut active = 0;
    for t in tasks {
        active += t.await.unwrap();
    }
    assert_eq!(active, 25, "exactly max_clicks redirects are allowed");
    f.cleanup().await;
}

#[tokio::test]
async fn a_cache_refresh_never_counts_a_max_clicks_redirect() {
    let mut f = Fixture::start().await;
    let replica = f.replica(REDIS).await;
    let link = f.create_limited("https://example.com/refreshed", 2).await;
    let mut resolver = replica.client().await;
    let mut ask = async |refresh| {
        resolver
            .resolve(shortfleet_proto::v1::ResolveRequest {
                code: link.code.clone(),
                unlocked: false,
                refresh,
            })
            .await
            .unwrap()
            .into_inner()
    };
    for _ in 0..5 {
        let refreshed = ask(true).await;
        assert!(refreshed.uncacheable, "a counted link is never cached");
    }
    let mut active = 0;
    for _ in 0..3 {
        if ask(false).await.state == LinkState::Active as i32 {
            active += 1;
        }
    }
    assert_eq!(active, 2, "refreshes took none of the two clicks");
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopping_mid_flight_degrades_then_recovers() {
    let proxy = shortfleet_e2e::proxy::FaultProxy::start("127.0.0.1:6379".parse().unwrap())
        .await
        .unwrap();
    let mut f = Fixture::start().await;
    let replica = f.replica(&format!("redis://{}", proxy.addr)).await;
    let before = f.create("https://example.com/before-outage").await;
    assert!(replica.resolve(&before.code).await.is_ok());
    eventually("Redis to be up", || async {
        replica
            .readiness()
            .await
            .1
            .contains("\"redis\":\"up\"")
            .then_some(())
    })
    .await;

    proxy.cut();
    let during = f.create("https://example.com/during-outage").await;
    let started = Instant::now();
    // A code first seen during the outage: Redis is skipped, write-svc answers.
    assert_eq!(
        replica.resolve(&during.code).await.unwrap().url,
        "https://example.com/during-outage"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        replica.resolve(&before.code).await.unwrap().url,
        "https://example.com/before-outage"
    );
    eventually("readiness to report degraded", || async {
        replica
            .readiness()
            .await
            .1
            .contains("degraded")
            .then_some(())
    })
    .await;

    proxy.restore();
    let after = f.create("https://example.com/after-outage").await;
    assert!(
        within(DEADLINE, || async {
            (replica.resolve(&after.code).await.is_ok()
                && replica.readiness().await.1.contains("\"redis\":\"up\""))
            .then_some(())
        })
        .await
        .is_some(),
        "Redis never came back: {}",
        replica.readiness().await.1
    );
    f.cleanup().await;
}
