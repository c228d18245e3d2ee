//! gateway: serves the public HTTP API (default), or runs an admin command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Shortfleet's public HTTP gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the public API (the default). Configured by SHORTFLEET_* variables.
    Serve,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(gateway::admin::KeysCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        None | Some(Command::Serve) => shortfleet_common::service::run::<gateway::App>().await,
        Some(Command::Keys(keys)) => gateway::admin::run(keys).await,
    }
}
