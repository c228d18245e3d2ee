//! The transactional outbox end to end: every change becomes a `LinkEvent`
//! on the test's exchange, rows are marked published once confirmed, and
//! events written while RabbitMQ is unreachable are delivered later.

use crate::helpers::{
    AMQP_URL, Names, TestApp, UNREACHABLE_AMQP_URL,
    events::{EventQueue, Received},
    eventually, link_of, outbox_rows,
};
use shortfleet_proto::v1::{DeleteLinkRequest, GetLinkRequest, LinkEventType, UpdateLinkRequest};

fn assert_event(received: &Received, kind: LinkEventType, routing_key: &str, code: &str) {
    assert_eq!(received.routing_key, routing_key, "{received:?}");
    assert_eq!(received.event.r#type(), kind, "{received:?}");
    let link = received
        .event
        .link
        .as_ref()
        .expect("an event carries its link");
    assert_eq!(link.code, code, "{received:?}");
    assert!(received.event.occurred_at.is_some(), "{received:?}");
    assert!(!received.event.event_id.is_empty(), "{received:?}");
    assert_eq!(
        received.message_id.as_deref(),
        Some(received.event.event_id.as_str()),
        "the AMQP message id is the event id, for consumers' dedupe"
    );
}

/// Waits until every outbox row is marked published, then checks there are
/// `expected_rows` of them (rows are committed before a write answers, so
/// they all exist by now); returns the rows.
async fn all_published(names: &Names, expected_rows: usize) -> Vec<(String, String, bool)> {
    let db = names.db().await;
    let rows = eventually("every outbox row marked published", || async {
        let rows = outbox_rows(&db).await;
        rows.iter().all(|r| r.2).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), expected_rows, "{rows:?}");
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_published_as_a_link_event() {
    let names = Names::fresh();
    // Bound before any write, so no event can be missed.
    let mut queue = EventQueue::bind(&names.exchange).await;
    let app = TestApp::spawn_with(names, AMQP_URL).await;
    let mut client = app.client.clone();

    let link = link_of(&app.create("alice", "https://example.com/evented").await);
    client
        .update_link(UpdateLinkRequest {
            code: link.code.clone(),
            owner: "alice".into(),
            disabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .delete_link(DeleteLinkRequest {
            code: link.code.clone(),
            owner: "alice".into(),
        })
        .await
        .unwrap();

    // The relay publishes in commit order over one channel.
    let created = queue.next().await;
    assert_event(&created, LinkEventType::Created, "link.created", &link.code);
    assert_eq!(created.event.link.as_ref(), Some(&link));
    let updated = queue.next().await;
    assert_event(&updated, LinkEventType::Updated, "link.updated", &link.code);
    assert!(updated.event.link.as_ref().is_some_and(|l| l.disabled));
    let deleted = queue.next().await;
    assert_event(&deleted, LinkEventType::Deleted, "link.deleted", &link.code);
    assert!(deleted.event.link.as_ref().is_some_and(|l| l.deleted));

    let rows = all_published(&app.names, 3).await;
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let delivered = [&created, &updated, &deleted].map(|r| r.event.event_id.as_str());
    assert_eq!(ids, delivered, "each row was delivered once, in order");

    // A dedupe hit changes nothing, so it must publish nothing.
    let other = app.create("alice", "https://example.com/second").await;
    let again = app.create("alice", "https://example.com/second").await;
    assert!(other.created && !again.created);
    let next = queue.next().await;
    assert_event(
        &next,
        LinkEventType::Created,
        "link.created",
        &link_of(&other).code,
    );
    all_published(&app.names, 4).await;

    app.cleanup().await;
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_while_rabbitmq_is_down_are_published_later() {
    let names = Names::fresh();
    let mut queue = EventQueue::bind(&names.exchange).await;

    // Writes do not depend on the broker, and the service stays in
    // rotation (degraded, not unready) without it.
    let cut_off = TestApp::spawn_with(names, UNREACHABLE_AMQP_URL).await;
    crate::helpers::wait_until_serving(cut_off.addr, "shortener.v1.LinkWriter").await;
    let link = link_of(&cut_off.create("alice", "https://example.com/patient").await);
    let pending = outbox_rows(&cut_off.db().await).await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    let (event_id, routing_key, published) = pending[0].clone();
    assert_eq!(routing_key, "link.created");
    assert!(!published, "nothing can have confirmed it");
    let names = cut_off.stop().await;

    // A replica that can reach RabbitMQ picks the row up.
    let recovered = TestApp::spawn_with(names, AMQP_URL).await;
    let received = queue.next().await;
    assert_event(
        &received,
        LinkEventType::Created,
        "link.created",
        &link.code,
    );
    assert_eq!(received.event.event_id, event_id);
    let rows = all_published(&recovered.names, 1).await;
    assert_eq!(rows[0].0, event_id);
    let stored = recovered
        .client
        .clone()
        .get_link(GetLinkRequest {
            code: link.code.clone(),
            owner: "alice".into(),
        })
        .await
        .unwrap();
    assert_eq!(stored.into_inner(), link);

    recovered.cleanup().await;
    queue.close().await;
}
