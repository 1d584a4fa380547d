//! The converter's sockets (issue 17): an MPTCP listener with TCP Fast
//! Open, the Convert message read off each connection's start, plain TCP
//! to the server, the RFC 8803 answer, and the bytes moved with the LAN
//! relay's `splice` ([`super::relay::splice_one`]) on one edge-triggered
//! epoll set.
//!
//! Decisions are the pure [`Converter`]'s: this module reads and writes.
//! What it promises:
//! - it reads exactly the Convert message (its fixed header says how
//!   long), so the client's first application bytes stay in the socket
//!   and reach the server by `splice`;
//! - every refusal is answered with a Convert message carrying the Error
//!   TLV, then the connection is half-closed and drained (so the answer is
//!   not lost to a reset) for at most [`LINGER`];
//! - a client that does not finish its message within
//!   [`Timeouts::header`] is refused (Malformed Message), a server that
//!   does not answer within [`Timeouts::connect`] too (Destination
//!   Unreachable); both counted per source while they wait;
//! - at most [`ConvertSettings::max_conns`] connections at once; beyond
//!   it new ones are refused (Resource Exceeded) and closed;
//! - nothing is left in the kernel: dropping it closes every socket.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::EpollFlags;

use super::relay::{splice_one, Dir};
use super::sock::{self, ev, Epoll};
use super::SysError;
use crate::convert::wire::{self, ErrorCode, Message, WireError};
use crate::convert::{Admitted, Converter, Refusal};
use crate::trust::MemberId;

/// How long a refused connection is drained after the answer.
pub const LINGER: Duration = Duration::from_secs(2);
/// Most bytes one connection moves per turn before others get theirs.
const TURN_BUDGET: usize = 512 * 1024;
/// epoll data of the listeners.
const LISTENER: u64 = 1 << 63;
/// Connections waiting in the kernel's TCP Fast Open queue.
const FASTOPEN_QUEUE: i32 = 256;

/// Deadlines of a connection's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// For the whole Convert message to arrive.
    pub header: Duration,
    /// For the server to answer the connect.
    pub connect: Duration,
    /// A conversion with no bytes moving for this long is reset.
    pub idle: Duration,
}

/// How the converter's sockets behave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertSettings {
    /// Listening port (MPTCP, IPv4 and IPv6, every address).
    pub port: u16,
    /// Most connections at once (all sources).
    pub max_conns: u32,
    /// The deadlines.
    pub timeouts: Timeouts,
}

/// What happened to a connection, for the driver's log, evidence and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvertEvent {
    /// The server answered: bytes move from now on.
    Started {
        /// The client's address.
        from: SocketAddr,
        /// What was admitted.
        admitted: Admitted,
    },
    /// Refused, answered with the Error TLV.
    Refused {
        /// The client's address.
        from: SocketAddr,
        /// Why.
        refusal: Refusal,
    },
    /// A conversion is over.
    Ended {
        /// The client's address.
        from: SocketAddr,
        /// What was admitted.
        admitted: Admitted,
        /// Bytes client → server.
        up: u64,
        /// Bytes server → client.
        down: u64,
        /// Why it ended.
        why: String,
    },
}

/// A running conversion, for `dcol status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    /// The client's address.
    pub from: SocketAddr,
    /// The member's name.
    pub member: String,
    /// The server.
    pub destination: SocketAddr,
    /// Bytes client → server, server → client.
    pub bytes: [u64; 2],
    /// Since when.
    pub since: Instant,
}

enum Phase {
    /// Reading the Convert message.
    Header(Vec<u8>),
    /// Waiting for the server.
    Connecting(OwnedFd, Admitted),
    /// Moving bytes: client → server, server → client.
    Relaying(OwnedFd, Admitted, Box<[Dir; 2]>),
    /// Refused and answered: reading until EOF.
    Closing,
}

struct Conn {
    client: OwnedFd,
    from: SocketAddr,
    phase: Phase,
    /// When the phase ends (header, connect, linger), or None.
    deadline: Option<Instant>,
    /// Counted against its source in the [`Converter`].
    counted: bool,
    last: Instant,
    since: Instant,
}

/// The converter's listeners and connections.
pub struct ConvertServer {
    settings: ConvertSettings,
    epoll: Epoll,
    listeners: Vec<TcpListener>,
    conns: Vec<Option<Conn>>,
    gens: Vec<u32>,
    free: Vec<usize>,
    active: u32,
    events: Vec<ConvertEvent>,
    again: Vec<usize>,
}

