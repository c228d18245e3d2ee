//! CreateLink and GetLink over gRPC: generated codes, ownership, the
//! validation contract (INVALID_ARGUMENT naming the field), aliases, and
//! "same owner + same URL → the existing link", also under concurrency.

use std::collections::HashSet;

use crate::helpers::{TestApp, create_request, expect_code, expect_invalid, link_of};
use shortfleet_proto::v1::{
    CreateLinkRequest, DeleteLinkRequest, GetLinkRequest, ListLinksRequest,
};
use tonic::Code;

fn get(code: &str, owner: &str) -> GetLinkRequest {
    GetLinkRequest {
        code: code.into(),
        owner: owner.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_link_gets_a_generated_code_only_its_owner_can_read() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();

    let response = app.create("alice", "https://example.com/a?b=1").await;
    assert!(response.created, "{response:?}");
    let link = link_of(&response);
    assert_eq!(link.code.len(), 7, "{link:?}");
    assert!(
        link.code.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{link:?}"
    );
    assert_eq!(link.owner, "alice");
    assert_eq!(link.url, "https://example.com/a?b=1");
    assert_eq!(link.redirect_type, 302, "0 on the wire means the default");
    assert!(!link.disabled && !link.deleted);
    assert!(link.created_at.is_some() && link.expires_at.is_none());

    let by_owner = client.get_link(get(&link.code, "alice")).await.unwrap();
    assert_eq!(by_owner.into_inner(), link);
    let internal = client.get_link(get(&link.code, "")).await.unwrap();
    assert_eq!(internal.into_inner(), link);
    // Another owner must not learn that the code exists.
    expect_code(
        client.get_link(get(&link.code, "bob")).await,
        Code::NotFound,
    );
    expect_code(client.get_link(get("Zz9Zz9Z", "")).await, Code::NotFound);
    expect_code(
        client.get_link(get("not a code!", "")).await,
        Code::NotFound,
    );

    // Internationalised hosts are stored normalised.
    let idn = link_of(&app.create("alice", "https://bücher.example/").await);
    assert_eq!(idn.url, "https://xn--bcher-kva.example/");

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    // Each case spoils one field of an otherwise valid request.
    type Spoil = fn(&mut CreateLinkRequest);
    let cases: [(Spoil, &str); 12] = [
        (|r| r.url = "ftp://example.com/file".into(), "url"),
        (|r| r.url = "https://sho.rt/abc".into(), "url"),
        (|r| r.url = "https://SHO.RT./abc".into(), "url"),
        (|r| r.url = "/relative".into(), "url"),
        (|r| r.alias = Some("api".into()), "alias"),
        (|r| r.alias = Some("no spaces".into()), "alias"),
        (|r| r.owner.clear(), "owner"),
        (|r| r.redirect_type = 303, "redirect_type"),
        (|r| r.max_clicks = Some(0), "max_clicks"),
        (
            |r| {
                r.expires_at = Some(prost_types::Timestamp {
                    seconds: 1_000_000_000,
                    nanos: 0,
                })
            },
            "expires_at",
        ),
        (|r| r.tags = vec!["ok".into(), " ".into()], "tags"),
        (|r| r.idempotency_key = "bad\nkey".into(), "Idempotency-Key"),
    ];
    for (spoil, field) in cases {
        let mut req = create_request("alice", "https://example.com/");
        spoil(&mut req);
        expect_invalid(client.create_link(req).await, field);
    }

    // Nothing refused was stored.
    let listed = client
        .list_links(ListLinksRequest {
            owner: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.links.is_empty(), "{listed:?}");

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_is_one_link_fleet_wide_and_case_sensitive() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let alias = |owner: &str, url: &str, alias: &str| CreateLinkRequest {
        alias: Some(alias.into()),
        ..create_request(owner, url)
    };

    let first = client
        .create_link(alias("bob", "https://example.com/launch", "launch"))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    assert_eq!(link_of(&first).code, "launch");

    // Taken, whoever asks and whatever the URL.
    expect_code(
        client
            .create_link(alias("alice", "https://example.com/other", "launch"))
            .await,
        Code::AlreadyExists,
    );
    expect_code(
        client
            .create_link(alias("bob", "https://example.com/launch", "launch"))
            .await,
        Code::AlreadyExists,
    );
    // Aliases are case-sensitive: a different alias, a different link.
    let upper = client
        .create_link(alias("alice", "https://example.com/other", "Launch"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(link_of(&upper).code, "Launch");
    let original = client
        .get_link(get("launch", "bob"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(original.url, "https://example.com/launch");

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_owner_and_url_return_the_existing_link() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let url = "https://example.com/dedupe";

    let first = link_of(&app.create("alice", url).await);
    let again = app.create("alice", url).await;
    assert!(!again.created, "{again:?}");
    assert_eq!(link_of(&again), first);
    // The comparison is on the normalised URL: the host is case-insensitive.
    let shouting = app.create("alice", "https://EXAMPLE.com/dedupe").await;
    assert!(!shouting.created, "{shouting:?}");
    assert_eq!(link_of(&shouting).code, first.code);

    let other_owner = app.create("bob", url).await;
    assert!(other_owner.created);
    assert_ne!(link_of(&other_owner).code, first.code);

    // An alias is a link of its own, even for a URL the owner has shortened.
    let aliased = client
        .create_link(CreateLinkRequest {
            alias: Some("dedupe-alias".into()),
            ..create_request("alice", url)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(aliased.created);
    assert_eq!(link_of(&aliased).code, "dedupe-alias");
    assert_eq!(link_of(&app.create("alice", url).await).code, first.code);

    // A deleted link is not handed back: the URL gets a new code.
    client
        .delete_link(DeleteLinkRequest {
            code: first.code.clone(),
            owner: "alice".into(),
        })
        .await
        .unwrap();
    let after_delete = app.create("alice", url).await;
    assert!(after_delete.created);
    assert_ne!(link_of(&after_delete).code, first.code);

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_url_make_one_link() {
    let app = TestApp::spawn().await;
    let url = "https://example.com/stampede";

    let attempts = (0..16).map(|_| {
        let mut client = app.client.clone();
        tokio::spawn(async move { client.create_link(create_request("carol", url)).await })
    });
    let mut codes = HashSet::new();
    let mut created = 0;
    for attempt in futures::future::join_all(attempts).await {
        let response = attempt
            .expect("the request task did not panic")
            .expect("every concurrent create succeeds")
            .into_inner();
        codes.insert(link_of(&response).code);
        created += usize::from(response.created);
    }
    assert_eq!(codes.len(), 1, "one link for one URL: {codes:?}");
    assert_eq!(created, 1, "exactly one response reports the creation");

    // And exactly one `link.created` event was written.
    let outbox = crate::helpers::outbox_rows(&app.db().await).await;
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    assert_eq!(outbox[0].1, "link.created");

    app.cleanup().await;
}
