//! What a link does beyond "go to `url`": its password, redirect rules and
//! `expired_url` — validated here, stored as write-svc's columns, and
//! carried whole on `Link` so the gateway decides every redirect from the
//! link it holds.
//!
//! Every rule target and the `expired_url` pass the same [`TargetUrl`]
//! checks as the link's `url` (scheme, host, length, no loops, no private
//! networks). A password is kept only as an Argon2id PHC string.

use argon2::{
    Algorithm, Argon2, Params, PasswordHasher, Version,
    password_hash::{SaltString, rand_core::OsRng},
};
use serde_json::Value;
use shortfleet_common::{agent, input, rule_json};
use shortfleet_proto::v1::{RedirectRule, RuleConditions};

use crate::{
    error::WriteError,
    target::{TargetRules, TargetUrl},
};

/// At most this many rules per link: each redirect may try them all.
pub const MAX_RULES: usize = 20;
/// Passwords are 1 to 128 characters (bytes are bounded by the input
/// policy at 512, far below what Argon2 accepts).
pub const PASSWORD_MAX_CHARS: usize = 128;
const PASSWORD: input::Bound = input::Bound::optional("password", 512);
const EXPIRED_URL: input::Bound = input::Bound::optional("expired_url", input::URL_MAX);
/// Longest language tag a rule may name (RFC 5646's practical bound).
const LANGUAGE_MAX: usize = 35;

/// Argon2id with the `argon2` crate's defaults, which are OWASP's
/// recommendation: m = 19 MiB, t = 2, p = 1. About 20–40 ms of one core per
/// hash in a release build; written into every PHC string, so changing
/// them later keeps old hashes verifiable.
fn argon2() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

/// A password as sent, checked: 1–128 characters, no control characters.
pub fn password(raw: &str) -> Result<String, WriteError> {
    let raw = PASSWORD.check(raw)?;
    let chars = raw.chars().count();
    if chars == 0 || chars > PASSWORD_MAX_CHARS {
        return Err(WriteError::invalid(
            "password",
            "must be 1 to 128 characters",
        ));
    }
    Ok(raw.to_owned())
}

/// The Argon2id PHC string of `plain`, computed off the async workers (a
/// hash is tens of milliseconds of CPU).
pub async fn hash_password(plain: String) -> Result<String, WriteError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        argon2()
            .hash_password(plain.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| WriteError::Internal(anyhow::anyhow!("hashing a password: {e}")))
    })
    .await
    .map_err(|e| WriteError::Internal(anyhow::Error::new(e).context("password hashing task")))?
}

/// `expired_url`: the same rules as `url`.
pub fn expired_url(raw: &str, targets: &TargetRules) -> Result<String, WriteError> {
    let raw = EXPIRED_URL.check(raw)?;
    TargetUrl::parse(raw, targets)
        .map(|u| u.as_str().to_owned())
        .map_err(|e| WriteError::invalid("expired_url", e))
}

/// The rules, checked and normalised (lower-case device/os/browser and
/// language, upper-case country). A refusal names the rule by its place
/// ("rule 2: …", counting from 1), so a form can point at the row.
pub fn rules(raw: &[RedirectRule], targets: &TargetRules) -> Result<Vec<RedirectRule>, WriteError> {
    if raw.len() > MAX_RULES {
        return Err(WriteError::invalid("rules", "at most 20 rules"));
    }
    raw.iter()
        .enumerate()
        .map(|(i, rule)| {
            let checked = || -> Result<RedirectRule, WriteError> {
                let when = conditions(rule.when.as_ref())?;
                let url = input::URL.named("rules").check(&rule.url)?;
                let url = TargetUrl::parse(url, targets)
                    .map_err(|e| WriteError::invalid("rules", format!("url {e}")))?;
                Ok(RedirectRule {
                    when: Some(when),
                    url: url.as_str().to_owned(),
                })
            };
            checked().map_err(|e| match e {
                WriteError::Invalid { field, reason } => WriteError::Invalid {
                    field,
                    reason: format!("rule {}: {reason}", i + 1),
                },
                other => other,
            })
        })
        .collect()
}

