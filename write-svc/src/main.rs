//! write-svc: owns links in PostgreSQL and publishes their changes.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shortfleet_common::service::run::<write_svc::App>().await
}
