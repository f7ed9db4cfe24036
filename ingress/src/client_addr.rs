//! The public client's address: the connection's own, unless the connection comes from a
//! trusted proxy (`trusted_proxies`), whose `X-Forwarded-For` then names the client.
//!
//! The chain is read from the right, where the trusted hops appended: the first address that is
//! not a trusted proxy is the client. Whatever a client writes at the left of the chain is never
//! believed, and a connection from anywhere else is judged by its own address alone.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The networks whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

/// The network `ip` is in, as audit records keep it when full addresses must not be stored:
/// `203.0.113.0/24` for IPv4, `2001:db8:1::/48` for IPv6 (an IPv4-mapped IPv6 address counts as
/// IPv4).
pub fn truncated(ip: std::net::IpAddr) -> String {
    let ip = ip.to_canonical();
    let prefix = if ip.is_ipv4() { 24 } else { 48 };
    IpNet::new(ip, prefix).map_or_else(|_| ip.to_string(), |net| net.trunc().to_string())
}

impl TrustedProxies {
    /// Parses a comma-separated list of networks or addresses (empty: trust none).
    ///
    /// # Errors
    /// The entry that is neither a network nor an address.
    pub fn parse(list: &str) -> Result<Self, String> {
        let entries = list.split(',').map(str::trim).filter(|entry| !entry.is_empty());
        entries
            .map(|entry| {
                tunnel_schemas::policy::normalize_cidr(entry)
                    .map_err(|e| e.to_string())
                    .and_then(|net| net.parse::<IpNet>().map_err(|e| e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind a connection from `peer` carrying `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if self.0.is_empty() || !self.trusts(client) {
            return client;
        }
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .flat_map(|field| field.to_str().unwrap_or("").rsplit(',').map(str::trim).collect::<Vec<_>>());
        for hop in hops {
            let Ok(ip) = hop.parse::<IpAddr>() else { break };
            client = ip.to_canonical();
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_network_only() {
        let ip = |text: &str| text.parse::<IpAddr>().expect("address");
        assert_eq!(truncated(ip("203.0.113.77")), "203.0.113.0/24");
        assert_eq!(truncated(ip("2001:db8:1:2:3::9")), "2001:db8:1::/48");
        assert_eq!(truncated(ip("::ffff:198.51.100.9")), "198.51.100.0/24");
    }

    fn headers(chains: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for chain in chains {
            map.append("x-forwarded-for", chain.parse().expect("value"));
        }
        map
    }

    #[test]
    fn only_trusted_hops_are_believed() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.168.1.1").expect("valid");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let lb = ip("10.0.0.5");
        assert_eq!(trusted.client(lb, &headers(&["203.0.113.9"])), ip("203.0.113.9"));
        assert_eq!(
            trusted.client(lb, &headers(&["1.1.1.1, 203.0.113.9, 192.168.1.1"])),
            ip("203.0.113.9"),
            "a spoofed left end is skipped; the trusted hop at the right is passed"
        );
        assert_eq!(trusted.client(lb, &headers(&["1.1.1.1", "203.0.113.9"])), ip("203.0.113.9"), "fields in order");
        assert_eq!(
            trusted.client(ip("8.8.8.8"), &headers(&["10.0.0.1"])),
            ip("8.8.8.8"),
            "untrusted peers are judged alone"
        );
        assert_eq!(trusted.client(lb, &HeaderMap::new()), lb, "no header: the proxy itself");
        assert_eq!(trusted.client(lb, &headers(&["junk, 203.0.113.9"])), ip("203.0.113.9"));
        assert_eq!(trusted.client(lb, &headers(&["203.0.113.9, junk"])), lb, "an unreadable hop ends the walk");
        assert_eq!(TrustedProxies::default().client(lb, &headers(&["203.0.113.9"])), lb, "nobody trusted by default");
        assert!(TrustedProxies::parse("10.0.0.0/99").is_err());
    }
}
