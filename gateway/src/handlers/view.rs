//! How links and stats look on the wire (JSON), in one place.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Value, json};
use shortfleet_common::time::from_proto;
use shortfleet_proto::v1::{Link, NamedCount};

use crate::problem::HttpResponse;

pub fn time(t: Option<&prost_types::Timestamp>) -> Value {
    t.and_then(from_proto)
        .map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn short_url(public_url: &str, code: &str) -> String {
    format!("{public_url}/{code}")
}

/// The link object of the public contract.
pub fn link(l: &Link, public_url: &str, clicks: Option<u64>) -> Value {
    json!({
        "code": l.code,
        "short_url": short_url(public_url, &l.code),
        "url": l.url,
        "created_at": time(l.created_at.as_ref()),
        "expires_at": time(l.expires_at.as_ref()),
        "redirect_type": l.redirect_type,
        "max_clicks": l.max_clicks,
        "tags": l.tags,
        "disabled": l.disabled,
        "clicks": clicks,
        // The hash never leaves the fleet: only whether there is one.
        "password_protected": !l.password_hash.is_empty(),
        "rules": l.rules.iter().map(shortfleet_common::rule_json::to_json).collect::<Vec<_>>(),
        "forward_query": l.forward_query,
        "crawlable": l.crawlable,
        "expired_url": (!l.expired_url.is_empty()).then_some(&l.expired_url),
    })
}

pub fn named(counts: &[NamedCount]) -> Value {
    Value::Array(
        counts
            .iter()
            .map(|c| json!({"name": c.name, "clicks": c.clicks}))
            .collect(),
    )
}

pub fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
