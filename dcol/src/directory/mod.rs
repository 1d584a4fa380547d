//! The membership directory: members publish signed records of where they
//! can be reached; a directory server keeps them and issues one snapshot signed
//! by the collective root (members plus the revocation list); members fetch,
//! verify and cache it, and pick waypoints from it.
//!
//! This module holds the pure parts: the three wire formats, their checks and
//! the member-side choice of waypoints. No I/O, no clock (callers pass `now`).
//! [`registry`] is the server's pure state, [`store`] its files, [`serve`] the
//! HTTP server, [`agent`] the member's background fetcher.
//!
//! # Formats (all postcard, byte fixtures in the tests below)
//!
//! **Record** (`POST /records`, at most [`MAX_RECORD`] bytes): the member's
//! certificate, a sequence number (the member's clock in Unix ms; each record
//! must carry a larger one than the last the directory holds, so a captured
//! record cannot be replayed over a newer one), and either an advert
//! (endpoints, tunnel types, donation cap, software version) or a withdrawal.
//! Signed by the member key over `dcol/record/v1\0` + the fields.
//!
//! **Revocation list** (`POST /revocations`, or `STORE/revoked.list`): the
//! collective's root-signed list with a serial ([`crate::trust::RevocationList`],
//! the file `dcol collective revoke` writes); only a newer serial replaces it.
//!
//! **Snapshot** (`GET /snapshot`; a static file, so a CDN can serve it):
//! ```text
//! "dcol/snapshot/v1\0"                       17 bytes, magic and version
//! postcard(SnapshotHead)                      collective, serial, issue time,
//!                                             revoked member ids, entry count
//! count x postcard(Entry)                     one per current member
//! Ed25519 signature by the root               64 bytes, over all bytes before it
//! ```
//! The magic doubles as the signature's domain separation (no other root
//! signature covers a message starting with it). Entries carry what a member
//! needs to use a waypoint (id, name, endpoints, tunnels, cap, software,
//! certificate expiry) but not each member's certificate and signature: the
//! directory checked those on upload and the root signature vouches for the
//! whole, which keeps 100,000 members at ~6 MB (`cargo bench --bench
//! directory`). Entries are decoded one at a time ([`Snapshot::entries`]), so a
//! router never holds all of them as structs.

use std::collections::BinaryHeap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::client::PeerSpec;
use crate::trust::{self, Certificate, MemberId, PublicKey, Revocations, Roles, SecretKey};
use crate::trust::{Signature, TrustError};

pub mod agent;
pub mod registry;
pub mod renew;
pub mod serve;
pub mod store;

/// Record format version.
pub const RECORD_VERSION: u8 = 0x01;
/// First bytes of every snapshot: magic, version and signature domain.
pub const SNAPSHOT_MAGIC: &[u8] = b"dcol/snapshot/v1\0";
/// Largest record accepted.
pub const MAX_RECORD: usize = 4096;
/// Most endpoints in an advert.
pub const MAX_ENDPOINTS: usize = 8;
/// Longest software version string.
pub const MAX_SOFTWARE: usize = 32;
/// Largest snapshot a member fetches (100,000 members take ~6 MB).
pub const MAX_SNAPSHOT: usize = 32 << 20;

const RECORD_DOMAIN: &[u8] = b"dcol/record/v1\0";
const SIG_LEN: usize = 64;

/// What is wrong with a record, revocation or snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirError {
    /// Fewer bytes than the smallest valid document.
    Truncated,
    /// More bytes than allowed.
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// Not a snapshot (no magic): e.g. an HTML error page.
    NotASnapshot,
    /// A format version this build does not know.
    UnsupportedVersion(u8),
    /// The bytes do not decode (postcard's message).
    Malformed(String),
    /// Bytes left over after the document.
    TrailingBytes(usize),
    /// The document belongs to another collective (another root key).
    WrongCollective,
    /// A signature does not verify.
    BadSignature,
    /// The member's certificate is not accepted (expired, revoked, ...).
    Certificate(TrustError),
    /// Only members with the waypoint role publish adverts.
    NotAWaypoint,
    /// An advert field is out of range.
    BadAdvert(String),
}

