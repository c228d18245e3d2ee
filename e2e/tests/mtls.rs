//! The fleet with mutual TLS on every internal hop, as the prod overlay runs
//! it: material minted by `deploy/tls/mint` (the operator's path), a link
//! created, followed and counted through every service over TLS, and
//! Python grpcio (e2e/outside/mtls_probe.py) checking who gets a handshake
//! and which caller may call which method.

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use reqwest::{StatusCode, redirect::Policy};
use serde_json::{Value, json};
use shortfleet_e2e::{Fleet, FleetOptions, get_json, tools_python, workspace_root};

fn mint(dir: &Path) {
    let out = Command::new(workspace_root().join("deploy/tls/mint"))
        .arg(dir)
        .output()
        .expect("running deploy/tls/mint");
    assert!(
        out.status.success(),
        "deploy/tls/mint failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_internal_hop_is_mutual_tls_and_callers_are_known() {
    let python = tools_python();
    let scratch = std::env::temp_dir().join(format!("sf-mtls-{}", uuid::Uuid::new_v4().simple()));
    let (tls, rogue) = (scratch.join("fleet"), scratch.join("rogue"));
    mint(&tls);
    mint(&rogue);
    let fleet = Fleet::start(FleetOptions {
        gateway_env: vec![("SHORTFLEET_ANONYMOUS_LIMIT".into(), "100000/60".into())],
        tls_dir: Some(tls.clone()),
        ..Default::default()
    })
    .await
    .expect("the fleet starts with mutual TLS");

    let flows = through_the_gateway(&fleet).await;
    let servers = ["write-svc", "read-svc", "click-logger", "analytics-svc"]
        .iter()
        .map(|svc| format!("{svc}={}", fleet.grpc_addrs[svc]))
        .collect::<Vec<_>>()
        .join(",");
    let script = workspace_root().join("e2e/outside/mtls_probe.py");
    let (tls_env, rogue_env) = (tls.clone(), rogue.clone());
    let probe = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("SHORTFLEET_TLS_DIR", tls_env)
            .env("SHORTFLEET_ROGUE_TLS_DIR", rogue_env)
            .env("SHORTFLEET_GRPC_SERVERS", servers)
            .output()
    })
    .await
    .expect("joined")
    .expect("running the grpcio probe");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&probe.stdout),
        String::from_utf8_lossy(&probe.stderr)
    );
    let logs: String = shortfleet_e2e::SERVICES
        .iter()
        .map(|svc| format!("--- {svc}\n{}\n", fleet.log_tail(svc, 10)))
        .collect();
    fleet.shutdown().await.expect("fleet stops");
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{report}");
    flows.unwrap_or_else(|e| panic!("flows over mTLS: {e:#}\n{logs}"));
    assert!(
        probe.status.success(),
        "the grpcio probe found problems:\n{report}\n{logs}"
    );
    assert!(report.contains("mtls_probe: all checks passed"), "{report}");
}

/// Create (gateway → write-svc), redirect (gateway → read-svc → write-svc),
/// the click (gateway → click-logger → RabbitMQ → analytics-svc) and its
/// count (gateway → analytics-svc): every hop over mutual TLS.
async fn through_the_gateway(fleet: &Fleet) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .user_agent("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0")
        .redirect(Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?;
    let base = &fleet.gateway_url;
    let key = fleet.create_key("tls-owner", "free")?;
    let created = http
        .post(format!("{base}/api/v1/links"))
        .bearer_auth(&key)
        .json(&json!({"url": "https://example.com/over-tls"}))
        .send()
        .await?;
    anyhow::ensure!(
        created.status() == StatusCode::CREATED,
        "create: {}",
        created.status()
    );
    let link: Value = created.json().await?;
    let code = link["code"].as_str().unwrap_or_default().to_owned();

    let followed = http.get(format!("{base}/{code}")).send().await?;
    anyhow::ensure!(
        followed.status() == StatusCode::FOUND,
        "redirect: {}",
        followed.status()
    );
    anyhow::ensure!(
        followed.headers()["location"] == "https://example.com/over-tls",
        "redirect target"
    );

    let since = Instant::now();
    loop {
        let stats = get_json(&http, &format!("{base}/api/v1/links/{code}/stats"), &key).await?;
        if stats["total"] == 1 {
            return Ok(());
        }
        anyhow::ensure!(
            since.elapsed() < Duration::from_secs(10),
            "the click was not counted within 10 s: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
