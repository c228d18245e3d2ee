//! The hot path: in-process cache → Redis read model → write-svc, each level
//! filling the ones above it.
//!
//! - Concurrent misses for one code make one load (moka's `try_get_with`
//!   coalesces them), so a cold popular link cannot stampede Redis or
//!   write-svc.
//! - Unknown codes are cached negatively (locally and in Redis) for a short
//!   TTL.
//! - Redis down: the level is skipped (each command is bounded by a short
//!   timeout and fails fast while disconnected); resolves keep working from
//!   the local cache and write-svc, only slower.
//! - write-svc down: cached codes keep resolving; uncached ones answer
//!   UNAVAILABLE.
//! - A load racing a link event never leaves the older answer behind: moka
//!   stores a load's result even over an event's newer link that arrived
//!   while the load ran (write-svc may answer from a replica up to its lag
//!   bound behind), so a load's result is checked against the links of
//!   recent events ([`Resolver::newest`]).

use std::{sync::Arc, time::Duration};

use fred::prelude::{Client as RedisClient, Expiration, KeysInterface, SetOptions};
use moka::{Expiry, future::Cache};
use prost::Message;
use shortfleet_common::grpc::Balanced as Channel;
use shortfleet_common::ops::Health;
use shortfleet_proto::v1::{GetLinkRequest, Link, link_writer_client::LinkWriterClient};
use tonic::Code;

use crate::lookup::{Lookup, is_plausible_code};

/// Marker stored in Redis for a code known not to exist.
const MISSING: &[u8] = b"-";

#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error("link store unavailable")]
    Unavailable,
    #[error("link store timed out")]
    Timeout,
}

/// How long an event's link is remembered for loads that started before it:
/// longer than any load takes (each level is bounded by its timeout).
const RECENT_EVENT_TTL: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Resolver {
    local: Cache<String, Lookup>,
    /// Links that events delivered in the last [`RECENT_EVENT_TTL`], by code.
    recent_events: Cache<String, Arc<Link>>,
    redis: RedisClient,
    prefix: Arc<str>,
    redis_ttl: Duration,
    negative_ttl: Duration,
    upstream: LinkWriterClient<Channel>,
    upstream_timeout: Duration,
    health: Health,
}

/// Positive entries live `positive`, negative ones `negative`.
struct LookupExpiry {
    positive: Duration,
    negative: Duration,
}

impl Expiry<String, Lookup> for LookupExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Lookup,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(match value {
            Lookup::Found(_) => self.positive,
            Lookup::Missing => self.negative,
        })
    }
}

pub struct ResolverParts {
    pub redis: RedisClient,
    pub prefix: String,
    pub redis_ttl: Duration,
    pub local_capacity: u64,
    pub local_ttl: Duration,
    pub negative_ttl: Duration,
    pub upstream: LinkWriterClient<Channel>,
    pub upstream_timeout: Duration,
    pub health: Health,
}

impl Resolver {
    pub fn new(p: ResolverParts) -> Self {
        let local = Cache::builder()
            .max_capacity(p.local_capacity)
            .expire_after(LookupExpiry {
                positive: p.local_ttl,
                negative: p.negative_ttl,
            })
            .build();
        Self {
            local,
            recent_events: Cache::builder()
                .max_capacity(p.local_capacity)
                .time_to_live(RECENT_EVENT_TTL)
                .build(),
            redis: p.redis,
            prefix: p.prefix.into(),
            redis_ttl: p.redis_ttl,
            negative_ttl: p.negative_ttl,
            upstream: p.upstream,
            upstream_timeout: p.upstream_timeout,
            health: p.health,
        }
    }

    /// Resolves `code` through the three levels.
    pub async fn resolve(&self, code: &str) -> Result<Lookup, ResolveError> {
        if !is_plausible_code(code) {
            return Ok(Lookup::Missing);
        }
        if let Some(hit) = self.local.get(code).await {
            count("local", "hit");
            return Ok(hit);
        }
        count("local", "miss");
        let this = self.clone();
        let key = code.to_owned();
        let loaded = self
            .local
            .try_get_with(key.clone(), async move { this.load(&key).await })
            .await
            .map_err(|e| (*e).clone())?;
        Ok(self.newest(code, loaded).await)
    }

    /// `loaded`, unless an event brought a newer link for `code` while it
    /// loaded: then that link, put back in the local level.
    async fn newest(&self, code: &str, loaded: Lookup) -> Lookup {
        let Some(event) = self.recent_events.get(code).await else {
            return loaded;
        };
        if !supersedes(&event, &loaded) {
            return loaded;
        }
        let newer = Lookup::Found(event);
        self.local.insert(code.to_owned(), newer.clone()).await;
        newer
    }

    /// The Redis client, for health tracking.
    pub fn redis(&self) -> &RedisClient {
        &self.redis
    }

    /// Empties the in-process level (after missing events for a while).
    pub async fn forget_local(&self) {
        self.local.invalidate_all();
        self.local.run_pending_tasks().await;
    }

