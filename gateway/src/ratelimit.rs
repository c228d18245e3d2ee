//! Token-bucket rate limiting shared by every gateway replica through Redis.
//!
//! A bucket holds at most `capacity` tokens and refills continuously at
//! `capacity / window`. The refill-and-take runs atomically in a Lua script
//! using Redis's clock, so any number of replicas share one budget. When
//! Redis cannot answer within its timeout the gateway keeps limiting with a
//! per-replica local bucket (the same arithmetic), reports it in
//! `shortfleet_ratelimit_degraded` and logs the transition; it recovers by
//! itself on the next successful call. While degraded, N replicas can admit
//! up to N budgets.
//!
//! Anonymous redirects are the hot path, so they do not pay a Redis round
//! trip per request: a replica *leases* a slice of the shared bucket
//! (`capacity / 20`, at least 1 token) in one atomic call and spends it
//! locally; a refusal is remembered locally until a token is due. The error
//! bound: never more admissions than the shared budget (leased tokens are
//! taken from it), and at most `replicas × lease` tokens per client sit
//! unused in leases, which lapse after `LEASE_TTL` (under-admission only).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use fred::{prelude::Client as RedisClient, types::scripts::Script};
use quick_cache::sync::Cache;

/// A named limit: `capacity` requests per `window`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    /// `name` as a metric label, shared: labelling a decision clones a
    /// pointer, not the string (every redirect is a decision).
    label: metrics::SharedString,
    pub capacity: u64,
    pub window: Duration,
    /// `RateLimit-Policy`, rendered once: it goes on every limited response.
    pub header_value: http::HeaderValue,
    /// Its decision counters, kept once registered.
    decisions: DecisionCounters,
}

/// The `allowed` and `limited` counters of one policy, registered on the
/// first decision (after the recorder is installed) and kept: every
/// redirect is a decision, and a handle skips the registry's lookup by name
/// and labels. Not part of what a policy is, so it never makes two equal
/// policies differ.
#[derive(Debug, Clone, Default)]
struct DecisionCounters(std::sync::OnceLock<[metrics::Counter; 2]>);

impl PartialEq for DecisionCounters {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Policy {
    /// Parses `"<requests>/<window seconds>"`, e.g. `100/60`.
    pub fn parse(name: &str, raw: &str) -> Result<Self, String> {
        let (q, w) = raw
            .split_once('/')
            .ok_or_else(|| format!("{raw:?} is not <requests>/<seconds>"))?;
        let capacity: u64 = q.trim().parse().map_err(|e| format!("{raw:?}: {e}"))?;
        let window: u64 = w.trim().parse().map_err(|e| format!("{raw:?}: {e}"))?;
        if capacity == 0 || window == 0 {
            return Err(format!("{raw:?}: requests and seconds must be positive"));
        }
        let header = format!("\"{name}\";q={capacity};w={window}");
        let header_value = http::HeaderValue::from_str(&header)
            .map_err(|_| format!("{name:?} cannot appear in a header"))?;
        Ok(Self {
            name: name.to_owned(),
            label: metrics::SharedString::from(std::sync::Arc::<str>::from(name)),
            capacity,
            window: Duration::from_secs(window),
            header_value,
            decisions: DecisionCounters::default(),
        })
    }

    /// Stands in for a policy whose setting was invalid while the rest of
    /// the configuration is read; that configuration is refused as a whole
    /// (every invalid key reported), so this value never limits anything.
    pub fn placeholder(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            label: metrics::SharedString::from(std::sync::Arc::<str>::from(name)),
            capacity: 1,
            window: Duration::from_secs(1),
            header_value: http::HeaderValue::from_static("invalid"),
            decisions: DecisionCounters::default(),
        }
    }

    /// Tokens added per second.
    pub fn rate(&self) -> f64 {
        self.capacity as f64 / self.window.as_secs_f64()
    }
}

/// The outcome of taking one token.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Whole tokens left.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// Seconds until one token is available (for `Retry-After`).
    pub retry_after_secs: u64,
}

impl Decision {
    /// Derives the headers' numbers from the bucket level after the take.
    pub fn from_level(policy: &Policy, allowed: bool, tokens: f64) -> Self {
        let rate = policy.rate();
        let tokens = tokens.clamp(0.0, policy.capacity as f64);
        let missing = policy.capacity as f64 - tokens;
        Self {
            allowed,
            remaining: tokens.floor() as u64,
            reset_secs: (missing / rate).ceil() as u64,
            retry_after_secs: if tokens >= 1.0 {
                0
            } else {
                ((1.0 - tokens) / rate).ceil().max(1.0) as u64
            },
        }
    }

