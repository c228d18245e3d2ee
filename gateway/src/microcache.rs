//! A small cache of resolved codes in front of read-svc, so a hot link costs
//! no gRPC hop. Entries live at most `ttl`, never past the link's own expiry,
//! and are dropped as soon as a `LinkEvent` for the code arrives (every
//! gateway replica subscribes), so an edit or delete takes effect within a
//! second fleet-wide. While the event subscription is down the cache is
//! bypassed: without invalidation only read-svc's answer is trustworthy.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use moka::{Expiry, future::Cache};
use shortfleet_common::{link_events::Handlers, time::from_proto};
use shortfleet_proto::v1::ResolveResponse;

#[derive(Clone)]
pub struct MicroCache {
    entries: Cache<String, Arc<ResolveResponse>>,
    /// True while link events flow; otherwise every lookup misses.
    live: Arc<AtomicBool>,
}

struct UntilLinkExpiry {
    ttl: Duration,
}

impl Expiry<String, Arc<ResolveResponse>> for UntilLinkExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<ResolveResponse>,
        _now: Instant,
    ) -> Option<Duration> {
        let until_expiry = value
            .expires_at
            .as_ref()
            .and_then(from_proto)
            .map(|t| (t - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO));
        Some(until_expiry.map_or(self.ttl, |left| left.min(self.ttl)))
    }
}

impl MicroCache {
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilLinkExpiry { ttl })
                .build(),
            live: Arc::new(AtomicBool::new(false)),
        }
    }

    pub async fn get(&self, code: &str) -> Option<Arc<ResolveResponse>> {
        if !self.live.load(Ordering::Relaxed) {
            return None;
        }
        let hit = self.entries.get(code).await;
        let result = if hit.is_some() { "hit" } else { "miss" };
        metrics::counter!("shortfleet_cache_requests_total", "level" => "gateway", "result" => result)
            .increment(1);
        hit
    }

    pub async fn insert(&self, code: &str, resolved: Arc<ResolveResponse>) {
        if self.live.load(Ordering::Relaxed) {
            self.entries.insert(code.to_owned(), resolved).await;
        }
    }

    /// Event handlers: drop the code on any event; forget everything (and
    /// go live) on each new subscription.
    pub fn handlers(&self) -> Handlers {
        let on_event = self.clone();
        let on_subscribed = self.clone();
        let on_lost = self.clone();
        Handlers {
            on_event: Arc::new(move |event| {
                let cache = on_event.clone();
                Box::pin(async move {
                    if let Some(link) = event.link {
                        cache.entries.invalidate(&link.code).await;
                    }
                })
            }),
            on_subscribed: Arc::new(move || {
                let cache = on_subscribed.clone();
                Box::pin(async move {
                    cache.entries.invalidate_all();
                    cache.live.store(true, Ordering::Relaxed);
                })
            }),
            on_lost: Arc::new(move || {
                on_lost.live.store(false, Ordering::Relaxed);
                on_lost.entries.invalidate_all();
            }),
        }
    }
}
