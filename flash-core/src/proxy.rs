//! Listeners behind a load balancer: which ones expect a PROXY protocol
//! header (parsed by [`flash_http::parse_proxy_header`]) at the start of
//! every connection, and which peers may send one.
//!
//! A PROXY header names the client, so whoever may send one may claim any
//! address; only peers in the trusted networks get that far. A connection
//! from anywhere else to a PROXY listener is closed as soon as it is
//! accepted, before a byte is read.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Which listeners expect a PROXY header, and from whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// Indices (in the `listeners` given to `Server::new`) of the listeners
    /// whose connections must start with a PROXY header (v1 or v2).
    pub listeners: Vec<usize>,
    /// Peers allowed to connect to those listeners.
    pub trusted: Vec<Cidr>,
}

impl Default for ProxyProtocol {
    /// No PROXY listener; trusted: the loopback networks.
    fn default() -> ProxyProtocol {
        ProxyProtocol {
            listeners: Vec::new(),
            trusted: default_trusted(),
        }
    }
}

/// `127.0.0.0/8` and `::1/128`: a proxy on the same host.
pub fn default_trusted() -> Vec<Cidr> {
    vec![
        Cidr {
            network: IpAddr::from([127, 0, 0, 0]),
            prefix: 8,
        },
        Cidr {
            network: IpAddr::V6(Ipv6Addr::LOCALHOST),
            prefix: 128,
        },
    ]
}

impl ProxyProtocol {
    /// Whether connections to listener `index` start with a PROXY header.
    pub fn expects_header(&self, index: usize) -> bool {
        self.listeners.contains(&index)
    }

    /// Whether `peer` may send a PROXY header.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(peer))
    }
}

/// An IP network: `10.0.0.0/8`, `2001:db8::/32`, or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The network address, host bits cleared.
    network: IpAddr,
    /// Length of the prefix in bits.
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address
    /// (`::ffff:127.0.0.1`, how a dual-stack listener sees an IPv4 peer)
    /// counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u128::from(u32::from(ip)), 32, self.prefix) == u128::from(u32::from(net))
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(u128::from(ip), 128, self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// `bits` with all but the first `prefix` of its `width` bits cleared.
fn mask(bits: u128, width: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        bits & (u128::MAX << (width - prefix)) & (u128::MAX >> (128 - u32::from(width)))
    }
}

/// Why a network could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrError(String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid network {:?} (expected ADDRESS/PREFIX such as 10.0.0.0/8 or fd00::/8, or an address)",
            self.0
        )
    }
}

impl std::error::Error for CidrError {}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `ADDRESS/PREFIX` or a bare address (the one host). Host bits set
    /// below the prefix are cleared (`10.1.2.3/8` is `10.0.0.0/8`), as
    /// nginx's `set_real_ip_from` does.
    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError(text.to_owned());
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let width: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
            None => width,
        };
        if prefix > width {
            return Err(bad());
        }
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(
                u32::try_from(mask(u128::from(u32::from(a)), 32, prefix)).map_err(|_| bad())?,
            )),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(mask(u128::from(a), 128, prefix))),
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_contain() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.255.1.2")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("::1")));
        assert_eq!(cidr("10.1.2.3/8"), net);
        assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert!(cidr("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!cidr("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.1")));
        assert!(!cidr("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        let v6 = cidr("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(cidr("::1/128").contains(ip("::1")));
        // A dual-stack listener's view of an IPv4 peer.
        assert!(cidr("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/+8",
            "x/8",
            "10.0.0/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn default_trusts_loopback_only() {
        let policy = ProxyProtocol::default();
        assert!(policy.trusts(ip("127.0.0.1")));
        assert!(policy.trusts(ip("127.8.9.10")));
        assert!(policy.trusts(ip("::1")));
        assert!(!policy.trusts(ip("10.0.0.1")));
        assert!(!policy.trusts(ip("::2")));
        assert!(!policy.expects_header(0));
    }
}
