//! A harness that runs the whole fleet as real processes: the five release
//! or debug binaries from this workspace's target directory, each on free
//! loopback ports, with its own databases, Redis key prefix and RabbitMQ
//! names so runs never see each other's data.
//!
//! Used by the end-to-end tests and the benchmark. It waits on each
//! service's `/readyz` (a readiness signal, never a fixed sleep) and, when
//! dropped, kills what it started and drops its databases.

// The whole crate is test harness: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

pub mod api;
pub mod dns;
pub mod load;
pub mod proxy;
pub mod redis_cluster;

pub use shortfleet_testkit::{metrics::sum as sum_metric, ports::free_port};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

pub const SERVICES: [&str; 5] = [
    "write-svc",
    "read-svc",
    "click-logger",
    "analytics-svc",
    "gateway",
];

/// Where infrastructure lives; the defaults match `deploy/local/infra`.
#[derive(Debug, Clone)]
pub struct Infra {
    pub postgres: String,
    pub redis: String,
    pub amqp: String,
}

impl Default for Infra {
    fn default() -> Self {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        Self {
            postgres: var(
                "SHORTFLEET_TEST_POSTGRES",
                "postgres://postgres@127.0.0.1:5432",
            ),
            redis: var("SHORTFLEET_TEST_REDIS", "redis://127.0.0.1:6379"),
            amqp: var(
                "SHORTFLEET_TEST_AMQP",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
            ),
        }
    }
}

/// One running fleet.
pub struct Fleet {
    pub id: String,
    pub gateway_url: String,
    /// `/metrics` etc. of each service by name.
    pub ops_urls: HashMap<&'static str, String>,
    /// The gateway's ops port (`/metrics` is served there only).
    pub gateway_ops_url: String,
    /// `host:port` of each gRPC server by service name (not the gateway).
    pub grpc_addrs: HashMap<&'static str, String>,
    /// Environment of each service, for admin commands and restarts.
    envs: HashMap<&'static str, Vec<(String, String)>>,
    children: HashMap<&'static str, Child>,
    bin_dir: PathBuf,
    pub log_dir: PathBuf,
    infra: Infra,
    databases: Vec<String>,
    /// The fleet's DNS server, when it runs replicas.
    pub dns: Option<dns::TestDns>,
    /// Each service's extra replicas (`svc@i`), in start order.
    pub replicas: HashMap<&'static str, Vec<&'static str>>,
    /// The fleet's own Redis Cluster, when asked for.
    pub redis_cluster: Option<redis_cluster::RedisCluster>,
    /// write-svc's own primary and replica, when asked for.
    pub pg_replica: Option<shortfleet_testkit::pg_replica::PgReplica>,
}

/// The directory holding this workspace's binaries: next to the running
/// test executable (`target/<profile>/deps/..`), or `SHORTFLEET_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SHORTFLEET_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e sits in the workspace")
        .to_path_buf()
}

/// The python of the project's tool environment, where the outside clients
/// live (grpcio, schemathesis, selenium): `deploy/local/tools` installs it
/// when needed (idempotent) and prints the path last.
pub fn tools_python() -> PathBuf {
    run_tools()
}

/// Debian's promtool, which `deploy/local/tools` unpacks beside the venv.
pub fn tools_promtool() -> PathBuf {
    run_tools();
    workspace_root().join(".local/tools/bin/promtool")
}

/// Runs `deploy/local/tools` (a no-op when up to date): the python path.
fn run_tools() -> PathBuf {
    let stdout = shortfleet_testkit::scripts::run("tools", &[]).expect("deploy/local/tools");
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("tools printed the python path"),
    )
}

/// Options that change how the fleet is configured.
#[derive(Debug, Clone, Default)]
pub struct FleetOptions {
    /// Extra `SHORTFLEET_*` pairs for the gateway (tiers, limits…).
    pub gateway_env: Vec<(String, String)>,
    /// Extra pairs for every service (applied before `gateway_env`).
    pub all_env: Vec<(String, String)>,
    /// Mutual TLS between the services, from material `deploy/tls/mint`
    /// wrote to this directory (`<dir>/<service>/tls.{crt,key}`, `ca.crt`).
    pub tls_dir: Option<PathBuf>,
    /// Where the service binaries are; [`bin_dir`] when `None`.
    pub bin_dir: Option<PathBuf>,
    /// Replicas of backend services, e.g. `("read-svc", 3)`: replica `i`
    /// (named `read-svc@i` from 2 on) listens on `127.0.0.i` with the first
    /// one's ports. With any replicas, every backend is found by name
    /// ([`backend_host`]) through a DNS server the fleet runs, re-resolved
    /// every 200 ms, as pods find a Kubernetes headless Service.
    pub replicas: Vec<(&'static str, usize)>,
    /// Runs the fleet on a Redis Cluster of its own (three masters with a
    /// replica each, [`redis_cluster::RedisCluster`]) instead of the shared
    /// single Redis.
    pub redis_cluster: bool,
    /// Keeps write-svc's links on a PostgreSQL primary of the fleet's own
    /// with a streaming replica its reads use
    /// (`SHORTFLEET_DATABASE_READ_URL`), made by `deploy/local/pg-replica`.
    pub pg_replica: bool,
}

/// The DNS name of a backend's replicas when the fleet runs its own DNS.
pub fn backend_host(svc: &str) -> String {
    format!("{svc}.fleet.test")
}

/// The loopback address replica `i` (1-based) of a service listens on.
pub fn replica_ip(i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, u8::try_from(i).expect("at most 255 replicas"))
}

