//! Membership and trust: Ed25519 keys, member certificates signed by the
//! collective's root key, revocation. Pure: no I/O, no clock (callers pass
//! `now`); file formats live in [`files`].
//!
//! A certificate binds a name and a member key to the collective (its root
//! public key), for a validity window and a set of roles. Signatures are
//! domain-separated (`dcol/cert/v1\0`, `dcol/request/v1\0`, ...), so a signature
//! made for one purpose never verifies for another.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};

mod cache;
pub mod files;
pub mod wg;

pub use cache::CertCache;

/// Domain separation of certificate signatures.
const CERT_DOMAIN: &[u8] = b"dcol/cert/v1\0";
/// Current certificate format version.
pub const CERT_VERSION: u8 = 0x01;
/// Longest member name, in bytes.
pub const MAX_NAME: usize = 32;

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", to_hex(&self.0))
    }
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", to_hex(&self.0[..8]))
    }
}

// serde implements arrays only up to 32 elements: encode as a fixed tuple of two halves.
impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        a.copy_from_slice(&self.0[..32]);
        b.copy_from_slice(&self.0[32..]);
        (a, b).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (a, b) = <([u8; 32], [u8; 32])>::deserialize(d)?;
        let mut s = [0u8; 64];
        s[..32].copy_from_slice(&a);
        s[32..].copy_from_slice(&b);
        Ok(Signature(s))
    }
}

/// An Ed25519 secret key. Its `Debug` never prints the secret.
#[derive(Clone)]
pub struct SecretKey(ed25519_dalek::SigningKey);

impl SecretKey {
    /// The key for a 32-byte seed (the caller brings the randomness).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SecretKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The seed, for writing the key file.
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature(self.0.sign(msg).to_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", to_hex(&self.public().0))
    }
}

/// Verifies `sig` over `msg` by `key`.
pub fn verify(key: &PublicKey, msg: &[u8], sig: &Signature) -> Result<(), TrustError> {
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&key.0).map_err(|_| TrustError::BadKey)?;
    vk.verify(msg, &ed25519_dalek::Signature::from_bytes(&sig.0))
        .map_err(|_| TrustError::BadSignature)
}

/// A member's id: the first 8 bytes of SHA-512 of its public key. Shown as 16
/// hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberId(pub [u8; 8]);

impl MemberId {
    /// The id of a member key.
    pub fn of(key: &PublicKey) -> MemberId {
        use sha2::Digest;
        let h = sha2::Sha512::digest(key.0);
        let mut id = [0u8; 8];
        id.copy_from_slice(&h[..8]);
        MemberId(id)
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberId({self})")
    }
}

impl FromStr for MemberId {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let b = from_hex(s).map_err(ParseError::Hex)?;
        let got = b.len() * 2;
        let a: [u8; 8] = b.try_into().map_err(|_| ParseError::Length {
            expected: "16 hex digits",
            got,
        })?;
        Ok(MemberId(a))
    }
}

/// Why a member id, a role list or a WireGuard key does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A character that is not a hex digit, at this column (0-based).
    #[error("bad hex digit at column {0}")]
    Hex(usize),
    /// Not the expected length.
    #[error("expected {expected}, got {got} characters")]
    Length {
        /// What was expected, e.g. "16 hex digits".
        expected: &'static str,
        /// Characters given.
        got: usize,
    },
    /// A role that is neither `client` nor `waypoint`.
    #[error("unknown role '{}' (client, waypoint)", .0.escape_debug())]
    UnknownRole(String),
    /// An empty role list.
    #[error("no role given")]
    NoRole,
    /// A character outside base64's alphabet.
    #[error("invalid base64 character {0:?}")]
    Base64(char),
    /// Base64 whose unused low bits are not zero.
    #[error("non-canonical base64 key")]
    NonCanonical,
}

/// What a member may do.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Roles(pub u8);

impl Roles {
    /// May ask waypoints for detours.
    pub const CLIENT: Roles = Roles(0x01);
    /// May serve detours (grants are accepted only from waypoints).
    pub const WAYPOINT: Roles = Roles(0x02);

    /// True when every role of `other` is in `self`.
    pub fn contains(self, other: Roles) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Roles {
    type Output = Roles;

    fn bitor(self, rhs: Roles) -> Roles {
        Roles(self.0 | rhs.0)
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Vec::new();
        if self.contains(Roles::CLIENT) {
            names.push("client");
        }
        if self.contains(Roles::WAYPOINT) {
            names.push("waypoint");
        }
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Roles({self})")
    }
}

impl FromStr for Roles {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let mut r = Roles(0);
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            r = r | match part {
                "client" => Roles::CLIENT,
                "waypoint" => Roles::WAYPOINT,
                other => return Err(ParseError::UnknownRole(other.to_owned())),
            };
        }
        if r.0 == 0 {
            return Err(ParseError::NoRole);
        }
        Ok(r)
    }
}

