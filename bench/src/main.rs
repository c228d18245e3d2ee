//! `shortfleet-bench`: one run that measures the fleet against a bare hyper
//! 301 server on the same machine, interleaving baseline and fleet rounds so
//! drift hits both, and reports medians and ratios (table + JSON).
//!
//! A second comparison runs inside the fleet: links with five redirect
//! rules that never match (every rule is tried, then the fallback URL: the
//! worst case) against plain links, interleaved the same way. With
//! `--gateway-before <binary>` a third puts another build of the gateway
//! (e.g. an earlier commit's) beside this one, in front of the same
//! services, and compares the two on plain links: req/s and the CPU each
//! gateway process spends per redirect (from /proc, which the shared
//! machine's noise moves far less than throughput).
//!
//! Started by `bench/run`, which builds the release binaries and makes sure
//! PostgreSQL, Redis and RabbitMQ run. Every load step has a fixed duration
//! and targets loopback only.

// A measuring tool, not a service: its requests are built from constants
// and a panic ends a run that could not measure anything anyway.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, header};
use http_body_util::Full;
use serde_json::{Value, json};
use shortfleet_bench::{
    load::{self, Mode, RequestFactory},
    oha,
    probe::{
        ProcessUse, cpu_model, cpu_secs, cpu_secs_named, cpu_us_per_request, machine_shares_since,
        machine_ticks, process_use,
    },
    stats::{HELD_RATE, Summary, median, median_of, rate_share, ratio, round2, round3},
    targets, wrk,
};
use shortfleet_e2e::{Fleet, FleetOptions, SERVICES, api::redirects};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(about = "Measure the Shortfleet fleet against a bare hyper baseline")]
struct Args {
    /// Short rounds (about 2–3 minutes in all).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// Longer rounds and more of them.
    #[arg(long)]
    full: bool,
    /// Where to write the JSON result.
    #[arg(long, default_value = "bench/results/latest.json")]
    out: String,
    /// Fixed rate of the latency step, requests per second.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Another gateway binary to compare this one with on plain links.
    #[arg(long)]
    gateway_before: Option<std::path::PathBuf>,
    /// wrk, to measure throughput with a generator that is not ours too
    /// (`bench/run` passes Debian's).
    #[arg(long)]
    wrk: Option<std::path::PathBuf>,
    /// oha, to measure fixed-rate latency (coordinated omission corrected)
    /// with a generator that is not ours too (`bench/run` installs it).
    #[arg(long)]
    oha: Option<std::path::PathBuf>,
    /// Judge an earlier run's report against the issue's targets and
    /// exit, measuring nothing.
    #[arg(long, value_name = "REPORT")]
    judge: Option<std::path::PathBuf>,
}

struct Profile {
    rounds: usize,
    step: Duration,
    links: usize,
}

const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) shortfleet-bench";
/// The rules comparison's visitor (both sides): a desktop Chrome on Linux
/// preferring US English, with no country known.
const BROWSER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";
const ACCEPT_LANGUAGE: &str = "en-US,en;q=0.9,de;q=0.5";
/// The fleet's name for the `--gateway-before` gateway.
const BEFORE: &str = "gateway-before";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.judge {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let report: serde_json::Map<String, Value> = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a bench report", path.display()))?;
        print_targets(&targets::judge(&report));
        return Ok(());
    }
    let profile = if args.full {
        Profile {
            rounds: 3,
            step: Duration::from_secs(10),
            links: 1000,
        }
    } else {
        Profile {
            rounds: 2,
            step: Duration::from_secs(4),
            links: 200,
        }
    };
    let mut fleet = Fleet::start(FleetOptions {
        all_env: vec![("SHORTFLEET_LOG".into(), "warn".into())],
        gateway_env: vec![
            // The limiter is measured, not the bottleneck.
            ("SHORTFLEET_ANONYMOUS_LIMIT".into(), "1000000000/1".into()),
            ("SHORTFLEET_CLICK_BUFFER".into(), "1000000".into()),
        ],
        ..Default::default()
    })
    .await
    .context("starting the fleet")?;
    let before = match &args.gateway_before {
        Some(binary) => Some(
            fleet
                .start_gateway_replica_from(BEFORE, binary)
                .await
                .with_context(|| format!("starting {}", binary.display()))?,
        ),
        None => None,
    };
    let result = measure(&mut fleet, &profile, &args, before.as_deref()).await;
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            for svc in SERVICES {
                eprintln!("--- {svc} ---\n{}", fleet.log_tail(svc, 10));
            }
            fleet.shutdown().await?;
            return Err(e);
        }
    };
    fleet.shutdown().await?;
    if let Some(dir) = std::path::Path::new(&args.out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    println!("\nwrote {}", args.out);
    Ok(())
}

