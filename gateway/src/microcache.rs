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
//! Refreshed ahead: from a point drawn at random between half and three
//! quarters of its `ttl`, the first hit on an entry (and only that one)
//! also asks read-svc again in the background ([`Hit::refresh`]), so a hot
//! code is renewed before it goes stale and no redirect waits for the hop
//! (with a thousand hot links, expiries alone sent one redirect in a
//! hundred to read-svc: the fleet's p99 at a fixed rate, BENCHMARKS.md).
//! The point is random so that codes cached together are not renewed
//! together: at one fixed point, a thousand codes first cached in the same
//! second were renewed in the same 50 ms, again every three quarters of a
//! `ttl`, a burst of gRPC calls that kept both CPUs busy for 200 ms, a
//! part of the fleet's fixed-rate tail (BENCHMARKS.md). An entry is never
//! answered past its `ttl` either way; one nobody asks for after its point
//! expires as before.
//!
//! Bounded twice: at most `capacity` entries and `max_bytes` of them. Each
//! entry weighs its size, but at least `max_bytes / capacity`, so one bound
//! on weight enforces both.
//!
//! Every redirect looks a code up here, so the store is `quick_cache`: a
//! sharded map under read locks with S3-FIFO eviction, whose hit is a hash
//! lookup and a clone. moka, used before, recorded each read in a queue
//! for its bookkeeping and applied the queue on the request path: 10 % of
//! a redirect's CPU with the rate limiter's leases (BENCHMARKS.md).
//! quick_cache has no time-to-live, so an entry carries its own deadlines
//! and is checked on every read: one past them is never answered, and
//! takes its room (within both bounds) until a new answer replaces it or
//! eviction takes it.

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use quick_cache::{Weighter, sync::Cache};
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
    /// Past this instant it answers nothing, not even stale: `ttl +
    /// stale_for` after the answer came, never past the link's expiry.
    dead_at: Instant,
    /// Set by the one hit that starts the refresh.
    refreshing: Arc<AtomicBool>,
    /// What it weighs against `max_bytes`, worked out once: the cache asks
    /// again whenever it evicts.
    weight: u64,
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
    entries: Arc<Cache<String, Entry, EntryWeight>>,
    /// The newest `updated_at` (seconds, nanos) link events carried per
    /// code, kept as long as an entry can live. Touched by events and
    /// misses only, so moka's time-to-live does the forgetting.
    newest: moka::sync::Cache<String, (i64, i32)>,
    ttl: Duration,
    /// `ttl + stale_for`: how long an entry may live at most.
    lifetime: Duration,
    /// The least an entry weighs: `max_bytes / capacity`.
    floor: u64,
    /// True while link events flow; otherwise every lookup misses.
    live: Arc<AtomicBool>,
}

/// The weight each entry carries.
#[derive(Clone)]
struct EntryWeight;

impl Weighter<String, Entry> for EntryWeight {
    fn weight(&self, _code: &String, entry: &Entry) -> u64 {
        entry.weight
    }
}