fn tag(idx: usize, gen: u32, server: bool) -> u64 {
    (u64::from(gen) << 32) | ((idx as u64) << 1) | u64::from(server)
}

fn untag(t: u64) -> (usize, u32, bool) {
    (
        ((t & 0xffff_ffff) >> 1) as usize,
        (t >> 32) as u32 & 0x7fff_ffff,
        t & 1 == 1,
    )
}

/// A Convert message with no TLV: the conversion is on (RFC 8803 §4).
pub fn accepted_message() -> Vec<u8> {
    wire::encode(&Message::default())
}

impl ConvertServer {
    /// Listens on `0.0.0.0:port` and, where the host has IPv6, `[::]:port`.
    pub fn open(settings: ConvertSettings) -> Result<ConvertServer, SysError> {
        let epoll = Epoll::new().map_err(|e| SysError::io("converter: epoll_create", e))?;
        let mut listeners = Vec::new();
        let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), settings.port);
        let l = sock::mptcp_listener(v4, 1024, FASTOPEN_QUEUE)
            .map_err(|e| SysError::io("converter: listen on IPv4 (MPTCP)", e))?;
        listeners.push(l);
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), settings.port);
        match sock::mptcp_listener(v6, 1024, FASTOPEN_QUEUE) {
            Ok(l) => listeners.push(l),
            Err(e) => log::info!("converter: no IPv6 listener ({e})"),
        }
        for (i, l) in listeners.iter().enumerate() {
            epoll
                .add(l, ev::IN | ev::ET, LISTENER | i as u64)
                .map_err(|e| SysError::io("converter: epoll_ctl", e))?;
        }
        Ok(ConvertServer {
            settings,
            epoll,
            listeners,
            conns: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            active: 0,
            events: Vec::new(),
            again: Vec::new(),
        })
    }

    /// New limits and deadlines (the port stays: open a new server).
    pub fn set_settings(&mut self, settings: ConvertSettings) {
        self.settings = settings;
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.fd()
    }

    /// The earliest phase deadline or idle scan.
    pub fn next_timeout(&self) -> Option<Instant> {
        if !self.again.is_empty() {
            return Some(Instant::now());
        }
        let idle = self.settings.timeouts.idle;
        self.conns
            .iter()
            .flatten()
            .map(|c| c.deadline.unwrap_or(c.last + idle))
            .min()
    }

    /// The running conversions.
    pub fn conversions(&self) -> Vec<Conversion> {
        let mut v = Vec::new();
        for c in self.conns.iter().flatten() {
            if let Phase::Relaying(_, a, dirs) = &c.phase {
                v.push(Conversion {
                    from: c.from,
                    member: a.name.clone(),
                    destination: a.destination,
                    bytes: [dirs[0].bytes, dirs[1].bytes],
                    since: c.since,
                });
            }
        }
        v
    }

    /// The members with a conversion open or connecting.
    pub fn members(&self) -> Vec<MemberId> {
        let mut v: Vec<MemberId> = self
            .conns
            .iter()
            .flatten()
            .filter_map(|c| match &c.phase {
                Phase::Relaying(_, a, _) | Phase::Connecting(_, a) => Some(a.member),
                _ => None,
            })
            .collect();
        v.sort_unstable_by_key(|m| m.0);
        v.dedup();
        v
    }

    /// Does what is ready and due; returns what happened.
    pub fn step(&mut self, now: Instant, wall_ms: u64, core: &mut Converter) -> Vec<ConvertEvent> {
        let mut ready = Vec::new();
        if let Err(e) = self.epoll.ready(&mut ready, 256) {
            log::warn!("converter: epoll_wait: {e}");
        }
        for (flags, data) in ready {
            if data & LISTENER != 0 {
                self.accept_all(now, (data & !LISTENER) as usize, core);
                continue;
            }
            let (idx, gen, server) = untag(data);
            if self.gens.get(idx) == Some(&gen) {
                self.on_ready(now, wall_ms, idx, server, flags, core);
            }
        }
        for idx in std::mem::take(&mut self.again) {
            self.pump(now, idx, core);
        }
        self.expire(now, core);
        std::mem::take(&mut self.events)
    }

    /// Resets the conversions of `member` (revoked).
    pub fn end_member(&mut self, member: &MemberId, core: &mut Converter) {
        for idx in 0..self.conns.len() {
            let of = match self.conns[idx].as_ref().map(|c| &c.phase) {
                Some(Phase::Relaying(_, a, _) | Phase::Connecting(_, a)) => a.member == *member,
                _ => false,
            };
            if of {
                self.reset(idx, "member revoked", core);
            }
        }
    }

    /// Resets every connection (shutdown, reload); returns the last events.
    pub fn close_all(&mut self, core: &mut Converter) -> Vec<ConvertEvent> {
        for idx in 0..self.conns.len() {
            if self.conns[idx].is_some() {
                self.reset(idx, "converter stopped", core);
            }
        }
        std::mem::take(&mut self.events)
    }

    fn accept_all(&mut self, now: Instant, i: usize, core: &mut Converter) {
        loop {
            let (fd, from) = match sock::accept(&self.listeners[i]) {
                Ok(Some(x)) => x,
                Ok(None) => return,
                Err(e) => {
                    log::warn!("converter: accept: {e}");
                    return;
                }
            };
            let idx = self.slot();
            let gen = self.gens[idx];
            let mut c = Conn {
                client: fd,
                from,
                phase: Phase::Header(Vec::new()),
                deadline: Some(now + self.settings.timeouts.header),
                counted: false,
                last: now,
                since: now,
            };
            let flags = ev::IN | ev::OUT | ev::RDHUP | ev::ET;
            if let Err(e) = self.epoll.add(&c.client, flags, tag(idx, gen, false)) {
                log::warn!("converter: epoll_ctl: {e}");
                self.free.push(idx);
                continue;
            }
            let full = self.active >= self.settings.max_conns;
            let refusal = if full {
                let why = format!("{} connections open (all sources)", self.active);
                Err(Refusal {
                    code: ErrorCode::RESOURCE_EXCEEDED,
                    value: None,
                    why,
                    member: None,
                })
            } else {
                core.open(from.ip())
            };
            c.counted = refusal.is_ok();
            self.active += 1;
            self.conns[idx] = Some(c);
            if let Err(r) = refusal {
                self.refuse(now, idx, r, core);
            }
        }
    }

    fn slot(&mut self) -> usize {
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.gens.push(0);
            self.conns.len() - 1
        });
        self.gens[idx] = self.gens[idx].wrapping_add(1) & 0x7fff_ffff;
        idx
    }

    fn on_ready(
        &mut self,
        now: Instant,
        wall_ms: u64,
        idx: usize,
        server: bool,
        flags: EpollFlags,
        core: &mut Converter,
    ) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        match &c.phase {
            Phase::Header(_) if !server => self.read_header(now, wall_ms, idx, core),
            Phase::Connecting(..) if server && flags.intersects(ev::OUT | ev::ERR | ev::HUP) => {
                self.connected(now, idx, core)
            }
            Phase::Connecting(..) if !server && flags.intersects(ev::ERR | ev::HUP) => {
                self.reset(idx, "client gave up", core)
            }
            Phase::Relaying(..) => self.pump(now, idx, core),
            Phase::Closing => self.drain(idx, core),
            _ => {}
        }
    }

    /// Reads exactly the Convert message, then asks the core.
    fn read_header(&mut self, now: Instant, wall_ms: u64, idx: usize, core: &mut Converter) {
        let c = self.conns[idx].as_mut().expect("caller checked");
        let Phase::Header(buf) = &mut c.phase else {
            return;
        };
        let parsed = loop {
            let need = match wire::message_len(buf) {
                Ok(Some(n)) if buf.len() >= n => break wire::parse(buf).map(|(m, _)| m),
                Ok(Some(n)) => n,
                Ok(None) => 2,
                Err(e) => break Err(e),
            };
            let mut chunk = vec![0u8; need - buf.len()];
            match sock::read(&c.client, &mut chunk) {
                Ok(0) => {
                    let have = buf.len();
                    break Err(WireError::Truncated { need, have });
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return self.reset(idx, &format!("reading its header: {e}"), core),
            }
        };
        let from = c.from;
        match core.admit(now, wall_ms, from.ip(), parsed.as_ref()) {
            Ok(a) => self.connect(now, idx, a, core),
            Err(r) => self.refuse(now, idx, r, core),
        }
    }

    fn connect(&mut self, now: Instant, idx: usize, a: Admitted, core: &mut Converter) {
        let gen = self.gens[idx];
        let dest = a.destination;
        let timeout = self.settings.timeouts.connect;
        let c = self.conns[idx].as_mut().expect("caller checked");
        let member = a.member;
        let up = match sock::connect(dest, false) {
            Ok((fd, _)) => fd,
            Err(e) => {
                core.close_member(member);
                let r = refusal(connect_error(e.raw_os_error()), format!("{dest}: {e}"), &a);
                return self.refuse(now, idx, r, core);
            }
        };
        let flags = ev::IN | ev::OUT | ev::RDHUP | ev::ET;
        if let Err(e) = self.epoll.add(&up, flags, tag(idx, gen, true)) {
            core.close_member(member);
            let r = refusal(ErrorCode::NETWORK_FAILURE, format!("epoll_ctl: {e}"), &a);
            return self.refuse(now, idx, r, core);
        }
        c.deadline = Some(now + timeout);
        c.phase = Phase::Connecting(up, a);
    }

    /// The server answered the connect (or failed).
    fn connected(&mut self, now: Instant, idx: usize, core: &mut Converter) {
        let c = self.conns[idx].as_mut().expect("caller checked");
        let Phase::Connecting(up, a) = std::mem::replace(&mut c.phase, Phase::Closing) else {
            return;
        };
        let failed = match sock::take_error(&up) {
            Ok(None) => None,
            Ok(Some(e)) | Err(e) => Some(e),
        };
        if let Some(e) = failed {
            if e.raw_os_error() == Some(Errno::EINPROGRESS as i32) {
                c.phase = Phase::Connecting(up, a);
                return;
            }
            core.close_member(a.member);
            let dest = a.destination;
            let r = refusal(connect_error(e.raw_os_error()), format!("{dest}: {e}"), &a);
            return self.refuse(now, idx, r, core);
        }
        if let Err(e) = sock::write(&c.client, &accepted_message()) {
            log::debug!("converter: {}: answer: {e}", c.from);
            c.phase = Phase::Connecting(up, a);
            return self.reset(idx, "client gone before the answer", core);
        }
        c.deadline = None;
        c.last = now;
        c.since = now;
        self.events.push(ConvertEvent::Started {
            from: c.from,
            admitted: a.clone(),
        });
        c.phase = Phase::Relaying(up, a, Box::new([Dir::new(), Dir::new()]));
        self.pump(now, idx, core);
    }

    fn pump(&mut self, now: Instant, idx: usize, core: &mut Converter) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        let Phase::Relaying(up, _, dirs) = &mut c.phase else {
            return;
        };
        let mut budget = TURN_BUDGET;
        let before = dirs[0].bytes + dirs[1].bytes;
        let [to_server, to_client] = &mut **dirs;
        let mut r = splice_one(&c.client, up, to_server, &mut budget);
        if r.is_ok() {
            r = splice_one(up, &c.client, to_client, &mut budget);
        }
        if dirs[0].bytes + dirs[1].bytes != before {
            c.last = now;
        }
        match r {
            Err((_, e)) => self.reset(idx, &format!("relay: {e}"), core),
            Ok(()) if dirs[0].done() && dirs[1].done() => self.finish(idx, "closed", core),
            Ok(()) if budget == 0 => self.again.push(idx),
            Ok(()) => {}
        }
    }

    /// Answers `r` with its Error TLV, half-closes and drains.
    fn refuse(&mut self, now: Instant, idx: usize, r: Refusal, core: &mut Converter) {
        let c = self.conns[idx].as_mut().expect("caller checked");
        let msg = wire::encode(&r.message());
        if let Err(e) = sock::write(&c.client, &msg).and_then(|_| sock::shutdown_write(&c.client)) {
            log::debug!("converter: {}: refusal: {e}", c.from);
        }
        self.events.push(ConvertEvent::Refused {
            from: c.from,
            refusal: r,
        });
        c.phase = Phase::Closing;
        c.deadline = Some(now + LINGER);
        self.drain(idx, core);
    }

    /// Reads a refused connection until its EOF, then closes it.
    fn drain(&mut self, idx: usize, core: &mut Converter) {
        let c = self.conns[idx].as_mut().expect("caller checked");
        let mut scratch = [0u8; 4096];
        loop {
            match sock::read(&c.client, &mut scratch) {
                Ok(0) => return self.remove(idx, core),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.remove(idx, core),
            }
        }
    }

    /// Phase deadlines and idle conversions.
    fn expire(&mut self, now: Instant, core: &mut Converter) {
        let idle = self.settings.timeouts.idle;
        for idx in 0..self.conns.len() {
            let Some(c) = self.conns[idx].as_ref() else {
                continue;
            };
            match (&c.phase, c.deadline) {
                (Phase::Header(b), Some(t)) if t <= now => {
                    let have = b.len();
                    let why = format!(
                        "no complete Convert message after {have} bytes and {:?}",
                        self.settings.timeouts.header
                    );
                    let r = Refusal {
                        code: ErrorCode::MALFORMED_MESSAGE,
                        value: None,
                        why,
                        member: None,
                    };
                    self.refuse(now, idx, r, core);
                }
                (Phase::Connecting(_, a), Some(t)) if t <= now => {
                    let a = a.clone();
                    core.close_member(a.member);
                    let why = format!(
                        "{}: no answer within {:?}",
                        a.destination, self.settings.timeouts.connect
                    );
                    let r = refusal(ErrorCode::DESTINATION_UNREACHABLE, why, &a);
                    self.refuse(now, idx, r, core);
                }
                (Phase::Closing, Some(t)) if t <= now => self.remove(idx, core),
                (Phase::Relaying(..), _) if now.saturating_duration_since(c.last) >= idle => {
                    self.reset(idx, "idle", core)
                }
                _ => {}
            }
        }
    }

    /// Ends a connection with resets on both sides.
    fn reset(&mut self, idx: usize, why: &str, core: &mut Converter) {
        if let Some(c) = self.conns[idx].as_ref() {
            sock::set_reset_on_close(&c.client);
            if let Phase::Relaying(up, ..) | Phase::Connecting(up, _) = &c.phase {
                sock::set_reset_on_close(up);
            }
        }
        self.finish(idx, why, core);
    }

    /// Reports the end of a conversion and removes it.
    fn finish(&mut self, idx: usize, why: &str, core: &mut Converter) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        match std::mem::replace(&mut c.phase, Phase::Closing) {
            Phase::Relaying(_, a, dirs) => {
                core.close_member(a.member);
                self.events.push(ConvertEvent::Ended {
                    from: c.from,
                    admitted: a,
                    up: dirs[0].bytes,
                    down: dirs[1].bytes,
                    why: why.to_owned(),
                });
            }
            Phase::Connecting(_, a) => core.close_member(a.member),
            _ => {}
        }
        self.remove(idx, core);
    }

    fn remove(&mut self, idx: usize, core: &mut Converter) {
        if let Some(c) = self.conns[idx].take() {
            if c.counted {
                core.close(c.from.ip(), None);
            }
            self.active = self.active.saturating_sub(1);
            self.free.push(idx);
        }
    }
}