async fn start_baseline(fleet: &Fleet) -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    let mut child = tokio::process::Command::new(fleet.bin("baseline"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the baseline (cargo build --release --bins)")?;
    let stdout = child.stdout.take().context("baseline stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await??
        .context("baseline printed no address")?;
    Ok((child, line.parse()?))
}

fn gateway_addr(fleet: &Fleet) -> anyhow::Result<SocketAddr> {
    Ok(fleet.gateway_url.trim_start_matches("http://").parse()?)
}

/// GET `/{code}` cycling through `codes`, as a browser (user agent and
/// `Accept-Language`, so rules have something to read).
fn browser_redirects(codes: Arc<Vec<String>>) -> RequestFactory {
    Arc::new(move |_, seq| {
        let code = &codes[(seq as usize) % codes.len()];
        Request::get(format!("/{code}"))
            .header(header::HOST, "127.0.0.1")
            .header(header::USER_AGENT, BROWSER_AGENT)
            .header(header::ACCEPT_LANGUAGE, ACCEPT_LANGUAGE)
            .body(Full::new(Bytes::new()))
            .expect("static request parts")
    })
}

/// Five rules none of which holds for [`BROWSER_AGENT`] with
/// [`ACCEPT_LANGUAGE`] and no country, most failing only on their last
/// condition, so each redirect classifies the agent, parses the languages,
/// tries all five and falls back to the link's url.
fn five_rules() -> Value {
    json!([
        {"when": {"device": "mobile"}, "url": "https://m.example.com/app"},
        {"when": {"device": "desktop", "os": "windows"}, "url": "https://example.com/windows"},
        {"when": {"os": "linux", "browser": "firefox"}, "url": "https://example.com/firefox"},
        {"when": {"device": "desktop", "os": "linux", "browser": "chrome", "language": "fr"}, "url": "https://example.fr/"},
        {"when": {"os": "linux", "language": "en-gb", "country": "GB"}, "url": "https://example.co.uk/"},
    ])
}

async fn create_rule_links(fleet: &Fleet, key: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let http = reqwest::Client::new();
    let mut codes = Vec::with_capacity(n);
    for i in 0..n {
        let link: Value = http
            .post(format!("{}/api/v1/links", fleet.gateway_url))
            .bearer_auth(key)
            .json(&json!({
                "url": format!("https://example.com/ruled/page/{i:05}?utm={}", &fleet.id[..8]),
                "rules": five_rules(),
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        anyhow::ensure!(
            link["rules"].as_array().map(Vec::len) == Some(5),
            "rules not kept: {link}"
        );
        codes.push(link["code"].as_str().context("no code")?.to_owned());
    }
    Ok(codes)
}

/// Plain links against links with five non-matching rules, interleaved
/// rounds at 64 connections; returns the section and the plain side's 302s
/// (those are clicks on `plain` codes the totals check expects).
async fn rules_vs_plain(
    fleet: &Fleet,
    gateway: SocketAddr,
    profile: &Profile,
    plain: Arc<Vec<String>>,
    ruled: Arc<Vec<String>>,
) -> anyhow::Result<(Value, u64)> {
    let mut plain_302 = 0u64;
    // Warm the micro-cache with the ruled links too.
    warm_up(gateway, ruled.len(), browser_redirects(ruled.clone())).await?;
    let (mut plain_rounds, mut ruled_rounds) = (Vec::new(), Vec::new());
    // One round more than the baseline comparison: the difference measured
    // here is small, so the medians need the extra sample.
    for is_plain in alternating(profile.rounds + 1) {
        settle(fleet).await;
        let codes = if is_plain { &plain } else { &ruled };
        let o = load::run(
            gateway,
            Mode::Closed { connections: 64 },
            profile.step,
            browser_redirects(codes.clone()),
        )
        .await;
        anyhow::ensure!(o.count(302) > 0, "no redirects: {:?}", o.statuses);
        if is_plain {
            plain_302 += o.count(302);
            plain_rounds.push(Summary::of(&o));
        } else {
            ruled_rounds.push(Summary::of(&o));
        }
    }
    let p = median_of(&plain_rounds, |s| s.requests_per_sec);
    let r = median_of(&ruled_rounds, |s| s.requests_per_sec);
    for (name, rounds) in [
        ("plain links", &plain_rounds),
        ("five rules, none match", &ruled_rounds),
    ] {
        println!(
            "{:<34} {:>12} {:>12.0} {:>7} {:>9.3} {:>9.3} {:>9.3}",
            format!("{name}, 64 conns"),
            "",
            median_of(rounds, |s| s.requests_per_sec),
            "",
            median_of(rounds, |s| s.p50_ms),
            median_of(rounds, |s| s.p99_ms),
            median_of(rounds, |s| s.p999_ms),
        );
    }
    println!(
        "{:<34} {:>12} {:>12} {:>7.3}",
        "five rules / plain (req/s)",
        "",
        "",
        ratio(r, p)
    );
    let section = json!({
        "connections": 64,
        "plain_rps_median": round2(p),
        "five_rules_rps_median": round2(r),
        "ratio": round3(ratio(r, p)),
        "plain_p50_ms": median_of(&plain_rounds, |s| s.p50_ms),
        "five_rules_p50_ms": median_of(&ruled_rounds, |s| s.p50_ms),
        "plain_p99_ms": median_of(&plain_rounds, |s| s.p99_ms),
        "five_rules_p99_ms": median_of(&ruled_rounds, |s| s.p99_ms),
        "plain_rounds": plain_rounds.iter().map(Summary::to_json).collect::<Vec<_>>(),
        "five_rules_rounds": ruled_rounds.iter().map(Summary::to_json).collect::<Vec<_>>(),
    });
    Ok((section, plain_302))
}

/// Baseline against fleet with wrk (-t2 -c64), interleaved rounds, with
/// the answering process's CPU µs per request from /proc. Returns the
/// section and the fleet's redirects (clicks the totals check expects).
async fn wrk_rounds(
    fleet: &Fleet,
    wrk_bin: &std::path::Path,
    (baseline_addr, baseline_pid): (SocketAddr, Option<u32>),
    gateway: SocketAddr,
    profile: &Profile,
    codes: &[String],
) -> anyhow::Result<(Value, u64)> {
    let script = wrk::script(codes, USER_AGENT)?;
    let mut redirects = 0u64;
    let (mut base_runs, mut fleet_runs) = (Vec::new(), Vec::new());
    for is_baseline in alternating(profile.rounds) {
        settle(fleet).await;
        let (addr, pid) = if is_baseline {
            (baseline_addr, baseline_pid)
        } else {
            (gateway, fleet.pid("gateway"))
        };
        let cpu_before = cpu_secs(pid);
        let run = wrk::run(wrk_bin, addr, &script, 64, profile.step).await?;
        let cpu_us = cpu_us_per_request((cpu_before, cpu_secs(pid)), run.answered_ok());
        if is_baseline {
            base_runs.push((run, cpu_us));
        } else {
            anyhow::ensure!(run.answered_ok() > 0, "wrk: no redirects: {run:?}");
            // The bench's visitors are not bots: each 302 is a click.
            redirects += run.answered_ok();
            fleet_runs.push((run, cpu_us));
        }
    }
    let med = |runs: &[(wrk::WrkRun, f64)], f: fn(&(wrk::WrkRun, f64)) -> f64| {
        median(&runs.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0)
    };
    let (b, f) = (
        med(&base_runs, |r| r.0.requests_per_sec()),
        med(&fleet_runs, |r| r.0.requests_per_sec()),
    );
    let (b_us, f_us) = (med(&base_runs, |r| r.1), med(&fleet_runs, |r| r.1));
    let non_3xx: u64 = fleet_runs.iter().map(|r| r.0.non_3xx).sum();
    println!(
        "{:<34} {b:>12.0} {f:>12.0} {:>7.2} {:>9.3} {:>9.3} {:>9.3}",
        "wrk -t2 -c64 (closed)",
        ratio(f, b),
        med(&fleet_runs, |r| r.0.p50_us as f64 / 1000.0),
        med(&fleet_runs, |r| r.0.p99_us as f64 / 1000.0),
        med(&fleet_runs, |r| r.0.p999_us as f64 / 1000.0),
    );
    println!(
        "{:<34} {b_us:>12.2} {f_us:>12.2} {:>7.2}   non-3xx {non_3xx}",
        "  CPU µs per request (wrk)",
        ratio(f_us, b_us)
    );
    let runs = |runs: &[(wrk::WrkRun, f64)]| {
        runs.iter()
            .map(|(run, cpu)| {
                let mut j = run.to_json();
                j["cpu_us_per_request"] = json!(round2(*cpu));
                j
            })
            .collect::<Vec<_>>()
    };
    let section = json!({
        "connections": 64,
        "threads": 2,
        "baseline_rps_median": round2(b),
        "fleet_rps_median": round2(f),
        "ratio": round3(ratio(f, b)),
        "baseline_cpu_us_per_request_median": round2(b_us),
        "gateway_cpu_us_per_redirect_median": round2(f_us),
        "cpu_ratio": round3(ratio(f_us, b_us)),
        "fleet_non_3xx": non_3xx,
        "baseline_rounds": runs(&base_runs),
        "fleet_rounds": runs(&fleet_runs),
    });
    Ok((section, redirects))
}

/// Baseline against fleet at a fixed `rate` with oha (64 connections,
/// latency corrected), interleaved rounds: medians of p50/p99/p99.9 and
/// the non-3xx answers.
async fn oha_rounds(
    fleet: &Fleet,
    oha_bin: &std::path::Path,
    baseline: SocketAddr,
    gateway: SocketAddr,
    profile: &Profile,
    codes: &Arc<Vec<String>>,
    rate: u64,
) -> anyhow::Result<Value> {
    let (mut base_runs, mut fleet_runs) = (Vec::new(), Vec::new());
    // How busy the whole machine was during each round (oha included): a
    // fixed rate near what the machine can do queues, and the tail shows
    // it before throughput does.
    let (mut base_busy, mut fleet_busy) = (Vec::new(), Vec::new());
    for is_baseline in alternating(profile.rounds) {
        settle(fleet).await;
        let addr = if is_baseline { baseline } else { gateway };
        warm_up(addr, codes.len(), redirects(codes.clone(), USER_AGENT)).await?;
        let pattern = oha::url_pattern(addr, codes)?;
        let before = machine_ticks();
        let run = oha::run(oha_bin, &pattern, USER_AGENT, rate, 64, profile.step).await?;
        let busy = machine_shares_since(before).map(|shares| shares.busy);
        anyhow::ensure!(
            run.statuses.keys().any(|code| code.starts_with('3')),
            "oha: no redirects from {addr}: {:?}",
            run.statuses
        );
        if is_baseline {
            base_runs.push(run);
            base_busy.extend(busy);
        } else {
            fleet_runs.push(run);
            fleet_busy.extend(busy);
        }
    }
    let med = |runs: &[oha::OhaRun], f: fn(&oha::OhaRun) -> Option<f64>| {
        median(
            &runs
                .iter()
                .filter_map(f)
                .map(|s| s * 1000.0)
                .collect::<Vec<_>>(),
        )
        .unwrap_or(0.0)
    };
    // `None` for a side with no round (a single-round run).
    let achieved = |runs: &[oha::OhaRun]| {
        median(
            &runs
                .iter()
                .map(|r| r.summary.requests_per_sec)
                .collect::<Vec<_>>(),
        )
    };
    for (name, runs) in [("baseline", &base_runs), ("fleet", &fleet_runs)] {
        println!(
            "{:<34} {:>12} {:>12.0} {:>7} {:>9.3} {:>9.3} {:>9.3}",
            format!("oha {name} at {rate} req/s"),
            "",
            achieved(runs).unwrap_or(0.0),
            "",
            med(runs, |r| r.latency.p50),
            med(runs, |r| r.latency.p99),
            med(runs, |r| r.latency.p999),
        );
    }
    // A side that fell behind the rate measured its own queue: its
    // percentiles are then no tail to compare, and the run says so.
    let (base_share, fleet_share) = (
        achieved(&base_runs).and_then(|a| rate_share(a, rate)),
        achieved(&fleet_runs).and_then(|a| rate_share(a, rate)),
    );
    for (name, share) in [("baseline", base_share), ("fleet", fleet_share)] {
        if let Some(share) = share.filter(|s| *s < HELD_RATE) {
            println!(
                "{:<34} the {name} fell behind: {:.1}% of {rate} req/s, so its latencies are a queue's, not a tail",
                "  oha",
                share * 100.0
            );
        }
    }
    let fleet_non_3xx: u64 = fleet_runs.iter().map(oha::OhaRun::non_3xx).sum();
    let (base_busy, fleet_busy) = (median(&base_busy), median(&fleet_busy));
    let percent = |p: Option<f64>| p.map_or("unknown".into(), |p| format!("{p:.0}%"));
    println!(
        "{:<34} fleet non-3xx {fleet_non_3xx}; machine busy {} (baseline) and {} (fleet) of both CPUs",
        "  oha",
        percent(base_busy),
        percent(fleet_busy)
    );
    Ok(json!({
        "rate": rate,
        "connections": 64,
        "baseline_p50_ms": round3(med(&base_runs, |r| r.latency.p50)),
        "baseline_p99_ms": round3(med(&base_runs, |r| r.latency.p99)),
        "baseline_p999_ms": round3(med(&base_runs, |r| r.latency.p999)),
        "fleet_p50_ms": round3(med(&fleet_runs, |r| r.latency.p50)),
        "fleet_p99_ms": round3(med(&fleet_runs, |r| r.latency.p99)),
        "fleet_p999_ms": round3(med(&fleet_runs, |r| r.latency.p999)),
        "fleet_non_3xx": fleet_non_3xx,
        "baseline_rate_share": base_share.map(round3),
        "fleet_rate_share": fleet_share.map(round3),
        "fleet_held_rate": fleet_share.map(|s| s >= HELD_RATE),
        "baseline_machine_busy_percent": base_busy.map(round2),
        "fleet_machine_busy_percent": fleet_busy.map(round2),
        "baseline_rounds": base_runs.iter().map(oha::OhaRun::to_json).collect::<Vec<_>>(),
        "fleet_rounds": fleet_runs.iter().map(oha::OhaRun::to_json).collect::<Vec<_>>(),
    }))
}

/// This gateway against the `--gateway-before` one on the same plain
/// links (browser requests), interleaved rounds at 64 connections: req/s
/// and each gateway process's CPU µs per redirect. Returns the section and
/// both sides' 302s (clicks the totals check expects).
async fn this_gateway_vs_before(
    fleet: &Fleet,
    gateway: SocketAddr,
    before: SocketAddr,
    profile: &Profile,
    plain: Arc<Vec<String>>,
) -> anyhow::Result<(Value, u64)> {
    let mut redirects = 0u64;
    for addr in [gateway, before] {
        redirects += warm_up(addr, plain.len(), browser_redirects(plain.clone())).await?;
    }
    let (mut this_rounds, mut before_rounds) = (Vec::new(), Vec::new());
    let (mut this_cpu, mut before_cpu) = (Vec::new(), Vec::new());
    for is_this in alternating(profile.rounds + 1) {
        settle(fleet).await;
        let (addr, name) = if is_this {
            (gateway, "gateway")
        } else {
            (before, BEFORE)
        };
        let pid = fleet.pid(name);
        let cpu_before = cpu_secs(pid);
        let o = load::run(
            addr,
            Mode::Closed { connections: 64 },
            profile.step,
            browser_redirects(plain.clone()),
        )
        .await;
        let cpu = cpu_us_per_request((cpu_before, cpu_secs(pid)), o.count(302));
        anyhow::ensure!(o.count(302) > 0, "{name}: {:?}", o.statuses);
        redirects += o.count(302);
        if is_this {
            this_rounds.push(Summary::of(&o));
            this_cpu.push(cpu);
        } else {
            before_rounds.push(Summary::of(&o));
            before_cpu.push(cpu);
        }
    }
    let rps = |rounds: &[Summary]| median_of(rounds, |s| s.requests_per_sec);
    let (this_rps, before_rps) = (rps(&this_rounds), rps(&before_rounds));
    let median_us = |v: &[f64]| median(v).unwrap_or(0.0);
    let (this_us, before_us) = (median_us(&this_cpu), median_us(&before_cpu));
    for (name, r, us) in [
        ("this gateway, plain links", this_rps, this_us),
        ("gateway before, plain links", before_rps, before_us),
    ] {
        println!(
            "{name:<34} {:>12} {r:>12.0} {:>7} {us:>8.2} µs CPU/redirect",
            "", ""
        );
    }
    println!(
        "{:<34} {:>12} {:>12} {:>7.3} (req/s)  CPU/redirect ratio {:.3}",
        "this / before",
        "",
        "",
        ratio(this_rps, before_rps),
        ratio(this_us, before_us)
    );
    let section = json!({
        "connections": 64,
        "this_rps_median": round2(this_rps),
        "before_rps_median": round2(before_rps),
        "rps_ratio": round3(ratio(this_rps, before_rps)),
        "this_cpu_us_per_redirect_median": round2(this_us),
        "before_cpu_us_per_redirect_median": round2(before_us),
        "cpu_ratio": round3(ratio(this_us, before_us)),
        "this_cpu_us_rounds": this_cpu.iter().map(|v| round2(*v)).collect::<Vec<_>>(),
        "before_cpu_us_rounds": before_cpu.iter().map(|v| round2(*v)).collect::<Vec<_>>(),
        "this_rounds": this_rounds.iter().map(Summary::to_json).collect::<Vec<_>>(),
        "before_rounds": before_rounds.iter().map(Summary::to_json).collect::<Vec<_>>(),
    });
    Ok((section, redirects))
}

async fn create_links(fleet: &Fleet, key: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let http = reqwest::Client::new();
    let mut codes = Vec::with_capacity(n);
    for i in 0..n {
        let link: Value = http
            .post(format!("{}/api/v1/links", fleet.gateway_url))
            .bearer_auth(key)
            .json(&json!({"url": format!("https://example.com/landing/page/{i:05}?utm={}", &fleet.id[..8])}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        codes.push(link["code"].as_str().context("no code")?.to_owned());
    }
    Ok(codes)
}

fn usage(fleet: &Fleet) -> Vec<(&'static str, ProcessUse)> {
    SERVICES
        .iter()
        .filter_map(|svc| Some((*svc, process_use(fleet.pid(svc)?)?)))
        .collect()
}

async fn measure(
    fleet: &mut Fleet,
    profile: &Profile,
    args: &Args,
    before: Option<&str>,
) -> anyhow::Result<Value> {
    let machine_before = machine_ticks();
    let idle = usage(fleet);
    let idle_rss: f64 = idle.iter().map(|(_, u)| u.rss_mib).sum();
    let key = fleet.create_key("bench", "bench")?;
    let codes = Arc::new(create_links(fleet, &key, profile.links).await?);
    let ruled = Arc::new(create_rule_links(fleet, &key, profile.links).await?);
    let (mut baseline, baseline_addr) = start_baseline(fleet).await?;
    let gateway = gateway_addr(fleet)?;
    // The click pipeline's CPU per click is read over the redirect steps
    // only (no creates yet), ending once every click is stored.
    let pipeline_before = (
        pipeline_cpu(fleet),
        redirects_sent(fleet, before.is_some()).await?,
    );
    let mut fleet_redirects = 0u64;
    // Warm every cache level once.
    fleet_redirects += warm_up(gateway, codes.len(), redirects(codes.clone(), USER_AGENT)).await?;

    let mut sections = serde_json::Map::new();
    println!(
        "{:<34} {:>12} {:>12} {:>7} {:>9} {:>9} {:>9}",
        "step", "baseline/s", "fleet/s", "ratio", "p50 ms", "p99 ms", "p99.9 ms"
    );
    for connections in [64usize, 256] {
        let (mut base_rounds, mut fleet_rounds) = (Vec::new(), Vec::new());
        // CPU µs per redirect of the answering process (baseline: 301s,
        // gateway: 302s), from /proc around each round.
        let (mut base_cpu, mut fleet_cpu) = (Vec::new(), Vec::new());
        for is_baseline in alternating(profile.rounds) {
            settle(fleet).await;
            let (addr, pid) = if is_baseline {
                (baseline_addr, baseline.id())
            } else {
                (gateway, fleet.pid("gateway"))
            };
            let cpu_before = cpu_secs(pid);
            let o = load::run(
                addr,
                Mode::Closed { connections },
                profile.step,
                redirects(codes.clone(), USER_AGENT),
            )
            .await;
            let cpu_us =
                cpu_us_per_request((cpu_before, cpu_secs(pid)), o.count(301).max(o.count(302)));
            if is_baseline {
                base_cpu.push(cpu_us);
                base_rounds.push(Summary::of(&o));
            } else {
                fleet_cpu.push(cpu_us);
                fleet_redirects += o.count(302);
                anyhow::ensure!(
                    o.count(302) > 0,
                    "the fleet answered no redirects: {:?}",
                    o.statuses
                );
                fleet_rounds.push(Summary::of(&o));
            }
        }
        let b = median_of(&base_rounds, |s| s.requests_per_sec);
        let f = median_of(&fleet_rounds, |s| s.requests_per_sec);
        println!(
            "{:<34} {:>12.0} {:>12.0} {:>7.2} {:>9.3} {:>9.3} {:>9.3}",
            format!("redirects, {connections} conns (closed)"),
            b,
            f,
            ratio(f, b),
            median_of(&fleet_rounds, |s| s.p50_ms),
            median_of(&fleet_rounds, |s| s.p99_ms),
            median_of(&fleet_rounds, |s| s.p999_ms),
        );
        let (b_us, f_us) = (
            median(&base_cpu).unwrap_or(0.0),
            median(&fleet_cpu).unwrap_or(0.0),
        );
        println!(
            "{:<34} {b_us:>12.2} {f_us:>12.2} {:>7.2}",
            "  CPU µs per redirect",
            ratio(f_us, b_us)
        );
        sections.insert(
            format!("redirect_saturation_{connections}c"),
            json!({
                "baseline_rps_median": round2(b),
                "fleet_rps_median": round2(f),
                "ratio": round2(ratio(f, b)),
                "baseline_cpu_us_per_redirect_median": round2(b_us),
                "gateway_cpu_us_per_redirect_median": round2(f_us),
                "cpu_ratio": round2(ratio(f_us, b_us)),
                "baseline_rounds": base_rounds.iter().map(Summary::to_json).collect::<Vec<_>>(),
                "fleet_rounds": fleet_rounds.iter().map(Summary::to_json).collect::<Vec<_>>(),
            }),
        );
    }

    if let Some(wrk) = &args.wrk {
        let (section, redirects) = wrk_rounds(
            fleet,
            wrk,
            (baseline_addr, baseline.id()),
            gateway,
            profile,
            &codes,
        )
        .await?;
        fleet_redirects += redirects;
        sections.insert("wrk_saturation_64c".into(), section);
    }

    // Redirect rules' cost: the same fleet, plain links against five rules.
    let (rules_section, plain_302) =
        rules_vs_plain(fleet, gateway, profile, codes.clone(), ruled.clone()).await?;
    fleet_redirects += plain_302;
    sections.insert("redirect_rules_vs_plain".into(), rules_section);

    if let Some(before_url) = before {
        let before_addr = before_url.trim_start_matches("http://").parse()?;
        let (section, redirects) =
            this_gateway_vs_before(fleet, gateway, before_addr, profile, codes.clone()).await?;
        fleet_redirects += redirects;
        sections.insert("gateway_vs_before".into(), section);
    }

    // Let the click pipeline catch up first: its backlog would otherwise
    // steal the CPU the latency step is measuring (for both sides).
    // Read before polling the stats (those queries are PostgreSQL work
    // too), once the pipeline went quiet.
    settle(fleet).await;
    sections.insert(
        "click_pipeline_cpu".into(),
        pipeline_per_click(
            pipeline_before,
            (
                pipeline_cpu(fleet),
                redirects_sent(fleet, before.is_some()).await?,
            ),
        ),
    );
    count_clicks(fleet, &key, &codes, fleet_redirects).await?;

    // Fixed-rate latency, coordinated omission corrected.
    let mode = Mode::Open {
        connections: 64,
        rate: args.rate,
    };
    let base = Summary::of(
        &load::run(
            baseline_addr,
            mode,
            profile.step,
            redirects(codes.clone(), USER_AGENT),
        )
        .await,
    );
    let fleet_open = load::run(
        gateway,
        mode,
        profile.step,
        redirects(codes.clone(), USER_AGENT),
    )
    .await;
    let fl = Summary::of(&fleet_open);
    for (name, s) in [("baseline", &base), ("fleet", &fl)] {
        println!(
            "{:<34} {:>12} {:>12.0} {:>7} {:>9.3} {:>9.3} {:>9.3}",
            format!("{name} at {} req/s (open)", args.rate),
            "",
            s.requests_per_sec,
            "",
            s.p50_ms,
            s.p99_ms,
            s.p999_ms
        );
    }
    sections.insert(
        "redirect_latency_fixed_rate".into(),
        json!({"rate": args.rate, "baseline": base.to_json(), "fleet": fl.to_json()}),
    );
    if let Some(oha_bin) = &args.oha {
        let section = oha_rounds(
            fleet,
            oha_bin,
            baseline_addr,
            gateway,
            profile,
            &codes,
            args.rate,
        )
        .await?;
        sections.insert("oha_fixed_rate".into(), section);
    }
    let _ = baseline.kill().await;

    // Creates: unique URLs, the bench tier so the limiter is not the bottleneck.
    let run_id = fleet.id.clone();
    let auth = format!("Bearer {key}");
    let creates: RequestFactory = Arc::new(move |conn, seq| {
        Request::builder()
            .method(Method::POST)
            .uri("/api/v1/links")
            .header(header::HOST, "127.0.0.1")
            .header(header::AUTHORIZATION, auth.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(format!(
                r#"{{"url":"https://example.com/c/{run_id}/{conn}/{seq}"}}"#
            ))))
            .expect("static request parts")
    });
    let created = load::run(
        gateway,
        Mode::Closed { connections: 32 },
        profile.step,
        creates,
    )
    .await;
    let cs = Summary::of(&created);
    let created_per_sec = created.count(201) as f64 / created.elapsed.as_secs_f64();
    println!(
        "{:<34} {:>12} {:>12.0} {:>7} {:>9.3} {:>9.3} {:>9.3}",
        "creates, 32 conns (closed)", "", created_per_sec, "", cs.p50_ms, cs.p99_ms, cs.p999_ms
    );
    sections.insert("creates".into(), json!({"created_per_sec": round2(created_per_sec), "statuses": created.statuses, "summary": cs.to_json()}));

    // Clicks: every 302 the gateways sent must be counted once in
    // analytics. The gateways' own counts, not the load generators': a
    // closed-loop generator stops with requests in flight that the gateway
    // still answers (and counts as clicks) but the generator never saw.
    let sent = redirects_sent(fleet, before.is_some()).await?;
    let fleet_redirects = sent as u64;
    let every_code: Vec<String> = codes.iter().chain(ruled.iter()).cloned().collect();
    let (counted, waited) = count_clicks(fleet, &key, &every_code, fleet_redirects).await?;
    println!(
        "clicks: {fleet_redirects} redirects (the gateways' count), {counted} counted in analytics after {:.1} s: lost {}, duplicated {}",
        waited.as_secs_f64(),
        fleet_redirects.saturating_sub(counted),
        counted.saturating_sub(fleet_redirects),
    );
    sections.insert(
        "clicks".into(),
        json!({
            "redirects": fleet_redirects,
            "counted": counted,
            "lost": fleet_redirects.saturating_sub(counted),
            "duplicated": counted.saturating_sub(fleet_redirects),
            "drain_secs": round2(waited.as_secs_f64()),
        }),
    );

    // Cache levels and the resolver's own latency, from the services' metrics.
    let hit_ratio = |hits: f64, misses: f64| {
        if hits + misses > 0.0 {
            hits / (hits + misses)
        } else {
            0.0
        }
    };
    let gw_hit = fleet
        .metric(
            "gateway",
            "shortfleet_cache_requests_total",
            &["level=\"gateway\"", "result=\"hit\""],
        )
        .await?;
    let gw_miss = fleet
        .metric(
            "gateway",
            "shortfleet_cache_requests_total",
            &["level=\"gateway\"", "result=\"miss\""],
        )
        .await?;
    let local_hit = fleet
        .metric(
            "read-svc",
            "shortfleet_cache_requests_total",
            &["level=\"local\"", "result=\"hit\""],
        )
        .await?;
    let local_miss = fleet
        .metric(
            "read-svc",
            "shortfleet_cache_requests_total",
            &["level=\"local\"", "result=\"miss\""],
        )
        .await?;
    let read_metrics = reqwest::get(format!("{}/metrics", fleet.ops_urls["read-svc"]))
        .await?
        .text()
        .await?;
    let resolve_p99_ms = shortfleet_bench::stats::histogram_quantile(
        &read_metrics,
        "shortfleet_resolve_duration_seconds",
        0.99,
    )
    .map(|s| s * 1000.0);
    let resolves = shortfleet_e2e::sum_metric(
        &read_metrics,
        "shortfleet_resolve_duration_seconds_count",
        &[],
    );
    println!(
        "caches: gateway micro-cache hit ratio {:.4} ({} lookups); read-svc local hit ratio {:.4}; {resolves} Resolve calls, p99 {}",
        hit_ratio(gw_hit, gw_miss),
        gw_hit + gw_miss,
        hit_ratio(local_hit, local_miss),
        resolve_p99_ms.map_or("n/a".to_owned(), |ms| format!("{ms:.3} ms")),
    );
    sections.insert(
        "caches".into(),
        json!({
            "gateway_hit_ratio": hit_ratio(gw_hit, gw_miss),
            "gateway_lookups": gw_hit + gw_miss,
            "read_svc_local_hit_ratio": hit_ratio(local_hit, local_miss),
            "resolve_calls": resolves,
            "resolve_p99_ms": resolve_p99_ms,
        }),
    );

    sections.insert(
        "resolve".into(),
        resolve_cost(fleet, &codes, profile.step).await?,
    );

    let busy = usage(fleet);
    println!(
        "\n{:<14} {:>10} {:>12} {:>9}",
        "service", "idle MiB", "peak MiB", "CPU s"
    );
    let mut resources = serde_json::Map::new();
    for (svc, u) in &busy {
        let idle_mib = idle
            .iter()
            .find(|(s, _)| s == svc)
            .map_or(0.0, |(_, u)| u.rss_mib);
        println!(
            "{svc:<14} {idle_mib:>10.1} {:>12.1} {:>9.1}",
            u.peak_rss_mib, u.cpu_secs
        );
        resources.insert((*svc).into(), json!({"idle_rss_mib": round2(idle_mib), "peak_rss_mib": round2(u.peak_rss_mib), "cpu_secs": round2(u.cpu_secs)}));
    }
    println!("{:<14} {idle_rss:>10.1}", "all, idle");
    sections.insert("resources".into(), Value::Object(resources));
    sections.insert("idle_rss_mib_total".into(), json!(round2(idle_rss)));
    let steal = machine_shares_since(machine_before).map(|shares| shares.steal);
    let mut machine = machine_section(&sections, steal);
    machine.insert("date".into(), json!(chrono::Utc::now().to_rfc3339()));
    machine.insert(
        "profile".into(),
        json!(if args.full { "full" } else { "quick" }),
    );
    sections.insert("machine".into(), Value::Object(machine));
    let verdicts = targets::judge(&sections);
    print_targets(&verdicts);
    sections.insert("targets".into(), targets::to_json(&verdicts));
    Ok(Value::Object(sections))
}

/// The issue's targets as this run measured them, last, so a run says
/// for itself whether it meets them all.
fn print_targets(verdicts: &[targets::Verdict]) {
    println!();
    println!(
        "{:<54} {:>22} {:>14}  verdict",
        "target (issue 17)", "measured", "asked"
    );
    for v in verdicts {
        println!(
            "{:<54} {:>22} {:>14}  {}",
            v.name,
            v.measured,
            v.target,
            v.word()
        );
    }
    println!(
        "all targets met in this run: {}",
        targets::summary(verdicts)
    );
}

/// What the run's figures depend on besides the code, printed and
/// returned: the CPU, how much of the machine's time the host took
/// (steal), and the click pipeline's CPU per click in units of the bare
/// server's CPU per redirect, a figure that moves less from one machine
/// to another than microseconds do.
fn machine_section(
    sections: &serde_json::Map<String, Value>,
    steal: Option<f64>,
) -> serde_json::Map<String, Value> {
    let model = cpu_model();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let figure = |section: &str, field: &str| sections.get(section)?[field].as_f64();
    let per_click = figure("click_pipeline_cpu", "total_cpu_us_per_click");
    let bare_redirect = figure(
        "redirect_saturation_64c",
        "baseline_cpu_us_per_redirect_median",
    )
    .filter(|us| *us > 0.0);
    let in_bare_redirects = per_click.zip(bare_redirect).map(|(c, b)| c / b);
    println!(
        "machine: {model}, {nproc} CPUs; steal {} of all CPU time during the run; click pipeline per click = {} bare redirects' CPU",
        steal.map_or("unknown".into(), |s| format!("{s:.1}%")),
        in_bare_redirects.map_or("unknown".into(), |r| format!("{r:.2}")),
    );
    let mut machine = serde_json::Map::new();
    machine.insert("cpu_model".into(), json!(model));
    machine.insert("nproc".into(), json!(nproc));
    machine.insert("steal_percent".into(), json!(steal.map(round2)));
    machine.insert(
        "pipeline_cpu_per_click_in_bare_redirects".into(),
        json!(in_bare_redirects.map(round2)),
    );
    machine
}

/// read-svc's CPU per `Resolve`: a gateway of its own with the micro-cache
/// off turns every redirect into one `Resolve` call; read-svc's CPU over the
/// round divided by the calls it counted.
async fn resolve_cost(
    fleet: &mut Fleet,
    codes: &Arc<Vec<String>>,
    step: Duration,
) -> anyhow::Result<Value> {
    const NAME: &str = "gateway-nocache";
    let binary = fleet.bin("gateway");
    let base = fleet
        .start_gateway_replica_with(NAME, &binary, &[("SHORTFLEET_MICROCACHE_CAPACITY", "0")])
        .await?;
    let addr: SocketAddr = base.trim_start_matches("http://").parse()?;
    let pid = fleet.pid("read-svc");
    let calls = |text: &str| {
        shortfleet_e2e::sum_metric(text, "shortfleet_resolve_duration_seconds_count", &[])
    };
    let (cpu_before, calls_before) = (cpu_secs(pid), calls(&fleet.metrics_text("read-svc").await?));
    let run = load::run(
        addr,
        Mode::Closed { connections: 64 },
        step,
        redirects(codes.clone(), USER_AGENT),
    )
    .await;
    let (cpu_after, calls_after) = (cpu_secs(pid), calls(&fleet.metrics_text("read-svc").await?));
    fleet.stop(NAME).await?;
    let resolves = calls_after - calls_before;
    let us = cpu_us_per_request((cpu_before, cpu_after), resolves as u64);
    let per_sec = resolves / run.elapsed.as_secs_f64();
    println!(
        "read-svc: {us:.1} µs CPU per Resolve ({resolves} calls at {per_sec:.0}/s, micro-cache off); {:.0} Resolve/s per core",
        1e6 / us
    );
    Ok(json!({
        "cpu_us_per_resolve": round2(us),
        "resolves": resolves,
        "resolves_per_sec": round2(per_sec),
        "resolves_per_core_sec": round2(1e6 / us),
        "statuses": run.statuses,
    }))
}

/// The 302s the fleet's gateways (and the `--gateway-before` one) answered
/// so far, by their own count.
async fn redirects_sent(fleet: &Fleet, with_before: bool) -> anyhow::Result<f64> {
    let mut gateways = vec!["gateway"];
    if with_before {
        gateways.push(BEFORE);
    }
    let mut sent = 0.0;
    for gw in gateways {
        sent += fleet
            .metric(
                gw,
                "shortfleet_http_requests_total",
                &["endpoint=\"redirect\"", "status=\"302\""],
            )
            .await?;
    }
    Ok(sent)
}

/// CPU µs per click of each pipeline stage between two readings of
/// [`pipeline_cpu`] and the gateways' redirect counts; printed and returned.
fn pipeline_per_click(
    (cpu0, sent0): ([(&'static str, f64); 4], f64),
    (cpu1, sent1): ([(&'static str, f64); 4], f64),
) -> Value {
    let clicks = (sent1 - sent0).max(0.0) as u64;
    let mut stages = serde_json::Map::new();
    let mut total = 0.0;
    let mut line = String::new();
    for ((stage, before), (_, after)) in cpu0.iter().zip(cpu1.iter()) {
        let us = cpu_us_per_request((*before, *after), clicks);
        total += us;
        line.push_str(&format!(" {stage} {us:.2}"));
        stages.insert((*stage).into(), json!(round2(us)));
    }
    println!("click pipeline CPU µs per click over {clicks} clicks:{line}; total {total:.2}");
    json!({"clicks": clicks, "cpu_us_per_click": stages, "total_cpu_us_per_click": round2(total)})
}

/// The click pipeline's stages and the CPU seconds each has used so far:
/// click-logger and analytics-svc (their processes), RabbitMQ (`beam.smp`)
/// and PostgreSQL (every backend).
fn pipeline_cpu(fleet: &Fleet) -> [(&'static str, f64); 4] {
    [
        ("click-logger", cpu_secs(fleet.pid("click-logger"))),
        ("rabbitmq", cpu_secs_named("beam.smp")),
        ("analytics-svc", cpu_secs(fleet.pid("analytics-svc"))),
        ("postgresql", cpu_secs_named("postgres")),
    ]
}

/// Asks for each of `codes` codes twice (`requests` cycles through them),
/// spread over half a second from 8 connections, so the round that follows
/// finds every cache warm; the 302s it got. Before each fixed-rate round
/// too, on both sides alike: the gateway's micro-cache is empty after any
/// pause longer than its TTL (5 s), and every fleet round follows one (the
/// settling, the baseline's round), so each began with a miss per code at
/// once, which put about 1 % of a 10 s round's redirects behind read-svc
/// calls, tens of ms: the round's whole p99 (BENCHMARKS.md). The
/// in-process open-loop round, after the long click count, still starts
/// cold. An open loop at a modest rate: twice the codes in clicks, no
/// backlog for the pipeline to work off during the round.
async fn warm_up(addr: SocketAddr, codes: usize, requests: RequestFactory) -> anyhow::Result<u64> {
    let rate = (codes as u64).max(1) * 4;
    let warm = load::run(
        addr,
        Mode::Open {
            connections: 8,
            rate,
        },
        Duration::from_millis(500),
        requests,
    )
    .await;
    anyhow::ensure!(
        warm.statuses
            .keys()
            .any(|status| (300..400).contains(status)),
        "{addr}: no redirects while warming up: {:?}",
        warm.statuses
    );
    Ok(warm.count(302))
}

/// The side that runs (`true`: the first one named) in each step of
/// `rounds` rounds of two: which side goes first alternates every round, so
/// drift over the run hits both sides alike.
fn alternating(rounds: usize) -> impl Iterator<Item = bool> {
    (0..rounds).flat_map(|round| [round % 2 == 0, round % 2 == 1])
}

/// Waits (at most 60 s) until the click pipeline is idle: the gateway's
/// buffer is empty, analytics-svc stored nothing new for 500 ms and has
/// folded every stored batch into the rollups (so the pipeline's CPU
/// includes the fold, and stats are complete). Each
/// round then starts on a quiet machine instead of paying for the previous
/// fleet round's backlog (which once made the baseline look 40 % slower).
async fn settle(fleet: &Fleet) {
    let started = Instant::now();
    let mut last = f64::NAN;
    let mut quiet_polls = 0;
    while started.elapsed() < Duration::from_secs(60) && quiet_polls < 2 {
        let buffered = fleet
            .metric("gateway", "shortfleet_click_buffer_depth", &[])
            .await
            .unwrap_or(0.0);
        let mut seen = 0.0;
        for metric in [
            "shortfleet_clicks_stored_total",
            "shortfleet_clicks_duplicates_total",
        ] {
            seen += fleet
                .metric("analytics-svc", metric, &[])
                .await
                .unwrap_or(0.0);
        }
        // Absent (a build before folding): nothing ever waits.
        let unfolded = fleet
            .metric("analytics-svc", "shortfleet_rollup_pending_batches", &[])
            .await
            .unwrap_or(0.0);
        quiet_polls = if buffered == 0.0 && unfolded == 0.0 && seen == last {
            quiet_polls + 1
        } else {
            0
        };
        last = seen;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Polls analytics until the counted clicks reach `expected` (or stop
/// growing for 10 s); returns the count and how long it took.
async fn count_clicks(
    fleet: &Fleet,
    key: &str,
    codes: &[String],
    expected: u64,
) -> anyhow::Result<(u64, Duration)> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let from = (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut last = (0u64, Instant::now());
    loop {
        let mut total = 0u64;
        for code in codes {
            let stats: Value = http
                .get(format!("{}/api/v1/links/{code}/stats", fleet.gateway_url))
                .query(&[
                    ("from", from.as_str()),
                    ("to", to.as_str()),
                    ("interval", "hour"),
                ])
                .bearer_auth(key)
                .send()
                .await?
                .json()
                .await?;
            total += stats["total"].as_u64().unwrap_or(0) + stats["bots"].as_u64().unwrap_or(0);
        }
        if total >= expected {
            return Ok((total, started.elapsed()));
        }
        if total > last.0 {
            last = (total, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10)
            || started.elapsed() > Duration::from_secs(120)
        {
            return Ok((total, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
