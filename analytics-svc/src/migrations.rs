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
];
