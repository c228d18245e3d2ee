//! UpdateLink, DeleteLink and ListLinks over gRPC: partial updates,
//! tombstones, ownership, and keyset pagination newest first.

use std::collections::HashSet;

use crate::helpers::{TestApp, create_request, expect_code, expect_invalid, link_of};
use shortfleet_proto::v1::{
    CreateLinkRequest, DeleteLinkRequest, GetLinkRequest, Link, ListLinksRequest, UpdateLinkRequest,
};
use tonic::Code;

fn update(code: &str, owner: &str) -> UpdateLinkRequest {
    UpdateLinkRequest {
        code: code.into(),
        owner: owner.into(),
        ..Default::default()
    }
}

fn delete(code: &str, owner: &str) -> DeleteLinkRequest {
    DeleteLinkRequest {
        code: code.into(),
        owner: owner.into(),
    }
}

fn get(code: &str, owner: &str) -> GetLinkRequest {
    GetLinkRequest {
        code: code.into(),
        owner: owner.into(),
    }
}

fn list(owner: &str, limit: u32, cursor: &str, tag: &str) -> ListLinksRequest {
    ListLinksRequest {
        owner: owner.into(),
        limit,
        cursor: cursor.into(),
        tag: tag.into(),
    }
}

fn at(t: &Option<prost_types::Timestamp>) -> chrono::DateTime<chrono::Utc> {
    t.as_ref()
        .and_then(shortfleet_common::time::from_proto)
        .expect("a valid timestamp")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_changes_exactly_the_fields_it_names() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let in_an_hour =
        shortfleet_common::time::to_proto(chrono::Utc::now() + chrono::Duration::hours(1));
    let original = link_of(
        &client
            .create_link(CreateLinkRequest {
                expires_at: Some(in_an_hour),
                max_clicks: Some(50),
                tags: vec!["a".into(), "b".into()],
                ..create_request("alice", "https://example.com/before")
            })
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(original.expires_at.is_some());

    let updated = client
        .update_link(UpdateLinkRequest {
            url: Some("https://example.com/after".into()),
            redirect_type: Some(308),
            disabled: Some(true),
            tags: vec!["c".into()],
            set_tags: true,
            clear_expires_at: true,
            ..update(&original.code, "alice")
        })
        .await
        .unwrap()
        .into_inner();
    let expected = Link {
        url: "https://example.com/after".into(),
        redirect_type: 308,
        disabled: true,
        tags: vec!["c".into()],
        expires_at: None,
        updated_at: updated.updated_at,
        ..original.clone()
    };
    assert_eq!(updated, expected, "max_clicks, owner, created_at untouched");
    assert!(at(&updated.updated_at) > at(&original.updated_at));
    let stored = client.get_link(get(&original.code, "alice")).await.unwrap();
    assert_eq!(stored.into_inner(), updated);

    // Fields a request leaves unset stay as they are.
    let untouched = client
        .update_link(update(&original.code, "alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(untouched.tags, vec!["c"]);
    assert_eq!(untouched.max_clicks, Some(50));
    let cleared = client
        .update_link(UpdateLinkRequest {
            clear_max_clicks: true,
            disabled: Some(false),
            ..update(&original.code, "alice")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((cleared.max_clicks, cleared.disabled), (None, false));

    // Refusals.
    let bad_type = UpdateLinkRequest {
        redirect_type: Some(303),
        ..update(&original.code, "alice")
    };
    expect_invalid(client.update_link(bad_type).await, "redirect_type");
    let looping = UpdateLinkRequest {
        url: Some("https://sho.rt/loop".into()),
        ..update(&original.code, "alice")
    };
    expect_invalid(client.update_link(looping).await, "url");
    expect_invalid(
        client.update_link(update(&original.code, "")).await,
        "owner",
    );
    let foreign = UpdateLinkRequest {
        disabled: Some(true),
        ..update(&original.code, "bob")
    };
    expect_code(client.update_link(foreign).await, Code::NotFound);
    // Pointing at a URL another of the owner's links already has would
    // break "same owner + same URL → one link".
    let other = link_of(&app.create("alice", "https://example.com/other").await);
    let collide = UpdateLinkRequest {
        url: Some("https://example.com/other".into()),
        ..update(&original.code, "alice")
    };
    expect_code(client.update_link(collide).await, Code::AlreadyExists);
    let unchanged = client.get_link(get(&other.code, "alice")).await.unwrap();
    assert_eq!(unchanged.into_inner().url, "https://example.com/other");

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_link_stays_as_a_tombstone() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let link = link_of(&app.create("alice", "https://example.com/doomed").await);

    expect_code(
        client.delete_link(delete(&link.code, "bob")).await,
        Code::NotFound,
    );
    assert!(
        !client
            .get_link(get(&link.code, ""))
            .await
            .unwrap()
            .into_inner()
            .deleted
    );

    client
        .delete_link(delete(&link.code, "alice"))
        .await
        .unwrap();
    let tombstone = client
        .get_link(get(&link.code, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(tombstone.deleted, "{tombstone:?}");
    assert_eq!(tombstone.url, link.url);
    expect_code(
        client.get_link(get(&link.code, "alice")).await,
        Code::NotFound,
    );
    expect_code(
        client.delete_link(delete(&link.code, "alice")).await,
        Code::NotFound,
    );
    let revive = UpdateLinkRequest {
        disabled: Some(false),
        ..update(&link.code, "alice")
    };
    expect_code(client.update_link(revive).await, Code::NotFound);
    let listed = client.list_links(list("alice", 0, "", "")).await.unwrap();
    assert!(listed.into_inner().links.is_empty());

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_listed_newest_first_in_pages() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let mut created = Vec::new();
    for i in 0..25 {
        let tags = if i % 2 == 0 {
            vec!["even".into()]
        } else {
            vec![]
        };
        let response = client
            .create_link(CreateLinkRequest {
                tags,
                ..create_request("alice", &format!("https://example.com/page/{i}"))
            })
            .await
            .unwrap()
            .into_inner();
        created.push(link_of(&response).code);
    }
    app.create("bob", "https://example.com/page/bob").await;
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .list_links(list("alice", 10, &cursor, ""))
            .await
            .unwrap()
            .into_inner();
        sizes.push(page.links.len());
        assert!(page.links.iter().all(|l| l.owner == "alice"));
        seen.extend(page.links.into_iter().map(|l| l.code));
        if page.next_cursor.is_empty() {
            break;
        }
        assert!(sizes.len() < 5, "pagination does not end: {sizes:?}");
        cursor = page.next_cursor;
    }
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        seen.len(),
        "no duplicates"
    );
    assert_eq!(seen, newest_first);

    // The default page size is 20.
    let first = client
        .list_links(list("alice", 0, "", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.links.len(), 20);
    assert!(!first.next_cursor.is_empty());

    let even = client
        .list_links(list("alice", 100, "", "even"))
        .await
        .unwrap()
        .into_inner();
    let even_codes: Vec<String> = even.links.iter().map(|l| l.code.clone()).collect();
    let expected: Vec<String> = newest_first.iter().step_by(2).cloned().collect();
    assert_eq!(even_codes.len(), 13);
    assert_eq!(
        even_codes, expected,
        "24, 22, …, 0: the even ones, newest first"
    );
    assert!(even.next_cursor.is_empty());
    let none = client
        .list_links(list("alice", 0, "", "nope"))
        .await
        .unwrap();
    assert!(none.into_inner().links.is_empty());

    expect_invalid(
        client
            .list_links(list("alice", 10, "not-a-cursor", ""))
            .await,
        "cursor",
    );
    expect_invalid(
        client.list_links(list("alice", 10, "deadbeef", "")).await,
        "cursor",
    );
    expect_invalid(client.list_links(list("alice", 101, "", "")).await, "limit");
    expect_invalid(client.list_links(list("", 10, "", "")).await, "owner");
    let max = client.list_links(list("alice", 100, "", "")).await.unwrap();
    assert_eq!(max.into_inner().links.len(), 25);

    app.cleanup().await;
}

/// Issue 11: NUL bytes, control characters, over-long values and forged
/// cursors in any string field are INVALID_ARGUMENT naming the field (never
/// INTERNAL from PostgreSQL), and the service keeps serving afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_strings_are_refused_naming_the_field_and_the_service_keeps_serving() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let first = link_of(&app.create("alice", "https://example.com/one").await);
    app.create("alice", "https://example.com/two").await;
    let page = client
        .list_links(list("alice", 1, "", ""))
        .await
        .unwrap()
        .into_inner();
    let cursor = page.next_cursor;
    assert!(!cursor.is_empty());

    // ListLinks: tag, forged / tampered / foreign / truncated cursors, owner.
    expect_invalid(
        client.list_links(list("alice", 10, "", "a\0b")).await,
        "tag",
    );
    let long_tag = "t".repeat(65);
    expect_invalid(
        client.list_links(list("alice", 10, "", &long_tag)).await,
        "tag",
    );
    let forged = hex::encode(b"1700000000000000.a\0b");
    expect_invalid(
        client.list_links(list("alice", 10, &forged, "")).await,
        "cursor",
    );
    let mut tampered = cursor.clone().into_bytes();
    tampered[4] = if tampered[4] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).unwrap();
    expect_invalid(
        client.list_links(list("alice", 10, &tampered, "")).await,
        "cursor",
    );
    expect_invalid(
        client.list_links(list("bob", 10, &cursor, "")).await,
        "cursor",
    );
    let truncated = &cursor[..cursor.len() - 2];
    expect_invalid(
        client.list_links(list("alice", 10, truncated, "")).await,
        "cursor",
    );
    expect_invalid(
        client.list_links(list("alice", 10, "\0", "")).await,
        "cursor",
    );
    expect_invalid(client.list_links(list("al\0ce", 10, "", "")).await, "owner");
    expect_invalid(
        client.list_links(list(&"o".repeat(129), 10, "", "")).await,
        "owner",
    );

    // Owners and codes in every method.
    let nul_owner = create_request("al\0ce", "https://example.com/x");
    expect_invalid(client.create_link(nul_owner).await, "owner");
    expect_invalid(client.get_link(get(&first.code, "al\0ce")).await, "owner");
    expect_invalid(
        client.update_link(update(&first.code, "al\0ce")).await,
        "owner",
    );
    expect_invalid(
        client.delete_link(delete(&first.code, "al\0ce")).await,
        "owner",
    );
    expect_invalid(client.get_link(get("ab\0cd", "")).await, "code");
    expect_invalid(client.update_link(update("ab\0cd", "alice")).await, "code");
    expect_invalid(client.delete_link(delete("ab\0cd", "alice")).await, "code");
    let huge = "c".repeat(3 << 20);
    let status = expect_code(client.get_link(get(&huge, "")).await, Code::InvalidArgument);
    assert!(status.message().len() < 100, "the value is not echoed");
    // Printable but not code-shaped: no link has it.
    expect_code(client.get_link(get("a/b", "")).await, Code::NotFound);
    expect_code(
        client.delete_link(delete("a b", "alice")).await,
        Code::NotFound,
    );

    // Every other string of CreateLink and UpdateLink.
    let with = |f: fn(&mut CreateLinkRequest)| {
        let mut r = create_request("alice", "https://example.com/new");
        f(&mut r);
        r
    };
    for (field, request) in [
        ("url", with(|r| r.url = "https://exa\tmple.com/".into())),
        ("url", with(|r| r.url = "https://example.com/\0".into())),
        ("alias", with(|r| r.alias = Some("my\0alias".into()))),
        ("tags", with(|r| r.tags = vec!["ok".into(), "b\0d".into()])),
        (
            "Idempotency-Key",
            with(|r| r.idempotency_key = "k\0".into()),
        ),
    ] {
        expect_invalid(client.create_link(request).await, field);
    }
    let mut bad_url = update(&first.code, "alice");
    bad_url.url = Some("https://example.com/\u{85}".into());
    expect_invalid(client.update_link(bad_url).await, "url");
    let mut bad_tags = update(&first.code, "alice");
    bad_tags.set_tags = true;
    bad_tags.tags = vec!["\u{7f}".into()];
    expect_invalid(client.update_link(bad_tags).await, "tags");

    // Empty requests: a precise answer each.
    expect_invalid(
        client.create_link(CreateLinkRequest::default()).await,
        "owner",
    );
    expect_invalid(client.get_link(GetLinkRequest::default()).await, "code");
    expect_invalid(
        client.update_link(UpdateLinkRequest::default()).await,
        "code",
    );
    expect_invalid(
        client.delete_link(DeleteLinkRequest::default()).await,
        "code",
    );
    expect_invalid(
        client.list_links(ListLinksRequest::default()).await,
        "owner",
    );

    // Still serving: the genuine cursor, reads and writes.
    let next = client
        .list_links(list("alice", 1, &cursor, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.links.len(), 1);
    assert_eq!(next.links[0].code, first.code);
    let got = client.get_link(get(&first.code, "alice")).await.unwrap();
    assert_eq!(got.into_inner().url, "https://example.com/one");
    app.create("alice", "https://example.com/three").await;

    app.cleanup().await;
}

/// Caches keep an answer as new as a link event's `updated_at`, so every
/// change must carry a later one than the version it replaces, even when
/// the version it replaces carries a later time than this transaction's
/// `now()` (a racing change that began later but committed first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_carries_a_later_updated_at_than_the_version_it_replaces() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let code = link_of(&app.create("alice", "https://example.com/versions").await).code;
    let db = app.db().await;
    let ahead = "UPDATE links SET updated_at = now() + interval '1 hour' WHERE code = $1";
    db.execute(ahead, &[&code]).await.unwrap();
    let racing = stored_updated_at(&db, &code).await;
    let updated = client
        .update_link(UpdateLinkRequest {
            url: Some("https://example.com/versions/2".into()),
            ..update(&code, "alice")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        at(&updated.updated_at) > racing,
        "an update went back in time"
    );
    db.execute(ahead, &[&code]).await.unwrap();
    let racing = stored_updated_at(&db, &code).await;
    client.delete_link(delete(&code, "alice")).await.unwrap();
    assert!(
        stored_updated_at(&db, &code).await > racing,
        "a delete went back in time"
    );
    app.cleanup().await;
}

async fn stored_updated_at(
    db: &tokio_postgres::Client,
    code: &str,
) -> chrono::DateTime<chrono::Utc> {
    db.query_one("SELECT updated_at FROM links WHERE code = $1", &[&code])
        .await
        .unwrap()
        .get(0)
}
