//! read-svc: resolves codes for the gateway's redirect path.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shortfleet_common::service::run::<read_svc::App>().await
}
