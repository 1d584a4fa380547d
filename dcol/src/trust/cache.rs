//! Certificates whose root signature was already checked, so that a waypoint
//! checks a member's certificate signature once instead of once per request.
//! Pure, bounded, no clock.
//!
//! A cached certificate skips only the signature: the cheap checks (collective,
//! revocation, validity at `now`, name, member id) run on every use, so a
//! revocation or an expiry applies at once. Entries are found by the
//! certificate's signature and must equal the presented certificate in every
//! field; the oldest entry makes room for a new one.

use std::collections::{HashMap, VecDeque};

use super::{Certificate, PublicKey, Revocations, TrustError};

/// See the module docs.
#[derive(Debug)]
pub struct CertCache {
    cap: usize,
    verified: HashMap<[u8; 64], Certificate>,
    /// Insertion order, for eviction.
    order: VecDeque<[u8; 64]>,
}

impl CertCache {
    /// A cache of at most `cap` certificates (at least one).
    pub fn new(cap: usize) -> CertCache {
        CertCache {
            cap: cap.max(1),
            verified: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Checks `cert` as a member of the collective `root` at `now` (Unix
    /// seconds): [`Certificate::check_fields`], then the root's signature
    /// unless this very certificate passed it before.
    pub fn check(
        &mut self,
        cert: &Certificate,
        root: &PublicKey,
        revoked: &Revocations,
        now: u64,
    ) -> Result<(), TrustError> {
        cert.check_fields(root, revoked, now)?;
        if self.verified.get(&cert.signature.0) == Some(cert) {
            return Ok(());
        }
        cert.verify_signature(root)?;
        if self.verified.len() >= self.cap {
            if let Some(old) = self.order.pop_front() {
                self.verified.remove(&old);
            }
        }
        if self
            .verified
            .insert(cert.signature.0, cert.clone())
            .is_none()
        {
            self.order.push_back(cert.signature.0);
        }
        Ok(())
    }

    /// Number of cached certificates.
    pub fn len(&self) -> usize {
        self.verified.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.verified.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{Roles, SecretKey};

    const NOW: u64 = 1_793_491_200;

    fn cert(root: &SecretKey, name: &str, seed: u8) -> Certificate {
        let k = SecretKey::from_seed([seed; 32]);
        Certificate::issue(
            root,
            name,
            k.public(),
            None,
            NOW - 10,
            NOW + 10,
            Roles::CLIENT,
        )
        .expect("valid")
    }

    #[test]
    fn caches_verified_certificates_and_still_checks_the_cheap_fields() {
        let root = SecretKey::from_seed([1; 32]);
        let rp = root.public();
        let none = Revocations::default();
        let mut c = CertCache::new(2);
        let bob = cert(&root, "bob", 3);
        c.check(&bob, &rp, &none, NOW).unwrap();
        assert_eq!(c.len(), 1);
        // Cached, but expiry and revocation still apply.
        assert_eq!(
            c.check(&bob, &rp, &none, NOW + 10),
            Err(TrustError::Expired {
                not_after: NOW + 10
            })
        );
        let mut rev = Revocations::default();
        rev.insert(bob.member);
        assert_eq!(
            c.check(&bob, &rp, &rev, NOW),
            Err(TrustError::Revoked { member: bob.member })
        );
        // Same signature, another field: not the cached certificate, and its
        // signature fails.
        let mut evil = bob.clone();
        evil.roles = Roles::CLIENT | Roles::WAYPOINT;
        assert_eq!(
            c.check(&evil, &rp, &none, NOW),
            Err(TrustError::BadSignature)
        );
        // A forged signature is never cached.
        let mut forged = cert(&root, "carol", 4);
        forged.signature.0[5] ^= 1;
        assert_eq!(
            c.check(&forged, &rp, &none, NOW),
            Err(TrustError::BadSignature)
        );
        assert_eq!(c.len(), 1);
        // Another collective fails before any signature check.
        let other = SecretKey::from_seed([9; 32]);
        assert_eq!(
            c.check(&cert(&other, "mallory", 5), &rp, &none, NOW),
            Err(TrustError::WrongCollective)
        );
        // Bounded: the oldest goes.
        c.check(&cert(&root, "carol", 4), &rp, &none, NOW).unwrap();
        c.check(&cert(&root, "dave", 6), &rp, &none, NOW).unwrap();
        assert_eq!(c.len(), 2);
        assert!(!c.verified.contains_key(&bob.signature.0));
        c.check(&bob, &rp, &none, NOW).unwrap();
        assert_eq!(c.len(), 2);
    }
}
