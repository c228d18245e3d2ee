//! The hot path: `GET|HEAD /{code}` → rate limit by client IP → the link
//! (micro-cache, else one read-svc `Resolve`) → decide → redirect, handing
//! the click to the click buffer without waiting. Everything here is on
//! every redirect, so each step is deliberate.
//!
//! Every decision is taken from the one `ResolveResponse` (no second hop):
//! - gone (expired, disabled, over `max_clicks`) → `expired_url` if the
//!   link has one, else 410;
//! - password → the form ([`crate::password`]) until the right password
//!   arrives by `POST /{code}` or in `X-Link-Password`; the micro-cache may
//!   hold a protected link, but nothing below answers with its target (or a
//!   rule's) before the check passed;
//! - rules → the first matching rule's url ([`crate::rules`]), recorded on
//!   the click as its index;
//! - `forward_query` → the request's query merged in ([`crate::forward`]);
//! - not `crawlable` → `X-Robots-Tag: noindex`.
//!
//! When read-svc cannot answer (unreachable, breaker open, saturated, too
//! slow, connection broken) a code resolved before is answered from the
//! micro-cache's stale copy (stale-if-error; the copy's limits are in
//! [`crate::microcache`]); without one, 503 with `Retry-After` (504 on a
//! deadline), as before.

use std::{net::SocketAddr, sync::Arc};

use chrono::Utc;
use http::{HeaderValue, Method, Request, StatusCode, header, request::Parts};
use hyper::body::Incoming;
use shortfleet_common::{click::ClickFields, time::to_proto};
use shortfleet_proto::v1::{LinkState, ResolveRequest, ResolveResponse};
use tonic::Code;

use super::{Ctx, limit::Limit};
use crate::{
    forward, password,
    problem::{HttpResponse, Problem},
    rules::{self, Visitor},
};

const NOINDEX: HeaderValue = HeaderValue::from_static("noindex");
/// Parsed once, not on every insert as a `&str` name would be.
static X_ROBOTS_TAG: http::HeaderName = http::HeaderName::from_static("x-robots-tag");
/// A password form body is one short field.
const FORM_MAX_BYTES: usize = 4 * 1024;

/// How the request tries to pass a link's password check.
enum Attempt {
    /// `GET`/`HEAD`: maybe the API header.
    Header,
    /// `POST /{code}` from the form, with the field's value.
    Form(Option<String>),
}

