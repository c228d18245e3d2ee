//! Click enrichment: what analytics-svc derives from a `ClickEvent` before
//! storing it — the storable-click check shared with click-logger, browser,
//! OS and device from the user agent, bot detection, referrer host, the
//! country (trusted header, else GeoIP) and a visitor hash that rotates
//! daily so the raw IP is never stored. Pure: no I/O, no clock of its own.
//! A batch's events go through one [`Enricher`], which classifies each
//! distinct user agent once.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Timelike, Utc};
use sha2::{Digest, Sha256};
use shortfleet_common::click;
use shortfleet_proto::v1::ClickEvent;

use crate::{
    agent::{Agent, classify, referrer_host},
    geoip::GeoIp,
};

/// A click ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Click {
    pub event_id: String,
    pub code: String,
    pub owner: String,
    pub occurred_at: DateTime<Utc>,
    pub is_bot: bool,
    pub referrer_host: String,
    /// The classifier's names: fixed strings, never copied per click.
    pub browser: &'static str,
    pub os: &'static str,
    pub device: &'static str,
    pub country: String,
    pub visitor: Vec<u8>,
    /// The redirect rule that sent the click; `None`: the link's own url.
    pub rule: Option<i16>,
}

/// PostgreSQL text cannot hold NUL; anything else is kept as sent.
fn clean(s: &str, max: usize) -> String {
    s.chars().filter(|c| *c != '\0').take(max).collect()
}

/// Enriches an event; `None` for one that can never be stored (a poison
/// message: not a storable click by the rule click-logger applies too,
/// [`shortfleet_common::click`], at `now`). The country is the one a trusted proxy
/// told the gateway, else the GeoIP database's, if any.
pub fn enrich(
    event: &ClickEvent,
    now: DateTime<Utc>,
    visitor_secret: &str,
    geoip: Option<&GeoIp>,
) -> Option<Click> {
    Enricher::new(now, visitor_secret, geoip).enrich(event)
}

/// [`enrich`] for the events of one batch. User agents repeat heavily
/// within a batch, so each distinct one is classified once (the memo lives
/// as long as the batch, so it is bounded by the batch size), and the
/// day's salt text is formatted once per day.
pub struct Enricher<'a> {
    acceptance: click::Acceptance,
    visitor_secret: &'a str,
    geoip: Option<&'a GeoIp>,
    agents: HashMap<String, Agent>,
    day: Option<(NaiveDate, String)>,
}

impl<'a> Enricher<'a> {
    pub fn new(now: DateTime<Utc>, visitor_secret: &'a str, geoip: Option<&'a GeoIp>) -> Self {
        Self {
            acceptance: click::Acceptance::at(now),
            visitor_secret,
            geoip,
            agents: HashMap::new(),
            day: None,
        }
    }

    fn agent(&mut self, user_agent: &str) -> Agent {
        if let Some(agent) = self.agents.get(user_agent) {
            return agent.clone();
        }
        let agent = classify(user_agent);
        self.agents.insert(user_agent.to_owned(), agent.clone());
        agent
    }

    fn day_text(&mut self, day: NaiveDate) -> &str {
        if self.day.as_ref().is_none_or(|(d, _)| *d != day) {
            self.day = Some((day, day.to_string()));
        }
        self.day.as_ref().map_or("", |(_, text)| text.as_str())
    }

    /// See [`enrich`]. Only what is stored is copied out of `event` (the
    /// consumer decodes every click of a message into one reused event).
    pub fn enrich(&mut self, event: &ClickEvent) -> Option<Click> {
        let occurred_at = match self.acceptance.check(event) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "a click that cannot be stored");
                return None;
            }
        };
        // PostgreSQL keeps microseconds: truncate now so a redelivery and the
        // stored row compare equal (by hand: `duration_trunc` is dearer).
        let occurred_at = occurred_at
            .with_nanosecond(occurred_at.nanosecond() / 1_000 * 1_000)
            .unwrap_or(occurred_at);
        let agent = self.agent(&event.user_agent);
        let secret = self.visitor_secret;
        // The salt changes every UTC day, so visitors cannot be followed across
        // days and the raw IP is never stored.
        let visitor = Sha256::new()
            .chain_update(secret.as_bytes())
            .chain_update(self.day_text(occurred_at.date_naive()).as_bytes())
            .chain_update([0])
            .chain_update(event.client_ip.as_bytes())
            .chain_update([0])
            .chain_update(event.user_agent.as_bytes())
            .finalize()
            .to_vec();
        let country = Some(event.country.trim().to_ascii_uppercase())
            .filter(|c| is_country_code(c))
            .or_else(|| self.geoip?.country(&event.client_ip))
            .map(|c| c.to_ascii_uppercase())
            .filter(|c| is_country_code(c))
            .unwrap_or_default();
        Some(Click {
            // Checked above: bounded, no NUL or other control characters.
            event_id: event.event_id.clone(),
            code: event.code.clone(),
            owner: event.owner.clone(),
            occurred_at,
            is_bot: agent.bot || event.head_request,
            referrer_host: clean(&referrer_host(&event.referrer), 255),
            browser: agent.browser,
            os: agent.os,
            device: if event.head_request {
                "bot"
            } else {
                agent.device
            },
            country,
            visitor,
            // Links have at most 20 rules; anything else is not a rule index.
            rule: event
                .rule
                .and_then(|r| i16::try_from(r).ok())
                .filter(|r| *r < 64),
        })
    }
}

