//! Short codes: generated ones (7 base62 characters drawn from the OS RNG, so
//! they reveal nothing about order or volume) and custom aliases.
//!
//! Collision odds: 62^7 ≈ 3.52e12 codes. With 1 B links stored, one random
//! draw collides with probability 1e9 / 3.52e12 ≈ 0.028 %, so a retry is
//! needed about once per 3,500 creates and five draws all colliding has
//! probability ≈ 1.8e-18. The database's primary key is the final judge: a
//! collision is detected by the insert, never by a read-then-write.

use rand::Rng;
use shortfleet_common::input::{CODE_MAX, CODE_MIN};
use std::fmt;

pub const GENERATED_LEN: usize = 7;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Paths the gateway serves itself; an alias may never shadow one.
/// Compared case-insensitively so `/API` cannot confuse a human either.
const RESERVED: &[&str] = &[
    "api",
    "healthz",
    "readyz",
    "metrics",
    "livez",
    "admin",
    "static",
    "assets",
    "favicon.ico",
    "robots.txt",
    "docs",
    "openapi",
    "status",
    "login",
    "logout",
    "well-known",
    "app",
];

/// A code that passed the rules: either generated or a valid alias.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShortCode(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    #[error("must be 3 to 64 characters long")]
    Length,
    #[error("may contain only letters, digits, '_' and '-'")]
    Charset,
    #[error("is reserved")]
    Reserved,
}

impl ShortCode {
    /// A fresh random code.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let code = (0..GENERATED_LEN)
            .map(|_| BASE62[rng.random_range(0..BASE62.len())] as char)
            .collect();
        Self(code)
    }

    /// Parses a user-chosen alias: 3–64 of `[A-Za-z0-9_-]`, not reserved.
    pub fn alias(raw: &str) -> Result<Self, AliasError> {
        if !(CODE_MIN..=CODE_MAX).contains(&raw.len()) {
            return Err(AliasError::Length);
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(AliasError::Charset);
        }
        if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(raw)) {
            return Err(AliasError::Reserved);
        }
        Ok(Self(raw.to_owned()))
    }

    /// Whether `raw` could name any link at all (generated or alias). Used to
    /// answer NOT_FOUND for garbage without a database round trip.
    pub fn is_plausible(raw: &str) -> bool {
        shortfleet_common::input::is_code_shaped(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShortCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn generated_codes_are_seven_base62_characters() {
        for _ in 0..1000 {
            let code = ShortCode::generate();
            assert_eq!(code.as_str().len(), GENERATED_LEN);
            assert!(code.as_str().bytes().all(|b| b.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn generated_codes_do_not_repeat_in_practice() {
        let codes: HashSet<_> = (0..10_000).map(|_| ShortCode::generate()).collect();
        assert_eq!(codes.len(), 10_000);
    }

    #[test]
    fn aliases_follow_the_rules() {
        assert!(ShortCode::alias("my-link_1").is_ok());
        assert_eq!(ShortCode::alias("ab"), Err(AliasError::Length));
        assert_eq!(ShortCode::alias(&"a".repeat(65)), Err(AliasError::Length));
        assert_eq!(ShortCode::alias("a b c"), Err(AliasError::Charset));
        assert_eq!(ShortCode::alias("héllo"), Err(AliasError::Charset));
        assert_eq!(ShortCode::alias("api"), Err(AliasError::Reserved));
        assert_eq!(ShortCode::alias("Healthz"), Err(AliasError::Reserved));
    }

    proptest! {
        #[test]
        fn any_valid_alias_is_plausible(s in "[A-Za-z0-9_-]{3,64}") {
            if let Ok(code) = ShortCode::alias(&s) {
                prop_assert!(ShortCode::is_plausible(code.as_str()));
                prop_assert_eq!(code.as_str(), s.as_str());
            }
        }

        #[test]
        fn aliases_with_other_characters_are_refused(
            prefix in "[a-z]{2}", bad in "[^A-Za-z0-9_-]", suffix in "[a-z]{2}"
        ) {
            let alias = format!("{prefix}{bad}{suffix}");
            prop_assert!(ShortCode::alias(&alias).is_err());
        }
    }
}
