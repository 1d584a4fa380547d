//! The directory server's files. Every write of a record or snapshot is
//! atomic (temporary file, fsync, rename), so a crash or a full disk never
//! leaves a half-written record or list behind.
//!
//! ```text
//! DIR/records/<member id>   each member's latest record, as uploaded (binary)
//! DIR/revoked.list          the collective's root-signed revocation list
//!                           (`dcol collective revoke --store DIR`)
//! DIR/snapshot              the current signed snapshot: upload it anywhere
//! ```

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::registry::Registry;
use super::{Record, Snapshot};
use crate::trust::files::{self, FileError};
use crate::trust::{MemberId, RevocationList};

/// The revocation list's file name in the store.
pub const REVOKED_LIST: &str = "revoked.list";

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
    /// Modification time and length of `revoked.list` when last read.
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

    /// Re-reads `revoked.list` when it changed since the last read (another
    /// process, e.g. `dcol collective revoke --store`, replaced it). A list
    /// that is not the root's or is older than the one in force is ignored
    /// with a warning.
    pub fn reload_revocations(&mut self, reg: &mut Registry) -> Result<Vec<String>, StoreError> {
        let path = self.dir.join(REVOKED_LIST);
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
        self.revocations_seen = Some(stamp);
        match files::read_revocations(&path, reg.root()) {
            Ok(list) => match reg.load_list(list) {
                Ok(_) => Ok(Vec::new()),
                Err(e) => Ok(vec![format!("{}: {e}; ignored", path.display())]),
            },
            Err(FileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(Vec::new())
            }
            Err(e) => Ok(vec![format!("{e}; ignored")]),
        }
    }

    /// Saves a revocation list as `revoked.list` (atomically).
    pub fn save_revocations(&mut self, list: &RevocationList) -> Result<(), StoreError> {
        let path = self.dir.join(REVOKED_LIST);
        write_atomic(&path, files::revocations_text(list).as_bytes(), 0o644)
            .map_err(io_err(&path))?;
        self.revocations_seen = fs::metadata(&path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::registry::Limits;
    use crate::directory::{Advert, Statement, Tunnels};
    use crate::testutil::{cert, key, revoked_list, root, root_pub, T0};
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
        let carol = MemberId::of(&key(4).public());
        let revoked = d.join(REVOKED_LIST);
        fs::write(&revoked, revoked_list(2, &[bob])).unwrap();
        // Junk a crash or an editor may leave: skipped with warnings.
        fs::write(d.join("records").join("0000000000000000"), b"junk").unwrap();
        fs::write(d.join("records").join(".x.tmp1"), b"partial").unwrap();
        let w = store.load(&mut reg).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(!d.join("records").join(".x.tmp1").exists());
        let (entries, ids) = reg.current(T0 * 1000);
        assert_eq!(entries.len(), 1);
        assert_eq!(ids, vec![bob]);
        // Unchanged file: not read again.
        assert!(store.reload_revocations(&mut reg).unwrap().is_empty());
        // Truncated, then older: warned about, the list in force kept.
        fs::write(&revoked, "dcol-revoked-v1 01ab\n").unwrap();
        let w = store.reload_revocations(&mut reg).unwrap();
        assert!(w[0].contains("revoked.list"), "{w:?}");
        fs::write(&revoked, revoked_list(1, &[bob, carol])).unwrap();
        let w = store.reload_revocations(&mut reg).unwrap();
        assert!(w[0].contains("serial 1"), "{w:?}");
        assert_eq!(reg.current(T0 * 1000).1, vec![bob]);
        // Newer: in force.
        fs::write(&revoked, revoked_list(3, &[bob, carol])).unwrap();
        assert!(store.reload_revocations(&mut reg).unwrap().is_empty());
        assert_eq!(reg.current(T0 * 1000).1.len(), 2);
        // Snapshots: atomic save, serial read back.
        assert_eq!(store.last_serial(), None);
        let snap = crate::directory::build_snapshot(&root(), 9, T0, vec![], [].iter());
        store.save_snapshot(&snap).unwrap();
        assert_eq!(store.last_serial(), Some(9));
        assert_eq!(fs::read(store.snapshot_path()).unwrap(), snap);
        let _ = fs::remove_dir_all(&d);
    }
}
