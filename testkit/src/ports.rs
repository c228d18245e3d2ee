//! Ports for the services a test starts as child processes.
//!
//! A port the kernel hands out for `bind(…:0)` lies in the ephemeral range
//! (`net.ipv4.ip_local_port_range`, 32768–60999 by default), and between
//! our probe and the child's own bind any outgoing connection on the machine
//! (another test's client, the child's own Redis pool) may take it as its
//! source port: the child then fails with "Address already in use". Ports
//! below the ephemeral range are never chosen for outgoing connections, so
//! this module hands those out instead, each at most once per process, from
//! a starting point that differs between processes.

use std::{
    net::TcpListener,
    sync::atomic::{AtomicU32, Ordering},
};

/// The lowest port handed out: above the well-known and most registered
/// service ports a developer's machine may be running.
const LOWEST: u16 = 10_000;

/// Where the next probe starts, as an offset into the range.
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A loopback port nobody listens on now, outside the ephemeral range when
/// the machine leaves room below it (otherwise one the kernel picks).
pub fn free_port() -> u16 {
    let (low, high) = (LOWEST, below_ephemeral());
    if high <= low + 1_000 {
        return kernel_port();
    }
    let span = u32::from(high - low);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        process_seed() % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        // `offset < span ≤ u16::MAX`, so the sum stays below `high`.
        let port = low + u16::try_from(offset).expect("offset below span");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    kernel_port()
}

/// One past the highest port below the ephemeral range.
fn below_ephemeral() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A start that differs between concurrently running test processes.
fn process_seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::process::id().wrapping_mul(7_919).wrapping_add(nanos)
}

fn kernel_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice");
        let high = below_ephemeral();
        if high > LOWEST + 1_000 {
            assert!(
                ports.iter().all(|p| (LOWEST..high).contains(p)),
                "{ports:?}"
            );
        }
        for port in ports {
            TcpListener::bind(("127.0.0.1", port)).expect("handed-out port binds");
        }
    }
}