impl fmt::Display for DirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirError::Truncated => f.write_str("truncated"),
            DirError::TooLarge { max } => write!(f, "larger than {max} bytes"),
            DirError::NotASnapshot => f.write_str("not a dcol snapshot (bad magic)"),
            DirError::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            DirError::Malformed(m) => write!(f, "malformed: {m}"),
            DirError::TrailingBytes(n) => write!(f, "{n} bytes after the end"),
            DirError::WrongCollective => f.write_str("signed for another collective"),
            DirError::BadSignature => f.write_str("bad signature"),
            DirError::Certificate(e) => write!(f, "certificate: {e}"),
            DirError::NotAWaypoint => f.write_str("certificate lacks the waypoint role"),
            DirError::BadAdvert(m) => write!(f, "bad advert: {m}"),
        }
    }
}

impl std::error::Error for DirError {}

fn malformed(e: postcard::Error) -> DirError {
    match e {
        postcard::Error::DeserializeUnexpectedEnd => DirError::Truncated,
        e => DirError::Malformed(e.to_string()),
    }
}

/// Decodes exactly one `T` from `b` (no bytes left over).
fn decode_exact<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, DirError> {
    let (v, rest) = postcard::take_from_bytes::<T>(b).map_err(malformed)?;
    if !rest.is_empty() {
        return Err(DirError::TrailingBytes(rest.len()));
    }
    Ok(v)
}

fn to_vec<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("serializing to a Vec cannot fail")
}

/// What a signature covers: the domain, then the fields.
fn signed<T: Serialize>(domain: &[u8], tbs: &T) -> Vec<u8> {
    let mut out = domain.to_vec();
    out.extend(to_vec(tbs));
    out
}

/// Checks the size and version byte of an encoded document.
fn check_head(b: &[u8], version: u8, max: usize) -> Result<(), DirError> {
    if b.len() > max {
        return Err(DirError::TooLarge { max });
    }
    match b.first() {
        None => Err(DirError::Truncated),
        Some(&v) if v != version => Err(DirError::UnsupportedVersion(v)),
        _ => Ok(()),
    }
}

/// Tunnel types a waypoint offers (bit set).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tunnels(pub u8);

impl Tunnels {
    /// NAT tunnels.
    pub const NAT: Tunnels = Tunnels(0x01);
    /// WireGuard (VPN) tunnels.
    pub const VPN: Tunnels = Tunnels(0x02);
    /// A converter (RFC 8803, issue 17) on TCP at each endpoint's address
    /// and port. Added in the same byte, so the format stays version 1:
    /// routers that predate it decode the entry and ignore the bit (they
    /// test only the bits they want); a directory server that predates it
    /// refuses the advert ("unknown tunnel types"): upgrade the directory
    /// server before members turn converters on. Never alone (a converter
    /// member is a waypoint too).
    pub const CONVERT: Tunnels = Tunnels(0x04);

    /// True when every type of `other` is offered.
    pub fn contains(self, other: Tunnels) -> bool {
        self.0 & other.0 == other.0
    }
}

impl fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Vec::new();
        if self.contains(Tunnels::NAT) {
            names.push("nat");
        }
        if self.contains(Tunnels::VPN) {
            names.push("vpn");
        }
        if self.contains(Tunnels::CONVERT) {
            names.push("convert");
        }
        write!(f, "Tunnels({})", names.join(","))
    }
}

/// Where and how a waypoint can be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    /// Signaling addresses (UDP), at most [`MAX_ENDPOINTS`].
    pub endpoints: Vec<SocketAddr>,
    /// Tunnel types offered.
    pub tunnels: Tunnels,
    /// Donation rate cap, kbit/s (0: none).
    pub donate_kbit: u32,
    /// Software version (`dcol --version`), at most [`MAX_SOFTWARE`] bytes.
    pub software: String,
}

