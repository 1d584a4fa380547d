//! The control socket: `dcol status` asks the running daemon over a Unix stream
//! socket and gets the JSON [`Status`] back. One request per connection: the
//! client writes `status\n`, the daemon writes the JSON document and closes.
//!
//! Clients are served by threads of their own, never on the daemon's poll
//! loop: an acceptor thread hands each client to a handler thread (at most
//! [`Limits::max_clients`] at once; one more is answered `{"error": "busy
//! ..."}` and closed), which reads the request by a deadline, asks the loop
//! for the status (a channel and [`ControlServer::fd`]: the loop only builds
//! the status and hands it over, [`ControlServer::waiting`] and
//! [`ControlServer::answer`]) and writes the answer by a deadline. A client
//! that connects and never sends, or never reads the answer, holds one
//! handler until its deadline, and never the loop.
//!
//! This module owns the JSON contract with LuCI (see [`Status`]); it does not
//! know how the daemon fills it in.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod status;

pub use status::{
    ClientStatus, ConnectionStatus, ConversionStatus, ConverterStatus, ConverterUse,
    DirectoryStatus, GrantStatus, LanProxyStatus, LoopStatus, MemberStatus, PeerStatus,
    ScoreStatus, Status, SubflowStatus, TraversalStatus, VpnPeerStatus, WaypointStatus,
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
    /// The daemon answered with an error (e.g. busy: too many clients).
    #[error("control socket {path}: {what}")]
    Refused {
        /// The socket path.
        path: PathBuf,
        /// The daemon's message.
        what: String,
    },
}

/// How long and how many clients the control socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Clients served at once; one more is told it is busy.
    pub max_clients: usize,
    /// Time a client has to send its request.
    pub request: Duration,
    /// Time the daemon's loop has to hand over the status.
    pub status: Duration,
    /// Time a client has to read the answer.
    pub answer: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_clients: 8,
            request: Duration::from_secs(2),
            status: Duration::from_secs(5),
            answer: Duration::from_secs(5),
        }
    }
}

/// A handler's request for the status: where the JSON answer goes.
type Request = SyncSender<Arc<Vec<u8>>>;

