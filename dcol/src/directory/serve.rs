//! `dcol directory serve`: the directory's HTTP server on std's
//! `TcpListener`, one thread per connection under caps (in all and per source
//! address), each with a deadline for its whole request, so a slow client holds
//! only its own thread. No `sys` code: it runs on any Linux box or router.
//!
//! ```text
//! GET  /snapshot      the current signed snapshot (ETag = serial; If-None-Match -> 304)
//! POST /records       a member's signed record (publish or withdraw), at most 4 KiB
//! POST /revocations   the root-signed revocation list, newer than the one in force
//!                     (`dcol collective revoke --directory`), at most 256 KiB
//! GET  /              one line of text: members, serial
//! ```
//! Refusals are 4xx with a one-line text body saying why: 400 malformed, 403
//! signature/certificate/revocation/role, 404/405 wrong path or method, 408 too
//! slow, 409 replayed or stale record, 413 body too large, 429 rate limit, 503
//! connection cap. A refused upload changes nothing in the store.
//!
//! A builder thread issues a new snapshot at most once per
//! `snapshot_interval` when something changed, when a listed member's record
//! or certificate expires, and at least every `reissue` (so members can
//! refuse snapshots that are days old), and saves it as `STORE/snapshot`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    /// Concurrent connections from one address.
    pub max_conns_per_source: usize,
    /// Time a client has for its whole request.
    pub request_timeout: Duration,
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
            request_timeout: Duration::from_secs(10),
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
    conns: Mutex<HashMap<IpAddr, usize>>,
    stop: AtomicBool,
    log: Mutex<crate::daemon::LogLimit>,
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
            log: Mutex::new(crate::daemon::LogLimit::new(20)),
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
    ip: IpAddr,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        let mut c = lock(&self.sh.conns);
        if let Some(n) = c.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
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
        let ip = peer.ip();
        let admitted = {
            let mut c = lock(&sh.conns);
            let total: usize = c.values().sum();
            let mine = c.get(&ip).copied().unwrap_or(0);
            if total >= sh.opts.max_conns || mine >= sh.opts.max_conns_per_source {
                false
            } else {
                c.insert(ip, mine + 1);
                true
            }
        };
        if !admitted {
            // A fresh socket's buffer takes this without blocking.
            let _ = s.set_nonblocking(true);
            let _ = reply(
                &mut s,
                503,
                "Service Unavailable",
                "busy: too many connections\n",
            );
            if lock(&sh.log).allow(Instant::now()) {
                log::warn!("directory: refused a connection from {ip}: connection cap");
            }
            continue;
        }
        let sh2 = sh.clone();
        let spawned = thread::Builder::new()
            .name("dcol-dir-conn".into())
            .spawn(move || {
                let _guard = ConnGuard { sh: &sh2, ip };
                handle(&sh2, s, peer);
            });
        if let Err(e) = spawned {
            log::warn!("directory: cannot start a handler thread: {e}");
        }
    }
}

fn reply(s: &mut TcpStream, status: u16, reason: &str, text: &str) -> io::Result<()> {
    http::write_response(s, status, reason, "text/plain", &[], text.as_bytes())
}

fn handle(sh: &Shared, mut s: TcpStream, peer: SocketAddr) {
    let _ = s.set_write_timeout(Some(sh.opts.request_timeout));
    // The largest body is a revocation list; records are checked below.
    let max = files::MAX_REVOCATION_FILE as usize;
    let (head, body) = match http::read_request(&mut s, max, sh.opts.request_timeout) {
        Ok(x) => x,
        Err(e) => {
            let (status, reason) = match &e {
                ServerError::Wire(WireError::BodyTooLarge(_)) => (413, "Content Too Large"),
                ServerError::Wire(_) => (400, "Bad Request"),
                ServerError::Timeout => (408, "Request Timeout"),
                ServerError::Io(_) => return,
            };
            refused(sh, peer, "request", status, &e.to_string());
            let _ = reply(&mut s, status, reason, &format!("{e}\n"));
            linger(s);
            return;
        }
    };
    let path = head.second.split('?').next().unwrap_or_default().to_owned();
    let r = match (head.first.as_str(), path.as_str()) {
        ("GET", "/snapshot") => {
            let c = lock(&sh.current).clone();
            let etag = format!("\"{}\"", c.serial);
            if head.field("if-none-match") == Some(etag.as_str()) {
                http::write_response(
                    &mut s,
                    304,
                    "Not Modified",
                    "application/octet-stream",
                    &[("ETag", &etag)],
                    &[],
                )
            } else {
                http::write_response(
                    &mut s,
                    200,
                    "OK",
                    "application/octet-stream",
                    &[("ETag", &etag), ("Cache-Control", "no-cache")],
                    &c.bytes,
                )
            }
        }
        ("GET", "/") => {
            let c = lock(&sh.current).clone();
            let text = format!(
                "dcol directory: {} member(s), snapshot serial {}\n",
                c.members, c.serial
            );
            reply(&mut s, 200, "OK", &text)
        }
        ("POST", "/records") if body.len() > MAX_RECORD => {
            let why = format!("record: {} bytes is larger than {MAX_RECORD}", body.len());
            refused(sh, peer, "record", 413, &why);
            reply(&mut s, 413, "Content Too Large", &format!("{why}\n"))
        }
        ("POST", "/records") => upload(sh, peer, &body, Kind::Record, &mut s),
        ("POST", "/revocations") => upload(sh, peer, &body, Kind::Revocation, &mut s),
        ("POST", "/renew") if !sh.opts.renew => {
            let why = "this directory does not renew certificates (dcol directory serve --renew)";
            refused(sh, peer, "renewal", 404, why);
            reply(&mut s, 404, "Not Found", &format!("{why}\n"))
        }
        ("POST", "/renew") => renewal(sh, peer, &body, &mut s),
        (_, "/snapshot" | "/" | "/records" | "/revocations" | "/renew") => {
            refused(sh, peer, &path, 405, "method not allowed");
            reply(&mut s, 405, "Method Not Allowed", "method not allowed\n")
        }
        _ => {
            refused(sh, peer, &path, 404, "no such path");
            reply(&mut s, 404, "Not Found", "not found\n")
        }
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
    s: &mut TcpStream,
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
fn renewal(sh: &Shared, peer: SocketAddr, body: &[u8], s: &mut TcpStream) -> io::Result<()> {
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
        let r = http::request(
            "POST",
            &base.join(path).unwrap(),
            &[],
            body,
            http::Limits::default(),
        )
        .unwrap();
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }

    fn snapshot(base: &Url) -> Vec<u8> {
        let r = http::get(&base.join("/snapshot").unwrap(), http::Limits::default()).unwrap();
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
        let r = http::request(
            "GET",
            &base.join("/snapshot").unwrap(),
            &[("If-None-Match", &etag)],
            &[],
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
        let r = http::get(&base.join("/records").unwrap(), http::Limits::default()).unwrap();
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
        // A 3 s limit: under qemu-user (CI runs these tests on emulated
        // MIPS and AArch64) the checks below take hundreds of ms, and the
        // stalled clients must still be there for them.
        let (srv, base, dir) = start_with("slow", |o| o.request_timeout = Duration::from_secs(3));
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
        while statuses.last() != Some(&503) && t0.elapsed() < Duration::from_millis(2500) {
            thread::sleep(Duration::from_millis(50));
            let r = http::get(&base.join("/snapshot").unwrap(), http::Limits::default()).unwrap();
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
            http::get(&base.join("/").unwrap(), http::Limits::default())
                .unwrap()
                .status,
            200
        );
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