impl Advert {
    /// Checks the ranges.
    pub fn check(&self) -> Result<(), DirError> {
        let bad = |m: String| Err(DirError::BadAdvert(m));
        if self.endpoints.is_empty() || self.endpoints.len() > MAX_ENDPOINTS {
            return bad(format!("1-{MAX_ENDPOINTS} endpoints expected"));
        }
        for e in &self.endpoints {
            let ip = e.ip();
            if e.port() == 0 || ip.is_unspecified() || ip.is_multicast() {
                return bad(format!("endpoint {e} is not a unicast address and port"));
            }
        }
        let known = Tunnels::NAT.0 | Tunnels::VPN.0 | Tunnels::CONVERT.0;
        if self.tunnels.0 & (Tunnels::NAT.0 | Tunnels::VPN.0) == 0 || self.tunnels.0 & !known != 0 {
            return bad(format!("unknown tunnel types {:#04x}", self.tunnels.0));
        }
        let printable = self.software.bytes().all(|b| (0x21..0x7f).contains(&b));
        if self.software.len() > MAX_SOFTWARE || !printable {
            return bad(format!(
                "software version is not 0-{MAX_SOFTWARE} printable ASCII characters"
            ));
        }
        Ok(())
    }
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Statement {
    /// The member serves as a waypoint here.
    Publish(Advert),
    /// The member leaves the directory (its record is removed).
    Withdraw,
}

/// A member's signed record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// [`RECORD_VERSION`].
    pub version: u8,
    /// The member's certificate.
    pub cert: Certificate,
    /// Unix milliseconds when signed; must grow from record to record.
    pub seq: u64,
    /// Publish or withdraw.
    pub statement: Statement,
    /// By `cert.key` over the fields above.
    pub signature: Signature,
}

#[derive(Serialize)]
struct RecordTbs<'a> {
    version: u8,
    cert: &'a Certificate,
    seq: u64,
    statement: &'a Statement,
}

impl Record {
    /// Signs a record for `cert` with its `key`.
    pub fn sign(key: &SecretKey, cert: Certificate, seq: u64, statement: Statement) -> Record {
        let mut r = Record {
            version: RECORD_VERSION,
            cert,
            seq,
            statement,
            signature: Signature([0; 64]),
        };
        r.signature = key.sign(&r.signed_bytes());
        r
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let tbs = RecordTbs {
            version: self.version,
            cert: &self.cert,
            seq: self.seq,
            statement: &self.statement,
        };
        signed(RECORD_DOMAIN, &tbs)
    }

    /// The member.
    pub fn member(&self) -> MemberId {
        self.cert.member
    }

    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        to_vec(self)
    }

    /// Parses a record (format only; [`Record::verify`] checks it).
    pub fn decode(b: &[u8]) -> Result<Record, DirError> {
        check_head(b, RECORD_VERSION, MAX_RECORD)?;
        decode_exact(b)
    }

    /// Checks certificate (root, validity, revocation), role, advert and
    /// signature, at `now_s` (Unix seconds).
    pub fn verify(
        &self,
        root: &PublicKey,
        revoked: &Revocations,
        now_s: u64,
    ) -> Result<(), DirError> {
        self.cert
            .verify_member(root, revoked, now_s)
            .map_err(|e| match e {
                TrustError::WrongCollective => DirError::WrongCollective,
                e => DirError::Certificate(e),
            })?;
        if let Statement::Publish(a) = &self.statement {
            if !self.cert.roles.contains(Roles::WAYPOINT) {
                return Err(DirError::NotAWaypoint);
            }
            a.check()?;
        }
        trust::verify(&self.cert.key, &self.signed_bytes(), &self.signature)
            .map_err(|_| DirError::BadSignature)
    }

    /// The snapshot entry of a publishing record (`None` for a withdrawal).
    pub fn entry(&self) -> Option<Entry> {
        match &self.statement {
            Statement::Publish(a) => Some(Entry {
                member: self.cert.member,
                name: self.cert.name.clone(),
                endpoints: a.endpoints.clone(),
                tunnels: a.tunnels,
                donate_kbit: a.donate_kbit,
                software: a.software.clone(),
                not_after: self.cert.not_after,
            }),
            Statement::Withdraw => None,
        }
    }
}

