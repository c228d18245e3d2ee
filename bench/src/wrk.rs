//! Drives wrk (Debian's package; `bench/run` installs it), a load generator
//! that is not the project's own: closed-loop throughput over many
//! connections, cycling through the benchmark's codes with a generated Lua
//! script whose `done` hook prints the figures as one JSON line.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context;
use serde::Deserialize;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct WrkRun {
    pub requests: u64,
    pub duration_us: u64,
    /// Responses outside 2xx/3xx (wrk's "Non-2xx or 3xx responses").
    pub non_3xx: u64,
    pub connect_errors: u64,
    pub read_errors: u64,
    pub timeouts: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

impl WrkRun {
    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 * 1e6 / self.duration_us.max(1) as f64
    }

    /// Answers that were 2xx/3xx: redirects, for the click totals.
    pub fn answered_ok(&self) -> u64 {
        self.requests.saturating_sub(self.non_3xx)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests,
            "requests_per_sec": crate::stats::round2(self.requests_per_sec()),
            "non_3xx": self.non_3xx,
            "socket_errors": self.connect_errors + self.read_errors + self.timeouts,
            "p50_ms": self.p50_us as f64 / 1000.0,
            "p99_ms": self.p99_us as f64 / 1000.0,
            "p999_ms": self.p999_us as f64 / 1000.0,
        })
    }
}

/// The Lua script: GET `/{code}` cycling through `codes`, then one JSON
/// line on stdout. Codes are alphanumeric (the service's alphabet), so
/// quoting them in Lua needs no escaping; anything else is refused.
pub fn script(codes: &[String], user_agent: &str) -> anyhow::Result<String> {
    anyhow::ensure!(!codes.is_empty(), "wrk needs at least one code");
    let plain =
        |s: &str| s.chars().all(|c| c.is_ascii_graphic() || c == ' ') && !s.contains(['"', '\\']);
    anyhow::ensure!(
        codes.iter().all(|c| plain(c)) && plain(user_agent),
        "codes and user agent must be plain ASCII"
    );
    let list = codes
        .iter()
        .map(|c| format!("\"/{c}\""))
        .collect::<Vec<_>>()
        .join(",");
    Ok(format!(
        r#"local paths = {{{list}}}
local n = #paths
local i = 0
wrk.headers["User-Agent"] = "{user_agent}"
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % n) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format('SHORTFLEET {{"requests":%d,"duration_us":%d,"non_3xx":%d,"connect_errors":%d,"read_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d}}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect, summary.errors.read, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#
    ))
}

/// One closed-loop run: `wrk -t2 -c<connections> -d<duration>` against
/// `addr` with `script` (written to a temporary file), bounded in time.
pub async fn run(
    wrk: &Path,
    addr: SocketAddr,
    script: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<WrkRun> {
    let file = std::env::temp_dir().join(format!(
        "shortfleet-bench-{}-{}.lua",
        std::process::id(),
        addr.port()
    ));
    tokio::fs::write(&file, script).await?;
    let secs = duration.as_secs().max(1);
    let output = tokio::time::timeout(
        Duration::from_secs(secs + 30),
        tokio::process::Command::new(wrk)
            .args(["-t2", &format!("-c{connections}"), &format!("-d{secs}s")])
            .args(["--timeout", "5s", "-s"])
            .arg(&file)
            .arg(format!("http://{addr}"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("wrk did not finish in time")?
    .with_context(|| format!("running {}", wrk.display()))?;
    let _ = tokio::fs::remove_file(&file).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "wrk failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SHORTFLEET "))
        .with_context(|| format!("wrk printed no result: {stdout}"))?;
    Ok(serde_json::from_str(line)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_cycles_codes_and_refuses_what_it_cannot_quote() {
        let s = script(&["abc".into(), "XyZ9".into()], "bench/1").unwrap();
        assert!(s.contains(r#"local paths = {"/abc","/XyZ9"}"#), "{s}");
        assert!(s.contains(r#"wrk.headers["User-Agent"] = "bench/1""#));
        assert!(script(&[], "ua").is_err());
        assert!(script(&["a\"b".into()], "ua").is_err());
        assert!(script(&["ab".into()], "u\\a").is_err());
    }

    #[test]
    fn results_parse_from_the_done_line() {
        let run: WrkRun = serde_json::from_str(
            r#"{"requests":1000,"duration_us":2000000,"non_3xx":3,"connect_errors":0,"read_errors":1,"timeouts":0,"p50_us":200,"p99_us":900,"p999_us":2000}"#,
        )
        .unwrap();
        assert_eq!(run.requests_per_sec(), 500.0);
        assert_eq!(run.answered_ok(), 997);
        assert_eq!(run.to_json()["socket_errors"], 1);
    }
}
