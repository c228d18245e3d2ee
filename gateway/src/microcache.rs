//! A small cache of resolved codes in front of read-svc, so a hot link costs
//! no gRPC hop. An entry is *fresh* for `ttl`, then kept *stale* for up to
//! `stale_for` more, never past the link's own expiry. Fresh entries answer
//! redirects; a stale one answers only when read-svc cannot
//! (stale-if-error, like `proxy_cache_use_stale`): see [`MicroCache::stale`].
//!
//! Both kinds are dropped as soon as a `LinkEvent` for the code arrives
//! (every gateway replica subscribes), so an edit, disable or delete takes
//! effect within a second fleet-wide and is never undone by a stale copy.
//! Nor by an old answer cached again: read-svc applies the same event on
//! its own schedule, and a resolve may have been in flight when the event
//! came, so the cache remembers the newest `updated_at` each code's events
//! carried and does not keep an answer older than that (it still answers
//! the request; the next one asks read-svc again).
//! While the event subscription is down the cache is emptied and bypassed:
//! without invalidation only read-svc's answer is trustworthy. Links
//! counted against `max_clicks` are never cached (read-svc must count every
//! redirect), so they never go stale either.
//!
//! Refreshed ahead: from three quarters of its `ttl` on, the first hit on
//! an entry (and only that one) also asks read-svc again in the background
//! ([`Hit::refresh`]), so a hot code is renewed before it goes stale and no
//! redirect waits for the hop (with a thousand hot links, expiries alone
//! sent one redirect in a hundred to read-svc: the fleet's p99 at a fixed
//! rate, BENCHMARKS.md). An entry is never answered past its `ttl` either
//! way; one nobody asks for in its last quarter expires as before.
//!
//! Bounded twice: at most `capacity` entries and `max_bytes` of them. Each
//! entry weighs its size, but at least `max_bytes / capacity`, so one bound
//! on weight enforces both.

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use moka::{Expiry, future::Cache};
use shortfleet_common::{link_events::Handlers, time::from_proto};
use shortfleet_proto::v1::ResolveResponse;

/// Bytes an entry costs besides its strings (key, `Arc`, moka's node).
const ENTRY_OVERHEAD: usize = 160;
/// A rule's `RedirectRule` and `RuleConditions` structs (their vectors and
/// strings' headers), beyond the bytes of its strings.
const RULE_OVERHEAD: usize = 200;

#[derive(Clone)]
struct Entry {
    link: Arc<ResolveResponse>,
    /// Past this instant the entry only answers when read-svc cannot.
    fresh_until: Instant,
    /// From this instant a hit starts a refresh.
    refresh_from: Instant,
    /// Set by the one hit that starts the refresh.
    refreshing: Arc<AtomicBool>,
}

/// A fresh entry's link, and whether this hit should refresh it.
pub struct Hit {
    pub link: Arc<ResolveResponse>,
    /// True for the first hit in the entry's last quarter of freshness:
    /// the caller asks read-svc again (not waiting for it) and hands the
    /// answer to [`MicroCache::refreshed`].
    pub refresh: bool,
}

// Registered on first use, which comes after the recorder is installed:
// every redirect increments one, and a handle skips the registry's lookup
// by name and labels.
static HITS: LazyLock<metrics::Counter> = LazyLock::new(
    || metrics::counter!("shortfleet_cache_requests_total", "level" => "gateway", "result" => "hit"),
);
static MISSES: LazyLock<metrics::Counter> = LazyLock::new(
    || metrics::counter!("shortfleet_cache_requests_total", "level" => "gateway", "result" => "miss"),
);
static REFRESHES: LazyLock<metrics::Counter> =
    LazyLock::new(|| metrics::counter!("shortfleet_cache_refreshes_total", "level" => "gateway"));

#[derive(Clone)]
pub struct MicroCache {
    entries: Cache<String, Entry>,
    /// The newest `updated_at` (seconds, nanos) link events carried per
    /// code, kept as long as an entry can live.
    newest: moka::sync::Cache<String, (i64, i32)>,
    ttl: Duration,
    /// True while link events flow; otherwise every lookup misses.
    live: Arc<AtomicBool>,
}

/// An entry lives `ttl + stale_for`, never past the link's expiry.
struct UntilLinkExpiry {
    lifetime: Duration,
}

