//! This router's membership files, for joining from the web page: `dcol
//! member show` (what is there and whether it is usable), `dcol member key`
//! (creates the member key if there is none) and `dcol member install`
//! (checks a certificate and the collective key pasted by the user, then
//! writes them where the configuration says).
//!
//! The paths are the configuration's (`option key`, `option cert`, `option
//! collective`). `show` is the JSON the LuCI page reads:
//!
//! ```json
//! { "ready": false,
//!   "key": { "path": "/etc/dcol/member.key", "present": true, "id": "3f2a9c0d11e4b7a0",
//!            "request": "dcol-public-v1 …\ndcol-wg-v1 …\n", "error": null },
//!   "cert": { "path": "/etc/dcol/member.cert", "present": false, "name": null, "roles": null,
//!             "not_after": null, "error": null },
//!   "collective": { "path": "/etc/dcol/collective.pub", "present": false, "id": null,
//!                   "error": null } }
//! ```
//! `ready` is true when the three files are there and the certificate is
//! valid now, for this key, signed by this collective. `request` is the join
//! request to send to the collective's administrator. Each `error` says
//! what is wrong with that file (unreadable, damaged, expired, for another
//! key, from another collective).
//!
//! The web page runs these as root (rpcd), and a user the router's owner
//! delegated the page to can change the paths in `/etc/config/dcol`. So
//! called from the page (`--within /etc/dcol`), [`Paths::confine`] first
//! checks that each path, with every symbolic link resolved, is inside that
//! directory, and nothing is read or written otherwise: the page cannot be
//! used to overwrite `/etc/shadow` with a certificate.

use std::io;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::trust::files::{self, FileError};
use crate::trust::{to_hex, Certificate, MemberId, PublicKey, SecretKey, TrustError};

/// Largest pasted text accepted (a certificate line is ~400 bytes).
pub const MAX_PASTE: usize = 16 * 1024;

/// Where the membership files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The member key (secret; `KEY.pub` and `KEY.wgpub` next to it).
    pub key: PathBuf,
    /// The member certificate.
    pub cert: PathBuf,
    /// The collective's public key.
    pub collective: PathBuf,
}

impl Paths {
    /// The configuration's paths.
    pub fn of(cfg: &Config) -> Paths {
        Paths {
            key: cfg.main.key.clone(),
            cert: cfg.main.cert.clone(),
            collective: cfg.main.collective.clone(),
        }
    }