fn is_country_code(c: &str) -> bool {
    c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic())
}

/// A click event as the gateway sends one, for this crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use chrono::{DateTime, Utc};
    use shortfleet_common::time::to_proto;
    use shortfleet_proto::v1::ClickEvent;

    pub const FIREFOX: &str =
        "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";

    pub fn event(id: &str, ua: &str, at: DateTime<Utc>) -> ClickEvent {
        ClickEvent {
            event_id: id.into(),
            code: "abc1234".into(),
            owner: "alice".into(),
            occurred_at: Some(to_proto(at)),
            user_agent: ua.into(),
            client_ip: "192.0.2.1".into(),
            referrer: "https://t.co/x".into(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, TimeZone};

    use super::{
        testing::{FIREFOX, event},
        *,
    };

    #[test]
    fn times_keep_what_postgresql_keeps_microseconds() {
        let at = Utc
            .with_ymd_and_hms(2026, 3, 1, 23, 59, 59)
            .unwrap()
            .with_nanosecond(987_654_321)
            .unwrap();
        let click = enrich(&event("e", FIREFOX, at), at, "s", None).unwrap();
        assert_eq!(click.occurred_at.nanosecond(), 987_654_000);
        assert_eq!(click.occurred_at.timestamp(), at.timestamp());
    }

    #[test]
    fn poison_events_are_refused() {
        let t = Utc::now();
        assert!(enrich(&event("", FIREFOX, t), t, "s", None).is_none());
        let mut no_time = event("e", FIREFOX, t);
        no_time.occurred_at = None;
        assert!(enrich(&no_time, t, "s", None).is_none());
        // The shared click rule: what click-logger refuses is poison here.
        let mut nul = event("e", FIREFOX, t);
        nul.code = "ab\0cd".into();
        assert!(enrich(&nul, t, "s", None).is_none());
        let old = event("e", FIREFOX, t - TimeDelta::days(401));
        assert!(enrich(&old, t, "s", None).is_none());
        let mut huge_referrer = event("e", FIREFOX, t);
        huge_referrer.referrer = "r".repeat(5 << 20);
        assert!(enrich(&huge_referrer, t, "s", None).is_none());
    }

    #[test]
    fn a_batch_enricher_answers_as_enriching_each_event_alone() {
        let t = Utc::now();
        let agents = [
            FIREFOX,
            "Googlebot/2.1",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148",
        ];
        let mut batch = Enricher::new(t, "s", None);
        for i in 0..30 {
            let mut e = event(
                &format!("e{i}"),
                agents[i % 3],
                t - TimeDelta::hours(i as i64),
            );
            e.head_request = i % 7 == 0;
            assert_eq!(batch.enrich(&e), enrich(&e, t, "s", None), "event {i}");
        }
        assert_eq!(batch.agents.len(), 3, "each distinct agent classified once");
    }

    #[test]
    fn visitor_hashes_rotate_daily_and_hide_the_ip() {
        let d1 = Utc.with_ymd_and_hms(2026, 1, 1, 23, 0, 0).unwrap();
        let d2 = Utc.with_ymd_and_hms(2026, 1, 2, 1, 0, 0).unwrap();
        let a = enrich(&event("a", FIREFOX, d1), d2, "s", None).unwrap();
        let b = enrich(&event("b", FIREFOX, d1), d2, "s", None).unwrap();
        let c = enrich(&event("c", FIREFOX, d2), d2, "s", None).unwrap();
        assert_eq!(a.visitor, b.visitor);
        assert_ne!(a.visitor, c.visitor);
        assert!(!a.visitor.windows(9).any(|w| w == b"192.0.2.1"));
    }
}
