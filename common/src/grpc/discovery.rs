//! Where a backend's endpoints are: the targets of a `SHORTFLEET_*_URL`
//! setting (one URL or a comma-separated list) and the addresses their
//! names resolve to, re-resolved every `SHORTFLEET_DNS_REFRESH_MS` so a
//! Kubernetes headless Service's pods come and go from the set.
//!
//! What happens when DNS is down or wrong: a lookup that fails, times out
//! or answers nothing keeps that name's last good addresses (an empty set
//! could only fail every call, while the last set may still answer), and
//! the failure is logged and counted. A name that never resolved yet has no
//! endpoints: calls wait for the first answer up to their deadline, then
//! fail UNAVAILABLE.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;
use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
};

use crate::config::ConfigReader;

/// The longest a single lookup may take before the last answer is kept.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(2);

/// How names are resolved, the same for every backend of a process.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// How often names are looked up again.
    pub refresh: Duration,
    /// A DNS server to ask instead of the system's (`/etc/resolv.conf`).
    pub dns_server: Option<SocketAddr>,
}

impl Default for Discovery {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(5),
            dns_server: None,
        }
    }
}

impl Discovery {
    /// `SHORTFLEET_DNS_REFRESH_MS` (default 5000) and `SHORTFLEET_DNS_SERVER`
    /// (an `ip:port`; default: the system's resolver configuration).
    pub fn read(r: &mut ConfigReader) -> Self {
        let refresh = r.millis("SHORTFLEET_DNS_REFRESH_MS", 5000);
        if refresh < Duration::from_millis(100) {
            r.invalid("SHORTFLEET_DNS_REFRESH_MS", "must be at least 100");
        }
        let dns_server = match r.raw("SHORTFLEET_DNS_SERVER") {
            None | Some("") => None,
            Some(raw) => match raw.parse() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    let raw = raw.to_owned();
                    r.invalid("SHORTFLEET_DNS_SERVER", format!("{raw:?} is not ip:port"));
                    None
                }
            },
        };
        Self {
            refresh,
            dns_server,
        }
    }

    /// The resolver for names: the configured server, else the system's
    /// (`/etc/resolv.conf`, `/etc/hosts`).
    pub(crate) fn resolver(&self) -> anyhow::Result<TokioResolver> {
        let mut builder = match self.dns_server {
            Some(server) => {
                let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
                for connection in &mut name_server.connections {
                    connection.port = server.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![name_server]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().unwrap_or_else(|e| {
                // No usable /etc/resolv.conf (a bare container): names
                // from /etc/hosts still resolve; others fail each lookup.
                tracing::warn!(error = %e, "no system DNS configuration; using /etc/hosts only");
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(Vec::new()),
                    TokioRuntimeProvider::default(),
                )
            }),
        };
        // An answer is never trusted for longer than one refresh, whatever
        // its TTL: the refresh interval is the promise operators read.
        builder.options_mut().positive_max_ttl = Some(self.refresh);
        builder.options_mut().timeout = LOOKUP_DEADLINE / 2;
        builder.build().context("building the DNS resolver")
    }
}

/// One entry of a backend setting: `http(s)://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub https: bool,
    pub host: Host,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Parses a setting's value: one URL or a comma-separated list, all of one
/// scheme (mixing plaintext and TLS endpoints of one backend is a mistake).
pub(crate) fn parse_targets(value: &str) -> anyhow::Result<Vec<Target>> {
    let targets = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_target)
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!targets.is_empty(), "no URL given");
    anyhow::ensure!(
        targets.iter().all(|t| t.https == targets[0].https),
        "every URL of one backend must use the same scheme"
    );
    Ok(targets)
}

fn parse_target(url: &str) -> anyhow::Result<Target> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => anyhow::bail!("{url:?} must start with http:// or https://"),
    };
    anyhow::ensure!(
        matches!(uri.path(), "" | "/") && uri.query().is_none(),
        "{url:?}: a gRPC backend URL has no path"
    );
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .with_context(|| format!("{url:?} has no host"))?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let host = match literal.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Name(host.to_owned()),
    };
    Ok(Target { https, host, port })
}