/// One member in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Member id.
    pub member: MemberId,
    /// Certificate name (responses must come from a certificate with it).
    pub name: String,
    /// Signaling addresses.
    pub endpoints: Vec<SocketAddr>,
    /// Tunnel types offered.
    pub tunnels: Tunnels,
    /// Donation rate cap, kbit/s (0: none).
    pub donate_kbit: u32,
    /// Software version.
    pub software: String,
    /// The member's certificate expires then (Unix seconds).
    pub not_after: u64,
}

/// A snapshot's head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHead {
    /// The collective's root key.
    pub collective: PublicKey,
    /// Grows with every snapshot the directory issues.
    pub serial: u64,
    /// Unix seconds when issued.
    pub issued: u64,
    /// Revoked members.
    pub revoked: Vec<MemberId>,
    /// Number of entries that follow.
    pub count: u32,
}

/// Builds and signs a snapshot.
pub fn build_snapshot<'a>(
    root: &SecretKey,
    serial: u64,
    issued: u64,
    revoked: Vec<MemberId>,
    entries: impl Iterator<Item = &'a Entry>,
) -> Vec<u8> {
    let mut body = Vec::new();
    let mut count = 0u32;
    for e in entries {
        body.extend(to_vec(e));
        count = count.saturating_add(1);
    }
    let head = SnapshotHead {
        collective: root.public(),
        serial,
        issued,
        revoked,
        count,
    };
    let mut out = SNAPSHOT_MAGIC.to_vec();
    out.extend(to_vec(&head));
    out.extend(body);
    let sig = root.sign(&out);
    out.extend_from_slice(&sig.0);
    out
}

/// A parsed snapshot borrowing its bytes.
#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    /// Its head.
    pub head: SnapshotHead,
    entries: &'a [u8],
}

impl<'a> Snapshot<'a> {
    /// Parses the head without checking the signature (for tools and the
    /// fuzzer; members use [`Snapshot::verify`]).
    pub fn parse_unverified(b: &'a [u8]) -> Result<Snapshot<'a>, DirError> {
        if b.len() > MAX_SNAPSHOT {
            return Err(DirError::TooLarge { max: MAX_SNAPSHOT });
        }
        // "dcol/snapshot/v" and the version digit.
        let prefix = &SNAPSHOT_MAGIC[..SNAPSHOT_MAGIC.len() - 2];
        if !b.starts_with(SNAPSHOT_MAGIC) {
            if b.starts_with(prefix) {
                let v = b.get(prefix.len()).map_or(0, |d| d.wrapping_sub(b'0'));
                return Err(DirError::UnsupportedVersion(v));
            }
            if b.len() < SNAPSHOT_MAGIC.len() && SNAPSHOT_MAGIC.starts_with(b) {
                return Err(DirError::Truncated);
            }
            return Err(DirError::NotASnapshot);
        }
        let Some(signed_len) = b.len().checked_sub(SIG_LEN) else {
            return Err(DirError::Truncated);
        };
        if signed_len < SNAPSHOT_MAGIC.len() {
            return Err(DirError::Truncated);
        }
        let (head, entries) =
            postcard::take_from_bytes::<SnapshotHead>(&b[SNAPSHOT_MAGIC.len()..signed_len])
                .map_err(malformed)?;
        Ok(Snapshot { head, entries })
    }

    /// Parses and checks the root's signature: tampered, truncated or
    /// foreign snapshots fail here.
    pub fn verify(b: &'a [u8], root: &PublicKey) -> Result<Snapshot<'a>, DirError> {
        let s = Snapshot::parse_unverified(b)?;
        if s.head.collective != *root {
            return Err(DirError::WrongCollective);
        }
        let split = b.len() - SIG_LEN;
        let mut sig = [0u8; 64];
        sig.copy_from_slice(&b[split..]);
        trust::verify(root, &b[..split], &Signature(sig)).map_err(|_| DirError::BadSignature)?;
        Ok(s)
    }

    /// The entries, decoded one at a time; an error ends the iteration.
    pub fn entries(&self) -> Entries<'a> {
        Entries {
            rest: self.entries,
            left: self.head.count,
            failed: false,
        }
    }
}

/// Iterator over a snapshot's entries.
#[derive(Debug)]
pub struct Entries<'a> {
    rest: &'a [u8],
    left: u32,
    failed: bool,
}

