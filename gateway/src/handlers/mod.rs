//! Request handling in phases, like a proxy: identify (request id, client)
//! → route → authenticate and rate-limit → call the upstream → shape the
//! response → log. Each endpoint's own work lives in a submodule.

mod dashboard;
mod events;
mod framing;
mod labels;
mod limit;
mod link_fields;
pub(crate) mod links;
pub mod openapi;
mod qr;
mod redirect;
mod request_id;
pub mod robots;
mod stats;
pub(crate) mod view;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};

use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use shortfleet_common::ops;
use tracing::Instrument;

use self::{
    labels::{method_label, status_label},
    limit::Limit,
    request_id::{REQUEST_ID, request_id},
};
use crate::{
    keys::Principal,
    problem::{HttpResponse, Problem, method_not_allowed},
    routes::{Endpoint, RouteError},
    state::State,
};

/// Every answer's body: a whole one, or an event stream (`/api/v1/events`).
pub type Body = http_body_util::Either<http_body_util::Full<bytes::Bytes>, events::SseBody>;

fn full(response: HttpResponse) -> Response<Body> {
    response.map(Body::Left)
}

/// What every handler knows about the request it serves.
pub struct Ctx<'a> {
    pub state: &'a State,
    pub request_id: &'a str,
}

const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");

/// The hyper service: never fails, every error is a response.
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let request_id = request_id(&req);
    let method = req.method().clone();
    // A shared handle to the request's bytes, not a copy of the path.
    let uri = req.uri().clone();
    let path = uri.path();
    let ctx = Ctx {
        state: &state,
        request_id: &request_id,
    };
    let span = tracing::info_span!(
        "http.server",
        otel.name = tracing::field::Empty,
        otel.kind = "server",
        http.request.method = %method,
        url.path = %path,
        http.response.status_code = tracing::field::Empty,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    shortfleet_common::trace::continue_from_headers(&span, req.headers());
    let (endpoint, mut response) = async {
        if let Err(problem) = framing::check(&req) {
            return ("unknown", full(problem.into_response()));
        }
        match state.config.routes.route(&method, path) {
            Err(RouteError::NotFound) => (
                "unknown",
                full(
                    Problem::not_found(format!("no route for {}", framing::shown(path)))
                        .into_response(),
                ),
            ),
            Err(RouteError::MethodNotAllowed(allowed)) => {
                ("unknown", full(method_not_allowed(&allowed)))
            }
            Ok((endpoint, params)) => (
                endpoint.name(),
                dispatch(&ctx, endpoint, &params, req, peer).await,
            ),
        }
    }
    .instrument(span.clone())
    .await;
    // A disabled span (info off, no trace export) records nothing: skip
    // building its name, an allocation on every redirect.
    if !span.is_disabled() {
        span.record("otel.name", format!("{method} {endpoint}"));
        span.record("http.response.status_code", response.status().as_u16());
    }
    // Nothing we answer is meant to be sniffed into another type.
    response
        .headers_mut()
        .insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    labels::record_request(
        endpoint,
        method_label(&method),
        status_label(status),
        elapsed,
    );
    {
        let _entered = span.enter();
        tracing::info!(
            target: "access",
            request_id = %request_id,
            method = %method,
            path = %path,
            status,
            duration_us = elapsed.as_micros() as u64,
            endpoint,
        );
    }
    // The id's own bytes become the header's (no copy): it is a plain
    // token, so the check cannot fail.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(request_id)) {
        response.headers_mut().insert(&REQUEST_ID, v);
    }
    Ok(response)
}

