//! Value types the configuration speaks and the layers below use: address
//! blocks ([`Cidr`]), port ranges ([`PortRange`]), the tunnel type of a
//! waypoint ([`TunnelKind`]) and which LAN connections may be detoured
//! ([`DetourPolicy`]).
//!
//! Neutral ground: `config` parses UCI text into these, and `sys`, `proxy`,
//! `waypoint`, `routes` and `special` use them without importing the parser.
//! Parsing is strict; [`ParseError`] says what was wrong with which text.
//!
//! ```
//! use dcol::types::{Cidr, PortRange, TunnelKind};
//! let c: Cidr = "10.1.2.3/8".parse().unwrap();
//! assert_eq!(c.to_string(), "10.0.0.0/8");
//! assert!(c.contains(&"10.200.0.1".parse().unwrap()));
//! let r: PortRange = "6660-6669".parse().unwrap();
//! assert!(r.contains(6665) && !r.contains(25));
//! assert_eq!("vpn".parse::<TunnelKind>(), Ok(TunnelKind::Vpn));
//! assert!("10.0.0.0/33".parse::<Cidr>().is_err());
//! ```

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Text that is not a value of the type it was parsed as. Each variant
/// carries the offending text (at most 64 characters, escaped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The part before `/` of a [`Cidr`] is not an IP address.
    #[error("'{0}' is not an IP address")]
    NotAnAddress(String),
    /// The prefix length of a [`Cidr`] is not a number up to the address's bits.
    #[error("bad prefix length '{got}' (0-{max})")]
    PrefixLength {
        /// The text after `/`.
        got: String,
        /// 32 or 128.
        max: u8,
    },
    /// Not a port (1-65535) or an ascending range of ports.
    #[error("expected a port (1-65535) or a range like '6660-6669', got '{0}'")]
    PortRange(String),
    /// Not a [`TunnelKind`] name.
    #[error("expected 'nat' or 'vpn', got '{0}'")]
    TunnelKind(String),
    /// Not a [`ConvertMode`] name.
    #[error("expected 'off' or 'auto', got '{0}'")]
    ConvertMode(String),
    /// Not a [`DetourPolicy`] name.
    #[error("expected 'tls-after-handshake', 'all' or 'none', got '{0}'")]
    DetourPolicy(String),
}

/// `v` shortened to 64 characters and escaped, for messages.
pub(crate) fn show(v: &str) -> String {
    v.chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

/// An address block, e.g. `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address (host bits cleared).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// The block of `prefix` bits around `addr` (host bits cleared); `None`
    /// when `prefix` is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let addr = match addr {
            IpAddr::V4(v4) if prefix <= 32 => IpAddr::V4(mask4(u32::from(v4), prefix).into()),
            IpAddr::V6(v6) if prefix <= 128 => IpAddr::V6(mask6(u128::from(v6), prefix).into()),
            _ => return None,
        };
        Some(Cidr { addr, prefix })
    }

    /// True when `ip` is inside the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(*ip),
            v4 => *v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => mask4(u32::from(a), self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => mask6(u128::from(a), self.prefix) == u128::from(n),
            _ => false,
        }
    }
}

/// `a` with all but the top `p` bits (at most 32) cleared.
pub(crate) fn mask4(a: u32, p: u8) -> u32 {
    if p == 0 {
        0
    } else {
        a & (u32::MAX << (32 - u32::from(p)))
    }
}

/// `a` with all but the top `p` bits (at most 128) cleared.
pub(crate) fn mask6(a: u128, p: u8) -> u128 {
    if p == 0 {
        0
    } else {
        a & (u128::MAX << (128 - u32::from(p)))
    }
}

impl FromStr for Cidr {
    type Err = ParseError;

    /// `addr/prefix`, or a bare address (a block of one).
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| ParseError::NotAnAddress(show(a)))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bad = |p: &str| ParseError::PrefixLength { got: show(p), max };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| bad(p))?,
        };
        Cidr::new(addr, prefix).ok_or_else(|| bad(&prefix.to_string()))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A port or an inclusive range of ports, e.g. `25` or `6660-6669`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port (`lo` for a single port).
    pub hi: u16,
}

