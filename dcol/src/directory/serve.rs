//! `dcol directory serve`: the directory's HTTP server on std's
//! `TcpListener`, one thread per connection under caps (in all and per
//! source), each with deadlines: a short one for the request head (a client
//! that trickles it in, "slowloris", is cut off after
//! [`ServeOptions::head_timeout`]), one for the whole request and one for
//! the answer, so a slow client holds only its own thread. A source is an
//! IPv4 address or an IPv6 /64 ([`Source`]): the connection cap and the
//! request rate count per source, so one host cannot take every slot by
//! spreading over the addresses of its /64. No `sys` code: it runs on any
//! Linux box or router.
//!
//! ```text
//! GET  /snapshot      the current signed snapshot (ETag = serial; If-None-Match -> 304)
//! POST /records       a member's signed record (publish or withdraw), at most 4 KiB
//! POST /revocations   the root-signed revocation list, newer than the one in force
//!                     (`dcol collective revoke --directory`), at most 256 KiB
//! POST /renew         a renewal request (with --renew), at most 4 KiB
//! GET  /              one line of text: members, serial
//! ```
//! The method and path are checked and the body limit chosen for the route
//! before a byte of the body is read: a `Content-Length` over it is refused
//! at once (a `GET` takes no body). Refusals are 4xx with a one-line text
//! body saying why, and a log line: 400 malformed, 403
//! signature/certificate/revocation/role, 404/405 wrong path or method, 408
//! too slow, 409 replayed or stale record, 413 body too large, 429 rate
//! limit, 503 connection cap. A refused upload changes nothing in the store.
//!
//! A builder thread issues a new snapshot at most once per
//! `snapshot_interval` when something changed, when a listed member's record
//! or certificate expires, and at least every `reissue` (so members can
//! refuse snapshots that are days old), and saves it as `STORE/snapshot`.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use super::registry::Source;
use super::registry::{Limits, Refusal, Registry};
use super::store::{Store, StoreError};
use super::{build_snapshot, MAX_RECORD};
use crate::http::{self, ServerError, WireError};
use crate::trust::{files, SecretKey};

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Listening address.
    pub listen: SocketAddr,
    /// The store directory.
    pub store: PathBuf,
    /// The collective's root key (signs snapshots).
    pub root: SecretKey,
    /// Record lifetime, rate limits.
    pub limits: Limits,
    /// At most one new snapshot per interval.
    pub snapshot_interval: Duration,
    /// A new snapshot at least this often, even without changes.
    pub reissue: Duration,
    /// Concurrent connections in all.
    pub max_conns: usize,
    /// Concurrent connections from one source (IPv4 address, IPv6 /64).
    pub max_conns_per_source: usize,
    /// Time a client has for the request head (start line and fields).
    pub head_timeout: Duration,
    /// Time a client has for its whole request, head and body.
    pub request_timeout: Duration,
    /// Time the answer may take to write (a client that does not read it is
    /// cut off).
    pub response_timeout: Duration,
    /// Renew members' certificates (`POST /renew`, see [`super::renew`]).
    pub renew: bool,
}

impl ServeOptions {
    /// Defaults for everything but the key, store and address.
    pub fn new(listen: SocketAddr, store: PathBuf, root: SecretKey) -> Self {
        ServeOptions {
            listen,
            store,
            root,
            limits: Limits::default(),
            snapshot_interval: Duration::from_secs(10),
            reissue: Duration::from_secs(3600),
            max_conns: 64,
            max_conns_per_source: 8,
            head_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
            renew: false,
        }
    }
}

/// Why the server cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Binding the listening socket.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The current snapshot and its serial.
#[derive(Debug, Clone)]
struct Current {
    bytes: Arc<Vec<u8>>,
    serial: u64,
    members: usize,
    issued_at: Instant,
    next_expiry: Option<u64>,
}

#[derive(Debug)]
struct State {
    reg: Registry,
    store: Store,
}

