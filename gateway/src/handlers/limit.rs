//! One home for "limit → respond → add headers": a [`Limit`] is a rate-limit
//! decision together with the policy that made it. Refused, it is the 429
//! (`Retry-After` and the `RateLimit` headers); allowed, it stamps the same
//! headers on whatever the handler answers. Every limited endpoint (API
//! keys, anonymous redirects, failed authentications, link passwords) goes
//! through it, so the headers cannot drift between them.

use http::{HeaderName, HeaderValue, Response, StatusCode};

use crate::{
    problem::{HttpResponse, Problem},
    ratelimit::{Decision, Policy},
};

// Parsed once, not on every insert as a `&str` name would be.
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

pub struct Limit<'p> {
    policy: &'p Policy,
    decision: Decision,
}

impl<'p> Limit<'p> {
    pub fn new(policy: &'p Policy, decision: Decision) -> Self {
        Self { policy, decision }
    }

    /// The 429 to answer instead of serving, or `None` when allowed.
    pub fn refusal(&self) -> Option<HttpResponse> {
        if self.decision.allowed {
            return None;
        }
        let retry = self.decision.retry_after_secs;
        let mut response = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            format!("rate limit exceeded; retry in {retry} s"),
        )
        .retry_after(retry.max(1))
        .into_response();
        self.stamp(&mut response);
        Some(response)
    }

    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers)
    /// on an answer this decision allowed.
    pub fn stamp<B>(&self, response: &mut Response<B>) {
        let headers = response.headers_mut();
        headers.insert(&RATELIMIT_POLICY, self.policy.header_value.clone());
        // The formatted String becomes the header's bytes without a copy.
        let value = bytes::Bytes::from(self.decision.header(self.policy));
        if let Ok(v) = HeaderValue::from_maybe_shared(value) {
            headers.insert(&RATELIMIT, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(allowed: bool) -> Decision {
        Decision {
            allowed,
            remaining: if allowed { 4 } else { 0 },
            reset_secs: 9,
            retry_after_secs: if allowed { 0 } else { 3 },
        }
    }

    #[test]
    fn refused_is_a_429_with_retry_after_and_the_policy_headers() {
        let policy = Policy::parse("free", "5/10").unwrap();
        let limit = Limit::new(&policy, decision(false));
        let response = limit.refusal().expect("refused");
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "3");
        assert_eq!(response.headers()["ratelimit"], "\"free\";r=0;t=9");
        assert_eq!(
            response.headers()["ratelimit-policy"],
            policy.header_value.to_str().unwrap()
        );
    }

    #[test]
    fn allowed_serves_and_stamps_the_same_headers() {
        let policy = Policy::parse("free", "5/10").unwrap();
        let limit = Limit::new(&policy, decision(true));
        assert!(limit.refusal().is_none());
        let mut response = Response::new(());
        limit.stamp(&mut response);
        assert_eq!(response.headers()["ratelimit"], "\"free\";r=4;t=9");
        assert!(response.headers().contains_key("ratelimit-policy"));
    }
}
