//! The one `main` every service binary runs, in a fixed order: logs →
//! config (exit 78 naming every invalid key) → build (bind, connect,
//! migrate) → serve until SIGTERM/SIGINT → drain.

use std::{future::Future, process::ExitCode};

use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, ConfigSource, EXIT_CONFIG};

/// What a service crate exposes to its binary.
pub trait Service: Sized {
    type Config;
    /// The service's name in logs and health checks.
    const NAME: &'static str;

    fn config(source: &ConfigSource) -> Result<Self::Config, ConfigError>;
    fn build(config: Self::Config) -> impl Future<Output = anyhow::Result<Self>> + Send;
    fn run_until(
        self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Runs `S` as a process: the body of every service's `main`.
pub async fn run<S: Service>() -> ExitCode {
    let telemetry = crate::telemetry::init_logs(S::NAME, "info");
    let config = match ConfigSource::from_process_env().and_then(|s| S::config(&s)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: {e}", S::NAME);
            tracing::error!(error = %e, "invalid configuration");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let service = match S::build(config).await {
        Ok(service) => service,
        Err(e) => {
            eprintln!("{}: start-up failed: {e:#}", S::NAME);
            tracing::error!(error = format!("{e:#}"), "start-up failed");
            return ExitCode::FAILURE;
        }
    };
    let code = match service.run_until(crate::shutdown::on_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "stopped with an error");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