    /// Checks that every membership file (the key, `KEY.pub`, `KEY.wgpub`,
    /// the certificate, the collective key) is inside `dir`: an absolute
    /// path without `..`, inside `dir` also once the symbolic links on the
    /// way (and the file itself, if it is one) are resolved. Parts that do
    /// not exist yet are taken as they are written.
    pub fn confine(&self, dir: &Path) -> Result<(), Confinement> {
        let root = resolve(dir).map_err(|source| Confinement::Unresolvable {
            option: "(directory)",
            path: dir.to_owned(),
            dir: dir.to_owned(),
            source,
        })?;
        let key_pub = |ext: &str| {
            let mut p = self.key.as_os_str().to_owned();
            p.push(ext);
            PathBuf::from(p)
        };
        for (option, path) in [
            ("key", self.key.clone()),
            ("key", key_pub(".pub")),
            ("key", key_pub(".wgpub")),
            ("cert", self.cert.clone()),
            ("collective", self.collective.clone()),
        ] {
            let plain = path.is_absolute()
                && !path
                    .components()
                    .any(|c| matches!(c, Component::ParentDir | Component::CurDir));
            if !plain {
                return Err(Confinement::NotPlain {
                    option,
                    path,
                    dir: dir.to_owned(),
                });
            }
            let real = resolve(&path).map_err(|source| Confinement::Unresolvable {
                option,
                path: path.clone(),
                dir: dir.to_owned(),
                source,
            })?;
            if !real.starts_with(&root) || real == root {
                return Err(Confinement::Outside {
                    option,
                    path,
                    real,
                    dir: dir.to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// A membership file the web page may not touch: outside the directory it
/// is confined to (see [`Paths::confine`]).
#[derive(Debug, thiserror::Error)]
pub enum Confinement {
    /// Not an absolute path, or one with `.` or `..` in it.
    #[error("option {option} '{}' is not an absolute path without '.' or '..'; the web page reads and writes membership files only under {}", path.display(), dir.display())]
    NotPlain {
        /// The UCI option that names it.
        option: &'static str,
        /// The path as configured.
        path: PathBuf,
        /// Where membership files must be.
        dir: PathBuf,
    },
    /// Outside the directory, as written or once the symbolic links on its
    /// way are resolved.
    #[error("option {option} '{}' is outside {}{}; the web page reads and writes membership files only under {}", path.display(), dir.display(), if path == real { String::new() } else { format!(" (through a symbolic link, it is {})", real.display()) }, dir.display())]
    Outside {
        /// The UCI option that names it.
        option: &'static str,
        /// The path as configured.
        path: PathBuf,
        /// The path with the symbolic links resolved.
        real: PathBuf,
        /// Where membership files must be.
        dir: PathBuf,
    },
    /// Its symbolic links could not be resolved (e.g. one that leads
    /// nowhere, or a loop).
    #[error("option {option} '{}': cannot resolve it ({source}); the web page reads and writes membership files only under {}", path.display(), dir.display())]
    Unresolvable {
        /// The UCI option that names it (or "(directory)").
        option: &'static str,
        /// The path as configured.
        path: PathBuf,
        /// Where membership files must be.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// `path` with its symbolic links resolved: its longest existing part
/// canonicalized, the rest (which does not exist yet, so holds no link)
/// appended as written. A link that leads nowhere fails.
fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        match existing.symlink_metadata() {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let (Some(name), Some(parent)) = (existing.file_name(), existing.parent()) else {
                    return Err(e);
                };
                rest.push(name);
                existing = match parent.as_os_str().is_empty() {
                    true => Path::new("."),
                    false => parent,
                };
            }
            Err(e) => return Err(e),
        }
    }
    let mut real = std::fs::canonicalize(existing)?;
    real.extend(rest.iter().rev());
    Ok(real)
}

/// The member key.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyInfo {
    /// Its path.
    pub path: String,
    /// The file exists.
    pub present: bool,
    /// The member id it gives.
    pub id: Option<String>,
    /// The join request (public keys) to send to the administrator.
    pub request: Option<String>,
    /// What is wrong with it.
    pub error: Option<String>,
}

/// The certificate.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CertInfo {
    /// Its path.
    pub path: String,
    /// The file exists.
    pub present: bool,
    /// The member name in it.
    pub name: Option<String>,
    /// Its roles.
    pub roles: Option<String>,
    /// End of validity (Unix s).
    pub not_after: Option<u64>,
    /// What is wrong with it.
    pub error: Option<String>,
}

/// The collective's public key.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CollectiveInfo {
    /// Its path.
    pub path: String,
    /// The file exists.
    pub present: bool,
    /// The key, 64 hex digits (compare it with what the administrator says).
    pub id: Option<String>,
    /// What is wrong with it.
    pub error: Option<String>,
}

/// What `dcol member show --json` prints.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Membership {
    /// All three files usable.
    pub ready: bool,
    /// The member key.
    pub key: KeyInfo,
    /// The certificate.
    pub cert: CertInfo,
    /// The collective key.
    pub collective: CollectiveInfo,
}

fn present(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

/// Reads the three files and checks them against each other at `now`
/// (Unix s). Never fails: problems are in the `error` fields.
pub fn show(paths: &Paths, now: u64) -> Membership {
    let mut key = KeyInfo {
        path: paths.key.display().to_string(),
        present: present(&paths.key),
        id: None,
        request: None,
        error: None,
    };
    let secret = key.present.then(|| files::read_secret_key(&paths.key));
    match &secret {
        Some(Ok(k)) => {
            key.id = Some(MemberId::of(&k.public()).to_string());
            key.request = Some(files::join_request(k));
        }
        Some(Err(e)) => key.error = Some(e.to_string()),
        None => {}
    }
    let mut collective = CollectiveInfo {
        path: paths.collective.display().to_string(),
        present: present(&paths.collective),
        id: None,
        error: None,
    };
    let root = collective
        .present
        .then(|| files::read_public_key(&paths.collective));
    match &root {
        Some(Ok(r)) => collective.id = Some(to_hex(&r.0)),
        Some(Err(e)) => collective.error = Some(e.to_string()),
        None => {}
    }
    let mut cert = CertInfo {
        path: paths.cert.display().to_string(),
        present: present(&paths.cert),
        name: None,
        roles: None,
        not_after: None,
        error: None,
    };
    if cert.present {
        match files::read_certificate(&paths.cert) {
            Ok(c) => {
                cert.name = Some(c.name.clone());
                cert.roles = Some(c.roles.to_string());
                cert.not_after = Some(c.not_after);
                let public = match &secret {
                    Some(Ok(k)) => Some(k.public()),
                    _ => None,
                };
                let root = match &root {
                    Some(Ok(r)) => Some(*r),
                    _ => None,
                };
                if let Err(e) = check(&c, public.as_ref(), root.as_ref(), now) {
                    cert.error = Some(format!("{}: {e}", paths.cert.display()));
                }
            }
            Err(e) => cert.error = Some(e.to_string()),
        }
    }
    let ready = matches!(secret, Some(Ok(_)))
        && matches!(root, Some(Ok(_)))
        && cert.present
        && cert.error.is_none();
    Membership {
        ready,
        key,
        cert,
        collective,
    }
}

/// Why a certificate is not usable by this router.
#[derive(Debug, thiserror::Error)]
pub enum CertProblem {
    /// It certifies another key.
    #[error("the certificate is for member {member} ('{name}'), not for this router's key (member {ours})")]
    OtherKey {
        /// The member it certifies.
        member: MemberId,
        /// That member's name.
        name: String,
        /// This router's member id.
        ours: MemberId,
    },
    /// Another collective signed it.
    #[error("the certificate is from collective {}…, not from {}… (the collective key installed)", &to_hex(&theirs.0)[..16], &to_hex(&ours.0)[..16])]
    OtherCollective {
        /// The collective that signed it.
        theirs: PublicKey,
        /// The collective key installed (or pasted).
        ours: PublicKey,
    },
    /// Its signature, validity or revocation check fails.
    #[error("{0}")]
    Invalid(#[source] TrustError),
}

/// Why `install` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The pasted text is longer than any key or certificate.
    #[error("the pasted text is longer than {MAX_PASTE} bytes")]
    TooLong,
    /// This router has no usable member key.
    #[error("{0} (create this router's member key first, and ask for a certificate for it)")]
    NoKey(#[source] FileError),
    /// The pasted collective key cannot be read.
    #[error("{0}")]
    PastedCollective(#[source] FileError),
    /// No collective key pasted, and the installed one cannot be read.
    #[error("{0} (paste the collective's public key too)")]
    NoCollective(#[source] FileError),
    /// The pasted certificate cannot be read.
    #[error("{0}")]
    PastedCertificate(#[source] FileError),
    /// The pasted certificate is not this router's.
    #[error("the pasted certificate: {0}")]
    NotOurs(#[source] CertProblem),
    /// The pasted certificate names another WireGuard key.
    #[error("the pasted certificate names another WireGuard key than this router's")]
    OtherWireGuardKey,
    /// A file or its directory could not be written.
    #[error("{}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// A certificate checked against this router's key and the collective.
fn check(
    c: &Certificate,
    key: Option<&PublicKey>,
    root: Option<&PublicKey>,
    now: u64,
) -> Result<(), CertProblem> {
    if let Some(k) = key {
        if c.key != *k {
            return Err(CertProblem::OtherKey {
                member: c.member,
                name: c.name.clone(),
                ours: MemberId::of(k),
            });
        }
    }
    if let Some(r) = root {
        if c.collective != *r {
            return Err(CertProblem::OtherCollective {
                theirs: c.collective,
                ours: *r,
            });
        }
        c.verify(r, now).map_err(CertProblem::Invalid)?;
    }
    Ok(())
}

/// Creates the member key (with `.pub` and `.wgpub`) unless there is one.
/// Returns whether it was created.
pub fn create_key(paths: &Paths) -> Result<bool, FileError> {
    if present(&paths.key) {
        return Ok(false);
    }
    files::generate_secret_key(&paths.key).map(|_| true)
}

/// Checks a pasted certificate (and collective key, when given; else the
/// one installed) against this router's key at `now`, then writes them.
/// Nothing is written when anything is wrong.
pub fn install(
    paths: &Paths,
    cert_text: &str,
    collective_text: Option<&str>,
    now: u64,
) -> Result<Certificate, InstallError> {
    if cert_text.len() > MAX_PASTE || collective_text.is_some_and(|t| t.len() > MAX_PASTE) {
        return Err(InstallError::TooLong);
    }
    let key: SecretKey = files::read_secret_key(&paths.key).map_err(InstallError::NoKey)?;
    let root = match collective_text.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => files::parse_public_key(Path::new("the pasted collective key"), t)
            .map_err(InstallError::PastedCollective)?,
        None => files::read_public_key(&paths.collective).map_err(InstallError::NoCollective)?,
    };
    let cert = files::parse_certificate(Path::new("the pasted certificate"), cert_text)
        .map_err(InstallError::PastedCertificate)?;
    check(&cert, Some(&key.public()), Some(&root), now).map_err(InstallError::NotOurs)?;
    if let Some(wg) = cert.wg_key {
        let mine = crate::trust::wg::public(&crate::trust::wg::secret(&key));
        if wg != mine {
            return Err(InstallError::OtherWireGuardKey);
        }
    }
    let write = |path: &Path, text: &str| {
        let failed = |path: &Path| {
            let path = path.to_owned();
            move |source| InstallError::Write { path, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(failed(dir))?;
        }
        crate::directory::store::write_atomic(path, text.as_bytes(), 0o644).map_err(failed(path))
    };
    if collective_text.is_some_and(|t| !t.trim().is_empty()) {
        write(&paths.collective, &files::public_key_text(&root))?;
    }
    write(&paths.cert, &files::certificate_text(&cert))?;
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::Roles;

    const NOW: u64 = 1_790_000_000;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dcol-member-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn paths(d: &Path) -> Paths {
        Paths {
            key: d.join("etc/member.key"),
            cert: d.join("etc/member.cert"),
            collective: d.join("etc/collective.pub"),
        }
    }

    /// The administrator's side: a collective, and a certificate for the
    /// join request `request`.
    fn admit(d: &Path, request: &str, days: u32) -> (String, String) {
        let admin = d.join("admin");
        let _ = files::init_collective(&admin);
        let req = admin.join("request");
        std::fs::write(&req, request).unwrap();
        let cert = files::admit(
            &admin.join("collective.key"),
            &req,
            "bob",
            days,
            Roles::CLIENT,
            None,
            NOW,
        )
        .unwrap();
        (
            files::certificate_text(&cert),
            std::fs::read_to_string(admin.join("collective.pub")).unwrap(),
        )
    }

    #[test]
    fn join_from_nothing() {
        let d = dir("join");
        let p = paths(&d);
        let m = show(&p, NOW);
        assert!(!m.ready && !m.key.present && m.key.request.is_none());
        assert!(create_key(&p).unwrap());
        assert!(!create_key(&p).unwrap(), "an existing key is kept");
        let m = show(&p, NOW);
        let request = m.key.request.clone().unwrap();
        assert!(request.starts_with("dcol-public-v1 ") && request.contains("\ndcol-wg-v1 "));
        // The certificate the administrator issues carries the WireGuard key
        // from the request.
        let (cert, coll) = admit(&d, &request, 30);
        let c = files::parse_certificate(Path::new("x"), &cert).unwrap();
        assert!(c.wg_key.is_some());
        let e = install(&p, &cert, None, NOW).unwrap_err();
        assert!(matches!(e, InstallError::NoCollective(_)), "{e}");
        assert!(e
            .to_string()
            .contains("paste the collective's public key too"));
        assert!(!p.cert.exists(), "nothing written on error");
        let c = install(&p, &cert, Some(&coll), NOW).unwrap();
        assert_eq!(c.name, "bob");
        let m = show(&p, NOW);
        assert!(m.ready, "{m:?}");
        assert_eq!(m.cert.name.as_deref(), Some("bob"));
        assert_eq!(m.key.id, Some(c.member.to_string()));
        // Renewal: a new certificate replaces the old one; the installed
        // collective key is used.
        let (cert2, _) = admit(&d, &request, 60);
        let c2 = install(&p, &cert2, None, NOW).unwrap();
        assert!(c2.not_after > c.not_after);
        assert_eq!(show(&p, NOW).cert.not_after, Some(c2.not_after));
        // Later than its end: shown as expired.
        let m = show(&p, c2.not_after + 1);
        assert!(!m.ready && m.cert.error.as_deref().unwrap().contains("expired"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn paths_are_confined_to_the_directory() {
        use std::os::unix::fs::symlink;
        let d = dir("confine");
        let etc = d.join("etc");
        let inside = |key: &str, cert: &str, coll: &str| Paths {
            key: etc.join(key),
            cert: etc.join(cert),
            collective: etc.join(coll),
        };
        // Nothing exists yet, not even the directory: fine.
        let ok = inside("member.key", "member.cert", "sub/collective.pub");
        ok.confine(&etc).unwrap();
        std::fs::create_dir_all(etc.join("sub")).unwrap();
        ok.confine(&etc).unwrap();
        let outside = d.join("shadow");
        std::fs::write(&outside, "root:x:0:0\n").unwrap();
        let with = |f: &dyn Fn(&mut Paths)| {
            let mut p = ok.clone();
            f(&mut p);
            p.confine(&etc).unwrap_err()
        };
        let e = with(&|p| p.cert = outside.clone());
        assert!(
            matches!(e, Confinement::Outside { option: "cert", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("is outside"), "{e}");
        let e = with(&|p| p.collective = PathBuf::from("etc/collective.pub"));
        assert!(matches!(e, Confinement::NotPlain { .. }), "{e}");
        let e = with(&|p| p.key = etc.join("../shadow"));
        assert!(
            matches!(e, Confinement::NotPlain { option: "key", .. }),
            "{e}"
        );
        let e = with(&|p| p.cert = etc.clone());
        assert!(matches!(e, Confinement::Outside { .. }), "{e}");
        // A prefix is not a parent.
        let e = with(&|p| p.cert = d.join("etcetera/member.cert"));
        assert!(matches!(e, Confinement::Outside { .. }), "{e}");
        // Symbolic links: a file, a directory on the way, the key's .pub, a
        // link to nowhere.
        symlink(&outside, etc.join("member.cert")).unwrap();
        let e = ok.confine(&etc).unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "through a symbolic link, it is {}",
                outside.display()
            )),
            "{e}"
        );
        std::fs::remove_file(etc.join("member.cert")).unwrap();
        std::fs::remove_dir(etc.join("sub")).unwrap();
        symlink(&d, etc.join("sub")).unwrap();
        let e = ok.confine(&etc).unwrap_err();
        assert!(
            matches!(
                e,
                Confinement::Outside {
                    option: "collective",
                    ..
                }
            ),
            "{e}"
        );
        std::fs::remove_file(etc.join("sub")).unwrap();
        symlink(&outside, etc.join("member.key.pub")).unwrap();
        let e = ok.confine(&etc).unwrap_err();
        assert!(
            matches!(e, Confinement::Outside { option: "key", .. }),
            "{e}"
        );
        std::fs::remove_file(etc.join("member.key.pub")).unwrap();
        symlink(d.join("nowhere"), etc.join("member.cert")).unwrap();
        let e = ok.confine(&etc).unwrap_err();
        assert!(
            matches!(e, Confinement::Unresolvable { option: "cert", .. }),
            "{e}"
        );
        std::fs::remove_file(etc.join("member.cert")).unwrap();
        // A link inside the directory is fine; so is a directory that is
        // itself a link (its files are where it leads).
        std::fs::write(etc.join("real.cert"), "x").unwrap();
        symlink(etc.join("real.cert"), etc.join("member.cert")).unwrap();
        ok.confine(&etc).unwrap();
        let alias = d.join("alias");
        symlink(&etc, &alias).unwrap();
        Paths {
            key: alias.join("member.key"),
            cert: alias.join("member.cert"),
            collective: alias.join("collective.pub"),
        }
        .confine(&alias)
        .unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "root:x:0:0\n");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn wrong_pastes_are_refused_and_change_nothing() {
        let d = dir("wrong");
        let p = paths(&d);
        create_key(&p).unwrap();
        let request = show(&p, NOW).key.request.unwrap();
        let (cert, coll) = admit(&d, &request, 30);
        install(&p, &cert, Some(&coll), NOW).unwrap();
        let before = std::fs::read(&p.cert).unwrap();
        // Another member's certificate (another key).
        let other = dir("other");
        let op = paths(&other);
        create_key(&op).unwrap();
        let (theirs, _) = admit(&d, &show(&op, NOW).key.request.unwrap(), 30);
        let e = install(&p, &theirs, None, NOW).unwrap_err().to_string();
        assert!(e.contains("not for this router's key"), "{e}");
        // From another collective.
        let (foreign, foreign_coll) = admit(&other, &request, 30);
        let e = install(&p, &foreign, None, NOW).unwrap_err().to_string();
        assert!(e.contains("not from"), "{e}");
        // ... even with that collective's key pasted, against our key it is
        // fine: the user chose to switch collectives.
        install(&p, &foreign, Some(&foreign_coll), NOW).unwrap();
        install(&p, &cert, Some(&coll), NOW).unwrap();
        for (text, coll_text, want) in [
            (
                "",
                None,
                "the pasted certificate: expected 'dcol-cert-v1 <hex>'",
            ),
            ("dcol-cert-v1 zz", None, "bad hex at column 14"),
            ("dcol-cert-v1 00", None, "not a certificate"),
            (
                cert.as_str(),
                Some("dcol-public-v1 12"),
                "the pasted collective key: expected 64 hex digits",
            ),
            (&theirs[..theirs.len() - 3], None, "the pasted certificate"),
        ] {
            let e = install(&p, text, coll_text, NOW).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let e = install(&p, &"a".repeat(MAX_PASTE + 1), None, NOW).unwrap_err();
        assert!(matches!(e, InstallError::TooLong), "{e}");
        assert!(e.to_string().contains("longer than"), "{e}");
        assert_eq!(std::fs::read(&p.cert).unwrap(), before);
        // A damaged file on disk is reported, not fatal.
        std::fs::write(&p.collective, "garbage\n").unwrap();
        let m = show(&p, NOW);
        assert!(!m.ready);
        assert!(m
            .collective
            .error
            .as_deref()
            .unwrap()
            .contains("collective.pub"));
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&other).unwrap();
    }
}
