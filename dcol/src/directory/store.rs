//! The directory server's files. Every write of a record or snapshot is
//! atomic (temporary file, fsync, rename), so a crash or a full disk never
//! leaves a half-written record behind; revocations are appended one line
//! each (a torn last line is skipped with a warning).
//!
//! ```text
//! DIR/records/<member id>   each member's latest record, as uploaded (binary)
//! DIR/revocations           "dcol-revocation-v1 <hex>" lines, root-signed
//! DIR/snapshot              the current signed snapshot: upload it anywhere
//! ```

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::registry::Registry;
use super::{Record, Revocation, Snapshot};
use crate::trust::{from_hex, to_hex, MemberId};

const REVOCATION_TAG: &str = "dcol-revocation-v1";

/// Errors of the store; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, fsync, rename over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.unwrap_or_default(),
        std::process::id()
    ));
    let r = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename itself reaches the disk with the directory.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

/// The store directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Modification time and length of `revocations` when last read.
    revocations_seen: Option<(SystemTime, u64)>,
}

impl Store {
    /// Opens (creating) `dir` and `dir/records`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let records = dir.join("records");
        fs::create_dir_all(&records).map_err(io_err(&records))?;
        Ok(Store {
            dir: dir.to_owned(),
            revocations_seen: None,
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The snapshot file.
    pub fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot")
    }

    fn record_path(&self, m: &MemberId) -> PathBuf {
        self.dir.join("records").join(m.to_string())
    }

    /// Reads every record and revocation into `reg`; returns warnings about
    /// files skipped.
    pub fn load(&mut self, reg: &mut Registry) -> Result<Vec<String>, StoreError> {
        let mut warnings = Vec::new();
        let records = self.dir.join("records");
        for e in fs::read_dir(&records).map_err(io_err(&records))? {
            let e = e.map_err(io_err(&records))?;
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // A temporary file of an interrupted write.
                let _ = fs::remove_file(&path);
                continue;
            }
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(err) => {
                    warnings.push(format!("{}: {err}; skipped", path.display()));
                    continue;
                }
            };
            match Record::decode(&bytes) {
                Ok(r) if r.member().to_string() == name => reg.load_record(r),
                Ok(r) => warnings.push(format!(
                    "{}: holds the record of member {}; skipped",
                    path.display(),
                    r.member()
                )),
                Err(err) => warnings.push(format!("{}: {err}; skipped", path.display())),
            }
        }
        warnings.extend(self.reload_revocations(reg)?);
        Ok(warnings)
    }

    /// Saves a member's record (atomically replacing the previous one).
    pub fn save_record(&self, r: &Record) -> Result<(), StoreError> {
        let path = self.record_path(&r.member());
        write_atomic(&path, &r.encode(), 0o644).map_err(io_err(&path))
    }

    /// Re-reads `revocations` when it changed since the last read (another
    /// process, e.g. `dcol collective revoke --store`, appended to it).
    /// Returns warnings about bad lines.
    pub fn reload_revocations(&mut self, reg: &mut Registry) -> Result<Vec<String>, StoreError> {
        let path = self.dir.join("revocations");
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        if self.revocations_seen == Some(stamp) {
            return Ok(Vec::new());
        }
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        self.revocations_seen = Some(stamp);
        let mut warnings = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let r = parse_revocation(line)
                .and_then(|r| reg.load_revocation(r).map_err(|e| e.to_string()));
            if let Err(e) = r {
                warnings.push(format!("{}:{}: {e}; skipped", path.display(), i + 1));
            }
        }
        Ok(warnings)
    }

    /// Saves the current snapshot (atomically).
    pub fn save_snapshot(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.snapshot_path();
        write_atomic(&path, bytes, 0o644).map_err(io_err(&path))
    }

    /// The serial of the saved snapshot, if any.
    pub fn last_serial(&self) -> Option<u64> {
        let b = fs::read(self.snapshot_path()).ok()?;
        Snapshot::parse_unverified(&b).ok().map(|s| s.head.serial)
    }
}

