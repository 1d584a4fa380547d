//! Key and certificate files: one line of text each, so they can be pasted,
//! mailed and diffed.
//!
//! ```text
//! dcol-secret-v1 <64 hex digits: the Ed25519 seed>       (mode 0600)
//! dcol-public-v1 <64 hex digits>
//! dcol-cert-v1 <hex of the postcard-encoded certificate>
//! dcol-revoked-v1 <hex of the postcard-encoded, root-signed revocation list>
//! ```
//! A *join request* is what a new member sends the collective's
//! administrator: the public key line, and on a second line the WireGuard
//! public key (`dcol-wg-v1 <base64>`), so that one pasted text gives
//! `dcol collective admit --member-pub` both.
//! Secret keys are created with mode 0600 from the start (never world-readable,
//! not even briefly) and are never overwritten.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{
    from_hex, to_hex, Certificate, MemberId, PublicKey, RevocationList, RevokedEntry, Roles,
    SecretKey, TrustError, MAX_REVOKED,
};

const SECRET_TAG: &str = "dcol-secret-v1";
const PUBLIC_TAG: &str = "dcol-public-v1";
const CERT_TAG: &str = "dcol-cert-v1";
const REVOKED_TAG: &str = "dcol-revoked-v1";
const WG_TAG: &str = "dcol-wg-v1";
/// Larger files are not ours.
const MAX_FILE: u64 = 16 * 1024;

/// Errors of key and certificate files; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file's content is not what it should be.
    #[error("{path}: {what}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The certificate could not be issued.
    #[error("{path}: {source}")]
    Trust {
        /// The file involved.
        path: PathBuf,
        /// Why.
        #[source]
        source: TrustError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_owned(),
        source,
    }
}

fn format_err(path: &Path, what: impl Into<String>) -> FileError {
    FileError::Format {
        path: path.to_owned(),
        what: what.into(),
    }
}

fn read_small(path: &Path) -> Result<String, FileError> {
    read_limited(path, MAX_FILE)
}

fn read_limited(path: &Path, max: u64) -> Result<String, FileError> {
    let f = fs::File::open(path).map_err(io_err(path))?;
    let mut s = String::new();
    f.take(max + 1)
        .read_to_string(&mut s)
        .map_err(io_err(path))?;
    if s.len() as u64 > max {
        return Err(format_err(path, format!("larger than {max} bytes")));
    }
    Ok(s)
}

/// Parses `<tag> <hex>` and returns the bytes.
fn parse_line(path: &Path, text: &str, tag: &str) -> Result<Vec<u8>, FileError> {
    let line = text.trim();
    let Some(hex) = line.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) else {
        return Err(format_err(path, format!("expected '{tag} <hex>'")));
    };
    from_hex(hex.trim())
        .map_err(|col| format_err(path, format!("bad hex at column {}", col + tag.len() + 1)))
}

fn write_new(path: &Path, mode: u32, text: &str) -> Result<(), FileError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(text.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn pub_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

fn random_seed() -> io::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(seed)
}

/// The WireGuard public key file of the member key file `key` (`KEY.wgpub`).
pub fn wgpub_path(key: &Path) -> std::path::PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".wgpub");
    s.into()
}

/// Reads a WireGuard public key file (base64, as `wg pubkey` prints).
pub fn read_wg_public(path: &Path) -> Result<super::wg::WgKey, FileError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    super::wg::from_base64(&text).map_err(|e| FileError::Format {
        path: path.to_owned(),
        what: e.to_string(),
    })
}

/// Writes a new secret key to `out` (0600), its public key to `out.pub` and
/// its WireGuard public key to `out.wgpub`.
/// Refuses to overwrite either.
pub fn generate_secret_key(out: &Path) -> Result<SecretKey, FileError> {
    let key = SecretKey::from_seed(random_seed().map_err(io_err(Path::new("/dev/urandom")))?);
    let public = pub_path(out);
    if public.exists() {
        return Err(FileError::Io {
            path: public,
            source: io::Error::new(io::ErrorKind::AlreadyExists, "exists; not overwriting"),
        });
    }
    write_new(
        out,
        0o600,
        &format!("{SECRET_TAG} {}\n", to_hex(&key.seed())),
    )?;
    write_new(
        &wgpub_path(out),
        0o644,
        &format!(
            "{}\n",
            super::wg::to_base64(&super::wg::public(&super::wg::secret(&key)))
        ),
    )?;
    write_new(
        &public,
        0o644,
        &format!("{PUBLIC_TAG} {}\n", to_hex(&key.public().0)),
    )?;
    Ok(key)
}

