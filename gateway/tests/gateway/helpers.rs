//! The one fixture of the gateway's tests: a real write-svc (and, for the
//! redirect path, a real read-svc) in-process on ephemeral ports, each test
//! with its own databases, Redis key prefix and link-events exchange, and
//! any number of gateway replicas in front.

use reqwest::redirect::Policy;
use shortfleet_common::config::ConfigSource;
use shortfleet_testkit::{
    TestDatabase,
    services::{self, Running},
};

/// Nothing listens on port 1: an upstream there is down.
const DOWN: &str = "http://127.0.0.1:1";

pub struct Fixture {
    id: String,
    exchange: String,
    links_db: TestDatabase,
    gateway_db: TestDatabase,
    pub write_svc: Running,
    read_svc: Option<Running>,
    gateways: Vec<Running>,
}

impl Fixture {
    /// write-svc only; read-svc, click-logger and analytics are down.
    pub async fn start() -> Self {
        let id = shortfleet_testkit::unique_id();
        let exchange = format!("test.links.{id}");
        let links_db = TestDatabase::named(format!("sf_test_{id}_links"));
        let write_svc =
            services::start::<write_svc::App>(&services::write_svc(links_db.url(), &exchange))
                .await;
        Self {
            gateway_db: TestDatabase::named(format!("sf_test_{id}_gateway")),
            id,
            exchange,
            links_db,
            write_svc,
            read_svc: None,
            gateways: Vec::new(),
        }
    }

    /// write-svc and a read-svc following its link events: the redirect path.
    pub async fn with_read_svc() -> Self {
        let mut f = Self::start().await;
        let source = services::read_svc(
            &f.write_svc.url(),
            &format!("sf:test:{}:", f.id),
            &f.exchange,
        );
        f.read_svc = Some(services::start::<read_svc::App>(&source).await);
        f
    }

    pub fn read_svc(&self) -> &Running {
        self.read_svc.as_ref().expect("started with_read_svc")
    }

    /// A gateway replica's settings: premium keys get 10 requests a minute,
    /// bodies 1 KiB.
    pub fn gateway_source(&self, redis_url: &str) -> ConfigSource {
        let read_url = self.read_svc.as_ref().map_or(DOWN.to_owned(), Running::url);
        ConfigSource::from_pairs([
            ("SHORTFLEET_HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("SHORTFLEET_DATABASE_URL", self.gateway_db.url().to_owned()),
            ("SHORTFLEET_REDIS_URL", redis_url.to_owned()),
            ("SHORTFLEET_REDIS_PREFIX", format!("sf:test:{}:", self.id)),
            ("SHORTFLEET_WRITE_SVC_URL", self.write_svc.url()),
            ("SHORTFLEET_READ_SVC_URL", read_url),
            ("SHORTFLEET_LINK_EVENTS_EXCHANGE", self.exchange.clone()),
            ("SHORTFLEET_TIER_PREMIUM", "10/60".to_owned()),
            ("SHORTFLEET_MAX_BODY_BYTES", "1024".to_owned()),
            ("SHORTFLEET_CLICK_LOGGER_URL", DOWN.to_owned()),
            ("SHORTFLEET_ANALYTICS_URL", DOWN.to_owned()),
        ])
    }

    pub fn gateway_config(&self, redis_url: &str) -> gateway::Config {
        gateway::Config::from_source(&self.gateway_source(redis_url)).unwrap()
    }

    /// Starts a gateway replica; returns its base URL.
    pub async fn gateway(&mut self, redis_url: &str) -> String {
        self.gateway_with(self.gateway_config(redis_url)).await.0
    }

    /// Starts a gateway replica with `config`; returns its base URL and, if
    /// it has one, its ops port's.
    pub async fn gateway_with(&mut self, config: gateway::Config) -> (String, Option<String>) {
        let gateway = services::start_with::<gateway::App>(config).await;
        let urls = (gateway.url(), gateway.ops.map(|a| format!("http://{a}")));
        self.gateways.push(gateway);
        urls
    }

    pub async fn key_store(&self) -> gateway::keys::KeyStore {
        gateway::keys::KeyStore::open(self.gateway_db.url())
            .await
            .unwrap()
    }

    /// Mints an API key for `owner` on `tier`; returns its secret.
    pub async fn key(&self, owner: &str, tier: &str) -> String {
        self.key_store()
            .await
            .create(owner, tier, None)
            .await
            .unwrap()
            .secret
    }

    /// Starts write-svc again on the address of the one stopped before.
    pub async fn restart_write_svc(&mut self) {
        let source = services::write_svc(self.links_db.url(), &self.exchange)
            .with("SHORTFLEET_GRPC_ADDR", self.write_svc.addr.to_string());
        self.write_svc = services::start::<write_svc::App>(&source).await;
    }

    pub async fn cleanup(self) {
        let running = [&self.write_svc]
            .into_iter()
            .chain(&self.read_svc)
            .chain(&self.gateways);
        services::cancel_all(running).await;
        self.links_db.remove().await;
        self.gateway_db.remove().await;
    }
}

/// The body of a GET, as text.
pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

pub async fn list(http: &reqwest::Client, base: &str, key: &str) -> reqwest::Response {
    http.get(format!("{base}/api/v1/links"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// Creates a link to `url` through the gateway at `base`; its code.
pub async fn create_link(http: &reqwest::Client, base: &str, key: &str, url: &str) -> String {
    let link: serde_json::Value = http
        .post(format!("{base}/api/v1/links"))
        .bearer_auth(key)
        .json(&serde_json::json!({ "url": url }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    link["code"].as_str().unwrap().to_owned()
}

/// A client that reports redirects instead of following them.
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}
