//! The one definition of a storable click, shared by every side of the
//! click contract: the gateway fits what it builds to it (as
//! [`ClickFields::encode`] writes the click),
//! click-logger refuses a batch holding a click that breaks it, and
//! analytics-svc dead-letters a message holding one (a click that reached
//! the queue some other way, or before this rule existed).
//!
//! A click is storable when:
//! - `event_id` is 1–[`EVENT_ID_MAX`] bytes (AMQP's 255-byte short strings,
//!   where lapin panics, are far away);
//! - `code` is code-shaped (3–64 of `[A-Za-z0-9_-]`);
//! - `occurred_at` is present and within [`MAX_AGE_DAYS`] days before and
//!   [`MAX_FUTURE`] after now — analytics keeps raw clicks in daily
//!   partitions for 400 days by default; anything older or dated in the far
//!   future would sit in the default partition forever;
//! - `client_ip` is empty or an IPv4/IPv6 address;
//! - `owner`, `referrer`, `user_agent`, `traceparent`, `country` are within
//!   their bounds ([`crate::input`]);
//! - no field holds a control character.

use std::{borrow::Cow, net::IpAddr};

use chrono::{DateTime, TimeDelta, Utc};
use prost::Message;
use shortfleet_proto::v1::ClickEvent;

use crate::{
    input::{
        self, Bound, CLIENT_IP_MAX, COUNTRY_MAX, EVENT_ID_MAX, InputError, OWNER_MAX, REFERRER_MAX,
        Rule, TRACEPARENT_MAX, USER_AGENT_MAX,
    },
    time::from_proto,
};

/// Oldest click accepted, in days before now (analytics' default retention).
pub const MAX_AGE_DAYS: i64 = 400;
/// Latest click accepted, after now: clock skew between hosts, no more.
pub const MAX_FUTURE: TimeDelta = TimeDelta::minutes(5);

const EVENT_ID: Bound = Bound::required("event_id", EVENT_ID_MAX);
const OWNER: Bound = Bound::optional("owner", OWNER_MAX);
const REFERRER: Bound = Bound::optional("referrer", REFERRER_MAX);
const USER_AGENT: Bound = Bound::optional("user_agent", USER_AGENT_MAX);
const CLIENT_IP: Bound = Bound::optional("client_ip", CLIENT_IP_MAX);
const TRACEPARENT: Bound = Bound::optional("traceparent", TRACEPARENT_MAX);
const COUNTRY: Bound = Bound::optional("country", COUNTRY_MAX);

/// The rule at one `now`, for a whole batch: the bounds on `occurred_at`
/// are worked out once (per click, the date arithmetic was a measurable
/// share of checking one).
#[derive(Debug, Clone, Copy)]
pub struct Acceptance {
    earliest: DateTime<Utc>,
    latest: DateTime<Utc>,
}

impl Acceptance {
    pub fn at(now: DateTime<Utc>) -> Self {
        Self {
            earliest: now - TimeDelta::days(MAX_AGE_DAYS),
            latest: now + MAX_FUTURE,
        }
    }

    /// Checks one click; `Ok` carries its time.
    pub fn check(&self, event: &ClickEvent) -> Result<DateTime<Utc>, InputError> {
        EVENT_ID.check(&event.event_id)?;
        input::CODE.check(&event.code)?;
        if !input::is_code_shaped(&event.code) {
            return Err(InputError::shape(
                "code",
                "must be 3 to 64 of [A-Za-z0-9_-]",
            ));
        }
        OWNER.check(&event.owner)?;
        REFERRER.check(&event.referrer)?;
        USER_AGENT.check(&event.user_agent)?;
        TRACEPARENT.check(&event.traceparent)?;
        COUNTRY.check(&event.country)?;
        if !CLIENT_IP.check(&event.client_ip)?.is_empty()
            && event.client_ip.parse::<IpAddr>().is_err()
        {
            return Err(InputError::shape(
                "client_ip",
                "must be empty or an IPv4 or IPv6 address",
            ));
        }
        let occurred_at = event.occurred_at.as_ref().ok_or(InputError {
            field: "occurred_at",
            rule: Rule::Required,
        })?;
        let occurred_at = from_proto(occurred_at)
            .ok_or_else(|| InputError::shape("occurred_at", "is not a valid time"))?;
        if occurred_at < self.earliest {
            return Err(InputError::shape(
                "occurred_at",
                "must be within the last 400 days",
            ));
        }
        if occurred_at > self.latest {
            return Err(InputError::shape(
                "occurred_at",
                "must not be more than 5 minutes in the future",
            ));
        }
        Ok(occurred_at)
    }
}