/// Writes `dir/collective.key` (0600) and `dir/collective.pub`.
pub fn init_collective(dir: &Path) -> Result<SecretKey, FileError> {
    let key = SecretKey::from_seed(random_seed().map_err(io_err(Path::new("/dev/urandom")))?);
    write_new(
        &dir.join("collective.key"),
        0o600,
        &format!("{SECRET_TAG} {}\n", to_hex(&key.seed())),
    )?;
    write_new(
        &dir.join("collective.pub"),
        0o644,
        &format!("{PUBLIC_TAG} {}\n", to_hex(&key.public().0)),
    )?;
    Ok(key)
}

/// Reads a secret key; warns when group or others may read it.
pub fn read_secret_key(path: &Path) -> Result<SecretKey, FileError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        log::warn!(
            "{}: secret key readable by group or others (chmod 600 it)",
            path.display()
        );
    }
    let b = parse_line(path, &read_small(path)?, SECRET_TAG)?;
    let seed: [u8; 32] = b
        .try_into()
        .map_err(|_| format_err(path, "expected 64 hex digits"))?;
    Ok(SecretKey::from_seed(seed))
}

/// Reads a public key.
pub fn read_public_key(path: &Path) -> Result<PublicKey, FileError> {
    parse_public_key(path, &read_small(path)?)
}

/// Parses a public key line; `what` names the text in errors.
pub fn parse_public_key(what: &Path, text: &str) -> Result<PublicKey, FileError> {
    let b = parse_line(what, text, PUBLIC_TAG)?;
    let k: [u8; 32] = b
        .try_into()
        .map_err(|_| format_err(what, "expected 64 hex digits"))?;
    Ok(PublicKey(k))
}

/// The public key line of `key`.
pub fn public_key_text(key: &PublicKey) -> String {
    format!("{PUBLIC_TAG} {}\n", to_hex(&key.0))
}

/// The join request of the member key `key` (see the module's text).
pub fn join_request(key: &SecretKey) -> String {
    format!(
        "{}{WG_TAG} {}\n",
        public_key_text(&key.public()),
        super::wg::to_base64(&super::wg::public(&super::wg::secret(key)))
    )
}

/// Parses a join request, or a plain public key file (no WireGuard key).
pub fn parse_join_request(
    what: &Path,
    text: &str,
) -> Result<(PublicKey, Option<super::wg::WgKey>), FileError> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let key = parse_public_key(what, lines.next().unwrap_or(""))?;
    let wg = match lines.next() {
        None => None,
        Some(l) => {
            let b64 = l
                .strip_prefix(WG_TAG)
                .and_then(|r| r.strip_prefix(' '))
                .ok_or_else(|| format_err(what, format!("line 2: expected '{WG_TAG} <base64>'")))?;
            Some(
                super::wg::from_base64(b64)
                    .map_err(|e| format_err(what, format!("line 2: {e}")))?,
            )
        }
    };
    if lines.next().is_some() {
        return Err(format_err(what, "more than two lines"));
    }
    Ok((key, wg))
}

/// Reads a certificate (format only; the caller verifies it).
pub fn read_certificate(path: &Path) -> Result<Certificate, FileError> {
    parse_certificate(path, &read_small(path)?)
}

/// Parses a certificate line (format only); `what` names the text in errors.
pub fn parse_certificate(what: &Path, text: &str) -> Result<Certificate, FileError> {
    let b = parse_line(what, text, CERT_TAG)?;
    let (cert, rest): (Certificate, &[u8]) = postcard::take_from_bytes(&b)
        .map_err(|e| format_err(what, format!("not a certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(format_err(
            what,
            format!("{} bytes after the certificate", rest.len()),
        ));
    }
    Ok(cert)
}

/// The text of a certificate file.
pub fn certificate_text(cert: &Certificate) -> String {
    let bytes = postcard::to_allocvec(cert).expect("serializing to a Vec cannot fail");
    format!("{CERT_TAG} {}\n", to_hex(&bytes))
}

