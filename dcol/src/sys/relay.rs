//! The transparent relay for LAN devices: accepts the TCP connections that
//! [`super::lan`] REDIRECTs to it, opens each one upstream to its original
//! destination as MPTCP (plain TCP where the server is known not to speak it),
//! and moves the bytes with `splice(2)` through one pipe per direction, on one
//! edge-triggered epoll set. No thread per connection, no user-space copy of
//! the payload — except the first client bytes of a connection whose detours
//! wait for its TLS handshake ([`crate::proxy::Gate`]): those are read, their
//! record headers followed, and written on.
//!
//! What it promises:
//! - a half-close travels both ways (`shutdown(SHUT_WR)` when one side's EOF
//!   has been relayed), a reset as a reset (`SO_LINGER` {1, 0} then close);
//! - memory per connection is bounded by two pipes (64 KiB each by default)
//!   plus the kernel's socket buffers; reading stops while a pipe is full;
//! - it holds at most [`Capacity::max_conns`] connections, derived from the
//!   open-file limit (read at start) so that descriptors never run out; the
//!   caller pauses interception at that mark ([`Relay::active`],
//!   [`Relay::fd_short`]), so new LAN flows go direct instead of waiting in
//!   the accept queues, which are sized to hold what was redirected before
//!   the pause took effect;
//! - a LAN source (IPv4 address, IPv6 /64) may hold at most `max_per_host`
//!   (`max_per_prefix`) connections; more are reset at once, other hosts are
//!   unaffected. The kernel's caps (see [`super::lan`]) keep such flows from
//!   reaching the relay in the first place; this is the second line;
//! - it never relays to special-purpose addresses ([`destination_refused`])
//!   outside the owner's `allow` list, whatever the kernel redirected;
//! - a connection idle for `idle` is reset on both sides;
//! - the caller learns, through [`RelayEvent`]s, which upstream connection
//!   (local address, then token) belongs to which LAN flow and when its detour
//!   gate opens, before the path manager can report the connection.
//!
//! It does not touch nftables (that is [`super::lan`]) and never decides
//! detours itself.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::EpollFlags;

use super::sock::{self, ev, Epoll};
use super::SysError;
use crate::client::fallback::FallbackCache;
use crate::proxy::convert::Converters;
use crate::proxy::limits::{destination_refused, source_key, Capacity};
use crate::proxy::tls::TlsWatch;
use crate::proxy::{Counters, Gate};
use crate::types::{Cidr, DetourPolicy};

/// Most bytes one connection moves per turn before others get theirs.
const TURN_BUDGET: usize = 512 * 1024;
/// Largest read while following a TLS handshake.
const INSPECT_CHUNK: usize = 16 * 1024;
/// epoll data of the listeners: `LISTENER | index`.
const LISTENER: u64 = 1 << 63;
/// How long servers that fell back to TCP are remembered.
const FALLBACK_TTL: Duration = Duration::from_secs(3600);
/// How many such servers are remembered.
const FALLBACK_CAP: usize = 4096;
/// How long running out of descriptors counts as "short" after it happened.
const FD_SHORT_FOR: Duration = Duration::from_secs(1);
/// The open-file limit assumed when it cannot be read.
const DEFAULT_NOFILE: u64 = 1024;

mod convert;
use convert::Conv;

/// How the relay behaves.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Listening port (IPv4 and IPv6, every address).
    pub port: u16,
    /// Connections one LAN IPv4 address may hold at once.
    pub max_per_host: u32,
    /// Connections one LAN IPv6 /64 may hold at once.
    pub max_per_prefix: u32,
    /// The owner's cap on all connections (0: from the open-file limit
    /// only, see [`Capacity`]).
    pub max_conns: u32,
    /// Special-purpose destinations the relay may connect to all the same.
    pub allow: Vec<Cidr>,
    /// A connection with no bytes moving for this long is reset.
    pub idle: Duration,
    /// Which connections may get detours.
    pub policy: DetourPolicy,
}

