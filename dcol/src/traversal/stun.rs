//! STUN Binding (RFC 8489) as far as a waypoint needs it: build a request,
//! parse the server's answer into the mapped (public) address. Pure: no I/O.
//! The wire format is the `stun_codec` crate's (RFC 5389 attributes); this
//! module only chooses what to send and what to believe.
//!
//! A request is a Binding request without attributes (the 20-byte header:
//! type 0x0001, length 0, the magic cookie, a random 96-bit transaction id).
//! An answer must be a Binding success or error response of the same
//! transaction; its XOR-MAPPED-ADDRESS (preferred) or MAPPED-ADDRESS is the
//! address the server saw. Unknown comprehension-optional attributes are
//! skipped.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::rfc5389::attributes::{ErrorCode, MappedAddress, XorMappedAddress};
use stun_codec::rfc5389::{methods::BINDING, Attribute};
use stun_codec::{
    Attribute as _, Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId,
};

/// Largest answer read (servers add SOFTWARE, origin, fingerprint...).
pub const MAX_MESSAGE: usize = 1280;

/// Why an answer is not a usable Binding response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StunError {
    /// Shorter than a STUN header.
    Truncated(usize),
    /// Not a well-formed STUN message (what the decoder says).
    Malformed(String),
    /// A message for another transaction (a late or forged answer).
    OtherTransaction,
    /// Not a Binding response (class and method given).
    UnexpectedType(String),
    /// A Binding error response (code, reason).
    Error(u16, String),
    /// A success response without a mapped address.
    NoAddress,
}

impl fmt::Display for StunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StunError::Truncated(n) => write!(f, "truncated STUN message ({n} bytes)"),
            StunError::Malformed(m) => write!(f, "not a well-formed STUN message: {m}"),
            StunError::OtherTransaction => f.write_str("answer to another transaction"),
            StunError::UnexpectedType(t) => write!(f, "unexpected STUN message {t}"),
            StunError::Error(c, r) => write!(f, "STUN error {c}: {r}"),
            StunError::NoAddress => f.write_str("STUN answer without a mapped address"),
        }
    }
}

impl std::error::Error for StunError {}

/// A Binding request with transaction id `tid`.
pub fn request(tid: [u8; 12]) -> Vec<u8> {
    let m = Message::<Attribute>::new(MessageClass::Request, BINDING, TransactionId::new(tid));
    MessageEncoder::new()
        .encode_into_bytes(m)
        .expect("a Binding request without attributes always encodes")
}

/// The mapped address in a Binding answer to transaction `tid`.
pub fn parse_response(b: &[u8], tid: &[u8; 12]) -> Result<SocketAddr, StunError> {
    if b.len() < 20 {
        return Err(StunError::Truncated(b.len()));
    }
    let m = MessageDecoder::<Attribute>::new()
        .decode_from_bytes(b)
        .map_err(|e| StunError::Malformed(first_line(&e.to_string())))?
        .map_err(|broken| {
            if broken.transaction_id().as_bytes() != tid {
                StunError::OtherTransaction
            } else {
                StunError::Malformed(first_line(&broken.error().to_string()))
            }
        })?;
    if m.transaction_id().as_bytes() != tid {
        return Err(StunError::OtherTransaction);
    }
    // RFC 8489 §6.3.3: an answer with an unknown comprehension-required
    // attribute is discarded.
    if let Some(a) = m
        .unknown_attributes()
        .find(|a| a.get_type().is_comprehension_required())
    {
        return Err(StunError::Malformed(format!(
            "unknown comprehension-required attribute {:#06x}",
            a.get_type().as_u16()
        )));
    }
    if m.method() != BINDING {
        return Err(StunError::UnexpectedType(format!(
            "method {:#05x}",
            m.method().as_u16()
        )));
    }
    match m.class() {
        MessageClass::SuccessResponse => {}
        MessageClass::ErrorResponse => {
            return Err(match m.get_attribute::<ErrorCode>() {
                Some(e) => {
                    StunError::Error(e.code(), e.reason_phrase().chars().take(128).collect())
                }
                None => StunError::Error(0, "no error code".into()),
            })
        }
        c => return Err(StunError::UnexpectedType(format!("{c:?}"))),
    }
    m.get_attribute::<XorMappedAddress>()
        .map(|a| a.address())
        .or_else(|| m.get_attribute::<MappedAddress>().map(|a| a.address()))
        .ok_or(StunError::NoAddress)
}

/// The decoder's errors carry a multi-line trace: its first line says what.
fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
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

    const BINDING_SUCCESS: u16 = 0x0101;
    const BINDING_ERROR: u16 = 0x0111;

    #[test]
    fn request_layout() {
        let r = request(TID);
        assert_eq!(r.len(), 20);
        assert_eq!(&r[..8], &[0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42]);
        assert_eq!(&r[8..], &TID);
    }

    #[test]
    fn parses_coturns_answer() {
        let a = parse_response(&coturn(), &TID).unwrap();
        assert_eq!(a, "11.7.1.1:35007".parse().unwrap());
        // Without XOR-MAPPED (its type made an unknown optional one),
        // MAPPED is used.
        let mut b = coturn();
        b[20] = 0x80;
        b[21] = 0x7F;
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

    fn malformed(r: Result<SocketAddr, StunError>) -> bool {
        matches!(r, Err(StunError::Malformed(m)) if !m.is_empty())
    }

    #[test]
    fn refuses_bad_answers() {
        let good = coturn();
        assert_eq!(
            parse_response(&good[..19], &TID),
            Err(StunError::Truncated(19))
        );
        assert!(malformed(parse_response(&good[..40], &TID)), "short body");
        let mut b = good.clone();
        b[4] = 0;
        assert!(malformed(parse_response(&b, &TID)), "no magic cookie");
        assert_eq!(
            parse_response(&good, &[0; 12]),
            Err(StunError::OtherTransaction)
        );
        // An attribute claiming more bytes than there are.
        let mut b = good.clone();
        b[23] = 200;
        assert!(malformed(parse_response(&b, &TID)), "attribute overruns");
        // A bad address family.
        let mut b = good.clone();
        b[25] = 3;
        assert!(malformed(parse_response(&b, &TID)), "bad family");
        // An unknown comprehension-required attribute.
        let mut b = good.clone();
        b[20] = 0x7F;
        assert!(malformed(parse_response(&b, &TID)), "unknown required");
        // No address at all.
        let mut b = request(TID).to_vec();
        b[0] = 1;
        b[1] = 1;
        assert_eq!(parse_response(&b, &TID), Err(StunError::NoAddress));
        // A request is not an answer.
        assert!(matches!(
            parse_response(&request(TID), &TID),
            Err(StunError::UnexpectedType(_))
        ));
        // An error response, with and without its code.
        let mut b = request(TID).to_vec();
        b[0..2].copy_from_slice(&BINDING_ERROR.to_be_bytes());
        assert_eq!(
            parse_response(&b, &TID),
            Err(StunError::Error(0, "no error code".into()))
        );
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