/// Writes a certificate (0644; refuses to overwrite).
pub fn write_certificate(path: &Path, cert: &Certificate) -> Result<(), FileError> {
    write_new(path, 0o644, &certificate_text(cert))
}

/// Reads a revocation list and checks it was signed by `root`.
pub fn read_revocations(path: &Path, root: &PublicKey) -> Result<RevocationList, FileError> {
    let text = read_limited(path, MAX_REVOCATION_FILE)?;
    parse_revocations(path, &text, root)
}

/// Largest revocation list file read.
pub const MAX_REVOCATION_FILE: u64 = 256 * 1024;

/// Parses the text of a revocation list file (`origin` names it in errors)
/// and checks it was signed by `root`.
pub fn parse_revocations(
    origin: &Path,
    text: &str,
    root: &PublicKey,
) -> Result<RevocationList, FileError> {
    let path = origin;
    let b = parse_line(path, text, REVOKED_TAG)?;
    let (list, rest): (RevocationList, &[u8]) = postcard::take_from_bytes(&b)
        .map_err(|e| format_err(path, format!("not a revocation list: {e}")))?;
    if !rest.is_empty() {
        return Err(format_err(
            path,
            format!("{} bytes after the revocation list", rest.len()),
        ));
    }
    if list.entries.len() > MAX_REVOKED {
        return Err(format_err(
            path,
            format!("{} entries (at most {MAX_REVOKED})", list.entries.len()),
        ));
    }
    list.verify(root).map_err(|source| FileError::Trust {
        path: path.to_owned(),
        source,
    })?;
    Ok(list)
}

/// Adds `member` to the revocation list in `path` (creating it), signed with
/// the collective key in `collective_key`: serial + 1, written to a
/// temporary file and renamed over the old one. Returns the new list.
pub fn revoke(
    collective_key: &Path,
    path: &Path,
    member: MemberId,
    reason: &str,
    now: u64,
) -> Result<RevocationList, FileError> {
    let root = read_secret_key(collective_key)?;
    if reason.len() > 200 || reason.chars().any(char::is_control) {
        return Err(format_err(
            path,
            "the reason must be at most 200 bytes without control characters",
        ));
    }
    let (serial, mut entries) = match read_revocations(path, &root.public()) {
        Ok(l) => (l.serial, l.entries),
        Err(FileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            (0, Vec::new())
        }
        Err(e) => return Err(e),
    };
    if !entries.iter().any(|e| e.member == member) {
        if entries.len() >= MAX_REVOKED {
            return Err(format_err(path, format!("already {MAX_REVOKED} entries")));
        }
        entries.push(RevokedEntry {
            member,
            at: now,
            reason: reason.to_owned(),
        });
    }
    let list = RevocationList::issue(&root, serial.saturating_add(1), now, entries);
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, revocations_text(&list))
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(io_err(path))?;
    Ok(list)
}

/// The file form of a revocation list (what [`parse_revocations`] reads).
pub fn revocations_text(list: &RevocationList) -> String {
    let bytes = postcard::to_allocvec(list).expect("serializing to a Vec cannot fail");
    format!("{REVOKED_TAG} {}\n", to_hex(&bytes))
}

