//! 1,000 concurrent resolves of one cold code make one upstream call. Its own
//! test binary: the metrics registry is per process.

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Fixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_code_make_one_upstream_call() {
    let mut f = Fixture::start().await;
    // Created, and its event published, before the replica exists, so no
    // link event warms its cache; and a Redis it cannot reach, so every
    // miss would go to write-svc.
    let link = f.create("https://example.com/stampede").await;
    f.await_outbox_published().await;
    let replica = f.replica("redis://127.0.0.1:1").await;
    let before = replica.upstream_calls().await;
    let client = replica.client().await;
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let mut c = client.clone();
        let code = link.code.clone();
        tasks.push(tokio::spawn(async move {
            c.resolve(shortfleet_proto::v1::ResolveRequest {
                code,
                unlocked: false,
                refresh: false,
            })
            .await
        }));
    }
    for t in tasks {
        assert_eq!(
            t.await.unwrap().unwrap().into_inner().url,
            "https://example.com/stampede"
        );
    }
    let calls = replica.upstream_calls().await - before;
    assert_eq!(
        calls, 1.0,
        "1,000 concurrent misses made {calls} upstream calls"
    );
    f.cleanup().await;
}
