//! The UDP signaling protocol between clients and waypoints. Pure: no I/O, no
//! clock.
//!
//! Every datagram is
//! ```text
//! byte 0     VERSION (0x02): a router of another version refuses clearly
//! byte 1     kind: 0x01 request, 0x02 response, 0x03 unsigned refusal
//! bytes 2..  postcard encoding of the message
//! then       zero or more 0x00 bytes of padding
//! ```
//! Requests are padded to [`REQUEST_MIN_LEN`] so that a signed response (which
//! carries the waypoint's certificate) always fits in the size of the request
//! that caused it: the waypoint never answers with more bytes than it received
//! (no reflection amplification; it also checks with [`response_fits`]).
//!
//! A request carries the member's certificate, names the waypoint it is meant for
//! (so it cannot be replayed to another) and the source address the waypoint
//! will see it come from (so it cannot be replayed from another address), a
//! timestamp and a nonce, and is signed by the member key. A response echoes
//! the nonce and is signed by the waypoint.
//!
//! An [`UnsignedRefusal`] answers a request the waypoint refused before (or
//! instead of) checking its signature: garbage-cheap to make, so a flood of
//! forged requests costs no signing; and, since anyone can forge one, a
//! client only logs it and never acts on it.
//!
//! Version 2 (this one) added the request's `source`, the unsigned refusal,
//! [`Outcome::WrongSource`] and three refusal reasons; its signatures use new
//! domains (`dcol/request/v2`, `dcol/response/v2`), so no version-1 signature
//! verifies as a version-2 message. Routers of version 1 and 2 do not talk:
//! each logs the other's datagrams as "protocol version N (this router speaks
//! version M)", and a version-2 waypoint answers a version-1 request with an
//! unsigned [`RefusalReason::UnsupportedVersion`] (which the old client logs
//! the same way).
//!
//! Round trip, and what a decoded message guarantees (well-formed, nothing
//! but zeros after it; not yet authentic: check signatures separately):
//! ```
//! use dcol::proto::{decode, encode, Message, Nonce, RefusalReason, UnsignedRefusal};
//!
//! let r = UnsignedRefusal { reason: RefusalReason::RateLimited, nonce: Some(Nonce([7; 16])) };
//! let bytes = encode(&Message::Refusal(r.clone()));
//! assert_eq!(&bytes[..4], &[0x02, 0x03, 0x0f, 0x01]);
//! assert_eq!(decode(&bytes), Ok(Message::Refusal(r)));
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::trust::{self, Certificate, PublicKey, Revocations, SecretKey, Signature, TrustError};

pub mod v1;

/// Protocol version, the first byte of every datagram.
pub const VERSION: u8 = 0x02;
/// Message kind byte of a request.
pub const KIND_REQUEST: u8 = 0x01;
/// Message kind byte of a response.
pub const KIND_RESPONSE: u8 = 0x02;
/// Message kind byte of an unsigned refusal.
pub const KIND_REFUSAL: u8 = 0x03;
/// Longest datagram either side accepts (fits any path MTU of 1280 with headers).
pub const MAX_DATAGRAM: usize = 1200;
/// Requests are padded to at least this length.
pub const REQUEST_MIN_LEN: usize = 640;

const REQUEST_DOMAIN: &[u8] = b"dcol/request/v2\0";
const RESPONSE_DOMAIN: &[u8] = b"dcol/response/v2\0";

/// A request's nonce: unique per member within the freshness window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Nonce(pub [u8; 16]);

