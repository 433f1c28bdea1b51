//! Where chatdesk may send to on a tenant's behalf. A generic inbox's outbound URL is chosen by a
//! tenant admin and called by the shared sender from inside the deployment; unchecked, it would
//! reach the deployment's own Redis, PostgreSQL or any internal service (SSRF). So an outbound
//! call goes only to public addresses, unless the operator allows more with
//! `CHATDESK_OUTBOUND_ALLOW` (comma-separated `host:port` or CIDR entries, empty by default).
//!
//! This module decides; the sender enforces it on the addresses it actually connects to (DNS
//! answers are checked, and the connection uses the checked address, so a name cannot rebind to
//! an internal one between the check and the call), and the API checks at `PATCH` time too, for
//! early feedback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// One `CHATDESK_OUTBOUND_ALLOW` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    /// A host name or address, with its port (`receiver.internal:8443`).
    HostPort { host: String, port: u16 },
    /// Any address in a network (`10.1.0.0/16`, `fd00::/8`, `127.0.0.1/32`).
    Network { address: IpAddr, prefix: u8 },
}

/// The operator's outbound policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    allowed: Vec<Allowed>,
}

impl FromStr for OutboundPolicy {
    type Err = String;

    /// Parses `CHATDESK_OUTBOUND_ALLOW`; a mistake names the entry.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut allowed = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            allowed.push(parse_entry(entry).map_err(|reason| format!("{entry:?}: {reason}"))?);
        }
        Ok(Self { allowed })
    }
}

fn parse_entry(entry: &str) -> Result<Allowed, String> {
    if let Some((address, prefix)) = entry.split_once('/') {
        let address: IpAddr = address.parse().map_err(|_| "not an IP network (address/prefix)".to_owned())?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix: u8 =
            prefix.parse().ok().filter(|prefix| *prefix <= bits).ok_or(format!("prefix must be 0 to {bits}"))?;
        return Ok(Allowed::Network { address, prefix });
    }
    let (host, port) = entry.rsplit_once(':').ok_or("expected host:port or address/prefix")?;
    let port: u16 = port.parse().ok().filter(|port| *port > 0).ok_or("the port must be 1 to 65535")?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    Ok(Allowed::HostPort { host, port })
}

/// A list of IP networks (`10.0.0.0/8,fd00::/8`), e.g. the reverse proxies whose
/// `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(Vec<(IpAddr, u8)>);

impl FromStr for Networks {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut networks = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            let network = if entry.contains('/') {
                parse_entry(entry)
            } else {
                // A single address is its own network.
                let address: IpAddr = entry.parse().map_err(|_| format!("{entry:?}: not an IP address or network"))?;
                Ok(Allowed::Network { address, prefix: if address.is_ipv4() { 32 } else { 128 } })
            };
            match network.map_err(|reason| format!("{entry:?}: {reason}"))? {
                Allowed::Network { address, prefix } => networks.push((address, prefix)),
                Allowed::HostPort { .. } => return Err(format!("{entry:?}: expected an address or address/prefix")),
            }
        }
        Ok(Self(networks))
    }
}

impl Networks {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            ip => ip,
        };
        self.0.iter().any(|(network, prefix)| in_network(ip, *network, *prefix))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn in_network(ip: IpAddr, network: IpAddr, prefix: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(network)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(network) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(network)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(network) & mask
        }
        _ => false,
    }
}

/// Whether `ip` is an address of the public internet: not loopback, private, link-local,
/// unique-local, shared (CGNAT), unspecified, multicast, broadcast, documentation or benchmarking,
/// and for IPv6 the same judged on an embedded IPv4 address (mapped, compatible, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4
    // address a gateway may deliver to.
    let embedded = |high: u16, low: u16| Ipv4Addr::new((high >> 8) as u8, high as u8, (low >> 8) as u8, low as u8);
    if segments[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback() {
        return is_public_v4(embedded(segments[6], segments[7]));
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(segments[6], segments[7]));
    }
    if segments[0] == 0x2002 {
        return is_public_v4(embedded(segments[1], segments[2]));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00
        || (segments[0] & 0xffc0) == 0xfe80
        || (segments[0] & 0xffc0) == 0xfec0
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)
        || (segments[0] == 0x0100 && segments[1..4] == [0, 0, 0]))
}

/// Why a destination is refused (shown to the inbox's admin; it names no internal detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("only http:// and https:// URLs can receive messages")]
    Scheme,
    #[error("the URL has no host")]
    NoHost,
    #[error("the receiver's address is not a public one (the operator can allow it with CHATDESK_OUTBOUND_ALLOW)")]
    NotPublic,
}

impl OutboundPolicy {
    /// Allows one more `host:port` or CIDR entry.
    pub fn allow(&mut self, entry: &str) -> Result<(), String> {
        self.allowed.push(parse_entry(entry).map_err(|reason| format!("{entry:?}: {reason}"))?);
        Ok(())
    }

    /// Whether the operator allowed `host:port` by name.
    pub fn allows_host(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.allowed.iter().any(|allowed| matches!(allowed, Allowed::HostPort { host: allowed_host, port: allowed_port } if *allowed_host == host && *allowed_port == port))
    }

