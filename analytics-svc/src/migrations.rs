//! The `analytics` database schema, versioned.

use shortfleet_common::postgres::Migration;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "raw clicks by day, rollups, visitors",
        sql: r#"
-- Raw clicks, one partition per UTC day (created ahead, dropped by
-- retention). Redeliveries carry the same (occurred_at, event_id), so the
-- primary key dedupes them within the partition.
CREATE TABLE clicks (
    occurred_at   timestamptz NOT NULL,
    event_id      text NOT NULL,
    code          text NOT NULL,
    owner         text NOT NULL,
    is_bot        boolean NOT NULL,
    referrer_host text NOT NULL,
    browser       text NOT NULL,
    os            text NOT NULL,
    device        text NOT NULL,
    country       text NOT NULL,
    -- SHA-256 of (daily salt, IP, user agent): never the raw IP.
    visitor       bytea NOT NULL,
    PRIMARY KEY (occurred_at, event_id)
) PARTITION BY RANGE (occurred_at);
-- Clicks outside the prepared days (clock skew, replays of old spools).
CREATE TABLE clicks_default PARTITION OF clicks DEFAULT;

CREATE TABLE rollup_hourly (
    code   text NOT NULL,
    hour   timestamptz NOT NULL,
    owner  text NOT NULL,
    clicks bigint NOT NULL DEFAULT 0,
    bots   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (code, hour)
);
CREATE INDEX rollup_hourly_owner ON rollup_hourly (owner, hour);

-- Human clicks per day by dimension (referrer, browser, os, device, country).
CREATE TABLE rollup_dimensions (
    code      text NOT NULL,
    day       date NOT NULL,
    dimension text NOT NULL,
    value     text NOT NULL,
    clicks    bigint NOT NULL,
    PRIMARY KEY (code, day, dimension, value)
);

