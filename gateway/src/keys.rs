//! API keys: issued and revoked by admin commands, stored as SHA-256 hashes
//! in the gateway's own database, verified against an in-memory snapshot
//! (no network hop on the request path).
//!
//! Keys carry 190 bits of randomness, so a fast hash is enough (no password
//! hashing needed); we look them up by hash, which reveals nothing useful
//! through timing. Each replica reloads the snapshot every
//! `SHORTFLEET_KEY_REFRESH_MS` (1 s by default), so a revoked key stops
//! working everywhere within about a second. A well-formed key missing from
//! the snapshot (issued since the last reload) is looked up once, within a
//! budget of 50 look-ups a second, so a new key works at once. PostgreSQL
//! down: the last snapshot keeps serving and readiness reports it down.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rand::Rng;
use sha2::{Digest, Sha256};
use shortfleet_common::{ops::Health, postgres::Migration};
use tokio_util::sync::CancellationToken;

const KEY_PREFIX: &str = "sf_";
const KEY_RANDOM_CHARS: usize = 32;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "api keys",
    sql: r#"
CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    key_sha256  bytea NOT NULL UNIQUE,
    owner       text NOT NULL,
    tier        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);
"#,
}];

/// Who a verified key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub owner: String,
    pub tier: String,
    expires_at: Option<DateTime<Utc>>,
}

/// A freshly issued key: the secret is shown once, never stored.
#[derive(Debug)]
pub struct IssuedKey {
    pub id: String,
    pub secret: String,
}

/// A key as `keys list` shows it.
#[derive(Debug)]
pub struct KeyRecord {
    pub id: String,
    pub owner: String,
    pub tier: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn random_string(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Whether `raw` has the shape of a key we issue (cheap pre-check).
pub fn well_formed(raw: &str) -> bool {
    raw.len() == KEY_PREFIX.len() + KEY_RANDOM_CHARS
        && raw.starts_with(KEY_PREFIX)
        && raw[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

/// Live keys by the SHA-256 of their secret.
type Snapshot = HashMap<[u8; 32], Principal>;

/// The replica's snapshot of valid keys; readers clone the `Arc` and never
/// hold the lock while verifying.
#[derive(Clone, Default)]
struct KeyCache {
    keys: Arc<RwLock<Arc<Snapshot>>>,
}

impl KeyCache {
    /// Verifies a bearer secret; `None` for missing, malformed, unknown,
    /// revoked or expired keys alike (callers must not say which).
    pub fn verify(&self, secret: &str) -> Option<Principal> {
        if !well_formed(secret) {
            return None;
        }
        let snapshot = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        let principal = snapshot.get(&hash(secret))?;
        match principal.expires_at {
            Some(t) if t <= Utc::now() => None,
            _ => Some(principal.clone()),
        }
    }

    /// Adds one key found by a direct look-up (until the next reload).
    fn insert(&self, digest: [u8; 32], principal: Principal) {
        let mut guard = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let mut next = (**guard).clone();
        next.insert(digest, principal);
        *guard = Arc::new(next);
    }

    fn replace(&self, keys: HashMap<[u8; 32], Principal>) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }
}

/// The API keys: the database, and this replica's snapshot of it (clones
/// share both).
#[derive(Clone)]
pub struct KeyStore {
    pool: Pool,
    cache: KeyCache,
    /// Hashes looked up and not found, remembered briefly so a client
    /// retrying a bad key costs no further queries.
    unknown: moka::sync::Cache<[u8; 32], ()>,
    /// Bounds look-ups of keys missing from the snapshot, so random keys
    /// cannot turn into a database load.
    miss_budget: Arc<std::sync::Mutex<crate::ratelimit::Bucket>>,
}

/// Look-ups of unknown keys allowed per second per replica.
const MISS_LOOKUPS: &str = "50/1";

impl KeyStore {
    /// Opens the key database at `database_url`, creating and migrating it
    /// when needed (the gateway at start-up and the `keys` admin commands).
    pub async fn open(database_url: &str) -> anyhow::Result<Self> {
        let pool =
            shortfleet_common::postgres::open(database_url, 4, Duration::from_secs(3), MIGRATIONS)
                .await
                .context("opening the gateway database")?;
        Ok(Self::new(pool))
    }

    pub fn new(pool: Pool) -> Self {
        let policy = miss_policy();
        Self {
            pool,
            cache: KeyCache::default(),
            unknown: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(1))
                .build(),
            miss_budget: Arc::new(std::sync::Mutex::new(crate::ratelimit::Bucket::full(
                &policy,
                std::time::Instant::now(),
            ))),
        }
    }

    /// Verifies `secret` against the snapshot; a well-formed key missing
    /// from it (issued since the last reload) is looked up once in the
    /// database, within a small budget.
    pub async fn verify(&self, secret: &str) -> Option<Principal> {
        if let Some(p) = self.cache.verify(secret) {
            return Some(p);
        }
        if !well_formed(secret) {
            return None;
        }
        let digest = hash(secret);
        if self.unknown.contains_key(&digest) {
            return None;
        }
        let allowed = self
            .miss_budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(&miss_policy(), std::time::Instant::now());
        if !allowed {
            return None;
        }
        match self.lookup(&digest).await {
            Ok(Some(principal)) => {
                self.cache.insert(digest, principal.clone());
                Some(principal)
            }
            Ok(None) => {
                self.unknown.insert(digest, ());
                None
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "API key look-up failed");
                None
            }
        }
    }

    async fn lookup(&self, digest: &[u8; 32]) -> anyhow::Result<Option<Principal>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT id, owner, tier, expires_at FROM api_keys
                 WHERE key_sha256 = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
                &[&digest.as_slice()],
            )
            .await?;
        Ok(row.map(|r| Principal {
            key_id: r.get(0),
            owner: r.get(1),
            tier: r.get(2),
            expires_at: r.get(3),
        }))
    }

    pub async fn create(
        &self,
        owner: &str,
        tier: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> anyhow::Result<IssuedKey> {
        let secret = format!("{KEY_PREFIX}{}", random_string(KEY_RANDOM_CHARS));
        let id = format!("key_{}", random_string(12));
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO api_keys (id, key_sha256, owner, tier, expires_at) VALUES ($1, $2, $3, $4, $5)",
                &[&id, &hash(&secret).as_slice(), &owner, &tier, &expires_at],
            )
            .await
            .context("storing the key")?;
        Ok(IssuedKey { id, secret })
    }

    /// Revokes by key id; `false` when no live key has that id.
    pub async fn revoke(&self, id: &str) -> anyhow::Result<bool> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                &[&id],
            )
            .await?;
        Ok(n == 1)
    }

    pub async fn list(&self, owner: Option<&str>) -> anyhow::Result<Vec<KeyRecord>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, owner, tier, created_at, expires_at, revoked_at FROM api_keys
                 WHERE $1::text IS NULL OR owner = $1 ORDER BY created_at",
                &[&owner],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| KeyRecord {
                id: r.get(0),
                owner: r.get(1),
                tier: r.get(2),
                created_at: r.get(3),
                expires_at: r.get(4),
                revoked_at: r.get(5),
            })
            .collect())
    }

    async fn load_live(&self) -> anyhow::Result<HashMap<[u8; 32], Principal>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT key_sha256, id, owner, tier, expires_at FROM api_keys
                 WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
                &[],
            )
            .await?;
        let mut keys = HashMap::with_capacity(rows.len());
        for row in rows {
            let digest: Vec<u8> = row.get(0);
            let Ok(digest) = <[u8; 32]>::try_from(digest.as_slice()) else {
                continue;
            };
            keys.insert(
                digest,
                Principal {
                    key_id: row.get(1),
                    owner: row.get(2),
                    tier: row.get(3),
                    expires_at: row.get(4),
                },
            );
        }
        Ok(keys)
    }

    /// Loads the snapshot once (so the gateway starts with keys).
    pub async fn refresh(&self) -> anyhow::Result<usize> {
        let keys = self.load_live().await?;
        let n = keys.len();
        self.cache.replace(keys);
        Ok(n)
    }

    /// Reloads the snapshot every `every` until shutdown.
    pub async fn keep_fresh(self, every: Duration, health: Health, shutdown: CancellationToken) {
        shortfleet_common::periodic::every(every, &shutdown, || async {
            match self.refresh().await {
                Ok(n) => {
                    health.set("postgres", true);
                    metrics::gauge!("shortfleet_api_keys_live").set(n as f64);
                }
                Err(e) => {
                    health.set("postgres", false);
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "API key refresh failed; serving the last snapshot"
                    );
                }
            }
        })
        .await;
    }
}

