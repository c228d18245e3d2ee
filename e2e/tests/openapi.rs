//! The REST API held to its OpenAPI document by a client no one here wrote:
//! schemathesis (pinned in deploy/local/requirements-tools.txt) reads
//! `/api/v1/openapi.json` from the real fleet and runs every check in every
//! phase (examples, coverage, fuzzing, and stateful create → read → patch →
//! delete sequences through the document's links), NUL bytes allowed in
//! generated strings. Zero failures; a fixed seed keeps CI reproducible
//! (`SHORTFLEET_SCHEMATHESIS_SEED` picks another, `..._EXAMPLES` the budget).

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use shortfleet_e2e::{Fleet, FleetOptions, tools_python, workspace_root};

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let python = tools_python();
    let bin = python.parent().expect("python sits in bin/").to_path_buf();
    // Limits are lifted so the fuzzer measures the contract, not our
    // patience; the limiter has its own tests.
    let unlimited = |k: &str| (k.to_owned(), "100000000/60".to_owned());
    let fleet = Fleet::start(FleetOptions {
        gateway_env: vec![
            unlimited("SHORTFLEET_TIER_PREMIUM"),
            unlimited("SHORTFLEET_ANONYMOUS_LIMIT"),
            unlimited("SHORTFLEET_AUTH_FAILURE_LIMIT"),
        ],
        ..Default::default()
    })
    .await
    .expect("fleet starts");
    let key = fleet.create_key("schemathesis", "premium").expect("a key");

    // The document itself first: valid OpenAPI 3.1.
    let doc = workspace_root().join("gateway/openapi.json");
    let validated = Command::new(bin.join("openapi-spec-validator"))
        .arg(&doc)
        .output()
        .expect("running openapi-spec-validator");
    assert!(
        validated.status.success(),
        "openapi-spec-validator:\n{}",
        String::from_utf8_lossy(&validated.stdout)
    );

    let report_dir = fleet.log_path().join("schemathesis");
    let config = workspace_root().join("e2e/outside/schemathesis.toml");
    let args: Vec<String> = vec![
        "--config-file".into(),
        config.display().to_string(),
        "run".into(),
        format!("{}/api/v1/openapi.json", fleet.gateway_url),
        "--checks".into(),
        "all".into(),
        "--phases".into(),
        "examples,coverage,fuzzing,stateful".into(),
        "--header".into(),
        format!("Authorization: Bearer {key}"),
        "--max-examples".into(),
        env_or("SHORTFLEET_SCHEMATHESIS_EXAMPLES", "100"),
        "--seed".into(),
        env_or("SHORTFLEET_SCHEMATHESIS_SEED", "20261126"),
        "--generation-database".into(),
        "none".into(),
        "--generation-allow-x00".into(),
        "true".into(),
        "--max-redirects".into(),
        "0".into(),
        "--request-timeout".into(),
        "10".into(),
        // One worker: hypothesis' lambda descriptions call ast.parse, which
        // CPython 3.11 does not tolerate from two threads at once.
        "--workers".into(),
        "1".into(),
        "--no-color".into(),
        "--report".into(),
        "junit".into(),
        "--report-dir".into(),
        report_dir.display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin.join("schemathesis"))
            .args(&args)
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
    })
    .await
    .expect("joined")
    .expect("running schemathesis");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let gateway_log = fleet.log_tail("gateway", 20);
    fleet.shutdown().await.expect("fleet stops");
    println!("{report}");
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n--- gateway\n{gateway_log}"
    );
}
