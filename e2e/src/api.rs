//! What the load-and-fault tests do through the public REST API, as an
//! outside client would: create links, redirect as a browser, wait for a
//! recovery signal, and add up the click totals analytics reports.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::load::RequestFactory;

/// A desktop browser's User-Agent, so analytics counts the clicks as human.
pub const BROWSER_UA: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";

/// A client that does not follow redirects, with a deadline on each call.
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .user_agent(BROWSER_UA)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// Creates a link to `url` with `key`; returns its code.
pub async fn create_link(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    url: &str,
) -> anyhow::Result<String> {
    let link: Value = http
        .post(format!("{base}/api/v1/links"))
        .bearer_auth(key)
        .json(&json!({ "url": url }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(link["code"]
        .as_str()
        .context("link without a code")?
        .to_owned())
}

/// GET `/{code}` over `codes` in turn, sent as `user_agent` (e.g.
/// [`BROWSER_UA`], which analytics counts as a human).
pub fn redirects(codes: Arc<Vec<String>>, user_agent: &'static str) -> RequestFactory {
    Arc::new(move |_, seq| {
        let code = &codes[(seq as usize) % codes.len()];
        Request::get(format!("/{code}"))
            .header(header::HOST, "127.0.0.1")
            .header(header::USER_AGENT, user_agent)
            .body(Full::new(Bytes::new()))
            .expect("static request parts")
    })
}

/// Whether GET `url` (with `key`, if any) answers `want` within 2 s.
pub async fn status_is(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    want: reqwest::StatusCode,
) -> anyhow::Result<bool> {
    let mut request = http.get(url).timeout(Duration::from_secs(2));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    Ok(request.send().await.is_ok_and(|r| r.status() == want))
}

/// Polls `check` until it holds (within `limit`); returns how long it took.
pub async fn until<F, Fut>(limit: Duration, mut check: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    shortfleet_testkit::within(limit, || {
        let holds = check();
        async move { holds.await.unwrap_or(false).then_some(()) }
    })
    .await
    .map(|()| started.elapsed())
    .ok_or_else(|| anyhow::anyhow!("not within {limit:?}"))
}

/// Sums `clicks` over the key's links until it reaches `answered` (or 120 s
/// pass), then once more after a short window in which a redelivered batch
/// counted twice would show.
pub async fn wait_for_totals(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    answered: u64,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let counted = total_clicks(http, base, key).await.unwrap_or(0);
        if counted >= answered || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    total_clicks(http, base, key).await
}

/// The sum of `clicks` over every link of the key, page by page.
pub async fn total_clicks(http: &reqwest::Client, base: &str, key: &str) -> anyhow::Result<u64> {
    let mut sum = 0;
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut url = format!("{base}/api/v1/links?limit=100");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = http
            .get(url)
            .bearer_auth(key)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for link in page["items"].as_array().context("items")? {
            sum += link["clicks"].as_u64().context("clicks unknown")?;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(sum),
        }
    }
    anyhow::bail!("more than 100 pages of links")
}
