//! Certificate renewal through the directory: a member whose certificate is
//! in the last third of its validity signs a [`RenewalRequest`] with its
//! member key; a directory server run with `--renew` (it holds the
//! collective key anyway, to sign snapshots) checks it and answers with a
//! new certificate: same name, keys and roles, the same lifetime, starting
//! now. Only a member whose certificate is still valid and not revoked gets
//! one, so revocation and expiry keep their meaning: a member that lapsed
//! goes back to the administrator.

use serde::{Deserialize, Serialize};

use super::{check_head, decode_exact, signed, to_vec, DirError, MAX_RECORD};
use crate::trust::{self, Certificate, Revocations, SecretKey, Signature, TrustError};

/// Renewal request format version.
pub const RENEW_VERSION: u8 = 0x01;
const RENEW_DOMAIN: &[u8] = b"dcol/renew/v1\0";
/// Longest lifetime a renewed certificate gets (what `admit --days` allows).
const MAX_LIFETIME_S: u64 = 3650 * 86_400;
/// How old (or how far ahead of the server's clock) a request may be.
pub const MAX_SKEW_MS: u64 = 300_000;

/// A member asks for a new certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalRequest {
    /// [`RENEW_VERSION`].
    pub version: u8,
    /// The member's current certificate.
    pub cert: Certificate,
    /// Unix milliseconds when signed.
    pub at_ms: u64,
    /// By `cert.key` over the fields above.
    pub signature: Signature,
}

#[derive(Serialize)]
struct RenewTbs<'a> {
    version: u8,
    cert: &'a Certificate,
    at_ms: u64,
}

impl RenewalRequest {
    /// Signs a request for `cert` with its `key`.
    pub fn sign(key: &SecretKey, cert: Certificate, at_ms: u64) -> RenewalRequest {
        let mut r = RenewalRequest {
            version: RENEW_VERSION,
            cert,
            at_ms,
            signature: Signature([0; 64]),
        };
        r.signature = key.sign(&r.signed_bytes());
        r
    }

    fn signed_bytes(&self) -> Vec<u8> {
        signed(
            RENEW_DOMAIN,
            &RenewTbs {
                version: self.version,
                cert: &self.cert,
                at_ms: self.at_ms,
            },
        )
    }

    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        to_vec(self)
    }

    /// Parses a request (format only; [`RenewalRequest::verify`] checks it).
    pub fn decode(b: &[u8]) -> Result<RenewalRequest, DirError> {
        check_head(b, RENEW_VERSION, MAX_RECORD)?;
        decode_exact(b)
    }

    /// Checks the certificate (root, validity, revocation) and the signature
    /// at `now_ms`, and that the request is fresh.
    pub fn verify(
        &self,
        root: &trust::PublicKey,
        revoked: &Revocations,
        now_ms: u64,
    ) -> Result<(), DirError> {
        self.cert
            .verify_member(root, revoked, now_ms / 1000)
            .map_err(|e| match e {
                TrustError::WrongCollective => DirError::WrongCollective,
                e => DirError::Certificate(e),
            })?;
        trust::verify(&self.cert.key, &self.signed_bytes(), &self.signature)
            .map_err(|_| DirError::BadSignature)?;
        if self.at_ms.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(DirError::Malformed(format!(
                "request time {} ms is more than {} s from the directory's clock {} ms",
                self.at_ms,
                MAX_SKEW_MS / 1000,
                now_ms
            )));
        }
        Ok(())
    }
}

/// The certificate's lifetime, s.
fn lifetime(c: &Certificate) -> u64 {
    c.not_after.saturating_sub(c.not_before)
}

/// Whether `c` is due for renewal at `now_s`: in the last third of its
/// validity (a year-long certificate: its last four months).
pub fn due(c: &Certificate, now_s: u64) -> bool {
    c.not_after.saturating_sub(now_s) < lifetime(c) / 3
}

