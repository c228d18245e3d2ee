//! Shared set-up: a real write-svc (own database, own link-events exchange)
//! and any number of real read-svc replicas (own Redis key prefix), all
//! in-process on ephemeral ports, talking over real sockets to real
//! PostgreSQL, Redis and RabbitMQ.

#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use shortfleet_common::{config::ConfigSource, service::Service};
use shortfleet_proto::v1::{
    CreateLinkRequest, Link, ResolveRequest, ResolveResponse,
    link_resolver_client::LinkResolverClient, link_writer_client::LinkWriterClient,
};
use tokio_util::sync::CancellationToken;

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
pub const DEADLINE: Duration = Duration::from_secs(10);

pub struct Fixture {
    pub id: String,
    database: String,
    pub exchange: String,
    pub writer_addr: SocketAddr,
    writer_stop: CancellationToken,
    stops: Vec<CancellationToken>,
}

pub struct Replica {
    pub addr: SocketAddr,
    pub ops: SocketAddr,
    pub stop: CancellationToken,
}

impl Fixture {
    pub async fn start() -> Self {
        let _ = shortfleet_common::telemetry::init_logs("read-svc-test", "warn");
        let id = uuid::Uuid::new_v4().simple().to_string();
        let database = format!("sf_test_{id}");
        let exchange = format!("test.links.{id}");
        let config = write_svc::Config::from_source(&ConfigSource::from_pairs([
            ("SHORTFLEET_GRPC_ADDR", "127.0.0.1:0".to_owned()),
            ("SHORTFLEET_OPS_ADDR", "127.0.0.1:0".to_owned()),
            ("SHORTFLEET_DATABASE_URL", format!("{POSTGRES}/{database}")),
            ("SHORTFLEET_LINK_EVENTS_EXCHANGE", exchange.clone()),
        ]))
        .unwrap();
        let writer = write_svc::App::build(config)
            .await
            .expect("write-svc starts");
        let writer_addr = writer.grpc_addr();
        let writer_stop = CancellationToken::new();
        tokio::spawn(writer.run_until(writer_stop.clone()));
        Self {
            id,
            database,
            exchange,
            writer_addr,
            writer_stop,
            stops: Vec::new(),
        }
    }

    /// A read-svc replica with `redis_url` (a closed port simulates Redis down).
    pub async fn replica(&mut self, redis_url: &str) -> Replica {
        let config = read_svc::Config::from_source(&ConfigSource::from_pairs([
            ("SHORTFLEET_GRPC_ADDR", "127.0.0.1:0".to_owned()),
            ("SHORTFLEET_OPS_ADDR", "127.0.0.1:0".to_owned()),
            ("SHORTFLEET_REDIS_URL", redis_url.to_owned()),
            ("SHORTFLEET_REDIS_PREFIX", format!("sf:test:{}:", self.id)),
            (
                "SHORTFLEET_WRITE_SVC_URL",
                format!("http://{}", self.writer_addr),
            ),
            ("SHORTFLEET_LINK_EVENTS_EXCHANGE", self.exchange.clone()),
        ]))
        .unwrap();
        let app = read_svc::App::build(config).await.expect("read-svc starts");
        let replica = Replica {
            addr: app.grpc_addr(),
            ops: app.ops_addr(),
            stop: CancellationToken::new(),
        };
        tokio::spawn(app.run_until(replica.stop.clone()));
        self.stops.push(replica.stop.clone());
        replica
    }

    pub async fn writer(&self) -> LinkWriterClient<tonic::transport::Channel> {
        LinkWriterClient::connect(format!("http://{}", self.writer_addr))
            .await
            .unwrap()
    }

    pub async fn create(&self, url: &str) -> Link {
        self.writer()
            .await
            .create_link(CreateLinkRequest {
                owner: "alice".into(),
                url: url.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .link
            .unwrap()
    }

    /// Stops write-svc (to prove later answers come from caches).
    pub fn stop_writer(&self) {
        self.writer_stop.cancel();
    }

    pub async fn cleanup(self) {
        self.writer_stop.cancel();
        for stop in &self.stops {
            stop.cancel();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok((client, conn)) =
            tokio_postgres::connect(&format!("{POSTGRES}/postgres"), tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            let _ = client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.database
                ))
                .await;
        }
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
            .resolve(ResolveRequest { code: code.into() })
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
        text.lines()
            .filter(|l| {
                l.starts_with("shortfleet_cache_requests_total") && l.contains("level=\"upstream\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}

/// Polls `check` until it returns true or `DEADLINE` passes.
pub async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
