//! The links database: every read and write of links, idempotency keys and
//! the outbox. Each change writes its `LinkEvent` to the outbox in the same
//! transaction, so an event exists exactly when the change committed.
//!
//! When PostgreSQL is down every call fails fast with
//! [`WriteError::Unavailable`] (pool waits and connects are bounded).
//! Reads may be served by a streaming replica ([`crate::replica`]); writes
//! never are.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use prost::Message;
use sha2::{Digest, Sha256};
use shortfleet_common::time::to_proto;
use shortfleet_proto::v1::{CreateLinkResponse, Link, LinkEvent, LinkEventType};
use tokio_postgres::{Row, error::SqlState};

use crate::{
    code::ShortCode,
    cursor::Cursor,
    error::WriteError,
    replica::{self, ReadReplica, Target},
    target::TargetUrl,
};

/// How many random codes to try before giving up; see `code.rs` for odds.
const CODE_ATTEMPTS: usize = 5;
/// A changed link's `updated_at`: now, but always after the version it
/// replaces. `now()` is when the transaction began, so of two changes
/// racing for one row the later commit could carry the earlier time;
/// caches keep an answer as new as an event's `updated_at`
/// (`gateway::microcache`), so each link's versions must strictly
/// increase. Under the row lock the old value is the latest committed.
const NEXT_VERSION: &str = "greatest(now(), updated_at + interval '1 microsecond')";

const LINK_COLUMNS: &str = "code, owner, url, created_at, updated_at, expires_at, redirect_type, \
                            max_clicks, tags, disabled, deleted_at, password_hash, rules, \
                            forward_query, crawlable, expired_url";

/// A validated request to create a link.
#[derive(Debug, Clone)]
pub struct NewLink {
    pub owner: String,
    pub url: TargetUrl,
    pub alias: Option<ShortCode>,
    pub expires_at: Option<DateTime<Utc>>,
    pub redirect_type: i16,
    pub max_clicks: Option<i64>,
    pub tags: Vec<String>,
    pub behaviour: Behaviour,
}

/// What a link does besides redirecting to `url` (see [`crate::behaviour`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Behaviour {
    /// Argon2id PHC string.
    pub password_hash: Option<String>,
    pub rules: Vec<shortfleet_proto::v1::RedirectRule>,
    pub forward_query: bool,
    pub crawlable: bool,
    pub expired_url: Option<String>,
}

impl Behaviour {
    /// A link created with any of these is its own link: a later plain
    /// create of the same URL must not hand it out (and vice versa).
    fn is_plain(&self) -> bool {
        *self == Self::default()
    }
}

/// A validated change; `None` fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct LinkChange {
    pub url: Option<TargetUrl>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub redirect_type: Option<i16>,
    pub max_clicks: Option<Option<i64>>,
    pub tags: Option<Vec<String>>,
    pub disabled: Option<bool>,
    /// `Some(None)` removes the password.
    pub password_hash: Option<Option<String>>,
    pub rules: Option<Vec<shortfleet_proto::v1::RedirectRule>>,
    pub forward_query: Option<bool>,
    pub crawlable: Option<bool>,
    pub expired_url: Option<Option<String>>,
}

/// The idempotency key of a create and the digest of its request.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_sha256: Vec<u8>,
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Wakes the outbox relay right after a commit instead of at its next poll.
    outbox_wakeup: std::sync::Arc<tokio::sync::Notify>,
    /// The read replica, when `SHORTFLEET_DATABASE_READ_URL` names one.
    replica: Option<std::sync::Arc<ReadReplica>>,
}

/// Which reads a replica may serve.
#[derive(Debug, Clone, Copy)]
enum Freshness {
    /// A resolve miss: within the replica lag bound.
    WithinLag,
    /// An owner's read: every commit made before it.
    CaughtUp,
}

impl Store {
    pub fn new(
        pool: Pool,
        outbox_wakeup: std::sync::Arc<tokio::sync::Notify>,
        replica: Option<std::sync::Arc<ReadReplica>>,
    ) -> Self {
        Self {
            pool,
            outbox_wakeup,
            replica,
        }
    }

