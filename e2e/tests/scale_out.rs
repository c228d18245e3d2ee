//! Scale-out on one machine: two gateways in front of three read-svc, two
//! write-svc, two click-logger and two analytics-svc, each replica on its
//! own loopback address (127.0.0.x) and every backend found by name through
//! a DNS server the test runs, re-resolved every 200 ms, the way pods find a
//! Kubernetes headless Service; all on a Redis Cluster of three masters
//! with a replica each, and write-svc on a PostgreSQL primary whose
//! streaming replica serves its reads. The gateways' micro-caches are off, so every
//! redirect is a `Resolve` call to some read-svc.
//!
//! Under load through both gateways it checks that:
//! - creates reach both write-svc and `Resolve` calls spread within ±15 %
//!   over the three read-svc;
//! - killing (SIGKILL) one read-svc, one write-svc, one click-logger and
//!   one Redis master in turn costs no failed redirect, each service
//!   restarted gets calls again, and the Redis replica takes over;
//! - every redirect answered is counted once (no click lost or doubled);
//! - a link edited through one gateway redirects to its new URL through the
//!   other within a second;
//! - one key's rate limit holds across both gateways.
//!
//! Rates and recovery times are printed; the machine is shared, so only
//! what must hold on any machine is asserted.

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use reqwest::StatusCode;
use serde_json::json;
use shortfleet_e2e::{
    Fleet, FleetOptions,
    api::{self, BROWSER_UA, create_link, redirects, until, wait_for_totals},
    backend_host,
    load::{self, Mode, Outcome},
    replica_ip,
};

/// Links the load cycles over.
const LINKS: usize = 150;
/// Redirects per second through each gateway (open loop).
const RATE: u64 = 600;
/// How long a killed replica stays away.
const OUTAGE: Duration = Duration::from_secs(2);
/// Upper bound of the load phase whatever happens.
const MAX_LOAD: Duration = Duration::from_secs(90);
/// The longest a restarted replica may take to get calls again.
const RECOVERY: Duration = Duration::from_secs(30);

