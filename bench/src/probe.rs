//! Reads a process's memory and CPU use from /proc (Linux).

use crate::stats::{proc_stat_cpu_ticks, proc_status_kib};

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
