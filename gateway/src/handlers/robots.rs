//! `GET /robots.txt` over HTTP; the document and its per-replica cache are
//! [`crate::robots`].

use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use shortfleet_proto::v1::ListCrawlableRequest;

use super::Ctx;
use crate::problem::HttpResponse;

pub async fn robots(ctx: &Ctx<'_>) -> HttpResponse {
    let upstreams = &ctx.state.upstreams;
    let load = async {
        upstreams
            .writer(true, |mut c| {
                let r = upstreams.request(ListCrawlableRequest { limit: 0 }, ctx.request_id);
                async move { c.list_crawlable(r).await }
            })
            .await
            .map(|list| list.codes)
    };
    let body = ctx.state.robots.body(load).await;
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
