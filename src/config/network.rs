//! How attempts' containers reach the network: `ATTEMPT_NETWORK` and `ATTEMPT_NETWORK_ALLOW`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::Reader;

/// `ATTEMPT_NETWORK`: which network an attempt's container joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// `isolated` (the default): a bridge network of the attempt's own, with egress to the internet but not to
    /// private ranges, link-local addresses or the host (firewall rules the worker installs at start-up).
    Isolated,
    /// `none`: no network at all, only loopback.
    None,
    /// `bridge`: Docker's default bridge, shared by every container on the host (the old behaviour; attempts
    /// reach each other and the host's services, so unsafe when tenants share a worker).
    Bridge,
}

/// An IPv4 or IPv6 network written `address/prefix` (a bare address is a `/32` or `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network's address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| ())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| ())?,
            None => max,
        };
        if prefix > max {
            return Err(());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The network settings of attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `ATTEMPT_NETWORK` (`isolated`).
    pub mode: NetworkMode,
    /// `ATTEMPT_NETWORK_ALLOW` (empty): comma-separated CIDRs that isolated attempts may reach although they are
    /// private, link-local or the host (a package proxy on the LAN, say).
    pub allow: Vec<Cidr>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            mode: NetworkMode::Isolated,
            allow: Vec::new(),
        }
    }
}

/// Read the network settings, adding a line to `r`'s problems for each malformed one.
pub(super) fn read(r: &mut Reader<'_>) -> NetworkConfig {
    let mode = match r
        .string("ATTEMPT_NETWORK")
        .map(|v| v.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("isolated") => NetworkMode::Isolated,
        Some("none") => NetworkMode::None,
        Some("bridge") => NetworkMode::Bridge,
        Some(other) => {
            r.problems.push(format!(
                "ATTEMPT_NETWORK must be isolated, none or bridge, got {other:?}"
            ));
            NetworkMode::Isolated
        }
    };
    let mut allow = Vec::new();
    for item in r
        .string("ATTEMPT_NETWORK_ALLOW")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match item.parse() {
            Ok(cidr) => allow.push(cidr),
            Err(()) => r.problems.push(format!(
                "ATTEMPT_NETWORK_ALLOW must be comma-separated addresses or CIDRs like 10.1.2.3/32, got {item:?}"
            )),
        }
    }
    NetworkConfig { mode, allow }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_with_and_without_a_prefix() {
        let v4: Cidr = "10.1.2.0/24".parse().unwrap();
        assert_eq!(v4.to_string(), "10.1.2.0/24");
        assert_eq!("192.0.2.7".parse::<Cidr>().unwrap().prefix, 32);
        assert_eq!("fd00::/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
        assert_eq!("2001:db8::1".parse::<Cidr>().unwrap().prefix, 128);
        for bad in ["10.0.0.0/33", "fd00::/129", "example.org", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} accepted");
        }
    }

    use crate::config::tests::parse;

    #[test]
    fn attempts_are_isolated_unless_the_operator_says_otherwise() {
        assert_eq!(parse(&[]).unwrap().network, NetworkConfig::default());
        assert_eq!(parse(&[]).unwrap().network.mode, NetworkMode::Isolated);
        let none = parse(&[("ATTEMPT_NETWORK", "none")]).unwrap().network;
        assert_eq!(none.mode, NetworkMode::None);
        let bridge = parse(&[("ATTEMPT_NETWORK", "Bridge")]).unwrap().network;
        assert_eq!(bridge.mode, NetworkMode::Bridge);
        let allowed = parse(&[("ATTEMPT_NETWORK_ALLOW", " 10.9.8.7 , 192.168.5.0/24,")])
            .unwrap()
            .network
            .allow;
        let shown: Vec<String> = allowed.iter().map(Cidr::to_string).collect();
        assert_eq!(shown, ["10.9.8.7/32", "192.168.5.0/24"]);
    }

    #[test]
    fn malformed_network_settings_are_one_line_each() {
        let err = parse(&[
            ("ATTEMPT_NETWORK", "host"),
            ("ATTEMPT_NETWORK_ALLOW", "10.0.0.0/8,proxy.lan"),
        ])
        .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err.0[0].starts_with("ATTEMPT_NETWORK must be isolated, none or bridge"));
        assert!(err.0[1].contains("\"proxy.lan\""), "{err}");
    }
}
