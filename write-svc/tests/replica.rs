//! write-svc with a streaming read replica (`SHORTFLEET_DATABASE_READ_URL`)
//! on a real primary/replica pair made by `deploy/local/pg-replica`: reads
//! go to the replica, an owner's read right after their write never misses
//! it, a replica past the lag bound or down sends reads to the primary, and
//! a replica that comes back is used again. Its own test binary: the
//! metrics registry is per process.

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use shortfleet_proto::v1::{
    GetLinkRequest, ListLinksRequest, UpdateLinkRequest, link_writer_client::LinkWriterClient,
};
use shortfleet_testkit::{eventually, links, pg_replica::PgReplica, services};
use tonic::transport::Channel;

const OWNER: &str = "alice";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_use_the_replica_without_missing_an_owners_own_writes() {
    let _ = shortfleet_common::telemetry::init_logs("write-svc-test", "warn");
    let pg = PgReplica::start().unwrap();
    let id = shortfleet_testkit::unique_id();
    let db = format!("sf_replica_{id}");
    let source = services::write_svc(&format!("{}/{db}", pg.primary), &format!("test.links.{id}"))
        .with(
            "SHORTFLEET_DATABASE_READ_URL",
            format!("{}/{db}", pg.replica),
        )
        .with("SHORTFLEET_READ_REPLICA_MAX_LAG_MS", "300");
    let running = services::start::<write_svc::App>(&source).await;
    let mut client = LinkWriterClient::connect(running.url()).await.unwrap();
    let metrics = format!("{}/metrics", running.ops_url());

    // The replica serves reads once it has the new database and caught up.
    let first = links::link_of(&links::create(&mut client, OWNER, "https://example.com/0").await);
    eventually("reads served by the replica", || async {
        get(&mut client.clone(), &first.code, Some(OWNER)).await;
        (reads(&metrics, "replica").await > 0.0).then_some(())
    })
    .await;

    // Read-your-writes: each create is seen at once by its owner's reads,
    // while those reads keep going to the replica.
    let before = reads(&metrics, "replica").await;
    for i in 1..=30 {
        let url = format!("https://example.com/{i}");
        let link = links::link_of(&links::create(&mut client, OWNER, &url).await);
        assert_eq!(
            get(&mut client, &link.code, Some(OWNER)).await.unwrap().url,
            url
        );
        assert_eq!(list(&mut client).await[0], link.code, "newest first");
        // A resolve miss of a link made a moment ago is never "not found".
        assert_eq!(get(&mut client, &link.code, None).await.unwrap().url, url);
    }
    let served = reads(&metrics, "replica").await - before;
    assert!(served > 0.0, "no read of the 90 went to the replica");
    eprintln!("replica: {served} of 90 reads right after writes came from the replica");

    // Replay paused: past the lag bound, reads go to the primary and see
    // an edit the replica has not replayed.
    let replica_db = connect(&format!("{}/{db}", pg.replica)).await;
    replica_db
        .execute("SELECT pg_wal_replay_pause()", &[])
        .await
        .unwrap();
    let edited = "https://example.com/edited";
    client
        .update_link(UpdateLinkRequest {
            code: first.code.clone(),
            owner: OWNER.into(),
            url: Some(edited.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    eventually("the replica to be past the lag bound", || async {
        (metric(&metrics, "shortfleet_db_replica_lag_seconds", &[]).await > 0.3).then_some(())
    })
    .await;
    assert_eq!(
        get(&mut client, &first.code, None).await.unwrap().url,
        edited
    );
    assert_eq!(
        get(&mut client, &first.code, Some(OWNER))
            .await
            .unwrap()
            .url,
        edited
    );
    replica_db
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .unwrap();

    // Replica down: every read still answers, from the primary.
    pg.stop_replica().unwrap();
    let primary_before = reads(&metrics, "primary").await;
    for _ in 0..10 {
        assert_eq!(
            get(&mut client, &first.code, None).await.unwrap().url,
            edited
        );
        assert!(!list(&mut client).await.is_empty());
    }
    assert!(reads(&metrics, "primary").await - primary_before >= 20.0);

    // Back: the replica serves reads again.
    pg.resume_replica().unwrap();
    let before = reads(&metrics, "replica").await;
    eventually("the replica to serve reads again", || async {
        get(&mut client.clone(), &first.code, None).await;
        (reads(&metrics, "replica").await > before).then_some(())
    })
    .await;

    running.stop().await.unwrap();
}

async fn get(
    client: &mut LinkWriterClient<Channel>,
    code: &str,
    owner: Option<&str>,
) -> Option<shortfleet_proto::v1::Link> {
    client
        .get_link(GetLinkRequest {
            code: code.into(),
            owner: owner.unwrap_or_default().into(),
        })
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

/// The codes of the owner's first page, newest first.
async fn list(client: &mut LinkWriterClient<Channel>) -> Vec<String> {
    client
        .list_links(ListLinksRequest {
            owner: OWNER.into(),
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .links
        .into_iter()
        .map(|l| l.code)
        .collect()
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn metric(url: &str, name: &str, labels: &[&str]) -> f64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    shortfleet_testkit::metrics::sum(&text, name, labels)
}

/// Link reads answered by `target` (replica or primary).
async fn reads(url: &str, target: &str) -> f64 {
    let label = format!("target=\"{target}\"");
    metric(url, "shortfleet_db_reads_total", &[&label]).await
}
