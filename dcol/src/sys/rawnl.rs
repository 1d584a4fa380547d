//! The hand-written netlink layer on `libc` sockets, going away (issue 15):
//! what `nft`, `conntrack`, `vpnfw`, `lan`, `rtnl` and `diag` use until each
//! moves onto neli ([`super::netlink`]) or rtnetlink.
//!
//! It does:
//! - open, bind and configure `AF_NETLINK` sockets ([`NlSocket`]) for any protocol
//!   (`NETLINK_GENERIC`, `NETLINK_NETFILTER`), with `NETLINK_EXT_ACK` on so that
//!   errors carry the kernel's extended-ack text;
//! - build messages ([`MsgBuilder`]: header, family header bytes, attributes,
//!   nested attributes with `NLA_F_NESTED`, 4-byte alignment);
//! - parse replies without copying ([`Messages`], [`Attrs`]); malformed input gives
//!   [`SysError::Malformed`], never a panic;
//! - request/ack, dump and nfnetlink-batch exchanges, matched by sequence number.
//!
//! It does not know any family's attributes (those live in the modules using it),
//! does not spawn threads and never blocks on a socket set non-blocking.
//!
//! Byte order: netlink header and most attribute fields are host order
//! (`to_ne_bytes`/`from_ne_bytes`); fields the kernel defines as network order
//! (`be16`, `be32`, `be64`) use `to_be_bytes`/`from_be_bytes` explicitly. Structures
//! are never transmuted, so the code is the same on big-endian MIPS.
//!
//! This is one of the two modules allowed `unsafe` (with `os`): every block wraps
//! one system call and states why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::SysError;

// linux/netlink.h
/// `NLMSG_HDRLEN`: size of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// `NLA_HDRLEN`: size of `struct nlattr`.
pub const NLA_HDRLEN: usize = 4;
/// `NLMSG_NOOP`.
pub const NLMSG_NOOP: u16 = 0x1;
/// `NLMSG_ERROR`: an error or an acknowledgement.
pub const NLMSG_ERROR: u16 = 0x2;
/// `NLMSG_DONE`: end of a dump.
pub const NLMSG_DONE: u16 = 0x3;
/// `NLMSG_OVERRUN`.
pub const NLMSG_OVERRUN: u16 = 0x4;
/// `NLMSG_MIN_TYPE`: first type not reserved for control messages.
pub const NLMSG_MIN_TYPE: u16 = 0x10;
/// `NLM_F_REQUEST`.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_MULTI`.
pub const NLM_F_MULTI: u16 = 0x2;
/// `NLM_F_ACK`.
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_DUMP_INTR`: the dump was inconsistent (the table changed meanwhile).
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`).
pub const NLM_F_DUMP: u16 = 0x300;
/// `NLM_F_EXCL` (for NEW requests).
pub const NLM_F_EXCL: u16 = 0x200;
/// `NLM_F_CREATE` (for NEW requests).
pub const NLM_F_CREATE: u16 = 0x400;
/// `NLM_F_CAPPED` (in `NLMSG_ERROR`): the echoed request is only its header.
const NLM_F_CAPPED: u16 = 0x100;
/// `NLM_F_ACK_TLVS` (in `NLMSG_ERROR`): extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLA_F_NESTED`.
pub const NLA_F_NESTED: u16 = 0x8000;
/// `NLA_F_NET_BYTEORDER`.
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
/// `NLA_TYPE_MASK`.
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);
/// `SOL_NETLINK`.
const SOL_NETLINK: libc::c_int = 0x10e;
/// `NETLINK_ADD_MEMBERSHIP`.
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 0x1;
/// `NETLINK_CAP_ACK`: errors echo only the request's header.
const NETLINK_CAP_ACK: libc::c_int = 0xa;
/// `NETLINK_EXT_ACK`: errors carry `NLMSGERR_ATTR_*` attributes.
const NETLINK_EXT_ACK: libc::c_int = 0xb;
/// `NLMSGERR_ATTR_MSG`: the extended-ack text.
const NLMSGERR_ATTR_MSG: u16 = 0x1;

/// `NETLINK_NETFILTER` (linux/netlink.h).
pub const NETLINK_NETFILTER: i32 = 0xc;
/// `NETLINK_GENERIC` (linux/netlink.h).
pub const NETLINK_GENERIC: i32 = 0x10;