fn conditions(when: Option<&RuleConditions>) -> Result<RuleConditions, WriteError> {
    let when = when.cloned().unwrap_or_default();
    let one_of = |value: &str, dimension: &str, allowed: &[&str]| -> Result<String, WriteError> {
        let value = value.trim().to_ascii_lowercase();
        if value.is_empty() || allowed.contains(&value.as_str()) {
            Ok(value)
        } else {
            Err(WriteError::invalid(
                "rules",
                format!("when.{dimension} must be one of {}", allowed.join(", ")),
            ))
        }
    };
    let country = when.country.trim().to_ascii_uppercase();
    let is_alpha2 = country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase());
    if !country.is_empty() && !is_alpha2 {
        return Err(WriteError::invalid(
            "rules",
            "when.country must be an ISO 3166-1 alpha-2 code",
        ));
    }
    let language = when.language.trim().to_ascii_lowercase();
    if !language.is_empty() && !is_language_tag(&language) {
        return Err(WriteError::invalid(
            "rules",
            "when.language must be a language tag such as en or pt-BR",
        ));
    }
    let out = RuleConditions {
        device: one_of(&when.device, "device", agent::DEVICES)?,
        os: one_of(&when.os, "os", agent::OSES)?,
        browser: one_of(&when.browser, "browser", agent::BROWSERS)?,
        country,
        language,
    };
    if out == RuleConditions::default() {
        return Err(WriteError::invalid(
            "rules",
            "when must name at least one of device, os, browser, country, language",
        ));
    }
    Ok(out)
}

/// `xx`, `xxx` or `xx-yyyy…`: alphanumeric subtags of 1–8, the first 2–3
/// letters. Good enough to refuse nonsense; the gateway compares by prefix.
fn is_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let primary = parts.next().unwrap_or("");
    tag.len() <= LANGUAGE_MAX
        && (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_lowercase())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The rules as stored in the `rules` jsonb column: the shape the link
/// object shows ([`shortfleet_common::rule_json`]).
pub fn rules_to_json(rules: &[RedirectRule]) -> Value {
    Value::Array(rules.iter().map(rule_json::to_json).collect())
}

/// The `rules` column back into rules; written only by [`rules_to_json`].
pub fn rules_from_json(value: &Value) -> Vec<RedirectRule> {
    rule_json::from_stored(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHash, PasswordVerifier};

    fn rule(when: RuleConditions, url: &str) -> RedirectRule {
        RedirectRule {
            when: Some(when),
            url: url.into(),
        }
    }

    fn reason(r: Result<Vec<RedirectRule>, WriteError>) -> String {
        match r {
            Err(WriteError::Invalid { field, reason }) => {
                assert_eq!(field, "rules");
                reason
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn rules_are_normalised_and_round_trip_through_json() {
        let raw = vec![rule(
            RuleConditions {
                device: " Mobile".into(),
                os: "iOS".into(),
                country: "de".into(),
                language: "pt-BR".into(),
                ..Default::default()
            },
            "https://example.com/m",
        )];
        let checked = rules(&raw, &TargetRules::default()).unwrap();
        let when = checked[0].when.clone().unwrap();
        assert_eq!(
            (
                when.device.as_str(),
                when.os.as_str(),
                when.country.as_str()
            ),
            ("mobile", "ios", "DE")
        );
        assert_eq!(when.language, "pt-br");
        assert_eq!(rules_from_json(&rules_to_json(&checked)), checked);
    }

    #[test]
    fn bad_rules_name_the_field_and_the_reason() {
        let t = TargetRules::default();
        let cond = |f: fn(&mut RuleConditions)| {
            let mut c = RuleConditions::default();
            f(&mut c);
            vec![rule(c, "https://example.com")]
        };
        assert!(reason(rules(&cond(|c| c.device = "phone".into()), &t)).contains("device"));
        assert!(reason(rules(&cond(|c| c.country = "DEU".into()), &t)).contains("country"));
        assert!(reason(rules(&cond(|c| c.language = "english!".into()), &t)).contains("language"));
        assert!(reason(rules(&cond(|_| {}), &t)).contains("at least one"));
        let mut bad_url = cond(|c| c.os = "linux".into());
        bad_url[0].url = "ftp://x".into();
        assert!(reason(rules(&bad_url, &t)).contains("url"));
        let mut second_bad = cond(|c| c.os = "linux".into());
        second_bad.push(bad_url[0].clone());
        assert!(reason(rules(&second_bad, &t)).starts_with("rule 2: url"));
        let many = vec![
            rule(
                RuleConditions {
                    os: "ios".into(),
                    ..Default::default()
                },
                "https://e.com"
            );
            21
        ];
        assert!(reason(rules(&many, &t)).contains("20"));
    }

    #[test]
    fn passwords_are_bounded_and_hashed_with_argon2id() {
        assert!(password("").is_err());
        assert!(password(&"x".repeat(129)).is_err());
        assert!(password("tab\there").is_err());
        let plain = password("correct horse").unwrap();
        let hash = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(hash_password(plain))
            .unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"wrong", &parsed)
                .is_err()
        );
    }
}
