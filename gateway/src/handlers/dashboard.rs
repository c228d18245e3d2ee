//! `/app/`: the link owners' dashboard. Its hand-written ES modules, CSS and
//! SVG (`gateway/assets/app/`) are compiled into the binary, so a gateway
//! replica serves the page with no file system and no build step. The page
//! is a client of the public REST API only.
//!
//! Every answer here carries a strict Content-Security-Policy (no inline
//! script or style, nothing from another origin, no framing) and an ETag of
//! the content; `Cache-Control: no-cache` makes browsers revalidate, which
//! costs a 304 and keeps a rolled-out page from mixing old and new modules.

use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use sha2::{Digest, Sha256};

use crate::problem::{HttpResponse, Problem};

pub const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; \
script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../assets/app/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// The page and everything it loads; `index.html` is served at `/app/`.
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("live.js", JS),
    asset!("chart.js", JS),
    asset!("views.js", JS),
    asset!("icon.svg", "image/svg+xml"),
];

/// Content hashes, computed once per process.
fn etags() -> &'static [HeaderValue] {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            // reason: hex digits in quotes are always a valid header value
            .map(
                #[allow(clippy::expect_used)]
                |a| {
                    let digest = Sha256::digest(a.body);
                    HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..12])))
                        .expect("hex is a header value")
                },
            )
            .collect()
    })
}

/// `/app` → 308 to `/app/` (relative module imports need the slash);
/// `/app/` → the page.
pub fn app(path: &str, headers: &HeaderMap) -> HttpResponse {
    if !path.ends_with('/') {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
        if let Ok(v) = HeaderValue::from_str(&format!("{path}/")) {
            response.headers_mut().insert(header::LOCATION, v);
        }
        return response;
    }
    asset("index.html", headers)
}

/// `/app/{name}`: one of the built-in assets, or 404.
pub fn asset(name: &str, headers: &HeaderMap) -> HttpResponse {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return with_policy(Problem::not_found("no such dashboard file").into_response());
    };
    let (a, etag) = (&ASSETS[i], &etags()[i]);
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    let mut response = if fresh {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(a.body)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        );
        r
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_policy(response)
}

fn with_policy(mut response: HttpResponse) -> HttpResponse {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_its_type_policy_and_etag() {
        for a in ASSETS {
            let r = asset(a.name, &HeaderMap::new());
            assert_eq!(r.status(), StatusCode::OK, "{}", a.name);
            assert_eq!(r.headers()[header::CONTENT_TYPE], a.content_type);
            assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
            assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            let etag = r.headers()[header::ETAG].clone();
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, etag);
            assert_eq!(asset(a.name, &h).status(), StatusCode::NOT_MODIFIED);
        }
        assert_eq!(
            asset("../Cargo.toml", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn app_without_slash_redirects_and_policy_forbids_inline_code() {
        let r = app("/app", &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(r.headers()[header::LOCATION], "/app/");
        assert_eq!(app("/app/", &HeaderMap::new()).status(), StatusCode::OK);
        assert!(!CSP.contains("unsafe"));
    }

    #[test]
    fn no_asset_carries_inline_script_style_or_foreign_origin() {
        for a in ASSETS {
            // The SVG namespace is a name, not something loaded.
            let text = String::from_utf8_lossy(a.body).replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("style=\""), "{}: style attribute", a.name);
            assert!(!text.contains("http://"), "{}: absolute URL", a.name);
            assert!(!text.contains("https://"), "{}: absolute URL", a.name);
            assert!(
                !text.contains("innerHTML"),
                "{}: markup from strings",
                a.name
            );
            if a.name == "index.html" {
                assert!(!text.contains("<script>"), "inline script");
                assert!(!text.contains("<style"), "inline style");
                let handler = text
                    .split_whitespace()
                    .any(|w| w.starts_with("on") && w.contains('='));
                assert!(!handler, "inline event handler");
            }
        }
    }
}
