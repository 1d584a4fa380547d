//! Fixtures shared by unit tests: a collective with fixed keys, members and a
//! fixed clock.

use std::net::{IpAddr, SocketAddr};

use crate::proto::{self, Message, Nonce, Request, RequestBody, RequestKind};
use crate::trust::{Certificate, PublicKey, Roles, SecretKey};

/// Unix time of the fixtures (2026-11-01T00:00:00Z), in seconds.
pub const T0: u64 = 1_793_491_200;

/// The collective's root key.
pub fn root() -> SecretKey {
    SecretKey::from_seed([1; 32])
}

/// The root's public key.
pub fn root_pub() -> PublicKey {
    root().public()
}

/// A member's key, by seed byte.
pub fn key(seed: u8) -> SecretKey {
    SecretKey::from_seed([seed; 32])
}

/// A certificate for `name` with `key(seed)`, valid 30 days around T0.
pub fn cert(name: &str, seed: u8, roles: Roles) -> Certificate {
    cert_by(&root(), name, seed, roles, T0 - 86_400, T0 + 30 * 86_400)
}

/// A certificate issued by `issuer` with an explicit window.
pub fn cert_by(
    issuer: &SecretKey,
    name: &str,
    seed: u8,
    roles: Roles,
    nb: u64,
    na: u64,
) -> Certificate {
    Certificate::issue(issuer, name, key(seed).public(), None, nb, na, roles)
        .expect("valid fixture")
}

/// The address requests come from in unit tests (and name as their source).
pub const CLIENT: &str = "10.0.1.2";

/// A signed request from member `seed` at [`CLIENT`] to waypoint `to`.
pub fn request(
    c: &Certificate,
    seed: u8,
    to: &str,
    nonce: u8,
    ms: u64,
    kind: RequestKind,
) -> Vec<u8> {
    let source = CLIENT.parse().expect("fixture address");
    request_from(c, seed, to, nonce, ms, kind, source)
}

/// A signed request naming `source` as its source address.
pub fn request_from(
    c: &Certificate,
    seed: u8,
    to: &str,
    nonce: u8,
    ms: u64,
    kind: RequestKind,
    source: IpAddr,
) -> Vec<u8> {
    let body = RequestBody {
        waypoint: to.to_owned(),
        timestamp_ms: ms,
        nonce: Nonce([nonce; 16]),
        source,
        kind,
    };
    proto::encode(&Message::Request(Request::sign(
        c.clone(),
        &key(seed),
        body,
    )))
}

/// A NAT detour request kind.
pub fn nat(dest: &str) -> RequestKind {
    RequestKind::NatDetour {
        destination: dest.parse::<SocketAddr>().expect("fixture address"),
    }
}

/// The file text of a revocation list of `ids`, serial `serial`, signed by
/// [`root`].
pub fn revoked_list(serial: u64, ids: &[crate::trust::MemberId]) -> String {
    let entries = ids.iter().map(|&member| crate::trust::RevokedEntry {
        member,
        at: T0,
        reason: String::new(),
    });
    let list = crate::trust::RevocationList::issue(&root(), serial, T0, entries.collect());
    crate::trust::files::revocations_text(&list)
}
