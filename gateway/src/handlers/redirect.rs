//! The hot path: `GET|HEAD /{code}` → rate limit by client IP → read-svc →
//! redirect, handing the click to the click buffer without waiting.
//! Everything here is on every redirect, so each step is deliberate.
//!
//! When read-svc cannot answer (unreachable, breaker open, saturated, too
//! slow, connection broken) a code resolved before is answered from the
//! micro-cache's stale copy (stale-if-error; the copy's limits are in
//! [`crate::microcache`]); without one, 503 with `Retry-After` (504 on a
//! deadline), as before.

use std::net::SocketAddr;

use chrono::Utc;
use http::{HeaderValue, Method, Request, StatusCode, header};
use hyper::body::Incoming;
use shortfleet_common::time::to_proto;
use shortfleet_proto::v1::{ClickEvent, LinkState, ResolveRequest};
use tonic::Code;

use super::{Ctx, rate_limit_headers, too_many_requests};
use crate::problem::{HttpResponse, Problem};

pub async fn redirect(
    ctx: &Ctx<'_>,
    code: &str,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> HttpResponse {
    let state = ctx.state;
    let client = state.config.trusted_proxies.client(peer, req.headers());
    let policy = &state.config.anonymous;
    // No Redis round trip per redirect: a leased slice of the shared bucket.
    let decision = state
        .limiter
        .check_leased(policy, &client.ip.to_string())
        .await;
    let mut response = if decision.allowed {
        // A country header is believed only from a trusted proxy.
        resolve_and_redirect(ctx, code, req, client.ip, client.via_trusted_proxy).await
    } else {
        too_many_requests(&decision)
    };
    rate_limit_headers(&mut response, policy, &decision);
    response
}

async fn resolve_and_redirect(
    ctx: &Ctx<'_>,
    code: &str,
    req: &Request<Incoming>,
    ip: std::net::IpAddr,
    trusted_peer: bool,
) -> HttpResponse {
    // The micro-cache answers hot codes with no gRPC hop at all.
    let link = match ctx.state.microcache.get(code).await {
        Some(hit) => hit,
        None => {
            let upstreams = &ctx.state.upstreams;
            let resolved = upstreams
                .resolver(|mut c| {
                    let r = upstreams.request(
                        ResolveRequest {
                            code: code.to_owned(),
                        },
                        ctx.request_id,
                    );
                    async move { c.resolve(r).await }
                })
                .await;
            match resolved {
                Ok(link) => {
                    let link = std::sync::Arc::new(link);
                    // Links counted against max_clicks must reach read-svc.
                    if !link.uncacheable {
                        ctx.state.microcache.insert(code, link.clone()).await;
                    }
                    link
                }
                Err(s) if s.code() == Code::NotFound => {
                    // Echo only what could be a code (aliases are at most
                    // 64 characters), not whatever path a scanner sent.
                    let detail = if code.len() <= 64 {
                        format!("no link with code {code:?}")
                    } else {
                        "no link with that code".to_owned()
                    };
                    return Problem::not_found(detail).into_response();
                }
                Err(s) if crate::resilience::is_failure(s.code()) => {
                    match ctx.state.microcache.stale(code, s.code()).await {
                        Some(stale) => stale,
                        None => return Problem::from_grpc(&s).into_response(),
                    }
                }
                Err(s) => return Problem::from_grpc(&s).into_response(),
            }
        }
    };
    if link.state != LinkState::Active as i32 {
        return Problem::new(
            StatusCode::GONE,
            "gone",
            "Link gone",
            "this link expired, was disabled or deleted",
        )
        .into_response();
    }
    let Ok(location) = HeaderValue::from_str(&link.url) else {
        return Problem::from_grpc(&tonic::Status::internal("stored URL is not a header value"))
            .into_response();
    };
    let status = StatusCode::from_u16(link.redirect_type as u16)
        .ok()
        .filter(StatusCode::is_redirection)
        .unwrap_or(StatusCode::FOUND);
    record_click(ctx, req, &link.code, &link.owner, ip, trusted_peer);
    let mut response = HttpResponse::new(Default::default());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    // Browsers must come back through us, or the click is never counted.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=0"),
    );
    response
}

fn record_click(
    ctx: &Ctx<'_>,
    req: &Request<Incoming>,
    code: &str,
    owner: &str,
    ip: std::net::IpAddr,
    trusted_peer: bool,
) {
    let header = |name: http::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    ctx.state.clicks.record(ClickEvent {
        event_id: super::fast_uuid(),
        code: code.to_owned(),
        owner: owner.to_owned(),
        occurred_at: Some(to_proto(Utc::now())),
        referrer: header(header::REFERER),
        user_agent: header(header::USER_AGENT),
        client_ip: ip.to_string(),
        head_request: req.method() == Method::HEAD,
        // The redirect's own span when spans are exported (its click then
        // continues the same trace); otherwise the caller's context, if any,
        // passed through without building a propagation context.
        traceparent: if shortfleet_common::telemetry::exporting_traces() {
            shortfleet_common::trace::current_traceparent()
        } else {
            header(http::header::HeaderName::from_static("traceparent"))
        },
        country: match &ctx.state.config.country_header {
            Some(name) if trusted_peer => header(name.clone()),
            _ => String::new(),
        },
    });
}