/// Why a certificate or signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustError {
    /// The certificate names another collective (another root key).
    WrongCollective,
    /// The signature does not verify.
    BadSignature,
    /// A public key is not a valid Ed25519 point.
    BadKey,
    /// The certificate's member id does not match its key.
    BadMemberId,
    /// The name is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    BadName(String),
    /// Unknown certificate format version.
    UnsupportedVersion(u8),
    /// Not valid before this Unix time.
    NotYetValid {
        /// Start of validity (Unix seconds).
        not_before: u64,
    },
    /// Expired at this Unix time.
    Expired {
        /// End of validity (Unix seconds).
        not_after: u64,
    },
    /// The member was revoked.
    Revoked {
        /// Its id.
        member: MemberId,
    },
    /// The validity window is empty.
    BadWindow,
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustError::WrongCollective => f.write_str("certificate of another collective"),
            TrustError::BadSignature => f.write_str("bad signature"),
            TrustError::BadKey => f.write_str("invalid public key"),
            TrustError::BadMemberId => f.write_str("member id does not match the key"),
            TrustError::BadName(n) => write!(f, "invalid member name '{}'", n.escape_debug()),
            TrustError::UnsupportedVersion(v) => write!(f, "unsupported certificate version {v}"),
            TrustError::NotYetValid { not_before } => {
                write!(f, "certificate not valid before {not_before} (unix time)")
            }
            TrustError::Expired { not_after } => {
                write!(f, "certificate expired at {not_after} (unix time)")
            }
            TrustError::Revoked { member } => write!(f, "member {member} is revoked"),
            TrustError::BadWindow => f.write_str("empty validity window"),
        }
    }
}

impl std::error::Error for TrustError {}

/// Checks a member name: 1-32 bytes of `[A-Za-z0-9._-]`.
pub fn check_name(name: &str) -> Result<(), TrustError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TrustError::BadName(name.chars().take(40).collect()))
    }
}

/// A member certificate, signed by the collective's root key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// Format version ([`CERT_VERSION`]).
    pub version: u8,
    /// The collective's root public key.
    pub collective: PublicKey,
    /// The member's id (derived from `key`).
    pub member: MemberId,
    /// The member's name, unique in the collective.
    pub name: String,
    /// The member's signing key.
    pub key: PublicKey,
    /// The member's WireGuard public key, for VPN tunnels.
    pub wg_key: Option<[u8; 32]>,
    /// Start of validity (Unix seconds).
    pub not_before: u64,
    /// End of validity (Unix seconds).
    pub not_after: u64,
    /// Roles.
    pub roles: Roles,
    /// The root's signature over all fields above.
    pub signature: Signature,
}

#[derive(Serialize)]
struct CertTbs<'a> {
    version: u8,
    collective: &'a PublicKey,
    member: &'a MemberId,
    name: &'a str,
    key: &'a PublicKey,
    wg_key: &'a Option<[u8; 32]>,
    not_before: u64,
    not_after: u64,
    roles: Roles,
}

impl Certificate {
    /// Issues a certificate for `key` signed by the collective's `root` key.
    pub fn issue(
        root: &SecretKey,
        name: &str,
        key: PublicKey,
        wg_key: Option<[u8; 32]>,
        not_before: u64,
        not_after: u64,
        roles: Roles,
    ) -> Result<Certificate, TrustError> {
        check_name(name)?;
        if not_after <= not_before {
            return Err(TrustError::BadWindow);
        }
        let mut c = Certificate {
            version: CERT_VERSION,
            collective: root.public(),
            member: MemberId::of(&key),
            name: name.to_owned(),
            key,
            wg_key,
            not_before,
            not_after,
            roles,
            signature: Signature([0; 64]),
        };
        c.signature = root.sign(&c.signed_bytes());
        Ok(c)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let tbs = CertTbs {
            version: self.version,
            collective: &self.collective,
            member: &self.member,
            name: &self.name,
            key: &self.key,
            wg_key: &self.wg_key,
            not_before: self.not_before,
            not_after: self.not_after,
            roles: self.roles,
        };
        let mut out = CERT_DOMAIN.to_vec();
        out.extend(postcard::to_allocvec(&tbs).expect("serializing to a Vec cannot fail"));
        out
    }

    /// Checks the certificate against the collective `root` at `now` (Unix seconds).
    pub fn verify(&self, root: &PublicKey, now: u64) -> Result<(), TrustError> {
        self.verify_member(root, &Revocations::default(), now)
    }