    /// A replica connection fresh enough for `freshness`, if any.
    async fn replica(&self, freshness: Freshness) -> Option<deadpool_postgres::Object> {
        let replica = self.replica.as_ref()?;
        match freshness {
            Freshness::WithinLag => replica.within_lag().await,
            Freshness::CaughtUp => replica.caught_up().await,
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Creates a link, or returns the existing one (same owner and URL, no
    /// alias), or replays the original answer of an idempotent retry.
    pub async fn create(
        &self,
        new: NewLink,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<CreateLinkResponse, WriteError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if let Some(idem) = &idempotency
            && let Some(replay) = claim_idempotency_key(&tx, &new.owner, idem).await?
        {
            return Ok(replay);
        }
        let response = insert_link(&tx, &new).await?;
        if response.created {
            let link = response.link.clone().unwrap_or_default();
            write_event(&tx, LinkEventType::Created, link).await?;
        }
        if let Some(idem) = &idempotency {
            tx.execute(
                &tx.prepare_cached(
                    "UPDATE idempotency_keys SET response = $3 WHERE owner = $1 AND key = $2",
                )
                .await?,
                &[&new.owner, &idem.key, &response.encode_to_vec()],
            )
            .await?;
        }
        tx.commit().await?;
        if response.created {
            self.outbox_wakeup.notify_one();
        }
        Ok(response)
    }

    /// A link by code. With `owner`, another owner's or a deleted link is
    /// NOT_FOUND; without (internal resolution), tombstones are returned with
    /// `deleted = true` so callers can answer 410.
    ///
    /// From the replica when it is fresh enough (see [`crate::replica`]); a
    /// code it does not know, or a replica failing, is asked of the primary.
    pub async fn get(&self, code: &str, owner: Option<&str>) -> Result<Link, WriteError> {
        if !ShortCode::is_plausible(code) {
            return Err(WriteError::NotFound);
        }
        let freshness = match owner {
            None => Freshness::WithinLag,
            Some(_) => Freshness::CaughtUp,
        };
        let mut found = None;
        if let Some(client) = self.replica(freshness).await {
            match fetch_link(&client, code).await {
                Ok(Some(link)) => {
                    replica::count(Target::Replica);
                    found = Some(link);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "replica read failed; asking the primary"),
            }
        }
        let link = match found {
            Some(link) => link,
            None => {
                let client = self.pool.get().await?;
                replica::count(Target::Primary);
                fetch_link(&client, code)
                    .await?
                    .ok_or(WriteError::NotFound)?
            }
        };
        match owner {
            Some(owner) if link.owner != owner || link.deleted => Err(WriteError::NotFound),
            _ => Ok(link),
        }
    }

    pub async fn update(
        &self,
        code: &str,
        owner: &str,
        change: LinkChange,
    ) -> Result<Link, WriteError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT {LINK_COLUMNS} FROM links
                     WHERE code = $1 AND owner = $2 AND deleted_at IS NULL FOR UPDATE"
                ),
                &[&code, &owner],
            )
            .await?
            .ok_or(WriteError::NotFound)?;
        let current = link_from_row(&row);
        let url = change
            .url
            .map_or(current.url.clone(), |u| u.as_str().to_owned());
        let expires_at = change.expires_at.unwrap_or(row.get("expires_at"));
        let redirect_type = change.redirect_type.unwrap_or(row.get("redirect_type"));
        let max_clicks = change.max_clicks.unwrap_or(row.get("max_clicks"));
        let tags = change.tags.unwrap_or(current.tags.clone());
        let disabled = change.disabled.unwrap_or(current.disabled);
        let password_hash = change.password_hash.unwrap_or(row.get("password_hash"));
        let rules = change
            .rules
            .map_or_else(|| row.get("rules"), |r| crate::behaviour::rules_to_json(&r));
        let forward_query = change.forward_query.unwrap_or(current.forward_query);
        let crawlable = change.crawlable.unwrap_or(current.crawlable);
        let expired_url = change.expired_url.unwrap_or(row.get("expired_url"));
        let updated = tx
            .query_one(
                &format!(
                    "UPDATE links SET url = $2, url_sha256 = $3, expires_at = $4, redirect_type = $5,
                         max_clicks = $6, tags = $7, disabled = $8, password_hash = $9,
                         rules = $10, forward_query = $11, crawlable = $12, expired_url = $13,
                         updated_at = {NEXT_VERSION}
                     WHERE code = $1 RETURNING {LINK_COLUMNS}"
                ),
                &[
                    &code,
                    &url,
                    &sha256(&url),
                    &expires_at,
                    &redirect_type,
                    &max_clicks,
                    &tags,
                    &disabled,
                    &password_hash,
                    &rules,
                    &forward_query,
                    &crawlable,
                    &expired_url,
                ],
            )
            .await
            .map_err(|e| match e.code() {
                Some(c) if *c == SqlState::UNIQUE_VIOLATION => {
                    WriteError::Conflict("another of your links already points at this url")
                }
                _ => e.into(),
            })?;
        let link = link_from_row(&updated);
        write_event(&tx, LinkEventType::Updated, link.clone()).await?;
        tx.commit().await?;
        self.outbox_wakeup.notify_one();
        Ok(link)
    }