pub async fn redirect(
    ctx: &Ctx<'_>,
    code: &str,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> HttpResponse {
    let (parts, _body) = req.into_parts();
    limited(ctx, code, &parts, peer, Attempt::Header).await
}

/// `POST /{code}`: the password form's submission. Always answered with
/// 303 on success, so the browser follows with a GET and the password never
/// travels on to the target (307/308 would re-post it there).
pub async fn unlock(
    ctx: &Ctx<'_>,
    code: &str,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> HttpResponse {
    let (parts, body) = req.into_parts();
    let body = match crate::input::read_body(
        &parts.headers,
        body,
        FORM_MAX_BYTES,
        ctx.state.config.body_read_timeout,
    )
    .await
    {
        Ok(body) => body,
        Err(problem) => return problem.into_response(),
    };
    let attempt = Attempt::Form(password::form_password(&body));
    limited(ctx, code, &parts, peer, attempt).await
}

/// The anonymous per-IP limit, then the answer.
async fn limited(
    ctx: &Ctx<'_>,
    code: &str,
    parts: &Parts,
    peer: SocketAddr,
    attempt: Attempt,
) -> HttpResponse {
    let state = ctx.state;
    let client = state.config.trusted_proxies.client(peer, &parts.headers);
    // Formatted once: the limiter's subject and the click's client_ip.
    let ip_text = client.ip_text();
    let policy = &state.config.anonymous;
    // No Redis round trip per redirect: a leased slice of the shared bucket.
    let decision = state.limiter.check_leased(policy, &ip_text).await;
    let limit = Limit::new(policy, decision);
    if let Some(refusal) = limit.refusal() {
        return refusal;
    }
    let mut response = {
        // A country header is believed only from a trusted proxy.
        let country = match &state.config.country_header {
            Some(name) if client.via_trusted_proxy => parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
            _ => "",
        };
        let who = Who {
            ip: client.ip,
            ip_text: &ip_text,
            country,
        };
        match resolve(ctx, code, false).await {
            Ok(link) => answer(ctx, &link, parts, &who, attempt).await,
            Err(response) => response,
        }
    };
    limit.stamp(&mut response);
    response
}

/// The client as the redirect sees it.
struct Who<'a> {
    ip: std::net::IpAddr,
    /// `ip` as text.
    ip_text: &'a str,
    /// From the trusted country header, or empty.
    country: &'a str,
}

/// The link: the micro-cache answers hot codes with no gRPC hop at all.
/// `unlocked`: the password check passed, so a protected link's
/// `max_clicks` redirect is counted now (read-svc is always asked then).
async fn resolve(
    ctx: &Ctx<'_>,
    code: &str,
    unlocked: bool,
) -> Result<Arc<ResolveResponse>, HttpResponse> {
    if !unlocked && let Some(hit) = ctx.state.microcache.get(code) {
        if hit.refresh {
            refresh_in_background(ctx, code);
        }
        return Ok(hit.link);
    }
    let asked = ResolveRequest {
        code: code.to_owned(),
        unlocked,
        refresh: false,
    };
    // Boxed: the gRPC call is a large future only a miss needs; inline, it
    // would be carried (and moved) by every redirect's future.
    let resolved = Box::pin(ask_read_svc(&ctx.state.upstreams, asked, ctx.request_id)).await;
    match resolved {
        Ok(link) => {
            let link = Arc::new(link);
            // Links counted against max_clicks must reach read-svc.
            if !link.uncacheable {
                ctx.state.microcache.insert(code, link.clone());
            }
            Ok(link)
        }
        Err(s) if s.code() == Code::NotFound => {
            // Echo only what could be a code (aliases are at most
            // 64 characters), not whatever path a scanner sent.
            let detail = if code.len() <= 64 {
                format!("no link with code {code:?}")
            } else {
                "no link with that code".to_owned()
            };
            Err(Problem::not_found(detail).into_response())
        }
        Err(s) if crate::resilience::is_failure(s.code()) => {
            match ctx.state.microcache.stale(code, s.code()) {
                Some(stale) => Ok(stale),
                None => Err(Problem::from_grpc(&s).into_response()),
            }
        }
        Err(s) => Err(Problem::from_grpc(&s).into_response()),
    }
}

/// Renews a hot code's micro-cache entry off the request path (see
/// [`crate::microcache`]): through read-svc's guard and deadline like a
/// miss, as a refresh, which counts no `max_clicks` click. Whatever
/// happens, the redirect that started it has already been answered.
fn refresh_in_background(ctx: &Ctx<'_>, code: &str) {
    let upstreams = ctx.state.upstreams.clone();
    let cache = ctx.state.microcache.clone();
    let (code, request_id) = (code.to_owned(), ctx.request_id.to_owned());
    let refresh = async move {
        let asked = ResolveRequest {
            code: code.clone(),
            unlocked: false,
            refresh: true,
        };
        let answer = ask_read_svc(&upstreams, asked, &request_id).await;
        cache.refreshed(&code, answer.map(Arc::new).map_err(|s| s.code()));
    };
    tokio::spawn(tracing::Instrument::in_current_span(refresh));
}

/// One `Resolve`, a miss's or a refresh's, through read-svc's guard,
/// breaker and deadline.
async fn ask_read_svc(
    upstreams: &crate::upstream::Upstreams,
    asked: ResolveRequest,
    request_id: &str,
) -> Result<ResolveResponse, tonic::Status> {
    upstreams
        .resolver(|mut c| {
            let r = upstreams.request(asked.clone(), request_id);
            async move { c.resolve(r).await }
        })
        .await
}

async fn answer(
    ctx: &Ctx<'_>,
    link: &ResolveResponse,
    parts: &Parts,
    who: &Who<'_>,
    attempt: Attempt,
) -> HttpResponse {
    if link.state != LinkState::Active as i32 {
        return gone(link);
    }
    let query = parts.uri.query();
    let posted = matches!(attempt, Attempt::Form(_));
    if !link.password_hash.is_empty() {
        let offered = match attempt {
            Attempt::Form(p) => Some(p.unwrap_or_default()),
            Attempt::Header => parts
                .headers
                .get(password::PASSWORD_HEADER)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        };
        let Some(offered) = offered else {
            // Shown, not followed: no click yet.
            return password::form(&link.code, query, false);
        };
        // Boxed, like every rare path here: see `resolve`.
        let check = Box::pin(check_password(ctx, link, who, &offered, posted, query));
        if let Err(refused) = check.await {
            return refused;
        }
        // read-svc did not count this redirect against max_clicks while
        // the password was unchecked (a form shown is not a click): count
        // it now, and it may be the one over the limit.
        if link.uncacheable {
            match Box::pin(resolve(ctx, &link.code, true)).await {
                Ok(counted) if counted.state != LinkState::Active as i32 => return gone(&counted),
                Ok(_) => {}
                Err(response) => return response,
            }
        }
    }
    // Only past this point may a target be answered.
    let headers = &parts.headers;
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let rule = if link.rules.is_empty() {
        None
    } else {
        let country =
            rules::rule_country(who.country, &link.rules, ctx.state.geoip.as_deref(), who.ip);
        let visitor = Visitor::new(
            text(header::USER_AGENT),
            text(header::ACCEPT_LANGUAGE),
            &country,
        );
        rules::choose(&link.rules, &visitor)
    };
    let target = rule.map_or(link.url.as_str(), |i| link.rules[i].url.as_str());
    let target = if link.forward_query {
        match forward::merge(target, query) {
            Ok(t) => t,
            Err(forward::TooLong) => {
                return Problem::new(
                    StatusCode::URI_TOO_LONG,
                    "uri-too-long",
                    "URI too long",
                    format!(
                        "the target with this query would exceed {} bytes",
                        forward::MAX_LOCATION
                    ),
                )
                .into_response();
            }
        }
    } else {
        std::borrow::Cow::Borrowed(target)
    };
    let Ok(location) = HeaderValue::from_str(&target) else {
        return Problem::from_grpc(&tonic::Status::internal("stored URL is not a header value"))
            .into_response();
    };
    let status = if posted {
        StatusCode::SEE_OTHER
    } else {
        StatusCode::from_u16(link.redirect_type as u16)
            .ok()
            .filter(StatusCode::is_redirection)
            .unwrap_or(StatusCode::FOUND)
    };
    record_click(ctx, parts, link, who, rule);
    let mut response = HttpResponse::new(Default::default());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    // Room for every header a redirect gets (`REDIRECT_HEADERS`): a map
    // that starts empty is allocated at the first insert and rebuilt at
    // the seventh, about 1.3 % of the gateway's CPU in a profile.
    headers.reserve(REDIRECT_HEADERS);
    headers.insert(header::LOCATION, location);
    // Browsers must come back through us, or the click is never counted;
    // an unlocked target is nobody else's to keep.
    headers.insert(
        header::CACHE_CONTROL,
        if link.password_hash.is_empty() {
            HeaderValue::from_static("private, max-age=0")
        } else {
            HeaderValue::from_static("no-store")
        },
    );
    if !link.crawlable {
        headers.insert(&X_ROBOTS_TAG, NOINDEX);
    }
    response
}

/// Headers on a redirect: `Location`, `Cache-Control`, `X-Robots-Tag`
/// here; `RateLimit`, `RateLimit-Policy` from the limiter; `X-Request-Id`,
/// `X-Content-Type-Options` on every answer.
const REDIRECT_HEADERS: usize = 7;

/// 410, or the link's `expired_url` (expired, disabled, over-limit; read-svc
/// leaves it empty for deleted links).
fn gone(link: &ResolveResponse) -> HttpResponse {
    if !link.expired_url.is_empty()
        && let Ok(location) = HeaderValue::from_str(&link.expired_url)
    {
        let mut response = HttpResponse::new(Default::default());
        *response.status_mut() = StatusCode::FOUND;
        let h = response.headers_mut();
        h.insert(header::LOCATION, location);
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=0"),
        );
        h.insert(&X_ROBOTS_TAG, NOINDEX);
        return response;
    }
    Problem::new(
        StatusCode::GONE,
        "gone",
        "Link gone",
        "this link expired, was disabled or deleted",
    )
    .into_response()
}

