//! Shared set-up: a real write-svc (own database, own link-events exchange)
//! and any number of real read-svc replicas (own Redis key prefix), all
//! in-process on ephemeral ports, talking over real sockets to real
//! PostgreSQL, Redis and RabbitMQ.

#![allow(dead_code)]

use std::net::SocketAddr;

use shortfleet_proto::v1::{
    Link, ResolveRequest, ResolveResponse, link_resolver_client::LinkResolverClient,
    link_writer_client::LinkWriterClient,
};
use shortfleet_testkit::{
    TestDatabase, links,
    services::{self, Running},
};

pub struct Fixture {
    pub id: String,
    database: TestDatabase,
    pub exchange: String,
    pub writer_addr: SocketAddr,
    writer: Running,
    replicas: Vec<Running>,
}

pub struct Replica {
    pub addr: SocketAddr,
    pub ops: SocketAddr,
}

impl Fixture {
    pub async fn start() -> Self {
        let _ = shortfleet_common::telemetry::init_logs("read-svc-test", "warn");
        let id = shortfleet_testkit::unique_id();
        let database = TestDatabase::fresh();
        let exchange = format!("test.links.{id}");
        let writer =
            services::start::<write_svc::App>(&services::write_svc(database.url(), &exchange))
                .await;
        Self {
            id,
            database,
            exchange,
            writer_addr: writer.addr,
            writer,
            replicas: Vec::new(),
        }
    }

    /// A read-svc replica with `redis_url` (a closed port simulates Redis down).
    pub async fn replica(&mut self, redis_url: &str) -> Replica {
        let source = services::read_svc(
            &self.writer.url(),
            &format!("sf:test:{}:", self.id),
            &self.exchange,
        )
        .with("SHORTFLEET_REDIS_URL", redis_url);
        let running = services::start::<read_svc::App>(&source).await;
        let replica = Replica {
            addr: running.addr,
            ops: running.ops.expect("read-svc has an ops port"),
        };
        self.replicas.push(running);
        replica
    }

    pub async fn writer(&self) -> LinkWriterClient<tonic::transport::Channel> {
        LinkWriterClient::connect(self.writer.url()).await.unwrap()
    }

    pub async fn create(&self, url: &str) -> Link {
        links::link_of(&links::create(&mut self.writer().await, "alice", url).await)
    }

    /// A link of alice's counted against `max_clicks`.
    pub async fn create_limited(&self, url: &str, max_clicks: u64) -> Link {
        self.writer()
            .await
            .create_link(shortfleet_proto::v1::CreateLinkRequest {
                owner: "alice".into(),
                url: url.into(),
                max_clicks: Some(max_clicks),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .link
            .unwrap()
    }

    /// Waits until write-svc's outbox relay has published every event, so a
    /// replica started afterwards cannot receive an earlier link's event.
    pub async fn await_outbox_published(&self) {
        let db = self.database.client().await;
        shortfleet_testkit::eventually("the outbox relay to publish every event", || {
            let db = &db;
            async move {
                let pending: i64 = db
                    .query_one(
                        "SELECT count(*) FROM outbox WHERE published_at IS NULL",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                (pending == 0).then_some(())
            }
        })
        .await;
    }

    /// Stops write-svc (to prove later answers come from caches).
    pub fn stop_writer(&self) {
        self.writer.cancel();
    }

    pub async fn cleanup(self) {
        services::cancel_all(std::iter::once(&self.writer).chain(&self.replicas)).await;
        self.database.remove().await;
    }
}

impl Replica {
    pub async fn client(&self) -> LinkResolverClient<tonic::transport::Channel> {
        LinkResolverClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    pub async fn resolve(&self, code: &str) -> Result<ResolveResponse, tonic::Status> {
        self.client()
            .await
            .resolve(ResolveRequest {
                code: code.into(),
                unlocked: false,
                refresh: false,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// `/readyz` body of this replica.
    pub async fn readiness(&self) -> (u16, String) {
        let r = reqwest::get(format!("http://{}/readyz", self.ops))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Upstream (write-svc) calls this process made, from `/metrics`.
    pub async fn upstream_calls(&self) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.ops))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        shortfleet_testkit::metrics::sum(
            &text,
            "shortfleet_cache_requests_total",
            &["level=\"upstream\""],
        )
    }
}
