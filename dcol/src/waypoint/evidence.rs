//! Attribution evidence: the waypoint keeps every signed request it granted,
//! so that traffic that left through this router can be tied to the member
//! who asked for it. Pure: records and their framing; the file log that
//! rotates them is [`EvidenceLog`] (plain files, no kernel state).
//!
//! A record holds the datagram as received, without its zero padding. It
//! contains the member's certificate and its signature over the request body
//! (destination, nonce, timestamp, waypoint name, source address), so anyone with the collective's public key can
//! re-check it later ([`Record::verify`]).
//!
//! Framing, per record: `len` (u32, big-endian) | postcard(`Record`) |
//! the first 8 bytes of SHA-256 over the payload. A torn or corrupted record
//! (power loss during a write) ends the readable part of its file; what
//! follows it is reported, not trusted.
//!
//! **A member cannot wash out its own records.** The log rotates by size, so
//! many grant/release cycles would push a member's earlier records out.
//! [`Shares`] counts what each member caused in the last [`WINDOW`] (a
//! grant's record and the end record it will have, [`lease_cost`]); the
//! waypoint refuses new tunnels to a member whose [`member_share`] is used
//! up. The share is less than the bytes that must follow a record before
//! rotation deletes it (three files' worth), so no member's own churn can
//! rotate out its records younger than a day: only other members' traffic
//! or age can. (Slack: the end record of a lease granted more than a day
//! before it ends is written outside the count; the share leaves a file's
//! worth for those.)

use std::collections::{HashMap, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::proto::{self, v1::RequestV1, Message};
use crate::trust::{MemberId, PublicKey, Revocations, TrustError};

/// Largest record accepted when reading (a datagram is at most 4 KiB).
const MAX_RECORD: usize = 16 * 1024;

/// Files kept: `evidence.0` (written) to `evidence.{FILES-1}` (oldest).
pub const FILES: usize = 4;

/// How long a member's records count against its share.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Upper bound of a grant record's framed bytes besides the request (frame,
/// time, address, member id and name, the longest grant text).
const GRANT_OVERHEAD: u64 = 160;

/// Upper bound of an end record's framed bytes (reasons of up to 16 bytes).
const END_RESERVE: u64 = 192;

/// The evidence a lease granted for a request of `request_len` bytes causes,
/// at most: its grant record and its end record.
pub fn lease_cost(request_len: usize) -> u64 {
    GRANT_OVERHEAD
        .saturating_add(request_len as u64)
        .saturating_add(END_RESERVE)
}

/// Bytes of one file of a log of `max_bytes`.
fn per_file(max_bytes: u64) -> u64 {
    (max_bytes / FILES as u64).max(4096)
}

/// What one member may cause within [`WINDOW`] in a log of `max_bytes`:
/// half the log, and less than two files (a record is deleted only after
/// three more files were filled, each with more than a file less the
/// largest frame), leaving a file's worth of slack.
pub fn member_share(max_bytes: u64) -> u64 {
    let largest = GRANT_OVERHEAD.saturating_add(proto::MAX_DATAGRAM as u64);
    let f = per_file(max_bytes);
    (max_bytes / 2).min(f.saturating_sub(largest).saturating_mul(2))
}

/// Per-member counts of evidence bytes over the last [`WINDOW`], by minute.
/// Pure: takes Unix milliseconds.
#[derive(Debug)]
pub struct Shares {
    share: u64,
    per: HashMap<MemberId, (VecDeque<(u64, u64)>, u64)>,
}

impl Shares {
    /// Counts against `share` bytes per member.
    pub fn new(share: u64) -> Shares {
        Shares {
            share,
            per: HashMap::new(),
        }
    }

    /// The share per member.
    pub fn share(&self) -> u64 {
        self.share
    }

    /// Changes the share (counts are kept).
    pub fn set_share(&mut self, share: u64) {
        self.share = share;
    }

    /// Bytes `member` caused within the window before `now_ms`.
    pub fn used(&mut self, member: MemberId, now_ms: u64) -> u64 {
        let oldest = now_ms.saturating_sub(WINDOW.as_millis() as u64) / 60_000;
        let Some((minutes, sum)) = self.per.get_mut(&member) else {
            return 0;
        };
        while minutes.front().is_some_and(|&(m, _)| m < oldest) {
            if let Some((_, b)) = minutes.pop_front() {
                *sum = sum.saturating_sub(b);
            }
        }
        let used = *sum;
        if minutes.is_empty() {
            self.per.remove(&member);
        }
        used
    }

    /// True when `member` may cause `cost` more bytes at `now_ms`.
    pub fn admits(&mut self, member: MemberId, now_ms: u64, cost: u64) -> bool {
        self.used(member, now_ms).saturating_add(cost) <= self.share
    }

    /// Counts `bytes` of `member` at `at_ms`.
    pub fn add(&mut self, member: MemberId, at_ms: u64, bytes: u64) {
        let minute = at_ms / 60_000;
        let (minutes, sum) = self.per.entry(member).or_default();
        match minutes.back_mut() {
            Some((m, b)) if *m >= minute => *b = b.saturating_add(bytes),
            _ => minutes.push_back((minute, bytes)),
        }
        *sum = sum.saturating_add(bytes);
    }

    /// Counts the records found in a log (at start: a restart does not
    /// give a member a fresh share).
    pub fn seed(&mut self, records: &[Record]) {
        for r in records {
            if let Ok(m) = r.member_id.parse::<MemberId>() {
                self.add(m, r.at_ms, r.frame().len() as u64);
            }
        }
    }
}

/// One granted request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When it was granted (Unix milliseconds, the waypoint's clock).
    pub at_ms: u64,
    /// Where the request came from.
    pub from: SocketAddr,
    /// The member's id (16 hex digits) and name, as the waypoint checked them.
    pub member_id: String,
    /// The member's certificate name.
    pub member: String,
    /// What was granted, e.g. `nat 40000 -> 198.51.100.7:443` or `vpn
    /// 10.200.7.2`; for the end of a lease, `end nat 40000 -> ...: expired`.
    pub grant: String,
    /// Bytes the lease carried, both ways (end records; conntrack's count).
    pub bytes: Option<u64>,
    /// The request datagram as received, without its zero padding (signed
    /// by the member); empty in end records.
    pub request: Vec<u8>,
}

