//! Password-protected links: the small form a browser gets instead of the
//! redirect, and the one Argon2id verification an attempt may cost.
//!
//! The form page never holds the target (nor anything derived from it), is
//! never stored by a cache (`no-store`), never indexed, and runs no script
//! and loads nothing (`default-src 'none'`); it posts back to the same
//! `/{code}` (with the request's query, so `forward_query` still works).
//! API clients skip the form with the password in [`PASSWORD_HEADER`].

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::problem::HttpResponse;

/// The header an API client sends a link's password in.
pub const PASSWORD_HEADER: &str = "x-link-password";
/// A password is at most 128 characters (write-svc's bound); a longer
/// attempt is wrong without hashing it.
const PASSWORD_MAX_BYTES: usize = 512;

const CSP: &str = "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Whether `password` is the one `hash` (a PHC string) was made from. At
/// most one Argon2 verification, off the async workers.
pub async fn verify(hash: &str, password: &str) -> bool {
    if password.is_empty() || password.len() > PASSWORD_MAX_BYTES {
        return false;
    }
    let (hash, password) = (hash.to_owned(), password.to_owned());
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// The `password` field of an `application/x-www-form-urlencoded` body.
pub fn form_password(body: &[u8]) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == "password")
        .map(|(_, v)| v.into_owned())
}

/// The form: 200 when first shown, 401 after a wrong password.
pub fn form(code: &str, query: Option<&str>, wrong: bool) -> HttpResponse {
    let action = match query.filter(|q| !q.is_empty()) {
        Some(q) => format!("/{}?{}", escape(code), escape(q)),
        None => format!("/{}", escape(code)),
    };
    let message = if wrong {
        "<p role=\"alert\"><strong>Wrong password.</strong> Try again.</p>"
    } else {
        ""
    };
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\">\
         <title>Password required</title></head><body><main>\
         <h1>This link is password protected</h1>{message}\
         <form method=\"post\" action=\"{action}\">\
         <label for=\"password\">Password</label> \
         <input id=\"password\" name=\"password\" type=\"password\" required autofocus \
         autocomplete=\"current-password\" maxlength=\"128\"> \
         <button type=\"submit\">Continue</button></form></main></body></html>\n"
    );
    let mut response = Response::new(Full::new(Bytes::from(page)));
    *response.status_mut() = if wrong {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-robots-tag", HeaderValue::from_static("noindex"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// HTML attribute escaping for the form's action.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHasher, password_hash::SaltString};

    #[tokio::test]
    async fn verifies_one_hash() {
        let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap();
        let hash = Argon2::default()
            .hash_password(b"s3cret", &salt)
            .unwrap()
            .to_string();
        assert!(verify(&hash, "s3cret").await);
        assert!(!verify(&hash, "wrong").await);
        assert!(!verify(&hash, "").await);
        assert!(!verify("not a phc string", "s3cret").await);
    }

    #[test]
    fn the_form_posts_back_and_escapes_the_query() {
        let r = form("abc", Some("a=1&b=\"<x>"), true);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()["x-robots-tag"], "noindex");
        assert!(form_password(b"password=a%20b&x=1").as_deref() == Some("a b"));
        assert!(form_password(b"x=1").is_none());
    }
}