async fn dispatch(
    ctx: &Ctx<'_>,
    endpoint: Endpoint,
    params: &[&str],
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let param = || params.first().copied().unwrap_or_default();
    let response = match endpoint {
        // With an ops port, metrics are served there only.
        Endpoint::Metrics if ctx.state.config.ops_addr.is_some() => {
            Problem::not_found("no such endpoint").into_response()
        }
        Endpoint::Healthz | Endpoint::Readyz | Endpoint::Metrics => {
            ops::respond(req.uri().path(), &ctx.state.health)
                .unwrap_or_else(|| Problem::not_found("no such endpoint").into_response())
        }
        Endpoint::OpenApi => openapi::document(req.headers()),
        Endpoint::Redirect => redirect::redirect(ctx, param(), req, peer).await,
        // Every other endpoint's future is boxed: this function's future is
        // as large as its largest branch and is moved with every request,
        // and the redirect should not carry the API's or the password
        // form's state machines (measured: ~10 % of a redirect's CPU).
        Endpoint::Unlock => Box::pin(redirect::unlock(ctx, param(), req, peer)).await,
        Endpoint::Robots => Box::pin(robots::robots(ctx)).await,
        Endpoint::App => dashboard::app(req.uri().path(), req.headers()),
        Endpoint::AppAsset => dashboard::asset(param(), req.headers()),
        _ => return Box::pin(api(ctx, endpoint, params, req, peer)).await,
    };
    full(response)
}

/// The authenticated API: key, per-key limit, then the endpoint.
async fn api(
    ctx: &Ctx<'_>,
    endpoint: Endpoint,
    params: &[&str],
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let param = || params.first().copied().unwrap_or_default();
    let principal = match authenticate(ctx, &req).await {
        Some(p) => p,
        None => return full(refuse_authentication(ctx, &req, peer).await),
    };
    let policy = ctx.state.config.tiers.policy(&principal.tier);
    let decision = ctx.state.limiter.check(policy, &principal.key_id).await;
    let limit = Limit::new(policy, decision);
    if let Some(refusal) = limit.refusal() {
        return full(refusal);
    }
    let mut response = if endpoint == Endpoint::Events {
        match events::events(ctx, &principal, &req) {
            Ok(stream) => stream.map(Body::Right),
            Err(problem) => full(problem.into_response()),
        }
    } else {
        let result = match endpoint {
            Endpoint::CreateLink => links::create(ctx, &principal, req).await,
            Endpoint::ListLinks => links::list(ctx, &principal, &req).await,
            Endpoint::GetLink => links::get(ctx, &principal, param()).await,
            Endpoint::UpdateLink => links::update(ctx, &principal, param(), req).await,
            Endpoint::DeleteLink => links::delete(ctx, &principal, param()).await,
            Endpoint::LinkStats => stats::link_stats(ctx, &principal, param(), &req).await,
            Endpoint::TopLinks => stats::top_links(ctx, &principal, &req).await,
            Endpoint::LinkQr => qr::link_qr(ctx, &principal, param(), &req).await,
            _ => Err(Problem::not_found("no such endpoint")),
        };
        full(result.unwrap_or_else(Problem::into_response))
    };
    limit.stamp(&mut response);
    response
}

async fn authenticate(ctx: &Ctx<'_>, req: &Request<Incoming>) -> Option<Principal> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    ctx.state.key_store.verify(secret.trim()).await
}

/// 401, or 429 once this client address has failed too often: each
/// failure takes a token from its `auth-failures` bucket.
async fn refuse_authentication(
    ctx: &Ctx<'_>,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> HttpResponse {
    let client = ctx.state.config.trusted_proxies.client(peer, req.headers());
    let policy = &ctx.state.config.auth_failures;
    let decision = ctx
        .state
        .limiter
        .check(policy, &format!("auth-failures:{}", client.ip))
        .await;
    match Limit::new(policy, decision).refusal() {
        None => Problem::unauthorized().into_response(),
        Some(refusal) => {
            metrics::counter!("shortfleet_auth_failures_limited_total").increment(1);
            refusal
        }
    }
}

/// Registers the HELP text and unit of the metrics this module (and the
/// redirect handler) records.
pub fn describe_metrics() {
    redirect::describe_metrics();
    metrics::describe_histogram!(
        "shortfleet_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency, by endpoint and method."
    );
    metrics::describe_counter!(
        "shortfleet_http_requests_total",
        metrics::Unit::Count,
        "HTTP requests answered, by endpoint and status."
    );
    metrics::describe_counter!(
        "shortfleet_auth_failures_limited_total",
        metrics::Unit::Count,
        "Failed authentications answered 429 because the client kept failing."
    );
}