/// What the relay tells the path manager's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// An upstream MPTCP connection is starting from `local` on behalf of
    /// `lan`. Reported before the kernel can announce the connection.
    Opened {
        /// Upstream local address (the initial subflow's).
        local: SocketAddr,
        /// The LAN host's address and port.
        lan: SocketAddr,
        /// Where the LAN host was going.
        server: SocketAddr,
        /// Whether detours are allowed yet.
        gate: Gate,
    },
    /// The upstream connection is established as MPTCP with this token.
    Connected {
        /// Upstream local address.
        local: SocketAddr,
        /// The connection's MPTCP token.
        token: u32,
    },
    /// The detour gate changed (the TLS handshake passed, or the flow turned
    /// out to be plaintext).
    Gate {
        /// Upstream local address.
        local: SocketAddr,
        /// The new gate.
        gate: Gate,
    },
    /// The connection is gone.
    Closed {
        /// Upstream local address.
        local: SocketAddr,
    },
}

/// One direction of a connection: source socket → pipe → destination socket.
#[derive(Debug)]
pub(super) struct Dir {
    /// Read end, write end.
    pipe: Option<(OwnedFd, OwnedFd)>,
    cap: usize,
    /// Bytes in the pipe.
    filled: usize,
    /// The source said EOF.
    pub(super) eof: bool,
    /// The EOF has been passed on (`shutdown(SHUT_WR)` on the destination).
    shut: bool,
    /// Bytes moved.
    pub(super) bytes: u64,
}

impl Dir {
    pub(super) fn new() -> Dir {
        Dir {
            pipe: None,
            cap: 0,
            filled: 0,
            eof: false,
            shut: false,
            bytes: 0,
        }
    }

    pub(super) fn done(&self) -> bool {
        self.eof && self.filled == 0 && self.shut
    }
}

/// Which socket of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Lan,
    Up,
}

#[derive(Debug)]
struct Conn {
    lan: OwnedFd,
    up: OwnedFd,
    lan_peer: SocketAddr,
    server: SocketAddr,
    local: SocketAddr,
    mptcp: bool,
    connected: bool,
    gate: Gate,
    /// Following the client's TLS records (policy `tls-after-handshake`).
    watch: Option<TlsWatch>,
    /// The gate to announce once `pending` is written.
    next_gate: Gate,
    /// Client bytes read while inspecting, not yet written upstream.
    pending: Vec<u8>,
    /// LAN → upstream, upstream → LAN.
    dirs: [Dir; 2],
    last: Instant,
    /// Through a converter, until its answer: LAN bytes wait meanwhile.
    conv: Option<Conv>,
    /// The converter that converts it (after its answer).
    converter: Option<usize>,
}

/// How a connection ends.
enum End {
    /// Both directions finished with FINs.
    Done,
    /// `side` failed (reset or error): reset the other side.
    Failed(Side, io::Error),
}

#[derive(Debug)]
struct Slot {
    gen: u32,
    conn: Option<Conn>,
}

/// The relay.
#[derive(Debug)]
pub struct Relay {
    settings: RelaySettings,
    epoll: Epoll,
    listeners: Vec<(TcpListener, bool)>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Open connections per source ([`source_key`]).
    per_host: HashMap<IpAddr, u32>,
    /// The open-file limit read at start.
    nofile: u64,
    capacity: Capacity,
    /// Until when an accept that failed for want of descriptors counts.
    fd_short_until: Option<Instant>,
    fallback: FallbackCache,
    /// Connections that used their turn's budget and must be pumped again.
    again: Vec<(usize, u32)>,
    accept_retry: Option<Instant>,
    next_scan: Instant,
    stats: Counters,
    scratch: Vec<u8>,
    events: Vec<RelayEvent>,
    /// Refusals logged in the current second (rate limit).
    log_window: (Instant, u32),
    /// Converters for servers without MPTCP (`option convert 'auto'`).
    converters: Option<Converters>,
    /// When connections through converters must have been answered.
    conv_deadlines: Vec<(Instant, usize, u32)>,
}

fn ioerr(op: &'static str) -> impl FnOnce(io::Error) -> SysError {
    move |e| SysError::io(op, e)
}