/// Why a record does not prove what it claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// The stored datagram is not a request.
    #[error("the stored datagram is not a request")]
    NotARequest,
    /// Certificate or signature check failed.
    #[error("{0}")]
    Trust(#[from] TrustError),
    /// The record names another member than the one who signed.
    #[error("the record names member {0}, the request was signed by {1}")]
    MemberMismatch(String, String),
}

impl Record {
    /// The request inside, decoded (one of protocol version 1, kept before
    /// an upgrade, with the address the waypoint saw as its source).
    pub fn decode_request(&self) -> Option<proto::Request> {
        match proto::decode(&self.request) {
            Ok(Message::Request(r)) => Some(r),
            _ => RequestV1::decode(&self.request).map(|r| r.into_request(self.from.ip())),
        }
    }

    /// Checks the member's signature and that its certificate was issued by
    /// `root` and valid at the time of the record (a version-1 request by
    /// version-1 rules).
    pub fn verify(&self, root: &PublicKey) -> Result<proto::Request, EvidenceError> {
        let now = self.at_ms / 1000;
        let none = Revocations::default();
        let r = match proto::decode(&self.request) {
            Ok(Message::Request(r)) => {
                r.verify(root, &none, now)?;
                r
            }
            _ => {
                let v1 = RequestV1::decode(&self.request).ok_or(EvidenceError::NotARequest)?;
                v1.verify(root, &none, now)?;
                v1.into_request(self.from.ip())
            }
        };
        let signer = r.cert.member.to_string();
        if signer != self.member_id {
            return Err(EvidenceError::MemberMismatch(
                self.member_id.clone(),
                signer,
            ));
        }
        Ok(r)
    }