/// Parses one `dcol-revocation-v1 <hex>` line.
pub fn parse_revocation(line: &str) -> Result<Revocation, String> {
    let hex = line
        .strip_prefix(REVOCATION_TAG)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| format!("expected '{REVOCATION_TAG} <hex>'"))?;
    let b = from_hex(hex.trim()).map_err(|col| format!("bad hex at column {col}"))?;
    Revocation::decode(&b).map_err(|e| format!("not a revocation: {e}"))
}

/// The line form of a revocation.
pub fn revocation_line(r: &Revocation) -> String {
    format!("{REVOCATION_TAG} {}\n", to_hex(&r.encode()))
}

/// Appends a revocation to `dir/revocations` (one write, `O_APPEND`).
pub fn append_revocation(dir: &Path, r: &Revocation) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join("revocations");
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o644)
        .open(&path)
        .map_err(io_err(&path))?;
    // After a torn last line (a crash mid-write), start a new line.
    let mut line = revocation_line(r);
    let len = f.metadata().map_err(io_err(&path))?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1))
            .and_then(|_| f.read_exact(&mut last))
            .map_err(io_err(&path))?;
        if last[0] != b'\n' {
            line.insert(0, '\n');
        }
    }
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(&path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::registry::Limits;
    use crate::directory::{Advert, Statement, Tunnels};
    use crate::testutil::{cert, key, root, root_pub, T0};
    use crate::trust::Roles;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dcol-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn records_and_revocations_survive_a_restart() {
        let d = dir("rt");
        let mut store = Store::open(&d).unwrap();
        let mut reg = Registry::new(root_pub(), Limits::default());
        let rec = Record::sign(
            &key(2),
            cert("alice", 2, Roles::CLIENT | Roles::WAYPOINT),
            T0 * 1000,
            Statement::Publish(Advert {
                endpoints: vec!["192.0.2.7:7447".parse().unwrap()],
                tunnels: Tunnels::NAT,
                donate_kbit: 0,
                software: "0.1.0".into(),
            }),
        );
        store.save_record(&rec).unwrap();
        let bob = MemberId::of(&key(3).public());
        append_revocation(&d, &Revocation::sign(&root(), bob, T0)).unwrap();
        // Junk a crash or an editor may leave: skipped with warnings.
        fs::write(d.join("records").join("0000000000000000"), b"junk").unwrap();
        fs::write(d.join("records").join(".x.tmp1"), b"partial").unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.join("revocations"))
            .unwrap();
        f.write_all(b"dcol-revocation-v1 01ab").unwrap();
        drop(f);
        let w = store.load(&mut reg).unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w.iter().any(|w| w.contains("revocations:2")), "{w:?}");
        assert!(!d.join("records").join(".x.tmp1").exists());
        let (entries, revoked) = reg.current(T0 * 1000);
        assert_eq!(entries.len(), 1);
        assert_eq!(revoked, vec![bob]);
        // Unchanged file: not read again; appended: read again.
        assert!(store.reload_revocations(&mut reg).unwrap().is_empty());
        let carol = MemberId::of(&key(4).public());
        append_revocation(&d, &Revocation::sign(&root(), carol, T0)).unwrap();
        store.reload_revocations(&mut reg).unwrap();
        assert_eq!(reg.current(T0 * 1000).1.len(), 2);
        // Snapshots: atomic save, serial read back.
        assert_eq!(store.last_serial(), None);
        let snap = crate::directory::build_snapshot(&root(), 9, T0, vec![], [].iter());
        store.save_snapshot(&snap).unwrap();
        assert_eq!(store.last_serial(), Some(9));
        assert_eq!(fs::read(store.snapshot_path()).unwrap(), snap);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn revocation_lines() {
        let r = Revocation::sign(&root(), MemberId([5; 8]), T0);
        let line = revocation_line(&r);
        assert!(line.starts_with("dcol-revocation-v1 01"));
        assert_eq!(parse_revocation(line.trim()).unwrap(), r);
        assert!(parse_revocation("dcol-revocation-v1 zz").is_err());
        assert!(parse_revocation("something else").is_err());
    }
}
