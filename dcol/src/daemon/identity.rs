//! This router's identity (key, certificate, collective root, revocations)
//! read from the files the configuration names, and the watch on the
//! revocation list file ([`RevWatch`]): a changed file reloads the daemon.

use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::driver::{Command, Ctx, Driver, Outbox, Role};
use super::plan::IdentityChange;
use super::{wall_ms, DaemonError};
use crate::config::Config;
use crate::trust::{self, files, Certificate, Revocations, SecretKey};

/// Keys, certificate and revocations in force.
#[derive(Clone)]
pub(super) struct Identity {
    /// This member's certificate.
    pub cert: Certificate,
    /// This member's key.
    pub key: SecretKey,
    /// The collective's root key.
    pub root: trust::PublicKey,
    /// UCI `list revoked` and the revocation list file.
    pub revocations: Revocations,
    /// Serial of the revocation list file (0: none).
    pub rev_serial: u64,
}

impl Identity {
    /// What differs in `new`.
    pub fn change(&self, new: &Identity) -> IdentityChange {
        IdentityChange {
            root: new.root != self.root,
            key: new.key.public() != self.key.public(),
            cert: new.cert != self.cert,
            revocations: new.revocations != self.revocations,
        }
    }
}

/// Reads the identity `cfg` names and checks it: the certificate is for
/// this key, signed by the collective and valid now.
pub(super) fn load_identity(cfg: &Config) -> Result<Identity, DaemonError> {
    let cfgerr = |e: files::FileError| DaemonError::Config(e.to_string());
    let key = files::read_secret_key(&cfg.main.key).map_err(cfgerr)?;
    let cert = files::read_certificate(&cfg.main.cert).map_err(cfgerr)?;
    let root = files::read_public_key(&cfg.main.collective).map_err(cfgerr)?;
    let mut revocations = Revocations::default();
    for r in &cfg.main.revoked {
        let id = r.parse().map_err(|_| {
            DaemonError::Config(format!("revoked member id '{r}' is not 16 hex digits"))
        })?;
        revocations.insert(id);
    }
    let mut rev_serial = 0;
    if let Some(path) = &cfg.main.revocation_list {
        match files::read_revocations(path, &root) {
            Ok(list) => {
                rev_serial = list.serial;
                revocations = revocations.union(&list.revocations());
            }
            Err(files::FileError::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                log::debug!("{}: no revocation list yet", path.display());
            }
            Err(e) => return Err(cfgerr(e)),
        }
    }
    if cert.key != key.public() {
        return Err(DaemonError::Config(format!(
            "{}: certificate is for another key than {}",
            cfg.main.cert.display(),
            cfg.main.key.display()
        )));
    }
    cert.verify(&root, wall_ms() / 1000)
        .map_err(|e| DaemonError::Config(format!("{}: {e}", cfg.main.cert.display())))?;
    Ok(Identity {
        cert,
        key,
        root,
        revocations,
        rev_serial,
    })
}

/// How often the revocation list file is checked for changes.
const REVOCATION_CHECK: Duration = Duration::from_secs(2);

/// The revocation list file, watched: its (modification time, length) when
/// last seen.
pub(super) struct RevWatch {
    path: PathBuf,
    seen: Option<(SystemTime, u64)>,
    next: Instant,
}

impl RevWatch {
    fn new(path: &Path) -> RevWatch {
        RevWatch {
            path: path.to_owned(),
            seen: Self::stamp(path),
            next: Instant::now() + REVOCATION_CHECK,
        }
    }

    fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }
}

impl Driver for RevWatch {
    fn fds<'a>(&'a self, _out: &mut Vec<BorrowedFd<'a>>) {}

    fn deadline(&self, _now: Instant) -> Option<Instant> {
        Some(self.next)
    }

    /// A changed file reloads the daemon (once per change).
    fn on_timeout(&mut self, now: Instant, out: &mut Outbox) {
        self.next = now + REVOCATION_CHECK;
        let stamp = Self::stamp(&self.path);
        if stamp != self.seen {
            self.seen = stamp;
            log::info!("{}: changed; reloading", self.path.display());
            out.command(Command::Reload);
        }
    }
}

impl Role for RevWatch {
    type Change = ();
    const NAME: &'static str = "revocation list watch";

    fn start(ctx: &mut Ctx<'_>, _out: &mut Outbox) -> Result<Option<Self>, DaemonError> {
        Ok(ctx.cfg.main.revocation_list.as_deref().map(RevWatch::new))
    }

    fn stop(self, _out: &mut Outbox) {}
}
