//! Which target a redirect goes to: a link's rules are tried in order and
//! the first whose conditions all hold wins; none → the link's own `url`.
//!
//! Everything here runs on the redirect path, so it is allocation-light and
//! lazy: the user agent is classified only when a rule asks about device,
//! OS or browser, and `Accept-Language` is parsed only when one asks about
//! language. A link without rules costs one `is_empty` check.
//!
//! - device / os / browser: the fleet's one classifier
//!   ([`shortfleet_common::agent`]), so a rule means what analytics shows.
//!   A bot has no device class (it never matches `device`).
//! - country: the trusted country header (set by a trusted proxy or CDN)
//!   when there is one, else the client address looked up in the GeoIP file
//!   (`SHORTFLEET_GEOIP_DB`, the lookup analytics-svc makes) — only for a
//!   link with a country rule, so other redirects never pay for it; with
//!   neither, a country condition never holds.
//! - language: the client's most preferred languages — every range of
//!   `Accept-Language` sharing the highest quality above 0, `*` ignored. A
//!   rule's `en` matches `en`, `en-GB`, …; its `en-gb` only `en-GB`.

use std::{borrow::Cow, cell::OnceCell, net::IpAddr};

use shortfleet_common::{
    agent::{self, Agent},
    geoip::GeoIp,
};
use shortfleet_proto::v1::{RedirectRule, RuleConditions};

/// What a request tells about its sender, read lazily.
pub struct Visitor<'a> {
    user_agent: &'a str,
    accept_language: &'a str,
    /// Upper-case ISO 3166-1 alpha-2 from a trusted proxy, or empty.
    country: &'a str,
    agent: OnceCell<Agent>,
    languages: OnceCell<Vec<&'a str>>,
}

impl<'a> Visitor<'a> {
    pub fn new(user_agent: &'a str, accept_language: &'a str, country: &'a str) -> Self {
        Self {
            user_agent,
            accept_language,
            country,
            agent: OnceCell::new(),
            languages: OnceCell::new(),
        }
    }

    fn agent(&self) -> &Agent {
        self.agent.get_or_init(|| agent::classify(self.user_agent))
    }

    fn languages(&self) -> &[&'a str] {
        self.languages
            .get_or_init(|| preferred_languages(self.accept_language))
    }

    fn holds(&self, when: &RuleConditions) -> bool {
        (when.device.is_empty() || {
            let a = self.agent();
            !a.bot && a.device == when.device
        }) && (when.os.is_empty() || agent::rule_key_is(self.agent().os, &when.os))
            && (when.browser.is_empty() || agent::rule_key_is(self.agent().browser, &when.browser))
            && (when.country.is_empty() || self.country.eq_ignore_ascii_case(&when.country))
            && (when.language.is_empty()
                || self
                    .languages()
                    .iter()
                    .any(|l| language_matches(&when.language, l)))
    }
}

/// The country `rules` are matched against: the trusted `header` value when
/// there is one (the caller passes it only from a trusted proxy), else the
/// GeoIP country of `ip` — looked up only when some rule names a country.
pub fn rule_country<'a>(
    header: &'a str,
    rules: &[RedirectRule],
    geoip: Option<&GeoIp>,
    ip: IpAddr,
) -> Cow<'a, str> {
    if !header.is_empty() {
        return Cow::Borrowed(header);
    }
    let asks = rules
        .iter()
        .any(|r| r.when.as_ref().is_some_and(|w| !w.country.is_empty()));
    match geoip {
        Some(geoip) if asks => geoip.country_of(ip).map_or(Cow::Borrowed(""), Cow::Owned),
        _ => Cow::Borrowed(""),
    }
}

/// The index of the first rule whose conditions all hold, if any.
pub fn choose(rules: &[RedirectRule], visitor: &Visitor<'_>) -> Option<usize> {
    rules
        .iter()
        .position(|r| r.when.as_ref().is_some_and(|w| visitor.holds(w)))
}