    /// `RateLimit` header value. Written into one buffer of the right size
    /// with `itoa`: every redirect carries it, and `format!` cost a
    /// formatter pass and a regrowth per request (BENCHMARKS.md profile).
    pub fn header(&self, policy: &Policy) -> String {
        let (mut remaining, mut reset) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (remaining, reset) = (
            remaining.format(self.remaining),
            reset.format(self.reset_secs),
        );
        let mut value =
            String::with_capacity(policy.name.len() + remaining.len() + reset.len() + 8);
        for part in ["\"", &policy.name, "\";r=", remaining, ";t=", reset] {
            value.push_str(part);
        }
        value
    }
}

/// A bucket's state: tokens at a moment. Pure arithmetic, shared by the local
/// fallback and mirrored by the Lua script.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub at: Instant,
}

impl Bucket {
    pub fn full(policy: &Policy, now: Instant) -> Self {
        Self {
            tokens: policy.capacity as f64,
            at: now,
        }
    }

    /// Refills up to `now`, then takes one token if there is one.
    pub fn take(&mut self, policy: &Policy, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * policy.rate()).min(policy.capacity as f64);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How long leased tokens may be spent before they lapse.
const LEASE_TTL: Duration = Duration::from_secs(1);

/// Leases (and local buckets) kept per replica: one per client address
/// and policy in use; the least used go first beyond this.
const TRACKED_CLIENTS: usize = 100_000;

/// The shared state under `key`, created by the first caller (others
/// wait for it rather than create a second).
fn get_or_create<T>(
    cache: &Cache<String, Arc<Mutex<T>>>,
    key: &str,
    create: impl FnOnce() -> T,
) -> Arc<Mutex<T>> {
    let Ok(shared) = cache.get_or_insert_with(key, || {
        Ok::<_, std::convert::Infallible>(Arc::new(Mutex::new(create())))
    });
    shared
}

/// A replica's slice of one shared bucket.
#[derive(Debug, Default)]
struct Lease {
    tokens: u64,
    /// The shared bucket's level when the lease was granted.
    shared_level: f64,
    until: Option<Instant>,
    /// Set after a refusal: no point asking Redis before a token is due.
    refused_until: Option<Instant>,
    /// Held while this replica asks Redis for a new lease: renewal is
    /// single-flight. Without it, every connection finding the lease spent
    /// at once asked for a slice of its own, and twenty concurrent
    /// renewals (each a twentieth of the bucket) emptied a bucket nobody
    /// had used up, refusing clients with 429 under any limit.
    renewal: Arc<tokio::sync::Mutex<()>>,
}

/// Refill, then take up to ARGV[3] tokens, atomically; returns {granted,
/// tokens-after as a string} (Lua numbers would be truncated to integers on
/// the way back). One token is a single request's check, more a lease.
const TAKE_SCRIPT: &str = r#"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local capacity = tonumber(ARGV[1])
local per_ms = tonumber(ARGV[2]) / 1000
local want = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = capacity
  at = now
end
tokens = math.min(capacity, tokens + math.max(0, now - at) * per_ms)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / per_ms) + 1000)
return {granted, tostring(tokens)}
"#;

#[derive(Clone)]
pub struct RateLimiter {
    redis: RedisClient,
    prefix: Arc<str>,
    script: Arc<Script>,
    /// Looked up on every redirect, so a plain bounded map (quick_cache,
    /// as the micro-cache): no time-to-idle is needed, since a lease
    /// lapses by its own `until` and a bucket refills by its own clock. An
    /// evicted one starts again: a lease empty (under-admission only), a
    /// local bucket full, as a new client's would.
    leases: Arc<Cache<String, Arc<Mutex<Lease>>>>,
    /// Per-replica buckets used while Redis is unreachable.
    local: Arc<Cache<String, Arc<Mutex<Bucket>>>>,
    degraded: Arc<AtomicBool>,
}

impl RateLimiter {
    pub fn new(redis: RedisClient, prefix: &str) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
            script: Arc::new(Script::from_lua(TAKE_SCRIPT)),
            leases: Arc::new(Cache::new(TRACKED_CLIENTS)),
            local: Arc::new(Cache::new(TRACKED_CLIENTS)),
            degraded: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Takes up to `want` tokens from the shared bucket `key`: the tokens
    /// granted and the bucket's level after.
    async fn take(
        &self,
        key: &str,
        policy: &Policy,
        want: u64,
    ) -> Result<(u64, f64), fred::error::Error> {
        let (granted, level): (u64, String) = self
            .script
            .evalsha_with_reload(
                &self.redis,
                key.to_owned(),
                vec![
                    policy.capacity.to_string(),
                    policy.rate().to_string(),
                    want.to_string(),
                ],
            )
            .await?;
        Ok((granted, level.parse().unwrap_or(0.0)))
    }