/// Makes the client-supplied parts of a click fit the rule instead of
/// refusing it: referrer and user agent lose control characters and are cut
/// (at a character boundary) to their bounds; a trace context or country
/// that does not fit is dropped. The gateway fits every click it builds
/// (through [`ClickFields::encode`], which applies the same per-field
/// helpers as it writes), so a legitimate redirect with a huge `Referer`
/// never costs a whole batch. On a whole `ClickEvent`, this is the form the
/// tests hold the encoding to.
#[cfg(test)]
pub fn fit(event: &mut ClickEvent) {
    if let Cow::Owned(referrer) = fit_referrer(&event.referrer) {
        event.referrer = referrer;
    }
    if let Cow::Owned(user_agent) = fit_user_agent(&event.user_agent) {
        event.user_agent = user_agent;
    }
    if fit_traceparent(&event.traceparent).is_empty() {
        event.traceparent.clear();
    }
    if fit_country(&event.country).is_empty() {
        event.country.clear();
    }
}

fn fit_referrer(value: &str) -> Cow<'_, str> {
    if REFERRER.accepts(value) {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(input::fit(value, REFERRER_MAX))
    }
}

fn fit_user_agent(value: &str) -> Cow<'_, str> {
    if USER_AGENT.accepts(value) {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(input::fit(value, USER_AGENT_MAX))
    }
}

fn fit_traceparent(value: &str) -> &str {
    if TRACEPARENT.accepts(value) {
        value
    } else {
        ""
    }
}

fn fit_country(value: &str) -> &str {
    if COUNTRY.accepts(value) { value } else { "" }
}

/// A click as the redirect knows it, borrowing the request's and the
/// link's strings. [`ClickFields::encode`] fits it to the rule and writes the
/// protobuf bytes of the same `ClickEvent` (a test compares them) in one
/// allocation, where building the `ClickEvent` first took one per string
/// and another pass to encode it.
#[derive(Debug, Clone, Copy)]
pub struct ClickFields<'a> {
    pub event_id: &'a str,
    pub code: &'a str,
    pub owner: &'a str,
    pub occurred_at: prost_types::Timestamp,
    pub referrer: &'a str,
    pub user_agent: &'a str,
    pub client_ip: &'a str,
    pub head_request: bool,
    pub traceparent: &'a str,
    pub country: &'a str,
    pub rule: Option<u32>,
}

impl ClickFields<'_> {
    /// The fitted click, encoded.
    pub fn encode(&self) -> EncodedClick {
        use prost::encoding::{self, WireType};
        let referrer = fit_referrer(self.referrer);
        let user_agent = fit_user_agent(self.user_agent);
        // Field number and value, in field order; proto3 leaves empty
        // strings out, as prost does.
        let strings = [
            (1, self.event_id),
            (2, self.code),
            (3, self.owner),
            (5, &*referrer),
            (6, &*user_agent),
            (7, self.client_ip),
            (9, fit_traceparent(self.traceparent)),
            (10, fit_country(self.country)),
        ];
        let string_len = |(tag, value): &(u32, &str)| {
            if value.is_empty() {
                0
            } else {
                encoding::key_len(*tag)
                    + encoding::encoded_len_varint(value.len() as u64)
                    + value.len()
            }
        };
        let len = strings.iter().map(string_len).sum::<usize>()
            + encoding::message::encoded_len(4, &self.occurred_at)
            + if self.head_request {
                encoding::bool::encoded_len(8, &true)
            } else {
                0
            }
            + self
                .rule
                .map_or(0, |r| encoding::uint32::encoded_len(11, &r));
        let mut buf = Vec::with_capacity(len);
        for (tag, value) in strings {
            if tag == 5 {
                // occurred_at (field 4) comes between owner and referrer.
                encoding::message::encode(4, &self.occurred_at, &mut buf);
            }
            if !value.is_empty() {
                encoding::encode_key(tag, WireType::LengthDelimited, &mut buf);
                encoding::encode_varint(value.len() as u64, &mut buf);
                buf.extend_from_slice(value.as_bytes());
            }
            if tag == 7 && self.head_request {
                encoding::bool::encode(8, &true, &mut buf);
            }
        }
        if let Some(rule) = self.rule {
            encoding::uint32::encode(11, &rule, &mut buf);
        }
        EncodedClick(buf)
    }
}