/// The language ranges sharing the highest quality (> 0) in an
/// `Accept-Language` value, in the order sent; `*` and malformed entries
/// are skipped. At most 32 entries are read (a header is no essay).
pub fn preferred_languages(header: &str) -> Vec<&str> {
    let mut best = 0u16;
    let mut out = Vec::new();
    for entry in header.split(',').take(32) {
        let mut parts = entry.split(';');
        let tag = parts.next().unwrap_or("").trim();
        if tag.is_empty()
            || tag == "*"
            || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            continue;
        }
        let mut q = 1000u16;
        for p in parts {
            if let Some(v) = p
                .trim()
                .strip_prefix("q=")
                .or_else(|| p.trim().strip_prefix("Q="))
            {
                q = parse_quality(v).unwrap_or(0);
            }
        }
        if q == 0 || q < best {
            continue;
        }
        if q > best {
            best = q;
            out.clear();
        }
        out.push(tag);
    }
    out
}

/// RFC 9110 qvalue (`0`, `0.5`, `1.000`) in thousandths.
fn parse_quality(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = match int {
        "0" => 0,
        "1" => 1000,
        _ => return None,
    };
    let thousandths = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |n, b| n * 10 + u16::from(b - b'0'));
    let q = whole + thousandths;
    (q <= 1000).then_some(q)
}