impl UntilLinkExpiry {
    fn lifetime(&self, value: &Entry) -> Duration {
        let until_expiry = value
            .link
            .expires_at
            .as_ref()
            .and_then(from_proto)
            .map(|t| (t - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO));
        until_expiry.map_or(self.lifetime, |left| left.min(self.lifetime))
    }
}

impl Expiry<String, Entry> for UntilLinkExpiry {
    fn expire_after_create(&self, _key: &String, value: &Entry, _now: Instant) -> Option<Duration> {
        Some(self.lifetime(value))
    }

    /// A refresh (a stale entry replaced by read-svc's new answer) starts a
    /// new life; moka's default would keep the old deadline.
    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _now: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.lifetime(value))
    }
}

/// What an entry weighs against `max_bytes`: the link's encoded size
/// stands for the bytes of all its strings (url, owner, rules' urls and
/// conditions, `expired_url`, the password hash), plus the fixed size of
/// each rule's structs, which encoding does not show.
fn weight(code: &str, entry: &Entry, floor: u64) -> u32 {
    let link = &entry.link;
    let bytes = ENTRY_OVERHEAD
        + 2 * code.len()
        + prost::Message::encoded_len(&**link)
        + link.rules.len() * RULE_OVERHEAD;
    (bytes as u64).max(floor).min(u64::from(u32::MAX)) as u32
}

/// Registers the HELP text of the micro-cache's metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_cache_requests_total",
        metrics::Unit::Count,
        "Link cache lookups, by level (gateway) and result."
    );
    metrics::describe_counter!(
        "shortfleet_cache_refreshes_total",
        metrics::Unit::Count,
        "Entries the gateway's micro-cache renewed ahead of their expiry (refresh-ahead), whatever read-svc answered."
    );
    metrics::describe_counter!(
        "shortfleet_stale_redirects_total",
        "Redirects answered from a stale micro-cache copy because read-svc could not answer (stale-if-error), by the upstream failure: unavailable, deadline, broken."
    );
}

