//! What every request handler may use, built once by [`crate::app`] and
//! shared (`Arc`) by every connection. Its own module so the server and the
//! handlers depend on it, not on the wiring that builds it.

use std::sync::Arc;

use shortfleet_common::ops::Health;

use crate::{
    clicks::ClickSink, config::Config, keys::KeyStore, live::Hub, microcache::MicroCache,
    ratelimit::RateLimiter, robots::Robots, upstream::Upstreams,
};

/// Everything a request handler may use.
pub struct State {
    pub config: Config,
    pub key_store: KeyStore,
    pub limiter: RateLimiter,
    pub upstreams: Upstreams,
    pub clicks: ClickSink,
    pub microcache: MicroCache,
    pub health: Health,
    /// This replica's live event streams.
    pub live: Arc<Hub>,
    /// The cached `GET /robots.txt` body.
    pub robots: Robots,
    /// Country rules' lookup when no trusted header says (`SHORTFLEET_GEOIP_DB`).
    pub geoip: Option<Arc<shortfleet_common::geoip::GeoIp>>,
}
