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
mod tests {
    use super::*;
    use crate::directory::{Advert, Record, Snapshot, Statement, Tunnels};
    use crate::http::Url;
    use crate::trust::RevocationList;
    use crate::trust::{Certificate, MemberId, Roles};
    use std::io::Write;

    fn now_s() -> u64 {
        unix_ms() / 1000
    }

    fn member(seed: u8, name: &str, roles: Roles) -> (SecretKey, Certificate) {
        let k = SecretKey::from_seed([seed; 32]);
        let c = Certificate::issue(
            &SecretKey::from_seed([1; 32]),
            name,
            k.public(),
            None,
            now_s() - 60,
            now_s() + 86_400,
            roles,
        )
        .unwrap();
        (k, c)
    }

    fn record(seed: u8, name: &str, seq: u64) -> Vec<u8> {
        let (k, c) = member(seed, name, Roles::CLIENT | Roles::WAYPOINT);
        Record::sign(
            &k,
            c,
            seq,
            Statement::Publish(Advert {
                endpoints: vec!["192.0.2.7:7447".parse().unwrap()],
                tunnels: Tunnels::NAT,
                donate_kbit: 0,
                software: "test".into(),
            }),
        )
        .encode()
    }

    fn start(tag: &str) -> (Server, Url, PathBuf) {
        start_with(tag, |_| {})
    }

