//! STUN Binding (RFC 8489) as far as a waypoint needs it: build a request,
//! parse the server's answer into the mapped (public) address. Pure: no I/O.
//!
//! A request is the 20-byte header alone (type 0x0001, length 0, the magic
//! cookie, a random 96-bit transaction id). An answer must carry the same
//! transaction id; its XOR-MAPPED-ADDRESS (0x0020, preferred) or
//! MAPPED-ADDRESS (0x0001) is the address the server saw. Unknown attributes
//! are skipped; comprehension-required ones only matter to servers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The magic cookie of RFC 5389 and later.
pub const MAGIC: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
const ATTR_MAPPED: u16 = 0x0001;
const ATTR_XOR_MAPPED: u16 = 0x0020;
const ATTR_ERROR_CODE: u16 = 0x0009;
/// Largest answer read (servers add SOFTWARE, origin, fingerprint...).
pub const MAX_MESSAGE: usize = 1280;

/// Why an answer is not a usable Binding response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StunError {
    /// Shorter than its header or its declared length.
    Truncated(usize),
    /// Not a STUN message (first bits, cookie or length not a multiple of 4).
    NotStun,
    /// A message for another transaction (a late or forged answer).
    OtherTransaction,
    /// Not a Binding response (type given).
    UnexpectedType(u16),
    /// An attribute runs past the end of the message (at byte offset).
    BadAttribute(usize),
    /// A mapped address attribute with a bad family or length.
    BadAddress,
    /// A Binding error response (code, reason).
    Error(u16, String),
    /// A success response without a mapped address.
    NoAddress,
}

impl fmt::Display for StunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StunError::Truncated(n) => write!(f, "truncated STUN message ({n} bytes)"),
            StunError::NotStun => f.write_str("not a STUN message"),
            StunError::OtherTransaction => f.write_str("answer to another transaction"),
            StunError::UnexpectedType(t) => write!(f, "unexpected STUN message type {t:#06x}"),
            StunError::BadAttribute(at) => write!(f, "STUN attribute at byte {at} overruns"),
            StunError::BadAddress => f.write_str("malformed mapped address"),
            StunError::Error(c, r) => write!(f, "STUN error {c}: {r}"),
            StunError::NoAddress => f.write_str("STUN answer without a mapped address"),
        }
    }
}

impl std::error::Error for StunError {}

/// A Binding request with transaction id `tid`.
pub fn request(tid: [u8; 12]) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    m[4..8].copy_from_slice(&MAGIC.to_be_bytes());
    m[8..20].copy_from_slice(&tid);
    m
}

/// The mapped address in a Binding answer to transaction `tid`.
pub fn parse_response(b: &[u8], tid: &[u8; 12]) -> Result<SocketAddr, StunError> {
    if b.len() < 20 {
        return Err(StunError::Truncated(b.len()));
    }
    let ty = u16::from_be_bytes([b[0], b[1]]);
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if ty & 0xC000 != 0 || len % 4 != 0 || b[4..8] != MAGIC.to_be_bytes() {
        return Err(StunError::NotStun);
    }
    if b.len() < 20 + len {
        return Err(StunError::Truncated(b.len()));
    }
    if b[8..20] != tid[..] {
        return Err(StunError::OtherTransaction);
    }
    if ty != BINDING_SUCCESS && ty != BINDING_ERROR {
        return Err(StunError::UnexpectedType(ty));
    }
    let (mut xor, mut plain, mut error) = (None, None, None);
    let mut at = 20;
    while at < 20 + len {
        if at + 4 > 20 + len {
            return Err(StunError::BadAttribute(at));
        }
        let kind = u16::from_be_bytes([b[at], b[at + 1]]);
        let alen = usize::from(u16::from_be_bytes([b[at + 2], b[at + 3]]));
        let start = at + 4;
        if start + alen > 20 + len {
            return Err(StunError::BadAttribute(at));
        }
        let v = &b[start..start + alen];
        match kind {
            ATTR_XOR_MAPPED if xor.is_none() => xor = Some(address(v, Some(&b[4..20]))?),
            ATTR_MAPPED if plain.is_none() => plain = Some(address(v, None)?),
            ATTR_ERROR_CODE if error.is_none() && v.len() >= 4 => {
                let code = u16::from(v[2] & 0x7) * 100 + u16::from(v[3]);
                let reason = String::from_utf8_lossy(&v[4..]).chars().take(128).collect();
                error = Some((code, reason));
            }
            _ => {}
        }
        at = start + alen.div_ceil(4) * 4;
    }
    if ty == BINDING_ERROR {
        let (code, reason) = error.unwrap_or((0, "no error code".into()));
        return Err(StunError::Error(code, reason));
    }
    xor.or(plain).ok_or(StunError::NoAddress)
}

