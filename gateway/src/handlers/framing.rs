//! Request framing checks that come before routing: a request whose headers
//! are ambiguous is refused rather than guessed at, because a proxy in front
//! of us may have guessed differently (request smuggling, auth confusion).
//!
//! - `Host`: exactly one on HTTP/1.1 (RFC 9112 §3.2), at most one otherwise
//!   (HTTP/1.0 may omit it; h2 carries `:authority` instead);
//! - `Authorization`: at most one.
//!
//! Also the helpers that keep client bytes out of our answers.

use http::{Request, StatusCode, Version, header};

use crate::problem::Problem;

/// How much of a client-supplied value an error message may quote.
const SHOWN_CHARS: usize = 64;

pub fn check<B>(req: &Request<B>) -> Result<(), Problem> {
    let hosts = req.headers().get_all(header::HOST).iter().count();
    let host_ok = match req.version() {
        Version::HTTP_11 => hosts == 1,
        _ => hosts <= 1,
    };
    if !host_ok {
        return Err(bad_request(
            "HTTP/1.1 requests carry exactly one Host header",
        ));
    }
    if req.headers().get_all(header::AUTHORIZATION).iter().count() > 1 {
        return Err(bad_request("send one Authorization header"));
    }
    Ok(())
}

fn bad_request(detail: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "bad-request",
        "Bad request",
        detail,
    )
}

/// A short, printable prefix of `raw` for an error message.
pub fn shown(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .filter(|c| !c.is_control())
        .take(SHOWN_CHARS)
        .collect();
    if raw.chars().count() > SHOWN_CHARS {
        out.push('…');
    }
    out
}

/// 1 to `max` characters of `[A-Za-z0-9._:-]`.
pub fn is_plain_token(raw: &str, max: usize) -> bool {
    !raw.is_empty()
        && raw.len() <= max
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri("/x").version(version);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).expect("valid request")
    }

    #[test]
    fn host_and_authorization_must_be_unambiguous() {
        let host = ("host", "a");
        assert!(check(&request(Version::HTTP_11, &[host])).is_ok());
        assert!(check(&request(Version::HTTP_11, &[])).is_err());
        assert!(check(&request(Version::HTTP_11, &[host, ("host", "b")])).is_err());
        assert!(check(&request(Version::HTTP_10, &[])).is_ok());
        assert!(check(&request(Version::HTTP_2, &[])).is_ok());
        assert!(check(&request(Version::HTTP_2, &[host, ("host", "b")])).is_err());
        let auth = ("authorization", "Bearer a");
        assert!(check(&request(Version::HTTP_11, &[host, auth])).is_ok());
        assert!(
            check(&request(
                Version::HTTP_11,
                &[host, auth, ("authorization", "Bearer b")]
            ))
            .is_err()
        );
    }

    #[test]
    fn request_ids_are_plain_tokens() {
        assert!(is_plain_token("req-1.2_3:abc", 128));
        assert!(!is_plain_token("<script>alert(1)</script>", 128));
        assert!(!is_plain_token("", 128));
        assert!(!is_plain_token(&"a".repeat(129), 128));
        assert!(!is_plain_token("a b", 128));
    }

    proptest! {
        #[test]
        fn shown_is_short_and_printable(raw in ".{0,400}") {
            let out = shown(&raw);
            prop_assert!(out.chars().count() <= SHOWN_CHARS + 1);
            prop_assert!(!out.chars().any(char::is_control));
        }

        /// Any mix of headers and versions: never a panic, and refused
        /// exactly when Host or Authorization is ambiguous.
        #[test]
        fn framing_is_refused_exactly_when_ambiguous(
            version in prop_oneof![Just(Version::HTTP_10), Just(Version::HTTP_11), Just(Version::HTTP_2)],
            headers in proptest::collection::vec(
                (prop_oneof![Just("host"), Just("authorization"), Just("x-other")], "[ -~]{0,40}"),
                0..6,
            ),
        ) {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let hosts = headers.iter().filter(|(k, _)| *k == "host").count();
            let auths = headers.iter().filter(|(k, _)| *k == "authorization").count();
            let ambiguous = auths > 1
                || hosts > 1
                || (version == Version::HTTP_11 && hosts == 0);
            let refused = check(&request(version, &headers)).is_err();
            prop_assert_eq!(refused, ambiguous);
        }

        #[test]
        fn plain_tokens_never_carry_markup_or_space(raw in ".{0,200}") {
            if is_plain_token(&raw, 128) {
                prop_assert!(!raw.contains(['<', '>', '"', '\'', ' ', '\r', '\n']));
                prop_assert!(raw.len() <= 128);
            }
        }
    }
}
