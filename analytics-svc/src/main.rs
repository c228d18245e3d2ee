//! analytics-svc: clicks in, stats out.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shortfleet_common::service::run::<analytics_svc::App>().await
}