/// What a member asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestKind {
    /// A NAT tunnel to `destination` (the MPTCP server's address and port).
    NatDetour {
        /// The server.
        destination: SocketAddr,
    },
    /// Extend the lease on `port` (also the client's liveness probe).
    Renew {
        /// The granted port.
        port: u16,
        /// The server it maps to.
        destination: SocketAddr,
        /// Nonce of the request that created the lease: after a waypoint restart
        /// the same port may belong to a new lease, which this tells apart.
        lease: Nonce,
    },
    /// The connection is over: end the lease on `port`.
    Release {
        /// The granted port.
        port: u16,
        /// Nonce of the request that created the lease.
        lease: Nonce,
    },
    /// A VPN tunnel: add the WireGuard key in the member's certificate as a
    /// peer with one address of the waypoint's VPN subnet.
    Vpn,
    /// Extend the VPN lease (also the client's liveness probe).
    VpnRenew {
        /// Nonce of the request that created the lease.
        lease: Nonce,
    },
    /// End the VPN lease (the peer is removed).
    VpnRelease {
        /// Nonce of the request that created the lease.
        lease: Nonce,
    },
    /// Convert one MPTCP connection to plain TCP toward `destination`
    /// (RFC 8803): never sent as a datagram, only inside the Cookie TLV of
    /// a Convert message ([`crate::convert::cookie`]). A waypoint's
    /// signaling port ignores it.
    Convert {
        /// The plain TCP server.
        destination: SocketAddr,
    },
}

/// The signed part of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestBody {
    /// Name of the waypoint the request is meant for.
    pub waypoint: String,
    /// Member's clock, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Unique per request; retransmissions repeat it.
    pub nonce: Nonce,
    /// The address the waypoint will see this request come from (the
    /// member's public address behind a NAT: learned from the `observed`
    /// address of an earlier answer, or from STUN). A waypoint refuses a
    /// request from any other address, with [`Outcome::WrongSource`].
    pub source: IpAddr,
    /// What is asked for.
    pub kind: RequestKind,
}

/// A signed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The member's certificate.
    pub cert: Certificate,
    /// The signed body.
    pub body: RequestBody,
    /// Signature by `cert.key` over the body.
    pub signature: Signature,
}

/// Why a waypoint refused.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalReason {
    /// Certificate invalid, expired, of another collective, or bad signature.
    BadCertificate = 0x01,
    /// The member is revoked.
    Revoked = 0x02,
    /// The timestamp is outside the freshness window.
    Stale = 0x03,
    /// The nonce was already used (from another address or with another body).
    Replay = 0x04,
    /// The request names another waypoint.
    WrongWaypoint = 0x05,
    /// The destination is refused by policy.
    DestinationNotAllowed = 0x06,
    /// The member holds its maximum number of tunnels.
    QuotaExceeded = 0x07,
    /// No port is free.
    NoPortsLeft = 0x08,
    /// Renew/release of a lease that does not exist (any more).
    UnknownLease = 0x09,
    /// The requester lacks the needed role.
    NotAWaypoint = 0x0a,
    /// The waypoint failed internally (e.g. the kernel refused the map element).
    Internal = 0x0b,
    /// The waypoint offers no VPN tunnels.
    NoVpn = 0x0c,
    /// Every address of the VPN subnet is in use.
    NoAddressesLeft = 0x0d,
    /// The member's certificate carries no WireGuard key.
    NoWireGuardKey = 0x0e,
    /// The owner's monthly donation (`donate_monthly_gb`) is used up: no new
    /// tunnels or renewals until the next calendar month.
    DonationUsedUp = 0x0f,
    /// Too many requests from this member or this source address for now
    /// (also: the member's share of the replay cache is full).
    RateLimited = 0x10,
    /// The member's share of the waypoint's evidence log is full of records
    /// younger than a day: no new tunnels for it until they age.
    EvidenceFull = 0x11,
    /// The datagram is of another protocol version (in an unsigned refusal).
    UnsupportedVersion = 0x12,
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefusalReason::BadCertificate => "bad certificate or signature",
            RefusalReason::Revoked => "member revoked",
            RefusalReason::Stale => "stale or future timestamp",
            RefusalReason::Replay => "replayed request",
            RefusalReason::WrongWaypoint => "addressed to another waypoint",
            RefusalReason::DestinationNotAllowed => "destination not allowed",
            RefusalReason::QuotaExceeded => "tunnel quota exceeded",
            RefusalReason::NoPortsLeft => "no ports left",
            RefusalReason::UnknownLease => "unknown lease",
            RefusalReason::NotAWaypoint => "role not allowed",
            RefusalReason::Internal => "internal error",
            RefusalReason::NoVpn => "no VPN tunnels here",
            RefusalReason::NoAddressesLeft => "VPN subnet exhausted",
            RefusalReason::NoWireGuardKey => "certificate has no WireGuard key",
            RefusalReason::DonationUsedUp => "this month's donation is used up",
            RefusalReason::RateLimited => "too many requests, try later",
            RefusalReason::EvidenceFull => "evidence share full, try later",
            RefusalReason::UnsupportedVersion => "unsupported protocol version",
        })
    }
}

