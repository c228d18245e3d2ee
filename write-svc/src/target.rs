//! Target URLs: parsed with the `url` crate into a [`TargetUrl`], whose only
//! constructor enforces the contract (absolute http/https, a host, at most
//! 8 KiB, no whitespace or control characters, never one of our own hosts).
//! IDNA hosts come out normalised to punycode by the parser.

use std::fmt;
use url::{Host, Url};

pub const MAX_URL_BYTES: usize = 8 * 1024;

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
}

impl TargetUrl {
    /// Parses `raw`; `own_hosts` are the shortener's public host names, which
    /// a target may never point at.
    pub fn parse(raw: &str, own_hosts: &[String]) -> Result<Self, UrlError> {
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
            None => return Err(UrlError::NoHost),
            Some(Host::Domain("")) => return Err(UrlError::NoHost),
            Some(h) => h.to_string(),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        let host_norm = host.trim_end_matches('.').to_ascii_lowercase();
        let authority = match url.port() {
            Some(p) => format!("{host_norm}:{p}"),
            None => host_norm.clone(),
        };
        if own_hosts
            .iter()
            .any(|own| own.eq_ignore_ascii_case(&host_norm) || own.eq_ignore_ascii_case(&authority))
        {
            return Err(UrlError::Loop);
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

    fn own() -> Vec<String> {
        vec!["sho.rt".into(), "127.0.0.1:8080".into()]
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
