//! Target URLs: parsed with the `url` crate into a [`TargetUrl`], whose only
//! constructor enforces the contract (absolute http/https, a host, at most
//! 8 KiB, no whitespace or control characters, never one of our own
//! addresses). IDNA hosts come out normalised to punycode by the parser, and
//! IPv4 short forms (`0`, `127.1`, hex, octal) to dotted quads.
//!
//! The loop guard compares *addresses*, not spellings: a literal IP target
//! is this machine when it is loopback or unspecified (`0.0.0.0`, `::`,
//! also as IPv4-mapped IPv6), and a loop when one of our own hosts is local
//! too and the ports agree. Beyond loops, targets on loopback, private,
//! link-local, shared (CGNAT) or unspecified addresses, and `localhost`
//! names, are refused unless [`TargetRules::allow_private`] is set
//! (`SHORTFLEET_ALLOW_PRIVATE_TARGETS`): a public shortener should not
//! point the world at its operator's internal network.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};
use url::{Host, Url};

pub const MAX_URL_BYTES: usize = shortfleet_common::input::URL_MAX;

/// What a target may not point at.
#[derive(Debug, Clone, Default)]
pub struct TargetRules {
    /// The shortener's own public hosts (`host` or `host:port`).
    pub own_hosts: Vec<String>,
    /// Whether loopback, private and link-local targets are allowed.
    pub allow_private: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("is empty")]
    Empty,
    #[error("is longer than 8 KiB")]
    TooLong,
    #[error("contains whitespace or control characters")]
    ControlCharacters,
    #[error("is not an absolute URL: {0}")]
    Unparsable(String),
    #[error("must use http or https")]
    Scheme,
    #[error("must have a host")]
    NoHost,
    #[error("may not carry credentials")]
    Credentials,
    #[error("points at this shortener (redirect loop)")]
    Loop,
    #[error("points at a loopback, private or link-local address")]
    Private,
}

/// A host as compared by the loop guard.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// This machine: loopback, unspecified, or a `localhost` name.
    Local,
    Ip(IpAddr),
    Name(String),
}

impl Place {
    fn of(host: &Host<&str>) -> Self {
        match host {
            Host::Ipv4(v4) => Self::of_ip(IpAddr::V4(*v4)),
            Host::Ipv6(v6) => Self::of_ip(IpAddr::V6(*v6)),
            Host::Domain(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if name == "localhost" || name.ends_with(".localhost") {
                    Self::Local
                } else {
                    Self::Name(name)
                }
            }
        }
    }

    fn of_ip(ip: IpAddr) -> Self {
        let ip = canonical(ip);
        if ip.is_loopback() || ip.is_unspecified() {
            Self::Local
        } else {
            Self::Ip(ip)
        }
    }

