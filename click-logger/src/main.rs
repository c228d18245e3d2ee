//! click-logger: clicks from the gateways to RabbitMQ, never lost.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shortfleet_common::service::run::<click_logger::App>().await
}