    pub async fn delete(&self, code: &str, owner: &str) -> Result<(), WriteError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE links SET deleted_at = now(), updated_at = {NEXT_VERSION}
                     WHERE code = $1 AND owner = $2 AND deleted_at IS NULL
                     RETURNING {LINK_COLUMNS}"
                ),
                &[&code, &owner],
            )
            .await?
            .ok_or(WriteError::NotFound)?;
        write_event(&tx, LinkEventType::Deleted, link_from_row(&row)).await?;
        tx.commit().await?;
        self.outbox_wakeup.notify_one();
        Ok(())
    }

    /// The owner's live links, newest first, after `cursor`.
    pub async fn list(
        &self,
        owner: &str,
        limit: u32,
        cursor: Option<Cursor>,
        tag: Option<&str>,
    ) -> Result<(Vec<Link>, Option<Cursor>), WriteError> {
        if let Some(client) = self.replica(Freshness::CaughtUp).await {
            match list_page(&client, owner, limit, cursor.as_ref(), tag).await {
                Ok(page) => {
                    replica::count(Target::Replica);
                    return Ok(page);
                }
                Err(e) => tracing::debug!(error = %e, "replica read failed; asking the primary"),
            }
        }
        let client = self.pool.get().await?;
        replica::count(Target::Primary);
        list_page(&client, owner, limit, cursor.as_ref(), tag).await
    }

    /// Codes of crawlable links that redirect now (not deleted, disabled
    /// or expired), newest first, at most `limit`. A link over its
    /// `max_clicks` is only known to read-svc; it stays listed and answers
    /// crawlers 410 (or its `expired_url`) like everyone else.
    pub async fn crawlable_codes(&self, limit: u32) -> Result<Vec<String>, WriteError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT code FROM links
                         WHERE crawlable AND deleted_at IS NULL AND NOT disabled
                           AND (expires_at IS NULL OR expires_at > now())
                         ORDER BY created_at DESC LIMIT $1",
                    )
                    .await?,
                &[&i64::from(limit)],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Deletes idempotency keys older than 24 h; returns how many.
    pub async fn expire_idempotency_keys(&self) -> Result<u64, WriteError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                "DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'",
                &[],
            )
            .await?)
    }
}

