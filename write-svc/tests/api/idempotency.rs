//! Idempotency keys on CreateLink: a retry with the same key and body
//! replays the original answer, a different body is refused, and racing
//! retries produce one link.

use crate::helpers::{TestApp, create_request, expect_code, link_of, outbox_rows};
use shortfleet_proto::v1::{CreateLinkRequest, ListLinksRequest};
use tonic::Code;

fn keyed(owner: &str, url: &str, key: &str) -> CreateLinkRequest {
    CreateLinkRequest {
        idempotency_key: key.into(),
        tags: vec!["campaign".into()],
        redirect_type: 307,
        ..create_request(owner, url)
    }
}

async fn count_links(app: &TestApp, owner: &str) -> usize {
    app.client
        .clone()
        .list_links(ListLinksRequest {
            owner: owner.into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .links
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_key_and_body_replays_the_original_answer() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let req = keyed("alice", "https://example.com/retry", "key-1");

    let original = client.create_link(req.clone()).await.unwrap().into_inner();
    assert!(original.created);
    let replay = client.create_link(req.clone()).await.unwrap().into_inner();
    // The whole answer, `created = true` included: a retried 201 stays 201.
    assert_eq!(replay, original);

    // Without the key the same body is an ordinary dedupe, which reports
    // the link as already existing: the replay above really was a replay.
    let unkeyed = CreateLinkRequest {
        idempotency_key: String::new(),
        ..req.clone()
    };
    let deduped = client.create_link(unkeyed).await.unwrap().into_inner();
    assert!(!deduped.created);
    assert_eq!(link_of(&deduped).code, link_of(&original).code);

    // Keys belong to an owner: bob's "key-1" is a new request.
    let bob = client
        .create_link(keyed("bob", "https://example.com/retry", "key-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(bob.created);
    assert_ne!(link_of(&bob).code, link_of(&original).code);

    // A replay wrote nothing: one link, one event for alice.
    assert_eq!(count_links(&app, "alice").await, 1);
    let created_events = outbox_rows(&app.db().await).await.len();
    assert_eq!(created_events, 2, "alice's link and bob's link");

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_a_different_body_is_refused() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();

    let original = client
        .create_link(keyed("alice", "https://example.com/one", "key-2"))
        .await
        .unwrap()
        .into_inner();
    assert!(original.created);

    let other_url = keyed("alice", "https://example.com/two", "key-2");
    expect_code(
        client.create_link(other_url).await,
        Code::FailedPrecondition,
    );
    let other_tags = CreateLinkRequest {
        tags: vec!["different".into()],
        ..keyed("alice", "https://example.com/one", "key-2")
    };
    expect_code(
        client.create_link(other_tags).await,
        Code::FailedPrecondition,
    );

    // The refusals created nothing, and the key still replays its answer.
    assert_eq!(count_links(&app, "alice").await, 1);
    let replay = client
        .create_link(keyed("alice", "https://example.com/one", "key-2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, original);

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_make_one_link() {
    let app = TestApp::spawn().await;
    let req = keyed("dave", "https://example.com/racing", "key-3");

    let attempts = (0..8).map(|_| {
        let mut client = app.client.clone();
        let req = req.clone();
        tokio::spawn(async move { client.create_link(req).await })
    });
    let responses: Vec<_> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| {
            r.expect("the request task did not panic")
                .expect("every racing retry succeeds")
                .into_inner()
        })
        .collect();
    let first = &responses[0];
    assert!(first.created, "{first:?}");
    for response in &responses {
        assert_eq!(response, first, "every retry gets the original answer");
    }

    assert_eq!(count_links(&app, "dave").await, 1);
    let outbox = outbox_rows(&app.db().await).await;
    assert_eq!(outbox.len(), 1, "one link.created event: {outbox:?}");

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_released_when_its_link_is_deleted() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let req = keyed("carol", "https://example.com/released", "key-del");
    let first = link_of(&client.create_link(req.clone()).await.unwrap().into_inner());
    client
        .delete_link(shortfleet_proto::v1::DeleteLinkRequest {
            code: first.code.clone(),
            owner: "carol".into(),
        })
        .await
        .unwrap();

    // A replay would hand out a link that is gone: the key makes a new one.
    let again = client.create_link(req.clone()).await.unwrap().into_inner();
    assert!(again.created);
    let second = link_of(&again);
    assert_ne!(second.code, first.code);
    // ...and answers for that new link from now on.
    let replay = client.create_link(req).await.unwrap().into_inner();
    assert_eq!(link_of(&replay).code, second.code);
    app.cleanup().await;
}