impl MicroCache {
    /// `capacity` entries and `max_bytes` at most; fresh for `ttl`, then
    /// stale for `stale_for` (zero: never answers stale).
    pub fn new(capacity: u64, max_bytes: u64, ttl: Duration, stale_for: Duration) -> Self {
        let floor = max_bytes / capacity.max(1);
        Self {
            entries: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(move |code: &String, entry: &Entry| weight(code, entry, floor))
                .expire_after(UntilLinkExpiry {
                    lifetime: ttl.saturating_add(stale_for),
                })
                .build(),
            newest: moka::sync::Cache::builder()
                .max_capacity(capacity.max(1))
                .time_to_live(ttl.saturating_add(stale_for))
                .build(),
            ttl,
            live: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A fresh entry for `code`, if any (a stale one is a miss here).
    pub async fn get(&self, code: &str) -> Option<Hit> {
        if !self.live.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        let entry = self.entries.get(code).await.filter(|e| now < e.fresh_until);
        if entry.is_some() { &HITS } else { &MISSES }.increment(1);
        entry.map(|e| Hit {
            refresh: now >= e.refresh_from && !e.refreshing.swap(true, Ordering::Relaxed),
            link: e.link,
        })
    }

    /// read-svc's answer to a refresh started by a [`Hit`]: kept like a
    /// miss's answer, except that a link now counted against `max_clicks`
    /// (whose refresh counted nothing) leaves the cache, so its next
    /// redirect is counted by read-svc. Nothing is kept after a failure:
    /// the entry lives out its `ttl` and the next miss asks again.
    pub async fn refreshed(&self, code: &str, answer: Result<Arc<ResolveResponse>, tonic::Code>) {
        REFRESHES.increment(1);
        match answer {
            Ok(link) if !link.uncacheable => self.insert(code, link).await,
            Ok(_) | Err(tonic::Code::NotFound) => self.entries.invalidate(code).await,
            Err(_) => {}
        }
    }

    /// The copy of `code` kept past its freshness, for when read-svc failed
    /// with `failure` (a server-side failure code): only while link events
    /// flow, never past the link's expiry or the stale window, never after
    /// an event for the code. Counted in `shortfleet_stale_redirects_total`.
    pub async fn stale(&self, code: &str, failure: tonic::Code) -> Option<Arc<ResolveResponse>> {
        if !self.live.load(Ordering::Relaxed) {
            return None;
        }
        let entry = self.entries.get(code).await?;
        let reason = match failure {
            tonic::Code::DeadlineExceeded => "deadline",
            tonic::Code::Unavailable => "unavailable",
            _ => "broken",
        };
        metrics::counter!("shortfleet_stale_redirects_total", "reason" => reason).increment(1);
        Some(entry.link)
    }

    pub async fn insert(&self, code: &str, resolved: Arc<ResolveResponse>) {
        if self.live.load(Ordering::Relaxed) && !self.older_than_events(code, &resolved) {
            let now = Instant::now();
            let entry = Entry {
                link: resolved,
                fresh_until: now + self.ttl,
                refresh_from: now + self.ttl.mul_f64(0.75),
                refreshing: Arc::new(AtomicBool::new(false)),
            };
            self.entries.insert(code.to_owned(), entry).await;
        }
    }

    /// Whether an event newer than `answer` was seen for `code` (an answer
    /// without a time is older than any event).
    fn older_than_events(&self, code: &str, answer: &ResolveResponse) -> bool {
        self.newest.get(code).is_some_and(|newest| {
            answer
                .updated_at
                .as_ref()
                .is_none_or(|t| (t.seconds, t.nanos) < newest)
        })
    }

    /// Remembers the newest change an event announced for its code.
    fn saw_event(&self, code: &str, updated_at: Option<&prost_types::Timestamp>) {
        let at = updated_at.map_or((i64::MIN, 0), |t| (t.seconds, t.nanos));
        self.newest
            .entry(code.to_owned())
            .and_upsert_with(|old| old.map_or(at, |o| (*o.value()).max(at)));
    }

    /// Event handlers: drop the code on any event (remembering how new the
    /// event was); forget everything (and go live) on each new subscription.
    pub fn handlers(&self) -> Handlers {
        let on_event = self.clone();
        let on_subscribed = self.clone();
        let on_lost = self.clone();
        Handlers {
            on_event: Arc::new(move |event| {
                let cache = on_event.clone();
                Box::pin(async move {
                    if let Some(link) = event.link {
                        cache.saw_event(&link.code, link.updated_at.as_ref());
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

#[cfg(test)]
mod tests {
    use super::*;
    use shortfleet_proto::v1::{Link, LinkEvent};

    fn link(code: &str, expires_in: Option<chrono::TimeDelta>) -> Arc<ResolveResponse> {
        Arc::new(ResolveResponse {
            code: code.into(),
            url: "https://example.com/".into(),
            redirect_type: 302,
            owner: "alice".into(),
            expires_at: expires_in
                .map(|d| shortfleet_common::time::to_proto(chrono::Utc::now() + d)),
            ..Default::default()
        })
    }

    async fn live_cache(ttl: Duration, stale: Duration) -> MicroCache {
        let cache = MicroCache::new(100, 1 << 20, ttl, stale);
        (cache.handlers().on_subscribed)().await;
        cache
    }

    #[tokio::test]
    async fn a_stale_copy_answers_only_after_freshness_and_within_its_window() {
        let cache = live_cache(Duration::from_millis(30), Duration::from_millis(300)).await;
        cache.insert("abc", link("abc", None)).await;
        assert!(cache.get("abc").await.is_some());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(cache.get("abc").await.is_none(), "no longer fresh");
        assert!(
            cache.stale("abc", tonic::Code::Unavailable).await.is_some(),
            "still stale-servable"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(cache.stale("abc", tonic::Code::Unavailable).await.is_none());
    }

    #[tokio::test]
    async fn one_hit_in_the_last_quarter_refreshes_and_the_answer_renews_or_removes() {
        let cache = live_cache(Duration::from_secs(2), Duration::ZERO).await;
        cache.insert("abc", link("abc", None)).await;
        let early = cache.get("abc").await.unwrap();
        assert!(!early.refresh, "three quarters of the ttl are left");
        tokio::time::sleep(Duration::from_millis(1_600)).await;
        let due = cache.get("abc").await.unwrap();
        assert!(due.refresh, "past three quarters: refresh");
        assert!(
            !cache.get("abc").await.unwrap().refresh,
            "only one hit refreshes"
        );

        // A failed refresh changes nothing: the entry lives out its ttl.
        cache.refreshed("abc", Err(tonic::Code::Unavailable)).await;
        assert_eq!(
            cache.get("abc").await.unwrap().link.url,
            "https://example.com/"
        );
        // A new answer is a new entry, fresh for a whole ttl.
        let mut edited = (*link("abc", None)).clone();
        edited.url = "https://example.com/renewed".into();
        cache.refreshed("abc", Ok(Arc::new(edited.clone()))).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let renewed = cache.get("abc").await.unwrap();
        assert_eq!(renewed.link.url, "https://example.com/renewed");
        assert!(!renewed.refresh, "renewed 0.6 s ago");
        // Now counted against max_clicks: out, so read-svc counts the next one.
        edited.uncacheable = true;
        cache.refreshed("abc", Ok(Arc::new(edited))).await;
        assert!(cache.get("abc").await.is_none());
    }

    #[tokio::test]
    async fn events_expiry_and_a_lost_subscription_end_stale_copies() {
        let cache = live_cache(Duration::ZERO, Duration::from_secs(60)).await;
        cache.insert("gone", link("gone", None)).await;
        cache
            .insert(
                "old",
                link("old", Some(chrono::TimeDelta::milliseconds(50))),
            )
            .await;
        cache.insert("kept", link("kept", None)).await;
        (cache.handlers().on_event)(LinkEvent {
            link: Some(Link {
                code: "gone".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(80)).await;
        let code = tonic::Code::Unavailable;
        assert!(
            cache.stale("gone", code).await.is_none(),
            "an event ends it"
        );
        assert!(
            cache.stale("old", code).await.is_none(),
            "never past expiry"
        );
        assert!(cache.stale("kept", code).await.is_some());
        (cache.handlers().on_lost)();
        assert!(
            cache.stale("kept", code).await.is_none(),
            "no events, no stale"
        );
    }

    #[tokio::test]
    async fn an_answer_older_than_an_event_seen_is_not_cached_again() {
        let cache = live_cache(Duration::from_secs(60), Duration::ZERO).await;
        let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
        let answer = |seconds| {
            let mut l = (*link("abc", None)).clone();
            l.updated_at = at(seconds);
            Arc::new(l)
        };
        (cache.handlers().on_event)(LinkEvent {
            link: Some(Link {
                code: "abc".into(),
                updated_at: at(200),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
        // read-svc has not applied the event yet: its answer predates it.
        cache.insert("abc", answer(100)).await;
        assert!(cache.get("abc").await.is_none(), "the old answer was kept");
        let mut timeless = (*answer(0)).clone();
        timeless.updated_at = None;
        cache.insert("abc", Arc::new(timeless)).await;
        assert!(
            cache.get("abc").await.is_none(),
            "no time: older than any event"
        );
        // Caught up: the event's own version (or anything newer) is kept.
        cache.insert("abc", answer(200)).await;
        assert!(cache.get("abc").await.is_some());
        // Codes without events are cached as before.
        cache.insert("other", link("other", None)).await;
        assert!(cache.get("other").await.is_some());
    }

    #[tokio::test]
    async fn both_bounds_hold() {
        let url = "https://example.com/".to_owned() + &"x".repeat(10_000);
        let cache = MicroCache::new(10, 64 << 10, Duration::from_secs(60), Duration::ZERO);
        (cache.handlers().on_subscribed)().await;
        for i in 0..100 {
            let code = format!("c{i}");
            let mut l = (*link(&code, None)).clone();
            l.url = if i % 2 == 0 {
                url.clone()
            } else {
                "https://a/".into()
            };
            cache.insert(&code, Arc::new(l)).await;
        }
        cache.entries.run_pending_tasks().await;
        assert!(cache.entries.entry_count() <= 10);
        assert!(cache.entries.weighted_size() <= 64 << 10);
    }

    #[tokio::test]
    async fn rules_and_other_urls_weigh_too() {
        let mut small = (*link("s", None)).clone();
        small.url = "https://a/".into();
        let mut ruled = small.clone();
        ruled.expired_url = "https://example.com/".to_owned() + &"e".repeat(2_000);
        ruled.rules = (0..20)
            .map(|_| shortfleet_proto::v1::RedirectRule {
                when: None,
                url: "https://example.com/".to_owned() + &"r".repeat(2_000),
            })
            .collect();
        let entry = |l: ResolveResponse| Entry {
            link: Arc::new(l),
            fresh_until: Instant::now(),
            refresh_from: Instant::now(),
            refreshing: Arc::default(),
        };
        let (light, heavy) = (weight("s", &entry(small), 0), weight("s", &entry(ruled), 0));
        assert!(light < 512, "{light}");
        assert!(heavy > 20 * 2_000 + 2_000, "{heavy}");
    }
}