impl Relay {
    /// Listens on `0.0.0.0:port` and, where the host has IPv6, `[::]:port`.
    pub fn open(settings: RelaySettings) -> Result<Relay, SysError> {
        let nofile = match sock::raise_nofile() {
            Ok(n) => n,
            Err(e) => {
                log::warn!(
                    "lan proxy: cannot read the open-file limit ({e}); assuming {DEFAULT_NOFILE}"
                );
                DEFAULT_NOFILE
            }
        };
        let capacity = Capacity::from_nofile(nofile, settings.max_conns);
        if nofile < 4096 {
            log::warn!(
                "lan proxy: only {nofile} open files allowed; each connection needs up to 6"
            );
        }
        log::info!(
            "lan proxy: at most {} connections (open-file limit {nofile}); more go direct",
            capacity.max_conns
        );
        let backlog = i32::try_from(capacity.backlog).unwrap_or(i32::MAX);
        let epoll = Epoll::new().map_err(ioerr("epoll_create"))?;
        let mut listeners = Vec::new();
        let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), settings.port);
        listeners.push((
            sock::tcp_listener(v4, backlog).map_err(ioerr("lan proxy: listen on IPv4"))?,
            false,
        ));
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), settings.port);
        match sock::tcp_listener(v6, backlog) {
            Ok(l) => listeners.push((l, true)),
            Err(e) => log::info!("lan proxy: no IPv6 listener ({e})"),
        }
        for (i, (l, _)) in listeners.iter().enumerate() {
            epoll
                .add(l, ev::IN | ev::ET, LISTENER | i as u64)
                .map_err(ioerr("epoll_ctl"))?;
        }
        let now = Instant::now();
        Ok(Relay {
            next_scan: now + scan_interval(settings.idle),
            settings,
            epoll,
            listeners,
            slots: Vec::new(),
            free: Vec::new(),
            per_host: HashMap::new(),
            nofile,
            capacity,
            fd_short_until: None,
            fallback: FallbackCache::new(FALLBACK_TTL, FALLBACK_CAP),
            again: Vec::new(),
            accept_retry: None,
            stats: Counters::default(),
            scratch: vec![0; INSPECT_CHUNK],
            events: Vec::new(),
            log_window: (now, 0),
            converters: None,
            conv_deadlines: Vec::new(),
        })
    }

    /// Applies changed settings to connections accepted from now on (and the
    /// idle timeout to all). The port cannot change (open a new relay).
    pub fn set_settings(&mut self, settings: RelaySettings) {
        debug_assert_eq!(settings.port, self.settings.port);
        self.capacity = Capacity::from_nofile(self.nofile, settings.max_conns);
        self.next_scan = self
            .next_scan
            .min(Instant::now() + scan_interval(settings.idle));
        self.settings = settings;
    }

    /// The descriptor to poll: readable when the relay has work.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.fd()
    }

    /// When [`Relay::step`] must run even if [`Relay::fd`] stays quiet.
    pub fn next_timeout(&self) -> Instant {
        let mut t = self.next_scan;
        if let Some(r) = self.accept_retry {
            t = t.min(r);
        }
        if !self.again.is_empty() {
            t = Instant::now();
        }
        if let Some(&(c, ..)) = self.conv_deadlines.iter().min_by_key(|d| d.0) {
            t = t.min(c);
        }
        t
    }

    /// Connections open now.
    pub fn active(&self) -> u64 {
        self.stats.active
    }

    /// The proxy's size.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// True while an accept recently failed for want of descriptors.
    pub fn fd_short(&self, now: Instant) -> bool {
        self.fd_short_until.is_some_and(|t| now < t)
    }

    /// Counters.
    pub fn stats(&self) -> Counters {
        let mut s = self.stats.clone();
        s.fallback_cached = self.fallback.len() as u64;
        s
    }

    /// Does all the work that is ready; returns what the path manager's side
    /// must know.
    pub fn step(&mut self, now: Instant) -> Vec<RelayEvent> {
        let mut ready = Vec::new();
        if let Err(e) = self.epoll.ready(&mut ready, 256) {
            log::warn!("lan proxy: epoll_wait: {e}");
        }
        for (flags, data) in ready {
            if data & LISTENER != 0 {
                self.accept_all(now, (data & !LISTENER) as usize);
                continue;
            }
            let (idx, gen, side) = untag(data);
            self.on_ready(now, idx, gen, side, flags);
        }
        for (idx, gen) in std::mem::take(&mut self.again) {
            self.pump(now, idx, gen);
        }
        if self.accept_retry.is_some_and(|t| t <= now) {
            self.accept_retry = None;
            for i in 0..self.listeners.len() {
                self.accept_all(now, i);
            }
        }
        if now >= self.next_scan {
            self.next_scan = now + scan_interval(self.settings.idle);
            self.close_idle(now);
        }
        self.conv_expired(now);
        std::mem::take(&mut self.events)
    }

    /// Resets every connection (daemon shutdown). The LAN hosts see a reset
    /// and reconnect, by then without the proxy.
    pub fn close_all(&mut self) -> Vec<RelayEvent> {
        for idx in 0..self.slots.len() {
            if let Some(c) = self.slots[idx].conn.as_ref() {
                sock::set_reset_on_close(&c.lan);
                sock::set_reset_on_close(&c.up);
                self.remove(idx);
            }
        }
        std::mem::take(&mut self.events)
    }

    fn refusal_logged(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.log_window.0) >= Duration::from_secs(1) {
            self.log_window = (now, 0);
        }
        self.log_window.1 += 1;
        self.log_window.1 <= 10
    }

    fn accept_all(&mut self, now: Instant, i: usize) {
        loop {
            let (l, v6) = &self.listeners[i];
            let v6 = *v6;
            match sock::accept(l) {
                Ok(None) => return,
                Ok(Some((fd, peer))) => self.admit(now, fd, peer, v6),
                Err(e) => {
                    // Out of descriptors, most likely: the waiting connections
                    // stay queued; try again shortly (no new edge would come).
                    if matches!(
                        e.raw_os_error().map(Errno::from_raw),
                        Some(Errno::EMFILE | Errno::ENFILE)
                    ) {
                        self.fd_short_until = Some(now + FD_SHORT_FOR);
                    }
                    if self.refusal_logged(now) {
                        log::warn!("lan proxy: accept: {e}");
                    }
                    self.accept_retry = Some(now + Duration::from_millis(100));
                    return;
                }
            }
        }
    }

    fn admit(&mut self, now: Instant, lan: OwnedFd, peer: SocketAddr, v6: bool) {
        self.stats.accepted = self.stats.accepted.wrapping_add(1);
        let Some((server, source)) = self.admission(now, &lan, peer, v6) else {
            sock::set_reset_on_close(&lan);
            return;
        };
        let plain = self.fallback.plain_tcp(now, server);
        let (up, mptcp, conv) = match self.open_upstream(now, server, plain) {
            Ok(x) => x,
            Err(e) => {
                self.stats.connect_failed += 1;
                log::debug!("lan proxy: {peer} -> {server}: connect: {e}");
                sock::set_reset_on_close(&lan);
                return;
            }
        };
        let local = match sock::local_addr(&up) {
            Ok(l) => l,
            Err(e) => {
                log::warn!("lan proxy: getsockname: {e}");
                sock::set_reset_on_close(&lan);
                return;
            }
        };
        *self.per_host.entry(source).or_insert(0) += 1;
        if conv.is_some() {
            log::debug!("lan proxy: {peer} -> {server}: through a converter from {local}");
        } else if plain {
            self.stats.plain_tcp += 1;
            log::debug!("lan proxy: {peer} -> {server}: plain TCP (cached: no MPTCP there)");
        } else {
            log::debug!("lan proxy: {peer} -> {server}: proxied as MPTCP from {local}");
        }
        let gate = if mptcp {
            Gate::initial(self.settings.policy)
        } else {
            Gate::Shut("plain TCP")
        };
        let conn = Conn {
            lan,
            up,
            lan_peer: peer,
            server,
            local,
            mptcp,
            connected: false,
            gate,
            watch: (gate == Gate::Waiting).then(TlsWatch::default),
            next_gate: gate,
            pending: Vec::new(),
            dirs: [Dir::new(), Dir::new()],
            last: now,
            conv,
            converter: None,
        };
        let (idx, gen) = self.new_slot();
        if let Some(c) = &conn.conv {
            self.conv_deadlines.push((c.deadline, idx, gen));
        }
        let flags = ev::IN | ev::OUT | ev::RDHUP | ev::ET;
        let reg = self
            .epoll
            .add(&conn.lan, flags, tag(idx, gen, Side::Lan))
            .and_then(|()| self.epoll.add(&conn.up, flags, tag(idx, gen, Side::Up)));
        if mptcp {
            self.events.push(RelayEvent::Opened {
                local,
                lan: peer,
                server,
                gate,
            });
        }
        self.slots[idx].conn = Some(conn);
        self.stats.active += 1;
        if let Err(e) = reg {
            log::warn!("lan proxy: epoll_ctl: {e}");
            self.remove(idx);
        }
    }

    /// The connection's real destination and its source's key, or `None`
    /// (counted and logged) when it is refused: addressed to the proxy port
    /// itself, to a destination the proxy does not take, or over its
    /// source's cap.
    fn admission(
        &mut self,
        now: Instant,
        lan: &OwnedFd,
        peer: SocketAddr,
        v6: bool,
    ) -> Option<(SocketAddr, IpAddr)> {
        let server = match sock::original_dst(lan, v6) {
            Ok(d) if sock::local_addr(lan).is_ok_and(|l| l != d) => d,
            _ => {
                // Addressed to the proxy port itself, not redirected: relaying
                // it would loop.
                self.stats.refused_direct += 1;
                if self.refusal_logged(now) {
                    log::warn!("lan proxy: {peer} connected to the proxy port directly; closed");
                }
                return None;
            }
        };
        if let Some(why) = destination_refused(server.ip(), &self.settings.allow) {
            self.stats.refused_special += 1;
            if self.refusal_logged(now) {
                log::warn!("lan proxy: refused {peer} -> {server}: {why}");
            }
            return None;
        }
        let source = source_key(peer.ip());
        let (max, option) = if source.is_ipv4() {
            (self.settings.max_per_host, "max_conns_per_host")
        } else {
            (self.settings.max_per_prefix, "max_conns_per_prefix")
        };
        let n = self.per_host.get(&source).copied().unwrap_or(0);
        if n >= max {
            self.stats.refused_limit += 1;
            if self.refusal_logged(now) {
                log::warn!(
                    "lan proxy: refused {peer} -> {server}: {n} connections open from {source} ({option})"
                );
            }
            return None;
        }
        Some((server, source))
    }

    /// A free slot (a new one when none is), with its next generation.
    fn new_slot(&mut self) -> (usize, u32) {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { gen: 0, conn: None });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[idx];
        slot.gen = slot.gen.wrapping_add(1) & 0x3fff_ffff;
        (idx, slot.gen)
    }

    fn on_ready(&mut self, now: Instant, idx: usize, gen: u32, side: Side, flags: EpollFlags) {
        let Some(c) = self.conn_mut(idx, gen) else {
            return;
        };
        if !c.connected {
            if side == Side::Up && flags.intersects(ev::OUT | ev::ERR | ev::HUP) {
                self.finish_connect(now, idx, gen);
            } else if side == Side::Lan && flags.intersects(ev::ERR | ev::HUP) {
                // The LAN host gave up before the server answered.
                let c = self.slots[idx].conn.as_ref().expect("checked");
                sock::set_reset_on_close(&c.up);
                self.stats.resets += 1;
                self.remove(idx);
            }
            return;
        }
        self.pump(now, idx, gen);
    }

    fn finish_connect(&mut self, now: Instant, idx: usize, gen: u32) {
        let Some(c) = self.conn_mut(idx, gen) else {
            return;
        };
        match sock::take_error(&c.up) {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.raw_os_error() == Some(Errno::EINPROGRESS as i32)
                {
                    return;
                }
                if c.conv.is_some() {
                    return self.fail_open(now, idx, gen, &format!("connect: {e}"));
                }
                log::debug!("lan proxy: {} -> {}: {e}", c.lan_peer, c.server);
                sock::set_reset_on_close(&c.lan);
                self.stats.connect_failed += 1;
                self.remove(idx);
                return;
            }
        }
        c.connected = true;
        c.last = now;
        if let Some(cv) = c.conv.as_mut() {
            cv.deadline = now + convert::ANSWER_WITHIN;
            let d = (cv.deadline, idx, gen);
            self.conv_deadlines.push(d);
            return self.connected_to_converter(now, idx, gen);
        }
        if c.mptcp {
            let (server, local) = (c.server, c.local);
            match sock::mptcp_info(&c.up) {
                Ok(info) if info.fallback => {
                    log::info!(
                        "lan proxy: {server} does not speak MPTCP; connections to it use plain TCP for the next {} min",
                        FALLBACK_TTL.as_secs() / 60
                    );
                    self.stats.fell_back += 1;
                    self.fallback.record_fallback(now, server);
                }
                Ok(info) => {
                    self.fallback.record_mptcp(server);
                    self.events.push(RelayEvent::Connected {
                        local,
                        token: info.token,
                    });
                }
                Err(e) => log::debug!("lan proxy: MPTCP_INFO: {e}"),
            }
        }
        self.pump(now, idx, gen);
    }

    /// Moves what can move in both directions; closes the connection when it
    /// is finished or broken.
    fn pump(&mut self, now: Instant, idx: usize, gen: u32) {
        let c = match self.slots.get_mut(idx) {
            Some(Slot {
                gen: g,
                conn: Some(c),
            }) if *g == gen => c,
            _ => return,
        };
        if !c.connected {
            return;
        }
        if c.conv.is_some() && !self.converse(now, idx, gen) {
            return;
        }
        let c = match self.slots.get_mut(idx) {
            Some(Slot {
                gen: g,
                conn: Some(c),
            }) if *g == gen => c,
            _ => return,
        };
        let mut budget = TURN_BUDGET;
        let before = [c.dirs[0].bytes, c.dirs[1].bytes];
        let mut result = Ok(());
        if c.watch.is_some() || !c.pending.is_empty() {
            result = inspect(c, &mut self.scratch, &mut budget);
            if c.next_gate != c.gate && c.pending.is_empty() {
                c.gate = c.next_gate;
                log::debug!(
                    "lan proxy: {} -> {}: detour gate {}",
                    c.lan_peer,
                    c.server,
                    c.gate.describe()
                );
                self.events.push(RelayEvent::Gate {
                    local: c.local,
                    gate: c.gate,
                });
            }
        }
        if result.is_ok() && c.watch.is_none() && c.pending.is_empty() {
            result = splice_dir(c, 0, &mut budget);
        }
        if result.is_ok() {
            result = splice_dir(c, 1, &mut budget);
        }
        let moved = [
            c.dirs[0].bytes.wrapping_sub(before[0]),
            c.dirs[1].bytes.wrapping_sub(before[1]),
        ];
        if moved != [0, 0] {
            c.last = now;
        }
        self.stats.bytes_up = self.stats.bytes_up.wrapping_add(moved[0]);
        self.stats.bytes_down = self.stats.bytes_down.wrapping_add(moved[1]);
        let end = match result {
            Err(e) => Some(e),
            Ok(()) if c.dirs[0].done() && c.dirs[1].done() => Some(End::Done),
            Ok(()) => None,
        };
        match end {
            Some(End::Done) => self.remove(idx),
            Some(End::Failed(side, e)) => {
                log::debug!(
                    "lan proxy: {} -> {}: {} side: {e}; resetting the other",
                    c.lan_peer,
                    c.server,
                    if side == Side::Lan { "LAN" } else { "server" }
                );
                let other = if side == Side::Lan { &c.up } else { &c.lan };
                sock::set_reset_on_close(other);
                self.stats.resets += 1;
                self.remove(idx);
            }
            None if budget == 0 => self.again.push((idx, gen)),
            None => {}
        }
    }

    fn close_idle(&mut self, now: Instant) {
        let idle = self.settings.idle;
        for idx in 0..self.slots.len() {
            let Some(c) = self.slots[idx].conn.as_ref() else {
                continue;
            };
            if now.saturating_duration_since(c.last) >= idle {
                log::debug!(
                    "lan proxy: {} -> {}: idle for {}s; reset",
                    c.lan_peer,
                    c.server,
                    idle.as_secs()
                );
                sock::set_reset_on_close(&c.lan);
                sock::set_reset_on_close(&c.up);
                self.stats.resets += 1;
                self.remove(idx);
            }
        }
    }

    fn conn_mut(&mut self, idx: usize, gen: u32) -> Option<&mut Conn> {
        let slot = self.slots.get_mut(idx)?;
        if slot.gen != gen {
            return None;
        }
        slot.conn.as_mut()
    }

    /// Drops a connection (its descriptors close; epoll forgets them).
    fn remove(&mut self, idx: usize) {
        let Some(c) = self.slots[idx].conn.take() else {
            return;
        };
        self.free.push(idx);
        self.stats.active = self.stats.active.saturating_sub(1);
        let source = source_key(c.lan_peer.ip());
        if let Some(n) = self.per_host.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_host.remove(&source);
            }
        }
        if c.mptcp {
            self.events.push(RelayEvent::Closed { local: c.local });
        }
        if let (Some(i), Some(cv)) = (c.converter, self.converters.as_mut()) {
            cv.closed(i);
        }
        log::debug!(
            "lan proxy: {} -> {} closed after {} bytes up, {} down",
            c.lan_peer,
            c.server,
            c.dirs[0].bytes,
            c.dirs[1].bytes
        );
    }
}