#[derive(Debug)]
struct Shared {
    opts: ServeOptions,
    state: Mutex<State>,
    current: Mutex<Current>,
    conns: Mutex<HashMap<Source, usize>>,
    stop: AtomicBool,
    log: Mutex<crate::loglimit::LogLimit>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler thread must not take the server down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Loads the store and builds a first snapshot.
fn open_state(opts: &ServeOptions) -> Result<(State, Current), ServeError> {
    let mut store = Store::open(&opts.store)?;
    let mut reg = Registry::new(opts.root.public(), opts.limits);
    for w in store.load(&mut reg)? {
        log::warn!("{w}");
    }
    let last = store.last_serial().unwrap_or(0);
    let mut state = State { reg, store };
    let current = issue(opts, &mut state, last)?;
    Ok((state, current))
}

/// Builds, signs and saves a new snapshot after `serial`.
fn issue(opts: &ServeOptions, st: &mut State, serial: u64) -> Result<Current, StoreError> {
    let now_ms = unix_ms();
    let (entries, revoked) = st.reg.current(now_ms);
    st.reg.take_changed();
    // Serials also grow across a lost store: at least the issue time.
    let serial = serial.saturating_add(1).max(now_ms / 1000);
    let bytes = build_snapshot(&opts.root, serial, now_ms / 1000, revoked, entries.iter());
    st.store.save_snapshot(&bytes)?;
    Ok(Current {
        bytes: Arc::new(bytes),
        serial,
        members: entries.len(),
        issued_at: Instant::now(),
        next_expiry: st.reg.next_expiry(now_ms),
    })
}

/// Builds one snapshot from the store without serving (`dcol directory
/// snapshot`); it is also saved as `STORE/snapshot`. Returns the bytes, the
/// serial and the number of members.
pub fn snapshot_once(opts: &ServeOptions) -> Result<(Vec<u8>, u64, usize), ServeError> {
    let (_, c) = open_state(opts)?;
    let bytes = Arc::try_unwrap(c.bytes).unwrap_or_else(|a| (*a).clone());
    Ok((bytes, c.serial, c.members))
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Server {
    /// Loads the store, issues a snapshot, binds and starts serving.
    pub fn start(opts: ServeOptions) -> Result<Server, ServeError> {
        let (state, current) = open_state(&opts)?;
        let listener = TcpListener::bind(opts.listen).map_err(|source| ServeError::Bind {
            addr: opts.listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: opts.listen,
            source,
        })?;
        log::info!(
            "directory on http://{addr}/snapshot: {} member(s), {} record(s) held, serial {}, store {}",
            current.members,
            state.reg.len(),
            current.serial,
            opts.store.display()
        );
        let shared = Arc::new(Shared {
            opts,
            state: Mutex::new(state),
            current: Mutex::new(current),
            conns: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            log: Mutex::new(crate::loglimit::LogLimit::new(20)),
        });
        let s = shared.clone();
        let builder = thread::spawn(move || builder_loop(&s));
        let s = shared.clone();
        let acceptor = thread::spawn(move || accept_loop(&s, listener));
        Ok(Server {
            addr,
            shared,
            threads: vec![builder, acceptor],
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the process ends.
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Stops accepting and ends the builder (connections in flight finish).
    pub fn stop(mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Unblock accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn builder_loop(sh: &Shared) {
    let tick = sh.opts.snapshot_interval.min(Duration::from_secs(1));
    let mut last_build = Instant::now();
    while !sh.stop.load(Ordering::SeqCst) {
        thread::sleep(tick);
        if last_build.elapsed() < sh.opts.snapshot_interval {
            continue;
        }
        let mut guard = lock(&sh.state);
        let st = &mut *guard;
        match st.store.reload_revocations(&mut st.reg) {
            Ok(w) => w.iter().for_each(|w| log::warn!("{w}")),
            Err(e) => log::warn!("{e}"),
        }
        let cur = lock(&sh.current).clone();
        let now_ms = unix_ms();
        let due = st.reg.take_changed()
            || cur.next_expiry.is_some_and(|t| t <= now_ms)
            || cur.issued_at.elapsed() >= sh.opts.reissue;
        if !due {
            continue;
        }
        last_build = Instant::now();
        match issue(&sh.opts, st, cur.serial) {
            Ok(c) => {
                log::info!(
                    "snapshot serial {}: {} member(s), {} bytes",
                    c.serial,
                    c.members,
                    c.bytes.len()
                );
                *lock(&sh.current) = c;
            }
            Err(e) => log::error!("issuing a snapshot: {e}; serving the previous one"),
        }
    }
}

/// Decrements the connection counts when a handler ends.
struct ConnGuard<'a> {
    sh: &'a Shared,
    source: Source,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        let mut c = lock(&self.sh.conns);
        if let Some(n) = c.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.source);
            }
        }
    }
}

fn accept_loop(sh: &Arc<Shared>, listener: TcpListener) {
    for conn in listener.incoming() {
        if sh.stop.load(Ordering::SeqCst) {
            break;
        }
        let mut s = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept: {e}");
                // E.g. out of file descriptors: do not spin.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let Ok(peer) = s.peer_addr() else { continue };
        let source = Source::of(peer.ip());
        let full = {
            let mut c = lock(&sh.conns);
            let total: usize = c.values().sum();
            let mine = c.get(&source).copied().unwrap_or(0);
            if mine >= sh.opts.max_conns_per_source {
                Some(format!("{mine} connections from {source}"))
            } else if total >= sh.opts.max_conns {
                Some(format!("{total} connections in all"))
            } else {
                c.insert(source, mine + 1);
                None
            }
        };
        if let Some(why) = full {
            // A fresh socket's buffer takes this without blocking.
            let _ = s.set_nonblocking(true);
            let _ = reply(
                &mut s,
                503,
                "Service Unavailable",
                "busy: too many connections\n",
            );
            if lock(&sh.log).allow(Instant::now()) {
                log::warn!("directory: refused a connection from {peer}: connection cap ({why})");
            }
            continue;
        }
        let sh2 = sh.clone();
        let spawned = thread::Builder::new()
            .name("dcol-dir-conn".into())
            .spawn(move || {
                let _guard = ConnGuard { sh: &sh2, source };
                handle(&sh2, s, peer);
            });
        if let Err(e) = spawned {
            log::warn!("directory: cannot start a handler thread: {e}");
        }
    }
}

fn reply(s: &mut impl Write, status: u16, reason: &str, text: &str) -> io::Result<()> {
    http::write_response(s, status, reason, "text/plain", &[], text.as_bytes())
}

/// What a request asks for, known from its method and path before its body
/// is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `GET /snapshot`.
    Snapshot,
    /// `GET /`.
    Index,
    /// `POST /records`.
    Record,
    /// `POST /revocations`.
    Revocation,
    /// `POST /renew` (the server renews).
    Renew,
}

/// A request refused on its head alone: status, reason phrase, why.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Early {
    status: u16,
    reason: &'static str,
    why: String,
}