    /// The Redis key of `subject`'s bucket under `policy` (also the local
    /// buckets' and leases' key): `<prefix>rl:<policy>:<subject>`. Joined
    /// in one allocation of the right size: `format!` grew the string piece
    /// by piece (a `realloc` on every redirect).
    fn bucket_key(&self, policy: &Policy, subject: &str) -> String {
        [&*self.prefix, "rl:", &policy.name, ":", subject].concat()
    }

    /// Takes one token from the bucket `subject` under `policy`.
    pub async fn check(&self, policy: &Policy, subject: &str) -> Decision {
        let key = self.bucket_key(policy, subject);
        let decision = match self.take(&key, policy, 1).await {
            Ok((granted, tokens)) => {
                self.set_degraded(false, None);
                Decision::from_level(policy, granted == 1, tokens)
            }
            Err(e) => {
                self.set_degraded(true, Some(&e));
                self.check_locally(policy, &key)
            }
        };
        record(policy, decision)
    }

    /// Takes one token from a locally held lease of the shared bucket,
    /// renewing the lease from Redis only when it is spent or lapsed.
    pub async fn check_leased(&self, policy: &Policy, subject: &str) -> Decision {
        let key = self.bucket_key(policy, subject);
        // By reference: the key is copied only when a lease is created.
        let lease = get_or_create(&self.leases, &key, Lease::default);
        let now = Instant::now();
        if let Some(decision) = spend(&lease, policy, now) {
            return record(policy, decision);
        }
        // Boxed: the renewal's Redis call is a large future that nearly
        // every redirect skips, and an inline one would be moved with each
        // redirect's future.
        Box::pin(self.renew_lease(policy, key, lease, now)).await
    }

    /// The lease is spent or lapsed: one task renews it from Redis (the
    /// others wait for that renewal, then spend from it).
    async fn renew_lease(
        &self,
        policy: &Policy,
        key: String,
        lease: Arc<Mutex<Lease>>,
        now: Instant,
    ) -> Decision {
        let renewal = lease
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .renewal
            .clone();
        let _renewing = renewal.lock().await;
        // Another task may have renewed the lease while this one waited.
        if let Some(decision) = spend(&lease, policy, Instant::now()) {
            return record(policy, decision);
        }
        let want = (policy.capacity / 20).max(1);
        let decision = match self.take(&key, policy, want).await {
            Ok((granted, level)) => {
                self.set_degraded(false, None);
                let mut l = lease.lock().unwrap_or_else(|p| p.into_inner());
                l.tokens += granted;
                l.shared_level = level;
                l.until = Some(now + LEASE_TTL);
                if l.tokens > 0 {
                    l.tokens -= 1;
                    l.refused_until = None;
                    Decision::from_level(policy, true, level + l.tokens as f64)
                } else {
                    let refused = Decision::from_level(policy, false, level);
                    l.refused_until =
                        Some(now + Duration::from_secs_f64((1.0 - level).max(0.0) / policy.rate()));
                    refused
                }
            }
            Err(e) => {
                self.set_degraded(true, Some(&e));
                self.check_locally(policy, &key)
            }
        };
        record(policy, decision)
    }

    fn check_locally(&self, policy: &Policy, key: &str) -> Decision {
        let now = Instant::now();
        let bucket = get_or_create(&self.local, key, || Bucket::full(policy, now));
        let mut bucket = bucket.lock().unwrap_or_else(|p| p.into_inner());
        let allowed = bucket.take(policy, now);
        Decision::from_level(policy, allowed, bucket.tokens)
    }

    fn set_degraded(&self, degraded: bool, error: Option<&fred::error::Error>) {
        if self.degraded.swap(degraded, Ordering::Relaxed) != degraded {
            if degraded {
                tracing::warn!(error = ?error.map(ToString::to_string), "rate limiter degraded to per-replica buckets: Redis unreachable");
            } else {
                tracing::info!("rate limiter back on shared Redis buckets");
            }
            metrics::gauge!("shortfleet_ratelimit_degraded").set(f64::from(u8::from(degraded)));
        }
    }
}