impl Iterator for Entries<'_> {
    type Item = Result<Entry, DirError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.left == 0 {
            if self.rest.is_empty() {
                return None;
            }
            self.failed = true;
            return Some(Err(DirError::TrailingBytes(self.rest.len())));
        }
        match postcard::take_from_bytes::<Entry>(self.rest) {
            Ok((e, rest)) => {
                self.rest = rest;
                self.left -= 1;
                Some(Ok(e))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(malformed(e)))
            }
        }
    }
}

/// Whether a fetched snapshot replaces the one a member holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Newer: use it.
    Newer,
    /// The same serial and bytes: nothing to do.
    Same,
}

/// Snapshots issued longer ago than this are refused (a replayed old
/// snapshot would un-revoke members); the server re-issues hourly.
pub const MAX_SNAPSHOT_AGE_S: u64 = 7 * 86_400;

/// Why a verified snapshot is still refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleSnapshot {
    /// Its serial is below the cached one's.
    Older {
        /// The fetched serial.
        got: u64,
        /// The cached serial.
        have: u64,
    },
    /// The same serial as the cached one with different content.
    Conflicting(u64),
    /// Issued too long ago.
    TooOld {
        /// Its issue time (Unix seconds).
        issued: u64,
    },
}

impl fmt::Display for StaleSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StaleSnapshot::Older { got, have } => {
                write!(f, "serial {got} is older than the cached serial {have}")
            }
            StaleSnapshot::Conflicting(s) => {
                write!(
                    f,
                    "serial {s} equals the cached one but the content differs"
                )
            }
            StaleSnapshot::TooOld { issued } => write!(
                f,
                "issued at {issued} (unix time), more than {} days ago",
                MAX_SNAPSHOT_AGE_S / 86_400
            ),
        }
    }
}

/// Compares a verified snapshot `new` with the cached one (`have`: head and
/// bytes) at `now_s`.
pub fn freshness(
    new: &SnapshotHead,
    new_bytes: &[u8],
    have: Option<(&SnapshotHead, &[u8])>,
    now_s: u64,
) -> Result<Freshness, StaleSnapshot> {
    if new.issued.saturating_add(MAX_SNAPSHOT_AGE_S) < now_s {
        return Err(StaleSnapshot::TooOld { issued: new.issued });
    }
    match have {
        Some((h, _)) if new.serial < h.serial => Err(StaleSnapshot::Older {
            got: new.serial,
            have: h.serial,
        }),
        Some((h, b)) if new.serial == h.serial => {
            if b == new_bytes {
                Ok(Freshness::Same)
            } else {
                Err(StaleSnapshot::Conflicting(new.serial))
            }
        }
        _ => Ok(Freshness::Newer),
    }
}

/// The signaling addresses a waypoint publishes: `advertise` (UCI `list
/// advertise`) when given; otherwise the public addresses NAT traversal
/// learned (`learned`: STUN, UPnP) followed by the `listen` addresses that
/// are not wildcards. Duplicates are dropped; at most [`MAX_ENDPOINTS`].
pub fn endpoints(
    advertise: &[SocketAddr],
    learned: &[SocketAddr],
    listen: &[SocketAddr],
) -> Vec<SocketAddr> {
    let candidates: Vec<SocketAddr> = if advertise.is_empty() {
        learned
            .iter()
            .chain(listen.iter().filter(|a| !a.ip().is_unspecified()))
            .copied()
            .collect()
    } else {
        advertise.to_vec()
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in candidates {
        if !out.contains(&a) && out.len() < MAX_ENDPOINTS {
            out.push(a);
        }
    }
    out
}

/// How a member picks waypoints from a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// This member (never its own waypoint).
    pub own: MemberId,
    /// At most this many members become peers.
    pub max_peers: usize,
    /// Use their VPN tunnels rather than NAT tunnels.
    pub vpn: bool,
}

