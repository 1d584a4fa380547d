//! Requests of protocol version 1, read only: the evidence log keeps the
//! requests it granted, and records written before a router moved to
//! version 2 must still verify. Nothing here is accepted on the wire.
//!
//! Version 1 had no `source` in the body and signed under
//! `dcol/request/v1\0`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Nonce, Request, RequestBody, RequestKind, REQUEST_MIN_LEN};
use crate::trust::{Certificate, PublicKey, Revocations, SecretKey, Signature, TrustError};

const VERSION: u8 = 0x01;
const DOMAIN: &[u8] = b"dcol/request/v1\0";

/// A version-1 request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyV1 {
    /// Name of the waypoint the request was meant for.
    pub waypoint: String,
    /// Member's clock, Unix milliseconds.
    pub timestamp_ms: u64,
    /// The request's nonce.
    pub nonce: Nonce,
    /// What was asked for.
    pub kind: RequestKind,
}

/// A signed version-1 request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestV1 {
    /// The member's certificate.
    pub cert: Certificate,
    /// The signed body.
    pub body: BodyV1,
    /// Signature by `cert.key` over the body.
    pub signature: Signature,
}

impl RequestV1 {
    /// Decodes a version-1 request datagram (padded or not); `None` for
    /// anything else.
    pub fn decode(b: &[u8]) -> Option<RequestV1> {
        let payload = match b {
            [VERSION, super::KIND_REQUEST, rest @ ..] => rest,
            _ => return None,
        };
        let (r, rest) = postcard::take_from_bytes::<RequestV1>(payload).ok()?;
        rest.iter().all(|&x| x == 0).then_some(r)
    }

    /// Checks the certificate at `now` and the member's signature.
    pub fn verify(
        &self,
        root: &PublicKey,
        revoked: &Revocations,
        now: u64,
    ) -> Result<(), TrustError> {
        let (body, sig) = (&self.body, &self.signature);
        super::verify_signed(&self.cert, DOMAIN, body, sig, root, revoked, now)
    }

    /// The request as this version's type, with `source` (version 1 named
    /// none: the evidence gives the address the waypoint saw). Its signature
    /// does not verify as a version-2 request.
    pub fn into_request(self, source: IpAddr) -> Request {
        Request {
            cert: self.cert,
            body: RequestBody {
                waypoint: self.body.waypoint,
                timestamp_ms: self.body.timestamp_ms,
                nonce: self.body.nonce,
                source,
                kind: self.body.kind,
            },
            signature: self.signature,
        }
    }

    /// Encodes it as a version-1 router did (tests and benchmarks).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION, super::KIND_REQUEST];
        out.extend(postcard::to_allocvec(self).expect("serializing to a Vec cannot fail"));
        out.resize(out.len().max(REQUEST_MIN_LEN), 0);
        out
    }

    /// Signs `body` as a version-1 member did (tests and benchmarks).
    pub fn sign(cert: Certificate, key: &SecretKey, body: BodyV1) -> RequestV1 {
        RequestV1 {
            signature: key.sign(&super::signed(DOMAIN, &body)),
            cert,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, cert, nat, T0};
    use crate::trust::Roles;

    #[test]
    fn version_1_requests_decode_and_verify_but_never_as_version_2() {
        let bob = cert("bob", 3, Roles::CLIENT);
        let body = BodyV1 {
            waypoint: "alice".into(),
            timestamp_ms: T0 * 1000,
            nonce: Nonce([4; 16]),
            kind: nat("10.0.3.2:5201"),
        };
        let r = RequestV1::sign(bob, &testutil::key(3), body);
        let bytes = r.encode();
        assert_eq!(&bytes[..2], &[0x01, 0x01]);
        assert_eq!(bytes.len(), REQUEST_MIN_LEN);
        let back = RequestV1::decode(&bytes).unwrap();
        assert_eq!(back, r);
        let none = Revocations::default();
        back.verify(&testutil::root_pub(), &none, T0).unwrap();
        // Version 2 refuses the datagram; converted, its signature fails.
        assert!(super::super::decode(&bytes).is_err());
        let v2 = back.clone().into_request("10.0.1.2".parse().unwrap());
        assert_eq!(v2.verify_signature(), Err(TrustError::BadSignature));
        // Tampered, or with garbage after it: not a valid version-1 request.
        let mut t = bytes.clone();
        t[bytes.len() - 1] = 1;
        assert_eq!(RequestV1::decode(&t), None);
        let mut evil = back;
        evil.body.timestamp_ms += 1;
        assert_eq!(
            evil.verify(&testutil::root_pub(), &none, T0),
            Err(TrustError::BadSignature)
        );
        assert_eq!(RequestV1::decode(&[0x02, 0x01, 0]), None);
    }
}