    fn start_with(tag: &str, set: impl FnOnce(&mut ServeOptions)) -> (Server, Url, PathBuf) {
        let d = std::env::temp_dir().join(format!("dcol-serve-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let mut o = ServeOptions::new(
            "127.0.0.1:0".parse().unwrap(),
            d.clone(),
            SecretKey::from_seed([1; 32]),
        );
        o.snapshot_interval = Duration::from_millis(100);
        o.request_timeout = Duration::from_millis(700);
        o.max_conns_per_source = 4;
        set(&mut o);
        let s = Server::start(o).unwrap();
        let url = Url::parse(&format!("http://{}/", s.addr())).unwrap();
        (s, url, d)
    }

    fn post(base: &Url, path: &str, body: &[u8]) -> (u16, String) {
        let r = http::post(
            &base.join(path).unwrap(),
            &[],
            body,
            http::Limits::default(),
        )
        .unwrap();
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }

    fn snapshot(base: &Url) -> Vec<u8> {
        let r = http::get(
            &base.join("/snapshot").unwrap(),
            &[],
            http::Limits::default(),
        )
        .unwrap();
        assert_eq!(r.status, 200);
        r.body
    }

    fn wait_members(base: &Url, n: u32) -> Vec<u8> {
        let root = SecretKey::from_seed([1; 32]).public();
        for _ in 0..100 {
            let b = snapshot(base);
            if Snapshot::verify(&b, &root).unwrap().head.count == n {
                return b;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("snapshot never listed {n} member(s)");
    }

    #[test]
    fn publish_refuse_revoke_over_http() {
        let (srv, base, dir) = start("http");
        let t = unix_ms();
        let (st, text) = post(&base, "/records", &record(2, "alice", t));
        assert_eq!(st, 200, "{text}");
        assert!(text.contains("'alice'"), "{text}");
        let b = wait_members(&base, 1);
        // ETag / If-None-Match.
        let serial = Snapshot::parse_unverified(&b).unwrap().head.serial;
        let etag = format!("\"{serial}\"");
        let r = http::get(
            &base.join("/snapshot").unwrap(),
            &[("If-None-Match", &etag)],
            http::Limits::default(),
        )
        .unwrap();
        assert_eq!((r.status, r.body.len()), (304, 0));

        // Refusals, each with its status and reason; the store stays intact.
        let (st, text) = post(&base, "/records", b"garbage");
        assert_eq!(st, 400, "{text}");
        let mut bad = record(3, "carol", t);
        let n = bad.len();
        bad[n - 1] ^= 1;
        let (st, text) = post(&base, "/records", &bad);
        assert_eq!((st, text.contains("bad signature")), (403, true), "{text}");
        let (st, text) = post(&base, "/records", &record(2, "alice", t));
        assert_eq!(st, 409, "{text}");
        let (st, _) = post(&base, "/records", &vec![1u8; MAX_RECORD + 1]);
        assert_eq!(st, 413);
        let (st, _) = post(&base, "/nowhere", b"");
        assert_eq!(st, 404);
        let r = http::get(
            &base.join("/records").unwrap(),
            &[],
            http::Limits::default(),
        )
        .unwrap();
        assert_eq!(r.status, 405);
        let saved = std::fs::read(
            dir.join("records")
                .join(MemberId::of(&SecretKey::from_seed([2; 32]).public()).to_string()),
        )
        .unwrap();
        assert_eq!(Record::decode(&saved).unwrap().seq, t);
        assert_eq!(std::fs::read_dir(dir.join("records")).unwrap().count(), 1);

        // A revocation by the root removes alice and lists her.
        let alice = MemberId::of(&SecretKey::from_seed([2; 32]).public());
        let rv = crate::testutil::revoked_list(1, &[alice]);
        let (st, text) = post(&base, "/revocations", rv.as_bytes());
        assert_eq!(st, 200, "{text}");
        assert!(dir.join(crate::directory::store::REVOKED_LIST).exists());
        let b = wait_members(&base, 0);
        let s = Snapshot::parse_unverified(&b).unwrap();
        assert_eq!(s.head.revoked, vec![alice]);
        let (st, text) = post(&base, "/records", &record(2, "alice", unix_ms()));
        assert_eq!((st, text.contains("revoked")), (403, true), "{text}");
        // A member cannot revoke; a replayed older list changes nothing.
        let forged = RevocationList::issue(&SecretKey::from_seed([2; 32]), 5, 1, Vec::new());
        let forged = files::revocations_text(&forged);
        assert_eq!(post(&base, "/revocations", forged.as_bytes()).0, 403);
        let (st, _) = post(&base, "/revocations", rv.as_bytes());
        assert_eq!(st, 200);
        let (st, text) = post(
            &base,
            "/revocations",
            crate::testutil::revoked_list(0, &[]).as_bytes(),
        );
        assert_eq!(st, 409, "{text}");
        srv.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn slow_clients_do_not_block_others_and_are_cut_off() {
        // A 5 s limit (head and request): under qemu-user (CI runs these
        // tests on emulated MIPS and AArch64) or on a loaded machine the
        // checks below take hundreds of ms, and the stalled clients must
        // still be there for them.
        let (srv, base, dir) = start_with("slow", |o| {
            o.request_timeout = Duration::from_secs(5);
            o.head_timeout = Duration::from_secs(5);
        });
        // Three connections that send half a head and stall.
        let mut slow: Vec<TcpStream> = (0..3)
            .map(|_| {
                let mut c = TcpStream::connect(srv.addr()).unwrap();
                c.write_all(b"POST /records HTTP/1.1\r\nContent-Le")
                    .unwrap();
                c
            })
            .collect();
        let t0 = Instant::now();
        snapshot(&base);
        // Behind them it would wait their 3 s limit.
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "a fetch waited {:?} behind slow clients",
            t0.elapsed()
        );
        // The per-source cap (4): with three stalled, a fourth and fifth
        // at once: one is refused with 503 (asked until the server has
        // taken the fourth in).
        let mut c4 = TcpStream::connect(srv.addr()).unwrap();
        c4.write_all(b"GET /snapshot HTTP/1.1\r\n").unwrap();
        let mut statuses = Vec::new();
        while statuses.last() != Some(&503) && t0.elapsed() < Duration::from_millis(4000) {
            thread::sleep(Duration::from_millis(50));
            let r = http::get(
                &base.join("/snapshot").unwrap(),
                &[],
                http::Limits::default(),
            )
            .unwrap();
            statuses.push(r.status);
        }
        assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
        // The stalled ones get 408 once their time is up.
        let mut buf = String::new();
        slow[0]
            .set_read_timeout(Some(Duration::from_secs(6)))
            .unwrap();
        std::io::Read::read_to_string(&mut slow[0], &mut buf).unwrap();
        assert!(buf.starts_with("HTTP/1.1 408"), "{buf}");
        drop(c4);
        slow.clear();
        thread::sleep(Duration::from_millis(800));
        assert_eq!(
            http::get(&base.join("/").unwrap(), &[], http::Limits::default())
                .unwrap()
                .status,
            200
        );
        srv.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn routes_and_their_body_limits() {
        assert_eq!(Route::of("GET", "/snapshot", false), Ok(Route::Snapshot));
        assert_eq!(Route::of("POST", "/renew", true), Ok(Route::Renew));
        let e = Route::of("POST", "/renew", false).unwrap_err();
        assert_eq!(e.status, 404);
        assert!(e.why.contains("--renew"), "{e:?}");
        assert_eq!(Route::of("PUT", "/records", false).unwrap_err().status, 405);
        assert_eq!(
            Route::of("POST", "/etc/passwd", false).unwrap_err().status,
            404
        );
        // Each route its own limit; a GET takes no body.
        assert_eq!(Route::Record.max_body(), MAX_RECORD);
        assert_eq!(Route::Renew.max_body(), MAX_RECORD);
        assert_eq!(
            Route::Revocation.max_body(),
            files::MAX_REVOCATION_FILE as usize
        );
        assert!(Route::Record.check_length(MAX_RECORD as u64).is_ok());
        let e = Route::Record
            .check_length(MAX_RECORD as u64 + 1)
            .unwrap_err();
        assert_eq!(e.status, 413);
        assert_eq!(
            e.why,
            format!("the body (4097 bytes) is larger than a record may be ({MAX_RECORD} bytes)")
        );
        assert!(Route::Revocation.check_length(100_000).is_ok());
        assert!(Route::Snapshot.check_length(0).is_ok());
        let e = Route::Snapshot.check_length(1).unwrap_err();
        assert_eq!(
            (e.status, e.why.contains("a GET takes no body")),
            (413, true)
        );
        assert!(Route::Index.check_length(u64::MAX).is_err());
    }

    /// Connects (from `from`, when given), sends `bytes`, and reads the
    /// answer: its text and how long it took from the connect.
    fn exchange(
        to: SocketAddr,
        from: Option<std::net::IpAddr>,
        bytes: &[u8],
        limit: Duration,
    ) -> (String, Duration) {
        let t0 = Instant::now();
        let mut c = match from {
            Some(f) => crate::sys::sock::connect_from(f, to).unwrap(),
            None => TcpStream::connect(to).unwrap(),
        };
        c.write_all(bytes).unwrap();
        c.set_read_timeout(Some(limit)).unwrap();
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut c, &mut text);
        (text, t0.elapsed())
    }

    #[test]
    fn bodies_over_the_route_limit_are_refused_before_they_are_read() {
        // A long request time: a server that waits for the body (up to the
        // 256 KiB it used to allow on every route) answers only after it.
        let (srv, base, dir) = start_with("limits", |o| {
            o.request_timeout = Duration::from_secs(8);
            o.head_timeout = Duration::from_secs(8);
        });
        // Well under the request time, with room for qemu-user (CI).
        let quick = Duration::from_secs(5);
        for (head, want) in [
            (
                "POST /records HTTP/1.1\r\nContent-Length: 100000\r\n\r\n",
                "HTTP/1.1 413",
            ),
            (
                "POST /renew HTTP/1.1\r\nContent-Length: 100000\r\n\r\n",
                "HTTP/1.1 404",
            ),
            (
                "POST /revocations HTTP/1.1\r\nContent-Length: 300000\r\n\r\n",
                "HTTP/1.1 413",
            ),
            (
                "GET /snapshot HTTP/1.1\r\nContent-Length: 10\r\n\r\n",
                "HTTP/1.1 413",
            ),
            (
                "POST /nowhere HTTP/1.1\r\nContent-Length: 100000\r\n\r\n",
                "HTTP/1.1 404",
            ),
            (
                "DELETE /records HTTP/1.1\r\nContent-Length: 100000\r\n\r\n",
                "HTTP/1.1 405",
            ),
        ] {
            let (text, took) = exchange(srv.addr(), None, head.as_bytes(), quick * 2);
            assert!(text.starts_with(want), "{head:?}: {text}");
            assert!(took < quick, "{head:?}: answered after {took:?}");
        }
        let (text, _) = exchange(
            srv.addr(),
            None,
            b"POST /records HTTP/1.1\r\nContent-Length: 100000\r\n\r\n",
            quick,
        );
        assert!(
            text.contains("the body (100000 bytes) is larger than a record may be (4096 bytes)"),
            "{text}"
        );
        // A chunked body is cut off as soon as it passes the limit.
        let mut chunked = b"POST /records HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        chunked.extend_from_slice(format!("{:x}\r\n", MAX_RECORD + 1).as_bytes());
        chunked.extend(std::iter::repeat_n(b'x', MAX_RECORD + 1));
        let (text, took) = exchange(srv.addr(), None, &chunked, quick * 2);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(took < quick, "{took:?}");
        // The server goes on serving.
        assert!(!snapshot(&base).is_empty());
        srv.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_slow_head_is_cut_off_at_the_head_timeout() {
        // A head timeout far below the request's (6 s): each check below
        // would take the request's time without it.
        let (srv, base, dir) = start_with("head", |o| {
            o.head_timeout = Duration::from_millis(300);
            o.request_timeout = Duration::from_secs(6);
        });
        // Half a head, then nothing.
        let (text, took) = exchange(
            srv.addr(),
            None,
            b"POST /records HTTP/1.1\r\nContent-Le",
            Duration::from_secs(8),
        );
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(
            text.contains("the request head was not complete within 300ms"),
            "{text}"
        );
        assert!(took < Duration::from_secs(4), "cut off after {took:?}");
        // A head trickled in a byte at a time is cut off all the same.
        let t0 = Instant::now();
        let mut c = TcpStream::connect(srv.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        for b in b"GET /snapshot HTTP/1.1\r\nX-Slow: yes\r\n".iter() {
            if c.write_all(&[*b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(40));
        }
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut c, &mut text);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
        // The body has the request's time, not the head's: a body sent
        // after the head timeout is still read (and refused for what it
        // is, not for being slow).
        let mut c = TcpStream::connect(srv.addr()).unwrap();
        c.write_all(b"POST /records HTTP/1.1\r\nContent-Length: 7\r\n\r\ngar")
            .unwrap();
        thread::sleep(Duration::from_millis(800));
        c.write_all(b"bage").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut c, &mut text);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(!snapshot(&base).is_empty());
        srv.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_source_cannot_take_every_connection() {
        let (srv, _base, dir) = start_with("sources", |o| {
            o.max_conns = 6;
            o.max_conns_per_source = 4;
            // The stalled ones must stay for the checks (qemu-user is slow).
            o.request_timeout = Duration::from_secs(10);
            o.head_timeout = Duration::from_secs(10);
        });
        let to = srv.addr();
        let from = |last: u8| Some(std::net::IpAddr::from([127, 0, 0, last]));
        // Four stalled connections from 127.0.0.1 ...
        let _stalled: Vec<TcpStream> = (0..4)
            .map(|_| {
                let mut c = crate::sys::sock::connect_from([127, 0, 0, 1].into(), to).unwrap();
                c.write_all(b"GET /snapshot HTTP/1.1\r\n").unwrap();
                c
            })
            .collect();
        // ... a fifth from it is refused (asked until the server took the
        // four in) ...
        let t0 = Instant::now();
        let busy = loop {
            let (text, _) = exchange(
                to,
                from(1),
                b"GET / HTTP/1.1\r\n\r\n",
                Duration::from_secs(3),
            );
            if text.starts_with("HTTP/1.1 503") || t0.elapsed() > Duration::from_secs(3) {
                break text;
            }
            thread::sleep(Duration::from_millis(20));
        };
        assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
        // ... while another source is served at once.
        let (text, took) = exchange(
            to,
            from(2),
            b"GET / HTTP/1.1\r\n\r\n",
            Duration::from_secs(3),
        );
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        srv.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn renewal_only_when_enabled_due_valid_and_signed() {
        use crate::directory::renew::RenewalRequest;
        let root = SecretKey::from_seed([1; 32]);
        let k = SecretKey::from_seed([7; 32]);
        // Valid for 3 days, more than 2 of them gone: due.
        let cert = |from: u64| {
            Certificate::issue(
                &root,
                "bob",
                k.public(),
                Some([5; 32]),
                from,
                from + 3 * 86_400,
                Roles::CLIENT,
            )
            .unwrap()
        };
        let due = cert(now_s() - 2 * 86_400 - 3600);
        let ask = |c: &Certificate, key: &SecretKey| {
            RenewalRequest::sign(key, c.clone(), unix_ms()).encode()
        };
        let (off, base_off, dir_off) = start("renew-off");
        let (st, text) = post(&base_off, "/renew", &ask(&due, &k));
        assert_eq!(st, 404, "{text}");
        assert!(text.contains("--renew"), "{text}");
        off.stop();
        let _ = std::fs::remove_dir_all(&dir_off);

        let (srv, base, dir) = start_with("renew", |o| o.renew = true);
        let (st, text) = post(&base, "/renew", &ask(&due, &k));
        assert_eq!(st, 200, "{text}");
        let new = files::parse_certificate(std::path::Path::new("answer"), &text).unwrap();
        assert_eq!(
            (new.key, new.wg_key, new.roles),
            (due.key, due.wg_key, due.roles)
        );
        assert!(
            new.not_after >= now_s() + 3 * 86_400 - 1,
            "{}",
            new.not_after
        );
        new.verify(&root.public(), now_s()).unwrap();
        // Not due yet: 409, saying from when.
        let (st, text) = post(&base, "/renew", &ask(&cert(now_s() - 60), &k));
        assert_eq!(st, 409, "{text}");
        assert!(text.contains("is renewed from"), "{text}");
        // Signed by someone else, garbage: 403, 400.
        assert_eq!(
            post(&base, "/renew", &ask(&due, &SecretKey::from_seed([8; 32]))).0,
            403
        );
        assert_eq!(post(&base, "/renew", b"garbage").0, 400);
        // Revoked: 403.
        let rv = files::revocations_text(&RevocationList::issue(
            &root,
            1,
            now_s(),
            vec![crate::trust::RevokedEntry {
                member: due.member,
                at: now_s(),
                reason: "lost".into(),
            }],
        ));
        assert_eq!(post(&base, "/revocations", rv.as_bytes()).0, 200);
        let (st, text) = post(&base, "/renew", &ask(&due, &k));
        assert_eq!(st, 403, "{text}");
        assert!(text.contains("revoked"), "{text}");
        srv.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