/// What the waypoint decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The tunnel exists (or was renewed / released; then `lease_secs` is 0).
    Granted {
        /// Port on the waypoint to send the subflow to.
        port: u16,
        /// Lease length.
        lease_secs: u32,
        /// The client's address as the waypoint saw it.
        observed: IpAddr,
    },
    /// The VPN tunnel exists (or was renewed / released; then `lease_secs` is 0).
    VpnGranted {
        /// The member's tunnel address (a /32 of the waypoint's subnet).
        address: std::net::Ipv4Addr,
        /// An IPv6 tunnel address (a /128), when the waypoint has a v6 subnet.
        address6: Option<std::net::Ipv6Addr>,
        /// The waypoint's WireGuard public key.
        wg_key: [u8; 32],
        /// The waypoint's WireGuard UDP port (at the address the request went to).
        port: u16,
        /// Lease length.
        lease_secs: u32,
    },
    /// Refused.
    Refused {
        /// Why.
        reason: RefusalReason,
    },
    /// Refused: the request names another `source` than the address it came
    /// from. Ask again at once with `observed` (a NAT between member and
    /// waypoint, or a first contact); a request sniffed and replayed from
    /// elsewhere gets this too, and nothing else.
    WrongSource {
        /// The address the request came from, as the waypoint saw it.
        observed: IpAddr,
    },
}

/// The signed part of a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseBody {
    /// The request's nonce.
    pub nonce: Nonce,
    /// Waypoint's clock, Unix milliseconds.
    pub timestamp_ms: u64,
    /// The decision.
    pub outcome: Outcome,
}

/// A signed response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The waypoint's certificate.
    pub cert: Certificate,
    /// The signed body.
    pub body: ResponseBody,
    /// Signature by `cert.key`.
    pub signature: Signature,
}

fn signed(domain: &[u8], body: &impl Serialize) -> Vec<u8> {
    let mut m = domain.to_vec();
    m.extend(postcard::to_allocvec(body).expect("serializing to a Vec cannot fail"));
    m
}

/// Checks `cert` as a member of the collective `root` at `now`, then `sig` by
/// its key over `domain` || postcard(`body`).
fn verify_signed(
    cert: &Certificate,
    domain: &[u8],
    body: &impl Serialize,
    sig: &Signature,
    root: &PublicKey,
    revoked: &Revocations,
    now: u64,
) -> Result<(), TrustError> {
    cert.verify_member(root, revoked, now)?;
    trust::verify(&cert.key, &signed(domain, body), sig)
}

impl Request {
    /// Signs `body` with the member `key` (which must be `cert.key`'s secret).
    pub fn sign(cert: Certificate, key: &SecretKey, body: RequestBody) -> Request {
        let signature = key.sign(&signed(REQUEST_DOMAIN, &body));
        Request {
            cert,
            body,
            signature,
        }
    }

    /// Checks the member's signature over the body only (the certificate's
    /// own checks are the caller's: [`trust::CertCache::check`]).
    pub fn verify_signature(&self) -> Result<(), TrustError> {
        trust::verify(
            &self.cert.key,
            &signed(REQUEST_DOMAIN, &self.body),
            &self.signature,
        )
    }

    /// Checks the certificate (collective, validity at `now` in Unix seconds,
    /// revocation) and the signature.
    pub fn verify(
        &self,
        root: &PublicKey,
        revoked: &Revocations,
        now: u64,
    ) -> Result<(), TrustError> {
        verify_signed(
            &self.cert,
            REQUEST_DOMAIN,
            &self.body,
            &self.signature,
            root,
            revoked,
            now,
        )
    }
}