/// A (XOR-)MAPPED-ADDRESS value; `xor` is cookie + transaction id.
fn address(v: &[u8], xor: Option<&[u8]>) -> Result<SocketAddr, StunError> {
    let mask = |i: usize| xor.map_or(0, |x| x[i]);
    let len = match v.get(1) {
        Some(0x01) => 4,
        Some(0x02) => 16,
        _ => return Err(StunError::BadAddress),
    };
    if v.len() != 4 + len {
        return Err(StunError::BadAddress);
    }
    let port = u16::from_be_bytes([v[2] ^ mask(0), v[3] ^ mask(1)]);
    let mut a = [0u8; 16];
    for (i, byte) in a.iter_mut().take(len).enumerate() {
        *byte = v[4 + i] ^ mask(i);
    }
    let ip = if len == 4 {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(a))
    };
    Ok(SocketAddr::new(ip, port))
}

/// How the NAT in front of this router maps a local socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// The servers saw the local address: no NAT.
    None,
    /// The same public address and port towards every server (a UPnP mapping
    /// or a port forward then reaches this router from anywhere).
    EndpointIndependent,
    /// Another public port per server ("symmetric" NAT).
    EndpointDependent,
    /// One answer only: the mapping behaviour is not known.
    Unknown,
}

impl Mapping {
    /// The name in `dcol status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mapping::None => "none",
            Mapping::EndpointIndependent => "endpoint-independent",
            Mapping::EndpointDependent => "endpoint-dependent",
            Mapping::Unknown => "unknown",
        }
    }
}