#[allow(clippy::expect_used)] // reason: a constant, parsed in this module's tests
fn miss_policy() -> crate::ratelimit::Policy {
    crate::ratelimit::Policy::parse("key-lookups", MISS_LOOKUPS).expect("static policy parses")
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "shortfleet_api_keys_live",
        metrics::Unit::Count,
        "Unrevoked API keys in this replica's snapshot."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_only_known_live_keys() {
        let cache = KeyCache::default();
        let secret = format!("{KEY_PREFIX}{}", random_string(KEY_RANDOM_CHARS));
        let expired = format!("{KEY_PREFIX}{}", random_string(KEY_RANDOM_CHARS));
        let principal = |exp| Principal {
            key_id: "k".into(),
            owner: "alice".into(),
            tier: "free".into(),
            expires_at: exp,
        };
        cache.replace(HashMap::from([
            (hash(&secret), principal(None)),
            (
                hash(&expired),
                principal(Some(Utc::now() - chrono::Duration::seconds(1))),
            ),
        ]));
        assert_eq!(cache.verify(&secret).unwrap().owner, "alice");
        assert!(cache.verify(&expired).is_none());
        assert!(cache.verify("sf_short").is_none());
        assert!(
            cache
                .verify(&format!("{KEY_PREFIX}{}", random_string(KEY_RANDOM_CHARS)))
                .is_none()
        );
    }

    #[test]
    fn issued_keys_are_well_formed_and_distinct() {
        let a = format!("{KEY_PREFIX}{}", random_string(KEY_RANDOM_CHARS));
        let b = format!("{KEY_PREFIX}{}", random_string(KEY_RANDOM_CHARS));
        assert!(well_formed(&a));
        assert_ne!(a, b);
        assert!(!well_formed("sf_has space in it............."));
    }
}
