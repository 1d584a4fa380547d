//! Attribution evidence: the waypoint keeps every signed request it granted,
//! so that traffic that left through this router can be tied to the member
//! who asked for it. Pure: records and their framing; the file log that
//! rotates them is [`EvidenceLog`] (plain files, no kernel state).
//!
//! A record holds the datagram exactly as received. It contains the member's
//! certificate and its signature over the request body (destination, nonce,
//! timestamp, waypoint name), so anyone with the collective's public key can
//! re-check it later ([`Record::verify`]).
//!
//! Framing, per record: `len` (u32, big-endian) | postcard(`Record`) |
//! the first 8 bytes of SHA-256 over the payload. A torn or corrupted record
//! (power loss during a write) ends the readable part of its file; what
//! follows it is reported, not trusted.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::proto::{self, Message};
use crate::trust::{PublicKey, Revocations, TrustError};

/// Largest record accepted when reading (a datagram is at most 4 KiB).
const MAX_RECORD: usize = 16 * 1024;

/// Files kept: `evidence.0` (written) to `evidence.{FILES-1}` (oldest).
pub const FILES: usize = 4;

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
    /// The request datagram as received (signed by the member); empty in
    /// end records.
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
    /// The request inside, decoded.
    pub fn decode_request(&self) -> Option<proto::Request> {
        match proto::decode(&self.request) {
            Ok(Message::Request(r)) => Some(r),
            _ => None,
        }
    }

    /// Checks the member's signature and that its certificate was issued by
    /// `root` and valid at the time of the record.
    pub fn verify(&self, root: &PublicKey) -> Result<proto::Request, EvidenceError> {
        let r = self.decode_request().ok_or(EvidenceError::NotARequest)?;
        r.verify(root, &Revocations::default(), self.at_ms / 1000)?;
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
            per_file: (max_bytes / FILES as u64).max(4096),
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
}