/// The addresses of one target now: an IP literal is itself; a name is
/// looked up (within [`LOOKUP_DEADLINE`]). `Err` means "no answer to use".
pub(crate) async fn resolve(
    target: &Target,
    resolver: Option<&TokioResolver>,
) -> anyhow::Result<Vec<SocketAddr>> {
    let name = match &target.host {
        Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, target.port)]),
        Host::Name(name) => name,
    };
    let resolver = resolver.context("no DNS resolver configured")?;
    let answer = tokio::time::timeout(LOOKUP_DEADLINE, resolver.lookup_ip(name.as_str()))
        .await
        .with_context(|| format!("looking up {name} timed out"))?
        .with_context(|| format!("looking up {name}"))?;
    let mut addrs: Vec<SocketAddr> = answer
        .iter()
        .map(|ip| SocketAddr::new(ip, target.port))
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    anyhow::ensure!(!addrs.is_empty(), "{name} has no addresses");
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_urls_is_parsed_into_targets() {
        let targets =
            parse_targets("http://10.0.0.1:9001, http://read-svc.ns.svc:9001,http://[::1]:7")
                .unwrap();
        assert_eq!(
            targets,
            vec![
                Target {
                    https: false,
                    host: Host::Ip("10.0.0.1".parse().unwrap()),
                    port: 9001
                },
                Target {
                    https: false,
                    host: Host::Name("read-svc.ns.svc".into()),
                    port: 9001
                },
                Target {
                    https: false,
                    host: Host::Ip("::1".parse().unwrap()),
                    port: 7
                },
            ]
        );
    }

    #[test]
    fn a_missing_port_is_the_scheme_default() {
        assert_eq!(parse_targets("https://svc").unwrap()[0].port, 443);
        assert_eq!(parse_targets("http://svc").unwrap()[0].port, 80);
    }

    #[test]
    fn bad_lists_are_refused_with_a_reason() {
        for (value, why) in [
            ("", "no URL"),
            (" , ", "no URL"),
            ("grpc://svc:1", "http:// or https://"),
            ("svc:1", "http:// or https://"),
            ("http://svc:1/path", "no path"),
            ("http://a:1,https://b:1", "same scheme"),
            ("http://:1", "no host"),
            ("http://a b:1", "not a URL"),
        ] {
            let err = format!("{:#}", parse_targets(value).unwrap_err());
            assert!(err.contains(why), "{value:?}: {err}");
        }
    }

    #[tokio::test]
    async fn an_ip_literal_needs_no_resolver() {
        let target = &parse_targets("http://127.0.0.9:81").unwrap()[0];
        assert_eq!(
            resolve(target, None).await.unwrap(),
            vec!["127.0.0.9:81".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn a_name_resolves_through_the_system_configuration() {
        let resolver = Discovery::default().resolver().unwrap();
        let target = &parse_targets("http://localhost:50052").unwrap()[0];
        let addrs = resolve(target, Some(&resolver)).await.unwrap();
        assert!(
            addrs.contains(&"127.0.0.1:50052".parse().unwrap()),
            "{addrs:?}"
        );
    }

    #[test]
    fn discovery_settings_are_read_and_checked() {
        let read = |pairs: &[(&str, &str)]| {
            let source = crate::config::ConfigSource::from_pairs(pairs.iter().copied());
            let mut r = source.reader();
            let d = Discovery::read(&mut r);
            r.finish(d)
        };
        assert_eq!(read(&[]).unwrap(), Discovery::default());
        let d = read(&[
            ("SHORTFLEET_DNS_REFRESH_MS", "250"),
            ("SHORTFLEET_DNS_SERVER", "127.0.0.1:5353"),
        ])
        .unwrap();
        assert_eq!(d.refresh, Duration::from_millis(250));
        assert_eq!(d.dns_server, Some("127.0.0.1:5353".parse().unwrap()));
        assert!(read(&[("SHORTFLEET_DNS_REFRESH_MS", "5")]).is_err());
        assert!(read(&[("SHORTFLEET_DNS_SERVER", "localhost")]).is_err());
    }
}
