//! `GET /robots.txt`: crawlers are kept off every short link except the
//! crawlable ones, which are allowed by name. The body is built from
//! write-svc's `ListCrawlable` at most once per [`TTL`] per replica
//! (concurrent misses make one call) and served from memory otherwise, so
//! crawlers hammering it cost nothing. When write-svc cannot answer and no
//! copy is held, everything is disallowed (the safe answer) and that answer
//! is not kept.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use moka::future::Cache;
use shortfleet_proto::v1::ListCrawlableRequest;

use super::Ctx;
use crate::problem::HttpResponse;

/// How long a replica keeps its robots.txt: a link made crawlable appears
/// within this (redirects' `X-Robots-Tag` follows the link at once).
pub const TTL: Duration = Duration::from_secs(60);
const DISALLOW_ALL: &str = "User-agent: *\nDisallow: /\n";

/// One cached body per replica.
#[derive(Clone)]
pub struct Robots(Cache<(), Bytes>);

impl Default for Robots {
    fn default() -> Self {
        Self(Cache::builder().max_capacity(1).time_to_live(TTL).build())
    }
}

pub async fn robots(ctx: &Ctx<'_>) -> HttpResponse {
    let load = async {
        let upstreams = &ctx.state.upstreams;
        upstreams
            .writer(true, |mut c| {
                let r = upstreams.request(ListCrawlableRequest { limit: 0 }, ctx.request_id);
                async move { c.list_crawlable(r).await }
            })
            .await
            .map(|list| body(&list.codes))
    };
    let body = match ctx.state.robots.0.try_get_with((), load).await {
        Ok(body) => body,
        Err(_) => Bytes::from_static(DISALLOW_ALL.as_bytes()),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}

/// `Allow` lines for the crawlable codes, then `Disallow: /`: the longest
/// (most specific) matching rule wins for crawlers (RFC 9309 §2.2.2).
fn body(codes: &[String]) -> Bytes {
    let mut out = String::with_capacity(32 + codes.len() * 16);
    out.push_str("User-agent: *\n");
    for code in codes {
        // `$` ends the match: /abc allows neither /abcd nor /abc/x.
        out.push_str("Allow: /");
        out.push_str(code);
        out.push_str("$\n");
    }
    out.push_str("Disallow: /\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_only_the_crawlable_codes() {
        assert_eq!(body(&[]), DISALLOW_ALL.as_bytes());
        assert_eq!(
            body(&["abc".into(), "x-y_z".into()]),
            "User-agent: *\nAllow: /abc$\nAllow: /x-y_z$\nDisallow: /\n".as_bytes()
        );
    }
}