/// The release binaries `deploy/local/test` builds (and exports as
/// `SHORTFLEET_RELEASE_BIN_DIR`) for tests that need the fleet at full
/// speed; `None` when run outside it (then such tests use the debug build).
pub fn release_bin_dir() -> Option<PathBuf> {
    std::env::var_os("SHORTFLEET_RELEASE_BIN_DIR").map(PathBuf::from)
}

impl Fleet {
    pub async fn start(options: FleetOptions) -> anyhow::Result<Self> {
        let infra = Infra::default();
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let bin_dir = options.bin_dir.clone().unwrap_or_else(bin_dir);
        for svc in SERVICES {
            if !bin_dir.join(svc).exists() {
                bail!(
                    "{} is missing: build the binaries first (`cargo build --workspace --bins`, which deploy/local/test does)",
                    bin_dir.join(svc).display()
                );
            }
        }
        let log_dir = bin_dir.join("e2e-logs").join(&id);
        std::fs::create_dir_all(&log_dir)?;
        let port = |_: &str| free_port();
        let grpc: HashMap<&str, u16> = SERVICES.iter().map(|s| (*s, port(s))).collect();
        let ops: HashMap<&str, u16> = SERVICES.iter().map(|s| (*s, port(s))).collect();
        let db = |name: &str| format!("sf_e2e_{id}_{name}");
        let databases = vec![db("links"), db("analytics"), db("gateway")];
        let public = format!("127.0.0.1:{}", grpc["gateway"]);
        let scheme = if options.tls_dir.is_some() {
            "https"
        } else {
            "http"
        };
        let redis_cluster = if options.redis_cluster {
            Some(redis_cluster::RedisCluster::start(&id)?)
        } else {
            None
        };
        let redis_url = redis_cluster
            .as_ref()
            .map_or_else(|| infra.redis.clone(), |c| c.url.clone());
        let dns = if options.replicas.is_empty() {
            None
        } else {
            Some(dns::TestDns::start().await?)
        };
        let grpc_url = |s: &str| match &dns {
            Some(_) => format!("{scheme}://{}:{}", backend_host(s), grpc[s]),
            None => format!("{scheme}://127.0.0.1:{}", grpc[s]),
        };
        let tls_env = |svc: &str| -> Vec<(String, String)> {
            let Some(dir) = &options.tls_dir else {
                return Vec::new();
            };
            let file = |name: &str| dir.join(svc).join(name).display().to_string();
            vec![
                ("SHORTFLEET_TLS_CERT".into(), file("tls.crt")),
                ("SHORTFLEET_TLS_KEY".into(), file("tls.key")),
                ("SHORTFLEET_TLS_CA".into(), file("ca.crt")),
            ]
        };
        let common = |svc: &str| -> Vec<(String, String)> {
            let mut env = tls_env(svc);
            env.extend([
                (
                    "SHORTFLEET_GRPC_ADDR".into(),
                    format!("127.0.0.1:{}", grpc[svc]),
                ),
                (
                    "SHORTFLEET_OPS_ADDR".into(),
                    format!("127.0.0.1:{}", ops[svc]),
                ),
                ("SHORTFLEET_AMQP_URL".into(), infra.amqp.clone()),
                ("SHORTFLEET_REDIS_URL".into(), redis_url.clone()),
                ("SHORTFLEET_REDIS_PREFIX".into(), format!("sf:e2e:{id}:")),
                (
                    "SHORTFLEET_LINK_EVENTS_EXCHANGE".into(),
                    format!("e2e.{id}.links.events"),
                ),
                (
                    "SHORTFLEET_CLICKS_EXCHANGE".into(),
                    format!("e2e.{id}.clicks"),
                ),
                (
                    "SHORTFLEET_CLICKS_QUEUE".into(),
                    format!("e2e.{id}.clicks.analytics"),
                ),
                (
                    "SHORTFLEET_CLICK_COUNTS_EXCHANGE".into(),
                    format!("e2e.{id}.clicks.counted"),
                ),
                ("SHORTFLEET_WRITE_SVC_URL".into(), grpc_url("write-svc")),
                ("SHORTFLEET_PUBLIC_HOSTS".into(), public.clone()),
                ("SHORTFLEET_SHUTDOWN_GRACE_MS".into(), "5000".into()),
                ("SHORTFLEET_LOG".into(), "info".into()),
            ]);
            if let Some(dns) = &dns {
                env.extend([
                    ("SHORTFLEET_DNS_SERVER".into(), dns.addr.to_string()),
                    ("SHORTFLEET_DNS_REFRESH_MS".into(), "200".into()),
                ]);
            }
            env
        };
        let mut envs: HashMap<&'static str, Vec<(String, String)>> = HashMap::new();
        let pg_replica = if options.pg_replica {
            Some(shortfleet_testkit::pg_replica::PgReplica::start()?)
        } else {
            None
        };
        let mut write = common("write-svc");
        match &pg_replica {
            Some(pg) => write.extend([
                (
                    "SHORTFLEET_DATABASE_URL".into(),
                    format!("{}/{}", pg.primary, db("links")),
                ),
                (
                    "SHORTFLEET_DATABASE_READ_URL".into(),
                    format!("{}/{}", pg.replica, db("links")),
                ),
            ]),
            None => write.push((
                "SHORTFLEET_DATABASE_URL".into(),
                format!("{}/{}", infra.postgres, db("links")),
            )),
        }
        envs.insert("write-svc", write);
        envs.insert("read-svc", common("read-svc"));
        let mut clicks = common("click-logger");
        clicks.push((
            "SHORTFLEET_SPOOL_DIR".into(),
            log_dir.join("spool").display().to_string(),
        ));
        envs.insert("click-logger", clicks);
        let mut analytics = common("analytics-svc");
        analytics.push((
            "SHORTFLEET_DATABASE_URL".into(),
            format!("{}/{}", infra.postgres, db("analytics")),
        ));
        envs.insert("analytics-svc", analytics);
        let mut gateway = common("gateway");
        gateway.extend([
            ("SHORTFLEET_HTTP_ADDR".into(), public.clone()),
            ("SHORTFLEET_PUBLIC_URL".into(), format!("http://{public}")),
            (
                "SHORTFLEET_DATABASE_URL".into(),
                format!("{}/{}", infra.postgres, db("gateway")),
            ),
            ("SHORTFLEET_READ_SVC_URL".into(), grpc_url("read-svc")),
            (
                "SHORTFLEET_CLICK_LOGGER_URL".into(),
                grpc_url("click-logger"),
            ),
            ("SHORTFLEET_ANALYTICS_URL".into(), grpc_url("analytics-svc")),
            // One spool directory per gateway process (the spool locks it).
            (
                "SHORTFLEET_CLICK_SPOOL_DIR".into(),
                log_dir.join("spool-gateway").display().to_string(),
            ),
        ]);
        envs.insert("gateway", gateway);
        for env in envs.values_mut() {
            env.extend(options.all_env.iter().cloned());
        }
        if let Some(gateway) = envs.get_mut("gateway") {
            gateway.extend(options.gateway_env);
        }

        let mut ops_urls: HashMap<&'static str, String> = SERVICES
            .iter()
            .map(|s| (*s, format!("http://127.0.0.1:{}", ops[s])))
            .collect();
        ops_urls.insert("gateway", format!("http://{public}"));
        let mut grpc_addrs: HashMap<&'static str, String> = SERVICES
            .iter()
            .filter(|s| **s != "gateway")
            .map(|s| (*s, format!("127.0.0.1:{}", grpc[s])))
            .collect();
        let mut replicas: HashMap<&'static str, Vec<&'static str>> = HashMap::new();
        for &(svc, count) in &options.replicas {
            anyhow::ensure!(
                svc != "gateway" && SERVICES.contains(&svc),
                "replicas are for backends; start_gateway_replica adds gateways"
            );
            for i in 2..=count {
                // Harness names live as long as the test process.
                let name: &'static str = Box::leak(format!("{svc}@{i}").into_boxed_str());
                let ip = replica_ip(i);
                let mut env = envs[svc].clone();
                for (key, value) in &mut env {
                    match key.as_str() {
                        "SHORTFLEET_GRPC_ADDR" => *value = format!("{ip}:{}", grpc[svc]),
                        "SHORTFLEET_OPS_ADDR" => *value = format!("{ip}:{}", ops[svc]),
                        "SHORTFLEET_SPOOL_DIR" => {
                            *value = log_dir.join(format!("spool-{i}")).display().to_string();
                        }
                        _ => {}
                    }
                }
                envs.insert(name, env);
                ops_urls.insert(name, format!("http://{ip}:{}", ops[svc]));
                grpc_addrs.insert(name, format!("{ip}:{}", grpc[svc]));
                replicas.entry(svc).or_default().push(name);
            }
        }
        let mut fleet = Self {
            gateway_ops_url: format!("http://127.0.0.1:{}", ops["gateway"]),
            id,
            gateway_url: format!("http://{public}"),
            ops_urls,
            grpc_addrs,
            envs,
            children: HashMap::new(),
            bin_dir,
            log_dir,
            infra,
            databases,
            dns,
            replicas,
            redis_cluster,
            pg_replica,
        };
        for svc in SERVICES {
            let extra = fleet.replicas.get(svc).cloned().unwrap_or_default();
            for (i, name) in std::iter::once(svc).chain(extra).enumerate() {
                fleet.spawn(name)?;
                fleet.wait_ready(name, Duration::from_secs(60)).await?;
                // Ready: in DNS, as a ready pod is in its headless Service.
                if let Some(dns) = &fleet.dns {
                    dns.add(&backend_host(svc), replica_ip(i + 1));
                }
            }
        }
        Ok(fleet)
    }