    /// The checks of [`Certificate::verify_member`] that need no signature
    /// check, cheapest first: format version, collective, revocation,
    /// validity at `now`, name, member id (one hash).
    pub fn check_fields(
        &self,
        root: &PublicKey,
        revoked: &Revocations,
        now: u64,
    ) -> Result<(), TrustError> {
        if self.version != CERT_VERSION {
            return Err(TrustError::UnsupportedVersion(self.version));
        }
        if self.collective != *root {
            return Err(TrustError::WrongCollective);
        }
        if revoked.is_revoked(&self.member) {
            return Err(TrustError::Revoked {
                member: self.member,
            });
        }
        if now < self.not_before {
            return Err(TrustError::NotYetValid {
                not_before: self.not_before,
            });
        }
        if now >= self.not_after {
            return Err(TrustError::Expired {
                not_after: self.not_after,
            });
        }
        check_name(&self.name)?;
        if self.member != MemberId::of(&self.key) {
            return Err(TrustError::BadMemberId);
        }
        Ok(())
    }

    /// The root's signature over the certificate (the expensive check).
    pub fn verify_signature(&self, root: &PublicKey) -> Result<(), TrustError> {
        verify(root, &self.signed_bytes(), &self.signature)
    }

    /// [`Certificate::verify`] plus revocation: the cheap checks first
    /// ([`Certificate::check_fields`]), then the root's signature.
    pub fn verify_member(
        &self,
        root: &PublicKey,
        revoked: &Revocations,
        now: u64,
    ) -> Result<(), TrustError> {
        self.check_fields(root, revoked, now)?;
        self.verify_signature(root)
    }
}

/// Revoked members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations(std::collections::BTreeSet<MemberId>);

impl Revocations {
    /// Both sets together.
    pub fn union(&self, other: &Revocations) -> Revocations {
        Revocations(self.0.union(&other.0).copied().collect())
    }

    /// Adds a member.
    pub fn insert(&mut self, m: MemberId) {
        self.0.insert(m);
    }

    /// True when `m` is revoked.
    pub fn is_revoked(&self, m: &MemberId) -> bool {
        self.0.contains(m)
    }

    /// Number of revoked members.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nobody is revoked.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Domain separation of revocation-list signatures.
const REVOKED_DOMAIN: &[u8] = b"dcol/revoked/v1\0";

/// Most entries a revocation list may hold (a list file stays small enough
/// to read whole; 1,000 members revoked is far beyond a cooperative's need).
pub const MAX_REVOKED: usize = 1000;

/// One revoked member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedEntry {
    /// The member.
    pub member: MemberId,
    /// When it was revoked (Unix seconds).
    pub at: u64,
    /// Why (free text, at most 200 bytes).
    pub reason: String,
}

/// The collective's revocation list, signed by the root key. Each new list
/// has a higher `serial`; a member keeps the newest valid one it has seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// The collective's root public key.
    pub collective: PublicKey,
    /// Increases with every change.
    pub serial: u64,
    /// When this list was signed (Unix seconds).
    pub issued: u64,
    /// The revoked members.
    pub entries: Vec<RevokedEntry>,
    /// The root's signature over all fields above.
    pub signature: Signature,
}

impl RevocationList {
    fn signed_bytes(&self) -> Vec<u8> {
        let tbs = (&self.collective, self.serial, self.issued, &self.entries);
        let mut out = REVOKED_DOMAIN.to_vec();
        out.extend(postcard::to_allocvec(&tbs).expect("serializing to a Vec cannot fail"));
        out
    }

    /// A list with `entries`, signed by `root`.
    pub fn issue(
        root: &SecretKey,
        serial: u64,
        issued: u64,
        entries: Vec<RevokedEntry>,
    ) -> RevocationList {
        let mut l = RevocationList {
            collective: root.public(),
            serial,
            issued,
            entries,
            signature: Signature([0; 64]),
        };
        l.signature = root.sign(&l.signed_bytes());
        l
    }

    /// Checks the list was signed by the collective `root`.
    pub fn verify(&self, root: &PublicKey) -> Result<(), TrustError> {
        if self.collective != *root {
            return Err(TrustError::WrongCollective);
        }
        verify(root, &self.signed_bytes(), &self.signature)
    }

    /// The revoked members as a set.
    pub fn revocations(&self) -> Revocations {
        let mut r = Revocations::default();
        for e in &self.entries {
            r.insert(e.member);
        }
        r
    }
}

/// Lower-case hex of `b`.
pub fn to_hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[usize::from(x >> 4)] as char);
        s.push(D[usize::from(x & 0xf)] as char);
    }
    s
}

