//! The directory server's state: members' latest records, the revocations,
//! rate limits. Pure: the caller passes `now` and bytes, persists what is
//! accepted ([`super::store`]) and only then commits it here, so a record
//! that could not be saved is not served either.
//!
//! Checks on an uploaded record, cheapest first: the source address's rate,
//! size and format, the certificate (root, validity, revocation), the role,
//! the advert, the signature, the member's rate, then freshness: the record's
//! sequence number (the member's clock, Unix ms) must be newer than the stored
//! one (a replayed older record is refused), not older than the record
//! lifetime and not more than [`Limits::max_future_ms`] ahead.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};

use super::{DirError, Entry, Record, Statement};
use crate::trust::files::{self, FileError};
use crate::trust::{MemberId, PublicKey, RevocationList, Revocations, TrustError};

/// The server's tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A record not renewed for this long leaves the snapshot (members
    /// republish hourly).
    pub record_ttl_s: u64,
    /// How far a record's clock may run ahead of ours.
    pub max_future_ms: u64,
    /// Uploads one member may make in a burst, and per minute after it.
    pub member_rate: (u32, u32),
    /// Requests one source address may make in a burst, and per minute.
    pub source_rate: (u32, u32),
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            record_ttl_s: 3 * 3600,
            max_future_ms: 10 * 60 * 1000,
            member_rate: (5, 6),
            source_rate: (30, 60),
        }
    }
}

/// Where requests come from, as the per-source limits count them: an IPv4
/// address, or an IPv6 /64 (one home line or host gets a whole /64, so
/// counting its addresses one by one would give it 2^64 shares). An
/// IPv4-mapped IPv6 address (a dual-stack listener) counts as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source that `ip` belongs to.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(_) => Source(ip),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(a) & !((1u128 << 64) - 1);
                    Source(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "{a}/64"),
        }
    }
}

/// Why an upload is refused; each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400: the bytes are not a valid document.
    BadRequest(String),
    /// 403: signature, certificate, revocation or role.
    Forbidden(String),
    /// 409: not newer than what is stored (replay), or a stale timestamp.
    Stale(String),
    /// 429: too many requests from this member or address.
    TooMany(String),
}

impl Refusal {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::Forbidden(_) => 403,
            Refusal::Stale(_) => 409,
            Refusal::TooMany(_) => 429,
        }
    }

    /// The HTTP reason phrase.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "Bad Request",
            Refusal::Forbidden(_) => "Forbidden",
            Refusal::Stale(_) => "Conflict",
            Refusal::TooMany(_) => "Too Many Requests",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (Refusal::BadRequest(m)
        | Refusal::Forbidden(m)
        | Refusal::Stale(m)
        | Refusal::TooMany(m)) = self;
        f.write_str(m)
    }
}

fn refusal(e: DirError) -> Refusal {
    match e {
        DirError::Truncated
        | DirError::TooLarge { .. }
        | DirError::NotASnapshot
        | DirError::UnsupportedVersion(_)
        | DirError::Malformed(_)
        | DirError::TrailingBytes(_)
        | DirError::BadAdvert(_) => Refusal::BadRequest(e.to_string()),
        DirError::Certificate(TrustError::Revoked { member }) => {
            Refusal::Forbidden(format!("member {member} is revoked"))
        }
        DirError::WrongCollective
        | DirError::BadSignature
        | DirError::Certificate(_)
        | DirError::NotAWaypoint => Refusal::Forbidden(e.to_string()),
    }
}

/// A token bucket in thousandths of a token.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    at_ms: u64,
}

/// Token buckets by key, bounded in memory.
#[derive(Debug)]
struct Rate<K> {
    burst: u32,
    per_min: u32,
    buckets: HashMap<K, Bucket>,
}

/// Most keys a rate limiter remembers before it forgets idle ones.
const RATE_KEYS: usize = 4096;