/// A rule's language `rule` (lower-case) against a client's range: equal,
/// or `rule` is a prefix ending at a subtag boundary.
fn language_matches(rule: &str, client: &str) -> bool {
    client.len() >= rule.len()
        && client.as_bytes()[..rule.len()].eq_ignore_ascii_case(rule.as_bytes())
        && (client.len() == rule.len() || client.as_bytes()[rule.len()] == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
    const WINDOWS_CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";

    fn rule(f: impl FnOnce(&mut RuleConditions)) -> RedirectRule {
        let mut when = RuleConditions::default();
        f(&mut when);
        RedirectRule {
            when: Some(when),
            url: "https://example.com/".into(),
        }
    }

    #[test]
    fn the_first_matching_rule_wins_and_all_conditions_must_hold() {
        let rules = vec![
            rule(|w| {
                w.os = "ios".into();
                w.country = "FR".into();
            }),
            rule(|w| w.device = "mobile".into()),
            rule(|w| w.os = "ios".into()),
        ];
        let de = Visitor::new(IPHONE, "", "DE");
        assert_eq!(choose(&rules, &de), Some(1), "not FR: the second rule");
        let fr = Visitor::new(IPHONE, "", "FR");
        assert_eq!(choose(&rules, &fr), Some(0));
        assert_eq!(
            choose(&rules, &Visitor::new(WINDOWS_CHROME, "", "FR")),
            None
        );
    }

    #[test]
    fn country_from_the_trusted_header_else_geoip_only_when_a_rule_asks() {
        use shortfleet_common::geoip::testing;
        let geoip = testing::one_country("gateway-rules", "203.0.113.0", 24, "NL");
        let in_nl: IpAddr = "203.0.113.20".parse().unwrap();
        let by_country = vec![rule(|w| w.country = "NL".into())];
        let by_os = vec![rule(|w| w.os = "ios".into())];
        // The trusted header wins over the address.
        assert_eq!(rule_country("DE", &by_country, Some(&geoip), in_nl), "DE");
        // No header: the address, looked up.
        let c = rule_country("", &by_country, Some(&geoip), in_nl);
        assert_eq!(c, "NL");
        assert_eq!(choose(&by_country, &Visitor::new(IPHONE, "", &c)), Some(0));
        // No rule names a country: no lookup at all.
        assert_eq!(rule_country("", &by_os, Some(&geoip), in_nl), "");
        // Not in the file, or no file: no country, the rule does not hold.
        let elsewhere: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(rule_country("", &by_country, Some(&geoip), elsewhere), "");
        assert_eq!(rule_country("", &by_country, None, in_nl), "");
    }

    #[test]
    fn each_dimension() {
        let v = Visitor::new(WINDOWS_CHROME, "de-CH, en;q=0.5", "");
        assert_eq!(
            choose(&[rule(|w| w.device = "desktop".into())], &v),
            Some(0)
        );
        assert_eq!(choose(&[rule(|w| w.os = "windows".into())], &v), Some(0));
        assert_eq!(
            choose(&[rule(|w| w.browser = "chrome".into())], &v),
            Some(0)
        );
        assert_eq!(choose(&[rule(|w| w.browser = "firefox".into())], &v), None);
        assert_eq!(choose(&[rule(|w| w.language = "de".into())], &v), Some(0));
        assert_eq!(
            choose(&[rule(|w| w.language = "de-ch".into())], &v),
            Some(0)
        );
        assert_eq!(
            choose(&[rule(|w| w.language = "en".into())], &v),
            None,
            "en is less preferred"
        );
        assert_eq!(
            choose(&[rule(|w| w.country = "CH".into())], &v),
            None,
            "no trusted country"
        );
        let bot = Visitor::new("Googlebot/2.1", "", "");
        assert_eq!(choose(&[rule(|w| w.device = "desktop".into())], &bot), None);
    }

    #[test]
    fn language_negotiation_honours_quality() {
        assert_eq!(
            preferred_languages("fr-CH, fr;q=0.9, en;q=0.8, *;q=0.5"),
            vec!["fr-CH"]
        );
        assert_eq!(
            preferred_languages("en;q=0.2, de;q=0.7, fr;q=0.7"),
            vec!["de", "fr"]
        );
        assert_eq!(preferred_languages("en, de"), vec!["en", "de"]);
        assert_eq!(preferred_languages("en;q=0, *"), Vec::<&str>::new());
        assert_eq!(
            preferred_languages("en;q=1.5, de;q=0.1"),
            vec!["de"],
            "bad q is 0"
        );
        assert_eq!(preferred_languages(""), Vec::<&str>::new());
        assert!(language_matches("en", "en-GB"));
        assert!(language_matches("en-gb", "EN-GB"));
        assert!(!language_matches("en", "eng"));
        assert!(!language_matches("en-gb", "en"));
    }

    proptest! {
        /// Whatever the header, the preferred languages are entries of it,
        /// none is `*`, and every one is at least as preferred as any other
        /// entry with a valid quality.
        #[test]
        fn preferred_languages_are_header_entries(header in "[a-zA-Z*;=.0-9, -]{0,80}") {
            let got = preferred_languages(&header);
            for l in &got {
                prop_assert!(header.contains(l));
                prop_assert_ne!(*l, "*");
                prop_assert!(!l.is_empty());
            }
        }

        /// Rule matching never panics and picks a matching rule, the first.
        #[test]
        fn choose_picks_the_first_match(
            ua in ".{0,120}",
            lang in "[a-z]{2}(-[A-Z]{2})?",
            country in "[A-Z]{2}",
            pick in proptest::collection::vec((0usize..3, "[a-z]{2}", "[A-Z]{2}"), 0..6),
        ) {
            let rules: Vec<_> = pick.iter().map(|(k, l, c)| rule(|w| match k {
                0 => w.language = l.clone(),
                1 => w.country = c.clone(),
                _ => w.device = "mobile".into(),
            })).collect();
            let v = Visitor::new(&ua, &lang, &country);
            if let Some(i) = choose(&rules, &v) {
                prop_assert!(v.holds(rules[i].when.as_ref().unwrap()));
                for r in &rules[..i] {
                    prop_assert!(!v.holds(r.when.as_ref().unwrap()));
                }
            } else {
                prop_assert!(rules.iter().all(|r| !v.holds(r.when.as_ref().unwrap())));
            }
        }
    }
}
