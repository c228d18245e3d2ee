//! The link management endpoints: create, list, get, update, delete.
//! Ownership is enforced by write-svc (another owner's link is NOT_FOUND).

use std::collections::HashMap;

use http::{HeaderValue, Request, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;
use shortfleet_common::{input, time::to_proto};
use shortfleet_proto::v1::{
    ClickTotalsRequest, CreateLinkRequest, DeleteLinkRequest, GetLinkRequest, Link,
    ListLinksRequest, UpdateLinkRequest,
};

use super::{Ctx, link_fields, view};
use crate::{
    input::{Fields, bounded, json_object, query, query_param, read_body},
    keys::Principal,
    problem::{HttpResponse, Problem},
};

pub(crate) const CREATE_FIELDS: &[&str] = &[
    "url",
    "alias",
    "expires_at",
    "redirect_type",
    "max_clicks",
    "tags",
    "password",
    "rules",
    "forward_query",
    "crawlable",
    "expired_url",
];
pub(crate) const UPDATE_FIELDS: &[&str] = &[
    "url",
    "expires_at",
    "redirect_type",
    "max_clicks",
    "tags",
    "disabled",
    "password",
    "rules",
    "forward_query",
    "crawlable",
    "expired_url",
];

/// The caller's link `code`: another owner's or a deleted one is 404.
pub(crate) async fn owned_link(
    ctx: &Ctx<'_>,
    principal: &Principal,
    code: &str,
) -> Result<Link, Problem> {
    let upstreams = &ctx.state.upstreams;
    let request = GetLinkRequest {
        code: code.to_owned(),
        owner: principal.owner.clone(),
    };
    upstreams
        .writer(true, |mut c| {
            let r = upstreams.request(request.clone(), ctx.request_id);
            async move { c.get_link(r).await }
        })
        .await
}

/// A JSON object body, read within the size and time limits, as fields
/// (`allowed` names the accepted ones).
async fn json_fields(
    ctx: &Ctx<'_>,
    headers: &http::HeaderMap,
    body: Incoming,
    allowed: &[&str],
) -> Result<Fields, Problem> {
    let config = &ctx.state.config;
    let body = read_body(
        headers,
        body,
        config.max_body_bytes,
        config.body_read_timeout,
    )
    .await?;
    Ok(Fields::new(json_object(headers, &body)?, allowed))
}

/// Values above u32 are passed as u32::MAX so write-svc names the field.
fn redirect_type(raw: u64) -> u32 {
    u32::try_from(raw).unwrap_or(u32::MAX)
}

pub async fn create(
    ctx: &Ctx<'_>,
    principal: &Principal,
    req: Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    let (parts, body) = req.into_parts();
    let idempotency_key = match parts.headers.get("idempotency-key") {
        None => String::new(),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                Problem::field(
                    "Idempotency-Key",
                    "must be 1 to 255 visible ASCII characters",
                )
            })?
            .to_owned(),
    };
    let mut f = json_fields(ctx, &parts.headers, body, CREATE_FIELDS).await?;
    let request = CreateLinkRequest {
        owner: principal.owner.clone(),
        url: f.required_string("url").unwrap_or_default(),
        alias: f.string("alias"),
        expires_at: f.time("expires_at").map(to_proto),
        redirect_type: f.u64("redirect_type").map_or(0, redirect_type),
        max_clicks: f.u64("max_clicks"),
        tags: f.strings("tags").unwrap_or_default(),
        idempotency_key,
        password: f.string("password"),
        rules: link_fields::rules(&mut f).unwrap_or_default(),
        forward_query: f.bool("forward_query").unwrap_or(false),
        crawlable: f.bool("crawlable").unwrap_or(false),
        expired_url: f.string("expired_url"),
    };
    f.finish()?;
    let upstreams = &ctx.state.upstreams;
    // With an Idempotency-Key a retry cannot create a second link.
    let idempotent = !request.idempotency_key.is_empty();
    let created = upstreams
        .writer(idempotent, |mut c| {
            let r = upstreams.request(request.clone(), ctx.request_id);
            async move { c.create_link(r).await }
        })
        .await?;
    let link = created.link.unwrap_or_default();
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = view::json_response(
        status,
        &view::link(&link, &ctx.state.config.public_url, None),
    );
    let location = format!("{}/api/v1/links/{}", ctx.state.config.public_url, link.code);
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

