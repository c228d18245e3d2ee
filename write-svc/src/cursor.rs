//! The opaque pagination cursor of `ListLinks`: the (created_at, code) of the
//! last link of a page, authenticated so a client can only hand back a
//! cursor this fleet issued, to the owner it was issued to.
//!
//! Token = hex(payload ‖ tag), payload = `"{created_at µs}.{code}"`,
//! tag = the first [`TAG_LEN`] bytes of HMAC-SHA256(key, domain ‖ owner
//! length ‖ owner ‖ payload). The key is `SHORTFLEET_CURSOR_SECRET`, shared by
//! every replica, so a cursor from one replica works on the next page
//! served by another. A forged, tampered, truncated or other-owner cursor
//! decodes to `None` (INVALID_ARGUMENT naming `cursor`); the tag is
//! compared in constant time.

use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Bytes of the HMAC kept in a token: 128 bits cannot be guessed online.
pub const TAG_LEN: usize = 16;
/// Separates cursor MACs from anything else the key might ever sign.
const DOMAIN: &[u8] = b"shortfleet.cursor.v1\0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub code: String,
}

/// The key cursors are signed with.
#[derive(Clone)]
pub struct CursorKey(Vec<u8>);

impl CursorKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(secret.to_vec())
    }

    #[allow(clippy::expect_used)] // reason: HMAC accepts keys of any length
    fn tag(&self, owner: &str, payload: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any size");
        mac.update(DOMAIN);
        mac.update(&(owner.len() as u64).to_be_bytes());
        mac.update(owner.as_bytes());
        mac.update(payload);
        let full = mac.finalize().into_bytes();
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }
}

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(<redacted>)")
    }
}

impl Cursor {
    /// The token for the page after this one, valid for `owner` only.
    pub fn encode(&self, key: &CursorKey, owner: &str) -> String {
        let mut raw = format!("{}.{}", self.created_at.timestamp_micros(), self.code).into_bytes();
        let tag = key.tag(owner, &raw);
        raw.extend_from_slice(&tag);
        hex::encode(raw)
    }

    /// `None` for anything this fleet did not issue to `owner`.
    pub fn decode(token: &str, key: &CursorKey, owner: &str) -> Option<Self> {
        let raw = hex::decode(token).ok()?;
        let split = raw.len().checked_sub(TAG_LEN)?;
        let (payload, tag) = raw.split_at(split);
        if !bool::from(key.tag(owner, payload).ct_eq(tag)) {
            return None;
        }
        // Authentic, so well-formed unless the format changed under us.
        let (micros, code) = std::str::from_utf8(payload).ok()?.split_once('.')?;
        let created_at = Utc.timestamp_micros(micros.parse().ok()?).single()?;
        if code.is_empty() {
            return None;
        }
        Some(Self {
            created_at,
            code: code.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CursorKey {
        CursorKey::new(b"test-cursor-secret-0123456789")
    }

    fn cursor() -> Cursor {
        Cursor {
            created_at: Utc.timestamp_micros(1_700_000_000_123_456).unwrap(),
            code: "aB3_x-Z".into(),
        }
    }

    #[test]
    fn round_trips_for_its_owner() {
        let token = cursor().encode(&key(), "alice");
        assert!(token.len() <= shortfleet_common::input::CURSOR_MAX);
        assert_eq!(Cursor::decode(&token, &key(), "alice"), Some(cursor()));
    }

    #[test]
    fn another_owner_or_key_is_refused() {
        let token = cursor().encode(&key(), "alice");
        assert_eq!(Cursor::decode(&token, &key(), "bob"), None);
        assert_eq!(Cursor::decode(&token, &key(), "alic"), None);
        let other = CursorKey::new(b"another-secret-0123456789");
        assert_eq!(Cursor::decode(&token, &other, "alice"), None);
    }

    #[test]
    fn any_tampered_byte_is_refused() {
        let raw = hex::decode(cursor().encode(&key(), "alice")).unwrap();
        for i in 0..raw.len() {
            let mut forged = raw.clone();
            forged[i] ^= 0x01;
            assert_eq!(
                Cursor::decode(&hex::encode(&forged), &key(), "alice"),
                None,
                "byte {i}"
            );
        }
    }

    #[test]
    fn truncated_and_foreign_tokens_are_refused() {
        let token = cursor().encode(&key(), "alice");
        for cut in [2, TAG_LEN * 2, token.len() - 2] {
            assert_eq!(Cursor::decode(&token[..cut], &key(), "alice"), None);
        }
        assert_eq!(
            Cursor::decode(&token[..token.len() - 1], &key(), "alice"),
            None
        );
        assert_eq!(Cursor::decode("", &key(), "alice"), None);
        assert_eq!(Cursor::decode("zz", &key(), "alice"), None);
        // The unauthenticated format of earlier releases.
        let old = hex::encode("1700000000123456.aB3_x-Z");
        assert_eq!(Cursor::decode(&old, &key(), "alice"), None);
        // A forged payload with a NUL byte in the code (issue 11).
        let nul = hex::encode(b"1700000000123456.a\0b0123456789abcdef");
        assert_eq!(Cursor::decode(&nul, &key(), "alice"), None);
    }

    proptest::proptest! {
        /// Whatever a client puts in `?cursor=`: no panic, and nothing
        /// decodes that this key did not sign.
        #[test]
        fn no_token_decodes_unless_signed(token in "\\PC{0,200}", bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
            proptest::prop_assert_eq!(Cursor::decode(&token, &key(), "alice"), None);
            proptest::prop_assert_eq!(Cursor::decode(&hex::encode(&bytes), &key(), "alice"), None);
        }
    }
}