impl Route {
    /// The route of `method` `path`; the refusal when there is none.
    fn of(method: &str, path: &str, renew: bool) -> Result<Route, Early> {
        let early = |status, reason, why: &str| {
            Err(Early {
                status,
                reason,
                why: why.to_owned(),
            })
        };
        match (method, path) {
            ("GET", "/snapshot") => Ok(Route::Snapshot),
            ("GET", "/") => Ok(Route::Index),
            ("POST", "/records") => Ok(Route::Record),
            ("POST", "/revocations") => Ok(Route::Revocation),
            ("POST", "/renew") if renew => Ok(Route::Renew),
            ("POST", "/renew") => early(
                404,
                "Not Found",
                "this directory does not renew certificates (dcol directory serve --renew)",
            ),
            (_, "/snapshot" | "/" | "/records" | "/revocations" | "/renew") => {
                early(405, "Method Not Allowed", "method not allowed")
            }
            _ => early(404, "Not Found", "no such path"),
        }
    }

    /// The largest body this route reads.
    fn max_body(self) -> usize {
        match self {
            Route::Snapshot | Route::Index => 0,
            // A renewal request is a certificate and a signature, like a record.
            Route::Record | Route::Renew => MAX_RECORD,
            Route::Revocation => files::MAX_REVOCATION_FILE as usize,
        }
    }

    /// What the log calls a request of this route.
    fn what(self) -> &'static str {
        match self {
            Route::Snapshot => "snapshot request",
            Route::Index => "index request",
            Route::Record => "record",
            Route::Revocation => "revocation",
            Route::Renew => "renewal",
        }
    }

    /// Refuses a body of `declared` bytes (its `Content-Length`) that is
    /// over this route's limit.
    fn check_length(self, declared: u64) -> Result<(), Early> {
        let max = self.max_body();
        if declared <= max as u64 {
            return Ok(());
        }
        let why = if max == 0 {
            format!("a GET takes no body ({declared} bytes announced)")
        } else {
            format!(
                "the body ({declared} bytes) is larger than a {} may be ({max} bytes)",
                self.what()
            )
        };
        Err(Early {
            status: 413,
            reason: "Content Too Large",
            why,
        })
    }
}