/// What a member takes from a verified snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// Serial of the snapshot.
    pub serial: u64,
    /// Its issue time (Unix seconds).
    pub issued: u64,
    /// Entries in it.
    pub members: usize,
    /// Its revocation list.
    pub revoked: Vec<MemberId>,
    /// The waypoints picked, one peer per endpoint (at most one IPv4 and one
    /// IPv6 endpoint each), best-ranked member first.
    pub peers: Vec<PeerSpec>,
    /// Entries that did not decode (the directory signed garbage).
    pub error: Option<DirError>,
}

/// Rendezvous score of `member` for the member `own`: every member ranks
/// the directory differently (load spreads), and a member's choice changes
/// little when others join or leave.
fn score(own: &MemberId, member: &MemberId) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha512::new();
    h.update(b"dcol/pick/v1\0");
    h.update(own.0);
    h.update(member.0);
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// Picks up to `sel.max_peers` usable waypoints from `snap` at `now_s`:
/// not this member, not revoked (by the snapshot or `extra_revoked`), with an
/// unexpired certificate, offering the wanted tunnel type.
pub fn choose(
    snap: &Snapshot<'_>,
    sel: &Selection,
    extra_revoked: &Revocations,
    now_s: u64,
) -> Chosen {
    let revoked: std::collections::HashSet<MemberId> = snap.head.revoked.iter().copied().collect();
    let want = if sel.vpn { Tunnels::VPN } else { Tunnels::NAT };
    // Keep the best `max_peers` by score: a min-heap of (score, entry).
    let mut best: BinaryHeap<std::cmp::Reverse<(u64, MemberId, usize)>> = BinaryHeap::new();
    let mut kept: Vec<Option<Entry>> = Vec::new();
    let mut members = 0;
    let mut error = None;
    for e in snap.entries() {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                error = Some(err);
                break;
            }
        };
        members += 1;
        if e.member == sel.own
            || revoked.contains(&e.member)
            || extra_revoked.is_revoked(&e.member)
            || e.not_after <= now_s
            || !e.tunnels.contains(want)
            || trust::check_name(&e.name).is_err()
            || sel.max_peers == 0
        {
            continue;
        }
        let s = score(&sel.own, &e.member);
        if best.len() == sel.max_peers {
            match best.peek() {
                Some(std::cmp::Reverse(min)) if min.0 < s => {
                    if let Some(std::cmp::Reverse((_, _, slot))) = best.pop() {
                        kept[slot] = None;
                    }
                }
                _ => continue,
            }
        }
        best.push(std::cmp::Reverse((s, e.member, kept.len())));
        kept.push(Some(e));
    }
    let mut peers = Vec::new();
    // Best-ranked first (a heap sort: no extra sort code in the binary).
    for std::cmp::Reverse((_, _, slot)) in best.into_sorted_vec() {
        let Some(e) = kept.get_mut(slot).and_then(Option::take) else {
            continue;
        };
        let v4 = e.endpoints.iter().find(|a| a.is_ipv4());
        let v6 = e.endpoints.iter().find(|a| a.is_ipv6());
        for a in [v4, v6].into_iter().flatten() {
            peers.push(PeerSpec {
                name: e.name.clone(),
                address: *a,
                vpn: sel.vpn,
                convert: e.tunnels.contains(Tunnels::CONVERT),
            });
        }
    }
    Chosen {
        serial: snap.head.serial,
        issued: snap.head.issued,
        members,
        revoked: snap.head.revoked.clone(),
        peers,
        error,
    }
}

#[cfg(test)]
mod tests;
