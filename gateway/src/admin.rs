//! `gateway keys create|list|revoke`: the admin commands that issue and
//! revoke API keys. They talk to the gateway's database directly; running
//! gateways pick changes up within `SHORTFLEET_KEY_REFRESH_MS`.

use std::process::ExitCode;

use chrono::{Duration, Utc};
use clap::Subcommand;
use shortfleet_common::config::{ConfigSource, EXIT_CONFIG};

use crate::{config::Config, keys::KeyStore};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a key; prints its id and, on the last line, the secret.
    Create {
        #[arg(long)]
        owner: String,
        /// A tier from the configuration (free, premium, bench, …).
        #[arg(long, default_value = "free")]
        tier: String,
        /// Days until the key stops working; never when omitted.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List keys (ids, owners, tiers, state); never secrets.
    List {
        #[arg(long)]
        owner: Option<String>,
    },
    /// Revoke a key by id; every gateway refuses it within seconds.
    Revoke { id: String },
}

pub async fn run(command: KeysCommand) -> ExitCode {
    let config = match ConfigSource::from_process_env().and_then(|s| Config::from_source(&s)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    match execute(&config, command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gateway keys: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(config: &Config, command: KeysCommand) -> anyhow::Result<ExitCode> {
    let store = KeyStore::open(&config.database_url).await?;
    match command {
        KeysCommand::Create {
            owner,
            tier,
            expires_in_days,
        } => {
            if owner.trim().is_empty() || owner.len() > 128 {
                eprintln!("gateway keys create: --owner must be 1 to 128 characters");
                return Ok(ExitCode::from(64));
            }
            if !config.tiers.contains_key(&tier) {
                let known: Vec<_> = config.tiers.keys().cloned().collect();
                eprintln!(
                    "gateway keys create: unknown tier {tier:?}; known: {}",
                    known.join(", ")
                );
                return Ok(ExitCode::from(64));
            }
            let expires_at = expires_in_days.map(|d| Utc::now() + Duration::days(i64::from(d)));
            let key = store.create(&owner, &tier, expires_at).await?;
            eprintln!("created key {} for owner {owner} (tier {tier})", key.id);
            println!("{}", key.secret);
        }
        KeysCommand::List { owner } => {
            println!(
                "{:<18} {:<20} {:<10} {:<8} created_at",
                "id", "owner", "tier", "state"
            );
            for k in store.list(owner.as_deref()).await? {
                let state = match (k.revoked_at, k.expires_at) {
                    (Some(_), _) => "revoked",
                    (None, Some(t)) if t <= Utc::now() => "expired",
                    _ => "active",
                };
                println!(
                    "{:<18} {:<20} {:<10} {:<8} {}",
                    k.id,
                    k.owner,
                    k.tier,
                    state,
                    k.created_at.to_rfc3339()
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if !store.revoke(&id).await? {
                eprintln!("gateway keys revoke: no active key with id {id}");
                return Ok(ExitCode::from(1));
            }
            eprintln!("revoked {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
