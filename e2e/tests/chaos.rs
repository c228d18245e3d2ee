//! Chaos under load: the real fleet takes a steady stream of redirects
//! (open loop, `SHORTFLEET_CHAOS_RATE` req/s, 12,000 by default, loopback
//! only) while read-svc, click-logger, analytics-svc and write-svc are each
//! killed (SIGKILL) and restarted after an outage, and then RabbitMQ is cut
//! and restored (through a proxy of our own, so the shared broker other
//! tests use is never touched).
//!
//! Afterwards: not one redirect of a link resolved before the outages
//! failed, the sum of click totals over the test's links equals the
//! redirects answered (nothing dropped, nothing counted twice), and the
//! gateway dropped no click; with the release build, the load held at
//! least 10,000 req/s. Recovery times are printed, not asserted (bounded
//! only by `RECOVERY`): the machine is shared.

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use reqwest::{Client, StatusCode};
use shortfleet_e2e::{
    Fleet, FleetOptions, Infra, SERVICES,
    api::{self, BROWSER_UA, create_link, redirects, status_is, until, wait_for_totals},
    load::{self, Mode},
    proxy::FaultProxy,
};

/// Links the load cycles over, all resolved before the first outage.
const LINKS: usize = 200;
/// How long each dependency stays away (`SHORTFLEET_CHAOS_OUTAGE_MS`
/// overrides; the issue's hand run used 5 s).
fn outage() -> Duration {
    std::env::var("SHORTFLEET_CHAOS_OUTAGE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_secs(3), Duration::from_millis)
}

/// How RabbitMQ goes away: by default the test's own proxy in front of it
/// is cut (the broker other tests share keeps running). By hand,
/// `SHORTFLEET_CHAOS_RABBITMQ=app` stops and starts the broker's
/// application (`rabbitmqctl stop_app` / `start_app`), as an operator's
/// restart does; never in a shared suite.
async fn rabbitmq_away(proxy: &FaultProxy, outage: Duration) -> anyhow::Result<()> {
    let real = std::env::var("SHORTFLEET_CHAOS_RABBITMQ").is_ok_and(|v| v == "app");
    if !real {
        proxy.cut();
        tokio::time::sleep(outage).await;
        proxy.restore();
        return Ok(());
    }
    let stopped = rabbitmqctl(&["stop_app"]).await;
    if stopped.is_ok() {
        tokio::time::sleep(outage).await;
    }
    // Started again whatever happened: the broker is the machine's.
    let started = rabbitmqctl(&["start_app"]).await;
    stopped?;
    started?;
    rabbitmqctl(&["await_startup"]).await
}

async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("rabbitmqctl")
            .args(args)
            .kill_on_drop(true)
            .status(),
    )
    .await
    .with_context(|| format!("rabbitmqctl {args:?} took over 60 s"))??;
    ensure!(status.success(), "rabbitmqctl {args:?}: {status}");
    Ok(())
}
/// Load between one recovery and the next outage.
const SETTLE: Duration = Duration::from_secs(2);
/// Upper bound of the load phase whatever happens.
const MAX_LOAD: Duration = Duration::from_secs(150);
/// Polling step while wrk runs.
const POLL: Duration = Duration::from_millis(10);
/// The longest a recovery may take.
const RECOVERY: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_under_load_cost_no_redirect_and_no_click() {
    let broker = broker_addr(&Infra::default().amqp).expect("SHORTFLEET_TEST_AMQP has host:port");
    let proxy = FaultProxy::start(broker).await.expect("proxy starts");
    let rate: u64 = std::env::var("SHORTFLEET_CHAOS_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(12_000);
    let mut fleet = Fleet::start(FleetOptions {
        all_env: vec![
            (
                "SHORTFLEET_AMQP_URL".into(),
                amqp_via(&Infra::default().amqp, proxy.addr),
            ),
            ("SHORTFLEET_LOG".into(), "warn".into()),
        ],
        gateway_env: vec![
            ("SHORTFLEET_ANONYMOUS_LIMIT".into(), "1000000000/1".into()),
            // Small enough that a click-logger outage overflows it at this
            // rate: the spool must carry the rest.
            ("SHORTFLEET_CLICK_BUFFER".into(), "20000".into()),
        ],
        // Full load needs the release build (deploy/local/test provides it).
        bin_dir: shortfleet_e2e::release_bin_dir(),
        ..Default::default()
    })
    .await
    .expect("fleet starts");
    let result = run(&mut fleet, &proxy, rate).await;
    if result.is_err() {
        for svc in SERVICES {
            eprintln!("--- {svc} ---\n{}", fleet.log_tail(svc, 15));
        }
    }
    fleet.shutdown().await.unwrap();
    result.unwrap();
}

/// `host:port` of the broker in an `amqp://user:pass@host:port/vhost` URL.
fn broker_addr(url: &str) -> Option<SocketAddr> {
    let rest = url.split_once('@')?.1;
    rest.split('/').next()?.parse().ok()
}

/// The same URL pointing at `proxy`.
fn amqp_via(url: &str, proxy: SocketAddr) -> String {
    let (userinfo, rest) = url.split_once('@').unwrap_or(("amqp://guest:guest", url));
    let vhost = rest.split_once('/').map_or("", |(_, v)| v);
    format!("{userinfo}@{proxy}/{vhost}")
}

/// What the test measured, printed at the end.
#[derive(Default)]
struct Figures {
    recoveries: BTreeMap<&'static str, String>,
}

async fn run(fleet: &mut Fleet, proxy: &FaultProxy, rate: u64) -> anyhow::Result<()> {
    let http = api::client()?;
    let base = fleet.gateway_url.clone();
    let key = fleet.create_key("chaos", "bench")?;
    let mut codes = Vec::with_capacity(LINKS);
    for i in 0..LINKS {
        codes.push(
            create_link(
                &http,
                &base,
                &key,
                &format!("https://example.com/chaos/{i}"),
            )
            .await?,
        );
    }
    // Never resolved before read-svc goes away: it answers only once
    // read-svc is back, which times the gateway's recovery.
    let probe = create_link(&http, &base, &key, "https://example.com/chaos/probe").await?;
    let mut answered = 0u64;
    for code in &codes {
        let r = http.get(format!("{base}/{code}")).send().await?;
        ensure!(
            r.status() == StatusCode::FOUND,
            "warm-up {code}: {}",
            r.status()
        );
        answered += 1;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let addr: SocketAddr = base.trim_start_matches("http://").parse()?;
    let load = match std::env::var_os("SHORTFLEET_CHAOS_WRK") {
        // The hand run at full load (BENCHMARKS.md): wrk, closed loop.
        Some(wrk) => tokio::spawn(wrk_until(wrk, base.clone(), codes.clone(), stop.clone())),
        None => {
            let generator = load::run_until(
                addr,
                Mode::Open {
                    connections: 64,
                    rate,
                },
                MAX_LOAD,
                redirects(Arc::new(codes.clone()), BROWSER_UA),
                stop.clone(),
            );
            tokio::spawn(async move { Ok(Load::from(generator.await)) })
        }
    };
    let mut figures = Figures::default();
    let faults = inject_faults(
        fleet,
        proxy,
        &http,
        &base,
        &key,
        &probe,
        &codes,
        &mut figures,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let outcome = load.await.context("load task")??;
    faults?;
    // The read-svc probe's one 302 is a click too.
    answered += 1;

    let failed = outcome.errors + outcome.requests - outcome.redirected;
    answered += outcome.redirected;
    let achieved = outcome.requests as f64 / outcome.elapsed.as_secs_f64();
    let counted = wait_for_totals(&http, &base, &key, answered).await?;
    let dropped = fleet
        .metric("gateway", "shortfleet_clicks_dropped_total", &[])
        .await? as u64;
    let spooled = fleet
        .metric("gateway", "shortfleet_clicks_spooled_total", &[])
        .await? as u64;
    let stale = fleet
        .metric("gateway", "shortfleet_stale_redirects_total", &[])
        .await? as u64;
    let served = fleet
        .metric(
            "gateway",
            "shortfleet_http_requests_total",
            &["endpoint=\"redirect\"", "status=\"302\""],
        )
        .await? as u64;
    eprintln!(
        "chaos: {} target {rate} req/s, achieved {achieved:.0} req/s over {:.1} s; load requests {}, \
         failed {failed} (statuses {}, connection errors {}); answered in all {answered}, \
         the gateway's own 302s {served}, counted {counted}, gateway dropped {dropped}, spooled by the gateway {spooled}, \
         stale answers {stale}; p99 {:.1} ms",
        outcome.generator,
        outcome.elapsed.as_secs_f64(),
        outcome.requests,
        outcome.statuses,
        outcome.errors,
        outcome.p99_ms,
    );
    for (what, took) in &figures.recoveries {
        eprintln!("chaos: {what}: {took}");
    }
    if failed > 0 {
        let text = reqwest::get(format!("{}/metrics", fleet.gateway_ops_url))
            .await?
            .text()
            .await?;
        for line in text.lines().filter(|l| {
            l.contains("status=\"4")
                || l.contains("status=\"5")
                || l.contains("ratelimit_decisions")
        }) {
            eprintln!("chaos: gateway metric {line}");
        }
    }
    ensure!(
        failed == 0,
        "{failed} redirects of links resolved before the outages failed: {}, {} connection errors",
        outcome.statuses,
        outcome.errors
    );
    // Every 302 the gateway sent is a click: the totals must match its own
    // count exactly. The client's count matches it too, except that wrk
    // abandons the requests in flight when it stops (at most one per
    // connection) without counting them.
    ensure!(
        counted == served,
        "the gateway answered {served} redirects, analytics counted {counted}"
    );
    ensure!(
        served >= answered && served - answered <= outcome.abandoned_at_stop,
        "the client saw {answered} redirects answered, the gateway {served}"
    );
    ensure!(dropped == 0, "the gateway dropped {dropped} clicks");
    let floor = min_rate(rate);
    ensure!(
        achieved >= floor,
        "the load reached {achieved:.0} req/s, below the {floor:.0} req/s this run must hold \
         (SHORTFLEET_CHAOS_MIN_RATE)"
    );
    Ok(())
}

/// The rate the load must reach for the run to count: with the release
/// build (what CI runs, through deploy/local/test) 10,000 req/s, or 80 % of
/// a target below that asked for on purpose; none with debug binaries,
/// which cannot keep up; `SHORTFLEET_CHAOS_MIN_RATE` overrides.
fn min_rate(target: u64) -> f64 {
    let release_floor = if target >= 10_000 {
        10_000.0
    } else {
        0.8 * target as f64
    };
    std::env::var("SHORTFLEET_CHAOS_MIN_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if shortfleet_e2e::release_bin_dir().is_some() {
            release_floor
        } else {
            0.0
        })
}

/// What the load phase saw, from either generator.
struct Load {
    generator: &'static str,
    requests: u64,
    /// Answered 302.
    redirected: u64,
    /// Connection-level failures (no HTTP answer).
    errors: u64,
    statuses: String,
    elapsed: Duration,
    p99_ms: f64,
    /// Requests that may have been answered but not seen when the load
    /// stopped.
    abandoned_at_stop: u64,
}

impl From<load::Outcome> for Load {
    fn from(o: load::Outcome) -> Self {
        Self {
            generator: "in-test generator,",
            requests: o.requests,
            redirected: o.count(302),
            errors: o.errors,
            statuses: format!("{:?}", o.statuses),
            elapsed: o.elapsed,
            p99_ms: o.latency.value_at_quantile(0.99) as f64 / 1000.0,
            // It waits for every request in flight before it returns.
            abandoned_at_stop: 0,
        }
    }
}

/// wrk's Lua: GET over the codes (one per line of `CHAOS_CODES`) as a
/// browser, and a parseable summary at the end. wrk counts a status above
/// 399 as an error and everything else as answered; here that is 302.
const WRK_SCRIPT: &str = r#"
local codes = {}
for line in io.lines(os.getenv("CHAOS_CODES")) do codes[#codes + 1] = line end
local i = math.random(#codes)
request = function()
  i = i % #codes + 1
  return wrk.format("GET", "/" .. codes[i], { ["User-Agent"] = os.getenv("CHAOS_UA") })
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("wrk-summary %d %d %d %d %d %d %d %d\n", summary.requests, e.status,
    e.connect, e.read, e.write, e.timeout, summary.duration, latency:percentile(99)))
end
"#;

const WRK_CONNECTIONS: u64 = 16;

/// Runs wrk (`-t2 -c16`, the issue's setting) until `stop`, then asks it to
/// finish (SIGINT: wrk prints its summary) and reads the summary.
async fn wrk_until(
    wrk: std::ffi::OsString,
    base: String,
    codes: Vec<String>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Load> {
    let dir = std::env::temp_dir().join(format!("sf-chaos-wrk-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (script, list) = (dir.join("chaos.lua"), dir.join("codes.txt"));
    std::fs::write(&script, WRK_SCRIPT)?;
    std::fs::write(&list, codes.join("\n") + "\n")?;
    let child = tokio::process::Command::new(wrk)
        .args(["-t2", "--timeout", "10s"])
        .arg(format!("-c{WRK_CONNECTIONS}"))
        .arg(format!("-d{}s", MAX_LOAD.as_secs()))
        .arg("-s")
        .arg(&script)
        .arg(&base)
        .env("CHAOS_CODES", &list)
        .env("CHAOS_UA", BROWSER_UA)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting wrk")?;
    let pid = child.id().context("wrk has a pid")?;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LOAD {
        tokio::time::sleep(POLL).await;
    }
    tokio::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .await?;
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .context("wrk did not stop")??;
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("wrk-summary "))
        .with_context(|| format!("no summary from wrk:\n{text}"))?;
    let n: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [
        requests,
        status,
        connect,
        read,
        write,
        timeout,
        duration_us,
        p99_us,
    ] = n[..]
    else {
        anyhow::bail!("wrk summary {line:?}");
    };
    Ok(Load {
        generator: "wrk -t2 -c16,",
        requests,
        redirected: requests - status,
        errors: connect + read + write + timeout,
        statuses: format!("{{302: {}, >399: {status}}}", requests - status),
        elapsed: Duration::from_micros(duration_us),
        p99_ms: p99_us as f64 / 1000.0,
        abandoned_at_stop: WRK_CONNECTIONS,
    })
}

/// Each dependency away for [`outage`] in turn, then back; the time from
/// its restart to the first call through the gateway that succeeded again
/// is recorded. The read-svc probe gets exactly one redirect (a click).
#[allow(clippy::too_many_arguments)]
async fn inject_faults(
    fleet: &mut Fleet,
    proxy: &FaultProxy,
    http: &Client,
    base: &str,
    key: &str,
    probe: &str,
    codes: &[String],
    figures: &mut Figures,
) -> anyhow::Result<()> {
    tokio::time::sleep(SETTLE).await;
    let stats = format!("{base}/api/v1/links/{}/stats", codes[0]);
    let link = format!("{base}/api/v1/links/{}", codes[0]);
    let probe_url = format!("{base}/{probe}");
    let outage = outage();
    for svc in ["read-svc", "click-logger", "analytics-svc", "write-svc"] {
        fleet.kill(svc).await?;
        tokio::time::sleep(outage).await;
        fleet.spawn(svc)?;
        let took = match svc {
            // The first Resolve through the gateway: a code it never saw.
            "read-svc" => {
                until(RECOVERY, || {
                    status_is(http, &probe_url, None, StatusCode::FOUND)
                })
                .await?
            }
            // The first batch click-logger acknowledged to the gateway.
            "click-logger" => {
                let before = forwarded(fleet).await?;
                until(RECOVERY, || async { Ok(forwarded(fleet).await? > before) }).await?
            }
            "analytics-svc" => {
                until(RECOVERY, || {
                    status_is(http, &stats, Some(key), StatusCode::OK)
                })
                .await?
            }
            _ => {
                until(RECOVERY, || {
                    status_is(http, &link, Some(key), StatusCode::OK)
                })
                .await?
            }
        };
        fleet.wait_ready(svc, Duration::from_secs(30)).await?;
        figures.recoveries.insert(
            svc,
            format!(
                "first successful call {} ms after the restart (process start included)",
                took.as_millis()
            ),
        );
        tokio::time::sleep(SETTLE).await;
    }
    rabbitmq_away(proxy, outage).await?;
    let took = until(RECOVERY, || async {
        Ok(fleet
            .metric(
                "gateway",
                "shortfleet_dependency_up",
                &["dependency=\"rabbitmq\""],
            )
            .await?
            == 1.0)
    })
    .await?;
    figures.recoveries.insert(
        "rabbitmq",
        format!(
            "the gateway resubscribed to link events {} ms after the restore",
            took.as_millis()
        ),
    );
    tokio::time::sleep(SETTLE).await;
    Ok(())
}

async fn forwarded(fleet: &Fleet) -> anyhow::Result<f64> {
    fleet
        .metric("gateway", "shortfleet_clicks_forwarded_total", &[])
        .await
}
