//! Reads a process's memory and CPU use from /proc (Linux).

use crate::stats::{MachineShares, MachineTicks, proc_stat_cpu_ticks, proc_status_kib};

/// Clock ticks per second; 100 on every Linux this runs on.
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessUse {
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    pub cpu_secs: f64,
}

pub fn process_use(pid: u32) -> Option<ProcessUse> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcessUse {
        rss_mib: proc_status_kib(&status, "VmRSS")? as f64 / 1024.0,
        peak_rss_mib: proc_status_kib(&status, "VmHWM")? as f64 / 1024.0,
        cpu_secs: proc_stat_cpu_ticks(&stat)? as f64 / TICKS_PER_SEC,
    })
}

/// CPU seconds (user + system) a process has used so far; 0 once it is gone.
pub fn cpu_secs(pid: Option<u32>) -> f64 {
    pid.and_then(process_use).map_or(0.0, |u| u.cpu_secs)
}

/// Microseconds of CPU per request over a step: `cpu` is the process's
/// CPU seconds before and after, `requests` what it answered meanwhile.
pub fn cpu_us_per_request(cpu: (f64, f64), requests: u64) -> f64 {
    if requests == 0 {
        return 0.0;
    }
    (cpu.1 - cpu.0).max(0.0) * 1e6 / requests as f64
}

/// CPU seconds used so far by every process whose name (`/proc/<pid>/comm`)
/// starts with `name` — the infrastructure the fleet shares, e.g. all of
/// PostgreSQL's backends or RabbitMQ's `beam.smp`. Processes that exited
/// meanwhile are not counted: read it over a window where they persist.
pub fn cpu_secs_named(name: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end().starts_with(name))
        })
        .map(|pid| cpu_secs(Some(pid)))
        .sum()
}

/// The machine's CPU ticks so far; `None` where `/proc/stat` is unreadable.
pub fn machine_ticks() -> Option<MachineTicks> {
    MachineTicks::parse(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// How the machine's time was spent from `before` (a [`machine_ticks`]
/// reading) until now; `None` if either reading failed.
pub fn machine_shares_since(before: Option<MachineTicks>) -> Option<MachineShares> {
    machine_ticks()?.shares_since(&before?)
}

/// The CPU's model name as `/proc/cpuinfo` gives it, or "unknown".
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}
