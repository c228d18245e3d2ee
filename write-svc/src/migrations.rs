//! The `links` database schema, versioned. Never edit a shipped migration:
//! add a new one.

use shortfleet_common::postgres::Migration;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "links, idempotency keys, outbox",
        sql: r#"
CREATE TABLE links (
    code          text PRIMARY KEY,
    owner         text NOT NULL,
    url           text NOT NULL,
    -- URLs may be 8 KiB, past a btree entry's limit: dedupe on a digest.
    url_sha256    bytea NOT NULL,
    is_alias      boolean NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    redirect_type smallint NOT NULL DEFAULT 302 CHECK (redirect_type IN (301, 302, 307, 308)),
    max_clicks    bigint CHECK (max_clicks > 0),
    tags          text[] NOT NULL DEFAULT '{}',
    disabled      boolean NOT NULL DEFAULT false,
    -- Deleted links stay as tombstones: the code is never reissued and
    -- redirects answer 410 instead of 404.
    deleted_at    timestamptz
);
-- "Same owner + same URL, no alias → the existing link", enforced by the
-- database so concurrent creates cannot both insert.
CREATE UNIQUE INDEX links_owner_url_dedupe ON links (owner, url_sha256)
    WHERE NOT is_alias AND deleted_at IS NULL;
-- The owner's listing, newest first, keyset-paginated.
CREATE INDEX links_owner_listing ON links (owner, created_at DESC, code DESC)
    WHERE deleted_at IS NULL;

CREATE TABLE idempotency_keys (
    owner          text NOT NULL,
    key            text NOT NULL,
    request_sha256 bytea NOT NULL,
    -- The original CreateLinkResponse (protobuf), replayed on retries.
    response       bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);

CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    event_id     text NOT NULL UNIQUE,
    routing_key  text NOT NULL,
    payload      bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;
"#,
    },
    Migration {
        version: 2,
        name: "link behaviour: password, rules, forward_query, crawlable, expired_url",
        sql: r#"
ALTER TABLE links
    -- Argon2id PHC string; NULL when the link has no password.
    ADD COLUMN password_hash text,
    -- The ordered redirect rules as JSON: [{"when": {...}, "url": "..."}].
    ADD COLUMN rules         jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN forward_query boolean NOT NULL DEFAULT false,
    ADD COLUMN crawlable     boolean NOT NULL DEFAULT false,
    ADD COLUMN expired_url   text,
    -- Whether this link answers "same owner + same URL" creates. Aliases
    -- never did; links created with their own behaviour (a password, rules…)
    -- are their own link too, so a plain create never hands them out.
    ADD COLUMN dedupe        boolean;
UPDATE links SET dedupe = NOT is_alias;
ALTER TABLE links ALTER COLUMN dedupe SET NOT NULL;
DROP INDEX links_owner_url_dedupe;
CREATE UNIQUE INDEX links_owner_url_dedupe ON links (owner, url_sha256)
    WHERE dedupe AND deleted_at IS NULL;
-- robots.txt lists the crawlable codes, newest first.
CREATE INDEX links_crawlable ON links (created_at DESC)
    WHERE crawlable AND deleted_at IS NULL;
"#,
    },
];
