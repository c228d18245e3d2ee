//! The fleet's gRPC servers judged by a client the project did not write:
//! Python grpcio with grpcio-reflection and grpcio-health-checking (pinned in
//! deploy/local/requirements-tools.txt, installed by deploy/local/tools).
//! The script (`e2e/outside/grpc_tools.py`) knows only the addresses and the
//! service each should serve; everything else it learns from reflection.

// A test crate: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use shortfleet_e2e::{Fleet, FleetOptions, tools_python, workspace_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_sees_exactly_what_each_server_serves() {
    let python = tools_python();
    let fleet = Fleet::start(FleetOptions::default())
        .await
        .expect("fleet starts");
    let servers = [
        ("write-svc", "shortener.v1.LinkWriter"),
        ("read-svc", "shortener.v1.LinkResolver"),
        ("click-logger", "shortener.v1.ClickLogger"),
        ("analytics-svc", "shortener.v1.Analytics"),
    ]
    .iter()
    .map(|(svc, service)| format!("{svc}={}={service}", fleet.grpc_addrs[svc]))
    .collect::<Vec<_>>()
    .join(",");

    let script = workspace_root().join("e2e/outside/grpc_tools.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("SHORTFLEET_GRPC_SERVERS", servers)
            .output()
    })
    .await
    .expect("joined")
    .expect("running the grpcio script");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let logs: String = ["write-svc", "read-svc", "click-logger", "analytics-svc"]
        .iter()
        .map(|svc| format!("--- {svc}\n{}\n", fleet.log_tail(svc, 10)))
        .collect();
    fleet.shutdown().await.expect("fleet stops");
    println!("{report}");
    assert!(
        out.status.success(),
        "the grpcio client found problems:\n{report}\n{logs}"
    );
    assert!(
        report.contains("grpc_tools: all checks passed"),
        "the script did not finish its checks:\n{report}"
    );
}
