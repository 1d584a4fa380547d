//! PCP (RFC 6887) MAP, as far as a waypoint needs it: opening an inbound
//! IPv6 pinhole on the home gateway's firewall (with IPv6 there is no NAT,
//! but gateways drop unsolicited inbound traffic). Pure: no I/O.
//!
//! ```text
//! request:  2 | 1 (MAP) | 0u16 | lifetime u32 | client address (16)
//!           nonce (12) | protocol | 0 0 0 | internal port | suggested external port | suggested address (16)
//! answer:   2 | 128 + 1 | 0 | result | lifetime u32 | epoch u32 | 0 (12)
//!           nonce (12) | protocol | 0 0 0 | internal port | external port | external address (16)
//! ```
//! A request with lifetime 0 deletes the mapping of that nonce. Options
//! after the MAP fields are ignored.

use std::fmt;
use std::net::Ipv6Addr;

use super::upnp::Protocol;

/// The gateway's PCP port (shared with NAT-PMP).
pub const PORT: u16 = 5351;
/// Bytes of a MAP request and of an answer without options.
pub const MAP_LEN: usize = 60;
/// Largest PCP message (RFC 6887 §7).
pub const MAX_MESSAGE: usize = 1100;

/// Why an answer is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PcpError {
    /// Shorter than a MAP answer (length given), or longer than PCP allows.
    Length(usize),
    /// A version 0 (NAT-PMP) answer: the gateway does not speak PCP.
    NatPmpOnly,
    /// Not a version 2 answer to MAP.
    Unexpected {
        /// Version byte.
        version: u8,
        /// Opcode byte.
        op: u8,
    },
    /// The gateway refused (result code and its meaning).
    Refused(u8, &'static str),
    /// An answer to another request (nonce, protocol or port differ).
    NotOurs,
}

impl fmt::Display for PcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PcpError::Length(n) => write!(f, "PCP answer of {n} bytes"),
            PcpError::NatPmpOnly => f.write_str("the gateway speaks NAT-PMP, not PCP"),
            PcpError::Unexpected { version, op } => {
                write!(f, "unexpected PCP answer (version {version}, op {op})")
            }
            PcpError::Refused(c, m) => write!(f, "PCP result {c}: {m}"),
            PcpError::NotOurs => f.write_str("PCP answer to another request"),
        }
    }
}

impl std::error::Error for PcpError {}

fn result_text(code: u8) -> &'static str {
    match code {
        1 => "unsupported version",
        2 => "not authorized",
        3 => "malformed request",
        4 => "unsupported opcode",
        5 => "unsupported option",
        6 => "malformed option",
        7 => "network failure",
        8 => "no resources",
        9 => "unsupported protocol",
        10 => "user over quota",
        11 => "cannot provide the external address or port",
        12 => "address mismatch (the request's client address is not its source)",
        13 => "excessive remote peers",
        _ => "unknown result",
    }
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    }
}

/// A MAP request for `port` (external = internal) of `client` for
/// `lifetime_s` (0 deletes the mapping made with the same `nonce`).
pub fn map_request(
    nonce: &[u8; 12],
    proto: Protocol,
    port: u16,
    lifetime_s: u32,
    client: Ipv6Addr,
) -> [u8; MAP_LEN] {
    let mut m = [0u8; MAP_LEN];
    m[0] = 2;
    m[1] = 1;
    m[4..8].copy_from_slice(&lifetime_s.to_be_bytes());
    m[8..24].copy_from_slice(&client.octets());
    m[24..36].copy_from_slice(nonce);
    m[36] = proto_number(proto);
    m[40..42].copy_from_slice(&port.to_be_bytes());
    m[42..44].copy_from_slice(&port.to_be_bytes());
    // Suggested external address: :: (any).
    m
}

/// A mapping granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    /// Its lifetime, s.
    pub lifetime_s: u32,
    /// The external port.
    pub external_port: u16,
    /// The external address.
    pub external: Ipv6Addr,
}

/// The answer to a MAP request with `nonce` for `proto`/`port`.
pub fn parse_map(
    b: &[u8],
    nonce: &[u8; 12],
    proto: Protocol,
    port: u16,
) -> Result<Mapped, PcpError> {
    if b.len() >= 2 && b[0] == 0 {
        return Err(PcpError::NatPmpOnly);
    }
    if b.len() < 4 {
        return Err(PcpError::Length(b.len()));
    }
    if b[0] != 2 || b[1] != 0x81 {
        return Err(PcpError::Unexpected {
            version: b[0],
            op: b[1],
        });
    }
    if b[3] != 0 {
        return Err(PcpError::Refused(b[3], result_text(b[3])));
    }
    if b.len() < MAP_LEN || b.len() > MAX_MESSAGE {
        return Err(PcpError::Length(b.len()));
    }
    if &b[24..36] != nonce
        || b[36] != proto_number(proto)
        || u16::from_be_bytes([b[40], b[41]]) != port
    {
        return Err(PcpError::NotOurs);
    }
    let mut ext = [0u8; 16];
    ext.copy_from_slice(&b[44..60]);
    Ok(Mapped {
        lifetime_s: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        external_port: u16::from_be_bytes([b[42], b[43]]),
        external: Ipv6Addr::from(ext),
    })
}