/// The RFC 8803 error for a failed connect to the server.
pub fn connect_error(errno: Option<i32>) -> ErrorCode {
    match errno.map(Errno::from_raw) {
        Some(Errno::ECONNREFUSED | Errno::ECONNRESET) => ErrorCode::CONNECTION_RESET,
        Some(Errno::ETIMEDOUT | Errno::EHOSTUNREACH | Errno::ENETUNREACH | Errno::EHOSTDOWN)
        | None => ErrorCode::DESTINATION_UNREACHABLE,
        Some(_) => ErrorCode::NETWORK_FAILURE,
    }
}

/// A refusal after admission (the member is known).
fn refusal(code: ErrorCode, why: String, a: &Admitted) -> Refusal {
    Refusal {
        code,
        value: None,
        why,
        member: Some(a.name.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        for (idx, gen, server) in [(0, 1, false), (7, 0x7fff_ffff, true), (65_535, 12, false)] {
            let t = tag(idx, gen, server);
            assert_eq!(t & LISTENER, 0);
            assert_eq!(untag(t), (idx, gen, server));
        }
        assert_eq!(accepted_message(), [1, 1, 0, 0]);
    }

    #[test]
    fn connect_errors_map_to_rfc_codes() {
        let code = |e: Errno| connect_error(Some(e as i32));
        assert_eq!(code(Errno::ECONNREFUSED), ErrorCode::CONNECTION_RESET);
        assert_eq!(code(Errno::ETIMEDOUT), ErrorCode::DESTINATION_UNREACHABLE);
        assert_eq!(connect_error(None), ErrorCode::DESTINATION_UNREACHABLE);
        assert_eq!(code(Errno::ENOBUFS), ErrorCode::NETWORK_FAILURE);
    }
}