    /// The framed bytes of this record.
    pub fn frame(&self) -> Vec<u8> {
        let payload = postcard::to_allocvec(self).expect("serializing to a Vec cannot fail");
        let mut out = Vec::with_capacity(payload.len() + 12);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out.extend_from_slice(&Sha256::digest(&payload)[..8]);
        out
    }
}

/// What reading a file found: the good records, and where (byte offset) the
/// readable part ended early, if it did.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Records in order.
    pub records: Vec<Record>,
    /// Offset of a torn or corrupted record.
    pub bad_at: Option<usize>,
}

/// Parses a file's bytes.
pub fn parse(b: &[u8]) -> Parsed {
    let mut p = Parsed::default();
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        let Some(len) = rest
            .get(..4)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]))
        else {
            p.bad_at = Some(i);
            break;
        };
        let len = len as usize;
        if len > MAX_RECORD || rest.len() < 4 + len + 8 {
            p.bad_at = Some(i);
            break;
        }
        let payload = &rest[4..4 + len];
        if Sha256::digest(payload)[..8] != rest[4 + len..4 + len + 8] {
            p.bad_at = Some(i);
            break;
        }
        // Only the form this code writes: no trailing bytes, no overlong
        // numbers (one record, one byte string).
        match postcard::from_bytes::<Record>(payload)
            .ok()
            .filter(|r| postcard::to_allocvec(r).is_ok_and(|b| b == payload))
        {
            Some(r) => p.records.push(r),
            None => {
                p.bad_at = Some(i);
                break;
            }
        }
        i += 4 + len + 8;
    }
    p
}

/// The append-only, size-bounded, rotated log in a directory.
#[derive(Debug)]
pub struct EvidenceLog {
    dir: PathBuf,
    /// Rotate `evidence.0` once it is this large.
    per_file: u64,
}

impl EvidenceLog {
    /// A log in `dir` using at most about `max_bytes` over [`FILES`] files.
    /// A torn tail of the current file (a crash mid-write) is cut off so new
    /// records follow good ones.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<EvidenceLog> {
        fs::create_dir_all(dir)?;
        let log = EvidenceLog {
            dir: dir.to_owned(),
            per_file: per_file(max_bytes),
        };
        let cur = log.file(0);
        if let Ok(b) = fs::read(&cur) {
            if let Some(at) = parse(&b).bad_at {
                log::warn!(
                    "{}: torn or corrupted record at byte {at}; cut off there",
                    cur.display()
                );
                OpenOptions::new()
                    .write(true)
                    .open(&cur)?
                    .set_len(at as u64)?;
            }
        }
        Ok(log)
    }

    /// Every record of the log, oldest first (see [`read_dir`]).
    pub fn records(&self) -> (Vec<Record>, Vec<String>) {
        read_dir(&self.dir)
    }

    fn file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("evidence.{i}"))
    }

    /// Appends `r` (one `write`; no fsync: a power cut may lose the last
    /// records, never earlier ones), rotating first when the file is full.
    pub fn append(&self, r: &Record) -> io::Result<()> {
        let cur = self.file(0);
        let size = fs::metadata(&cur).map(|m| m.len()).unwrap_or(0);
        let frame = r.frame();
        if size > 0 && size + frame.len() as u64 > self.per_file {
            for i in (0..FILES - 1).rev() {
                let from = self.file(i);
                if from.exists() {
                    fs::rename(&from, self.file(i + 1))?;
                }
            }
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cur)?
            .write_all(&frame)
    }
}