pub async fn list(
    ctx: &Ctx<'_>,
    principal: &Principal,
    req: &Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    let params = query(req.uri());
    let limit = match query_param(&params, "limit") {
        None => 0,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| Problem::field("limit", "must be an integer from 1 to 100"))?,
    };
    let request = ListLinksRequest {
        owner: principal.owner.clone(),
        limit,
        cursor: bounded(
            input::CURSOR,
            query_param(&params, "cursor").unwrap_or_default(),
        )?
        .to_owned(),
        tag: bounded(
            input::TAG_FILTER,
            query_param(&params, "tag").unwrap_or_default(),
        )?
        .to_owned(),
    };
    let upstreams = &ctx.state.upstreams;
    let page = upstreams
        .writer(true, |mut c| {
            let r = upstreams.request(request.clone(), ctx.request_id);
            async move { c.list_links(r).await }
        })
        .await?;
    let public_url = &ctx.state.config.public_url;
    let codes: Vec<String> = page.links.iter().map(|l| l.code.clone()).collect();
    let totals = click_totals(ctx, principal, codes).await;
    let items: Vec<_> = page
        .links
        .iter()
        .map(|l| view::link(l, public_url, clicks_of(&totals, &l.code)))
        .collect();
    let next = (!page.next_cursor.is_empty()).then_some(page.next_cursor);
    Ok(view::json_response(
        StatusCode::OK,
        &json!({"items": items, "next_cursor": next}),
    ))
}

pub async fn get(
    ctx: &Ctx<'_>,
    principal: &Principal,
    code: &str,
) -> Result<HttpResponse, Problem> {
    let link = owned_link(ctx, principal, code).await?;
    let totals = click_totals(ctx, principal, vec![link.code.clone()]).await;
    let clicks = clicks_of(&totals, &link.code);
    Ok(view::json_response(
        StatusCode::OK,
        &view::link(&link, &ctx.state.config.public_url, clicks),
    ))
}

/// All-time human clicks of `codes` from analytics, one call per page.
/// `None` when analytics cannot answer: links are still served, with
/// `clicks: null` rather than a wrong number.
async fn click_totals(
    ctx: &Ctx<'_>,
    principal: &Principal,
    codes: Vec<String>,
) -> Option<HashMap<String, u64>> {
    if codes.is_empty() {
        return Some(HashMap::new());
    }
    let upstreams = &ctx.state.upstreams;
    let request = ClickTotalsRequest {
        owner: principal.owner.clone(),
        codes,
    };
    upstreams
        .analytics(|mut c| {
            let r = upstreams.request(request.clone(), ctx.request_id);
            async move { c.click_totals(r).await }
        })
        .await
        .ok()
        .map(|t| t.totals)
}

/// A link with no clicks yet is absent from the totals: 0, not unknown.
fn clicks_of(totals: &Option<HashMap<String, u64>>, code: &str) -> Option<u64> {
    totals.as_ref().map(|t| t.get(code).copied().unwrap_or(0))
}

pub async fn update(
    ctx: &Ctx<'_>,
    principal: &Principal,
    code: &str,
    req: Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    let (parts, body) = req.into_parts();
    let mut f = json_fields(ctx, &parts.headers, body, UPDATE_FIELDS).await?;
    let request = UpdateLinkRequest {
        code: code.to_owned(),
        owner: principal.owner.clone(),
        url: f.string("url"),
        clear_expires_at: f.is_null("expires_at"),
        expires_at: f.time("expires_at").map(to_proto),
        redirect_type: f.u64("redirect_type").map(redirect_type),
        clear_max_clicks: f.is_null("max_clicks"),
        max_clicks: f.u64("max_clicks"),
        set_tags: f.has("tags"),
        tags: f.strings("tags").unwrap_or_default(),
        disabled: f.bool("disabled"),
        // `"password": null` removes the password.
        clear_password: f.is_null("password"),
        password: f.string("password"),
        // `null` and `[]` both remove every rule.
        set_rules: f.has("rules"),
        rules: link_fields::rules(&mut f).unwrap_or_default(),
        forward_query: f.bool("forward_query"),
        crawlable: f.bool("crawlable"),
        clear_expired_url: f.is_null("expired_url"),
        expired_url: f.string("expired_url"),
    };
    if [
        "url",
        "redirect_type",
        "disabled",
        "forward_query",
        "crawlable",
    ]
    .iter()
    .any(|field| f.is_null(field))
    {
        return Err(Problem::field(
            "body",
            "url, redirect_type, disabled, forward_query and crawlable cannot be null",
        ));
    }
    f.finish()?;
    let upstreams = &ctx.state.upstreams;
    // Setting fields to given values is idempotent.
    let link = upstreams
        .writer(true, |mut c| {
            let r = upstreams.request(request.clone(), ctx.request_id);
            async move { c.update_link(r).await }
        })
        .await?;
    Ok(view::json_response(
        StatusCode::OK,
        &view::link(&link, &ctx.state.config.public_url, None),
    ))
}

pub async fn delete(
    ctx: &Ctx<'_>,
    principal: &Principal,
    code: &str,
) -> Result<HttpResponse, Problem> {
    let upstreams = &ctx.state.upstreams;
    let request = DeleteLinkRequest {
        code: code.to_owned(),
        owner: principal.owner.clone(),
    };
    // Not retried: a lost answer to a delete that happened would turn a
    // retry into a misleading 404.
    upstreams
        .writer(false, |mut c| {
            let r = upstreams.request(request.clone(), ctx.request_id);
            async move { c.delete_link(r).await }
        })
        .await?;
    let mut response = HttpResponse::new(Default::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}
