//! Turns wire requests into validated domain values. Every refusal names the
//! REST field and the reason; nothing invalid gets past this module.
//!
//! Every string field first passes the fleet's input policy
//! ([`shortfleet_common::input`]: bounded, no control characters), then the
//! field's own rules.

use chrono::{DateTime, Utc};
use prost::Message;
use shortfleet_common::{
    input::{self, ALIAS, Bound, IDEMPOTENCY_KEY, TAG as TAGS, URL},
    time::from_proto,
};
use shortfleet_proto::v1::{CreateLinkRequest, UpdateLinkRequest};

use crate::{
    behaviour,
    code::ShortCode,
    error::WriteError,
    store::{Behaviour, IdempotencyKey, LinkChange, NewLink, sha256},
    target::{TargetRules, TargetUrl},
};

const MAX_TAGS: usize = 20;

const OWNER_FILTER: Bound = Bound::optional("owner", input::OWNER_MAX);

pub fn new_link(req: &CreateLinkRequest, targets: &TargetRules) -> Result<NewLink, WriteError> {
    Ok(NewLink {
        owner: owner(&req.owner)?,
        url: url(&req.url, targets)?,
        alias: match req.alias.as_deref().map(|a| ALIAS.check(a)).transpose()? {
            None => None,
            Some(a) => Some(ShortCode::alias(a).map_err(|e| WriteError::invalid("alias", e))?),
        },
        expires_at: req
            .expires_at
            .as_ref()
            .map(|t| future_time(t, "expires_at"))
            .transpose()?,
        redirect_type: redirect_type(req.redirect_type)?,
        max_clicks: req.max_clicks.map(max_clicks).transpose()?,
        tags: tags(&req.tags)?,
        behaviour: Behaviour {
            // Hashed by the service (off the async workers) once valid.
            password_hash: req
                .password
                .as_deref()
                .map(behaviour::password)
                .transpose()?,
            rules: behaviour::rules(&req.rules, targets)?,
            forward_query: req.forward_query,
            crawlable: req.crawlable,
            expired_url: req
                .expired_url
                .as_deref()
                .map(|u| behaviour::expired_url(u, targets))
                .transpose()?,
        },
    })
}

/// The key and a digest of everything else in the request: a retry must
/// carry the same body to be a replay.
pub fn idempotency_key(req: &CreateLinkRequest) -> Result<Option<IdempotencyKey>, WriteError> {
    if IDEMPOTENCY_KEY.check(&req.idempotency_key)?.is_empty() {
        return Ok(None);
    }
    let mut body = req.clone();
    body.idempotency_key.clear();
    Ok(Some(IdempotencyKey {
        key: req.idempotency_key.clone(),
        request_sha256: sha256(&hex::encode(body.encode_to_vec())),
    }))
}

pub fn change(req: &UpdateLinkRequest, targets: &TargetRules) -> Result<LinkChange, WriteError> {
    Ok(LinkChange {
        url: req.url.as_deref().map(|u| url(u, targets)).transpose()?,
        expires_at: if req.clear_expires_at {
            Some(None)
        } else {
            req.expires_at
                .as_ref()
                .map(|t| future_time(t, "expires_at").map(Some))
                .transpose()?
        },
        redirect_type: req.redirect_type.map(redirect_type).transpose()?,
        max_clicks: if req.clear_max_clicks {
            Some(None)
        } else {
            req.max_clicks
                .map(|m| max_clicks(m).map(Some))
                .transpose()?
        },
        tags: if req.set_tags {
            Some(tags(&req.tags)?)
        } else {
            None
        },
        disabled: req.disabled,
        password_hash: if req.clear_password {
            Some(None)
        } else {
            // Hashed by the service once valid.
            req.password
                .as_deref()
                .map(|p| behaviour::password(p).map(Some))
                .transpose()?
        },
        rules: if req.set_rules {
            Some(behaviour::rules(&req.rules, targets)?)
        } else {
            None
        },
        forward_query: req.forward_query,
        crawlable: req.crawlable,
        expired_url: if req.clear_expired_url {
            Some(None)
        } else {
            req.expired_url
                .as_deref()
                .map(|u| behaviour::expired_url(u, targets).map(Some))
                .transpose()?
        },
    })
}