/// Classifies the addresses that servers saw for one socket bound to
/// `local` (its port; the address may be the wildcard, then `local_ips` are
/// the router's own addresses).
pub fn classify(local_port: u16, local_ips: &[IpAddr], seen: &[SocketAddr]) -> Option<Mapping> {
    let first = seen.first()?;
    if seen
        .iter()
        .all(|s| s.port() == local_port && local_ips.contains(&s.ip()))
    {
        return Some(Mapping::None);
    }
    if seen.len() < 2 {
        return Some(Mapping::Unknown);
    }
    Some(if seen.iter().all(|s| s == first) {
        Mapping::EndpointIndependent
    } else {
        Mapping::EndpointDependent
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: [u8; 12] = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0xAA, 0xBB];

    /// coturn 4.6.1's answer (captured here), re-keyed to `TID`: XOR-MAPPED
    /// 11.7.1.1:35007, MAPPED, RESPONSE-ORIGIN, OTHER-ADDRESS, SOFTWARE.
    fn coturn() -> Vec<u8> {
        let hex = "0101004821 12a442 000000000000000000000000\
                   002000080001a9ad2a15a543 00010008000188bf0b070101\
                   802b000800010d960b070901 802c000800010d970b070902\
                   80220014436f7475726e2d342e362e312027476f72737427";
        let mut b = crate::trust::from_hex(&hex.replace(' ', "")).unwrap();
        b[8..20].copy_from_slice(&TID);
        b
    }

    #[test]
    fn request_layout() {
        let r = request(TID);
        assert_eq!(&r[..8], &[0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42]);
        assert_eq!(&r[8..], &TID);
    }

    #[test]
    fn parses_coturns_answer() {
        let a = parse_response(&coturn(), &TID).unwrap();
        assert_eq!(a, "11.7.1.1:35007".parse().unwrap());
        // Without XOR-MAPPED, MAPPED is used.
        let mut b = coturn();
        b[20] = 0x7F;
        assert_eq!(
            parse_response(&b, &TID).unwrap(),
            "11.7.1.1:35007".parse().unwrap()
        );
    }

    #[test]
    fn ipv6_xor_address() {
        let mut b = request(TID).to_vec();
        b[0..2].copy_from_slice(&BINDING_SUCCESS.to_be_bytes());
        b[3] = 24;
        let want: SocketAddr = "[2001:db8::7]:4242".parse().unwrap();
        let key: Vec<u8> = b[4..20].to_vec();
        let mut v = vec![0, 0x20, 0, 20, 0, 2];
        v.extend((4242u16 ^ 0x2112).to_be_bytes());
        let IpAddr::V6(ip) = want.ip() else { panic!() };
        v.extend(ip.octets().iter().zip(&key).map(|(a, k)| a ^ k));
        b.extend(v);
        assert_eq!(parse_response(&b, &TID).unwrap(), want);
    }

    #[test]
    fn refuses_bad_answers() {
        let good = coturn();
        assert_eq!(
            parse_response(&good[..19], &TID),
            Err(StunError::Truncated(19))
        );
        assert_eq!(
            parse_response(&good[..40], &TID),
            Err(StunError::Truncated(40))
        );
        let mut b = good.clone();
        b[4] = 0;
        assert_eq!(parse_response(&b, &TID), Err(StunError::NotStun));
        assert_eq!(
            parse_response(&good, &[0; 12]),
            Err(StunError::OtherTransaction)
        );
        let mut b = good.clone();
        b[1] = 0x11;
        b[0] = 0x01;
        assert_eq!(
            parse_response(&b, &TID),
            Err(StunError::Error(0, "no error code".into()))
        );
        // An attribute claiming more bytes than there are.
        let mut b = good.clone();
        b[23] = 200;
        assert_eq!(parse_response(&b, &TID), Err(StunError::BadAttribute(20)));
        // A bad family.
        let mut b = good.clone();
        b[25] = 3;
        assert_eq!(parse_response(&b, &TID), Err(StunError::BadAddress));
        // No address at all.
        let mut b = request(TID).to_vec();
        b[0] = 1;
        b[1] = 1;
        assert_eq!(parse_response(&b, &TID), Err(StunError::NoAddress));
        // A request is not an answer.
        assert_eq!(
            parse_response(&request(TID), &TID),
            Err(StunError::UnexpectedType(1))
        );
        // An error response with its code.
        let mut b = request(TID).to_vec();
        b[0..2].copy_from_slice(&BINDING_ERROR.to_be_bytes());
        b[3] = 12;
        b.extend([0, 9, 0, 8, 0, 0, 4, 20, b'B', b'a', b'd', b'!']);
        assert_eq!(
            parse_response(&b, &TID),
            Err(StunError::Error(420, "Bad!".into()))
        );
    }

    #[test]
    fn classifies_mappings() {
        let me: IpAddr = "192.168.7.2".parse().unwrap();
        let a: SocketAddr = "11.7.1.1:5000".parse().unwrap();
        let b: SocketAddr = "11.7.1.1:5001".parse().unwrap();
        assert_eq!(classify(5000, &[me], &[]), None);
        assert_eq!(classify(5000, &[me], &[a]), Some(Mapping::Unknown));
        assert_eq!(
            classify(5000, &[me], &[a, a]),
            Some(Mapping::EndpointIndependent)
        );
        assert_eq!(
            classify(5000, &[me], &[a, b]),
            Some(Mapping::EndpointDependent)
        );
        let direct: SocketAddr = "192.168.7.2:5000".parse().unwrap();
        assert_eq!(classify(5000, &[me], &[direct]), Some(Mapping::None));
    }
}
