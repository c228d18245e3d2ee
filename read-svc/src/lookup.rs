//! What a code resolves to, and when a link stops redirecting. Pure logic,
//! shared by every cache level.

use chrono::{DateTime, Utc};
use shortfleet_common::time::from_proto;
use shortfleet_proto::v1::{Link, LinkState, ResolveResponse};
use std::sync::Arc;

/// A cached answer: the link, or the knowledge that the code is unknown
/// (negative caching keeps random-code scans off write-svc).
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<Link>),
    Missing,
}

/// Whether a code may exist at all; anything else is unknown without a
/// lookup. The fleet's one definition of a code's shape.
pub use shortfleet_common::input::is_code_shaped as is_plausible_code;

/// Deleted, disabled and expired links are gone (410), not unknown (404).
pub fn state_at(link: &Link, now: DateTime<Utc>) -> LinkState {
    let expired = link
        .expires_at
        .as_ref()
        .and_then(from_proto)
        .is_some_and(|t| t <= now);
    if link.deleted || link.disabled || expired {
        LinkState::Gone
    } else {
        LinkState::Active
    }
}

/// The answer for `link`: everything the gateway needs to decide the
/// redirect itself (rules, password hash, query forwarding, robots), so a
/// redirect never needs a second hop.
pub fn response(link: &Link, now: DateTime<Utc>) -> ResolveResponse {
    ResolveResponse {
        code: link.code.clone(),
        url: link.url.clone(),
        redirect_type: link.redirect_type,
        state: state_at(link, now) as i32,
        owner: link.owner.clone(),
        expires_at: link.expires_at,
        uncacheable: link.max_clicks.is_some(),
        password_hash: link.password_hash.clone(),
        rules: link.rules.clone(),
        forward_query: link.forward_query,
        crawlable: link.crawlable,
        // A deleted link is gone for good: 410, never a fallback.
        expired_url: if link.deleted {
            String::new()
        } else {
            link.expired_url.clone()
        },
        updated_at: link.updated_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use shortfleet_common::time::to_proto;

    fn link() -> Link {
        Link {
            code: "abc1234".into(),
            url: "https://example.com".into(),
            redirect_type: 302,
            ..Default::default()
        }
    }

    #[test]
    fn active_until_expiry_then_gone() {
        let now = Utc::now();
        let mut l = link();
        assert_eq!(state_at(&l, now), LinkState::Active);
        l.expires_at = Some(to_proto(now + Duration::seconds(1)));
        assert_eq!(state_at(&l, now), LinkState::Active);
        assert_eq!(state_at(&l, now + Duration::seconds(1)), LinkState::Gone);
    }

    #[test]
    fn deleted_and_disabled_are_gone() {
        let now = Utc::now();
        let mut l = link();
        l.disabled = true;
        assert_eq!(state_at(&l, now), LinkState::Gone);
        let mut l = link();
        l.deleted = true;
        assert_eq!(state_at(&l, now), LinkState::Gone);
    }

    #[test]
    fn plausible_codes() {
        assert!(is_plausible_code("aB3_x-Z"));
        assert!(!is_plausible_code("ab"));
        assert!(!is_plausible_code("a/b/c"));
        assert!(!is_plausible_code(&"a".repeat(65)));
    }
}