pub fn owner(raw: &str) -> Result<String, WriteError> {
    Ok(input::OWNER.check(raw)?.to_owned())
}

/// `GetLink`'s owner: empty (internal resolution, any owner) or an owner.
pub fn owner_filter(raw: &str) -> Result<Option<&str>, WriteError> {
    Ok(Some(OWNER_FILTER.check(raw)?).filter(|o| !o.is_empty()))
}

/// The code a request looks up. Safe to look up once it passes; one that is
/// not code-shaped is an unknown code (NOT_FOUND), not a malformed request.
pub fn code(raw: &str) -> Result<&str, WriteError> {
    Ok(input::CODE.check(raw)?)
}

fn url(raw: &str, targets: &TargetRules) -> Result<TargetUrl, WriteError> {
    // The URL parser silently drops tabs and newlines; refuse them first.
    TargetUrl::parse(URL.check(raw)?, targets).map_err(|e| WriteError::invalid("url", e))
}

fn future_time(
    t: &prost_types::Timestamp,
    field: &'static str,
) -> Result<DateTime<Utc>, WriteError> {
    let t = from_proto(t).ok_or_else(|| WriteError::invalid(field, "is not a valid time"))?;
    if t <= Utc::now() {
        return Err(WriteError::invalid(field, "must be in the future"));
    }
    Ok(t)
}

fn redirect_type(raw: u32) -> Result<i16, WriteError> {
    match raw {
        0 => Ok(302),
        301 | 302 | 307 | 308 => Ok(raw as i16),
        _ => Err(WriteError::invalid(
            "redirect_type",
            "must be one of 301, 302, 307, 308",
        )),
    }
}

fn max_clicks(raw: u64) -> Result<i64, WriteError> {
    match i64::try_from(raw) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(WriteError::invalid(
            "max_clicks",
            "must be a positive integer below 2^63",
        )),
    }
}

fn tags(raw: &[String]) -> Result<Vec<String>, WriteError> {
    if raw.len() > MAX_TAGS {
        return Err(WriteError::invalid("tags", "at most 20 tags"));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for tag in raw {
        let tag = TAGS.check(tag.trim())?;
        if !out.iter().any(|t| t == tag) {
            out.push(tag.to_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(url: &str) -> CreateLinkRequest {
        CreateLinkRequest {
            owner: "alice".into(),
            url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_field_names() {
        let l = new_link(&req("https://example.com"), &TargetRules::default()).unwrap();
        assert_eq!(l.redirect_type, 302);
        let field = |r: &CreateLinkRequest| match new_link(r, &TargetRules::default()) {
            Err(WriteError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        };
        assert_eq!(field(&req("ftp://x")), "url");
        let mut r = req("https://example.com");
        r.redirect_type = 303;
        assert_eq!(field(&r), "redirect_type");
        let mut r = req("https://example.com");
        r.max_clicks = Some(0);
        assert_eq!(field(&r), "max_clicks");
        let mut r = req("https://example.com");
        r.alias = Some("x".into());
        assert_eq!(field(&r), "alias");
        let mut r = req("https://example.com");
        r.expires_at = Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        });
        assert_eq!(field(&r), "expires_at");
        let mut r = req("https://example.com");
        r.tags = vec![String::new()];
        assert_eq!(field(&r), "tags");
        let mut r = req("https://example.com");
        r.owner.clear();
        assert_eq!(field(&r), "owner");
    }

    #[test]
    fn tags_are_trimmed_and_deduplicated() {
        let mut r = req("https://example.com");
        r.tags = vec!["a".into(), " a ".into(), "b".into()];
        assert_eq!(
            new_link(&r, &TargetRules::default()).unwrap().tags,
            vec!["a", "b"]
        );
    }

    #[test]
    fn idempotency_digest_ignores_the_key_but_not_the_body() {
        let mut a = req("https://example.com/a");
        a.idempotency_key = "k1".into();
        let mut b = a.clone();
        b.idempotency_key = "k2".into();
        let mut c = a.clone();
        c.url = "https://example.com/c".into();
        let digest = |r| idempotency_key(r).unwrap().unwrap().request_sha256;
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&c));
        assert!(idempotency_key(&req("https://e.com")).unwrap().is_none());
    }
}
