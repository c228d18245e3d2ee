//! The `Analytics` gRPC service: stats of one link and an owner's top links.
//! A link with no clicks has zero stats, not NOT_FOUND: ownership and
//! existence are the gateway's (write-svc's) business. Every string field
//! passes the fleet's input policy ([`shortfleet_common::input`]) first: an
//! empty, over-long or control-character owner or code is INVALID_ARGUMENT.
//!
//! Stats come from rollups: the series and totals from hourly rows (a
//! period starting mid-hour includes that whole hour), visitors and the
//! top-10 dimensions from daily rows (the days the period touches).

use std::{collections::HashMap, future::Future, time::Duration as StdDuration};

use chrono::{DateTime, Duration, DurationRound, TimeDelta, Utc};
use deadpool_postgres::Pool;
use shortfleet_common::{
    input::{self, InputError},
    time::{from_proto, to_proto},
};
use shortfleet_proto::v1::{
    ClickTotalsRequest, ClickTotalsResponse, GetLinkStatsRequest, Interval, LinkStats, NamedCount,
    SeriesPoint, TopLinksRequest, TopLinksResponse, analytics_server::Analytics,
};
use tonic::{Request, Response, Status};

use crate::store;

const MAX_POINTS: i64 = 10_000;
const MAX_PERIOD_DAYS: i64 = 400;
const DEFAULT_PERIOD_DAYS: i64 = 7;
const TOP_PER_DIMENSION: usize = 10;

/// Why a stats request failed; the one mapping to gRPC codes is below.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The database failed or did not answer within the timeout.
    #[error("stats are unavailable right now")]
    Unavailable(#[source] anyhow::Error),
}

fn invalid(field: &'static str, reason: impl ToString) -> StatsError {
    StatsError::Invalid {
        field,
        reason: reason.to_string(),
    }
}

/// A field refused by the fleet's input policy.
impl From<InputError> for StatsError {
    fn from(err: InputError) -> Self {
        invalid(err.field, err.rule)
    }
}

impl From<StatsError> for Status {
    fn from(err: StatsError) -> Self {
        match &err {
            StatsError::Invalid { field, reason } => input::invalid_argument(field, reason),
            StatsError::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "stats query failed");
                Status::unavailable(err.to_string())
            }
        }
    }
}

pub struct AnalyticsService {
    pub pool: Pool,
    /// Bounds each stats query.
    pub db_timeout: StdDuration,
}

impl AnalyticsService {
    /// Runs one query within the database timeout.
    async fn query<T>(
        &self,
        call: impl Future<Output = anyhow::Result<T>>,
    ) -> Result<T, StatsError> {
        match tokio::time::timeout(self.db_timeout, call).await {
            Ok(result) => result.map_err(StatsError::Unavailable),
            Err(_) => Err(StatsError::Unavailable(anyhow::anyhow!(
                "no answer within {:?}",
                self.db_timeout
            ))),
        }
    }
}

/// The requested period: `to` defaults to now, `from` to a week before
/// `to`; at most [`MAX_PERIOD_DAYS`] long.
fn period(
    from: Option<&prost_types::Timestamp>,
    to: Option<&prost_types::Timestamp>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), StatsError> {
    let parse = |t: Option<&prost_types::Timestamp>, field: &'static str| {
        t.map(|t| from_proto(t).ok_or_else(|| invalid(field, "not a valid time")))
            .transpose()
    };
    let to = parse(to, "to")?.unwrap_or_else(Utc::now);
    let from = parse(from, "from")?.unwrap_or(to - Duration::days(DEFAULT_PERIOD_DAYS));
    if from > to {
        return Err(invalid("from", "must not be after to"));
    }
    if to - from > Duration::days(MAX_PERIOD_DAYS) {
        return Err(invalid(
            "from",
            format!("the period may span at most {MAX_PERIOD_DAYS} days"),
        ));
    }
    Ok((from, to))
}

/// Buckets `[from, to)` by `step`, aligned to UTC hours or days.
pub fn buckets(from: DateTime<Utc>, to: DateTime<Utc>, step: TimeDelta) -> Vec<DateTime<Utc>> {
    let mut t = from.duration_trunc(step).unwrap_or(from);
    let mut out = Vec::new();
    while t < to {
        out.push(t);
        t += step;
    }
    out
}

