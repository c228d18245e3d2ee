//! The fleet's input policy at every internal gRPC edge: what a string must
//! be before a service looks at it any further.
//!
//! Every string field of every request is checked against a [`Bound`]
//! before it reaches a cache, a queue or PostgreSQL: at most `max` bytes,
//! no control characters (C0 including NUL, DEL, C1 — `char::is_control`),
//! and, when the field is required, not empty. A refusal names the field
//! and the rule, never the value (a hostile value is not echoed, not even a
//! prefix), and becomes INVALID_ARGUMENT through [`invalid_argument`].
//!
//! What a value *means* stays with the service that owns it: write-svc
//! decides whether a bounded, printable string is a valid alias or an
//! unknown code; this module only guarantees it is safe to ask.
//!
//! The bounds are constants here so both sides of a contract (the gateway
//! building a click and click-logger checking it, say) use the same numbers.

use std::fmt;

use tonic::{Status, metadata::MetadataValue};

/// Metadata key naming the offending field of an INVALID_ARGUMENT, so the
/// gateway can fill problem+json `errors[]` without parsing messages.
pub const FIELD_METADATA: &str = "sf-field";

/// Owners are opaque ids issued with API keys.
pub const OWNER_MAX: usize = 128;
/// Short codes: generated ones are 7 characters, aliases 3–64 of
/// `[A-Za-z0-9_-]`.
pub const CODE_MIN: usize = 3;
pub const CODE_MAX: usize = 64;
/// Target URLs (the REST contract's 8 KiB).
pub const URL_MAX: usize = 8 * 1024;
/// One link tag.
pub const TAG_MAX: usize = 64;
/// The `Idempotency-Key` header's value.
pub const IDEMPOTENCY_KEY_MAX: usize = 255;
/// A `ListLinks` cursor; ours are about 200 bytes.
pub const CURSOR_MAX: usize = 256;
/// A click's event id: a UUID in practice; far below AMQP's 255-byte short
/// string, where lapin panics.
pub const EVENT_ID_MAX: usize = 128;
/// A click's `Referer`, cut to this by the gateway.
pub const REFERRER_MAX: usize = 2048;
/// A click's `User-Agent`, cut to this by the gateway.
pub const USER_AGENT_MAX: usize = 512;
/// A click's W3C `traceparent` (55 bytes in version 00; room for later ones).
pub const TRACEPARENT_MAX: usize = 256;
/// A click's country as a trusted proxy said it (ISO 3166-1 alpha-2 is 2;
/// proxies use a few longer markers, which analytics ignores).
pub const COUNTRY_MAX: usize = 8;
/// A click's client IP address in text form (the longest IPv6 text is 45).
pub const CLIENT_IP_MAX: usize = 64;

/// The rules of one string field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The field's name as clients know it (the REST name where one exists).
    pub field: &'static str,
    /// Longest accepted value, in bytes (what a datastore and a buffer see).
    pub max: usize,
    /// Whether the empty string is refused.
    pub required: bool,
}

impl Bound {
    pub const fn required(field: &'static str, max: usize) -> Self {
        Self {
            field,
            max,
            required: true,
        }
    }

    pub const fn optional(field: &'static str, max: usize) -> Self {
        Self {
            field,
            max,
            required: false,
        }
    }

    /// The same rules under another field name (`alias` is a code too).
    pub const fn named(self, field: &'static str) -> Self {
        Self { field, ..self }
    }

    /// `Ok(value)` when it may cross the boundary.
    pub fn check<'a>(&self, value: &'a str) -> Result<&'a str, InputError> {
        let rule = if value.is_empty() {
            self.required.then_some(Rule::Required)
        } else if value.len() > self.max {
            Some(Rule::TooLong { max: self.max })
        } else if has_control(value) {
            Some(Rule::ControlCharacter)
        } else {
            None
        };
        match rule {
            None => Ok(value),
            Some(rule) => Err(InputError {
                field: self.field,
                rule,
            }),
        }
    }

    /// Whether `value` passes [`Self::check`].
    pub fn accepts(&self, value: &str) -> bool {
        self.check(value).is_ok()
    }
}

/// An owner id (required wherever a caller acts for an owner).
pub const OWNER: Bound = Bound::required("owner", OWNER_MAX);
/// A code that names a link in a lookup. Passing it only means it is safe
/// to look up: a printable code that is not [`is_code_shaped`] names no
/// link (NOT_FOUND, or zero stats), it is not a malformed request.
pub const CODE: Bound = Bound::required("code", CODE_MAX);
/// The fields of the link contract, as the REST API names them: the gateway
/// checks them where a request arrives, write-svc again where it is used.
pub const URL: Bound = Bound::required("url", URL_MAX);
pub const ALIAS: Bound = Bound::optional("alias", CODE_MAX);
pub const TAG: Bound = Bound::required("tags", TAG_MAX);
pub const IDEMPOTENCY_KEY: Bound = Bound::optional("Idempotency-Key", IDEMPOTENCY_KEY_MAX);
/// `ListLinks`: a tag to filter by, and the cursor of the next page.
pub const TAG_FILTER: Bound = Bound::optional("tag", TAG_MAX);
pub const CURSOR: Bound = Bound::optional("cursor", CURSOR_MAX);