impl Bucket {
    /// The level at `now_ms` after refilling `per_min` tokens a minute, up to `burst`.
    fn level(&self, now_ms: u64, burst: u32, per_min: u32) -> u64 {
        let refill = now_ms
            .saturating_sub(self.at_ms)
            .saturating_mul(u64::from(per_min))
            / 60;
        self.milli
            .saturating_add(refill)
            .min(u64::from(burst) * 1000)
    }
}

impl<K: Hash + Eq + Copy> Rate<K> {
    fn new((burst, per_min): (u32, u32)) -> Self {
        Rate {
            burst,
            per_min,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `k`; false when none is left.
    fn take(&mut self, k: K, now_ms: u64) -> bool {
        let (burst, per_min) = (self.burst, self.per_min);
        let full = u64::from(burst) * 1000;
        if self.buckets.len() >= RATE_KEYS && !self.buckets.contains_key(&k) {
            // Forget keys whose bucket has refilled: they are idle.
            self.buckets
                .retain(|_, b| b.level(now_ms, burst, per_min) < full);
            if self.buckets.len() >= RATE_KEYS {
                return false;
            }
        }
        let b = self.buckets.get(&k).copied().unwrap_or(Bucket {
            milli: full,
            at_ms: now_ms,
        });
        let level = b.level(now_ms, burst, per_min);
        if level < 1000 {
            return false;
        }
        self.buckets.insert(
            k,
            Bucket {
                milli: level - 1000,
                at_ms: now_ms,
            },
        );
        true
    }
}

/// The directory's state.
#[derive(Debug)]
pub struct Registry {
    root: PublicKey,
    limits: Limits,
    records: BTreeMap<MemberId, Record>,
    /// The revocation list in force (`None`: nobody revoked).
    list: Option<RevocationList>,
    revoked: Revocations,
    members: Rate<MemberId>,
    sources: Rate<Source>,
    changed: bool,
}

impl Registry {
    /// An empty registry for the collective `root`.
    pub fn new(root: PublicKey, limits: Limits) -> Self {
        Registry {
            root,
            limits,
            records: BTreeMap::new(),
            list: None,
            revoked: Revocations::default(),
            members: Rate::new(limits.member_rate),
            sources: Rate::new(limits.source_rate),
            changed: true,
        }
    }

    /// The collective's root key.
    pub fn root(&self) -> &PublicKey {
        &self.root
    }

    /// Adds a record read back from the store (kept if newer than what is held).
    pub fn load_record(&mut self, r: Record) {
        if self.records.get(&r.member()).is_none_or(|o| o.seq < r.seq) {
            self.records.insert(r.member(), r);
            self.changed = true;
        }
    }

    /// Puts a revocation list (already checked to be the root's) in force,
    /// unless it is older than the one in force. Returns whether it changed
    /// the list.
    pub fn load_list(&mut self, list: RevocationList) -> Result<bool, Refusal> {
        let serial = self.list.as_ref().map_or(0, |l| l.serial);
        if list.serial < serial {
            return Err(Refusal::Stale(format!(
                "revocation list serial {} is older than the one in force ({serial})",
                list.serial
            )));
        }
        if self.list.as_ref() == Some(&list) {
            return Ok(false);
        }
        if list.serial == serial && serial > 0 {
            return Err(Refusal::Stale(format!(
                "a different revocation list with the same serial {serial} is in force"
            )));
        }
        self.revoked = list.revocations();
        self.list = Some(list);
        self.changed = true;
        Ok(true)
    }

    /// The serial of the revocation list in force (0: none).
    pub fn revocation_serial(&self) -> u64 {
        self.list.as_ref().map_or(0, |l| l.serial)
    }

    /// Rate limit of the source (every request takes a token): an IPv4
    /// address, or the IPv6 /64 of `ip` (see [`Source`]).
    pub fn admit_source(&mut self, ip: IpAddr, now_ms: u64) -> Result<(), Refusal> {
        let source = Source::of(ip);
        if self.sources.take(source, now_ms) {
            Ok(())
        } else {
            Err(Refusal::TooMany(format!(
                "too many requests from {source} (limit {} a minute)",
                self.limits.source_rate.1
            )))
        }
    }

    /// Checks an uploaded record at `now_ms`; on success the caller saves it
    /// and then calls [`Registry::commit_record`].
    pub fn check_record(&mut self, now_ms: u64, body: &[u8]) -> Result<Record, Refusal> {
        let r = Record::decode(body).map_err(|e| refusal_of("record", e))?;
        r.verify(&self.root, &self.revoked, now_ms / 1000)
            .map_err(|e| refusal_of("record", e))?;
        let m = r.member();
        if !self.members.take(m, now_ms) {
            return Err(Refusal::TooMany(format!(
                "too many records from member {m} (limit {} a minute)",
                self.limits.member_rate.1
            )));
        }
        if r.seq > now_ms.saturating_add(self.limits.max_future_ms) {
            return Err(Refusal::BadRequest(format!(
                "record timestamp {} ms is {} s ahead of the directory's clock",
                r.seq,
                (r.seq - now_ms) / 1000
            )));
        }
        let ttl_ms = self.limits.record_ttl_s.saturating_mul(1000);
        if r.seq.saturating_add(ttl_ms) <= now_ms {
            return Err(Refusal::Stale(format!(
                "stale record: timestamp {} ms is older than the record lifetime ({} s)",
                r.seq, self.limits.record_ttl_s
            )));
        }
        if let Some(old) = self.records.get(&m) {
            if r.seq <= old.seq {
                return Err(Refusal::Stale(format!(
                    "replayed or stale record: sequence {} is not newer than the stored {}",
                    r.seq, old.seq
                )));
            }
        }
        Ok(r)
    }

    /// Checks a certificate renewal request at `now_ms`: format, signature,
    /// certificate (valid now, this collective, not revoked), freshness,
    /// the member's rate limit (shared with its records), and that it is due.
    pub fn check_renewal(
        &mut self,
        now_ms: u64,
        body: &[u8],
    ) -> Result<super::renew::RenewalRequest, Refusal> {
        use super::renew::{due, due_from, RenewalRequest};
        let r = RenewalRequest::decode(body).map_err(|e| refusal_of("renewal", e))?;
        r.verify(&self.root, &self.revoked, now_ms)
            .map_err(|e| refusal_of("renewal", e))?;
        let m = r.cert.member;
        if !self.members.take(m, now_ms) {
            return Err(Refusal::TooMany(format!(
                "too many requests from member {m} (limit {} a minute)",
                self.limits.member_rate.1
            )));
        }
        if !due(&r.cert, now_ms / 1000) {
            return Err(Refusal::Stale(format!(
                "the certificate of '{}' ({m}) is renewed from {} (Unix s), in the last third of its validity",
                r.cert.name,
                due_from(&r.cert)
            )));
        }
        Ok(r)
    }

    /// Makes a checked (and saved) record current. Returns whether the
    /// snapshot's content changes.
    pub fn commit_record(&mut self, r: Record) -> bool {
        let before = self.records.get(&r.member()).and_then(Record::entry);
        let after = r.entry();
        self.records.insert(r.member(), r);
        let changed = before != after;
        self.changed |= changed;
        changed
    }

    /// Checks an uploaded revocation list (the file `dcol collective revoke`
    /// writes): the root's signature, and newer than the one in force.
    /// `Ok(None)`: the very list in force. The caller saves a new one, then
    /// calls [`Registry::load_list`].
    pub fn check_list(&self, body: &[u8]) -> Result<Option<RevocationList>, Refusal> {
        let text = std::str::from_utf8(body)
            .map_err(|e| Refusal::BadRequest(format!("revocation list: not text: {e}")))?;
        let origin = std::path::Path::new("revocation list");
        let list = files::parse_revocations(origin, text, &self.root).map_err(|e| match e {
            FileError::Trust { source, .. } => {
                Refusal::Forbidden(format!("revocation list: {source}"))
            }
            e => Refusal::BadRequest(e.to_string()),
        })?;
        if self.list.as_ref() == Some(&list) {
            return Ok(None);
        }
        let serial = self.revocation_serial();
        if list.serial <= serial {
            return Err(Refusal::Stale(format!(
                "revocation list serial {} is not newer than the one in force ({serial})",
                list.serial
            )));
        }
        Ok(Some(list))
    }

    /// True once after every change of content (records, revocations).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// The members a snapshot at `now_ms` lists: published, not revoked,
    /// renewed within the record lifetime, certificate unexpired; and the
    /// revoked member ids.
    pub fn current(&self, now_ms: u64) -> (Vec<Entry>, Vec<MemberId>) {
        let ttl_ms = self.limits.record_ttl_s.saturating_mul(1000);
        let entries = self
            .records
            .values()
            .filter(|r| {
                !self.revoked.is_revoked(&r.member())
                    && r.seq.saturating_add(ttl_ms) > now_ms
                    && r.cert.not_after > now_ms / 1000
            })
            .filter_map(Record::entry)
            .collect();
        let ids = self.list.iter().flat_map(|l| l.entries.iter());
        (entries, ids.map(|e| e.member).collect())
    }

    /// When (Unix ms) a currently listed member next drops out by age.
    pub fn next_expiry(&self, now_ms: u64) -> Option<u64> {
        let ttl_ms = self.limits.record_ttl_s.saturating_mul(1000);
        self.records
            .values()
            .filter(|r| matches!(r.statement, Statement::Publish(_)))
            .map(|r| {
                r.seq
                    .saturating_add(ttl_ms)
                    .min(r.cert.not_after.saturating_mul(1000))
            })
            .filter(|&t| t > now_ms)
            .min()
    }

    /// Records held (withdrawals included).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

fn refusal_of(what: &str, e: DirError) -> Refusal {
    match refusal(e) {
        Refusal::BadRequest(m) => Refusal::BadRequest(format!("{what}: {m}")),
        Refusal::Forbidden(m) => Refusal::Forbidden(format!("{what}: {m}")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{Advert, Snapshot, Tunnels};
    use crate::testutil::{cert, key, root, root_pub, T0};
    use crate::trust::Roles;

    const NOW: u64 = T0 * 1000;

    fn advert(port: u16) -> Statement {
        Statement::Publish(Advert {
            endpoints: vec![std::net::SocketAddr::new([192, 0, 2, 7].into(), port)],
            tunnels: Tunnels::NAT,
            donate_kbit: 0,
            software: "0.1.0".into(),
        })
    }

    fn rec(seed: u8, name: &str, seq: u64, st: Statement) -> Vec<u8> {
        Record::sign(
            &key(seed),
            cert(name, seed, Roles::CLIENT | Roles::WAYPOINT),
            seq,
            st,
        )
        .encode()
    }

    fn reg() -> Registry {
        Registry::new(root_pub(), Limits::default())
    }

    fn submit(r: &mut Registry, now: u64, b: &[u8]) -> Result<bool, Refusal> {
        let rec = r.check_record(now, b)?;
        Ok(r.commit_record(rec))
    }

    #[test]
    fn accepts_replaces_withdraws() {
        let mut r = reg();
        assert!(r.take_changed());
        assert_eq!(
            submit(&mut r, NOW, &rec(2, "alice", NOW, advert(7447))),
            Ok(true)
        );
        assert!(r.take_changed() && !r.take_changed());
        // The same content again (a periodic republish) changes nothing.
        assert_eq!(
            submit(&mut r, NOW + 1, &rec(2, "alice", NOW + 1, advert(7447))),
            Ok(false)
        );
        assert!(!r.take_changed());
        assert_eq!(
            submit(&mut r, NOW + 2, &rec(2, "alice", NOW + 2, advert(7448))),
            Ok(true)
        );
        let (entries, revoked) = r.current(NOW + 2);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].endpoints[0].port(), 7448);
        assert!(revoked.is_empty());
        assert_eq!(
            submit(
                &mut r,
                NOW + 3,
                &rec(2, "alice", NOW + 3, Statement::Withdraw)
            ),
            Ok(true)
        );
        assert!(r.current(NOW + 3).0.is_empty());
        // The withdrawal stays as a tombstone: the old advert cannot come back.
        let e = submit(&mut r, NOW + 4, &rec(2, "alice", NOW + 2, advert(7448))).unwrap_err();
        assert_eq!(e.status(), 409, "{e}");
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn refusals_name_the_reason_and_change_nothing() {
        let mut r = reg();
        submit(&mut r, NOW, &rec(2, "alice", NOW, advert(7447))).unwrap();
        r.take_changed();
        let good = rec(3, "carol", NOW, advert(7447));
        let mut flipped = good.clone();
        let n = flipped.len();
        flipped[n - 5] ^= 1;
        let cases: Vec<(Vec<u8>, u16, &str)> = vec![
            (b"hello".to_vec(), 400, "record: unsupported format version"),
            (good[..good.len() - 3].to_vec(), 400, "truncated"),
            (flipped, 403, "bad signature"),
            (rec(2, "alice", NOW, advert(7447)), 409, "not newer"),
            (
                rec(2, "alice", NOW - 4 * 3600 * 1000, advert(1)),
                409,
                "stale",
            ),
            (rec(2, "alice", NOW + 3_600_000, advert(1)), 400, "ahead"),
            (
                Record::sign(&key(5), cert("dave", 5, Roles::CLIENT), NOW, advert(1)).encode(),
                403,
                "waypoint role",
            ),
            (
                Record::sign(
                    &key(6),
                    crate::testutil::cert_by(
                        &key(9),
                        "eve",
                        6,
                        Roles::CLIENT | Roles::WAYPOINT,
                        T0 - 10,
                        T0 + 10,
                    ),
                    NOW,
                    advert(1),
                )
                .encode(),
                403,
                "another collective",
            ),
        ];
        for (body, status, text) in cases {
            let e = submit(&mut r, NOW, &body).unwrap_err();
            assert_eq!(e.status(), status, "{e}");
            assert!(e.to_string().contains(text), "{e} lacks {text}");
        }
        assert!(!r.take_changed());
        assert_eq!(r.current(NOW).0.len(), 1);
    }

    #[test]
    fn revocation_removes_member_and_refuses_its_records() {
        let mut r = reg();
        submit(&mut r, NOW, &rec(2, "alice", NOW, advert(7447))).unwrap();
        let alice = MemberId::of(&key(2).public());
        let rv = crate::testutil::revoked_list(4, &[alice]);
        let got = r.check_list(rv.as_bytes()).unwrap().unwrap();
        assert!(r.load_list(got).unwrap());
        assert_eq!(r.check_list(rv.as_bytes()), Ok(None));
        assert_eq!(r.revocation_serial(), 4);
        let (entries, revoked) = r.current(NOW);
        assert!(entries.is_empty());
        assert_eq!(revoked, vec![alice]);
        let e = submit(&mut r, NOW + 5, &rec(2, "alice", NOW + 5, advert(7447))).unwrap_err();
        assert_eq!((e.status(), e.to_string().contains("revoked")), (403, true));
        // An older list is refused; so is one a member signed.
        let old = crate::testutil::revoked_list(3, &[]);
        assert_eq!(r.check_list(old.as_bytes()).unwrap_err().status(), 409);
        let forged = crate::trust::RevocationList::issue(&key(2), 9, T0, Vec::new());
        let forged = crate::trust::files::revocations_text(&forged);
        assert_eq!(r.check_list(forged.as_bytes()).unwrap_err().status(), 403);
        assert_eq!(r.check_list(b"junk").unwrap_err().status(), 400);
        assert_eq!(r.revocation_serial(), 4);
        // The snapshot built from it carries the list.
        let (entries, revoked) = r.current(NOW);
        let snap = crate::directory::build_snapshot(&root(), 1, T0, revoked, entries.iter());
        let s = Snapshot::verify(&snap, &root_pub()).unwrap();
        assert_eq!((s.head.count, s.head.revoked.clone()), (0, vec![alice]));
    }

    #[test]
    fn records_expire_without_renewal() {
        let mut r = reg();
        submit(&mut r, NOW, &rec(2, "alice", NOW, advert(7447))).unwrap();
        let ttl = Limits::default().record_ttl_s * 1000;
        assert_eq!(r.next_expiry(NOW), Some(NOW + ttl));
        assert_eq!(r.current(NOW + ttl - 1).0.len(), 1);
        assert!(r.current(NOW + ttl).0.is_empty());
        // Certificates end listings too.
        let mut short = reg();
        let c = crate::testutil::cert_by(
            &root(),
            "brief",
            7,
            Roles::CLIENT | Roles::WAYPOINT,
            T0 - 10,
            T0 + 60,
        );
        let b = Record::sign(&key(7), c, NOW, advert(1)).encode();
        submit(&mut short, NOW, &b).unwrap();
        assert_eq!(short.next_expiry(NOW), Some(NOW + 60_000));
        assert!(short.current(NOW + 60_000).0.is_empty());
    }

    #[test]
    fn floods_are_limited_per_member_and_per_source() {
        let mut r = reg();
        let src: IpAddr = [198, 51, 100, 1].into();
        let mut ok = 0;
        let mut limited = 0;
        for i in 0..10u64 {
            assert!(r.admit_source(src, NOW + i).is_ok());
            match submit(&mut r, NOW + i, &rec(2, "alice", NOW + i, advert(7447))) {
                Ok(_) => ok += 1,
                Err(e) if e.status() == 429 => limited += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((ok, limited), (5, 5));
        // A minute later one more token per 10 s has come back.
        assert!(submit(
            &mut r,
            NOW + 60_000,
            &rec(2, "alice", NOW + 60_000, advert(1))
        )
        .is_ok());
        // Another member is not affected.
        assert!(submit(&mut r, NOW + 20, &rec(3, "carol", NOW + 20, advert(1))).is_ok());
        let mut n = 0;
        while r.admit_source(src, NOW + 100).is_ok() {
            n += 1;
        }
        assert_eq!(n, 20, "30 burst minus the 10 used");
        let other: IpAddr = [198, 51, 100, 2].into();
        assert!(r.admit_source(other, NOW + 100).is_ok());
        // Memory stays bounded under a spray of source addresses.
        for i in 0..(RATE_KEYS as u32 + 100) {
            let _ = r.admit_source(IpAddr::from(i.to_be_bytes()), NOW + 200);
        }
        assert!(r.sources.buckets.len() <= RATE_KEYS);
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_64s() {
        let s = |a: &str| Source::of(a.parse().unwrap());
        assert_eq!(s("2001:db8:1:2::1"), s("2001:db8:1:2:ffff:1:2:3"));
        assert_ne!(s("2001:db8:1:2::1"), s("2001:db8:1:3::1"));
        assert_eq!(s("2001:db8:1:2:a:b:c:d").to_string(), "2001:db8:1:2::/64");
        assert_ne!(s("198.51.100.1"), s("198.51.100.2"));
        assert_eq!(s("::ffff:198.51.100.1"), s("198.51.100.1"));
        assert_eq!(s("::ffff:198.51.100.1").to_string(), "198.51.100.1");
    }

    #[test]
    fn one_64_shares_one_rate_limit() {
        let mut r = reg();
        // 30 requests from 30 addresses of one /64 use its whole burst ...
        for i in 0..30u16 {
            let ip = IpAddr::from([0x2001, 0xdb8, 1, 2, 0, 0, 0, i + 1]);
            assert!(r.admit_source(ip, NOW).is_ok(), "request {i}");
        }
        let e = r
            .admit_source("2001:db8:1:2::ffff".parse().unwrap(), NOW)
            .unwrap_err();
        assert_eq!(e.status(), 429);
        assert!(e.to_string().contains("2001:db8:1:2::/64"), "{e}");
        // ... and leave the neighbouring /64 and IPv4 alone.
        assert!(r
            .admit_source("2001:db8:1:3::1".parse().unwrap(), NOW)
            .is_ok());
        assert!(r.admit_source([198, 51, 100, 1].into(), NOW).is_ok());
    }
}