/// The bucket width of an interval (unspecified → day).
fn step_of(interval: i32) -> (Interval, TimeDelta) {
    match Interval::try_from(interval).unwrap_or(Interval::Unspecified) {
        Interval::Hour => (Interval::Hour, TimeDelta::hours(1)),
        _ => (Interval::Day, TimeDelta::days(1)),
    }
}

fn named(counts: &[(String, i64)]) -> Vec<NamedCount> {
    counts
        .iter()
        .take(TOP_PER_DIMENSION)
        .map(|(name, n)| NamedCount {
            name: name.clone(),
            clicks: u64::try_from(*n).unwrap_or(0),
        })
        .collect()
}

/// Series rows, visitors and dimensions of a whole link.
type StatsParts = (
    Vec<(DateTime<Utc>, i64, i64)>,
    i64,
    HashMap<String, Vec<(String, i64)>>,
);

impl AnalyticsService {
    /// A link's stats from the rollups: all its clicks, or with `rule` those
    /// that rule sent ([`store::NO_RULE`]: sent by none).
    async fn rollup_stats(
        &self,
        code: &str,
        rule: Option<i16>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        step: TimeDelta,
    ) -> Result<StatsParts, Status> {
        // Whole UTC days at a daily interval read the daily rollup (one row a
        // day, all rules together); anything else is summed from hourly rows.
        let whole_days = rule.is_none()
            && step == TimeDelta::days(1)
            && from.duration_trunc(step).ok() == Some(from)
            && to.duration_trunc(step).ok() == Some(to);
        let rows = if whole_days {
            let last = (to - TimeDelta::days(1)).date_naive();
            self.query(store::daily(&self.pool, code, from.date_naive(), last))
                .await?
        } else {
            let first_hour = store::hour_of(from);
            self.query(store::hourly(&self.pool, code, rule, first_hour, to))
                .await?
        };
        // `to` is exclusive: a period ending at midnight does not touch the
        // next day.
        let last_day = (to - TimeDelta::microseconds(1)).max(from).date_naive();
        let (visitors, dims) = self
            .query(store::audience(
                &self.pool,
                code,
                rule,
                from.date_naive(),
                last_day,
            ))
            .await?;
        Ok((rows, visitors, dims))
    }
}

#[tonic::async_trait]
impl Analytics for AnalyticsService {
    async fn get_link_stats(
        &self,
        request: Request<GetLinkStatsRequest>,
    ) -> Result<Response<LinkStats>, Status> {
        let req = request.into_inner();
        input::CODE.check(&req.code).map_err(StatsError::from)?;
        let (from, to) = period(req.from.as_ref(), req.to.as_ref())?;
        let (interval, step) = step_of(req.interval);
        let slots = buckets(from, to, step);
        if slots.len() as i64 > MAX_POINTS {
            return Err(invalid(
                "interval",
                format!("the period has more than {MAX_POINTS} points at this interval"),
            )
            .into());
        }
        // `?rule=`: -1 is "no rule matched", 0.. a rule's index.
        let rule = match req.rule {
            None => None,
            Some(-1) => Some(store::NO_RULE),
            Some(r @ 0..64) => Some(r as i16),
            Some(_) => return Err(invalid("rule", "must be a rule index (0-19) or none").into()),
        };
        let (rows, visitors, dims) = self.rollup_stats(&req.code, rule, from, to, step).await?;
        let mut series: Vec<SeriesPoint> = slots
            .iter()
            .map(|t| SeriesPoint {
                t: Some(to_proto(*t)),
                clicks: 0,
            })
            .collect();
        let (mut total, mut bots) = (0u64, 0u64);
        for (hour, clicks, bot) in rows {
            total += clicks as u64;
            bots += bot as u64;
            let slot = hour.duration_trunc(step).unwrap_or(hour);
            if let Ok(i) = slots.binary_search(&slot) {
                series[i].clicks += clicks as u64;
            }
        }
        let dim = |name: &str| dims.get(name).map(|v| named(v)).unwrap_or_default();
        Ok(Response::new(LinkStats {
            code: req.code,
            from: Some(to_proto(from)),
            to: Some(to_proto(to)),
            interval: interval as i32,
            total,
            unique_visitors: visitors as u64,
            bots,
            series,
            referrers: dim("referrer"),
            browsers: dim("browser"),
            os: dim("os"),
            devices: dim("device"),
            countries: dim("country"),
            rules: dim("rule"),
        }))
    }