/// One click's protobuf bytes (a `ClickEvent`), as the gateway buffers,
/// batches and spools it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedClick(Vec<u8>);

impl EncodedClick {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The click itself (tests, and paths off the hot one).
    pub fn decode(&self) -> Result<ClickEvent, prost::DecodeError> {
        ClickEvent::decode(self.0.as_slice())
    }
}

impl AsRef<[u8]> for EncodedClick {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<&ClickEvent> for EncodedClick {
    fn from(event: &ClickEvent) -> Self {
        Self(event.encode_to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks one click against the rule at `now`.
    fn check(event: &ClickEvent, now: DateTime<Utc>) -> Result<DateTime<Utc>, InputError> {
        Acceptance::at(now).check(event)
    }

    /// Breaks one rule of a click.
    type Breaks = fn(&mut ClickEvent);
    use crate::time::to_proto;
    use proptest::prelude::*;

    fn click(now: DateTime<Utc>) -> ClickEvent {
        ClickEvent {
            event_id: "0190b5a4-7c1e-7000-8000-000000000001".into(),
            code: "abc1234".into(),
            owner: "alice".into(),
            occurred_at: Some(to_proto(now)),
            referrer: "https://news.example/".into(),
            user_agent: "Mozilla/5.0".into(),
            client_ip: "203.0.113.7".into(),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            country: "DE".into(),
            head_request: false,
            rule: None,
        }
    }

    fn field_of(event: &ClickEvent, now: DateTime<Utc>) -> &'static str {
        check(event, now).unwrap_err().field
    }

    #[test]
    fn a_complete_click_is_storable() {
        let now = Utc::now();
        assert_eq!(check(&click(now), now), Ok(now));
        let mut minimal = click(now);
        minimal.owner.clear();
        minimal.referrer.clear();
        minimal.user_agent.clear();
        minimal.client_ip.clear();
        minimal.traceparent.clear();
        minimal.country.clear();
        assert!(check(&minimal, now).is_ok());
        let mut v6 = click(now);
        v6.client_ip = "2001:db8::1".into();
        assert!(check(&v6, now).is_ok());
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        let now = Utc::now();
        let cases: Vec<(&str, Breaks)> = vec![
            ("event_id", |e| e.event_id.clear()),
            ("event_id", |e| e.event_id = "x".repeat(EVENT_ID_MAX + 1)),
            ("event_id", |e| e.event_id = "x".repeat(256)),
            ("event_id", |e| e.event_id = "a\nb".into()),
            ("code", |e| e.code.clear()),
            ("code", |e| e.code = "ab\0cd".into()),
            ("code", |e| e.code = "a/b/c".into()),
            ("code", |e| e.code = "x".repeat(65)),
            ("owner", |e| e.owner = "o".repeat(OWNER_MAX + 1)),
            ("referrer", |e| e.referrer = "r".repeat(5 << 20)),
            ("referrer", |e| e.referrer = "https://a/\u{85}".into()),
            ("user_agent", |e| {
                e.user_agent = "u".repeat(USER_AGENT_MAX + 1)
            }),
            ("client_ip", |e| e.client_ip = "not-an-ip".into()),
            ("client_ip", |e| e.client_ip = "300.1.1.1".into()),
            ("traceparent", |e| e.traceparent = "\0".into()),
            ("country", |e| e.country = "DE\r\n".into()),
            ("occurred_at", |e| e.occurred_at = None),
            ("occurred_at", |e| {
                e.occurred_at = Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                })
            }),
            ("occurred_at", |e| {
                e.occurred_at = Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: 0,
                })
            }),
            ("occurred_at", |e| {
                // 1 January 10000
                e.occurred_at = Some(prost_types::Timestamp {
                    seconds: 253_402_300_800,
                    nanos: 0,
                })
            }),
        ];
        for (field, breaks) in cases {
            let mut e = click(now);
            breaks(&mut e);
            assert_eq!(field_of(&e, now), field, "{e:?}");
        }
    }

    #[test]
    fn the_time_window_is_400_days_back_and_5_minutes_ahead() {
        let now = Utc::now();
        let at = |t: DateTime<Utc>| {
            let mut e = click(now);
            e.occurred_at = Some(to_proto(t));
            check(&e, now)
        };
        assert!(at(now - TimeDelta::days(MAX_AGE_DAYS) + TimeDelta::seconds(1)).is_ok());
        assert!(at(now - TimeDelta::days(MAX_AGE_DAYS + 1)).is_err());
        assert!(at(now + TimeDelta::minutes(4)).is_ok());
        assert!(at(now + TimeDelta::minutes(6)).is_err());
    }

    #[test]
    fn fit_makes_header_fields_storable() {
        let now = Utc::now();
        let mut e = click(now);
        e.referrer = format!("https://a.example/{}", "é".repeat(3000));
        e.user_agent = format!("agent\t{}", "x".repeat(1000));
        e.traceparent = "t".repeat(1000);
        e.country = "a country".into();
        fit(&mut e);
        assert!(check(&e, now).is_ok());
        assert!(e.referrer.len() <= REFERRER_MAX && e.referrer.starts_with("https://a.example/é"));
        assert!(e.user_agent.starts_with("agentxxx"));
        assert!(e.traceparent.is_empty() && e.country.is_empty());
        // Fitting leaves a click that already fits untouched.
        let mut same = click(now);
        fit(&mut same);
        assert_eq!(same, click(now));
    }

    proptest! {
        #[test]
        fn any_headers_fit(
            referrer in any::<String>(), agent in any::<String>(),
            traceparent in any::<String>(), country in any::<String>(),
            long in 0usize..6000,
        ) {
            let now = Utc::now();
            let mut e = click(now);
            e.referrer = format!("{referrer}{}", "r".repeat(long));
            e.user_agent = format!("{agent}{}", "u".repeat(long));
            e.traceparent = traceparent;
            e.country = country;
            fit(&mut e);
            prop_assert!(check(&e, now).is_ok());
        }

        /// Whatever the fields, a borrowed click encodes to the bytes of
        /// the same `ClickEvent` after [`fit`].
        #[test]
        fn a_borrowed_click_encodes_as_the_fitted_event(
            event_id in ".{0,40}", owner in ".{0,10}", referrer in any::<String>(),
            agent in any::<String>(), client_ip in "[0-9.]{0,15}", traceparent in ".{0,60}",
            country in "[A-Z]{0,3}", long in 0usize..3000, head_request in any::<bool>(),
            rule in proptest::option::of(any::<u32>()), seconds in any::<i64>(), nanos in any::<i32>(),
        ) {
            let referrer = format!("{referrer}{}", "r".repeat(long));
            let fields = ClickFields {
                event_id: &event_id,
                code: "abc1234",
                owner: &owner,
                occurred_at: prost_types::Timestamp { seconds, nanos },
                referrer: &referrer,
                user_agent: &agent,
                client_ip: &client_ip,
                head_request,
                traceparent: &traceparent,
                country: &country,
                rule,
            };
            let mut event = ClickEvent {
                event_id: event_id.clone(),
                code: "abc1234".into(),
                owner: owner.clone(),
                occurred_at: Some(fields.occurred_at),
                referrer: referrer.clone(),
                user_agent: agent.clone(),
                client_ip: client_ip.clone(),
                head_request,
                traceparent: traceparent.clone(),
                country: country.clone(),
                rule,
            };
            fit(&mut event);
            let encoded = fields.encode();
            let expected = event.encode_to_vec();
            prop_assert_eq!(encoded.as_bytes(), expected.as_slice());
            prop_assert_eq!(encoded.decode().unwrap(), event);
        }

        /// The validator click-logger runs on whatever a caller sends:
        /// never panics, and what it accepts is what analytics can store.
        #[test]
        fn any_event_is_judged_without_panic(
            event_id in any::<String>(), code in any::<String>(), owner in any::<String>(),
            client_ip in any::<String>(), seconds in any::<i64>(), nanos in any::<i32>(),
        ) {
            let now = Utc::now();
            let mut e = click(now);
            e.event_id = event_id;
            e.code = code;
            e.owner = owner;
            e.client_ip = client_ip;
            e.occurred_at = Some(prost_types::Timestamp { seconds, nanos });
            if let Ok(at) = check(&e, now) {
                prop_assert!(input::is_code_shaped(&e.code));
                prop_assert!(e.client_ip.is_empty() || e.client_ip.parse::<IpAddr>().is_ok());
                prop_assert!(at <= now + MAX_FUTURE && at >= now - TimeDelta::days(MAX_AGE_DAYS));
                prop_assert!(!e.event_id.is_empty() && e.event_id.len() <= EVENT_ID_MAX);
            }
        }
    }
}