/// Reads every record in `dir`, oldest first; problems (a torn record, an
/// unreadable file) are returned as messages naming file and offset.
pub fn read_dir(dir: &Path) -> (Vec<Record>, Vec<String>) {
    let mut records = Vec::new();
    let mut problems = Vec::new();
    for i in (0..FILES).rev() {
        let f = dir.join(format!("evidence.{i}"));
        match fs::read(&f) {
            Ok(b) => {
                let p = parse(&b);
                if let Some(at) = p.bad_at {
                    problems.push(format!(
                        "{}: torn or corrupted record at byte {at}; {} byte(s) after it skipped",
                        f.display(),
                        b.len() - at
                    ));
                }
                records.extend(p.records);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!("{}: {e}", f.display())),
        }
    }
    (records, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Nonce;

    fn rec(i: u64) -> Record {
        Record {
            at_ms: 1_700_000_000_000 + i,
            from: "192.0.2.1:7447".parse().unwrap(),
            member_id: "0102030405060708".into(),
            member: "bob".into(),
            grant: format!("nat {} -> 198.51.100.7:443", 40000 + i),
            bytes: None,
            request: vec![i as u8; 300],
        }
    }

    #[test]
    fn frames_round_trip_and_torn_tails_are_found() {
        let mut b = Vec::new();
        for i in 0..3 {
            b.extend(rec(i).frame());
        }
        let p = parse(&b);
        assert_eq!((p.records.len(), p.bad_at), (3, None));
        assert_eq!(p.records[2], rec(2));
        let one = rec(0).frame().len();
        // Torn last record.
        let p = parse(&b[..b.len() - 5]);
        assert_eq!((p.records.len(), p.bad_at), (2, Some(2 * one)));
        // A flipped byte in the middle record.
        let mut c = b.clone();
        c[one + 40] ^= 1;
        let p = parse(&c);
        assert_eq!((p.records.len(), p.bad_at), (1, Some(one)));
        // An absurd length.
        let p = parse(&[0xff, 0xff, 0xff, 0xff, 0]);
        assert_eq!((p.records.len(), p.bad_at), (0, Some(0)));
        // A payload with bytes after the record, under a matching checksum
        // (found by the fuzzer): not a frame this code writes.
        let mut payload = postcard::to_allocvec(&rec(0)).unwrap();
        payload.push(0);
        let mut d = (payload.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(&payload);
        d.extend_from_slice(&Sha256::digest(&payload)[..8]);
        let p = parse(&d);
        assert_eq!((p.records.len(), p.bad_at), (0, Some(0)));
    }

    #[test]
    fn log_rotates_within_its_bound_and_repairs_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("dcol-evidence-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let log = EvidenceLog::open(&dir, 4 * 4096).unwrap();
        for i in 0..200 {
            log.append(&rec(i)).unwrap();
        }
        let total: u64 = (0..FILES + 1)
            .filter_map(|i| fs::metadata(dir.join(format!("evidence.{i}"))).ok())
            .map(|m| m.len())
            .sum();
        assert!(total <= 4 * 4096, "{total}");
        assert!(!dir.join(format!("evidence.{FILES}")).exists());
        let (records, problems) = read_dir(&dir);
        assert!(problems.is_empty(), "{problems:?}");
        // The newest survive, in order.
        assert_eq!(records.last(), Some(&rec(199)));
        assert!(records.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
        // A crash mid-write: the torn tail is reported, then cut at reopen.
        let cur = dir.join("evidence.0");
        let mut b = fs::read(&cur).unwrap();
        b.extend_from_slice(&rec(500).frame()[..20]);
        fs::write(&cur, &b).unwrap();
        let (_, problems) = read_dir(&dir);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let log = EvidenceLog::open(&dir, 4 * 4096).unwrap();
        log.append(&rec(501)).unwrap();
        let (records, problems) = read_dir(&dir);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(records.last(), Some(&rec(501)));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn lease_cost_bounds_the_records_a_lease_causes() {
        let v6 = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        let grant = Record {
            at_ms: u64::MAX,
            from: v6.parse().unwrap(),
            member_id: "ffffffffffffffff".into(),
            member: "x".repeat(crate::trust::MAX_NAME),
            grant: format!("nat 65535 -> {v6}"),
            bytes: None,
            request: vec![0xff; proto::MAX_DATAGRAM],
        };
        let end = Record {
            grant: format!("end nat 65535 -> {v6}: waypoint stopped"),
            bytes: Some(u64::MAX),
            request: Vec::new(),
            ..grant.clone()
        };
        assert!(
            end.frame().len() as u64 <= END_RESERVE,
            "{}",
            end.frame().len()
        );
        let both = (grant.frame().len() + end.frame().len()) as u64;
        assert!(both <= lease_cost(proto::MAX_DATAGRAM), "{both}");
    }

    #[test]
    fn a_member_alone_cannot_rotate_out_its_own_records() {
        let m = MemberId([1; 8]);
        let rec = |i: u64, end: bool| Record {
            member_id: m.to_string(),
            grant: if end {
                format!("end nat {} -> 198.51.100.7:443: released", 40000 + i)
            } else {
                format!("nat {} -> 198.51.100.7:443", 40000 + i)
            },
            request: if end { Vec::new() } else { vec![7; 300] },
            ..rec(i)
        };
        for max in [16 * 1024, 64 * 1024, 1024 * 1024] {
            let dir = std::env::temp_dir().join(format!("dcol-share-{}-{max}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            let log = EvidenceLog::open(&dir, max).unwrap();
            let mut shares = Shares::new(member_share(max));
            let now = 1_700_000_000_000;
            let cost = lease_cost(300);
            let mut cycles = 0;
            while shares.admits(m, now, cost) {
                shares.add(m, now, cost);
                log.append(&rec(cycles, false)).unwrap();
                log.append(&rec(cycles, true)).unwrap();
                cycles += 1;
            }
            let kept = |log: &EvidenceLog| log.records().0.contains(&rec(0, false));
            assert!(kept(&log), "{max}: the first record was rotated out");
            assert!(cycles * cost > max / 4, "{max}: only {cycles} cycles");
            // Without the share the same churn would wash it out.
            for i in cycles..cycles * 8 {
                log.append(&rec(i, false)).unwrap();
                log.append(&rec(i, true)).unwrap();
            }
            assert!(!kept(&log), "{max}: the test cannot fail");
            let _ = fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn shares_age_and_seed() {
        let (a, b) = (MemberId([1; 8]), MemberId([2; 8]));
        let mut s = Shares::new(1000);
        let t = 1_700_000_000_000;
        s.add(a, t, 600);
        assert!(s.admits(a, t, 400) && !s.admits(a, t, 401));
        assert!(s.admits(b, t, 1000));
        let day = WINDOW.as_millis() as u64;
        assert_eq!(s.used(a, t + day - 60_000), 600);
        assert_eq!(s.used(a, t + day + 60_000), 0);
        assert!(s.per.is_empty(), "an aged-out member is forgotten");
        let mut seeded = Shares::new(1000);
        seeded.seed(&[rec(1), rec(2)]);
        let id = rec(1).member_id.parse().unwrap();
        assert_eq!(
            seeded.used(id, rec(2).at_ms),
            (rec(1).frame().len() + rec(2).frame().len()) as u64
        );
    }

    #[test]
    fn records_of_protocol_version_1_still_verify() {
        use crate::proto::v1::{BodyV1, RequestV1};
        use crate::testutil::{self, cert, nat, T0};
        let bob = cert("bob", 3, crate::trust::Roles::CLIENT);
        let body = BodyV1 {
            waypoint: "alice".into(),
            timestamp_ms: T0 * 1000,
            nonce: Nonce([4; 16]),
            kind: nat("10.0.3.2:5201"),
        };
        let old = RequestV1::sign(bob.clone(), &testutil::key(3), body);
        let r = Record {
            at_ms: T0 * 1000,
            member_id: bob.member.to_string(),
            request: old.encode(),
            ..rec(1)
        };
        let req = r.verify(&testutil::root_pub()).unwrap();
        assert_eq!(req.body.source, r.from.ip());
        assert_eq!(r.decode_request(), Some(req));
        let mut bad = r.clone();
        bad.request[60] ^= 1;
        assert!(bad.verify(&testutil::root_pub()).is_err());
    }
}
