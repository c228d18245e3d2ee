//! The replica's `robots.txt`: crawlers are kept off every short link
//! except the crawlable ones, which are allowed by name. The body is built
//! from write-svc's `ListCrawlable` at most once per [`TTL`] per replica
//! (concurrent misses make one call) and served from memory otherwise, so
//! crawlers hammering it cost nothing. When write-svc cannot answer and no
//! copy is held, everything is disallowed (the safe answer) and that answer
//! is not kept. The HTTP side is `handlers::robots`.

use std::{future::Future, time::Duration};

use bytes::Bytes;
use moka::future::Cache;

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

impl Robots {
    /// The body: the cached one, or one built from the crawlable codes
    /// `load` fetches; everything disallowed when that fails.
    pub async fn body<E>(&self, load: impl Future<Output = Result<Vec<String>, E>>) -> Bytes
    where
        E: Send + Sync + 'static,
    {
        let build = async { load.await.map(|codes| body(&codes)) };
        match self.0.try_get_with((), build).await {
            Ok(body) => body,
            Err(_) => Bytes::from_static(DISALLOW_ALL.as_bytes()),
        }
    }
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