/// From when `c` is due (Unix s).
pub fn due_from(c: &Certificate) -> u64 {
    c.not_after.saturating_sub(lifetime(c) / 3)
}

/// The renewed certificate: same name, keys and roles, the same lifetime
/// (at most ten years) from `now_s` (minus the five minutes of clock skew
/// `admit` allows too).
pub fn renew(root: &SecretKey, c: &Certificate, now_s: u64) -> Result<Certificate, TrustError> {
    let life = lifetime(c).min(MAX_LIFETIME_S);
    Certificate::issue(
        root,
        &c.name,
        c.key,
        c.wg_key,
        now_s.saturating_sub(300),
        now_s.saturating_add(life),
        c.roles,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{key, root, root_pub, T0};
    use crate::trust::{MemberId, Roles};

    /// bob's certificate valid from `from` for `days`.
    fn bob(from: u64, days: u64) -> Certificate {
        Certificate::issue(
            &root(),
            "bob",
            key(7).public(),
            Some([9; 32]),
            from,
            from + days * 86_400,
            Roles::CLIENT,
        )
        .unwrap()
    }

    #[test]
    fn due_in_the_last_third() {
        let c = bob(T0, 300);
        assert!(!due(&c, T0 + 199 * 86_400));
        assert!(due(&c, T0 + 201 * 86_400));
        assert_eq!(due_from(&c), T0 + 200 * 86_400);
    }

    #[test]
    fn renewed_certificate_keeps_everything_but_the_dates() {
        let c = bob(T0, 300);
        let now = T0 + 250 * 86_400;
        let n = renew(&root(), &c, now).unwrap();
        assert_eq!(
            (&n.name, n.key, n.wg_key, n.roles),
            (&c.name, c.key, c.wg_key, c.roles)
        );
        assert_eq!(n.not_after, now + 300 * 86_400);
        n.verify(&root_pub(), now).unwrap();
        // Lifetimes beyond ten years are cut.
        let long = bob(T0, 5000);
        assert_eq!(
            lifetime(&renew(&root(), &long, T0).unwrap()),
            MAX_LIFETIME_S + 300
        );
    }

    #[test]
    fn requests_verify_and_refuse_forgery_staleness_and_revocation() {
        let c = bob(T0, 300);
        let now_ms = (T0 + 250 * 86_400) * 1000;
        let none = Revocations::default();
        let r = RenewalRequest::sign(&key(7), c.clone(), now_ms);
        let back = RenewalRequest::decode(&r.encode()).unwrap();
        back.verify(&root_pub(), &none, now_ms + 1000).unwrap();
        // Signed by another key.
        let forged = RenewalRequest::sign(&key(8), c.clone(), now_ms);
        assert_eq!(
            forged.verify(&root_pub(), &none, now_ms),
            Err(DirError::BadSignature)
        );
        // Old or from the future.
        for at in [now_ms - MAX_SKEW_MS - 1, now_ms + MAX_SKEW_MS + 1] {
            let e = RenewalRequest::sign(&key(7), c.clone(), at)
                .verify(&root_pub(), &none, now_ms)
                .unwrap_err();
            assert!(e.to_string().contains("from the directory's clock"), "{e}");
        }
        // Revoked, or expired: no renewal.
        let mut rev = Revocations::default();
        rev.insert(MemberId::of(&key(7).public()));
        assert!(matches!(
            r.verify(&root_pub(), &rev, now_ms),
            Err(DirError::Certificate(_))
        ));
        let late_ms = (T0 + 301 * 86_400) * 1000;
        let late = RenewalRequest::sign(&key(7), c, late_ms);
        assert!(matches!(
            late.verify(&root_pub(), &none, late_ms),
            Err(DirError::Certificate(TrustError::Expired { .. }))
        ));
        // Garbage and truncation.
        assert!(RenewalRequest::decode(&[]).is_err());
        let b = r.encode();
        assert!(RenewalRequest::decode(&b[..b.len() - 1]).is_err());
    }
}