impl Response {
    /// Signs `body` with the waypoint `key`.
    pub fn sign(cert: Certificate, key: &SecretKey, body: ResponseBody) -> Response {
        let signature = key.sign(&signed(RESPONSE_DOMAIN, &body));
        Response {
            cert,
            body,
            signature,
        }
    }

    /// Checks the waypoint's certificate and the signature.
    pub fn verify(
        &self,
        root: &PublicKey,
        revoked: &Revocations,
        now: u64,
    ) -> Result<(), TrustError> {
        verify_signed(
            &self.cert,
            RESPONSE_DOMAIN,
            &self.body,
            &self.signature,
            root,
            revoked,
            now,
        )
    }
}

/// True when `body` is meant for the waypoint holding `cert`.
pub fn addressed_to(body: &RequestBody, cert: &Certificate) -> bool {
    body.waypoint == cert.name
}

/// Anti-amplification: a response may be sent only if it is not longer than the
/// request.
pub fn response_fits(request_len: usize, response_len: usize) -> bool {
    response_len <= request_len
}

/// A waypoint's answer to a request it refused before it was authenticated
/// (or to one of another protocol version). Not signed: anyone can send
/// one, so a client logs it and acts on nothing in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsignedRefusal {
    /// Why.
    pub reason: RefusalReason,
    /// The request's nonce, when it decoded.
    pub nonce: Option<Nonce>,
}

/// A signaling message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Client → waypoint.
    Request(Request),
    /// Waypoint → client.
    Response(Response),
    /// Waypoint → client, unauthenticated.
    Refusal(UnsignedRefusal),
}

/// Why a datagram could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// No bytes at all.
    Empty,
    /// Shorter than a header, or the message ends early.
    Truncated,
    /// Longer than [`MAX_DATAGRAM`].
    TooLong {
        /// The datagram's length.
        len: usize,
    },
    /// Another protocol version.
    UnsupportedVersion(u8),
    /// Unknown message kind.
    UnknownKind(u8),
    /// The message body does not decode.
    Malformed(String),
    /// Non-zero bytes after the message.
    TrailingBytes {
        /// Offset of the first one.
        at: usize,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Empty => f.write_str("empty datagram"),
            WireError::Truncated => f.write_str("truncated datagram"),
            WireError::TooLong { len } => {
                write!(f, "datagram of {len} bytes (limit {MAX_DATAGRAM})")
            }
            WireError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "protocol version {v} (this router speaks version {VERSION})"
                )
            }
            WireError::UnknownKind(k) => write!(f, "unknown message kind {k:#04x}"),
            WireError::Malformed(e) => write!(f, "malformed message: {e}"),
            WireError::TrailingBytes { at } => write!(f, "garbage after the message at byte {at}"),
        }
    }
}

impl std::error::Error for WireError {}

/// Encodes a message; requests are padded to [`REQUEST_MIN_LEN`].
pub fn encode(m: &Message) -> Vec<u8> {
    let (kind, body) = match m {
        Message::Request(r) => (KIND_REQUEST, postcard::to_allocvec(r)),
        Message::Response(r) => (KIND_RESPONSE, postcard::to_allocvec(r)),
        Message::Refusal(r) => (KIND_REFUSAL, postcard::to_allocvec(r)),
    };
    let mut out = vec![VERSION, kind];
    out.extend(body.expect("serializing to a Vec cannot fail"));
    if kind == KIND_REQUEST && out.len() < REQUEST_MIN_LEN {
        out.resize(REQUEST_MIN_LEN, 0);
    }
    out
}

/// Decodes a datagram. Never panics; allocation is bounded by the input length.
pub fn decode(b: &[u8]) -> Result<Message, WireError> {
    decode_len(b).map(|(m, _)| m)
}

/// The message in `b` without its zero padding (for keeping a request as
/// evidence: the signature covers no padding), or `None` if it does not
/// decode.
pub fn unpadded(b: &[u8]) -> Option<&[u8]> {
    decode_len(b).ok().and_then(|(_, n)| b.get(..n))
}

