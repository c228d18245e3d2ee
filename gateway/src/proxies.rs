//! Who the client is: the socket peer, or — behind load balancers and CDNs
//! the operator trusts — the address they report in `X-Forwarded-For`.

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use http::HeaderMap;
use ipnet::IpNet;

/// The networks whose `X-Forwarded-For` (and country header) we believe:
/// single addresses or CIDR blocks, e.g. `10.0.0.0/8, 2001:db8::/32,
/// 192.0.2.10`.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    /// Comma-separated; every bad entry is named.
    fn from_str(raw: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        let mut bad = Vec::new();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            // A bare address is a /32 (or /128).
            match entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(net) => nets.push(net.trunc()),
                Err(_) => bad.push(format!("{entry:?}")),
            }
        }
        if bad.is_empty() {
            Ok(Self(nets))
        } else {
            Err(format!(
                "{} is not an IP address or CIDR block",
                bad.join(", ")
            ))
        }
    }
}

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the socket peer, unless the peer is a trusted
    /// proxy, in which case the right-most untrusted `X-Forwarded-For`
    /// entry (entries further left could be forged by the client). A
    /// malformed entry stops the walk at the last trusted hop. Also says
    /// whether the peer was a trusted proxy (whose other headers, such as a
    /// country, may then be believed too).
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> Client {
        let peer_ip = peer.ip().to_canonical();
        if !self.contains(peer_ip) {
            return Client {
                ip: peer_ip,
                via_trusted_proxy: false,
            };
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut ip = peer_ip;
        for entry in forwarded.iter().rev() {
            match entry.parse::<IpAddr>() {
                Ok(hop) if self.contains(hop) => ip = hop.to_canonical(),
                Ok(client) => {
                    ip = client.to_canonical();
                    break;
                }
                Err(_) => break,
            }
        }
        Client {
            ip,
            via_trusted_proxy: true,
        }
    }
}

/// Who sent a request, as far as we can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub ip: IpAddr,
    /// The socket peer is a trusted proxy.
    pub via_trusted_proxy: bool,
}

impl Client {
    /// The address as `Display` writes it: the rate limiter's subject and
    /// the click's `client_ip`, on every redirect. An IPv4 address (nearly
    /// every client) is written octet by octet with `itoa`, since
    /// `Display` goes through a padded scratch buffer and was 1.6 % of a
    /// redirect's CPU.
    pub fn ip_text(&self) -> String {
        match self.ip {
            IpAddr::V4(v4) => {
                let mut text = String::with_capacity(15);
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push('.');
                    }
                    text.push_str(itoa::Buffer::new().format(octet));
                }
                text
            }
            IpAddr::V6(v6) => v6.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    proptest::proptest! {
        #[test]
        fn ip_text_is_what_display_writes(v4: u32, v6: u128) {
            for ip in [
                IpAddr::from(std::net::Ipv4Addr::from(v4)),
                IpAddr::from(std::net::Ipv6Addr::from(v6)),
                IpAddr::from(std::net::Ipv4Addr::from(v4).to_ipv6_mapped()),
            ] {
                let client = Client { ip, via_trusted_proxy: false };
                proptest::prop_assert_eq!(client.ip_text(), ip.to_string());
            }
        }
    }

    #[test]
    fn ip_text_writes_every_octet_width() {
        for text in ["0.0.0.0", "255.255.255.255", "10.0.100.9", "192.168.1.23"] {
            let client = Client {
                ip: ip(text),
                via_trusted_proxy: true,
            };
            assert_eq!(client.ip_text(), text);
        }
    }

    #[test]
    fn addresses_and_blocks_are_accepted_and_bad_entries_named() {
        let t: TrustedProxies = "10.0.0.0/8, 192.0.2.10 ,2001:db8::/32,".parse().unwrap();
        assert!(t.contains(ip("10.200.3.4")));
        assert!(t.contains(ip("192.0.2.10")));
        assert!(!t.contains(ip("192.0.2.11")));
        assert!(t.contains(ip("2001:db8:ffff::1")));
        assert!(!t.contains(ip("11.0.0.1")));
        // IPv4 clients seen on a dual-stack socket.
        assert!(t.contains(ip("::ffff:10.1.1.1")));
        // Host bits in a block are ignored, as routers do.
        let loose: TrustedProxies = "172.16.5.9/12".parse().unwrap();
        assert!(loose.contains(ip("172.31.0.1")));
        let err = "10.0.0.0/33, nope, 1.2.3.4"
            .parse::<TrustedProxies>()
            .unwrap_err();
        assert!(
            err.contains("\"10.0.0.0/33\"") && err.contains("\"nope\""),
            "{err}"
        );
        assert!(!TrustedProxies::default().contains(ip("127.0.0.1")));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: TrustedProxies = "10.0.0.0/24".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "1.1.1.1, 2.2.2.2, 10.0.0.7".parse().unwrap(),
        );
        let from_proxy: SocketAddr = "10.0.0.1:1234".parse().unwrap();
        // 10.0.0.7 is another trusted hop; 2.2.2.2 is the first it did not add.
        assert_eq!(trusted.client(from_proxy, &headers).ip, ip("2.2.2.2"));
        let direct: SocketAddr = "3.3.3.3:1".parse().unwrap();
        assert_eq!(trusted.client(direct, &headers).ip, ip("3.3.3.3"));
        assert!(trusted.client(from_proxy, &headers).via_trusted_proxy);
        assert!(!trusted.client(direct, &headers).via_trusted_proxy);
        assert_eq!(
            trusted.client(from_proxy, &HeaderMap::new()).ip,
            ip("10.0.0.1")
        );
    }

    #[test]
    fn a_chain_of_only_trusted_hops_or_garbage_ends_at_the_last_trusted_hop() {
        let trusted: TrustedProxies = "10.0.0.0/24".parse().unwrap();
        let from_proxy: SocketAddr = "10.0.0.1:1234".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "10.0.0.9, 10.0.0.8".parse().unwrap());
        assert_eq!(trusted.client(from_proxy, &headers).ip, ip("10.0.0.9"));
        headers.insert(
            "x-forwarded-for",
            "5.5.5.5, garbage, 10.0.0.8".parse().unwrap(),
        );
        assert_eq!(trusted.client(from_proxy, &headers).ip, ip("10.0.0.8"));
    }
}