/// The daemon's end. The socket file is removed (and the acceptor thread
/// stopped) on drop.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    /// Readable when handlers wait for a status.
    wake: UnixStream,
    requests: Receiver<Request>,
    /// Requests taken by [`ControlServer::waiting`], not answered yet.
    pending: Vec<Request>,
    /// Written to (or dropped) to stop the acceptor.
    stop: UnixStream,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl ControlServer {
    /// Binds `path`, replacing a stale socket left by a crashed daemon (but not a
    /// live one: if something answers there, binding fails; nor anything that
    /// is not a socket: the path comes from a UCI file the web page may edit,
    /// and must not make the daemon delete a file).
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        Self::bind_with(path, Limits::default())
    }

    /// [`ControlServer::bind`] with other limits (tests).
    pub fn bind_with(path: &Path, limits: Limits) -> Result<Self, ControlError> {
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
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
            Ok(_) => {
                return Err(err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a socket; not replacing it",
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let (wake, wake_tx) = UnixStream::pair().map_err(err)?;
        let (stop, stop_rx) = UnixStream::pair().map_err(err)?;
        for s in [&wake, &wake_tx] {
            s.set_nonblocking(true).map_err(err)?;
        }
        let (tx, requests) = mpsc::channel();
        let acceptor = Acceptor {
            listener,
            stop: stop_rx,
            tx,
            wake: wake_tx,
            limits,
            clients: Arc::new(AtomicUsize::new(0)),
            busy_logged: None,
        };
        let acceptor = thread::Builder::new()
            .name("dcol-control".into())
            .spawn(move || acceptor.run())
            .map_err(err)?;
        Ok(ControlServer {
            path: path.to_owned(),
            wake,
            requests,
            pending: Vec::new(),
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// Readable when clients wait for a status (for the daemon's poll).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Whether clients wait for a status; never blocks.
    pub fn waiting(&mut self) -> bool {
        let mut b = [0u8; 64];
        while matches!((&self.wake).read(&mut b), Ok(n) if n > 0) {}
        self.pending.extend(self.requests.try_iter());
        !self.pending.is_empty()
    }

    /// Hands `status` to every client waiting; never blocks (the handler
    /// threads write it).
    pub fn answer(&mut self, status: &Status) {
        if self.pending.is_empty() {
            return;
        }
        let mut json = serde_json::to_vec(status).expect("a Status serializes");
        json.push(b'\n');
        let json = Arc::new(json);
        for r in self.pending.drain(..) {
            // A handler that gave up waiting has dropped its receiver.
            let _ = r.try_send(Arc::clone(&json));
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = (&self.stop).write(&[1]);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The acceptor thread: takes clients in, each to a handler thread.
struct Acceptor {
    listener: UnixListener,
    stop: UnixStream,
    tx: Sender<Request>,
    wake: UnixStream,
    limits: Limits,
    /// Handlers running.
    clients: Arc<AtomicUsize>,
    /// When a refusal was last logged.
    busy_logged: Option<Instant>,
}

impl Acceptor {
    fn run(mut self) {
        loop {
            let fds = [self.listener.as_fd(), self.stop.as_fd()];
            match crate::sys::os::poll_readable(&fds, None) {
                Ok(r) if r[1] => return,
                Ok(_) => {}
                Err(e) => {
                    log::error!("control socket: poll: {e}; not serving clients any more");
                    return;
                }
            }
            loop {
                match self.listener.accept() {
                    Ok((s, _)) => self.take(s),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log::warn!("control socket accept: {e}");
                        // E.g. out of file descriptors: do not spin.
                        thread::sleep(Duration::from_millis(100));
                        break;
                    }
                }
            }
        }
    }

    /// Serves `s` on a handler thread, or tells it the daemon is busy.
    fn take(&mut self, s: UnixStream) {
        let n = self.clients.load(Ordering::SeqCst);
        if n >= self.limits.max_clients {
            // A fresh socket's buffer takes this without blocking.
            let _ = s.set_nonblocking(true);
            let _ = writeln!(
                &s,
                "{}",
                serde_json::json!({ "error": format!("busy: {n} control clients connected; try again") })
            );
            if self
                .busy_logged
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
            {
                log::warn!(
                    "control socket: {n} clients connected (at most {}); refusing more",
                    self.limits.max_clients
                );
                self.busy_logged = Some(Instant::now());
            }
            return;
        }
        let Ok(wake) = self.wake.try_clone() else {
            return;
        };
        let client = Client {
            s,
            tx: self.tx.clone(),
            wake,
            limits: self.limits,
            count: Count(Arc::clone(&self.clients)),
        };
        self.clients.fetch_add(1, Ordering::SeqCst);
        let spawned = thread::Builder::new()
            .name("dcol-control-client".into())
            .stack_size(128 * 1024)
            .spawn(move || client.serve());
        if let Err(e) = spawned {
            log::warn!("control socket: cannot start a handler thread: {e}");
        }
    }
}

/// Counts a handler until it ends.
struct Count(Arc<AtomicUsize>);

impl Drop for Count {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One client, on its handler thread.
struct Client {
    s: UnixStream,
    tx: Sender<Request>,
    wake: UnixStream,
    limits: Limits,
    count: Count,
}

impl Client {
    fn serve(self) {
        if let Err(e) = self.exchange() {
            log::debug!("control client: {e}");
        }
        drop(self.count);
    }

    fn exchange(&self) -> io::Result<()> {
        let line = read_line(&self.s, Instant::now() + self.limits.request)?;
        let answer = match line.trim() {
            "status" => {
                let (tx, rx) = mpsc::sync_channel(1);
                self.tx
                    .send(tx)
                    .map_err(|_| io::Error::other("the daemon is stopping"))?;
                let _ = (&self.wake).write(&[1]);
                rx.recv_timeout(self.limits.status).map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "the daemon did not answer")
                })?
            }
            other => {
                let msg = serde_json::json!({ "error": format!("unknown request '{}'", other.escape_debug()) });
                Arc::new(format!("{msg}\n").into_bytes())
            }
        };
        write_all_by(&self.s, &answer, Instant::now() + self.limits.answer)
    }
}

/// The time left until `deadline`, or a timeout error.
fn left(deadline: Instant, what: &str) -> io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, format!("{what} took too long")))
}

/// Reads one line (at most 64 bytes) by `deadline`.
fn read_line(mut s: &UnixStream, deadline: Instant) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 64];
    while !line.contains(&b'\n') && line.len() < 64 {
        s.set_read_timeout(Some(left(deadline, "the request")?))?;
        match s.read(&mut b[..64 - line.len()]) {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let end = line.iter().position(|&c| c == b'\n').unwrap_or(line.len());
    Ok(String::from_utf8_lossy(&line[..end]).into_owned())
}

/// Writes all of `buf` by `deadline` (a client that does not read is cut
/// off there).
fn write_all_by(mut s: &UnixStream, mut buf: &[u8], deadline: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        s.set_write_timeout(Some(left(deadline, "reading the answer")?))?;
        match s.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
    // A busy daemon answers and closes before it reads: read its answer
    // even when the request could not be written.
    let wrote = s.write_all(b"status\n");
    let mut text = String::new();
    let read = s.take(16 << 20).read_to_string(&mut text);
    if text.is_empty() {
        wrote.map_err(err)?;
        read.map_err(err)?;
    }
    let parsed = serde_json::from_str(&text).map_err(|e| {
        let error = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned));
        match error {
            Some(what) => ControlError::Refused {
                path: path.to_owned(),
                what,
            },
            None => ControlError::BadReply {
                path: path.to_owned(),
                what: e.to_string(),
            },
        }
    })?;
    Ok((text, parsed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn status(version: String) -> Status {
        Status {
            version,
            uptime_s: 1,
            member: MemberStatus {
                name: "alice".into(),
                id: "0011223344556677".into(),
                collective: "00".repeat(32),
                cert_not_after: 1,
                roles: "client".into(),
            },
            client: None,
            waypoint: None,
            directory: None,
            traversal: None,
            turns: None,
        }
    }

    fn socket(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dcol-control-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("dcol.sock")
    }

    /// Plays the daemon's loop on a thread: answers waiting clients with
    /// `st`; records the longest time one round (waiting + answer) took.
    struct Loop {
        stop: Arc<AtomicBool>,
        thread: thread::JoinHandle<(ControlServer, Duration)>,
    }

    impl Loop {
        fn start(mut srv: ControlServer, st: Status) -> Loop {
            let stop = Arc::new(AtomicBool::new(false));
            let s = Arc::clone(&stop);
            let thread = thread::spawn(move || {
                let mut longest = Duration::ZERO;
                while !s.load(Ordering::SeqCst) {
                    let r =
                        crate::sys::os::poll_readable(&[srv.fd()], Some(Duration::from_millis(20)))
                            .unwrap();
                    let t0 = Instant::now();
                    if r[0] && srv.waiting() {
                        srv.answer(&st);
                    }
                    longest = longest.max(t0.elapsed());
                }
                (srv, longest)
            });
            Loop { stop, thread }
        }

        fn stop(self) -> (ControlServer, Duration) {
            self.stop.store(true, Ordering::SeqCst);
            self.thread.join().unwrap()
        }
    }

    #[test]
    fn stuck_clients_do_not_hold_the_loop() {
        let path = socket("stuck");
        let limits = Limits {
            request: Duration::from_secs(20),
            answer: Duration::from_secs(20),
            ..Limits::default()
        };
        let srv = ControlServer::bind_with(&path, limits).unwrap();
        // An answer larger than a socket's buffer: a client that does not
        // read it leaves its writer waiting.
        let lp = Loop::start(srv, status("x".repeat(1 << 20)));
        // Three clients that connect and never send; two that ask and
        // never read.
        let mut stuck: Vec<UnixStream> = (0..3)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        for _ in 0..2 {
            let mut c = UnixStream::connect(&path).unwrap();
            c.write_all(b"status\n").unwrap();
            stuck.push(c);
        }
        thread::sleep(Duration::from_millis(200));
        // Another client is answered at once, in full.
        let t0 = Instant::now();
        let (text, st) = query(&path).unwrap();
        // Held by a stuck client, it would wait its 20 s; a 1 MB answer
        // under qemu-user on a loaded machine took 3 s.
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "answered after {:?}",
            t0.elapsed()
        );
        assert_eq!(st.version.len(), 1 << 20);
        assert!(text.ends_with("}\n"));
        let (srv, longest) = lp.stop();
        assert!(
            longest < Duration::from_secs(5),
            "the loop was held {longest:?}"
        );
        // Stopping does not wait for the stuck clients; the file goes.
        let t0 = Instant::now();
        drop(srv);
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert!(!path.exists());
        drop(stuck);
    }

    #[test]
    fn a_second_daemon_is_refused_and_a_new_path_replaces_the_old() {
        let (a, b) = (socket("rebind-a"), socket("rebind-b"));
        let lp = Loop::start(ControlServer::bind(&a).unwrap(), status("a".into()));
        let e = ControlServer::bind(&a).unwrap_err().to_string();
        assert!(e.contains("another dcol is running"), "{e}");
        // A file that is not a socket is never replaced; a stale socket is.
        let file = a.with_file_name("shadow");
        std::fs::write(&file, "root:x:0:0\n").unwrap();
        let e = ControlServer::bind(&file).unwrap_err().to_string();
        assert!(e.contains("is not a socket; not replacing it"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "root:x:0:0\n");
        let stale = a.with_file_name("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        drop(ControlServer::bind(&stale).unwrap());
        // A reload that moves the socket: the new one first, then the old
        // one goes (its acceptor stops, its file is removed).
        let (old, _) = lp.stop();
        let lp = Loop::start(ControlServer::bind(&b).unwrap(), status("b".into()));
        drop(old);
        assert!(!a.exists());
        assert!(UnixStream::connect(&a).is_err());
        assert_eq!(query(&b).unwrap().1.version, "b");
        drop(lp.stop());
        assert!(!b.exists());
    }

    #[test]
    fn clients_over_the_cap_are_told_busy_until_slots_free() {
        let path = socket("cap");
        let limits = Limits {
            max_clients: 3,
            request: Duration::from_millis(1500),
            ..Limits::default()
        };
        let lp = Loop::start(
            ControlServer::bind_with(&path, limits).unwrap(),
            status("v".into()),
        );
        let mut silent: Vec<UnixStream> = (0..3)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        // Asked until the acceptor has taken the three in.
        let t0 = Instant::now();
        let refused = loop {
            match query(&path) {
                Err(ControlError::Refused { what, .. }) => break what,
                r if t0.elapsed() > Duration::from_secs(1) => panic!("not refused: {r:?}"),
                _ => thread::sleep(Duration::from_millis(20)),
            }
        };
        assert!(
            refused.contains("busy: 3 control clients connected"),
            "{refused}"
        );
        // The silent ones are cut off at their deadline, and the slots come
        // back.
        let mut b = [0u8; 16];
        silent[0]
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        assert_eq!(silent[0].read(&mut b).unwrap(), 0);
        thread::sleep(Duration::from_millis(100));
        assert_eq!(query(&path).unwrap().1.version, "v");
        // An unknown request gets an error, not a status.
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(b"frobnicate\n").unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        assert!(text.contains("unknown request 'frobnicate'"), "{text}");
        silent.clear();
        drop(lp.stop());
    }
}
