//! The control socket: `dcol status` asks the running daemon over a Unix stream
//! socket and gets the JSON [`Status`] back. One request per connection: the
//! client writes `status\n`, the daemon writes the JSON document and closes.
//!
//! This module owns the JSON contract with LuCI (see [`Status`]); it does not
//! know how the daemon fills it in.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod status;

pub use status::{
    ClientStatus, ConnectionStatus, DirectoryStatus, GrantStatus, LanProxyStatus, MemberStatus,
    PeerStatus, ScoreStatus, Status, SubflowStatus, TraversalStatus, VpnPeerStatus, WaypointStatus,
};

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Could not bind, connect, read or write.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The daemon answered with something that is not a status document.
    #[error("control socket {path}: bad reply: {what}")]
    BadReply {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
}

/// The daemon's end: a non-blocking listener, removed from the file system on drop.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path`, replacing a stale socket left by a crashed daemon (but not a
    /// live one: if something answers there, binding fails).
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let err = |source| ControlError::Io {
            path: path.to_owned(),
            source,
        };
        if UnixStream::connect(path).is_ok() {
            return Err(err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another dcol is running",
            )));
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(ControlServer {
            listener,
            path: path.to_owned(),
        })
    }

    /// The listener, for polling.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Accepts pending clients and answers each with `status()`. Never blocks for
    /// more than a short timeout per client; errors are per client and logged.
    pub fn serve(&self, mut status: impl FnMut() -> Status) {
        loop {
            let (stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("control socket accept: {e}");
                    return;
                }
            };
            if let Err(e) = answer(stream, &mut status) {
                log::debug!("control client: {e}");
            }
        }
    }
}

fn answer(stream: UnixStream, status: &mut impl FnMut() -> Status) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new((&stream).take(64)).read_line(&mut line)?;
    let mut w = &stream;
    match line.trim() {
        "status" => {
            let json = serde_json::to_vec(&status()).map_err(io::Error::other)?;
            w.write_all(&json)?;
            w.write_all(b"\n")
        }
        other => {
            let msg = serde_json::json!({ "error": format!("unknown request '{}'", other.escape_debug()) });
            writeln!(w, "{msg}")
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Asks the daemon at `path` for its status; returns the raw JSON text and the
/// parsed document.
pub fn query(path: &Path) -> Result<(String, Status), ControlError> {
    let err = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(err)?;
    s.write_all(b"status\n").map_err(err)?;
    let mut text = String::new();
    s.take(16 << 20).read_to_string(&mut text).map_err(err)?;
    let parsed = serde_json::from_str(&text).map_err(|e| ControlError::BadReply {
        path: path.to_owned(),
        what: e.to_string(),
    })?;
    Ok((text, parsed))
}