-- Distinct human visitors per link per day.
CREATE TABLE visitors_daily (
    code    text NOT NULL,
    day     date NOT NULL,
    visitor bytea NOT NULL,
    PRIMARY KEY (code, day, visitor)
);
"#,
    },
    Migration {
        version: 2,
        name: "daily rollups",
        sql: r#"
-- Per link per UTC day, kept with the hourly rollup in the same transaction:
-- whole-day series over long periods read one row a day instead of 24.
CREATE TABLE rollup_daily (
    code   text NOT NULL,
    day    date NOT NULL,
    owner  text NOT NULL,
    clicks bigint NOT NULL DEFAULT 0,
    bots   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (code, day)
);
INSERT INTO rollup_daily (code, day, owner, clicks, bots)
SELECT code, (hour AT TIME ZONE 'UTC')::date, min(owner), sum(clicks), sum(bots)
FROM rollup_hourly GROUP BY 1, 2;
"#,
    },
    Migration {
        version: 3,
        name: "the redirect rule of each click",
        sql: r#"
-- Index of the link's redirect rule that chose the target; NULL when the
-- link's own url did. Rollups keep it as the dimension "rule"; stats
-- filtered by one rule are summed from raw clicks (within retention).
ALTER TABLE clicks ADD COLUMN rule smallint;
CREATE INDEX clicks_code_rule ON clicks (code, rule, occurred_at);
"#,
    },
    Migration {
        version: 4,
        name: "rollups by redirect rule; raw clicks lose their code index",
        sql: r#"
-- Stats filtered by rule come from the rollups, which now carry the rule
-- (-1: none; a link without rules has only -1 rows, as many as before).
-- Raw clicks then need no index by code: that index cost every click
-- about a quarter of its PostgreSQL time (BENCHMARKS.md).
ALTER TABLE rollup_hourly ADD COLUMN rule smallint NOT NULL DEFAULT -1;
ALTER TABLE rollup_hourly DROP CONSTRAINT rollup_hourly_pkey;
ALTER TABLE rollup_hourly ADD PRIMARY KEY (code, hour, rule);
ALTER TABLE rollup_dimensions ADD COLUMN rule smallint NOT NULL DEFAULT -1;
ALTER TABLE rollup_dimensions DROP CONSTRAINT rollup_dimensions_pkey;
ALTER TABLE rollup_dimensions ADD PRIMARY KEY (code, day, dimension, value, rule);
ALTER TABLE visitors_daily ADD COLUMN rule smallint NOT NULL DEFAULT -1;
ALTER TABLE visitors_daily DROP CONSTRAINT visitors_daily_pkey;
ALTER TABLE visitors_daily ADD PRIMARY KEY (code, day, visitor, rule);

-- Rows written before this held every rule's clicks under -1. The raw
-- clicks still kept (retention) say which rule sent which; move those
-- counts to their rule. Older days stay under -1, as the raw clicks that
-- could split them are gone (stats by rule never reached them either).
CREATE TEMP TABLE ruled ON COMMIT DROP AS
SELECT code, occurred_at, (occurred_at AT TIME ZONE 'UTC')::date AS day, rule, is_bot,
       referrer_host, browser, os, device, country, visitor
FROM clicks WHERE rule IS NOT NULL;

CREATE TEMP TABLE ruled_hourly ON COMMIT DROP AS
SELECT code, date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour, rule,
       count(*) FILTER (WHERE NOT is_bot) AS clicks, count(*) FILTER (WHERE is_bot) AS bots
FROM ruled GROUP BY 1, 2, 3;
INSERT INTO rollup_hourly (code, hour, rule, owner, clicks, bots)
SELECT r.code, r.hour, r.rule, h.owner, r.clicks, r.bots
FROM ruled_hourly r JOIN rollup_hourly h ON h.code = r.code AND h.hour = r.hour AND h.rule = -1;
UPDATE rollup_hourly h SET clicks = h.clicks - s.clicks, bots = h.bots - s.bots
FROM (SELECT code, hour, sum(clicks) AS clicks, sum(bots) AS bots FROM ruled_hourly GROUP BY 1, 2) s
WHERE h.code = s.code AND h.hour = s.hour AND h.rule = -1;
DELETE FROM rollup_hourly WHERE rule = -1 AND clicks = 0 AND bots = 0;

CREATE TEMP TABLE ruled_dimensions ON COMMIT DROP AS
SELECT code, day, d.dimension, d.value, rule, count(*) AS clicks
FROM ruled,
     LATERAL (VALUES ('referrer', referrer_host), ('browser', browser), ('os', os),
                     ('device', device), ('country', country), ('rule', rule::text))
       AS d(dimension, value)
WHERE NOT is_bot AND d.value <> ''
GROUP BY 1, 2, 3, 4, 5;
INSERT INTO rollup_dimensions (code, day, dimension, value, rule, clicks)
SELECT r.code, r.day, r.dimension, r.value, r.rule, r.clicks
FROM ruled_dimensions r JOIN rollup_dimensions d
  ON d.code = r.code AND d.day = r.day AND d.dimension = r.dimension AND d.value = r.value
 AND d.rule = -1;
UPDATE rollup_dimensions d SET clicks = d.clicks - s.clicks
FROM (SELECT code, day, dimension, value, sum(clicks) AS clicks
      FROM ruled_dimensions GROUP BY 1, 2, 3, 4) s
WHERE d.code = s.code AND d.day = s.day AND d.dimension = s.dimension AND d.value = s.value
  AND d.rule = -1;
DELETE FROM rollup_dimensions WHERE rule = -1 AND clicks = 0;

INSERT INTO visitors_daily (code, day, visitor, rule)
SELECT DISTINCT code, day, visitor, rule FROM ruled WHERE NOT is_bot
ON CONFLICT DO NOTHING;
-- A visitor under -1 stays only if a click of no rule brought them.
DELETE FROM visitors_daily v
WHERE v.rule = -1
  AND EXISTS (SELECT 1 FROM ruled r
              WHERE r.code = v.code AND r.day = v.day AND r.visitor = v.visitor AND NOT r.is_bot)
  AND NOT EXISTS (SELECT 1 FROM clicks c
                  WHERE c.code = v.code AND c.rule IS NULL AND NOT c.is_bot
                    AND c.visitor = v.visitor
                    AND c.occurred_at >= v.day::timestamp AT TIME ZONE 'UTC'
                    AND c.occurred_at < (v.day + 1)::timestamp AT TIME ZONE 'UTC');

DROP INDEX clicks_code_rule;
"#,
    },
    Migration {
        version: 5,
        name: "rollups leave room on each page for their counters' next versions",
        sql: r#"
-- Every batch updates each rollup row it touches, once. An update stays on
-- the row's own page (a HOT update: no new index entry, and the old version
-- is pruned when the page is next read) only when the page has room for
-- the new version. On full pages four in five dimension updates went to
-- another page, adding index entries and dead tuples that only VACUUM
-- removes. Pages filled to 40 % hold a new version of every row on them
-- (test `counting_a_link_again_keeps_its_rollup_rows_on_their_pages`), so
-- every update stays HOT (at 50 %, 47 of 2,100 rows still moved in a third
-- batch: BENCHMARKS.md); the price is rollups 2.5 times their packed size
-- on disk, small beside the raw clicks. Applies to pages written from now
-- on; `VACUUM FULL` of these tables applies it at once.
ALTER TABLE rollup_hourly SET (fillfactor = 40);
ALTER TABLE rollup_daily SET (fillfactor = 40);
ALTER TABLE rollup_dimensions SET (fillfactor = 40);
"#,
    },
    Migration {
        version: 6,
        name: "rollup increments pending until folded",
        sql: r#"
-- What each stored batch adds to the rollups, written with its raw clicks
-- and folded into the rollup tables a few seconds later, many batches at
-- once, by the transaction that deletes the row (src/fold.rs). `delta` is
-- protobuf, kept out of line uncompressed: each row is read once and
-- deleted, so compressing it would spend CPU on nothing that lasts.
CREATE TABLE rollup_pending (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stored_at timestamptz NOT NULL DEFAULT now(),
    clicks    bigint NOT NULL,
    delta     bytea NOT NULL
);
ALTER TABLE rollup_pending ALTER COLUMN delta SET STORAGE EXTERNAL;
"#,
    },
];