/// Parses hex (either case); on error returns the 1-based column of the first
/// bad character (or of the dangling last digit).
pub fn from_hex(s: &str) -> Result<Vec<u8>, usize> {
    let b = s.as_bytes();
    let digit = |i: usize| -> Result<u8, usize> {
        match b[i] {
            c @ b'0'..=b'9' => Ok(c - b'0'),
            c @ b'a'..=b'f' => Ok(c - b'a' + 10),
            c @ b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(i + 1),
        }
    };
    let mut out = Vec::with_capacity(b.len() / 2);
    let mut i = 0;
    while i < b.len() {
        let hi = digit(i)?;
        if i + 1 >= b.len() {
            return Err(i + 1);
        }
        let lo = digit(i + 1)?;
        out.push(hi << 4 | lo);
        i += 2;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_793_491_200;

    fn root() -> SecretKey {
        SecretKey::from_seed([1; 32])
    }

    fn member() -> SecretKey {
        SecretKey::from_seed([3; 32])
    }

    fn cert() -> Certificate {
        Certificate::issue(
            &root(),
            "bob",
            member().public(),
            None,
            NOW - 10,
            NOW + 10,
            Roles::CLIENT,
        )
        .unwrap()
    }

    #[test]
    fn certificate_verifies_and_fixture_bytes_are_stable() {
        let c = cert();
        c.verify(&root().public(), NOW).unwrap();
        // Byte fixture: the postcard encoding of this certificate must never change
        // silently (routers of different versions exchange it).
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(bytes.len(), 1 + 32 + 8 + 1 + 3 + 32 + 1 + 5 + 5 + 1 + 64);
        assert_eq!(&bytes[..1], &[0x01]);
        assert_eq!(&bytes[1..33], &root().public().0);
        assert_eq!(&bytes[33..41], &MemberId::of(&member().public()).0);
        assert_eq!(&bytes[41..45], b"\x03bob");
        let back: Certificate = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, c);
        // Ed25519 is deterministic: the signature is a fixture too.
        let again = cert();
        assert_eq!(again.signature, c.signature);
    }

    #[test]
    fn certificate_checks() {
        let c = cert();
        let other = SecretKey::from_seed([9; 32]);
        assert_eq!(
            c.verify(&other.public(), NOW),
            Err(TrustError::WrongCollective)
        );
        assert_eq!(
            c.verify(&root().public(), NOW - 11),
            Err(TrustError::NotYetValid {
                not_before: NOW - 10
            })
        );
        assert_eq!(
            c.verify(&root().public(), NOW + 10),
            Err(TrustError::Expired {
                not_after: NOW + 10
            })
        );
        let mut t = c.clone();
        t.roles = Roles::CLIENT | Roles::WAYPOINT;
        assert_eq!(
            t.verify(&root().public(), NOW),
            Err(TrustError::BadSignature)
        );
        let mut t = c.clone();
        t.key = other.public();
        assert_eq!(
            t.verify(&root().public(), NOW),
            Err(TrustError::BadMemberId)
        );
        let mut forged = Certificate::issue(
            &other,
            "bob",
            member().public(),
            None,
            NOW - 10,
            NOW + 10,
            Roles::CLIENT,
        )
        .unwrap();
        forged.collective = root().public();
        assert_eq!(
            forged.verify(&root().public(), NOW),
            Err(TrustError::BadSignature)
        );
        let mut rev = Revocations::default();
        rev.insert(c.member);
        assert_eq!(
            c.verify_member(&root().public(), &rev, NOW),
            Err(TrustError::Revoked { member: c.member })
        );
    }

    #[test]
    fn names_roles_ids_hex() {
        for bad in ["", "a b", "ü", &"x".repeat(33), "a/b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        check_name("alice.home-1_x").unwrap();
        assert_eq!(
            "client,waypoint".parse::<Roles>().unwrap(),
            Roles::CLIENT | Roles::WAYPOINT
        );
        assert!("root".parse::<Roles>().is_err());
        assert!("".parse::<Roles>().is_err());
        assert_eq!(
            (Roles::CLIENT | Roles::WAYPOINT).to_string(),
            "client,waypoint"
        );
        let id = MemberId::of(&member().public());
        assert_eq!(id.to_string().parse::<MemberId>().unwrap(), id);
        assert!("123".parse::<MemberId>().is_err());
        assert_eq!(to_hex(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(from_hex("00ABff").unwrap(), vec![0x00, 0xab, 0xff]);
        assert_eq!(from_hex("0g"), Err(2));
        assert_eq!(from_hex("abc"), Err(3));
        assert!(format!("{:?}", member()).contains("public"));
    }
}
