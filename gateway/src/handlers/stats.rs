//! Stats endpoints: ownership is checked with write-svc, numbers come from
//! analytics-svc. analytics-svc down → 503 with Retry-After, quickly.

use chrono::{DateTime, Duration, Utc};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use shortfleet_common::time::to_proto;
use shortfleet_proto::v1::{GetLinkStatsRequest, Interval, TopLinksRequest};

use super::{Ctx, view};
use crate::{
    input::{query, query_param},
    keys::Principal,
    problem::{FieldError, HttpResponse, Problem},
};

/// `from`/`to` from the query, defaulting to the last 7 days.
fn period(
    params: &[(String, String)],
    errors: &mut Vec<FieldError>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let mut parse = |name: &str| {
        let raw = query_param(params, name)?;
        match DateTime::parse_from_rfc3339(raw) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                errors.push(FieldError {
                    field: name.to_owned(),
                    message: "must be an RFC 3339 time, e.g. 2030-01-31T12:00:00Z".into(),
                });
                None
            }
        }
    };
    let to = parse("to").unwrap_or_else(Utc::now);
    let from = parse("from").unwrap_or(to - Duration::days(7));
    if from > to {
        errors.push(FieldError {
            field: "from".into(),
            message: "must not be after to".into(),
        });
    }
    (from, to)
}

pub async fn link_stats(
    ctx: &Ctx<'_>,
    principal: &Principal,
    code: &str,
    req: &Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    let params = query(req.uri());
    let mut errors = Vec::new();
    let (from, to) = period(&params, &mut errors);
    let interval = match query_param(&params, "interval") {
        None | Some("day") => Interval::Day,
        Some("hour") => Interval::Hour,
        Some(_) => {
            errors.push(FieldError {
                field: "interval".into(),
                message: "must be hour or day".into(),
            });
            Interval::Day
        }
    };
    // `?rule=2`: clicks sent by the link's third rule; `?rule=none`: by
    // none (the link's own url).
    let rule = match query_param(&params, "rule") {
        None => None,
        Some("none") => Some(-1),
        Some(raw) => match raw.parse::<i32>() {
            Ok(n @ 0..20) => Some(n),
            _ => {
                errors.push(FieldError {
                    field: "rule".into(),
                    message: "must be a rule index from 0 to 19, or none".into(),
                });
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let upstreams = &ctx.state.upstreams;
    // Stats only for the caller's own link (another's is 404).
    super::links::owned_link(ctx, principal, code).await?;
    let request = GetLinkStatsRequest {
        code: code.to_owned(),
        from: Some(to_proto(from)),
        to: Some(to_proto(to)),
        interval: interval as i32,
        rule,
    };
    let stats = upstreams
        .analytics(|mut c| {
            let r = upstreams.request(request.clone(), ctx.request_id);
            async move { c.get_link_stats(r).await }
        })
        .await?;
    let series: Vec<_> = stats
        .series
        .iter()
        .map(|p| json!({"t": view::time(p.t.as_ref()), "clicks": p.clicks}))
        .collect();
    let body = json!({
        "code": code,
        "from": view::rfc3339(from),
        "to": view::rfc3339(to),
        "interval": if interval == Interval::Hour { "hour" } else { "day" },
        "total": stats.total,
        "unique_visitors": stats.unique_visitors,
        "bots": stats.bots,
        "series": series,
        "referrers": view::named(&stats.referrers),
        "browsers": view::named(&stats.browsers),
        "os": view::named(&stats.os),
        "devices": view::named(&stats.devices),
        "countries": view::named(&stats.countries),
        "rules": view::named(&stats.rules),
    });
    Ok(view::json_response(StatusCode::OK, &body))
}

pub async fn top_links(
    ctx: &Ctx<'_>,
    principal: &Principal,
    req: &Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    let params = query(req.uri());
    let mut errors = Vec::new();
    let (from, to) = period(&params, &mut errors);
    let limit = match query_param(&params, "limit") {
        None => 10,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .unwrap_or_else(|| {
                errors.push(FieldError {
                    field: "limit".into(),
                    message: "must be an integer from 1 to 100".into(),
                });
                10
            }),
    };
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let upstreams = &ctx.state.upstreams;
    let request = TopLinksRequest {
        owner: principal.owner.clone(),
        from: Some(to_proto(from)),
        to: Some(to_proto(to)),
        limit,
    };
    let top = upstreams
        .analytics(|mut c| {
            let r = upstreams.request(request.clone(), ctx.request_id);
            async move { c.top_links(r).await }
        })
        .await?;
    let public_url = &ctx.state.config.public_url;
    let items: Vec<_> = top
        .links
        .iter()
        .map(|l| json!({"code": l.name, "short_url": view::short_url(public_url, &l.name), "clicks": l.clicks}))
        .collect();
    Ok(view::json_response(
        StatusCode::OK,
        &json!({"from": view::rfc3339(from), "to": view::rfc3339(to), "items": items}),
    ))
}