/// Attempts are limited per client address and code (every attempt takes
/// a token, right or wrong, before any hashing), then one verification.
async fn check_password(
    ctx: &Ctx<'_>,
    link: &ResolveResponse,
    who: &Who<'_>,
    offered: &str,
    posted: bool,
    query: Option<&str>,
) -> Result<(), HttpResponse> {
    let policy = &ctx.state.config.password_attempts;
    let decision = ctx
        .state
        .limiter
        .check(policy, &format!("{}:{}", who.ip, link.code))
        .await;
    let limit = Limit::new(policy, decision);
    if let Some(refusal) = limit.refusal() {
        metrics::counter!("shortfleet_link_password_attempts_total", "result" => "limited")
            .increment(1);
        return Err(refusal);
    }
    if password::verify(&link.password_hash, offered).await {
        metrics::counter!("shortfleet_link_password_attempts_total", "result" => "right")
            .increment(1);
        return Ok(());
    }
    metrics::counter!("shortfleet_link_password_attempts_total", "result" => "wrong").increment(1);
    let mut response = if posted {
        password::form(&link.code, query, true)
    } else {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "link-password",
            "Wrong link password",
            format!(
                "this link needs its password in {}",
                password::PASSWORD_HEADER
            ),
        )
        .into_response()
    };
    limit.stamp(&mut response);
    Err(response)
}

fn record_click(
    ctx: &Ctx<'_>,
    parts: &Parts,
    link: &ResolveResponse,
    who: &Who<'_>,
    rule: Option<usize>,
) {
    // Borrowed, not copied: the click is encoded straight from these.
    let header = |name: http::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let mut id = uuid::Uuid::encode_buffer();
    let event_id = super::request_id::random_uuid()
        .hyphenated()
        .encode_lower(&mut id);
    // The redirect's own span when spans are exported (its click then
    // continues the same trace); otherwise the caller's context, if any,
    // passed through without building a propagation context.
    let exported;
    let traceparent = if shortfleet_common::telemetry::exporting_traces() {
        exported = shortfleet_common::trace::current_traceparent();
        exported.as_str()
    } else {
        header(http::header::HeaderName::from_static("traceparent"))
    };
    ctx.state.clicks.record(&ClickFields {
        event_id,
        code: &link.code,
        owner: &link.owner,
        occurred_at: to_proto(Utc::now()),
        referrer: header(header::REFERER),
        user_agent: header(header::USER_AGENT),
        client_ip: who.ip_text,
        head_request: parts.method == Method::HEAD,
        traceparent,
        country: who.country,
        rule: rule.map(|i| i as u32),
    });
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_link_password_attempts_total",
        metrics::Unit::Count,
        "Password attempts on protected links, by result (right, wrong, limited)."
    );
}