/// The IPv6 default router in `/proc/net/ipv6_route` text: its address and
/// the interface it is on (a link-local router needs the interface).
pub fn default_router6(route: &str) -> Option<(Ipv6Addr, String)> {
    for line in route.lines() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        // dest, dest len, src, src len, next hop, metric, refcnt, use, flags, iface
        if f.len() < 10 || f[0] != "00000000000000000000000000000000" || f[1] != "00" {
            continue;
        }
        let hop = u128::from_str_radix(f[4], 16).ok().map(Ipv6Addr::from)?;
        let flags = u32::from_str_radix(f[8], 16).ok()?;
        // RTF_UP (1) | RTF_GATEWAY (2); the "lo" reject route has neither.
        if flags & 3 == 3 && !hop.is_unspecified() {
            return Some((hop, f[9].to_owned()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; 12] = [7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

    fn client() -> Ipv6Addr {
        "2001:db8:7::2".parse().unwrap()
    }

    /// What a gateway answers to `req`: result `code`, external port.
    fn answer(req: &[u8], code: u8, ext_port: u16) -> Vec<u8> {
        let mut a = req.to_vec();
        a[1] = 0x81;
        a[2] = 0;
        a[3] = code;
        a[8..12].copy_from_slice(&1234u32.to_be_bytes());
        a[12..24].fill(0);
        a[42..44].copy_from_slice(&ext_port.to_be_bytes());
        a[44..60].copy_from_slice(&client().octets());
        a
    }

    #[test]
    fn request_layout() {
        let r = map_request(&NONCE, Protocol::Tcp, 40000, 3600, client());
        assert_eq!(&r[..4], &[2, 1, 0, 0]);
        assert_eq!(&r[4..8], &3600u32.to_be_bytes());
        assert_eq!(&r[8..24], &client().octets());
        assert_eq!(&r[24..36], &NONCE);
        assert_eq!(r[36], 6);
        assert_eq!(&r[40..44], &[0x9c, 0x40, 0x9c, 0x40]);
        assert_eq!(&r[44..], &[0; 16]);
        assert_eq!(
            map_request(&NONCE, Protocol::Udp, 7447, 0, client())[36],
            17
        );
    }

    #[test]
    fn answers() {
        let req = map_request(&NONCE, Protocol::Udp, 7447, 3600, client());
        let m = parse_map(&answer(&req, 0, 7447), &NONCE, Protocol::Udp, 7447).unwrap();
        assert_eq!((m.external_port, m.external), (7447, client()));
        assert_eq!(m.lifetime_s, 3600);
        // With an option after the MAP fields.
        let mut long = answer(&req, 0, 7447);
        long.extend_from_slice(&[1, 0, 0, 4, 0, 0, 0, 0]);
        assert!(parse_map(&long, &NONCE, Protocol::Udp, 7447).is_ok());
        assert_eq!(
            parse_map(&answer(&req, 2, 0), &NONCE, Protocol::Udp, 7447),
            Err(PcpError::Refused(2, "not authorized"))
        );
        assert_eq!(
            parse_map(&answer(&req, 0, 7447), &[0; 12], Protocol::Udp, 7447),
            Err(PcpError::NotOurs)
        );
        assert_eq!(
            parse_map(&answer(&req, 0, 7447), &NONCE, Protocol::Tcp, 7447),
            Err(PcpError::NotOurs)
        );
        // A NAT-PMP gateway answers version 0 (unsupported version).
        assert_eq!(
            parse_map(&[0, 0x81, 0, 1, 0, 0, 0, 9], &NONCE, Protocol::Udp, 7447),
            Err(PcpError::NatPmpOnly)
        );
        for n in [0, 3, 59] {
            let a = answer(&req, 0, 7447);
            assert!(
                parse_map(&a[..n], &NONCE, Protocol::Udp, 7447).is_err(),
                "{n}"
            );
        }
        assert_eq!(
            parse_map(&[2, 0x81, 0, 0].repeat(300), &NONCE, Protocol::Udp, 7447),
            Err(PcpError::Length(1200))
        );
        let mut bad = answer(&req, 0, 7447);
        bad[1] = 0x82;
        assert!(matches!(
            parse_map(&bad, &NONCE, Protocol::Udp, 7447),
            Err(PcpError::Unexpected { .. })
        ));
    }

    #[test]
    fn ipv6_default_router() {
        let route = "\
20010db8000700000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     lan
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     lan
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";
        assert_eq!(
            default_router6(route),
            Some(("fe80::1".parse().unwrap(), "lan".into()))
        );
        assert_eq!(default_router6(route.lines().nth(2).unwrap()), None);
        assert_eq!(default_router6("garbage"), None);
    }
}
