//! The dashboard (`/app/`) judged by a real browser: Debian's Chromium and
//! chromedriver, driven by Python selenium (pinned in
//! deploy/local/requirements-tools.txt, installed with Chromium by
//! deploy/local/tools). The script (`e2e/outside/dashboard.py`) gets the
//! gateway URL and a fresh key; it signs in, shortens, opens the link's
//! view, makes redirects from outside the browser and watches the counts
//! rise live, edits, deletes, signs out, and checks the console stayed
//! clean. It saves the screenshots the README shows (`docs/screenshots/`).

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use shortfleet_e2e::{Fleet, FleetOptions, tools_python, workspace_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_signs_in_shortens_watches_clicks_live_edits_and_deletes() {
    let python = tools_python();
    let fleet = Fleet::start(FleetOptions {
        gateway_env: vec![("SHORTFLEET_ANONYMOUS_LIMIT".into(), "100000/60".into())],
        ..Default::default()
    })
    .await
    .expect("fleet starts");
    let key = fleet.create_key("dashboard-owner", "premium").expect("key");
    let script = workspace_root().join("e2e/outside/dashboard.py");
    let shots = workspace_root().join("docs/screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    let gateway = fleet.gateway_url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("SHORTFLEET_GATEWAY_URL", gateway)
            .env("SHORTFLEET_API_KEY", key)
            .env("SHORTFLEET_SCREENSHOTS", shots)
            .output()
    })
    .await
    .expect("joined")
    .expect("running the browser script");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = format!(
        "--- gateway\n{}\n--- analytics-svc\n{}\n",
        fleet.log_tail("gateway", 15),
        fleet.log_tail("analytics-svc", 10)
    );
    fleet.shutdown().await.expect("fleet stops");
    println!("{report}");
    assert!(
        out.status.success(),
        "the browser found problems:\n{report}\n{logs}"
    );
    assert!(
        report.contains("dashboard: all checks passed"),
        "the script did not finish its checks:\n{report}"
    );
}