fn scan_interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

fn tag(idx: usize, gen: u32, side: Side) -> u64 {
    (u64::from(gen) << 33) | ((idx as u64) << 1) | u64::from(side == Side::Up)
}

fn untag(data: u64) -> (usize, u32, Side) {
    let side = if data & 1 == 1 { Side::Up } else { Side::Lan };
    (
        ((data >> 1) & 0xffff_ffff) as usize,
        ((data >> 33) & 0x3fff_ffff) as u32,
        side,
    )
}

/// LAN → upstream while following the TLS handshake: read, look at the record
/// headers, write on. Stops reading while written bytes are pending.
fn inspect(c: &mut Conn, scratch: &mut [u8], budget: &mut usize) -> Result<(), End> {
    loop {
        while !c.pending.is_empty() {
            match sock::write(&c.up, &c.pending) {
                Ok(n) => {
                    c.pending.drain(..n);
                    c.dirs[0].bytes = c.dirs[0].bytes.wrapping_add(n as u64);
                    *budget = budget.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(End::Failed(Side::Up, e)),
            }
        }
        let Some(watch) = c.watch.as_mut() else {
            return Ok(());
        };
        if *budget == 0 {
            return Ok(());
        }
        match sock::read(&c.lan, scratch) {
            Ok(0) => {
                // EOF before a verdict: the splice path passes it on.
                c.watch = None;
                return Ok(());
            }
            Ok(n) => {
                let verdict = watch.feed(&scratch[..n]);
                c.next_gate = c.gate.after(verdict);
                if c.next_gate != Gate::Waiting {
                    c.watch = None;
                }
                c.pending.extend_from_slice(&scratch[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(End::Failed(Side::Lan, e)),
        }
    }
}

/// One direction with `splice`: source → pipe → destination, until neither
/// can move or the budget is spent; passes an EOF on once the pipe is empty.
fn splice_dir(c: &mut Conn, d: usize, budget: &mut usize) -> Result<(), End> {
    let (src, dst, src_side, dst_side) = if d == 0 {
        (&c.lan, &c.up, Side::Lan, Side::Up)
    } else {
        (&c.up, &c.lan, Side::Up, Side::Lan)
    };
    splice_one(src, dst, &mut c.dirs[d], budget)
        .map_err(|(at_src, e)| End::Failed(if at_src { src_side } else { dst_side }, e))
}

/// [`splice_dir`] for any two sockets (the converter's relay too); an
/// error says whether the source (`true`) or the destination failed.
pub(super) fn splice_one(
    src: &OwnedFd,
    dst: &OwnedFd,
    dir: &mut Dir,
    budget: &mut usize,
) -> Result<(), (bool, io::Error)> {
    if dir.pipe.is_none() && !dir.eof {
        let (r, w, cap) = sock::pipe().map_err(|e| (true, e))?;
        dir.pipe = Some((r, w));
        dir.cap = cap;
    }
    if let Some((r, w)) = dir.pipe.as_ref() {
        while *budget > 0 {
            let mut progress = false;
            if !dir.eof && dir.filled < dir.cap {
                match sock::splice(src, w, dir.cap - dir.filled) {
                    Ok(0) => {
                        dir.eof = true;
                        progress = true;
                    }
                    Ok(n) => {
                        dir.filled += n;
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err((true, e)),
                }
            }
            if dir.filled > 0 {
                match sock::splice(r, dst, dir.filled) {
                    Ok(n) => {
                        dir.filled -= n;
                        dir.bytes = dir.bytes.wrapping_add(n as u64);
                        *budget = budget.saturating_sub(n);
                        progress |= n > 0;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err((false, e)),
                }
            }
            if !progress {
                break;
            }
        }
    }
    if dir.eof && dir.filled == 0 && !dir.shut {
        dir.shut = true;
        match sock::shutdown_write(dst) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(Errno::ENOTCONN as i32) => {}
            Err(e) => return Err((false, e)),
        }
        // Nothing more will be read from this source: free the pipe.
        dir.pipe = None;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        for (idx, gen, side) in [
            (0, 1, Side::Lan),
            (7, 0x3fff_ffff, Side::Up),
            (65_535, 12, Side::Lan),
        ] {
            let t = tag(idx, gen, side);
            assert_eq!(t & LISTENER, 0);
            assert_eq!(untag(t), (idx, gen, side));
        }
    }
}