/// Writes to a connection until a deadline: each write gets the time left,
/// so a client that reads slowly or not at all is cut off at the deadline.
struct Deadlined<'a> {
    s: &'a TcpStream,
    deadline: Instant,
}

impl Write for Deadlined<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self
            .deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "answer not read in time"))?;
        self.s.set_write_timeout(Some(left))?;
        let mut s = self.s;
        s.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The refusal of a request that could not be read (`why` says why), or
/// `None` when the connection failed (nothing to answer).
fn read_failure(e: &ServerError, why: String) -> Option<Early> {
    let (status, reason) = match e {
        ServerError::Wire(WireError::BodyTooLarge(_)) => (413, "Content Too Large"),
        ServerError::Wire(_) => (400, "Bad Request"),
        ServerError::Timeout => (408, "Request Timeout"),
        ServerError::Io(_) => return None,
    };
    Some(Early {
        status,
        reason,
        why,
    })
}

/// A request refused before it was read to the end: what it was (for the
/// log) and why.
type Unread = Option<(String, Early)>;

/// Reads a request that began at `start`: the head by the head timeout,
/// then its route, then a body within the route's limit by the request
/// timeout. `Err(None)`: the connection failed.
fn read_request(
    sh: &Shared,
    s: &TcpStream,
    start: Instant,
) -> Result<(Route, http::Head, Vec<u8>), Unread> {
    let head_limit = sh.opts.head_timeout.min(sh.opts.request_timeout);
    let (head, rest) = http::read_request_head(s, start + head_limit).map_err(|e| {
        let why = match e {
            ServerError::Timeout => {
                format!("the request head was not complete within {head_limit:?}")
            }
            ref e => e.to_string(),
        };
        read_failure(&e, why).map(|f| ("request".to_owned(), f))
    })?;
    let path = head.second.split('?').next().unwrap_or_default();
    let route =
        Route::of(&head.first, path, sh.opts.renew).map_err(|e| Some((path.to_owned(), e)))?;
    let what = || route.what().to_owned();
    // The body limit of the route, from Content-Length, before reading.
    if let Ok(http::wire::BodyKind::Length(n)) = head.body_kind() {
        route.check_length(n).map_err(|e| Some((what(), e)))?;
    }
    let deadline = start + sh.opts.request_timeout;
    let body = http::read_request_body(s, &head, rest, route.max_body(), deadline)
        .map_err(|e| read_failure(&e, format!("{}: {e}", route.what())).map(|f| (what(), f)))?;
    Ok((route, head, body))
}

fn handle(sh: &Shared, s: TcpStream, peer: SocketAddr) {
    let start = Instant::now();
    let mut out = Deadlined {
        s: &s,
        deadline: start + sh.opts.request_timeout + sh.opts.response_timeout,
    };
    let (route, head, body) = match read_request(sh, &s, start) {
        Ok(r) => r,
        Err(None) => return,
        Err(Some((what, e))) => {
            refused(sh, peer, &what, e.status, &e.why);
            let _ = reply(&mut out, e.status, e.reason, &format!("{}\n", e.why));
            linger(s);
            return;
        }
    };
    let r = match route {
        Route::Snapshot => {
            let c = lock(&sh.current).clone();
            let etag = format!("\"{}\"", c.serial);
            if head.field("if-none-match") == Some(etag.as_str()) {
                http::write_response(
                    &mut out,
                    304,
                    "Not Modified",
                    "application/octet-stream",
                    &[("ETag", &etag)],
                    &[],
                )
            } else {
                http::write_response(
                    &mut out,
                    200,
                    "OK",
                    "application/octet-stream",
                    &[("ETag", &etag), ("Cache-Control", "no-cache")],
                    &c.bytes,
                )
            }
        }
        Route::Index => {
            let c = lock(&sh.current).clone();
            let text = format!(
                "dcol directory: {} member(s), snapshot serial {}\n",
                c.members, c.serial
            );
            reply(&mut out, 200, "OK", &text)
        }
        Route::Record => upload(sh, peer, &body, Kind::Record, &mut out),
        Route::Revocation => upload(sh, peer, &body, Kind::Revocation, &mut out),
        Route::Renew => renewal(sh, peer, &body, &mut out),
    };
    if let Err(e) = r {
        log::debug!("directory: writing to {peer}: {e}");
    }
}