    /// Parses one of our own `host[:port]` entries.
    fn own(entry: &str) -> Option<(Self, Option<u16>)> {
        let url = Url::parse(&format!("http://{entry}")).ok()?;
        Some((Self::of(&url.host()?), url.port()))
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn is_private(place: &Place) -> bool {
    match place {
        Place::Local => true,
        Place::Name(_) => false,
        Place::Ip(IpAddr::V4(v4)) => is_private_v4(*v4),
        Place::Ip(IpAddr::V6(v6)) => is_private_v6(*v6),
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
}

impl TargetUrl {
    /// Parses `raw` under `rules`.
    pub fn parse(raw: &str, rules: &TargetRules) -> Result<Self, UrlError> {
        if raw.is_empty() {
            return Err(UrlError::Empty);
        }
        if raw.len() > MAX_URL_BYTES {
            return Err(UrlError::TooLong);
        }
        // The parser would silently strip some of these; refuse them instead
        // so a user never gets a link to something other than what they sent.
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UrlError::ControlCharacters);
        }
        let url = Url::parse(raw).map_err(|e| UrlError::Unparsable(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlError::Scheme);
        }
        let host = match url.host() {
            None | Some(Host::Domain("")) => return Err(UrlError::NoHost),
            Some(h) => h,
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        let place = Place::of(&host);
        let port = url.port_or_known_default();
        let is_own = |entry: &String| match Place::own(entry) {
            Some((own, own_port)) => own == place && (own_port.is_none() || own_port == port),
            None => false,
        };
        if rules.own_hosts.iter().any(is_own) {
            return Err(UrlError::Loop);
        }
        if !rules.allow_private && is_private(&place) {
            return Err(UrlError::Private);
        }
        let normalised = url.to_string();
        if normalised.len() > MAX_URL_BYTES {
            return Err(UrlError::TooLong);
        }
        Ok(Self(normalised))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn own() -> TargetRules {
        TargetRules {
            own_hosts: vec!["sho.rt".into(), "127.0.0.1:8080".into()],
            allow_private: true,
        }
    }

    fn public() -> TargetRules {
        TargetRules {
            allow_private: false,
            ..own()
        }
    }

    #[test]
    fn loops_are_found_by_address_and_port_whatever_the_spelling() {
        let o = own();
        for looped in [
            "http://0.0.0.0:8080/x",
            "http://0:8080/x",
            "http://127.1:8080/x",
            "http://0x7f000001:8080/x",
            "http://[::ffff:127.0.0.1]:8080/x",
            "http://[::1]:8080/x",
            "http://[::]:8080/x",
            "http://localhost:8080/x",
            "http://LOCALHOST.:8080/x",
            "http://sho.rt./x",
        ] {
            assert_eq!(
                TargetUrl::parse(looped, &o),
                Err(UrlError::Loop),
                "{looped}"
            );
        }
        assert!(TargetUrl::parse("http://[::1]:9999/x", &o).is_ok());
    }

    #[test]
    fn private_targets_are_refused_unless_allowed() {
        for private in [
            "http://10.0.0.1/",
            "http://192.168.1.1/",
            "http://172.16.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://localhost:3000/",
            "http://127.0.0.1:9999/",
        ] {
            assert_eq!(
                TargetUrl::parse(private, &public()),
                Err(UrlError::Private),
                "{private}"
            );
            assert!(TargetUrl::parse(private, &own()).is_ok(), "{private}");
        }
        assert!(TargetUrl::parse("http://8.8.8.8/", &public()).is_ok());
        assert!(TargetUrl::parse("https://example.com/", &public()).is_ok());
    }

    #[test]
    fn accepts_plain_http_and_https() {
        let u = TargetUrl::parse("https://example.com/x?y=1#z", &own()).unwrap();
        assert_eq!(u.as_str(), "https://example.com/x?y=1#z");
        assert!(TargetUrl::parse("http://example.com", &own()).is_ok());
    }

    #[test]
    fn normalises_international_hosts_to_punycode() {
        let u = TargetUrl::parse("https://bücher.example/", &own()).unwrap();
        assert_eq!(u.as_str(), "https://xn--bcher-kva.example/");
    }

    #[test]
    fn refuses_what_the_contract_refuses() {
        let o = own();
        assert_eq!(TargetUrl::parse("", &o), Err(UrlError::Empty));
        assert_eq!(
            TargetUrl::parse("ftp://example.com", &o),
            Err(UrlError::Scheme)
        );
        assert_eq!(
            TargetUrl::parse("javascript:alert(1)", &o),
            Err(UrlError::Scheme)
        );
        assert!(matches!(
            TargetUrl::parse("/relative", &o),
            Err(UrlError::Unparsable(_))
        ));
        assert_eq!(
            TargetUrl::parse("https://exa mple.com", &o),
            Err(UrlError::ControlCharacters)
        );
        assert_eq!(
            TargetUrl::parse("https://example.com/\n", &o),
            Err(UrlError::ControlCharacters)
        );
        assert_eq!(
            TargetUrl::parse("https://SHO.RT/abc", &o),
            Err(UrlError::Loop)
        );
        assert_eq!(
            TargetUrl::parse("http://127.0.0.1:8080/abc", &o),
            Err(UrlError::Loop)
        );
        assert!(TargetUrl::parse("http://127.0.0.1:9999/abc", &o).is_ok());
        assert_eq!(
            TargetUrl::parse("https://u:p@example.com", &o),
            Err(UrlError::Credentials)
        );
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert_eq!(TargetUrl::parse(&long, &o), Err(UrlError::TooLong));
    }

    proptest! {
        #[test]
        fn never_panics_and_accepted_urls_are_http(s in "\\PC{0,200}") {
            if let Ok(u) = TargetUrl::parse(&s, &own()) {
                prop_assert!(u.as_str().starts_with("http://") || u.as_str().starts_with("https://"));
            }
        }
    }
}
