//! Drives oha (`cargo install --locked oha`, into `.local/tools/bin` by
//! `bench/run`), a load generator that is not the project's own, at a fixed
//! rate with latency correction (each latency counted from when the request
//! was due, so a stall is charged to every request it delayed), redirects
//! not followed, one JSON report parsed.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use anyhow::Context;
use serde::Deserialize;

/// What one oha run measured (the parts of its JSON report used here).
#[derive(Debug, Clone, Deserialize)]
pub struct OhaRun {
    pub summary: OhaSummary,
    #[serde(rename = "latencyPercentiles")]
    pub latency: OhaPercentiles,
    #[serde(rename = "statusCodeDistribution", default)]
    pub statuses: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OhaSummary {
    pub requests_per_sec: f64,
    pub success_rate: f64,
}

/// Seconds; `None` when oha had no sample.
#[derive(Debug, Clone, Deserialize)]
pub struct OhaPercentiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    #[serde(rename = "p99.9")]
    pub p999: Option<f64>,
}

impl OhaRun {
    /// Answers outside 3xx (every benchmarked code redirects).
    pub fn non_3xx(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(code, _)| !code.starts_with('3'))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let ms = |s: Option<f64>| s.map(|s| crate::stats::round3(s * 1000.0));
        serde_json::json!({
            "requests_per_sec": crate::stats::round2(self.summary.requests_per_sec),
            "success_rate": self.summary.success_rate,
            "p50_ms": ms(self.latency.p50),
            "p99_ms": ms(self.latency.p99),
            "p999_ms": ms(self.latency.p999),
            "statuses": self.statuses,
            "non_3xx": self.non_3xx(),
        })
    }
}

/// oha's `--rand-regex-url` pattern for GET `/{code}` over `codes`:
/// alphanumeric codes need no escaping; anything else is refused.
pub fn url_pattern(addr: SocketAddr, codes: &[String]) -> anyhow::Result<String> {
    anyhow::ensure!(!codes.is_empty(), "oha needs at least one code");
    anyhow::ensure!(
        codes.iter().all(|c| c
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')),
        "codes must be plain alphanumeric to sit in a URL pattern"
    );
    // oha takes a dot literally in these patterns ("dot is disabled").
    Ok(format!("http://{addr}/({})", codes.join("|")))
}

/// One fixed-rate run: `rate` requests per second over `connections`
/// for `duration`, bounded in time.
pub async fn run(
    oha: &Path,
    pattern: &str,
    user_agent: &str,
    rate: u64,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<OhaRun> {
    let secs = duration.as_secs().max(1);
    let output = tokio::time::timeout(
        Duration::from_secs(secs + 30),
        tokio::process::Command::new(oha)
            .args([
                "--no-tui",
                "--output-format",
                "json",
                "--latency-correction",
            ])
            .args(["--redirect", "0", "--rand-regex-url"])
            .args(["-q", &rate.to_string(), "-c", &connections.to_string()])
            .args(["-z", &format!("{secs}s"), "-H"])
            .arg(format!("User-Agent: {user_agent}"))
            .arg(pattern)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("oha did not finish in time")?
    .with_context(|| format!("running {}", oha.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "oha failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "oha's report: {}",
            String::from_utf8_lossy(&output.stdout)
                .chars()
                .take(300)
                .collect::<String>()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_names_every_code_and_refuses_what_it_cannot_hold() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            url_pattern(addr, &["abc".into(), "X9z".into()]).unwrap(),
            "http://127.0.0.1:8080/(abc|X9z)"
        );
        assert!(url_pattern(addr, &[]).is_err());
        assert!(url_pattern(addr, &["a|b".into()]).is_err());
    }

    #[test]
    fn a_report_parses_and_counts_non_redirects() {
        let run: OhaRun = serde_json::from_str(
            r#"{"summary":{"successRate":1.0,"total":5.0,"requestsPerSec":19990.5},
                "latencyPercentiles":{"p50":0.0005,"p99":0.002,"p99.9":0.004},
                "statusCodeDistribution":{"302":99990,"503":10}}"#,
        )
        .unwrap();
        assert_eq!(run.non_3xx(), 10);
        assert_eq!(run.to_json()["p99_ms"], 2.0);
    }
}