/// Takes the key for this request, or returns the answer it already has.
/// The insert waits on a concurrent holder of the same key until it commits,
/// so two racing requests with one key produce one link.
async fn claim_idempotency_key(
    tx: &impl GenericClient,
    owner: &str,
    idem: &IdempotencyKey,
) -> Result<Option<CreateLinkResponse>, WriteError> {
    // An expired key is forgotten first so it can be reused.
    tx.execute(
        &tx.prepare_cached(
            "DELETE FROM idempotency_keys
             WHERE owner = $1 AND key = $2 AND created_at < now() - interval '24 hours'",
        )
        .await?,
        &[&owner, &idem.key],
    )
    .await?;
    let claimed = tx
        .execute(
            &tx.prepare_cached(
                "INSERT INTO idempotency_keys (owner, key, request_sha256, response)
                 VALUES ($1, $2, $3, '') ON CONFLICT DO NOTHING",
            )
            .await?,
            &[&owner, &idem.key, &idem.request_sha256],
        )
        .await?;
    if claimed == 1 {
        return Ok(None);
    }
    let row = tx
        .query_one(
            // Locked: a racing retry waits for this one's outcome (below).
            "SELECT request_sha256, response FROM idempotency_keys
             WHERE owner = $1 AND key = $2 FOR UPDATE",
            &[&owner, &idem.key],
        )
        .await?;
    let stored_hash: Vec<u8> = row.get(0);
    if stored_hash != idem.request_sha256 {
        return Err(WriteError::IdempotencyMismatch);
    }
    let response: Vec<u8> = row.get(1);
    let mut replay = CreateLinkResponse::decode(response.as_slice()).map_err(|e| {
        WriteError::Internal(anyhow::Error::new(e).context("decoding a stored response"))
    })?;
    // A key answers for the link it made while that link exists. Once the
    // owner deleted it the key is released and the request creates anew: a
    // replay never hands out a link that is gone.
    let code = replay.link.as_ref().map_or("", |l| l.code.as_str());
    let live = tx
        .query_opt(
            &tx.prepare_cached("SELECT 1 FROM links WHERE code = $1 AND deleted_at IS NULL")
                .await?,
            &[&code],
        )
        .await?
        .is_some();
    if !live {
        tx.execute(
            &tx.prepare_cached(
                "UPDATE idempotency_keys SET response = '', created_at = now()
                 WHERE owner = $1 AND key = $2",
            )
            .await?,
            &[&owner, &idem.key],
        )
        .await?;
        return Ok(None);
    }
    // A replay reports what the original call reported (201 stays 201).
    replay.link.get_or_insert_with(Link::default);
    Ok(Some(replay))
}

/// The statement of every create, built once.
static INSERT_LINK: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO links (code, owner, url, url_sha256, is_alias, expires_at, redirect_type, max_clicks, tags,
                            dedupe, password_hash, rules, forward_query, crawlable, expired_url)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT DO NOTHING RETURNING {LINK_COLUMNS}"
    )
});

async fn insert_link(
    tx: &impl GenericClient,
    new: &NewLink,
) -> Result<CreateLinkResponse, WriteError> {
    let url_sha = sha256(new.url.as_str());
    let b = &new.behaviour;
    let dedupe = new.alias.is_none() && b.is_plain();
    let rules = crate::behaviour::rules_to_json(&b.rules);
    // One row, under `code`: `None` when the code (or, for a plain link,
    // this owner's URL) is taken.
    let try_insert = async |code: &str, is_alias: bool| {
        tx.query_opt(
            &tx.prepare_cached(&INSERT_LINK).await?,
            &[
                &code,
                &new.owner,
                &new.url.as_str(),
                &url_sha,
                &is_alias,
                &new.expires_at,
                &new.redirect_type,
                &new.max_clicks,
                &new.tags,
                &dedupe,
                &b.password_hash,
                &rules,
                &b.forward_query,
                &b.crawlable,
                &b.expired_url,
            ],
        )
        .await
    };
    if let Some(alias) = &new.alias {
        return match try_insert(alias.as_str(), true).await? {
            Some(row) => Ok(created(link_from_row(&row), true)),
            None => Err(WriteError::Conflict("alias is already taken")),
        };
    }
    for _ in 0..CODE_ATTEMPTS {
        let code = ShortCode::generate();
        let row = try_insert(code.as_str(), false).await?;
        if let Some(row) = row {
            return Ok(created(link_from_row(&row), true));
        }
        // Either the owner already shortened this URL, or the code collided.
        if !dedupe {
            metrics::counter!("shortfleet_code_collisions_total").increment(1);
            continue;
        }
        let existing = tx
            .query_opt(
                &format!(
                    "SELECT {LINK_COLUMNS} FROM links
                     WHERE owner = $1 AND url_sha256 = $2 AND dedupe AND deleted_at IS NULL"
                ),
                &[&new.owner, &url_sha],
            )
            .await?;
        if let Some(row) = existing {
            return Ok(created(link_from_row(&row), false));
        }
        metrics::counter!("shortfleet_code_collisions_total").increment(1);
    }
    Err(WriteError::Internal(anyhow::anyhow!(
        "no free code after {CODE_ATTEMPTS} attempts"
    )))
}

fn created(link: Link, created: bool) -> CreateLinkResponse {
    CreateLinkResponse {
        link: Some(link),
        created,
    }
}