    /// Replaces what both levels hold for a link a `LinkEvent` says changed
    /// (created, updated or deleted): the event carries the whole link, so
    /// the next redirect needs no upstream call.
    pub async fn refresh(&self, link: Link) {
        let code = link.code.clone();
        let value = link.encode_to_vec();
        let link = Arc::new(link);
        self.recent_events.insert(code.clone(), link.clone()).await;
        self.local.insert(code.clone(), Lookup::Found(link)).await;
        let expiry = Expiration::PX(i64::try_from(self.redis_ttl.as_millis()).unwrap_or(i64::MAX));
        let result: Result<(), _> = self
            .redis
            .set(self.key(&code), value, Some(expiry), None, false)
            .await;
        if let Err(e) = result {
            // The local level is fresh; Redis may serve the old entry to other
            // replicas until they see this event themselves.
            tracing::debug!(error = %e, code, "redis refresh skipped");
        }
    }

    async fn load(&self, code: &str) -> Result<Lookup, ResolveError> {
        if let Some(found) = self.read_redis(code).await {
            return Ok(found);
        }
        let mut upstream = self.upstream.clone();
        let mut request = tonic::Request::new(GetLinkRequest {
            code: code.to_owned(),
            owner: String::new(),
        });
        request.set_timeout(self.upstream_timeout);
        shortfleet_common::trace::inject_grpc(request.metadata_mut());
        let call = upstream.get_link(request);
        count("upstream", "call");
        let lookup = match tokio::time::timeout(self.upstream_timeout, call).await {
            Err(_) => return Err(ResolveError::Timeout),
            Ok(Ok(link)) => Lookup::Found(Arc::new(link.into_inner())),
            Ok(Err(status)) if status.code() == Code::NotFound => Lookup::Missing,
            Ok(Err(status)) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "write-svc GetLink failed");
                return Err(ResolveError::Unavailable);
            }
        };
        self.fill_redis(code, &lookup).await;
        Ok(lookup)
    }

    async fn read_redis(&self, code: &str) -> Option<Lookup> {
        match self.redis.get::<Option<Vec<u8>>, _>(self.key(code)).await {
            Ok(Some(bytes)) if bytes == MISSING => {
                count("redis", "hit");
                Some(Lookup::Missing)
            }
            Ok(Some(bytes)) => match Link::decode(bytes.as_slice()) {
                Ok(link) => {
                    count("redis", "hit");
                    Some(Lookup::Found(Arc::new(link)))
                }
                Err(e) => {
                    tracing::warn!(error = %e, code, "undecodable read-model entry, ignoring");
                    None
                }
            },
            Ok(None) => {
                count("redis", "miss");
                self.health.set("redis", true);
                None
            }
            Err(e) => {
                count("redis", "error");
                self.health.set("redis", false);
                tracing::debug!(error = %e, "redis read skipped");
                None
            }
        }
    }

    /// Best effort: a failure only costs a later miss. NX so a slow load can
    /// never overwrite a newer entry written after an invalidation.
    async fn fill_redis(&self, code: &str, lookup: &Lookup) {
        let (value, ttl) = match lookup {
            Lookup::Found(link) => (link.encode_to_vec(), self.redis_ttl),
            Lookup::Missing => (MISSING.to_vec(), self.negative_ttl),
        };
        let expiry = Expiration::PX(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let result: Result<(), _> = self
            .redis
            .set(
                self.key(code),
                value,
                Some(expiry),
                Some(SetOptions::NX),
                false,
            )
            .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "redis fill skipped");
        }
    }

    /// Counts one redirect of a link with `max_clicks` and says whether it
    /// is still within the limit. The counter lives in Redis (atomic INCR), so
    /// it is exact across every read-svc replica. Redis down: the count
    /// cannot be kept, so the redirect is refused as unavailable rather than
    /// allowed past its limit.
    pub async fn count_click(&self, code: &str, max_clicks: u64) -> Result<bool, ResolveError> {
        let key = format!("{}clicks:{code}", self.prefix);
        match self.redis.incr::<i64, _>(key).await {
            Ok(n) => Ok(u64::try_from(n).is_ok_and(|n| n <= max_clicks)),
            Err(e) => {
                tracing::warn!(error = %e, code, "cannot count a max_clicks redirect");
                Err(ResolveError::Unavailable)
            }
        }
    }

    fn key(&self, code: &str) -> String {
        format!("{}link:{code}", self.prefix)
    }
}

fn count(level: &'static str, result: &'static str) {
    metrics::counter!("shortfleet_cache_requests_total", "level" => level, "result" => result)
        .increment(1);
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_cache_requests_total",
        metrics::Unit::Count,
        "Link cache lookups, by level (local, redis) and result."
    );
}

/// Whether an event's link is newer than what a load found: any link beats
/// "missing", else the later `updated_at` wins.
fn supersedes(event: &Link, loaded: &Lookup) -> bool {
    let at = |l: &Link| l.updated_at.map(|t| (t.seconds, t.nanos));
    match loaded {
        Lookup::Missing => true,
        Lookup::Found(link) => at(event) > at(link),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(seconds: i64, nanos: i32) -> Link {
        Link {
            code: "abc1234".into(),
            updated_at: Some(prost_types::Timestamp { seconds, nanos }),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_newer_event_replaces_what_a_load_found() {
        let loaded = Lookup::Found(Arc::new(link(100, 5)));
        assert!(supersedes(&link(100, 6), &loaded));
        assert!(supersedes(&link(101, 0), &loaded));
        assert!(!supersedes(&link(100, 5), &loaded), "the same version");
        assert!(!supersedes(&link(99, 999), &loaded), "an older event");
        // A link created while the load found nothing.
        assert!(supersedes(&link(1, 0), &Lookup::Missing));
    }
}