/// Issues a certificate for the member key in `member_pub`, valid `days` from
/// `now` (Unix seconds), signed with the collective key in `collective_key`.
pub fn admit(
    collective_key: &Path,
    member_pub: &Path,
    name: &str,
    days: u32,
    roles: Roles,
    wg_pub: Option<&Path>,
    now: u64,
) -> Result<Certificate, FileError> {
    let root = read_secret_key(collective_key)?;
    let (key, requested_wg) = parse_join_request(member_pub, &read_small(member_pub)?)?;
    let wg_key = match wg_pub {
        Some(p) => Some(read_wg_public(p)?),
        None => requested_wg,
    };
    let not_after = now.saturating_add(u64::from(days) * 86_400);
    Certificate::issue(
        &root,
        name,
        key,
        wg_key,
        now.saturating_sub(300),
        not_after,
        roles,
    )
    .map_err(|source| FileError::Trust {
        path: member_pub.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dcol-files-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn revocation_lists_grow_verify_and_refuse_tampering() {
        let d = dir("rev");
        let root = init_collective(&d).unwrap();
        let key = d.join("collective.key");
        let list = d.join("revoked");
        let (a, b) = (MemberId([1; 8]), MemberId([2; 8]));
        let l = revoke(&key, &list, a, "lost router", 1000).unwrap();
        assert_eq!((l.serial, l.entries.len()), (1, 1));
        let l = revoke(&key, &list, b, "", 2000).unwrap();
        assert_eq!((l.serial, l.entries.len()), (2, 2));
        // Revoking twice keeps one entry (and still bumps the serial).
        let l = revoke(&key, &list, a, "again", 3000).unwrap();
        assert_eq!((l.serial, l.entries.len()), (3, 2));
        let read = read_revocations(&list, &root.public()).unwrap();
        assert_eq!(read, l);
        assert!(read.revocations().is_revoked(&a) && read.revocations().is_revoked(&b));
        assert_eq!(read.entries[0].reason, "lost router");
        // Another collective's key, a flipped byte, a truncated file.
        let other = SecretKey::from_seed([9; 32]).public();
        let e = read_revocations(&list, &other).unwrap_err().to_string();
        assert!(e.contains("another collective"), "{e}");
        let text = fs::read_to_string(&list).unwrap();
        let mut bytes = text.into_bytes();
        let i = bytes.len() - 10;
        bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
        fs::write(&list, &bytes).unwrap();
        let e = read_revocations(&list, &root.public())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad signature"), "{e}");
        fs::write(&list, &bytes[..bytes.len() / 2]).unwrap();
        assert!(read_revocations(&list, &root.public()).is_err());
        // A bad list is not overwritten by revoke: the owner must look.
        assert!(revoke(&key, &list, a, "", 4000).is_err());
        let e = revoke(&key, &d.join("r2"), a, "bad\nreason", 1).unwrap_err();
        assert!(e.to_string().contains("reason"), "{e}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn keys_and_certificates_round_trip_with_modes() {
        let d = dir("rt");
        let root = init_collective(&d).unwrap();
        assert_eq!(
            fs::metadata(d.join("collective.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(
            read_public_key(&d.join("collective.pub")).unwrap(),
            root.public()
        );
        let k = generate_secret_key(&d.join("m.key")).unwrap();
        assert_eq!(
            fs::metadata(d.join("m.key")).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            read_secret_key(&d.join("m.key")).unwrap().public(),
            k.public()
        );
        assert!(
            generate_secret_key(&d.join("m.key")).is_err(),
            "overwrote a key"
        );
        let c = admit(
            &d.join("collective.key"),
            &d.join("m.key.pub"),
            "bob",
            30,
            Roles::CLIENT,
            Some(&d.join("m.key.wgpub")),
            1_800_000_000,
        )
        .unwrap();
        c.verify(&root.public(), 1_800_000_000).unwrap();
        assert_eq!(
            c.wg_key,
            Some(crate::trust::wg::public(&crate::trust::wg::secret(&k)))
        );
        write_certificate(&d.join("m.cert"), &c).unwrap();
        assert_eq!(read_certificate(&d.join("m.cert")).unwrap(), c);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn bad_files_name_file_and_place() {
        let d = dir("bad");
        let p = d.join("x");
        fs::write(&p, "dcol-public-v1 12zz\n").unwrap();
        let e = read_public_key(&p).unwrap_err().to_string();
        assert!(e.contains("/x") && e.contains("column 18"), "{e}");
        fs::write(&p, "hello").unwrap();
        assert!(read_certificate(&p)
            .unwrap_err()
            .to_string()
            .contains("expected 'dcol-cert-v1 <hex>'"));
        fs::write(&p, "dcol-cert-v1 0102\n").unwrap();
        assert!(read_certificate(&p)
            .unwrap_err()
            .to_string()
            .contains("not a certificate"));
        fs::write(&p, "dcol-public-v1 0102\n").unwrap();
        assert!(read_public_key(&p)
            .unwrap_err()
            .to_string()
            .contains("64 hex"));
        assert!(read_public_key(&d.join("missing")).is_err());
        let _ = fs::remove_dir_all(&d);
    }
}