/// True when `b` looks like a request of another protocol version: the
/// waypoint answers it with [`RefusalReason::UnsupportedVersion`] (anything
/// else undecodable gets no answer).
pub fn other_version_request(b: &[u8]) -> bool {
    matches!(b, [v, KIND_REQUEST, ..] if *v != VERSION && b.len() >= REQUEST_MIN_LEN)
}

/// The message and the length of `b` it used (the rest is padding).
fn decode_len(b: &[u8]) -> Result<(Message, usize), WireError> {
    match b.len() {
        0 => return Err(WireError::Empty),
        n if n > MAX_DATAGRAM => return Err(WireError::TooLong { len: n }),
        _ => {}
    }
    if b[0] != VERSION {
        return Err(WireError::UnsupportedVersion(b[0]));
    }
    let Some(&kind) = b.get(1) else {
        return Err(WireError::Truncated);
    };
    let payload = &b[2..];
    let map = |e: postcard::Error| match e {
        postcard::Error::DeserializeUnexpectedEnd => WireError::Truncated,
        e => WireError::Malformed(e.to_string()),
    };
    fn take<'a, T: Deserialize<'a>>(
        p: &'a [u8],
        map: impl Fn(postcard::Error) -> WireError,
        wrap: impl Fn(T) -> Message,
    ) -> Result<(Message, &'a [u8]), WireError> {
        postcard::take_from_bytes::<T>(p)
            .map(|(m, rest)| (wrap(m), rest))
            .map_err(map)
    }
    let (msg, rest) = match kind {
        KIND_REQUEST => take(payload, map, Message::Request)?,
        KIND_RESPONSE => take(payload, map, Message::Response)?,
        KIND_REFUSAL => take(payload, map, Message::Refusal)?,
        k => return Err(WireError::UnknownKind(k)),
    };
    let used = b.len() - rest.len();
    if let Some(i) = rest.iter().position(|&x| x != 0) {
        return Err(WireError::TrailingBytes { at: used + i });
    }
    Ok((msg, used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::Roles;

    const NOW: u64 = 1_793_491_200;

    fn root() -> SecretKey {
        SecretKey::from_seed([1; 32])
    }

    fn cert(name: &str, seed: u8, wg: Option<[u8; 32]>) -> Certificate {
        let k = SecretKey::from_seed([seed; 32]);
        Certificate::issue(
            &root(),
            name,
            k.public(),
            wg,
            NOW - 10,
            NOW + 10,
            Roles::CLIENT | Roles::WAYPOINT,
        )
        .unwrap()
    }

    fn request() -> Request {
        let body = RequestBody {
            waypoint: "alice".into(),
            timestamp_ms: NOW * 1000,
            nonce: Nonce([7; 16]),
            source: "198.51.100.4".parse().unwrap(),
            kind: RequestKind::NatDetour {
                destination: "203.0.113.9:443".parse().unwrap(),
            },
        };
        Request::sign(cert("bob", 3, None), &SecretKey::from_seed([3; 32]), body)
    }

    #[test]
    fn request_round_trip_and_fixture_header() {
        let r = request();
        let bytes = encode(&Message::Request(r.clone()));
        assert_eq!(bytes.len(), REQUEST_MIN_LEN);
        assert_eq!(&bytes[..2], &[VERSION, KIND_REQUEST]);
        // The certificate follows the header unchanged (its own fixture is in trust).
        let cert_bytes = postcard::to_allocvec(&r.cert).unwrap();
        assert_eq!(&bytes[2..2 + cert_bytes.len()], &cert_bytes[..]);
        // Then the body: waypoint name, timestamp varint (6 bytes), nonce,
        // source (IpAddr: variant 0 = V4, four bytes), kind 0 + SocketAddr
        // (variant 0 = V4, four bytes, port varint).
        let body = &bytes[2 + cert_bytes.len()..];
        assert_eq!(&body[..6], b"\x05alice");
        assert_eq!(&body[12..28], &[7; 16]);
        assert_eq!(&body[28..33], &[0x00, 198, 51, 100, 4]);
        assert_eq!(&body[33..41], &[0x00, 0x00, 203, 0, 113, 9, 0xbb, 0x03]);
        assert_eq!(decode(&bytes), Ok(Message::Request(r.clone())));
        r.verify_signature().unwrap();
        r.verify(&root().public(), &Revocations::default(), NOW)
            .unwrap();
        // Deterministic signatures: encoding twice gives the same bytes.
        assert_eq!(encode(&Message::Request(request())), bytes);
    }

    #[test]
    fn tampering_and_wrong_keys_fail() {
        let mut r = request();
        r.body.timestamp_ms += 1;
        assert_eq!(
            r.verify(&root().public(), &Revocations::default(), NOW),
            Err(TrustError::BadSignature)
        );
        let r = request();
        let other = SecretKey::from_seed([9; 32]).public();
        assert_eq!(
            r.verify(&other, &Revocations::default(), NOW),
            Err(TrustError::WrongCollective)
        );
        let mut rev = Revocations::default();
        rev.insert(r.cert.member);
        assert!(matches!(
            r.verify(&root().public(), &rev, NOW),
            Err(TrustError::Revoked { .. })
        ));
        // Signed by a key that is not the certificate's.
        let forged = Request::sign(
            r.cert.clone(),
            &SecretKey::from_seed([9; 32]),
            r.body.clone(),
        );
        assert_eq!(
            forged.verify(&root().public(), &Revocations::default(), NOW),
            Err(TrustError::BadSignature)
        );
        // A response signature never verifies as a request's (domain separation).
        let resp_sig = SecretKey::from_seed([3; 32]).sign(&signed(RESPONSE_DOMAIN, &r.body));
        let mixed = Request {
            signature: resp_sig,
            ..r
        };
        assert_eq!(
            mixed.verify(&root().public(), &Revocations::default(), NOW),
            Err(TrustError::BadSignature)
        );
    }

    #[test]
    fn worst_case_response_fits_in_a_request() {
        let long = "x".repeat(crate::trust::MAX_NAME);
        let body = ResponseBody {
            nonce: Nonce([0xff; 16]),
            timestamp_ms: u64::MAX,
            outcome: Outcome::Granted {
                port: u16::MAX,
                lease_secs: u32::MAX,
                observed: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            },
        };
        let r = Response::sign(
            cert(&long, 2, Some([0xff; 32])),
            &SecretKey::from_seed([2; 32]),
            body,
        );
        let bytes = encode(&Message::Response(r.clone()));
        assert!(
            response_fits(REQUEST_MIN_LEN, bytes.len()),
            "{} bytes",
            bytes.len()
        );
        assert_eq!(decode(&bytes), Ok(Message::Response(r)));
        let refusal = ResponseBody {
            nonce: Nonce([0; 16]),
            timestamp_ms: u64::MAX,
            outcome: Outcome::Refused {
                reason: RefusalReason::Internal,
            },
        };
        let r = Response::sign(
            cert(&long, 2, Some([0xff; 32])),
            &SecretKey::from_seed([2; 32]),
            refusal,
        );
        assert!(encode(&Message::Response(r)).len() <= REQUEST_MIN_LEN);
    }

    #[test]
    fn every_wire_error() {
        let good = encode(&Message::Request(request()));
        assert_eq!(decode(&[]), Err(WireError::Empty));
        assert_eq!(decode(&[VERSION]), Err(WireError::Truncated));
        assert_eq!(decode(&[1, 1, 0]), Err(WireError::UnsupportedVersion(1)));
        assert_eq!(decode(&[VERSION, 9]), Err(WireError::UnknownKind(9)));
        assert_eq!(
            decode(&vec![0; MAX_DATAGRAM + 1]),
            Err(WireError::TooLong {
                len: MAX_DATAGRAM + 1
            })
        );
        let mut trailing = good.clone();
        trailing[REQUEST_MIN_LEN - 1] = 1;
        assert_eq!(
            decode(&trailing),
            Err(WireError::TrailingBytes {
                at: REQUEST_MIN_LEN - 1
            })
        );
        let mut bad_enum = good.clone();
        // The certificate's wg_key Option tag (after version, root key, member id,
        // "\x03bob" and the member key) may only be 0 or 1.
        let tag = 2 + 1 + 32 + 8 + 4 + 32;
        assert_eq!(bad_enum[tag], 0);
        bad_enum[tag] = 7;
        assert!(
            matches!(decode(&bad_enum), Err(WireError::Malformed(_))),
            "{:?}",
            decode(&bad_enum)
        );
        // Truncated at every length: an error, never a panic.
        let unpadded = {
            let mut v = vec![VERSION, KIND_REQUEST];
            v.extend(postcard::to_allocvec(&request()).unwrap());
            v
        };
        for n in 0..unpadded.len() {
            assert!(decode(&unpadded[..n]).is_err(), "decoded a {n}-byte prefix");
        }
        assert!(decode(&unpadded).is_ok());
    }

    #[test]
    fn unsigned_refusal_fixture() {
        let r = UnsignedRefusal {
            reason: RefusalReason::UnsupportedVersion,
            nonce: None,
        };
        let bytes = encode(&Message::Refusal(r.clone()));
        // Version, kind, reason (variant 17), no nonce.
        assert_eq!(bytes, [VERSION, KIND_REFUSAL, 0x11, 0x00]);
        assert_eq!(decode(&bytes), Ok(Message::Refusal(r)));
        let with = UnsignedRefusal {
            reason: RefusalReason::BadCertificate,
            nonce: Some(Nonce([0xab; 16])),
        };
        let bytes = encode(&Message::Refusal(with.clone()));
        let mut want = vec![VERSION, KIND_REFUSAL, 0x00, 0x01];
        want.extend([0xab; 16]);
        assert_eq!(bytes, want);
        assert_eq!(decode(&bytes), Ok(Message::Refusal(with)));
        // An unknown reason does not decode.
        assert!(matches!(
            decode(&[VERSION, KIND_REFUSAL, 0x40, 0x00]),
            Err(WireError::Malformed(_))
        ));
        // Unpadded: a refusal is never padded.
        assert_eq!(unpadded(&bytes), Some(&bytes[..]));
    }

    #[test]
    fn wrong_source_fixture() {
        let body = ResponseBody {
            nonce: Nonce([1; 16]),
            timestamp_ms: 5,
            outcome: Outcome::WrongSource {
                observed: "2001:db8::7".parse().unwrap(),
            },
        };
        let bytes = postcard::to_allocvec(&body).unwrap();
        let mut want = vec![1; 16];
        // Timestamp 5; Outcome variant 3; IpAddr variant 1 (V6), 16 bytes.
        want.extend([0x05, 0x03, 0x01]);
        want.extend([0x20, 0x01, 0x0d, 0xb8]);
        want.extend([0; 11]);
        want.push(7);
        assert_eq!(bytes, want);
        let r = Response::sign(cert("alice", 2, None), &SecretKey::from_seed([2; 32]), body);
        let enc = encode(&Message::Response(r.clone()));
        assert!(response_fits(REQUEST_MIN_LEN, enc.len()));
        assert_eq!(decode(&enc), Ok(Message::Response(r)));
    }

    #[test]
    fn padding_and_other_versions() {
        let good = encode(&Message::Request(request()));
        let bare = unpadded(&good).unwrap();
        assert!(bare.len() < good.len() && good[bare.len()..].iter().all(|&b| b == 0));
        assert_eq!(decode(bare), decode(&good));
        assert_eq!(unpadded(&good[..100]), None);
        assert!(!other_version_request(&good));
        let mut v1 = good.clone();
        v1[0] = 0x01;
        assert!(other_version_request(&v1));
        assert!(!other_version_request(&v1[..100]), "too short to be one");
        v1[1] = KIND_RESPONSE;
        assert!(!other_version_request(&v1));
        assert!(!other_version_request(&[]));
    }

    #[test]
    fn hostile_lengths_do_not_allocate() {
        // A name length prefix claiming 2^32 bytes inside a small datagram.
        let mut b = vec![VERSION, KIND_REQUEST, 0x01];
        b.extend([0u8; 40]);
        b.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(decode(&b).is_err());
    }
}