    async fn top_links(
        &self,
        request: Request<TopLinksRequest>,
    ) -> Result<Response<TopLinksResponse>, Status> {
        let req = request.into_inner();
        input::OWNER.check(&req.owner).map_err(StatsError::from)?;
        let (from, to) = period(req.from.as_ref(), req.to.as_ref())?;
        let limit = match req.limit {
            0 => 10,
            n @ 1..=100 => n,
            _ => return Err(invalid("limit", "must be between 1 and 100").into()),
        };
        let first_hour = store::hour_of(from);
        let top = self
            .query(store::top_links(
                &self.pool,
                &req.owner,
                first_hour,
                to,
                i64::from(limit),
            ))
            .await?;
        Ok(Response::new(TopLinksResponse { links: named(&top) }))
    }

    async fn click_totals(
        &self,
        request: Request<ClickTotalsRequest>,
    ) -> Result<Response<ClickTotalsResponse>, Status> {
        let req = request.into_inner();
        input::OWNER.check(&req.owner).map_err(StatsError::from)?;
        if !(1..=MAX_TOTALS).contains(&req.codes.len()) {
            return Err(invalid("codes", "must hold 1 to 100 codes").into());
        }
        for code in &req.codes {
            CODES.check(code).map_err(StatsError::from)?;
        }
        let totals = self
            .query(store::click_totals(&self.pool, &req.owner, &req.codes))
            .await?;
        Ok(Response::new(ClickTotalsResponse {
            totals: totals
                .into_iter()
                .map(|(code, n)| (code, u64::try_from(n).unwrap_or(0)))
                .collect(),
        }))
    }
}

/// Codes per `ClickTotals` call: one page of the link list.
const MAX_TOTALS: usize = 100;
/// Each of `ClickTotals`' codes, under the request's field name.
const CODES: input::Bound = input::CODE.named("codes");

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn buckets_align_to_utc_boundaries() {
        let from = Utc.with_ymd_and_hms(2026, 1, 1, 22, 30, 0).unwrap();
        let to = Utc.with_ymd_and_hms(2026, 1, 2, 1, 0, 0).unwrap();
        let hours = buckets(from, to, TimeDelta::hours(1));
        assert_eq!(hours.len(), 3);
        assert_eq!(
            hours[0],
            Utc.with_ymd_and_hms(2026, 1, 1, 22, 0, 0).unwrap()
        );
        let days = buckets(from, to, TimeDelta::days(1));
        assert_eq!(
            days,
            vec![
                Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
                Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap(),
            ]
        );
    }

    #[test]
    fn periods_default_to_a_week_and_must_be_ordered() {
        let (from, to) = period(None, None).unwrap();
        assert_eq!((to - from).num_days(), 7);
        let later = to_proto(Utc::now());
        let earlier = to_proto(Utc::now() - Duration::hours(1));
        assert!(period(Some(&later), Some(&earlier)).is_err());
    }

    #[test]
    fn periods_are_at_most_400_days() {
        let to = Utc::now();
        let ok = to_proto(to - Duration::days(400));
        let too_long = to_proto(to - Duration::days(401));
        assert!(period(Some(&ok), Some(&to_proto(to))).is_ok());
        let err = period(Some(&too_long), Some(&to_proto(to))).unwrap_err();
        let status = Status::from(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.metadata().get(input::FIELD_METADATA).unwrap(),
            "from"
        );
    }

    #[test]
    fn intervals_default_to_days() {
        assert_eq!(step_of(0), (Interval::Day, TimeDelta::days(1)));
        assert_eq!(step_of(1), (Interval::Hour, TimeDelta::hours(1)));
        assert_eq!(step_of(99), (Interval::Day, TimeDelta::days(1)));
    }
}