/// Spends from a live lease, or repeats a recent refusal; `None` when only
/// Redis can decide.
fn spend(lease: &Mutex<Lease>, policy: &Policy, now: Instant) -> Option<Decision> {
    let mut l = lease.lock().unwrap_or_else(|p| p.into_inner());
    if l.tokens > 0 && l.until.is_some_and(|t| now < t) {
        l.tokens -= 1;
        return Some(Decision::from_level(
            policy,
            true,
            l.shared_level + l.tokens as f64,
        ));
    }
    if l.until.is_some_and(|t| now >= t) {
        // Unspent tokens lapse: they were taken from the shared bucket.
        l.tokens = 0;
    }
    match l.refused_until {
        Some(t) if now < t => Some(Decision::from_level(policy, false, 0.0)),
        _ => None,
    }
}

fn record(policy: &Policy, decision: Decision) -> Decision {
    let [allowed, limited] = policy.decisions.0.get_or_init(|| {
        ["allowed", "limited"].map(|outcome| {
            metrics::counter!("shortfleet_ratelimit_decisions_total", "policy" => policy.label.clone(), "decision" => outcome)
        })
    });
    if decision.allowed { allowed } else { limited }.increment(1);
    decision
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_ratelimit_decisions_total",
        metrics::Unit::Count,
        "Rate-limit decisions, by policy and decision."
    );
    metrics::describe_gauge!(
        "shortfleet_ratelimit_degraded",
        "Whether rate limiting runs on per-replica local buckets because Redis is unreachable (1) or on shared Redis buckets (0)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::parse("free", "100/60").unwrap()
    }

    #[test]
    fn parses_policies_and_renders_headers() {
        let p = policy();
        assert_eq!(p.header_value, "\"free\";q=100;w=60");
        assert!(Policy::parse("x", "0/60").is_err());
        assert!(Policy::parse("x", "10").is_err());
        assert!(Policy::parse("x", "a/b").is_err());
    }

    #[test]
    fn a_full_bucket_admits_capacity_then_refuses() {
        let p = policy();
        let t0 = Instant::now();
        let mut b = Bucket::full(&p, t0);
        for _ in 0..100 {
            assert!(b.take(&p, t0));
        }
        assert!(!b.take(&p, t0));
        // 100 per 60 s refills one token every 0.6 s.
        assert!(!b.take(&p, t0 + Duration::from_millis(500)));
        assert!(b.take(&p, t0 + Duration::from_millis(1200)));
    }

    #[test]
    fn refill_never_exceeds_capacity() {
        let p = policy();
        let t0 = Instant::now();
        let mut b = Bucket::full(&p, t0);
        assert!(b.take(&p, t0 + Duration::from_secs(3600)));
        assert!((b.tokens - 99.0).abs() < 1e-9);
    }

    #[test]
    fn a_lease_is_spent_locally_then_lapses() {
        let p = policy();
        let t0 = Instant::now();
        let lease = Mutex::new(Lease {
            tokens: 2,
            shared_level: 50.0,
            until: Some(t0 + LEASE_TTL),
            refused_until: None,
            ..Lease::default()
        });
        assert!(spend(&lease, &p, t0).unwrap().allowed);
        let last = spend(&lease, &p, t0).unwrap();
        assert!(last.allowed);
        assert_eq!(last.remaining, 50);
        // Spent: only Redis can decide now.
        assert!(spend(&lease, &p, t0).is_none());
        let lapsed = Mutex::new(Lease {
            tokens: 5,
            shared_level: 0.0,
            until: Some(t0),
            refused_until: None,
            ..Lease::default()
        });
        assert!(spend(&lapsed, &p, t0 + Duration::from_millis(1)).is_none());
        assert_eq!(lapsed.lock().unwrap().tokens, 0);
    }

    #[test]
    fn a_refusal_is_repeated_locally_until_a_token_is_due() {
        let p = policy();
        let t0 = Instant::now();
        let lease = Mutex::new(Lease {
            refused_until: Some(t0 + Duration::from_millis(600)),
            ..Lease::default()
        });
        assert!(!spend(&lease, &p, t0).unwrap().allowed);
        assert!(spend(&lease, &p, t0 + Duration::from_millis(600)).is_none());
    }

    #[test]
    fn decision_numbers_match_the_draft_headers() {
        let p = policy();
        let d = Decision::from_level(&p, true, 42.5);
        assert_eq!(d.remaining, 42);
        // 57.5 tokens missing at 100/60 per second → 34.5 s → 35.
        assert_eq!(d.reset_secs, 35);
        assert_eq!(d.header(&p), "\"free\";r=42;t=35");
        let refused = Decision::from_level(&p, false, 0.4);
        assert!(!refused.allowed);
        // 0.6 token missing at 1.667/s → 0.36 s → rounded up to 1.
        assert_eq!(refused.retry_after_secs, 1);
    }
}
