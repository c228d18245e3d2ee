//! The benchmark harness's library: a small HTTP/1.1 load generator
//! ([`load`]), the statistics it reports ([`stats`]), process probes
//! ([`probe`]) and the outside load generators wrk ([`wrk`], throughput)
//! and oha ([`oha`], fixed-rate latency), and the targets judged
//! from a run's report ([`targets`]). The `shortfleet-bench` binary
//! orchestrates a run; `baseline` is the bare hyper 301 server every
//! figure is compared with.

/// The load generator lives with the e2e harness (the chaos test drives it
/// too); re-exported so the benchmark reads as before.
pub use shortfleet_e2e::load;
pub mod oha;
pub mod probe;
pub mod stats;
pub mod targets;
pub mod wrk;
