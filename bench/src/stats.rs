//! The numbers a run reports: throughput and latency percentiles per round,
//! medians across rounds, and fleet/baseline ratios.

use serde_json::{Value, json};

use crate::load::Outcome;

/// One measured round, reduced to what the report shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub errors: u64,
}

impl Summary {
    pub fn of(outcome: &Outcome) -> Self {
        let secs = outcome.elapsed.as_secs_f64().max(1e-9);
        let ms = |q: f64| outcome.latency.value_at_quantile(q) as f64 / 1000.0;
        Self {
            requests_per_sec: outcome.requests as f64 / secs,
            p50_ms: ms(0.50),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            errors: outcome.errors,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "requests_per_sec": round2(self.requests_per_sec),
            "p50_ms": round3(self.p50_ms),
            "p99_ms": round3(self.p99_ms),
            "p999_ms": round3(self.p999_ms),
            "errors": self.errors,
        })
    }
}

/// The median of `values` (mean of the middle two for an even count);
/// `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// The median of one field across rounds.
pub fn median_of(rounds: &[Summary], field: fn(&Summary) -> f64) -> f64 {
    median(&rounds.iter().map(field).collect::<Vec<_>>()).unwrap_or(0.0)
}

/// `a / b`, or 0 when `b` is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Parses the value of `key` from a `/proc/<pid>/status` text, in KiB.
pub fn proc_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime in clock ticks from a `/proc/<pid>/stat` line. The command
/// name may contain spaces, so fields are counted after the last ')'.
pub fn proc_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 overall; utime is 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The whole machine's CPU time so far, in clock ticks, from the first
/// line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTicks {
    /// Every state summed (guest time is already inside user and nice).
    pub total: u64,
    /// Idle and waiting for I/O: nothing to run.
    pub idle: u64,
    /// A virtual CPU was ready to run but the host ran something else.
    /// Every figure of a run with much of it is slower and noisier than
    /// the code alone.
    pub steal: u64,
}

/// How a span of time between two [`MachineTicks`] was spent, in percent
/// of all CPU time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineShares {
    /// Running this machine's processes (and its kernel).
    pub busy: f64,
    pub steal: f64,
}

impl MachineTicks {
    pub fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        Some(Self {
            total: ticks.iter().take(8).sum(),
            idle: ticks.get(3)? + ticks.get(4)?,
            steal: *ticks.get(7)?,
        })
    }

    /// The shares of the time from `earlier` to `self`; `None` if no tick
    /// passed.
    pub fn shares_since(&self, earlier: &Self) -> Option<MachineShares> {
        let total = self.total.checked_sub(earlier.total).filter(|t| *t > 0)? as f64;
        let idle = self.idle.saturating_sub(earlier.idle) as f64;
        let steal = self.steal.saturating_sub(earlier.steal) as f64;
        Some(MachineShares {
            busy: (total - idle - steal).max(0.0) * 100.0 / total,
            steal: steal * 100.0 / total,
        })
    }
}

/// The share of an open-loop generator's fixed rate below which a server
/// is taken to have fallen behind it: its requests then queued, and the
/// latencies measured are that queue's, not the server's tail.
pub const HELD_RATE: f64 = 0.99;

/// The share of a fixed `rate` (requests per second) that was achieved;
/// `None` for a rate of zero.
pub fn rate_share(achieved_per_sec: f64, rate: u64) -> Option<f64> {
    (rate > 0).then(|| achieved_per_sec / rate as f64)
}

/// The `q` quantile (in the metric's unit) of a Prometheus histogram given as
/// text, interpolating linearly inside the bucket that holds it, as
/// `histogram_quantile` does. `None` without samples.
pub fn histogram_quantile(text: &str, metric: &str, q: f64) -> Option<f64> {
    let prefix = format!("{metric}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count: f64 = l.rsplit_once(' ')?.1.parse().ok()?;
            Some((bound, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let mut previous = (0.0, 0.0);
    for (bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(previous.0);
            }
            let within = (rank - previous.1) / (count - previous.1).max(f64::MIN_POSITIVE);
            return Some(previous.0 + (bound - previous.0) * within);
        }
        previous = (bound, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::histogram;
    use std::time::Duration;

    #[test]
    fn histogram_quantiles_interpolate_inside_buckets() {
        let text = "x_bucket{le=\"0.001\"} 50\nx_bucket{le=\"0.002\"} 90\nx_bucket{le=\"0.005\"} 100\nx_bucket{le=\"+Inf\"} 100\nx_sum 0.1\nx_count 100\n";
        let p50 = histogram_quantile(text, "x", 0.5).unwrap();
        assert!((p50 - 0.001).abs() < 1e-9);
        let p70 = histogram_quantile(text, "x", 0.7).unwrap();
        assert!((p70 - 0.0015).abs() < 1e-9);
        let p99 = histogram_quantile(text, "x", 0.99).unwrap();
        assert!((p99 - 0.0047).abs() < 1e-9);
        assert_eq!(histogram_quantile("", "x", 0.5), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn summary_reads_percentiles_in_milliseconds() {
        let mut latency = histogram();
        for us in 1..=1000u64 {
            latency.record(us * 10).unwrap();
        }
        let outcome = Outcome {
            requests: 1000,
            errors: 2,
            statuses: Default::default(),
            elapsed: Duration::from_secs(2),
            latency,
        };
        let s = Summary::of(&outcome);
        assert_eq!(s.requests_per_sec, 500.0);
        assert!((s.p50_ms - 5.0).abs() < 0.01, "{}", s.p50_ms);
        assert!((s.p99_ms - 9.9).abs() < 0.02, "{}", s.p99_ms);
        assert_eq!(s.errors, 2);
    }

    #[test]
    fn ratios_guard_against_zero() {
        assert_eq!(ratio(1.0, 0.0), 0.0);
        assert_eq!(ratio(3.0, 4.0), 0.75);
    }

    #[test]
    fn parses_proc_files() {
        let status = "Name:\tgateway\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(proc_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(proc_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(proc_status_kib(status, "Vm"), None);
        let stat =
            "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 0 0";
        assert_eq!(proc_stat_cpu_ticks(stat), Some(300));
        let at = |text: &str| MachineTicks::parse(text).unwrap();
        let first = at("cpu  100 5 50 800 10 0 5 30 7 0\ncpu0 50 2 25 400 5 0 2 15 3 0\n");
        assert_eq!(
            first,
            MachineTicks {
                total: 1000,
                idle: 810,
                steal: 30
            }
        );
        // 200 ticks later: 100 busy, 80 idle, 20 stolen.
        let second = at("cpu  180 5 70 870 20 0 5 50 0 0\n");
        let shares = second.shares_since(&first).unwrap();
        assert_eq!((shares.busy, shares.steal), (50.0, 10.0));
        assert_eq!(first.shares_since(&first), None);
        assert_eq!(MachineTicks::parse("cpu  1 2 3\n"), None);
        assert_eq!(MachineTicks::parse("intr 1 2\n"), None);
    }

    #[test]
    fn a_rate_share_is_what_was_achieved_of_what_was_asked() {
        assert_eq!(rate_share(19_366.0, 20_000), Some(0.9683));
        assert!(rate_share(19_366.0, 20_000).is_some_and(|s| s < HELD_RATE));
        assert!(rate_share(19_992.0, 20_000).is_some_and(|s| s >= HELD_RATE));
        assert_eq!(rate_share(100.0, 0), None);
    }
}
