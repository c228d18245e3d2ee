//! The opaque pagination cursor of `ListLinks`: the (created_at, code) of the
//! last link of a page, hex-encoded so clients treat it as a token, not a
//! format to build by hand.

use chrono::{DateTime, TimeZone, Utc};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub code: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        hex::encode(format!(
            "{}.{}",
            self.created_at.timestamp_micros(),
            self.code
        ))
    }

    /// `None` for anything this service did not produce.
    pub fn decode(token: &str) -> Option<Self> {
        let raw = String::from_utf8(hex::decode(token).ok()?).ok()?;
        let (micros, code) = raw.split_once('.')?;
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

    #[test]
    fn round_trips() {
        let c = Cursor {
            created_at: Utc.timestamp_micros(1_700_000_000_123_456).unwrap(),
            code: "aB3_x-Z".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
    }

    #[test]
    fn rejects_foreign_tokens() {
        assert_eq!(Cursor::decode("zz"), None);
        assert_eq!(Cursor::decode(&hex::encode("nodot")), None);
        assert_eq!(Cursor::decode(&hex::encode("12.")), None);
        assert_eq!(Cursor::decode(&hex::encode("x.abc")), None);
    }
}
