//! The Convert cookie: how a converter knows a member in good standing asks.
//!
//! RFC 8803 leaves the Cookie TLV's content to the converter (§5.2.5: an
//! opaque value the converter checks). DCol puts a member's signed
//! signaling request in it — the same [`proto::Request`] a NAT detour is
//! asked with, of kind [`RequestKind::Convert`] naming the destination —
//! encoded as a signaling datagram without its padding (~300 bytes, well
//! inside one TFO SYN). So a conversion needs no extra round trip (no
//! grant to fetch first, which would undo the 0-RTT the protocol is for),
//! and the converter checks exactly what a waypoint checks: the
//! collective's certificate, revocation, validity, the client role, the
//! member's signature, freshness, the converter's name, the source address
//! the connection comes from, and a nonce used once. The cookie is also
//! the attribution evidence, as a NAT request is.

use std::net::{IpAddr, SocketAddr};

use crate::proto::{self, Message, Nonce, Request, RequestBody, RequestKind};
use crate::trust::{Certificate, SecretKey};

/// Largest cookie accepted or made: the Convert message's 1020 bytes less
/// the fixed header, the Connect TLV and the cookie's 4-byte TLV head.
pub const MAX_COOKIE: usize = super::wire::MAX_LEN - 4 - 20 - 4;

/// What a member signs to have one connection converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The converter's certificate name.
    pub converter: String,
    /// The plain TCP server.
    pub destination: SocketAddr,
    /// The address the converter will see the connection come from.
    pub source: IpAddr,
    /// Member's clock, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Fresh per connection.
    pub nonce: Nonce,
}

/// The cookie bytes for `ask`, signed by the member `key` (of `cert`).
pub fn make(cert: &Certificate, key: &SecretKey, ask: &Ask) -> Vec<u8> {
    let body = RequestBody {
        waypoint: ask.converter.clone(),
        timestamp_ms: ask.timestamp_ms,
        nonce: ask.nonce,
        source: ask.source,
        kind: RequestKind::Convert {
            destination: ask.destination,
        },
    };
    let dgram = proto::encode(&Message::Request(Request::sign(cert.clone(), key, body)));
    proto::unpadded(&dgram)
        .expect("a request we just encoded decodes")
        .to_vec()
}

/// Why a cookie is not a conversion request (before any trust check).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// Longer than [`MAX_COOKIE`].
    #[error("cookie of {0} bytes (limit {MAX_COOKIE})")]
    TooLong(usize),
    /// Not a signaling request.
    #[error("cookie is not a signed request: {0}")]
    Undecodable(#[from] proto::WireError),
    /// A signaling message, but not a request.
    #[error("cookie holds a signaling message that is not a request")]
    NotARequest,
    /// A request of another kind than a conversion.
    #[error("cookie holds a request that is not a conversion")]
    NotAConversion,
}

/// The request in a cookie (zero padding after it, which the TLV adds, is
/// allowed); its signature and certificate are the caller's to check.
pub fn read(cookie: &[u8]) -> Result<(Request, SocketAddr), CookieError> {
    if cookie.len() > MAX_COOKIE {
        return Err(CookieError::TooLong(cookie.len()));
    }
    match proto::decode(cookie)? {
        Message::Request(r) => match r.body.kind {
            RequestKind::Convert { destination } => Ok((r, destination)),
            _ => Err(CookieError::NotAConversion),
        },
        _ => Err(CookieError::NotARequest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::Roles;

    #[test]
    fn a_cookie_fits_a_convert_message_and_reads_back() {
        let root = SecretKey::from_seed([1; 32]);
        let key = SecretKey::from_seed([2; 32]);
        let cert = Certificate::issue(
            &root,
            "bob",
            key.public(),
            None,
            0,
            u64::MAX / 2,
            Roles::CLIENT,
        )
        .unwrap();
        let ask = Ask {
            converter: "carol".into(),
            destination: "203.0.113.9:5201".parse().unwrap(),
            source: "198.51.100.4".parse().unwrap(),
            timestamp_ms: 1_000,
            nonce: Nonce([5; 16]),
        };
        let c = make(&cert, &key, &ask);
        assert!(c.len() < 400, "{}", c.len());
        let mut padded = c.clone();
        padded.extend_from_slice(&[0, 0, 0]);
        let (r, dest) = read(&padded).unwrap();
        assert_eq!(dest, ask.destination);
        assert_eq!(r.body.waypoint, "carol");
        r.verify_signature().unwrap();
        assert!(matches!(
            read(&c[..c.len() - 1]),
            Err(CookieError::Undecodable(_))
        ));
        assert_eq!(
            read(&vec![0; MAX_COOKIE + 1]),
            Err(CookieError::TooLong(MAX_COOKIE + 1))
        );
    }
}
