//! A Redis Cluster of the test's own (three masters, three replicas) on
//! free loopback ports, made by the project's `deploy/local/redis-cluster`
//! and removed when dropped.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, bail, ensure};

use crate::free_port;

pub struct RedisCluster {
    /// `redis-cluster://…` naming the masters, as services are configured.
    pub url: String,
    dir: PathBuf,
    pub ports: Vec<u16>,
}

fn run(args: &[&str]) -> anyhow::Result<String> {
    shortfleet_testkit::scripts::run("redis-cluster", args)
}

impl RedisCluster {
    pub fn start(id: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("sf-redis-cluster-{id}"));
        let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
        let mut args = vec!["start".to_owned(), dir.display().to_string()];
        args.extend(ports.iter().map(|p| format!("{p}:{}", free_port())));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args)?;
        let url = out
            .lines()
            .last()
            .filter(|l| l.starts_with("redis-cluster://"))
            .with_context(|| format!("no cluster URL in {out:?}"))?
            .to_owned();
        Ok(Self { url, dir, ports })
    }

    fn cli(&self, port: u16, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .output()
            .context("running redis-cli")?;
        ensure!(out.status.success(), "redis-cli {args:?} failed");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Ports of the nodes that are masters now, as a live node sees it.
    pub fn masters(&self) -> anyhow::Result<Vec<u16>> {
        for &port in &self.ports {
            let Ok(nodes) = self.cli(port, &["cluster", "nodes"]) else {
                continue;
            };
            return Ok(nodes
                .lines()
                .filter(|l| {
                    let flags = l.split_whitespace().nth(2).unwrap_or("");
                    flags.contains("master") && !flags.contains("fail")
                })
                .filter_map(|l| {
                    let addr = l.split_whitespace().nth(1)?;
                    addr.split('@').next()?.rsplit(':').next()?.parse().ok()
                })
                .collect());
        }
        bail!("no cluster node answers")
    }

    /// Keys held by the masters: proof the services really write to it.
    pub fn keys(&self) -> anyhow::Result<u64> {
        let mut sum = 0;
        for port in self.masters()? {
            sum += self.cli(port, &["dbsize"])?.trim().parse::<u64>()?;
        }
        Ok(sum)
    }

    /// Kills node `port` outright (SIGKILL), as a crashed machine.
    pub fn kill(&self, port: u16) -> anyhow::Result<()> {
        let pid = std::fs::read_to_string(self.dir.join(port.to_string()).join("redis.pid"))?;
        let status = Command::new("kill").args(["-9", pid.trim()]).status()?;
        ensure!(status.success(), "kill -9 {pid} failed");
        Ok(())
    }

    /// Starts node `port` again; it rejoins (as a replica once failed over).
    pub fn restart(&self, port: u16) -> anyhow::Result<()> {
        run(&["node", &self.dir.display().to_string(), &port.to_string()]).map(drop)
    }

    /// Whether every slot is served again (a replica has taken over).
    pub fn healthy(&self) -> bool {
        self.ports.iter().any(|&p| {
            self.cli(p, &["cluster", "info"]).is_ok_and(|i| {
                i.contains("cluster_state:ok") && i.contains("cluster_slots_ok:16384")
            })
        })
    }

    /// Polls [`Self::healthy`] for up to `limit`.
    pub async fn wait_healthy(&self, limit: Duration) -> anyhow::Result<Duration> {
        let started = std::time::Instant::now();
        while !self.healthy() {
            ensure!(
                started.elapsed() < limit,
                "the cluster did not heal within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(started.elapsed())
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if let Err(e) = run(&["stop", &self.dir.display().to_string()]) {
            eprintln!("{e:#}");
        }
    }
}
