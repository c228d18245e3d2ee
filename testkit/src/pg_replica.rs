//! A PostgreSQL primary with a streaming replica of the test's own, on free
//! loopback ports, made by the project's `deploy/local/pg-replica` and
//! removed when dropped.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::ports::free_port;

pub struct PgReplica {
    /// Server URLs (no database name).
    pub primary: String,
    pub replica: String,
    dir: PathBuf,
}

fn run(args: &[&str]) -> anyhow::Result<String> {
    crate::scripts::run("pg-replica", args)
}

impl PgReplica {
    pub fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("sf-pg-replica-{}", crate::unique_id()));
        let (primary, replica) = (free_port().to_string(), free_port().to_string());
        let out = run(&["start", &dir.display().to_string(), &primary, &replica])?;
        let last = out.lines().last().unwrap_or_default();
        let url = |name: &str| {
            last.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_owned)
                .with_context(|| format!("no {name} in {last:?}"))
        };
        Ok(Self {
            primary: url("primary=")?,
            replica: url("replica=")?,
            dir,
        })
    }

    /// Stops the replica (fast shutdown), as a replica going down.
    pub fn stop_replica(&self) -> anyhow::Result<()> {
        run(&["stop", &self.dir.display().to_string(), "replica"]).map(drop)
    }

    /// Starts the replica again; it catches up by streaming.
    pub fn resume_replica(&self) -> anyhow::Result<()> {
        run(&["resume", &self.dir.display().to_string(), "replica"]).map(drop)
    }
}

impl Drop for PgReplica {
    fn drop(&mut self) {
        if let Err(e) = run(&["stop", &self.dir.display().to_string()]) {
            eprintln!("{e:#}");
        }
    }
}
