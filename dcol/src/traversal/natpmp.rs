//! NAT-PMP (RFC 6886), the port mapping protocol of gateways without UPnP
//! (and of many with both), as far as a waypoint needs it: the external
//! address request, map and unmap requests, their answers, and the default
//! gateway they go to. Pure: no I/O.
//!
//! ```text
//! request:  version 0 | op (0 address, 1 UDP, 2 TCP) | 0u16 | internal port | external port | lifetime s
//! answer:   version 0 | 128 + op | result u16 | epoch s u32 | (address u32) | (internal | external | lifetime)
//! ```
//! A map request with lifetime 0 (and external port 0) deletes the mapping.

use std::fmt;
use std::net::Ipv4Addr;

use super::upnp::Protocol;

/// The gateway's NAT-PMP port.
pub const PORT: u16 = 5351;

/// Why an answer is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PmpError {
    /// Too short for its opcode (length given).
    Truncated(usize),
    /// Not a version-0 answer to the request's opcode.
    Unexpected {
        /// Version byte.
        version: u8,
        /// Opcode byte.
        op: u8,
    },
    /// The gateway refused (result code and its meaning).
    Refused(u16, &'static str),
    /// An answer for another port.
    OtherPort(u16),
}

impl fmt::Display for PmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PmpError::Truncated(n) => write!(f, "truncated NAT-PMP answer ({n} bytes)"),
            PmpError::Unexpected { version, op } => {
                write!(f, "unexpected NAT-PMP answer (version {version}, op {op})")
            }
            PmpError::Refused(c, m) => write!(f, "NAT-PMP result {c}: {m}"),
            PmpError::OtherPort(p) => write!(f, "NAT-PMP answer for port {p}"),
        }
    }
}

impl std::error::Error for PmpError {}

fn result_text(code: u16) -> &'static str {
    match code {
        1 => "unsupported version",
        2 => "not authorized or refused",
        3 => "network failure",
        4 => "out of resources",
        5 => "unsupported opcode",
        _ => "unknown result",
    }
}

fn opcode(proto: Protocol) -> u8 {
    match proto {
        Protocol::Udp => 1,
        Protocol::Tcp => 2,
    }
}

/// The external address request.
pub fn address_request() -> [u8; 2] {
    [0, 0]
}

/// A map request (`lifetime_s` 0 with `external` 0 deletes).
pub fn map_request(proto: Protocol, internal: u16, external: u16, lifetime_s: u32) -> [u8; 12] {
    let mut m = [0u8; 12];
    m[1] = opcode(proto);
    m[4..6].copy_from_slice(&internal.to_be_bytes());
    m[6..8].copy_from_slice(&external.to_be_bytes());
    m[8..12].copy_from_slice(&lifetime_s.to_be_bytes());
    m
}

/// Checks version, opcode and result; the bytes after the result code.
fn check(b: &[u8], op: u8, len: usize) -> Result<&[u8], PmpError> {
    if b.len() < 4 {
        return Err(PmpError::Truncated(b.len()));
    }
    if b[0] != 0 || b[1] != 128 + op {
        return Err(PmpError::Unexpected {
            version: b[0],
            op: b[1],
        });
    }
    let result = u16::from_be_bytes([b[2], b[3]]);
    if result != 0 {
        return Err(PmpError::Refused(result, result_text(result)));
    }
    if b.len() < len {
        return Err(PmpError::Truncated(b.len()));
    }
    Ok(&b[4..len])
}

/// The gateway's external address in an answer to [`address_request`].
pub fn parse_address(b: &[u8]) -> Result<Ipv4Addr, PmpError> {
    let r = check(b, 0, 12)?;
    Ok(Ipv4Addr::new(r[4], r[5], r[6], r[7]))
}

/// A mapping granted: external port and lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    /// The external port the gateway chose.
    pub external: u16,
    /// Its lifetime, s.
    pub lifetime_s: u32,
}