async fn write_event(
    tx: &impl GenericClient,
    kind: LinkEventType,
    link: Link,
) -> Result<(), WriteError> {
    let event_id = uuid::Uuid::now_v7();
    let routing_key = match kind {
        LinkEventType::Created => "link.created",
        LinkEventType::Updated => "link.updated",
        LinkEventType::Deleted => "link.deleted",
        LinkEventType::Unspecified => "link.unspecified",
    };
    let event = LinkEvent {
        event_id: event_id.to_string(),
        occurred_at: Some(to_proto(Utc::now())),
        r#type: kind as i32,
        link: Some(link),
    };
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO outbox (event_id, routing_key, payload) VALUES ($1, $2, $3)",
        )
        .await?,
        &[&event_id.to_string(), &routing_key, &event.encode_to_vec()],
    )
    .await?;
    Ok(())
}

pub fn sha256(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

fn link_from_row(row: &Row) -> Link {
    let deleted_at: Option<DateTime<Utc>> = row.get("deleted_at");
    let max_clicks: Option<i64> = row.get("max_clicks");
    let redirect_type: i16 = row.get("redirect_type");
    let expires_at: Option<DateTime<Utc>> = row.get("expires_at");
    Link {
        code: row.get("code"),
        url: row.get("url"),
        owner: row.get("owner"),
        created_at: Some(to_proto(row.get("created_at"))),
        updated_at: Some(to_proto(row.get("updated_at"))),
        expires_at: expires_at.map(to_proto),
        redirect_type: u32::try_from(redirect_type).unwrap_or(302),
        max_clicks: max_clicks.and_then(|m| u64::try_from(m).ok()),
        tags: row.get("tags"),
        disabled: row.get("disabled"),
        deleted: deleted_at.is_some(),
        password_hash: row
            .get::<_, Option<String>>("password_hash")
            .unwrap_or_default(),
        rules: crate::behaviour::rules_from_json(&row.get::<_, serde_json::Value>("rules")),
        forward_query: row.get("forward_query"),
        crawlable: row.get("crawlable"),
        expired_url: row
            .get::<_, Option<String>>("expired_url")
            .unwrap_or_default(),
    }
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_code_collisions_total",
        metrics::Unit::Count,
        "Generated codes that collided with an existing one and were drawn again."
    );
}

/// One page of the owner's live links, newest first, after `cursor`.
async fn list_page(
    client: &deadpool_postgres::Client,
    owner: &str,
    limit: u32,
    cursor: Option<&Cursor>,
    tag: Option<&str>,
) -> Result<(Vec<Link>, Option<Cursor>), WriteError> {
    let (after_ts, after_code) = match cursor {
        Some(c) => (Some(c.created_at), Some(c.code.as_str())),
        None => (None, None),
    };
    let fetch = i64::from(limit) + 1;
    let rows = client
        .query(
            &format!(
                "SELECT {LINK_COLUMNS} FROM links
                 WHERE owner = $1 AND deleted_at IS NULL
                   AND ($2::text IS NULL OR $2 = ANY(tags))
                   AND ($3::timestamptz IS NULL OR (created_at, code) < ($3, $4::text))
                 ORDER BY created_at DESC, code DESC
                 LIMIT $5"
            ),
            &[&owner, &tag, &after_ts, &after_code, &fetch],
        )
        .await?;
    let mut links: Vec<(Link, DateTime<Utc>)> = rows
        .iter()
        .map(|r| (link_from_row(r), r.get("created_at")))
        .collect();
    let next = if links.len() > limit as usize {
        links.truncate(limit as usize);
        links.last().map(|(l, ts)| Cursor {
            created_at: *ts,
            code: l.code.clone(),
        })
    } else {
        None
    };
    Ok((links.into_iter().map(|(l, _)| l).collect(), next))
}

/// The link `code`, tombstones included.
async fn fetch_link(
    client: &deadpool_postgres::Client,
    code: &str,
) -> Result<Option<Link>, WriteError> {
    let statement = client
        .prepare_cached(&format!("SELECT {LINK_COLUMNS} FROM links WHERE code = $1"))
        .await?;
    Ok(client
        .query_opt(&statement, &[&code])
        .await?
        .as_ref()
        .map(link_from_row))
}