    /// Starts (or restarts) one service with its environment.
    pub fn spawn(&mut self, svc: &'static str) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{svc}.log")))?;
        // A replica (`svc@i`) runs the service's binary.
        let binary = svc.split('@').next().unwrap_or(svc);
        let child = Command::new(self.bin_dir.join(binary))
            .envs(self.envs[svc].iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {svc}"))?;
        self.children.insert(svc, child);
        Ok(())
    }

    /// Polls `/readyz` until 200, or fails with the service's log tail.
    pub async fn wait_ready(&mut self, svc: &'static str, within: Duration) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.ops_urls[svc]);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.children.get_mut(svc)
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "{svc} exited with {status} during start-up:\n{}",
                    self.log_tail(svc, 30)
                );
            }
            if let Ok(r) = client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{svc} not ready within {within:?}:\n{}",
                    self.log_tail(svc, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts another gateway replica named `name` (same fleet, its own
    /// HTTP and ops ports); returns its base URL once it is ready.
    pub async fn start_gateway_replica(&mut self, name: &'static str) -> anyhow::Result<String> {
        let binary = self.bin_dir.join("gateway");
        self.start_gateway_replica_from(name, &binary).await
    }

    /// Starts another gateway named `name` from `binary` (another build of
    /// the gateway, e.g. an earlier commit's, for the benchmark to compare)
    /// with the fleet gateway's configuration; returns its base URL.
    pub async fn start_gateway_replica_from(
        &mut self,
        name: &'static str,
        binary: &Path,
    ) -> anyhow::Result<String> {
        self.start_gateway_replica_with(name, binary, &[]).await
    }

    /// Like [`Self::start_gateway_replica_from`], with `extra` settings on
    /// top of the fleet gateway's configuration.
    pub async fn start_gateway_replica_with(
        &mut self,
        name: &'static str,
        binary: &Path,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let public = format!("127.0.0.1:{}", free_port());
        let mut env = self.envs["gateway"].clone();
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env.retain(|(k, _)| {
            !matches!(
                k.as_str(),
                "SHORTFLEET_HTTP_ADDR" | "SHORTFLEET_OPS_ADDR" | "SHORTFLEET_CLICK_SPOOL_DIR"
            )
        });
        env.push(("SHORTFLEET_HTTP_ADDR".into(), public.clone()));
        env.push((
            "SHORTFLEET_CLICK_SPOOL_DIR".into(),
            self.log_dir
                .join(format!("spool-{name}"))
                .display()
                .to_string(),
        ));
        // Its probes and /metrics answer on its own ops port.
        let ops = format!("127.0.0.1:{}", free_port());
        env.push(("SHORTFLEET_OPS_ADDR".into(), ops.clone()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{name}.log")))?;
        let child = Command::new(binary)
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.envs.insert(name, env);
        self.children.insert(name, child);
        self.ops_urls.insert(name, format!("http://{ops}"));
        self.wait_ready(name, Duration::from_secs(60)).await?;
        Ok(format!("http://{public}"))
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub async fn stop(&mut self, svc: &'static str) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.children.remove(svc).context("service not running")?;
        if let Some(pid) = child.id() {
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
        }
        Ok(tokio::time::timeout(Duration::from_secs(20), child.wait()).await??)
    }

    /// Kills a service with SIGKILL (no drain) and waits for it to die.
    pub async fn kill(&mut self, svc: &'static str) -> anyhow::Result<()> {
        let mut child = self.children.remove(svc).context("service not running")?;
        child.kill().await?;
        Ok(())
    }

    /// Runs `gateway keys create` against this fleet; returns the secret.
    pub fn create_key(&self, owner: &str, tier: &str) -> anyhow::Result<String> {
        let out = std::process::Command::new(self.bin_dir.join("gateway"))
            .args(["keys", "create", "--owner", owner, "--tier", tier])
            .envs(self.envs["gateway"].iter().cloned())
            .output()?;
        if !out.status.success() {
            bail!(
                "keys create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8(out.stdout)?;
        stdout
            .lines()
            .last()
            .map(str::to_owned)
            .context("keys create printed nothing")
    }

    /// Fetches one service's Prometheus text and sums the samples of
    /// `metric` whose labels contain every `label`.
    pub async fn metric(&self, svc: &str, metric: &str, labels: &[&str]) -> anyhow::Result<f64> {
        Ok(sum_metric(&self.metrics_text(svc).await?, metric, labels))
    }

    /// `svc`'s `/metrics` (the gateway's from its ops port).
    pub async fn metrics_text(&self, svc: &str) -> anyhow::Result<String> {
        let base = match svc {
            "gateway" => &self.gateway_ops_url,
            _ => &self.ops_urls[svc],
        };
        Ok(reqwest::Client::new()
            .get(format!("{base}/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .text()
            .await?)
    }

    /// Lints every service's `/metrics`: each `shortfleet_*` series
    /// carries HELP text, and `promtool check metrics` (Debian's, unpacked
    /// by `deploy/local/promtool`) finds nothing to report.
    pub async fn check_metrics(&self) -> anyhow::Result<()> {
        let promtool = tools_promtool();
        for svc in SERVICES {
            let text = self.metrics_text(svc).await?;
            let undescribed = undescribed_metrics(&text);
            anyhow::ensure!(
                undescribed.is_empty(),
                "{svc}: no HELP text for {undescribed:?}"
            );
            let mut child = std::process::Command::new(&promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .with_context(|| format!("running {}", promtool.display()))?;
            {
                use std::io::Write as _;
                let mut stdin = child.stdin.take().context("promtool's stdin")?;
                stdin.write_all(text.as_bytes())?;
            }
            let out = child.wait_with_output()?;
            anyhow::ensure!(
                out.status.success(),
                "{svc}: promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub fn log_tail(&self, svc: &str, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.log_dir.join(format!("{svc}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The OS process id of a running service.
    pub fn pid(&self, svc: &str) -> Option<u32> {
        self.children.get(svc).and_then(Child::id)
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_dir
    }

    /// Stops everything and drops this fleet's databases.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let running: Vec<&'static str> = self.children.keys().copied().collect();
        for svc in running {
            let _ = self.stop(svc).await;
        }
        for db in &self.databases {
            // A database left behind is litter, not a failed test.
            if let Err(e) =
                shortfleet_testkit::database::drop_database_on(&self.infra.postgres, db).await
            {
                eprintln!("could not drop {db}: {e:#}");
            }
        }
        Ok(())
    }
}

/// GETs `url` with an API key and parses the JSON body, whatever the status
/// (problem+json bodies included).
pub async fn get_json(
    http: &reqwest::Client,
    url: &str,
    key: &str,
) -> anyhow::Result<serde_json::Value> {
    Ok(http.get(url).bearer_auth(key).send().await?.json().await?)
}

/// The `shortfleet_*` metric families in a Prometheus text exposition that
/// have a `# TYPE` line but no `# HELP` line.
pub fn undescribed_metrics(text: &str) -> Vec<String> {
    let described: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("shortfleet_") && !described.contains(name))
        .map(str::to_owned)
        .collect()
}

/// The path of `program` on `PATH`, if any.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_samples_only() {
        let text = "# TYPE x counter\nx{level=\"local\",result=\"hit\"} 3\nx{level=\"redis\",result=\"hit\"} 4\nxy 9\nx 1\n";
        assert_eq!(sum_metric(text, "x", &["level=\"local\""]), 3.0);
        assert_eq!(sum_metric(text, "x", &["result=\"hit\""]), 7.0);
        assert_eq!(sum_metric(text, "x", &[]), 8.0);
    }
}
