//! What a click's user agent and referrer say: bot or human, browser, OS,
//! device class, referrer host. A small, honest classifier: the common
//! families by their documented tokens, "Other" for the rest.
//!
//! Shared because two sides must agree: analytics names a click's browser,
//! OS and device with it, and a redirect rule's `device`/`os`/`browser`
//! (validated by write-svc against [`DEVICES`], [`OSES`], [`BROWSERS`],
//! matched by the gateway through [`rule_key`]) means the same families.

/// Tokens of crawlers, link previewers, monitors and HTTP libraries: a
/// human does not send these. Matched case-insensitively.
const BOT_MARKERS: &[&str] = &[
    "bot",
    "crawl",
    "spider",
    "slurp",
    "preview",
    "facebookexternalhit",
    "embedly",
    "headless",
    "lighthouse",
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "go-http-client",
    "okhttp",
    "java/",
    "libwww",
    "httpclient",
    "axios/",
    "node-fetch",
    "monitor",
    "pingdom",
    "uptime",
    "scan",
    "whatsapp",
    "skypeuripreview",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub bot: bool,
    pub browser: &'static str,
    pub os: &'static str,
    pub device: &'static str,
}

/// The values a redirect rule's `when.device` may take.
pub const DEVICES: &[&str] = &["mobile", "tablet", "desktop"];
/// The values a redirect rule's `when.os` may take ([`rule_key`] of the
/// OS names [`classify`] gives).
pub const OSES: &[&str] = &["android", "ios", "windows", "macos", "chromeos", "linux"];
/// The values a redirect rule's `when.browser` may take.
pub const BROWSERS: &[&str] = &[
    "chrome",
    "firefox",
    "safari",
    "edge",
    "opera",
    "samsung-internet",
];

/// A classified name as a rule names it: "Samsung Internet" →
/// "samsung-internet", "iOS" → "ios". Allocation-free comparison with a
/// rule's stored (already lower-case) value.
pub fn rule_key_is(name: &str, key: &str) -> bool {
    name.len() == key.len()
        && name.bytes().zip(key.bytes()).all(|(n, k)| {
            (if n == b' ' {
                b'-'
            } else {
                n.to_ascii_lowercase()
            }) == k
        })
}

/// [`rule_key_is`]'s key, owned (tests and documentation).
pub fn rule_key(name: &str) -> String {
    name.to_ascii_lowercase().replace(' ', "-")
}

pub fn classify(user_agent: &str) -> Agent {
    let ua = user_agent.to_ascii_lowercase();
    let bot = ua.trim().is_empty() || BOT_MARKERS.iter().any(|m| ua.contains(m));
    let browser = if ua.contains("edg/") || ua.contains("edge/") {
        "Edge"
    } else if ua.contains("opr/") || ua.contains("opera") {
        "Opera"
    } else if ua.contains("samsungbrowser") {
        "Samsung Internet"
    } else if ua.contains("firefox/") || ua.contains("fxios") {
        "Firefox"
    } else if ua.contains("chrome/") || ua.contains("crios") || ua.contains("chromium") {
        "Chrome"
    } else if ua.contains("safari/") {
        "Safari"
    } else {
        "Other"
    };
    let os = if ua.contains("android") {
        "Android"
    } else if ua.contains("iphone") || ua.contains("ipad") || ua.contains("ipod") {
        "iOS"
    } else if ua.contains("windows") {
        "Windows"
    } else if ua.contains("mac os x") || ua.contains("macintosh") {
        "macOS"
    } else if ua.contains("cros") {
        "ChromeOS"
    } else if ua.contains("linux") {
        "Linux"
    } else {
        "Other"
    };
    let device = if bot {
        "bot"
    } else if ua.contains("ipad")
        || ua.contains("tablet")
        || (ua.contains("android") && !ua.contains("mobile"))
    {
        "tablet"
    } else if ua.contains("mobi") || ua.contains("iphone") {
        "mobile"
    } else {
        "desktop"
    };
    Agent {
        bot,
        browser,
        os,
        device,
    }
}

/// The referrer's host ("direct" when none or unparsable), lower-cased.
pub fn referrer_host(referrer: &str) -> String {
    let rest = match referrer.split_once("://") {
        Some((_, rest)) => rest,
        None => return "direct".into(),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = host.split(':').next().unwrap_or("").trim_end_matches('.');
    if host.is_empty() {
        "direct".into()
    } else {
        host.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_common_browsers() {
        let chrome_win = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
        assert_eq!(
            classify(chrome_win),
            Agent {
                bot: false,
                browser: "Chrome",
                os: "Windows",
                device: "desktop"
            }
        );
        let safari_iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
        assert_eq!(
            classify(safari_iphone),
            Agent {
                bot: false,
                browser: "Safari",
                os: "iOS",
                device: "mobile"
            }
        );
        let firefox_linux =
            "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
        assert_eq!(classify(firefox_linux).browser, "Firefox");
        assert_eq!(classify(firefox_linux).os, "Linux");
        let edge =
            "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Chrome/120.0 Safari/537.36 Edg/120.0";
        assert_eq!(classify(edge).browser, "Edge");
        let tablet = "Mozilla/5.0 (Linux; Android 13; SM-X200) AppleWebKit/537.36 Chrome/120.0 Safari/537.36";
        assert_eq!(classify(tablet).device, "tablet");
    }

    #[test]
    fn flags_bots_previews_and_tools() {
        for ua in [
            "Googlebot/2.1 (+http://www.google.com/bot.html)",
            "facebookexternalhit/1.1",
            "Slackbot-LinkExpanding 1.0",
            "curl/8.5.0",
            "python-requests/2.31",
            "",
        ] {
            assert!(classify(ua).bot, "{ua:?}");
            assert_eq!(classify(ua).device, "bot");
        }
    }

    #[test]
    fn every_classified_name_is_in_the_rule_vocabulary() {
        for ua in [
            "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 SamsungBrowser/23.0 Chrome/115.0 Mobile Safari/537.36",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Version/17.0 Safari/605.1.15",
            "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 Chrome/120.0 Safari/537.36 OPR/100",
        ] {
            let a = classify(ua);
            assert!(BROWSERS.contains(&rule_key(a.browser).as_str()), "{a:?}");
            assert!(OSES.contains(&rule_key(a.os).as_str()), "{a:?}");
            assert!(DEVICES.contains(&a.device), "{a:?}");
            assert!(rule_key_is(a.browser, &rule_key(a.browser)));
        }
        assert!(rule_key_is("Samsung Internet", "samsung-internet"));
        assert!(!rule_key_is("Chrome", "chromeos"));
    }

    #[test]
    fn referrer_hosts() {
        assert_eq!(
            referrer_host("https://News.Example.com:443/a?b#c"),
            "news.example.com"
        );
        assert_eq!(referrer_host("http://user@t.co/x"), "t.co");
        assert_eq!(referrer_host(""), "direct");
        assert_eq!(referrer_host("not a url"), "direct");
    }
}
