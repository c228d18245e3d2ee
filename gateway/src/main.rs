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

/// mimalloc, not glibc's malloc: every redirect allocates its click on a
/// worker and the forwarder frees 2,000 of them at once, which overflows
/// glibc's per-thread cache into its slow paths. Measured side by side
/// (BENCHMARKS.md, third session): about 4 % fewer instructions and cycles
/// per redirect, for about 25 MiB more resident under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        None | Some(Command::Serve) => shortfleet_common::service::run::<gateway::App>().await,
        Some(Command::Keys(keys)) => gateway::admin::run(keys).await,
    }
}