/// What an entry weighs against `max_bytes`: the link's encoded size
/// stands for the bytes of all its strings (url, owner, rules' urls and
/// conditions, `expired_url`, the password hash), plus the fixed size of
/// each rule's structs, which encoding does not show.
fn weight(code: &str, link: &ResolveResponse, floor: u64) -> u64 {
    let bytes = ENTRY_OVERHEAD
        + 2 * code.len()
        + prost::Message::encoded_len(link)
        + link.rules.len() * RULE_OVERHEAD;
    (bytes as u64).max(floor)
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

/// Whether `answer` predates a change made at `changed`. A missing time on
/// either side counts as older: only an answer provably as new is kept.
/// write-svc makes each link's `updated_at` strictly increase, so equal
/// times are one version.
fn predates(answer: &ResolveResponse, changed: Option<&prost_types::Timestamp>) -> bool {
    match (answer.updated_at.as_ref(), changed) {
        (Some(a), Some(c)) => version(a) < version(c),
        _ => true,
    }
}

/// A protobuf time as a comparable pair.
fn version(t: &prost_types::Timestamp) -> (i64, i32) {
    (t.seconds, t.nanos)
}

/// When, after an answer came, a hit starts its refresh: at `draw`
/// (uniform in `[0, 1)`) of the way from half the `ttl` to three quarters.
fn refresh_point(ttl: Duration, draw: f64) -> Duration {
    ttl.mul_f64(0.5 + 0.25 * draw.clamp(0.0, 1.0))
}

impl MicroCache {
    /// `capacity` entries and `max_bytes` at most (`capacity` 0: nothing
    /// is kept); fresh for `ttl`, then stale for `stale_for` (zero: never
    /// answers stale).
    pub fn new(capacity: u64, max_bytes: u64, ttl: Duration, stale_for: Duration) -> Self {
        let lifetime = ttl.saturating_add(stale_for);
        let max_bytes = if capacity == 0 { 0 } else { max_bytes };
        Self {
            entries: Arc::new(Cache::with_weighter(
                usize::try_from(capacity).unwrap_or(usize::MAX),
                max_bytes,
                EntryWeight,
            )),
            newest: moka::sync::Cache::builder()
                .max_capacity(capacity.max(1))
                .time_to_live(lifetime)
                .build(),
            ttl,
            lifetime,
            floor: max_bytes / capacity.max(1),
            live: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A fresh entry for `code`, if any (a stale one is a miss here).
    pub fn get(&self, code: &str) -> Option<Hit> {
        if !self.live.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        let entry = self.entries.get(code).filter(|e| now < e.fresh_until);
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
    pub fn refreshed(&self, code: &str, answer: Result<Arc<ResolveResponse>, tonic::Code>) {
        REFRESHES.increment(1);
        match answer {
            Ok(link) if !link.uncacheable => self.insert(code, link),
            Ok(_) | Err(tonic::Code::NotFound) => {
                self.entries.remove(code);
            }
            Err(_) => {}
        }
    }

    /// The copy of `code` kept past its freshness, for when read-svc failed
    /// with `failure` (a server-side failure code): only while link events
    /// flow, never past the link's expiry or the stale window, never after
    /// an event for the code. Counted in `shortfleet_stale_redirects_total`.
    pub fn stale(&self, code: &str, failure: tonic::Code) -> Option<Arc<ResolveResponse>> {
        if !self.live.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        let entry = self.entries.get(code).filter(|e| now < e.dead_at)?;
        let reason = match failure {
            tonic::Code::DeadlineExceeded => "deadline",
            tonic::Code::Unavailable => "unavailable",
            _ => "broken",
        };
        metrics::counter!("shortfleet_stale_redirects_total", "reason" => reason).increment(1);
        Some(entry.link)
    }

    pub fn insert(&self, code: &str, resolved: Arc<ResolveResponse>) {
        if !self.live.load(Ordering::Relaxed) || self.older_than_events(code, &resolved) {
            return;
        }
        let now = Instant::now();
        let dead_at = now + self.lifetime_of(&resolved);
        let entry = Entry {
            weight: weight(code, &resolved, self.floor),
            link: resolved,
            fresh_until: (now + self.ttl).min(dead_at),
            refresh_from: now + refresh_point(self.ttl, rand::random::<f64>()),
            dead_at,
            refreshing: Arc::new(AtomicBool::new(false)),
        };
        self.entries.insert(code.to_owned(), entry);
    }

    /// How long an answer may live: `ttl + stale_for`, never past the
    /// link's expiry.
    fn lifetime_of(&self, link: &ResolveResponse) -> Duration {
        let until_expiry = link
            .expires_at
            .as_ref()
            .and_then(from_proto)
            .map(|t| (t - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO));
        until_expiry.map_or(self.lifetime, |left| left.min(self.lifetime))
    }

    /// Whether an event newer than `answer` was seen for `code` (an answer
    /// without a time is older than any event).
    fn older_than_events(&self, code: &str, answer: &ResolveResponse) -> bool {
        self.newest.get(code).is_some_and(|newest| {
            answer
                .updated_at
                .as_ref()
                .is_none_or(|t| version(t) < newest)
        })
    }

    /// Remembers the newest change an event announced for its code.
    fn saw_event(&self, code: &str, updated_at: Option<&prost_types::Timestamp>) {
        let at = updated_at.map_or((i64::MIN, 0), version);
        self.newest
            .entry(code.to_owned())
            .and_upsert_with(|old| old.map_or(at, |o| (*o.value()).max(at)));
    }

    /// Event handlers: on an event, drop the code's answer if it predates
    /// the change (remembering how new the change was); forget everything
    /// (and go live) on each new subscription.
    pub fn handlers(&self) -> Handlers {
        let on_event = self.clone();
        let on_subscribed = self.clone();
        let on_lost = self.clone();
        Handlers {
            on_event: Arc::new(move |event| {
                let cache = on_event.clone();
                Box::pin(async move {
                    if let Some(link) = event.link {
                        let changed = link.updated_at.as_ref();
                        cache.saw_event(&link.code, changed);
                        // An answer already as new as the change (a link
                        // redirected once before its own `created` event
                        // arrived) stays: dropping it would only cost a
                        // miss, and its stale-if-error copy.
                        cache
                            .entries
                            .remove_if(link.code.as_str(), |e| predates(&e.link, changed));
                    }
                })
            }),
            on_subscribed: Arc::new(move || {
                let cache = on_subscribed.clone();
                Box::pin(async move {
                    cache.entries.clear();
                    cache.live.store(true, Ordering::Relaxed);
                })
            }),
            on_lost: Arc::new(move || {
                on_lost.live.store(false, Ordering::Relaxed);
                on_lost.entries.clear();
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
        cache.insert("abc", link("abc", None));
        assert!(cache.get("abc").is_some());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(cache.get("abc").is_none(), "no longer fresh");
        assert!(
            cache.stale("abc", tonic::Code::Unavailable).is_some(),
            "still stale-servable"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(cache.stale("abc", tonic::Code::Unavailable).is_none());
    }

    #[tokio::test]
    async fn one_hit_after_the_refresh_point_refreshes_and_the_answer_renews_or_removes() {
        let cache = live_cache(Duration::from_secs(2), Duration::ZERO).await;
        cache.insert("abc", link("abc", None));
        let early = cache.get("abc").unwrap();
        assert!(!early.refresh, "more than half the ttl is left");
        tokio::time::sleep(Duration::from_millis(1_600)).await;
        let due = cache.get("abc").unwrap();
        assert!(
            due.refresh,
            "past three quarters: refresh, wherever the point fell"
        );
        assert!(!cache.get("abc").unwrap().refresh, "only one hit refreshes");

        // A failed refresh changes nothing: the entry lives out its ttl.
        cache.refreshed("abc", Err(tonic::Code::Unavailable));
        assert_eq!(cache.get("abc").unwrap().link.url, "https://example.com/");
        // A new answer is a new entry, fresh for a whole ttl.
        let mut edited = (*link("abc", None)).clone();
        edited.url = "https://example.com/renewed".into();
        cache.refreshed("abc", Ok(Arc::new(edited.clone())));
        tokio::time::sleep(Duration::from_millis(600)).await;
        let renewed = cache.get("abc").unwrap();
        assert_eq!(renewed.link.url, "https://example.com/renewed");
        assert!(!renewed.refresh, "renewed 0.6 s ago, before half the ttl");
        // Now counted against max_clicks: out, so read-svc counts the next one.
        edited.uncacheable = true;
        cache.refreshed("abc", Ok(Arc::new(edited)));
        assert!(cache.get("abc").is_none());
    }

    #[test]
    fn the_refresh_point_lies_between_half_and_three_quarters_of_the_ttl() {
        let ttl = Duration::from_secs(4);
        assert_eq!(refresh_point(ttl, 0.0), Duration::from_secs(2));
        assert_eq!(refresh_point(ttl, 0.5), Duration::from_millis(2_500));
        assert_eq!(refresh_point(ttl, 1.0), Duration::from_secs(3));
        assert_eq!(refresh_point(ttl, 7.0), Duration::from_secs(3));
    }

    /// A thousand codes cached in the same instant are not renewed in the
    /// same instant: their refresh points spread over the whole window,
    /// no twentieth of it holding more than a small share of them.
    #[tokio::test]
    async fn codes_cached_together_are_refreshed_apart() {
        let ttl = Duration::from_secs(100);
        let cache = MicroCache::new(2_000, 1 << 24, ttl, Duration::ZERO);
        (cache.handlers().on_subscribed)().await;
        let codes: Vec<String> = (0..1_000).map(|i| format!("c{i}")).collect();
        let before = Instant::now();
        for code in &codes {
            cache.insert(code, link(code, None));
        }
        let mut slices = [0u32; 20];
        for code in &codes {
            let entry = cache.entries.get(code.as_str()).unwrap();
            let after = entry.refresh_from.duration_since(before).as_secs_f64();
            let share = (after / ttl.as_secs_f64() - 0.5) / 0.25;
            assert!(
                (0.0..1.01).contains(&share),
                "refresh point at {share} of the window"
            );
            slices[((share * 20.0) as usize).min(19)] += 1;
        }
        // Uniform: 50 per slice; all at one point would put 1,000 in one.
        assert!(slices.iter().all(|&n| n < 150), "{slices:?}");
        assert!(
            slices.iter().filter(|&&n| n > 0).count() >= 18,
            "{slices:?}"
        );
    }

    #[tokio::test]
    async fn events_expiry_and_a_lost_subscription_end_stale_copies() {
        let cache = live_cache(Duration::ZERO, Duration::from_secs(60)).await;
        cache.insert("gone", link("gone", None));
        cache.insert(
            "old",
            link("old", Some(chrono::TimeDelta::milliseconds(50))),
        );
        cache.insert("kept", link("kept", None));
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
        assert!(cache.stale("gone", code).is_none(), "an event ends it");
        assert!(cache.stale("old", code).is_none(), "never past expiry");
        assert!(cache.stale("kept", code).is_some());
        (cache.handlers().on_lost)();
        assert!(cache.stale("kept", code).is_none(), "no events, no stale");
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
        cache.insert("abc", answer(100));
        assert!(cache.get("abc").is_none(), "the old answer was kept");
        let mut timeless = (*answer(0)).clone();
        timeless.updated_at = None;
        cache.insert("abc", Arc::new(timeless));
        assert!(cache.get("abc").is_none(), "no time: older than any event");
        // Caught up: the event's own version (or anything newer) is kept.
        cache.insert("abc", answer(200));
        assert!(cache.get("abc").is_some());
        // Codes without events are cached as before.
        cache.insert("other", link("other", None));
        assert!(cache.get("other").is_some());
    }

    #[tokio::test]
    async fn an_event_drops_only_an_answer_older_than_its_change() {
        let cache = live_cache(Duration::from_secs(60), Duration::ZERO).await;
        let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
        let event = |seconds| LinkEvent {
            link: Some(Link {
                code: "abc".into(),
                updated_at: at(seconds),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut answer = (*link("abc", None)).clone();
        answer.updated_at = at(100);
        cache.insert("abc", Arc::new(answer));
        // The `created` event of the version already cached, arriving late.
        (cache.handlers().on_event)(event(100)).await;
        assert!(cache.get("abc").is_some(), "its own event dropped it");
        (cache.handlers().on_event)(event(101)).await;
        assert!(cache.get("abc").is_none(), "a newer change kept it");
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
            cache.insert(&code, Arc::new(l));
        }
        assert!(cache.entries.len() <= 10, "{}", cache.entries.len());
        assert!(
            cache.entries.weight() <= 64 << 10,
            "{}",
            cache.entries.weight()
        );
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
        let (light, heavy) = (weight("s", &small, 0), weight("s", &ruled, 0));
        assert!(light < 512, "{light}");
        assert!(heavy > 20 * 2_000 + 2_000, "{heavy}");
    }
}