impl PortRange {
    /// `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::PortRange(show(s));
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(bad)
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if lo > hi {
            return Err(bad());
        }
        Ok(PortRange { lo, hi })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Tunnel type of a peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TunnelKind {
    /// NAT tunnel: one map element per destination.
    #[default]
    Nat,
    /// WireGuard tunnel: one per waypoint, for every connection.
    Vpn,
}

impl TunnelKind {
    /// Every kind, in the order the UCI names are listed.
    pub const ALL: [TunnelKind; 2] = [TunnelKind::Nat, TunnelKind::Vpn];

    /// The UCI spelling.
    pub fn name(self) -> &'static str {
        match self {
            TunnelKind::Nat => "nat",
            TunnelKind::Vpn => "vpn",
        }
    }
}

impl FromStr for TunnelKind {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        TunnelKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| ParseError::TunnelKind(show(s)))
    }
}

/// Which proxied LAN connections may get detours (`option detour_policy`).
///
/// Waypoints must never see a TLS handshake in the clear (the paper's rule):
/// the default detours a TLS connection only once its handshake has passed
/// over the direct path, and never a plaintext one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DetourPolicy {
    /// `tls-after-handshake` (default).
    #[default]
    TlsAfterHandshake,
    /// `all`: every proxied connection, from its first byte.
    All,
    /// `none`: no proxied connection gets a detour.
    None,
}

impl DetourPolicy {
    /// Every policy, in the order the UCI names are listed.
    pub const ALL: [DetourPolicy; 3] = [
        DetourPolicy::TlsAfterHandshake,
        DetourPolicy::All,
        DetourPolicy::None,
    ];

    /// The UCI spelling.
    pub fn name(self) -> &'static str {
        match self {
            DetourPolicy::TlsAfterHandshake => "tls-after-handshake",
            DetourPolicy::All => "all",
            DetourPolicy::None => "none",
        }
    }
}

/// Whether proxied LAN connections to servers without MPTCP go through a
/// converter member (`option convert` in the client section, issue 17).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConvertMode {
    /// `off` (default): a converter sees destinations and TLS server names,
    /// so using one is the owner's choice.
    #[default]
    Off,
    /// `auto`: servers known not to speak MPTCP are reached through a
    /// converter peer (`option convert '1'` in its peer section, or the
    /// directory's converters), falling back to plain TCP.
    Auto,
}

impl ConvertMode {
    /// The UCI spellings (`0` is also read as `off`).
    pub const NAMES: [&'static str; 2] = ["off", "auto"];
}

impl FromStr for ConvertMode {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "off" | "0" => Ok(ConvertMode::Off),
            "auto" => Ok(ConvertMode::Auto),
            _ => Err(ParseError::ConvertMode(show(s))),
        }
    }
}

impl FromStr for DetourPolicy {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        DetourPolicy::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| ParseError::DetourPolicy(show(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(&"10.200.0.1".parse().unwrap()));
        assert!(c.contains(&"::ffff:10.0.0.1".parse().unwrap()));
        assert!(!c.contains(&"11.0.0.1".parse().unwrap()));
        let c6: Cidr = "fd00::/8".parse().unwrap();
        assert!(c6.contains(&"fd00:0:0:3::2".parse().unwrap()));
        assert!(!c6.contains(&"10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(&"1.2.3.4".parse().unwrap()));
        assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().prefix, 32);
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(ParseError::PrefixLength {
                got: "33".into(),
                max: 32
            })
        );
        assert_eq!(
            "lan".parse::<Cidr>().unwrap_err().to_string(),
            "'lan' is not an IP address"
        );
    }

    #[test]
    fn port_ranges() {
        assert_eq!("25".parse(), Ok(PortRange { lo: 25, hi: 25 }));
        assert_eq!("6660-6669".parse(), Ok(PortRange { lo: 6660, hi: 6669 }));
        for bad in ["0", "70000", "30-20", "smtp", "25-"] {
            let e = bad.parse::<PortRange>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn names_round_trip() {
        for k in TunnelKind::ALL {
            assert_eq!(k.name().parse(), Ok(k));
        }
        for p in DetourPolicy::ALL {
            assert_eq!(p.name().parse(), Ok(p));
        }
        assert!("gre".parse::<TunnelKind>().is_err());
        assert!("some".parse::<DetourPolicy>().is_err());
    }
}