/// The answer to a [`map_request`] for `internal`.
pub fn parse_map(b: &[u8], proto: Protocol, internal: u16) -> Result<Mapped, PmpError> {
    let r = check(b, opcode(proto), 16)?;
    let port = u16::from_be_bytes([r[4], r[5]]);
    if port != internal {
        return Err(PmpError::OtherPort(port));
    }
    Ok(Mapped {
        external: u16::from_be_bytes([r[6], r[7]]),
        lifetime_s: u32::from_be_bytes([r[8], r[9], r[10], r[11]]),
    })
}

/// The IPv4 default gateway in the text of `/proc/net/route` (addresses are
/// the kernel's network-order words printed in host order): of several
/// default routes, the one with the lowest metric, which the kernel uses.
pub fn default_gateway(route: &str) -> Option<Ipv4Addr> {
    route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dest, gw, flags) = (f.get(1)?, f.get(2)?, f.get(3)?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let mask = f
                .get(7)
                .map_or(Some(0), |m| u32::from_str_radix(m, 16).ok())?;
            // RTF_UP | RTF_GATEWAY, destination 0/0.
            if *dest != "00000000" || mask != 0 || flags & 3 != 3 {
                return None;
            }
            let metric: u32 = f.get(6).and_then(|m| m.parse().ok()).unwrap_or(0);
            let gw = u32::from_str_radix(gw, 16).ok()?;
            Some((metric, Ipv4Addr::from(gw.to_ne_bytes())))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, gw)| gw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(address_request(), [0, 0]);
        assert_eq!(
            map_request(Protocol::Tcp, 40000, 40000, 3600),
            [0, 2, 0, 0, 0x9c, 0x40, 0x9c, 0x40, 0, 0, 0x0e, 0x10]
        );
        assert_eq!(map_request(Protocol::Udp, 7447, 0, 0)[1], 1);
    }

    #[test]
    fn answers() {
        let addr = [0, 128, 0, 0, 0, 0, 1, 0, 11, 7, 1, 1];
        assert_eq!(parse_address(&addr), Ok(Ipv4Addr::new(11, 7, 1, 1)));
        assert_eq!(parse_address(&addr[..8]), Err(PmpError::Truncated(8)));
        let map = [
            0, 130, 0, 0, 0, 0, 1, 0, 0x9c, 0x40, 0x9c, 0x41, 0, 0, 0x0e, 0x10,
        ];
        assert_eq!(
            parse_map(&map, Protocol::Tcp, 40000),
            Ok(Mapped {
                external: 40001,
                lifetime_s: 3600
            })
        );
        assert_eq!(
            parse_map(&map, Protocol::Tcp, 40002),
            Err(PmpError::OtherPort(40000))
        );
        assert_eq!(
            parse_map(&map, Protocol::Udp, 40000),
            Err(PmpError::Unexpected {
                version: 0,
                op: 130
            })
        );
        let mut refused = map;
        refused[3] = 2;
        assert_eq!(
            parse_map(&refused, Protocol::Tcp, 40000),
            Err(PmpError::Refused(2, "not authorized or refused"))
        );
        assert_eq!(
            parse_map(&[0], Protocol::Tcp, 1),
            Err(PmpError::Truncated(1))
        );
        assert!(parse_map(&[1, 130, 0, 0], Protocol::Tcp, 1).is_err());
    }

    #[test]
    fn gateway_from_proc_net_route() {
        let gw = Ipv4Addr::new(192, 168, 7, 1);
        let word = u32::from_ne_bytes(gw.octets());
        let text = format!(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t0007A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
             eth0\t00000000\t{word:08X}\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        );
        assert_eq!(default_gateway(&text), Some(gw));
        // Two default routes: the lower metric wins, wherever it is listed.
        let backup = u32::from_ne_bytes([10, 0, 0, 1]);
        let two = format!(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             wwan0\t00000000\t{backup:08X}\t0003\t0\t0\t20\t00000000\t0\t0\t0\n\
             eth0\t00000000\t{word:08X}\t0003\t0\t0\t10\t00000000\t0\t0\t0\n"
        );
        assert_eq!(default_gateway(&two), Some(gw));
        assert_eq!(default_gateway("Iface\tDestination\n"), None);
        assert_eq!(default_gateway("header\nbad line\n"), None);
    }
}