    /// Whether a host named in the allowlist is used with a port the allowlist names for it (a
    /// host not named there has no such constraint).
    pub fn port_fits(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let mut named = self.allowed.iter().filter_map(|allowed| match allowed {
            Allowed::HostPort { host: allowed_host, port: allowed_port } if *allowed_host == host => {
                Some(*allowed_port)
            }
            _ => None,
        });
        let mut any = false;
        let fits = named.any(|allowed_port| {
            any = true;
            allowed_port == port
        });
        fits || !any
    }

    /// Whether a DNS answer `ip` for `host` may be connected to, whatever the port (the port was
    /// checked with [`OutboundPolicy::check_url`] before the lookup).
    pub fn allows_resolved(&self, host: &str, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            IpAddr::V4(_) => ip,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        is_public(ip)
            || self.allowed.iter().any(|allowed| match allowed {
                Allowed::Network { address, prefix } => in_network(ip, *address, *prefix),
                Allowed::HostPort { host: allowed_host, .. } => *allowed_host == host,
            })
    }

    /// Whether a connection to `ip` (reached as `host:port`) is allowed.
    pub fn allows(&self, host: &str, ip: IpAddr, port: u16) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            IpAddr::V4(_) => ip,
        };
        is_public(ip)
            || self.allows_host(host, port)
            || self.allowed.iter().any(|allowed| match allowed {
                Allowed::Network { address, prefix } => in_network(ip, *address, *prefix),
                Allowed::HostPort { host: allowed_host, port: allowed_port } => {
                    *allowed_port == port && allowed_host.parse::<IpAddr>().is_ok_and(|allowed| allowed == ip)
                }
            })
    }

    /// Checks what can be checked of a URL without resolving it: the scheme, and an address
    /// written in it. Returns the host and port to resolve.
    pub fn check_url<'a>(&self, scheme: &str, host: Option<&'a str>, port: u16) -> Result<(&'a str, u16), Refused> {
        if !matches!(scheme, "http" | "https") {
            return Err(Refused::Scheme);
        }
        let host = host.filter(|host| !host.is_empty()).ok_or(Refused::NoHost)?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        // An address written in the URL is decided here, port and all: a network entry allows it
        // on every port, even when another entry names the same address with one port.
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return if self.allows(bare, ip, port) { Ok((host, port)) } else { Err(Refused::NotPublic) };
        }
        // A name is resolved later, where ports are no longer known: a name the allowlist names
        // with a port is held to that port now.
        if !self.port_fits(bare, port) {
            return Err(Refused::NotPublic);
        }
        Ok((host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn internal_addresses_in_every_spelling_are_not_public() {
        for internal in [
            "127.0.0.1",
            "127.8.9.10",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip(internal)), "{internal} counted as public");
        }
        for public in ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip(public)), "{public} counted as internal");
        }
    }

    #[test]
    fn the_allowlist_opens_exactly_what_it_names() {
        let policy: OutboundPolicy = "receiver.internal:8443, 10.1.0.0/16, 127.0.0.1:9000".parse().unwrap();
        assert!(policy.allows("receiver.internal", ip("10.9.9.9"), 8443));
        assert!(!policy.allows("receiver.internal", ip("10.9.9.9"), 8444));
        assert!(policy.allows("anything", ip("10.1.200.3"), 6379));
        assert!(!policy.allows("anything", ip("10.2.0.1"), 80));
        assert!(policy.allows("127.0.0.1", ip("127.0.0.1"), 9000));
        assert!(!policy.allows("127.0.0.1", ip("127.0.0.1"), 6379), "the deployment's Redis stays out");
        assert!(!OutboundPolicy::default().allows("localhost", ip("127.0.0.1"), 80));
        assert!(policy.allows_resolved("receiver.internal", ip("10.9.9.9")));
        assert!(!policy.allows_resolved("other.internal", ip("10.9.9.9")));
        assert!(policy.allows_resolved("other.internal", ip("10.1.9.9")));
        assert_eq!(policy.check_url("https", Some("receiver.internal"), 6379), Err(Refused::NotPublic));
        assert!(policy.check_url("https", Some("receiver.internal"), 8443).is_ok());
        // A network entry and a host:port entry for an address inside it: the network decides.
        let both: OutboundPolicy = "127.0.0.1/32, 127.0.0.1:9000".parse().unwrap();
        assert!(both.check_url("http", Some("127.0.0.1"), 18999).is_ok());
        assert_eq!(policy.check_url("http", Some("127.0.0.1"), 6379), Err(Refused::NotPublic));
        for bad in ["10.0.0.0/33", "host", "host:0", ":80", "::1/129"] {
            assert!(bad.parse::<OutboundPolicy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_checked_before_any_lookup() {
        let policy = OutboundPolicy::default();
        assert_eq!(policy.check_url("ftp", Some("example.com"), 21), Err(Refused::Scheme));
        assert_eq!(policy.check_url("http", Some("127.0.0.1"), 6379), Err(Refused::NotPublic));
        assert_eq!(policy.check_url("http", Some("[::ffff:7f00:1]"), 80), Err(Refused::NotPublic));
        assert_eq!(policy.check_url("https", Some("example.com"), 443), Ok(("example.com", 443)));
    }
}