/// Receive buffer size: larger than any datagram the kernel builds for a dump
/// (it caps those at 32 KiB plus headers).
const RECV_BUF: usize = 64 * 1024;
/// How long a blocking exchange waits for the kernel before giving up.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn malformed(op: &'static str, what: impl Into<String>) -> SysError {
    SysError::Malformed {
        op,
        what: what.into(),
    }
}

fn last_err(op: &'static str) -> SysError {
    SysError::io(op, io::Error::last_os_error())
}

/// An `AF_NETLINK` socket bound to a kernel-assigned port id.
#[derive(Debug)]
pub struct NlSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    /// Opens a blocking socket for `protocol` (e.g. [`NETLINK_GENERIC`]) with
    /// extended acks on and a receive timeout, so that an exchange never hangs.
    pub fn open(protocol: i32) -> Result<Self, SysError> {
        let op = "netlink socket";
        // SAFETY: socket() has no memory preconditions; on success we own the fd.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) {
                return Err(SysError::Unsupported(format!(
                    "netlink protocol {protocol} is not supported by this kernel"
                )));
            }
            return Err(SysError::io(op, e));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sa is a valid sockaddr_nl of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(last_err("netlink bind"));
        }
        let sock = NlSocket {
            fd,
            seq: initial_seq(),
            buf: vec![0; RECV_BUF],
        };
        // Kernels before 4.12 lack extended acks; errors then come without text.
        if let Err(e) = sock.setsockopt_int(
            SOL_NETLINK,
            NETLINK_EXT_ACK,
            1,
            "setsockopt NETLINK_EXT_ACK",
        ) {
            log::debug!("{e}");
        }
        // Best effort: without CAP_ACK errors echo the whole request, which we skip anyway.
        let _ = sock.setsockopt_int(
            SOL_NETLINK,
            NETLINK_CAP_ACK,
            1,
            "setsockopt NETLINK_CAP_ACK",
        );
        sock.set_recv_timeout(Some(EXCHANGE_TIMEOUT))?;
        Ok(sock)
    }

    /// The descriptor, for `poll`.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Switches `O_NONBLOCK` on or off.
    pub fn set_nonblocking(&self, on: bool) -> Result<(), SysError> {
        // SAFETY: fcntl F_GETFL/F_SETFL on a descriptor we own; no pointers.
        let flags = unsafe { libc::fcntl(self.fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(last_err("fcntl F_GETFL"));
        }
        let new = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: as above.
        if unsafe { libc::fcntl(self.fd(), libc::F_SETFL, new) } < 0 {
            return Err(last_err("fcntl F_SETFL"));
        }
        Ok(())
    }

    /// Sets `SO_RCVTIMEO` (`None`: wait forever).
    pub fn set_recv_timeout(&self, t: Option<Duration>) -> Result<(), SysError> {
        let t = t.unwrap_or(Duration::ZERO);
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
            // Below 1_000_000: fits every target's suseconds_t (i32 on 32-bit MIPS).
            tv_usec: t.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: the option value points to a live timeval of the size passed.
        let r = unsafe {
            libc::setsockopt(
                self.fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(last_err("setsockopt SO_RCVTIMEO"));
        }
        Ok(())
    }

    /// Joins multicast group `group` (a generic netlink group id or an nfnetlink
    /// group number).
    pub fn add_membership(&self, group: u32) -> Result<(), SysError> {
        let g = libc::c_int::try_from(group).map_err(|_| {
            SysError::io(
                "netlink add membership",
                io::Error::from(io::ErrorKind::InvalidInput),
            )
        })?;
        self.setsockopt_int(
            SOL_NETLINK,
            NETLINK_ADD_MEMBERSHIP,
            g,
            "setsockopt NETLINK_ADD_MEMBERSHIP",
        )
    }

    /// Sets `SO_RCVBUF` (the kernel doubles it); a larger buffer makes
    /// event-group overflows (`ENOBUFS`) rarer.
    pub fn set_recv_buffer(&self, bytes: usize) -> Result<(), SysError> {
        let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        self.setsockopt_int(libc::SOL_SOCKET, libc::SO_RCVBUF, v, "setsockopt SO_RCVBUF")
    }

    fn setsockopt_int(
        &self,
        level: libc::c_int,
        name: libc::c_int,
        v: libc::c_int,
        op: &'static str,
    ) -> Result<(), SysError> {
        // SAFETY: the option value points to a live c_int of the size passed.
        let r = unsafe {
            libc::setsockopt(
                self.fd(),
                level,
                name,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(last_err(op));
        }
        Ok(())
    }

    /// The next sequence number (wraps; 0 is skipped because events use it).
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    /// Sends `bytes` (one or more complete messages) to the kernel.
    pub fn send(&self, op: &'static str, bytes: &[u8]) -> Result<(), SysError> {
        // SAFETY: sockaddr_nl is plain data; all-zero (pid 0) addresses the kernel.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: bytes is a live slice of the length passed; sa is a valid
            // sockaddr_nl of the size passed.
            let n = unsafe {
                libc::sendto(
                    self.fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    (&sa as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(SysError::io(op, e));
            }
            if n as usize != bytes.len() {
                return Err(SysError::io(
                    op,
                    io::Error::new(io::ErrorKind::WriteZero, "short netlink send"),
                ));
            }
            return Ok(());
        }
    }

    /// Receives one datagram into the socket's buffer and returns it. Errors
    /// keep their `io::Error` (`WouldBlock`, `ENOBUFS`, timeouts) for the caller
    /// to judge. A datagram larger than the buffer is an error.
    pub fn recv(&mut self) -> io::Result<&[u8]> {
        loop {
            // SAFETY: buf is a live, exclusively borrowed buffer of the length passed.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n > self.buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "netlink datagram truncated",
                ));
            }
            return Ok(&self.buf[..n]);
        }
    }

    /// Sends `msg` with `NLM_F_REQUEST | NLM_F_ACK` and waits for its
    /// acknowledgement; replies that arrive before the ack (e.g. a GET's answer)
    /// are handed to `on_reply`. An error ack becomes [`SysError::Netlink`].
    pub fn request(
        &mut self,
        op: &'static str,
        mut msg: MsgBuilder,
        mut on_reply: impl FnMut(&Msg<'_>) -> Result<(), SysError>,
    ) -> Result<(), SysError> {
        let seq = self.next_seq();
        msg.set_seq(seq);
        msg.add_flags(NLM_F_REQUEST | NLM_F_ACK);
        let bytes = msg.finish(op)?;
        self.exchange(op, &bytes, &[seq], &[seq], &mut on_reply)
    }

    /// Sends `msg` as a dump request (`NLM_F_REQUEST | NLM_F_DUMP`) and hands
    /// every reply message to `on_reply` until `NLMSG_DONE`. An interrupted dump
    /// (`NLM_F_DUMP_INTR`, the table changed meanwhile) is reported as `EINTR`
    /// after all its messages were delivered; callers may retry.
    pub fn dump(
        &mut self,
        op: &'static str,
        mut msg: MsgBuilder,
        mut on_reply: impl FnMut(&Msg<'_>) -> Result<(), SysError>,
    ) -> Result<(), SysError> {
        let seq = self.next_seq();
        msg.set_seq(seq);
        msg.add_flags(NLM_F_REQUEST | NLM_F_DUMP);
        let bytes = msg.finish(op)?;
        let mut interrupted = false;
        self.exchange(op, &bytes, &[seq], &[seq], &mut |m: &Msg<'_>| {
            interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
            on_reply(m)
        })?;
        if interrupted {
            return Err(SysError::Netlink {
                op,
                errno: libc::EINTR,
                extack: Some("dump interrupted".into()),
            });
        }
        Ok(())
    }

    /// Sends an nfnetlink batch: `BATCH_BEGIN`, `msgs` (each gets
    /// `NLM_F_REQUEST | NLM_F_ACK` and its own sequence number), `BATCH_END`,
    /// all in one datagram, and waits for every message's ack. The kernel applies
    /// the batch atomically; the first error is returned.
    pub fn batch(
        &mut self,
        op: &'static str,
        subsys: u8,
        msgs: Vec<MsgBuilder>,
    ) -> Result<(), SysError> {
        let mut bytes = Vec::new();
        let mut all = Vec::with_capacity(msgs.len() + 2);
        let mut acked = Vec::with_capacity(msgs.len());
        let begin_seq = self.next_seq();
        bytes.extend(batch_marker(NFNL_MSG_BATCH_BEGIN, begin_seq, subsys));
        all.push(begin_seq);
        for mut m in msgs {
            let seq = self.next_seq();
            m.set_seq(seq);
            m.add_flags(NLM_F_REQUEST | NLM_F_ACK);
            bytes.extend(m.finish(op)?);
            all.push(seq);
            acked.push(seq);
        }
        let end_seq = self.next_seq();
        bytes.extend(batch_marker(NFNL_MSG_BATCH_END, end_seq, subsys));
        all.push(end_seq);
        self.exchange(op, &bytes, &all, &acked, &mut |_| Ok(()))
    }

    /// Sends `bytes` and reads until every sequence number in `wait` was
    /// answered by an ack or `NLMSG_DONE`. Messages for sequence numbers outside
    /// `ours` are stale and skipped; an error for any of `ours` ends the exchange.
    fn exchange(
        &mut self,
        op: &'static str,
        bytes: &[u8],
        ours: &[u32],
        wait: &[u32],
        on_reply: &mut dyn FnMut(&Msg<'_>) -> Result<(), SysError>,
    ) -> Result<(), SysError> {
        self.send(op, bytes)?;
        let mut pending: Vec<u32> = wait.to_vec();
        while !pending.is_empty() {
            let data = self.recv().map_err(|e| SysError::io(op, e))?;
            for m in Messages::new(op, data) {
                let m = m?;
                if !ours.contains(&m.seq) {
                    continue;
                }
                match m.ty {
                    NLMSG_ERROR => {
                        let (errno, extack) = parse_error(op, &m)?;
                        if errno != 0 {
                            return Err(SysError::Netlink { op, errno, extack });
                        }
                        pending.retain(|&s| s != m.seq);
                    }
                    NLMSG_DONE => {
                        // The payload is an int: a negative errno if the dump failed.
                        if let Some(b) = m.payload.get(..4) {
                            let e = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                            if e < 0 {
                                return Err(SysError::Netlink {
                                    op,
                                    errno: e.wrapping_neg(),
                                    extack: None,
                                });
                            }
                        }
                        pending.retain(|&s| s != m.seq);
                    }
                    NLMSG_NOOP | NLMSG_OVERRUN => {}
                    _ => on_reply(&m)?,
                }
            }
        }
        Ok(())
    }
}

/// A sequence-number start that differs between sockets and runs, so that stale
/// replies of an earlier socket are never mistaken for ours.
fn initial_seq() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(16)
}

/// `NFNL_MSG_BATCH_BEGIN` (linux/netfilter/nfnetlink.h, `NLMSG_MIN_TYPE`).
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`.
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
/// `NFNETLINK_V0`: the only nfnetlink version.
pub const NFNETLINK_V0: u8 = 0x0;

/// The 4-byte `struct nfgenmsg`: family, version, resource id (big-endian).
pub fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, NFNETLINK_V0, r[0], r[1]]
}

fn batch_marker(ty: u16, seq: u32, subsys: u8) -> Vec<u8> {
    let mut m = MsgBuilder::new(ty, NLM_F_REQUEST);
    m.set_seq(seq);
    m.push_header(&nfgenmsg(libc::AF_UNSPEC as u8, u16::from(subsys)));
    // A bare header and 4 bytes never overflow.
    m.finish("nfnetlink batch").unwrap_or_default()
}

/// Parses an `NLMSG_ERROR` payload: positive errno (0 for an ack) and the
/// extended-ack message, if any.
fn parse_error(op: &'static str, m: &Msg<'_>) -> Result<(i32, Option<String>), SysError> {
    let p = m.payload;
    let Some(e) = p.get(..4) else {
        return Err(malformed(op, "short NLMSG_ERROR"));
    };
    let err = i32::from_ne_bytes([e[0], e[1], e[2], e[3]]);
    let errno = err.wrapping_neg();
    if m.flags & NLM_F_ACK_TLVS == 0 {
        return Ok((errno, None));
    }
    // The echoed request: its header only when capped, else the whole message.
    let orig = p.get(4..).unwrap_or_default();
    let orig_len = if m.flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        match orig.get(..4) {
            Some(l) => align4(u32::from_ne_bytes([l[0], l[1], l[2], l[3]]) as usize),
            None => return Ok((errno, None)),
        }
    };
    let tlvs = orig.get(orig_len..).unwrap_or_default();
    let mut msg = None;
    for a in Attrs::new(op, tlvs) {
        let Ok(a) = a else { break };
        if a.ty == NLMSGERR_ATTR_MSG {
            msg = a.str().ok().map(str::to_owned);
        }
    }
    Ok((errno, msg))
}

/// One netlink message inside a received datagram (borrowed).
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    /// `nlmsg_type`.
    pub ty: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// `nlmsg_pid`.
    pub pid: u32,
    /// Everything after the 16-byte header (family header + attributes).
    pub payload: &'a [u8],
}

/// Iterator over the messages of a datagram. Yields one error and stops on a
/// malformed header.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    op: &'static str,
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    /// Iterates over `data`; `op` names the operation in errors.
    pub fn new(op: &'static str, data: &'a [u8]) -> Self {
        Messages { op, rest: data }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Msg<'a>, SysError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = self.rest;
        let Some(h) = r.get(..NLMSG_HDRLEN) else {
            self.rest = &[];
            return Some(Err(malformed(
                self.op,
                format!("{} trailing bytes, short of a header", r.len()),
            )));
        };
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < NLMSG_HDRLEN || len > r.len() {
            self.rest = &[];
            return Some(Err(malformed(
                self.op,
                format!("message length {len} of {} bytes", r.len()),
            )));
        }
        let m = Msg {
            ty: u16::from_ne_bytes([h[4], h[5]]),
            flags: u16::from_ne_bytes([h[6], h[7]]),
            seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            pid: u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
            payload: &r[NLMSG_HDRLEN..len],
        };
        self.rest = r.get(align4(len)..).unwrap_or_default();
        Some(Ok(m))
    }
}

/// One attribute (borrowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    op: &'static str,
    /// Attribute type with `NLA_F_NESTED`/`NLA_F_NET_BYTEORDER` masked off.
    pub ty: u16,
    /// Whether `NLA_F_NESTED` was set.
    pub nested_flag: bool,
    /// The payload, without padding.
    pub payload: &'a [u8],
}

impl<'a> Attr<'a> {
    fn fixed<const N: usize>(&self) -> Result<[u8; N], SysError> {
        <[u8; N]>::try_from(self.payload).map_err(|_| {
            malformed(
                self.op,
                format!(
                    "attribute {} has {} bytes, expected {N}",
                    self.ty,
                    self.payload.len()
                ),
            )
        })
    }

    /// A `u8`.
    pub fn u8(&self) -> Result<u8, SysError> {
        Ok(self.fixed::<1>()?[0])
    }

    /// A host-order `u16`.
    pub fn u16_ne(&self) -> Result<u16, SysError> {
        Ok(u16::from_ne_bytes(self.fixed()?))
    }

    /// A network-order `be16`.
    pub fn u16_be(&self) -> Result<u16, SysError> {
        Ok(u16::from_be_bytes(self.fixed()?))
    }

    /// A host-order `u32`.
    pub fn u32_ne(&self) -> Result<u32, SysError> {
        Ok(u32::from_ne_bytes(self.fixed()?))
    }

    /// A network-order `be32`.
    pub fn u32_be(&self) -> Result<u32, SysError> {
        Ok(u32::from_be_bytes(self.fixed()?))
    }

    /// A host-order `u64`.
    pub fn u64_ne(&self) -> Result<u64, SysError> {
        Ok(u64::from_ne_bytes(self.fixed()?))
    }

    /// A network-order `be64`.
    pub fn u64_be(&self) -> Result<u64, SysError> {
        Ok(u64::from_be_bytes(self.fixed()?))
    }

    /// A NUL-terminated (or unterminated) UTF-8 string.
    pub fn str(&self) -> Result<&'a str, SysError> {
        let p = self.payload;
        let p = match p.iter().position(|&b| b == 0) {
            Some(i) => &p[..i],
            None => p,
        };
        std::str::from_utf8(p)
            .map_err(|_| malformed(self.op, format!("attribute {} is not UTF-8", self.ty)))
    }

    /// The payload read as nested attributes.
    pub fn nested(&self) -> Attrs<'a> {
        Attrs::new(self.op, self.payload)
    }
}

/// Iterator over an attribute stream. Yields one error and stops on a
/// truncated or impossible attribute header; never panics.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    op: &'static str,
    rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    /// Iterates over `data`; `op` names the operation in errors.
    pub fn new(op: &'static str, data: &'a [u8]) -> Self {
        Attrs { op, rest: data }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>, SysError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = self.rest;
        let Some(h) = r.get(..NLA_HDRLEN) else {
            self.rest = &[];
            return Some(Err(malformed(
                self.op,
                format!("{} trailing bytes, short of an attribute", r.len()),
            )));
        };
        let len = u16::from_ne_bytes([h[0], h[1]]) as usize;
        let raw_ty = u16::from_ne_bytes([h[2], h[3]]);
        if len < NLA_HDRLEN || len > r.len() {
            self.rest = &[];
            return Some(Err(malformed(
                self.op,
                format!(
                    "attribute {} length {len} of {} bytes",
                    raw_ty & NLA_TYPE_MASK,
                    r.len()
                ),
            )));
        }
        let a = Attr {
            op: self.op,
            ty: raw_ty & NLA_TYPE_MASK,
            nested_flag: raw_ty & NLA_F_NESTED != 0,
            payload: &r[NLA_HDRLEN..len],
        };
        // The last attribute may omit its padding.
        self.rest = r.get(align4(len)..).unwrap_or_default();
        Some(Ok(a))
    }
}

/// Token for a nest opened by [`MsgBuilder::begin_nested`].
#[derive(Debug)]
#[must_use = "close the nest with end_nested"]
pub struct Nest(usize);

/// Builds one netlink message: header, family header bytes, attributes.
/// Length fields are filled in by [`MsgBuilder::end_nested`] and
/// [`MsgBuilder::finish`].
#[derive(Debug, Clone)]
pub struct MsgBuilder {
    buf: Vec<u8>,
    overflow: bool,
}

impl MsgBuilder {
    /// Starts a message of type `ty` with `flags` (the exchange helpers add
    /// `NLM_F_REQUEST` and `NLM_F_ACK`/`NLM_F_DUMP` and the sequence number).
    pub fn new(ty: u16, flags: u16) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // seq
        buf.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it in
        MsgBuilder {
            buf,
            overflow: false,
        }
    }

    /// Sets `nlmsg_seq`.
    pub fn set_seq(&mut self, seq: u32) {
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    }

    /// ORs `flags` into `nlmsg_flags`.
    pub fn add_flags(&mut self, flags: u16) {
        let f = u16::from_ne_bytes([self.buf[6], self.buf[7]]) | flags;
        self.buf[6..8].copy_from_slice(&f.to_ne_bytes());
    }

    /// Appends the family header (e.g. `genlmsghdr`, `nfgenmsg`), padded to 4.
    pub fn push_header(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.pad();
    }

    fn pad(&mut self) {
        let n = align4(self.buf.len()) - self.buf.len();
        self.buf.extend(std::iter::repeat_n(0, n));
    }

    fn put_len(&mut self, at: usize, len: usize) {
        match u16::try_from(len) {
            Ok(l) => self.buf[at..at + 2].copy_from_slice(&l.to_ne_bytes()),
            Err(_) => self.overflow = true,
        }
    }

    /// Appends attribute `ty` with `data`.
    pub fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.put_len(at, NLA_HDRLEN + data.len());
        self.pad();
        self
    }

    /// Appends a `u8` attribute.
    pub fn attr_u8(&mut self, ty: u16, v: u8) -> &mut Self {
        self.attr(ty, &[v])
    }

    /// Appends a host-order `u16` attribute.
    pub fn attr_u16(&mut self, ty: u16, v: u16) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// Appends a host-order `u32` attribute.
    pub fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// Appends a network-order `be16` attribute.
    pub fn attr_be16(&mut self, ty: u16, v: u16) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// Appends a network-order `be32` attribute.
    pub fn attr_be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// Appends a network-order `be64` attribute.
    pub fn attr_be64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// Appends a NUL-terminated string attribute.
    pub fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.put_len(at, NLA_HDRLEN + s.len() + 1);
        self.pad();
        self
    }

    /// Opens a nested attribute `ty` (with `NLA_F_NESTED`, which current
    /// kernels require for strictly validated families).
    pub fn begin_nested(&mut self, ty: u16) -> Nest {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        Nest(at)
    }

    /// Closes a nest: fills in its length.
    pub fn end_nested(&mut self, nest: Nest) {
        let len = self.buf.len() - nest.0;
        self.put_len(nest.0, len);
    }

    /// Fills in `nlmsg_len` and returns the bytes. Fails if an attribute
    /// exceeded 64 KiB.
    pub fn finish(mut self, op: &'static str) -> Result<Vec<u8>, SysError> {
        if self.overflow {
            return Err(SysError::io(
                op,
                io::Error::new(io::ErrorKind::InvalidInput, "netlink attribute over 64 KiB"),
            ));
        }
        let len = u32::try_from(self.buf.len()).map_err(|_| {
            SysError::io(
                op,
                io::Error::new(io::ErrorKind::InvalidInput, "netlink message over 4 GiB"),
            )
        })?;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        Ok(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr_bytes(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut v = ((NLA_HDRLEN + data.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    #[test]
    fn builder_layout_and_alignment() {
        let mut m = MsgBuilder::new(0x1234, 0);
        m.push_header(&[7, 1, 0, 0]);
        m.attr_u8(1, 0xab);
        let n = m.begin_nested(2);
        m.attr_u16(3, 0x0102).attr_be16(4, 0x0102);
        m.end_nested(n);
        m.attr_str(5, "abc");
        m.set_seq(42);
        m.add_flags(NLM_F_REQUEST | NLM_F_ACK);
        let b = m.finish("t").unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(&(b.len() as u32).to_ne_bytes());
        want.extend_from_slice(&0x1234u16.to_ne_bytes());
        want.extend_from_slice(&5u16.to_ne_bytes());
        want.extend_from_slice(&42u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[7, 1, 0, 0]);
        want.extend(attr_bytes(1, &[0xab]));
        let mut inner = attr_bytes(3, &0x0102u16.to_ne_bytes());
        inner.extend(attr_bytes(4, &[1, 2]));
        want.extend(attr_bytes(2 | NLA_F_NESTED, &inner));
        want.extend(attr_bytes(5, b"abc\0"));
        assert_eq!(b, want);
        assert_eq!(b.len() % 4, 0);
    }

    #[test]
    fn attrs_round_trip() {
        let mut m = MsgBuilder::new(0x20, 0);
        m.attr_u32(1, 7)
            .attr_be32(2, 0x0a000001)
            .attr_be64(3, 30_000);
        let n = m.begin_nested(4);
        m.attr_u8(1, 9);
        m.end_nested(n);
        let b = m.finish("t").unwrap();
        let msgs: Vec<_> = Messages::new("t", &b).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 1);
        let attrs: Vec<_> = Attrs::new("t", msgs[0].payload)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(attrs.len(), 4);
        assert_eq!(attrs[0].u32_ne().unwrap(), 7);
        assert_eq!(attrs[1].u32_be().unwrap(), 0x0a000001);
        assert_eq!(attrs[2].u64_be().unwrap(), 30_000);
        assert!(attrs[3].nested_flag);
        assert_eq!(attrs[3].ty, 4);
        let inner: Vec<_> = attrs[3].nested().collect::<Result<_, _>>().unwrap();
        assert_eq!(inner[0].u8().unwrap(), 9);
        // Wrong widths are errors, not panics.
        assert!(attrs[0].u16_ne().is_err());
        assert!(attrs[0].u64_be().is_err());
    }

    #[test]
    fn attrs_truncated_oversized_garbage() {
        // Truncated header.
        let r: Vec<_> = Attrs::new("t", &[8, 0]).collect();
        assert!(matches!(r.as_slice(), [Err(SysError::Malformed { .. })]));
        // Length beyond the buffer.
        let mut b = attr_bytes(1, &[1, 2, 3, 4]);
        b[0] = 200;
        let r: Vec<_> = Attrs::new("t", &b).collect();
        assert!(matches!(r.as_slice(), [Err(SysError::Malformed { .. })]));
        // Length below the header size.
        // (Netlink headers are in host byte order: big-endian on MIPS.)
        let short = [2u16.to_ne_bytes(), 1u16.to_ne_bytes(), [0, 0], [0, 0]].concat();
        let r: Vec<_> = Attrs::new("t", &short).collect();
        assert!(matches!(r.as_slice(), [Err(SysError::Malformed { .. })]));
        // A good attribute then garbage: one Ok then one Err, then the end.
        let mut b = attr_bytes(1, &[1]);
        b.extend_from_slice(&[0xff, 0xff, 0xff]);
        let r: Vec<_> = Attrs::new("t", &b).collect();
        assert_eq!(r.len(), 2);
        assert!(r[0].is_ok() && r[1].is_err());
        // Last attribute without its padding is fine.
        let unpadded = attr_bytes(1, &[9]);
        let r: Vec<_> = Attrs::new("t", &unpadded[..5])
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(r[0].payload, &[9]);
        // Every prefix and every byte pattern: never a panic.
        let mut m = MsgBuilder::new(0x20, 0);
        m.attr_str(1, "hello").attr_u32(2, 5);
        let good = m.finish("t").unwrap();
        for cut in 0..good.len() {
            let _ = Messages::new("t", &good[..cut]).count();
            let _ = Attrs::new("t", &good[NLMSG_HDRLEN.min(cut)..cut]).count();
        }
        let mut x: u32 = 1;
        for _ in 0..2000 {
            let g: Vec<u8> = (0..37)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            for a in Attrs::new("t", &g).flatten() {
                let _ = (
                    a.u8(),
                    a.u16_be(),
                    a.u32_ne(),
                    a.u64_be(),
                    a.str(),
                    a.nested().count(),
                );
            }
            let _ = Messages::new("t", &g).count();
        }
    }

    #[test]
    fn messages_bad_lengths() {
        let mut h = vec![0u8; 16];
        h[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(Messages::new("t", &h).next().unwrap().is_err());
        h[0..4].copy_from_slice(&64u32.to_ne_bytes());
        assert!(Messages::new("t", &h).next().unwrap().is_err());
        assert!(Messages::new("t", &h[..10]).next().unwrap().is_err());
    }

    fn error_msg(err: i32, flags: u16, tail: &[u8]) -> Vec<u8> {
        let mut m = MsgBuilder::new(NLMSG_ERROR, flags);
        let mut p = err.to_ne_bytes().to_vec();
        let mut orig = vec![0u8; 16];
        orig[0..4].copy_from_slice(&36u32.to_ne_bytes());
        p.extend(orig);
        p.extend_from_slice(tail);
        m.push_header(&p);
        m.finish("t").unwrap()
    }

    #[test]
    fn error_with_extack() {
        let tlv = attr_bytes(NLMSGERR_ATTR_MSG, b"did not match address and id\0");
        let b = error_msg(-libc::EINVAL, NLM_F_CAPPED | NLM_F_ACK_TLVS, &tlv);
        let m = Messages::new("t", &b).next().unwrap().unwrap();
        let (errno, ext) = parse_error("t", &m).unwrap();
        assert_eq!(errno, libc::EINVAL);
        assert_eq!(ext.as_deref(), Some("did not match address and id"));
        // An ack: errno 0, no text.
        let b = error_msg(0, NLM_F_CAPPED, &[]);
        let m = Messages::new("t", &b).next().unwrap().unwrap();
        assert_eq!(parse_error("t", &m).unwrap(), (0, None));
        // Garbage TLVs are ignored, the errno survives.
        let b = error_msg(
            -libc::ENOENT,
            NLM_F_CAPPED | NLM_F_ACK_TLVS,
            &[0xff, 0xff, 0xff, 0xff],
        );
        let m = Messages::new("t", &b).next().unwrap().unwrap();
        assert_eq!(parse_error("t", &m).unwrap(), (libc::ENOENT, None));
    }

    /// Against the running kernel (no root needed): a socket set
    /// non-blocking reports an empty queue as `WouldBlock`.
    #[test]
    fn kernel_nonblocking_recv() {
        let mut s = NlSocket::open(NETLINK_GENERIC).unwrap();
        s.set_nonblocking(true).unwrap();
        assert_eq!(s.recv().unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn nfgenmsg_res_id_is_big_endian() {
        assert_eq!(nfgenmsg(1, 10), [1, 0, 0, 10]);
        let b = batch_marker(NFNL_MSG_BATCH_BEGIN, 5, 10);
        assert_eq!(b.len(), 20);
        assert_eq!(&b[16..], &[0, 0, 0, 10]);
    }
}