/// Which rule a value broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Required,
    TooLong {
        max: usize,
    },
    ControlCharacter,
    /// A field-specific shape, described for the client.
    Shape(&'static str),
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Required => f.write_str("is required"),
            Self::TooLong { max } => write!(f, "must be at most {max} bytes"),
            Self::ControlCharacter => f.write_str("must not contain control characters"),
            Self::Shape(what) => f.write_str(what),
        }
    }
}

/// A field that broke a rule; its message names both, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct InputError {
    pub field: &'static str,
    pub rule: Rule,
}

impl InputError {
    pub fn shape(field: &'static str, what: &'static str) -> Self {
        Self {
            field,
            rule: Rule::Shape(what),
        }
    }
}

/// Whether `code` could name a link at all, generated or alias: 3–64 of
/// `[A-Za-z0-9_-]`. The one definition write-svc, read-svc and click
/// validation share.
pub fn is_code_shaped(code: &str) -> bool {
    (CODE_MIN..=CODE_MAX).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The INVALID_ARGUMENT of a refused field: message `"{field}: {reason}"`
/// and the field in [`FIELD_METADATA`]. Each service's one error mapping
/// calls this for its "invalid" case.
pub fn invalid_argument(field: &str, reason: impl fmt::Display) -> Status {
    let mut status = Status::invalid_argument(format!("{field}: {reason}"));
    if let Ok(v) = MetadataValue::try_from(field) {
        status.metadata_mut().insert(FIELD_METADATA, v);
    }
    status
}

impl From<InputError> for Status {
    fn from(err: InputError) -> Self {
        invalid_argument(err.field, &err.rule)
    }
}

/// Longest piece of an unchecked value that may reach a log line.
pub const LOG_PREFIX: usize = 64;

/// At most [`LOG_PREFIX`] bytes of `value` (at a character boundary), for
/// span fields recorded before the value was checked: a 3 MB field must not
/// become a 3 MB log line.
pub fn prefix(value: &str) -> &str {
    if value.len() <= LOG_PREFIX {
        return value;
    }
    let mut end = LOG_PREFIX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// Whether `value` holds a control character (`char::is_control`: C0,
/// DEL, C1), judged on bytes: every click field and every request string
/// passes through here, and a byte scan runs several times faster than
/// decoding each character. C0 and DEL are single bytes; C1 (U+0080 to
/// U+009F) is always 0xC2 then 0x80..=0x9F in UTF-8, and 0xC2 never
/// appears inside another character's encoding.
pub fn has_control(value: &str) -> bool {
    let bytes = value.as_bytes();
    let c0_or_del = |b: u8| b < 0x20 || b == 0x7f;
    // Whole blocks tested without an early exit inside them, which the
    // compiler turns into vector compares: a byte-by-byte `any` was 11 %
    // of click-logger's CPU and 5 % of analytics-svc's (BENCHMARKS.md).
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        if block.iter().fold(false, |found, &b| found | c0_or_del(b)) {
            return true;
        }
    }
    if blocks.remainder().iter().any(|&b| c0_or_del(b)) {
        return true;
    }
    !value.is_ascii() && bytes.windows(2).any(|w| w[0] == 0xc2 && w[1] <= 0x9f)
}

/// `value` without control characters, cut to at most `max` bytes at a
/// character boundary: for a sender that must fit a bound rather than be
/// refused (the gateway building a click from request headers).
pub fn fit(value: &str, max: usize) -> String {
    let mut out = String::with_capacity(value.len().min(max));
    for c in value.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_the_field_and_the_rule() {
        let b = Bound::required("owner", 4);
        assert_eq!(b.check("bob"), Ok("bob"));
        assert_eq!(b.check("").unwrap_err().rule, Rule::Required);
        assert_eq!(
            b.check("alice").unwrap_err().to_string(),
            "owner: must be at most 4 bytes"
        );
        let err = b.check("a\0b").unwrap_err();
        assert_eq!(err.field, "owner");
        assert_eq!(
            err.to_string(),
            "owner: must not contain control characters"
        );
        assert_eq!(Bound::optional("tag", 4).check(""), Ok(""));
    }

    #[test]
    fn refuses_c0_del_and_c1_but_not_other_unicode() {
        let b = Bound::optional("x", 64);
        for bad in ["\0", "a\tb", "\n", "\x1f", "\x7f", "\u{80}", "\u{9f}"] {
            assert_eq!(
                b.check(bad).unwrap_err().rule,
                Rule::ControlCharacter,
                "{bad:?}"
            );
        }
        for good in ["héllo", "日本", "a b", "\u{a0}", "emoji 🎉"] {
            assert!(b.accepts(good), "{good:?}");
        }
    }

    #[test]
    fn the_bound_is_in_bytes() {
        let b = Bound::optional("x", 4);
        assert!(b.accepts("日"));
        assert!(!b.accepts("日本"));
    }

    #[test]
    fn the_status_names_the_field_and_not_the_value() {
        let secret = "x".repeat(100);
        let status = Status::from(Bound::optional("tag", 64).check(&secret).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.metadata().get(FIELD_METADATA).unwrap(), "tag");
        assert_eq!(status.message(), "tag: must be at most 64 bytes");
    }

    #[test]
    fn codes_are_shaped() {
        assert!(is_code_shaped("aB3_x-Z"));
        assert!(!is_code_shaped("ab"));
        assert!(!is_code_shaped("a/b/c"));
        assert!(!is_code_shaped("héllo"));
        assert!(!is_code_shaped(&"a".repeat(65)));
    }

    #[test]
    fn log_prefixes_are_short_and_whole_characters() {
        assert_eq!(prefix("abc"), "abc");
        assert_eq!(prefix(&"x".repeat(3 << 20)).len(), LOG_PREFIX);
        let wide = "é".repeat(100);
        assert_eq!(prefix(&wide), "é".repeat(LOG_PREFIX / 2));
        let odd = format!("x{wide}");
        assert_eq!(prefix(&odd).len(), LOG_PREFIX - 1);
    }

    #[test]
    fn fit_cuts_at_a_character_boundary_and_drops_controls() {
        assert_eq!(fit("ab\tc\0d", 10), "abcd");
        assert_eq!(fit("日本語", 7), "日本");
        assert_eq!(fit("short", 100), "short");
    }

    proptest! {
        #[test]
        fn no_control_character_is_ever_accepted(
            prefix in ".{0,20}",
            control in prop::sample::select(
                ('\0'..='\x1f').chain(std::iter::once('\x7f')).chain('\u{80}'..='\u{9f}')
                    .collect::<Vec<char>>()
            ),
            suffix in ".{0,20}",
            max in 1usize..200,
        ) {
            let value = format!("{prefix}{control}{suffix}");
            prop_assert!(!Bound::optional("x", max).accepts(&value));
            prop_assert!(!Bound::required("x", max).accepts(&value));
        }

        #[test]
        fn every_accepted_value_is_within_its_bound(
            value in any::<String>(), max in 0usize..64, required in any::<bool>()
        ) {
            let bound = Bound { field: "x", max, required };
            if bound.accepts(&value) {
                prop_assert!(value.len() <= max);
                prop_assert!(!value.chars().any(char::is_control));
                prop_assert!(!required || !value.is_empty());
            }
        }

        #[test]
        fn control_characters_are_found_as_char_is_control_finds_them(
            value in any::<String>(),
            c1 in prop::sample::select(('\u{7e}'..='\u{a1}').collect::<Vec<char>>()),
            at in 0usize..40,
        ) {
            let mut value: Vec<char> = value.chars().collect();
            value.insert(at.min(value.len()), c1);
            let value: String = value.into_iter().collect();
            prop_assert_eq!(has_control(&value), value.chars().any(char::is_control));
        }

        #[test]
        fn a_control_character_is_found_at_any_place_in_a_long_value(
            len in 0usize..120,
            at in 0usize..120,
            control in prop::sample::select(vec!['\u{0}', '\u{1f}', '\u{7f}', '\u{80}', '\u{9f}']),
        ) {
            // Past the 32-byte blocks the scan tests as a whole, and in them.
            let clean: String = "a-Zé~".chars().cycle().take(len).collect();
            prop_assert!(!has_control(&clean));
            let mut with: Vec<char> = clean.chars().collect();
            with.insert(at.min(with.len()), control);
            prop_assert!(has_control(&with.into_iter().collect::<String>()));
        }

        #[test]
        fn fitted_values_are_always_accepted(value in any::<String>(), max in 0usize..64) {
            let fitted = fit(&value, max);
            prop_assert!(Bound::optional("x", max).accepts(&fitted));
            let printable: String = value.chars().filter(|c| !c.is_control()).collect();
            prop_assert!(printable.starts_with(&fitted));
        }
    }
}