const READ_SVC: [&str; 3] = ["read-svc", "read-svc@2", "read-svc@3"];
const WRITE_SVC: [&str; 2] = ["write-svc", "write-svc@2"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_replicas_spreads_calls_and_loses_none_when_one_of_each_dies() {
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let mut fleet = Fleet::start(FleetOptions {
        replicas: vec![
            ("write-svc", 2),
            ("read-svc", 3),
            ("click-logger", 2),
            ("analytics-svc", 2),
        ],
        all_env: env(&[("SHORTFLEET_LOG", "warn")]),
        gateway_env: env(&[
            ("SHORTFLEET_ANONYMOUS_LIMIT", "1000000000/1"),
            ("SHORTFLEET_MICROCACHE_CAPACITY", "0"),
            ("SHORTFLEET_TIER_FREE", "40/60"),
        ]),
        bin_dir: shortfleet_e2e::release_bin_dir(),
        redis_cluster: true,
        pg_replica: true,
        ..Default::default()
    })
    .await
    .expect("fleet starts");
    let result = run(&mut fleet).await;
    if result.is_err() {
        let names: Vec<&str> = fleet.ops_urls.keys().copied().collect();
        for svc in names {
            eprintln!("--- {svc} ---\n{}", fleet.log_tail(svc, 15));
        }
        for gateway in ["gateway", "gateway-2"] {
            let text = fleet.metrics_text(gateway).await.unwrap_or_default();
            for line in text.lines().filter(|l| {
                ["retries", "breaker_state", "bulkhead", "status=\"5"]
                    .iter()
                    .any(|m| l.contains(m))
                    && !l.starts_with('#')
            }) {
                eprintln!("{gateway}: {line}");
            }
        }
    }
    fleet.shutdown().await.unwrap();
    result.unwrap();
}

async fn run(fleet: &mut Fleet) -> anyhow::Result<()> {
    let http = api::client()?;
    let one = fleet.gateway_url.clone();
    let two = fleet.start_gateway_replica("gateway-2").await?;
    let key = fleet.create_key("scale", "bench")?;

    // Creates through both gateways reach both write-svc.
    let mut codes = Vec::with_capacity(LINKS);
    for i in 0..LINKS {
        let base = if i % 2 == 0 { &one } else { &two };
        codes.push(create_link(&http, base, &key, &format!("https://example.com/s/{i}")).await?);
    }
    let keys = fleet
        .redis_cluster
        .as_ref()
        .context("a Redis Cluster")?
        .keys()?;
    ensure!(keys > 0, "the services wrote nothing to the Redis Cluster");
    eprintln!("scale-out: the Redis Cluster's masters hold {keys} keys");
    for svc in WRITE_SVC {
        let created = fleet
            .metric(svc, "shortfleet_links_created_total", &[])
            .await?;
        ensure!(created > 0.0, "{svc} took no create");
        eprintln!("scale-out: {svc} took {created} of {LINKS} creates");
    }

    spread_over_read_svc(fleet, &one, &two, &codes).await?;
    dns_changes_drain_and_add(fleet, &one, &two, &codes).await?;
    let (outcome, served) = faults_under_load(fleet, &http, &key, &one, &two, &codes).await?;

    let answered = outcome.count(302);
    let failed = outcome.requests - answered + outcome.errors;
    ensure!(
        failed == 0,
        "{failed} redirects failed under the faults: {:?}, {} connection errors",
        outcome.statuses,
        outcome.errors
    );
    let counted = wait_for_totals(&http, &one, &key, served).await?;
    ensure!(
        counted == served,
        "the gateways answered {served} redirects, analytics counted {counted}"
    );

    // read-svc's misses were read from the PostgreSQL replica.
    let mut replica_reads = 0.0;
    for svc in WRITE_SVC {
        replica_reads += fleet
            .metric(svc, "shortfleet_db_reads_total", &["target=\"replica\""])
            .await?;
    }
    eprintln!("scale-out: write-svc reads served by the PostgreSQL replica: {replica_reads}");
    ensure!(replica_reads > 0.0, "no read used the PostgreSQL replica");

    edits_cross_gateways(&http, &one, &two, &key, &codes[0]).await?;
    rate_limit_is_shared(fleet, &http, &one, &two).await
}

/// `Resolve` calls each read-svc replica has answered.
async fn resolves(fleet: &Fleet) -> anyhow::Result<Vec<f64>> {
    let mut counts = Vec::new();
    for svc in READ_SVC {
        counts.push(
            fleet
                .metric(svc, "shortfleet_resolve_duration_seconds_count", &[])
                .await?,
        );
    }
    Ok(counts)
}

async fn load_both(
    one: &str,
    two: &str,
    codes: &[String],
    duration: Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(
    tokio::task::JoinHandle<Outcome>,
    tokio::task::JoinHandle<Outcome>,
)> {
    let codes = Arc::new(codes.to_vec());
    let start = |base: &str| -> anyhow::Result<tokio::task::JoinHandle<Outcome>> {
        let addr: SocketAddr = base.trim_start_matches("http://").parse()?;
        Ok(tokio::spawn(load::run_until(
            addr,
            Mode::Open {
                connections: 16,
                rate: RATE,
            },
            duration,
            redirects(codes.clone(), BROWSER_UA),
            stop.clone(),
        )))
    };
    Ok((start(one)?, start(two)?))
}

async fn spread_over_read_svc(
    fleet: &Fleet,
    one: &str,
    two: &str,
    codes: &[String],
) -> anyhow::Result<()> {
    let before = resolves(fleet).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (a, b) = load_both(one, two, codes, Duration::from_secs(4), stop).await?;
    let (a, b) = (a.await?, b.await?);
    ensure!(
        a.count(302) == a.requests && b.count(302) == b.requests,
        "redirects failed before any fault: {:?} {:?}",
        a.statuses,
        b.statuses
    );
    let after = resolves(fleet).await?;
    let calls: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let mean = calls.iter().sum::<f64>() / calls.len() as f64;
    eprintln!("scale-out: Resolve calls per read-svc {calls:?} (mean {mean:.0})");
    ensure!(mean > 1000.0, "too few calls to judge a spread: {calls:?}");
    for (svc, n) in READ_SVC.iter().zip(&calls) {
        let off = (n - mean) / mean;
        ensure!(
            off.abs() <= 0.15,
            "{svc} took {n} calls, {:.1} % off the mean {mean:.0}",
            off * 100.0
        );
    }
    Ok(())
}

/// read-svc@3 leaves DNS (as a pod that stopped being ready leaves its
/// headless Service): once every gateway has re-resolved, it gets no call;
/// back in DNS, it gets calls again.
async fn dns_changes_drain_and_add(
    fleet: &Fleet,
    one: &str,
    two: &str,
    codes: &[String],
) -> anyhow::Result<()> {
    let dns = fleet.dns.as_ref().context("the fleet's DNS")?;
    let (name, ip) = (backend_host("read-svc"), replica_ip(3));
    let load = || async {
        let stop = Arc::new(AtomicBool::new(false));
        let (a, b) = load_both(one, two, codes, Duration::from_secs(1), stop).await?;
        let (a, b) = (a.await?, b.await?);
        ensure!(
            a.count(302) == a.requests && b.count(302) == b.requests,
            "redirects failed while DNS changed: {:?} {:?}",
            a.statuses,
            b.statuses
        );
        anyhow::Ok(())
    };
    dns.remove(&name, ip);
    // Five refresh intervals: every gateway has looked again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = calls_to(fleet, "read-svc@3").await?;
    load().await?;
    let during = calls_to(fleet, "read-svc@3").await? - before;
    ensure!(
        during == 0.0,
        "read-svc@3 took {during} calls after it left DNS"
    );
    dns.add(&name, ip);
    tokio::time::sleep(Duration::from_secs(1)).await;
    load().await?;
    let after = calls_to(fleet, "read-svc@3").await? - before;
    ensure!(
        after > 0.0,
        "read-svc@3 took no call after it came back to DNS"
    );
    eprintln!(
        "scale-out: read-svc@3 out of DNS took {during} calls; back in DNS, {after} in a second"
    );
    Ok(())
}

/// Kills one replica of read-svc, write-svc and click-logger in turn under
/// load, each restarted after [`OUTAGE`]; returns the load's outcome and
/// how many redirects the gateways say they answered.
async fn faults_under_load(
    fleet: &mut Fleet,
    http: &reqwest::Client,
    key: &str,
    one: &str,
    two: &str,
    codes: &[String],
) -> anyhow::Result<(Outcome, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let (a, b) = load_both(one, two, codes, MAX_LOAD, stop.clone()).await?;
    let faults = async {
        for svc in ["read-svc@2", "write-svc@2", "click-logger@2"] {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = calls_to(fleet, svc).await?;
            fleet.kill(svc).await?;
            tokio::time::sleep(OUTAGE).await;
            fleet.spawn(svc)?;
            fleet.wait_ready(svc, RECOVERY).await?;
            // Back in the set: calls reach it again.
            let attempts = std::sync::atomic::AtomicU32::new(0);
            let took = until(RECOVERY, || async {
                if svc.starts_with("write-svc") {
                    // Redirects seldom reach write-svc: creates do.
                    // A new URL each time: the same one would return the
                    // existing link, which counts as no create.
                    let attempt = attempts.fetch_add(1, Ordering::Relaxed);
                    let url = format!("https://example.com/after-restart/{svc}/{attempt}");
                    create_link(http, one, key, &url).await?;
                }
                Ok(calls_to(fleet, svc).await? > 0.0)
            })
            .await
            .with_context(|| format!("{svc} got no call after its restart ({before} before)"))?;
            eprintln!(
                "scale-out: {svc} killed for {OUTAGE:?}; it served again {} ms after it was ready",
                took.as_millis()
            );
        }
        let cluster = fleet.redis_cluster.as_ref().context("a Redis Cluster")?;
        let master = cluster.masters()?[0];
        cluster.kill(master)?;
        let took = until(RECOVERY, || async {
            let masters = cluster.masters()?;
            Ok(masters.len() == 3 && !masters.contains(&master))
        })
        .await
        .context("no replica took over the killed Redis master")?;
        eprintln!(
            "scale-out: Redis master :{master} killed; a replica took over after {} ms",
            took.as_millis()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.restart(master)?;
        cluster.wait_healthy(RECOVERY).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        anyhow::Ok(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let (a, b) = (a.await?, b.await?);
    faults?;
    let mut served = 0.0;
    for gateway in ["gateway", "gateway-2"] {
        served += fleet
            .metric(
                gateway,
                "shortfleet_http_requests_total",
                &["endpoint=\"redirect\"", "status=\"302\""],
            )
            .await?;
    }
    let mut outcome = a;
    outcome.requests += b.requests;
    outcome.errors += b.errors;
    for (status, n) in b.statuses {
        *outcome.statuses.entry(status).or_default() += n;
    }
    eprintln!(
        "scale-out: {} redirects through two gateways during the faults, statuses {:?}, \
         connection errors {}",
        outcome.requests, outcome.statuses, outcome.errors
    );
    Ok((outcome, served as u64))
}

/// Calls a replica has served since it started: `Resolve` for read-svc,
/// creates for write-svc, clicks for click-logger.
async fn calls_to(fleet: &Fleet, svc: &str) -> anyhow::Result<f64> {
    let metric = match svc.split('@').next() {
        Some("read-svc") => "shortfleet_resolve_duration_seconds_count",
        Some("click-logger") => "shortfleet_clicks_published_total",
        _ => "shortfleet_links_created_total",
    };
    fleet.metric(svc, metric, &[]).await
}

/// A link edited through one gateway redirects to the new URL through the
/// other within a second.
async fn edits_cross_gateways(
    http: &reqwest::Client,
    one: &str,
    two: &str,
    key: &str,
    code: &str,
) -> anyhow::Result<()> {
    let edited = "https://example.com/edited";
    http.patch(format!("{one}/api/v1/links/{code}"))
        .bearer_auth(key)
        .json(&json!({ "url": edited }))
        .send()
        .await?
        .error_for_status()?;
    let took = until(Duration::from_secs(1), || async {
        let r = http.get(format!("{two}/{code}")).send().await?;
        Ok(r.status() == StatusCode::FOUND
            && r.headers()
                .get("location")
                .is_some_and(|l| l.as_bytes() == edited.as_bytes()))
    })
    .await
    .context("the edit was not seen through the other gateway within a second")?;
    eprintln!(
        "scale-out: an edit through one gateway redirected through the other after {} ms",
        took.as_millis()
    );
    Ok(())
}

/// A `free` key (40 per minute here) asks 80 times, alternating gateways:
/// about 40 pass in all, not 40 per gateway.
async fn rate_limit_is_shared(
    fleet: &Fleet,
    http: &reqwest::Client,
    one: &str,
    two: &str,
) -> anyhow::Result<()> {
    let key = fleet.create_key("limited", "free")?;
    let started = Instant::now();
    let mut allowed = 0u32;
    for i in 0..80 {
        let base = if i % 2 == 0 { one } else { two };
        let r = http
            .get(format!("{base}/api/v1/links?limit=1"))
            .bearer_auth(&key)
            .send()
            .await?;
        match r.status() {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => anyhow::bail!("unexpected {other}"),
        }
    }
    // The bucket refills 40 per 60 s while the loop runs.
    let refill = (started.elapsed().as_secs_f64() * 40.0 / 60.0).ceil() as u32;
    eprintln!("scale-out: a 40/min key got {allowed} of 80 through two gateways");
    ensure!(
        (40..=40 + refill).contains(&allowed),
        "{allowed} of 80 allowed through two gateways for a 40/min key"
    );
    Ok(())
}
