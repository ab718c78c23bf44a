//! Who a request comes from, behind proxies one trusts.
//!
//! Each proxy appends the address it received the request from to
//! `X-Forwarded-For`; whatever the client wrote comes first and proves
//! nothing. So the chain is read from the right: the TCP peer, then each
//! entry a trusted proxy appended, until the first address that is not one
//! of the trusted proxies — that is the client. A request whose peer is not
//! a trusted proxy is keyed on the peer, whatever it claims. (The way
//! nginx's `real_ip_recursive` and Rails' trusted proxies work.)

use std::net::IpAddr;

use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` entries are believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// No proxy at all: every request is keyed on its peer.
    pub fn none() -> TrustedProxies {
        TrustedProxies(Vec::new())
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Comma-separated networks (`10.0.0.0/8`) or addresses (`10.1.2.3`).
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{s:?} is not an IP address or network"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client of a request that arrived from `peer` with the
    /// `X-Forwarded-For` values `forwarded` (in header order).
    pub fn client<'a>(&self, peer: IpAddr, forwarded: impl IntoIterator<Item = &'a str>) -> IpAddr {
        let mut client = canonical(peer);
        if !self.trusts(client) {
            return client;
        }
        let entries: Vec<&str> = forwarded
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for entry in entries.iter().rev() {
            match parse_entry(entry) {
                Some(ip) => {
                    client = ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                // Garbage where a trusted proxy should have written an
                // address: stop at the last one known.
                None => break,
            }
        }
        client
    }
}

impl std::str::FromStr for TrustedProxies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        TrustedProxies::parse(s)
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port
/// (`203.0.113.7:4711`, `[2001:db8::1]:4711`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| canonical(s.ip()))
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_first_untrusted_address_from_the_right() {
        let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let gateway = ip("10.0.0.5");
        // What the client wrote comes first; the gateway appended the peer.
        for spoofed in ["198.51.100.1", "198.51.100.2, 10.0.0.9", "garbage"] {
            let header = format!("{spoofed}, 203.0.113.7");
            assert_eq!(
                t.client(gateway, [header.as_str()]),
                ip("203.0.113.7"),
                "{header}"
            );
        }
        // Through the gateway and then the web pods: two trusted hops.
        assert_eq!(
            t.client(gateway, ["198.51.100.1, 203.0.113.7, 10.0.0.6"]),
            ip("203.0.113.7")
        );
        // Several header lines count as one list, in order.
        assert_eq!(
            t.client(gateway, ["198.51.100.1", "203.0.113.7:4711"]),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
        assert_eq!(
            t.client(ip("203.0.113.7"), ["10.0.0.1, 198.51.100.1"]),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn a_chain_of_only_proxies_or_with_garbage_stops_at_the_last_address_known() {
        let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
        assert_eq!(t.client(ip("10.0.0.5"), ["10.0.0.7"]), ip("10.0.0.7"));
        assert_eq!(t.client(ip("10.0.0.5"), ["nope, 10.0.0.7"]), ip("10.0.0.7"));
        assert_eq!(t.client(ip("10.0.0.5"), std::iter::empty()), ip("10.0.0.5"));
        assert_eq!(
            t.client(ip("::ffff:10.0.0.5"), ["[2001:db8::1]:80"]),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn trusting_no_proxy_keys_every_request_on_its_peer() {
        let t = TrustedProxies::none();
        assert!(t.is_empty());
        // A client on a private network claiming to be someone else.
        assert_eq!(
            t.client(ip("192.168.1.20"), ["203.0.113.7"]),
            ip("192.168.1.20")
        );
        assert_eq!(t.client(ip("127.0.0.1"), ["203.0.113.7"]), ip("127.0.0.1"));
    }

    #[test]
    fn a_configured_list_is_exact() {
        let t = TrustedProxies::parse("127.0.0.1, 10.1.0.0/16").unwrap();
        assert_eq!(t.client(ip("127.0.0.1"), ["127.0.0.2"]), ip("127.0.0.2"));
        assert_eq!(t.client(ip("127.0.0.2"), ["198.51.100.1"]), ip("127.0.0.2"));
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("example.com").is_err());
    }
}
