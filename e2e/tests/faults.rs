//! Faults across real processes: analytics-svc killed with SIGKILL while
//! clicks stream in, then restarted: every click is counted exactly once.

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode, redirect::Policy};
use serde_json::{Value, json};
use shortfleet_e2e::{Fleet, FleetOptions, get_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_killed_mid_stream_loses_and_duplicates_nothing() {
    let mut fleet = Fleet::start(FleetOptions {
        gateway_env: vec![("SHORTFLEET_ANONYMOUS_LIMIT".into(), "100000/60".into())],
        // Small batches so a kill lands between commits.
        all_env: vec![("SHORTFLEET_BATCH_MAX".into(), "20".into())],
        ..Default::default()
    })
    .await
    .expect("fleet starts");
    let result = run(&mut fleet).await;
    if result.is_err() {
        eprintln!(
            "--- analytics-svc ---\n{}",
            fleet.log_tail("analytics-svc", 20)
        );
    }
    fleet.shutdown().await.unwrap();
    result.unwrap();
}

async fn run(fleet: &mut Fleet) -> anyhow::Result<()> {
    let http = Client::builder()
        .user_agent("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0")
        .redirect(Policy::none())
        .build()?;
    let base = fleet.gateway_url.clone();
    let key = fleet.create_key("alice", "free")?;
    let link: Value = http
        .post(format!("{base}/api/v1/links"))
        .bearer_auth(&key)
        .json(&json!({"url": "https://example.com/killed"}))
        .send()
        .await?
        .json()
        .await?;
    let code = link["code"].as_str().unwrap().to_owned();
    let total = || {
        let (http, base, key, code) = (http.clone(), base.clone(), key.clone(), code.clone());
        async move {
            let stats: Value =
                get_json(&http, &format!("{base}/api/v1/links/{code}/stats"), &key).await?;
            anyhow::Ok(stats["total"].as_u64())
        }
    };
    let sent = 600u64;
    for i in 0..sent {
        let r = http.get(format!("{base}/{code}")).send().await?;
        anyhow::ensure!(
            r.status() == StatusCode::FOUND,
            "redirect {i}: {}",
            r.status()
        );
        // Kill analytics once it has started storing this stream.
        if i == sent / 2 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while total().await?.unwrap_or(0) == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            fleet.kill("analytics-svc").await?;
        }
    }
    fleet.spawn("analytics-svc")?;
    fleet
        .wait_ready("analytics-svc", Duration::from_secs(30))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counted = total().await?.unwrap_or(0);
        if counted >= sent || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reaching `sent` proves nothing was lost; a duplicate (a redelivered
    // batch counted twice) would land after that, and nothing signals "no
    // more deliveries", so give redelivery a short window to show one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        total().await?,
        Some(sent),
        "every click exactly once after the kill"
    );
    Ok(())
}