/// Closes after an early reply: reads (and drops) what the client still
/// sends for a moment, so closing with unread bytes does not reset the
/// connection before the client has read the reply.
fn linger(mut s: TcpStream) {
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 4096];
    let mut left: usize = 1 << 20;
    while left > 0 {
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

fn refused(sh: &Shared, peer: SocketAddr, what: &str, status: u16, why: &str) {
    if lock(&sh.log).allow(Instant::now()) {
        log::warn!(
            "directory: refused {} from {peer}: {status} {why}",
            what.escape_debug()
        );
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Record,
    Revocation,
}

fn upload(
    sh: &Shared,
    peer: SocketAddr,
    body: &[u8],
    kind: Kind,
    s: &mut impl Write,
) -> io::Result<()> {
    let now_ms = unix_ms();
    let r = {
        let mut st = lock(&sh.state);
        st.reg
            .admit_source(peer.ip(), now_ms)
            .map_err(Failure::from)
            .and_then(|()| match kind {
                Kind::Record => accept_record(&mut st, now_ms, body),
                Kind::Revocation => accept_revocation(&mut st, body),
            })
    };
    match r {
        Ok(msg) => {
            log::info!("directory: {msg} (from {peer})");
            reply(s, 200, "OK", &format!("{msg}\n"))
        }
        Err(Failure::Refused(e)) => {
            let what = match kind {
                Kind::Record => "record",
                Kind::Revocation => "revocation",
            };
            refused(sh, peer, what, e.status(), &e.to_string());
            reply(s, e.status(), e.reason(), &format!("{e}\n"))
        }
        Err(Failure::Store(e)) => {
            log::error!("directory: {e}");
            reply(
                s,
                500,
                "Internal Server Error",
                "could not save; try again\n",
            )
        }
    }
}

/// `POST /renew`: a new certificate for a member whose certificate is due.
fn renewal(sh: &Shared, peer: SocketAddr, body: &[u8], s: &mut impl Write) -> io::Result<()> {
    let now_ms = unix_ms();
    let r = {
        let mut st = lock(&sh.state);
        st.reg
            .admit_source(peer.ip(), now_ms)
            .and_then(|()| st.reg.check_renewal(now_ms, body))
    };
    let req = match r {
        Ok(req) => req,
        Err(e) => {
            refused(sh, peer, "renewal", e.status(), &e.to_string());
            return reply(s, e.status(), e.reason(), &format!("{e}\n"));
        }
    };
    match super::renew::renew(&sh.opts.root, &req.cert, now_ms / 1000) {
        Ok(c) => {
            log::info!(
                "directory: renewed the certificate of '{}' ({}) until {} (from {peer})",
                c.name,
                c.member,
                c.not_after
            );
            reply(s, 200, "OK", &crate::trust::files::certificate_text(&c))
        }
        Err(e) => {
            log::error!("directory: renewing '{}': {e}", req.cert.name);
            reply(s, 500, "Internal Server Error", &format!("{e}\n"))
        }
    }
}

enum Failure {
    Refused(Refusal),
    Store(StoreError),
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Failure::Refused(r)
    }
}

fn accept_record(st: &mut State, now_ms: u64, body: &[u8]) -> Result<String, Failure> {
    let rec = st.reg.check_record(now_ms, body)?;
    st.store.save_record(&rec).map_err(Failure::Store)?;
    let msg = format!(
        "{} record of '{}' ({}) accepted, sequence {}",
        match rec.statement {
            super::Statement::Publish(_) => "published",
            super::Statement::Withdraw => "withdrawal",
        },
        rec.cert.name,
        rec.member(),
        rec.seq
    );
    st.reg.commit_record(rec);
    Ok(msg)
}

fn accept_revocation(st: &mut State, body: &[u8]) -> Result<String, Failure> {
    let Some(list) = st.reg.check_list(body)? else {
        return Ok("this revocation list is already in force".into());
    };
    st.store.save_revocations(&list).map_err(Failure::Store)?;
    let msg = format!(
        "revocation list serial {} in force: {} member(s) revoked",
        list.serial,
        list.entries.len()
    );
    st.reg.load_list(list)?;
    Ok(msg)
}

#[cfg(test)]
mod tests;
