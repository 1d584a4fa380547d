//! Netlink on neli, for every netlink protocol dcol speaks through it:
//! generic netlink ([`super::genl`]: `mptcp_pm`, `wireguard`), netfilter
//! ([`super::nfnl`]: nf_tables, ctnetlink) and sock_diag ([`super::diag`]).
//! rtnetlink is the `rtnetlink` crate's ([`super::rtnl`], [`super::routewatch`]).
//!
//! Here: the socket ([`NlConn`]: neli's `socket::NlSocket` with extended acks
//! on), request/acknowledgement, dump and batch exchanges matched by sequence
//! number, and attributes as neli's `Nlattr` ([`attr`], [`nest`], [`nested`]
//! and the readers). No protocol's messages or attribute numbers are known
//! here.
//!
//! Two small pieces are our own, where neli 0.7.5 falls short:
//! - **Errors keep the kernel's extended-ack text.** neli's `NlRouter` turns
//!   replies into typed ones with `Nlmsgerr::to_typed`, which drops the
//!   `ext_ack` attributes (test
//!   `sys::mptcp_pm::tests::root_neli_router_drops_extack`). We read each
//!   `Nlmsgerr` ourselves ([`kernel_error`]), so a refused command says why
//!   ("invalid token", "did not match address and id", nf_tables' and
//!   ctnetlink's reasons alike).
//! - **Framing checks lengths before neli parses.** neli's derived decoders
//!   subtract header sizes from the lengths a message states without checking
//!   them (`nlmsg_len - 16`; the echoed request's padded length in an error),
//!   which panics under overflow checks (debug builds, OpenWrt's feed).
//!   [`Messages`] cuts a datagram at each header's length, checks those two
//!   lengths and hands neli one message at a time (tests
//!   `neli_panics_on_short_nlmsg_len`, `framing_never_panics`).
//!
//! Byte order: neli encodes and decodes integers in host order, as netlink
//! does; fields the kernel defines as network order are written as
//! `to_be_bytes()` and read as byte arrays ([`be16`], [`be32`], [`be64`],
//! [`array()`]), so the code is the same on big-endian MIPS.
//!
//! The namespace helpers of the root tests live here too, with
//! [`unshare_netns_for_this_thread`].

use std::io::{self, Cursor};
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use neli::consts::nl::{NlmF, Nlmsg, NlmsgerrAttr};
use neli::consts::socket::{Msg, NlFamily};
use neli::err::{BuilderError, SerError};
use neli::genl::{AttrTypeBuilder, Nlattr, NlattrBuilder};
use neli::nl::{NlPayload, Nlmsghdr, NlmsghdrBuilder};
use neli::socket::NlSocket;
use neli::types::{Buffer, GenlBuffer};
use neli::utils::Groups;
use neli::{FromBytes, FromBytesWithInput, Size, ToBytes};

use super::os::poll_readable;
use super::SysError;

/// `NLMSG_HDRLEN`.
pub const NLMSG_HDRLEN: usize = 16;
/// `NLMSG_MIN_TYPE`: the first message type that is not a control message.
const NLMSG_MIN_TYPE: u16 = 0x10;
/// Receive buffer: larger than any datagram the kernel builds (it caps dump
/// datagrams at 32 KiB plus headers).
const RECV_BUF: usize = 64 * 1024;
/// How long an exchange waits for the kernel before giving up.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request could not be encoded: a bug in its construction, never input.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A neli builder lacked a field or could not serialize a payload.
    #[error(transparent)]
    Build(#[from] BuilderError),
    /// neli could not write the message.
    #[error(transparent)]
    Ser(#[from] SerError),
}

/// A netlink attribute (type as a number, payload as bytes), neli's type.
/// Types stay numbers so that neli's generic code is built once for every
/// family (each family's `neli_enum`s or constants name the numbers: match
/// on `EventAttr::from(ty(a))`). That keeps its code size small on the
/// router.
pub type Attr = Nlattr<u16, Buffer>;

/// What an exchange hands each answer of ours: its type and payload.
pub type OnReply<'a> = dyn FnMut(u16, &[u8]) -> Result<(), SysError> + 'a;

/// A netlink socket (neli's) of one protocol, with extended acks on.
/// Exchanges block for at most [`EXCHANGE_TIMEOUT`] in all;
/// [`NlConn::recv_nowait`] never blocks.
pub struct NlConn {
    sock: NlSocket,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for NlConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NlConn")
            .field("fd", &self.fd())
            .field("seq", &self.seq)
            .finish()
    }
}

impl NlConn {
    /// Opens and binds a socket of `protocol` and turns extended acks on
    /// (kernels before 4.12 lack them: errors then come without text).
    /// `name` names the protocol in errors ("generic netlink").
    pub fn open(protocol: NlFamily, name: &str) -> Result<Self, SysError> {
        let sock = NlSocket::connect(protocol, None, Groups::empty()).map_err(|e| {
            if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) {
                SysError::Unsupported(format!("{name} is not supported by this kernel"))
            } else {
                SysError::io("netlink socket", e)
            }
        })?;
        if let Err(e) = sock.enable_ext_ack(true) {
            log::debug!("{name}: NETLINK_EXT_ACK: {e}");
        }
        Ok(NlConn {
            sock,
            seq: initial_seq(),
            buf: vec![0; RECV_BUF],
        })
    }

    /// The descriptor, for `poll`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        super::raw::neli_fd(&self.sock)
    }

    /// Joins multicast group `group` (a generic netlink group id, an
    /// nfnetlink group number).
    pub fn join(&self, group: u32) -> Result<(), SysError> {
        self.sock
            .add_mcast_membership(Groups::new_groups(&[group]))
            .map_err(|e| SysError::io("netlink add membership", e))
    }

    /// Sets `SO_RCVBUF` (the kernel doubles it); a larger buffer makes
    /// event-group overflows (`ENOBUFS`) rarer.
    pub fn set_recv_buffer(&self, bytes: usize) -> Result<(), SysError> {
        self.sock
            .set_recv_buffer_size(bytes)
            .map_err(|e| SysError::io("setsockopt SO_RCVBUF", e))
    }

    /// One queued datagram, without waiting: `WouldBlock` when there is none.
    /// Other errors keep their `io::Error` (`ENOBUFS`: multicast messages were
    /// lost) for the caller to judge.
    pub fn recv_nowait(&mut self) -> io::Result<&[u8]> {
        self.recv(Msg::DONTWAIT)
    }

    fn recv(&mut self, flags: Msg) -> io::Result<&[u8]> {
        loop {
            match self.sock.recv(&mut self.buf[..], flags | Msg::TRUNC) {
                Ok((n, _)) if n > self.buf.len() => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("netlink datagram of {n} bytes truncated"),
                    ))
                }
                Ok((n, _)) => return Ok(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits (until `deadline` at most) for the kernel's next datagram.
    fn recv_reply(&mut self, op: &'static str, deadline: Instant) -> Result<&[u8], SysError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let ready = poll_readable(&[self.fd()], Some(left)).map_err(|e| SysError::io(op, e))?;
        if !ready.first().copied().unwrap_or(false) {
            return Err(SysError::io(
                op,
                io::Error::new(io::ErrorKind::TimedOut, "no answer from the kernel"),
            ));
        }
        self.recv(Msg::DONTWAIT).map_err(|e| SysError::io(op, e))
    }

    /// The next sequence number (wraps; 0 is skipped because events use it).
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    fn send(&mut self, op: &'static str, bytes: &[u8]) -> Result<(), SysError> {
        let n = self
            .sock
            .send(bytes, Msg::empty())
            .map_err(|e| SysError::io(op, e))?;
        if n != bytes.len() {
            return Err(SysError::io(
                op,
                io::Error::new(io::ErrorKind::WriteZero, "short netlink send"),
            ));
        }
        Ok(())
    }

    /// Sends `payload` as a message of type `ty` with `flags | NLM_F_REQUEST
    /// | NLM_F_ACK` and waits for its acknowledgement; answers that arrive
    /// before it (a GET's reply) go to `on_reply` as (type, payload). A
    /// refusal becomes [`SysError::Netlink`] with the kernel's errno and
    /// extended-ack text.
    pub fn request<P: Size + ToBytes>(
        &mut self,
        op: &'static str,
        ty: u16,
        flags: NlmF,
        payload: P,
        mut on_reply: impl FnMut(u16, &[u8]) -> Result<(), SysError>,
    ) -> Result<(), SysError> {
        let seq = self.next_seq();
        let bytes = encode(op, ty, flags | NlmF::REQUEST | NlmF::ACK, seq, payload)?;
        self.exchange(op, &bytes, &[seq], &[seq], &mut on_reply)
            .map(drop)
    }

    /// Sends `payload` as a dump request of type `ty` (`NLM_F_REQUEST |
    /// NLM_F_DUMP`) and hands every answer to `on_reply` as (type, payload)
    /// until `NLMSG_DONE`. A dump the kernel reports as interrupted
    /// (`NLM_F_DUMP_INTR`: the table changed meanwhile) is `EINTR` after all
    /// its messages were delivered; callers may retry.
    pub fn dump<P: Size + ToBytes>(
        &mut self,
        op: &'static str,
        ty: u16,
        payload: P,
        mut on_reply: impl FnMut(u16, &[u8]) -> Result<(), SysError>,
    ) -> Result<(), SysError> {
        let seq = self.next_seq();
        let bytes = encode(op, ty, NlmF::REQUEST | NlmF::DUMP, seq, payload)?;
        if self.exchange(op, &bytes, &[seq], &[seq], &mut on_reply)? {
            return Err(SysError::Netlink {
                op,
                errno: libc::EINTR,
                extack: Some("dump interrupted".into()),
            });
        }
        Ok(())
    }

    /// Sends `bytes` (one or more complete messages, one datagram) and reads
    /// the kernel's answers until every sequence number in `wait` was
    /// acknowledged (an `NLMSG_ERROR` of 0, or the `NLMSG_DONE` that ends a
    /// dump), for [`EXCHANGE_TIMEOUT`] in all. Messages for sequence numbers
    /// outside `ours` are stale and skipped; a refusal of any of `ours` ends
    /// the exchange with [`kernel_error`]. The other messages of ours go to
    /// `on_reply` as (type, payload). Returns whether any of them was marked
    /// `NLM_F_DUMP_INTR`.
    pub fn exchange(
        &mut self,
        op: &'static str,
        bytes: &[u8],
        ours: &[u32],
        wait: &[u32],
        on_reply: &mut OnReply<'_>,
    ) -> Result<bool, SysError> {
        self.send(op, bytes)?;
        let deadline = Instant::now() + EXCHANGE_TIMEOUT;
        let mut pending = wait.to_vec();
        let mut interrupted = false;
        while !pending.is_empty() {
            let data = self.recv_reply(op, deadline)?;
            for m in Messages::new(op, data) {
                let m = m?;
                let (seq, ty) = (*m.nl_seq(), *m.nl_type());
                if !ours.contains(&seq) {
                    continue;
                }
                interrupted |= m.nl_flags().contains(NlmF::DUMP_INTR);
                match m.nl_payload() {
                    NlPayload::Err(e) => return Err(kernel_error(op, e.error(), e.ext_ack())),
                    NlPayload::DumpExtAck(e) if *e.error() != 0 => {
                        return Err(kernel_error(op, e.error(), e.ext_ack()))
                    }
                    NlPayload::Ack(_) | NlPayload::DumpExtAck(_) | NlPayload::Empty => {
                        pending.retain(|&s| s != seq)
                    }
                    // A DONE without NLM_F_MULTI (the kernel sets it): its
                    // payload is the dump's status all the same.
                    NlPayload::Payload(p) if ty == u16::from(Nlmsg::Done) => {
                        let status = p
                            .as_ref()
                            .get(..4)
                            .map_or(0, |b| libc::c_int::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        if status < 0 {
                            return Err(kernel_error(op, &status, &GenlBuffer::new()));
                        }
                        pending.retain(|&s| s != seq);
                    }
                    NlPayload::Payload(p) if ty >= NLMSG_MIN_TYPE => on_reply(ty, p.as_ref())?,
                    // NLMSG_NOOP, NLMSG_OVERRUN.
                    NlPayload::Payload(_) => {}
                }
            }
        }
        Ok(interrupted)
    }
}

/// The error a kernel refusal (`error` < 0 in `struct nlmsgerr`) becomes: its
/// errno and, when the kernel gave one, its extended-ack message
/// (`NLMSGERR_ATTR_MSG`). This is the piece neli's router loses.
pub fn kernel_error(
    op: &'static str,
    error: &libc::c_int,
    ext_ack: &GenlBuffer<NlmsgerrAttr, Buffer>,
) -> SysError {
    SysError::Netlink {
        op,
        errno: error.saturating_neg(),
        extack: extack_text(ext_ack),
    }
}

/// The extended-ack message among an error's attributes.
pub fn extack_text(ext_ack: &GenlBuffer<NlmsgerrAttr, Buffer>) -> Option<String> {
    ext_ack
        .iter()
        .find(|a| *a.nla_type().nla_type() == NlmsgerrAttr::Msg)
        .map(|a| nul_terminated(a.nla_payload().as_ref()))
}

/// The extended-ack message in an `NLMSG_ERROR` payload after its error
/// code: the echoed request (whole, as without `NETLINK_CAP_ACK`), then the
/// `NLMSGERR_ATTR_*` attributes. What rtnetlink keeps of a refusal
/// (`ErrorMessage::header`) is that. `None` when there is no text or the
/// bytes do not parse.
pub fn extack_after_echo(payload: &[u8]) -> Option<String> {
    let b = payload.get(..4)?;
    let echoed = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
    if echoed < NLMSG_HDRLEN {
        return None;
    }
    let tlvs = payload.get(echoed.checked_add(3)? & !3..)?;
    let attrs = GenlBuffer::from_bytes_with_input(&mut Cursor::new(tlvs), tlvs.len()).ok()?;
    extack_text(&attrs)
}

fn nul_terminated(b: &[u8]) -> String {
    let s = b.split(|&c| c == 0).next().unwrap_or_default();
    String::from_utf8_lossy(s).into_owned()
}

/// Encodes a request: netlink header (type `ty`, `flags`, `seq`) and
/// `payload` (a generic netlink message, an nfnetlink one, a fixed struct).
pub fn encode<P: Size + ToBytes>(
    op: &'static str,
    ty: u16,
    flags: NlmF,
    seq: u32,
    payload: P,
) -> Result<Vec<u8>, SysError> {
    let nl = NlmsghdrBuilder::default()
        .nl_type(ty)
        .nl_flags(flags)
        .nl_seq(seq)
        .nl_payload(NlPayload::Payload(payload))
        .build()
        .map_err(|e| encode_err(op, BuilderError::from(e)))?;
    let mut c = Cursor::new(Vec::with_capacity(nl.padded_size()));
    nl.to_bytes(&mut c).map_err(|e| encode_err(op, e))?;
    Ok(c.into_inner())
}

/// A request that could not be encoded.
pub fn encode_err(op: &'static str, e: impl Into<EncodeError>) -> SysError {
    SysError::Encode {
        op,
        source: e.into(),
    }
}

/// An attribute of type `ty` (a family's attribute enum or a number)
/// carrying `payload` as it is (integers: `to_ne_bytes()`, network-order
/// fields: `to_be_bytes()`).
pub fn attr(op: &'static str, ty: impl Into<u16>, payload: &[u8]) -> Result<Attr, SysError> {
    build_attr(op, ty.into(), false, payload)
}

/// A NUL-terminated string attribute.
pub fn attr_str(op: &'static str, ty: impl Into<u16>, s: &str) -> Result<Attr, SysError> {
    build_attr(op, ty.into(), false, &[s.as_bytes(), &[0]].concat())
}

/// A nested attribute (`NLA_F_NESTED`, which current kernels require for
/// strictly validated families) of type `ty` holding `children`.
pub fn nest(op: &'static str, ty: impl Into<u16>, children: &[Attr]) -> Result<Attr, SysError> {
    let mut n = build_attr(op, ty.into(), true, &[])?;
    for c in children {
        n = n.nest(c).map_err(|e| encode_err(op, e))?;
    }
    Ok(n)
}

fn build_attr(op: &'static str, ty: u16, nested: bool, payload: &[u8]) -> Result<Attr, SysError> {
    let ty = AttrTypeBuilder::default()
        .nla_type(ty)
        .nla_nested(nested)
        .build()
        .map_err(|e| encode_err(op, BuilderError::from(e)))?;
    NlattrBuilder::default()
        .nla_type(ty)
        .nla_payload(payload)
        .build()
        .map_err(|e| encode_err(op, BuilderError::from(e)))
}

/// The attributes of an attribute stream (what follows a family header).
pub fn attrs(op: &'static str, bytes: &[u8]) -> Result<GenlBuffer<u16, Buffer>, SysError> {
    GenlBuffer::from_bytes_with_input(&mut Cursor::new(bytes), bytes.len())
        .map_err(|source| SysError::Decode { op, source })
}

/// The attributes nested in `a`.
pub fn nested(op: &'static str, a: &Attr) -> Result<GenlBuffer<u16, Buffer>, SysError> {
    attrs(op, a.nla_payload().as_ref())
}

/// The type of `a` (without the nested and byte-order flags), to match as a
/// family's attribute enum: `EventAttr::from(ty(a))`.
pub fn ty(a: &Attr) -> u16 {
    *a.nla_type().nla_type()
}

/// The payload of `a`, which must be exactly `N` bytes.
pub fn array<const N: usize>(op: &'static str, a: &Attr) -> Result<[u8; N], SysError> {
    let p = a.nla_payload().as_ref();
    <[u8; N]>::try_from(p).map_err(|_| SysError::Malformed {
        op,
        what: format!("attribute {} has {} bytes, expected {N}", ty(a), p.len()),
    })
}

/// A `u8` attribute.
pub fn u8_(op: &'static str, a: &Attr) -> Result<u8, SysError> {
    array::<1>(op, a).map(|b| b[0])
}

/// A host-order `u16` attribute.
pub fn u16_ne(op: &'static str, a: &Attr) -> Result<u16, SysError> {
    array(op, a).map(u16::from_ne_bytes)
}

/// A host-order `u32` attribute.
pub fn u32_ne(op: &'static str, a: &Attr) -> Result<u32, SysError> {
    array(op, a).map(u32::from_ne_bytes)
}

/// A host-order `u64` attribute.
pub fn u64_ne(op: &'static str, a: &Attr) -> Result<u64, SysError> {
    array(op, a).map(u64::from_ne_bytes)
}

/// A network-order `be16` attribute.
pub fn be16(op: &'static str, a: &Attr) -> Result<u16, SysError> {
    array(op, a).map(u16::from_be_bytes)
}

/// A network-order `be32` attribute.
pub fn be32(op: &'static str, a: &Attr) -> Result<u32, SysError> {
    array(op, a).map(u32::from_be_bytes)
}

/// A network-order `be64` attribute.
pub fn be64(op: &'static str, a: &Attr) -> Result<u64, SysError> {
    array(op, a).map(u64::from_be_bytes)
}

/// A NUL-terminated string attribute (text after the first NUL is ignored;
/// invalid UTF-8 is replaced).
pub fn string(a: &Attr) -> String {
    nul_terminated(a.nla_payload().as_ref())
}

/// The messages of one datagram, each cut at its own `nlmsg_len` and decoded
/// by neli (payloads left as bytes). Lengths are checked first: a header
/// stating less than itself or more than the datagram holds, or an error
/// message whose echoed request does not fit, ends the iteration with
/// [`SysError::Malformed`].
pub struct Messages<'a> {
    op: &'static str,
    data: &'a [u8],
}

impl<'a> Messages<'a> {
    /// Iterates over `data`, one datagram.
    pub fn new(op: &'static str, data: &'a [u8]) -> Self {
        Messages { op, data }
    }

    /// The next message's bytes; on a length that does not hold, what is
    /// wrong (for [`SysError::Malformed`]).
    fn cut(&mut self) -> Result<&'a [u8], SysError> {
        let op = self.op;
        let malformed = |what: String| SysError::Malformed { op, what };
        let d = self.data;
        let len = d
            .get(..4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .filter(|_| d.len() >= NLMSG_HDRLEN)
            .ok_or_else(|| malformed(format!("{} trailing bytes, short of a header", d.len())))?;
        if len < NLMSG_HDRLEN || len > d.len() {
            return Err(malformed(format!(
                "header states {len} bytes; {} are left",
                d.len()
            )));
        }
        let msg = &d[..len];
        let ty = u16::from_ne_bytes([msg[4], msg[5]]);
        let body = &msg[NLMSG_HDRLEN..];
        if ty == u16::from(Nlmsg::Error) && body.len() >= 4 && body[..4] != [0; 4] {
            // struct nlmsgerr: error, then the echoed request (header and,
            // without NETLINK_CAP_ACK, its payload), then extended-ack TLVs.
            let echoed = body
                .get(4..8)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .unwrap_or(0);
            if echoed < NLMSG_HDRLEN || align4(echoed) > body.len() - 4 {
                return Err(malformed(format!(
                    "error message echoes {echoed} bytes in {}",
                    body.len() - 4
                )));
            }
        }
        self.data = d.get(align4(len)..).unwrap_or_default();
        Ok(msg)
    }
}

impl Iterator for Messages<'_> {
    type Item = Result<Nlmsghdr<u16, Buffer>, SysError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        let op = self.op;
        let msg = match self.cut() {
            Ok(m) => m,
            Err(e) => {
                self.data = &[];
                return Some(Err(e));
            }
        };
        Some(
            Nlmsghdr::from_bytes(&mut Cursor::new(msg))
                .map_err(|source| SysError::Decode { op, source }),
        )
    }
}

/// The payload of a message that carries one (not an ack, error or end of
/// dump).
pub fn payload(m: &Nlmsghdr<u16, Buffer>) -> Option<&[u8]> {
    m.get_payload().map(|p| p.as_ref())
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A sequence-number start that differs between sockets and runs, so that
/// stale replies of an earlier socket are never mistaken for ours.
fn initial_seq() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(16) ^ std::process::id()
}

/// Raw attribute bytes (host-order header, padded), for byte fixtures.
#[cfg(test)]
pub(crate) fn test_attr(ty: u16, data: &[u8]) -> Vec<u8> {
    let mut v = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(data);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

/// A raw netlink message (host-order header), for byte fixtures.
#[cfg(test)]
pub(crate) fn test_nlmsg(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut v = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&seq.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    v.extend_from_slice(body);
    v
}

/// Moves the calling thread into a fresh, empty network namespace
/// (`unshare(CLONE_NEWNET)`), for tests. Sockets the thread opens afterwards,
/// `/proc/sys/net` files it opens and child processes it spawns live there;
/// the namespace disappears with the thread and its sockets. Needs
/// `CAP_SYS_ADMIN`.
pub fn unshare_netns_for_this_thread() -> io::Result<()> {
    Ok(nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?)
}

/// Test helpers: MPTCP sockets, which `std` cannot create.
#[cfg(test)]
pub(crate) mod testsock {
    use std::io;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, OwnedFd};

    use nix::sys::socket::{
        bind, connect as nix_connect, listen as nix_listen, setsockopt, socket, sockopt,
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage,
    };

    use crate::sys::raw;

    fn socket_for(addr: SocketAddr, mptcp: bool) -> io::Result<OwnedFd> {
        let fam = if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        Ok(if mptcp {
            raw::mptcp_socket(fam, SockFlag::SOCK_CLOEXEC)?
        } else {
            socket(fam, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?
        })
    }

    /// An MPTCP (`mptcp == true`) or TCP listener on `addr`.
    pub(crate) fn listen(addr: SocketAddr, mptcp: bool) -> io::Result<TcpListener> {
        let fd = socket_for(addr, mptcp)?;
        let _ = setsockopt(&fd, sockopt::ReuseAddr, &true);
        bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
        nix_listen(&fd, Backlog::new(16)?)?;
        Ok(TcpListener::from(fd))
    }

    /// An MPTCP or TCP connection to `to`, optionally from `from`.
    pub(crate) fn connect(
        from: Option<SocketAddr>,
        to: SocketAddr,
        mptcp: bool,
    ) -> io::Result<TcpStream> {
        let fd = socket_for(to, mptcp)?;
        if let Some(f) = from {
            bind(fd.as_raw_fd(), &SockaddrStorage::from(f))?;
        }
        nix_connect(fd.as_raw_fd(), &SockaddrStorage::from(to))?;
        Ok(TcpStream::from(fd))
    }
}

/// Root-test harness: a thread living in its own network namespace that runs
/// closures on request. Sockets created there stay in that namespace when moved
/// to other threads; child processes spawned there inherit it.
#[cfg(test)]
pub(crate) mod testns {
    use std::process::{Command, Output};
    use std::sync::mpsc;
    use std::thread::JoinHandle;

    type Job = Box<dyn FnOnce() + Send>;

    /// Whether the tests run as root (uid 0), read from /proc (no unsafe).
    pub(crate) fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(2) == Some("0"))
            })
            .unwrap_or(false)
    }

    /// Runs shell command `c` (in the calling thread's namespace); panics
    /// when it fails.
    pub(crate) fn sh(c: &str) {
        let ok = Command::new("sh")
            .args(["-c", c])
            .status()
            .expect("sh")
            .success();
        assert!(ok, "{c}");
    }

    /// A thread in a fresh network namespace (loopback up). The namespace goes
    /// away when this is dropped (and its sockets are closed).
    pub(crate) struct NsThread {
        tx: Option<mpsc::Sender<Job>>,
        handle: Option<JoinHandle<()>>,
        /// The thread id, usable where `ip` wants a PID (`netns <tid>`).
        pub(crate) tid: String,
    }

    impl NsThread {
        pub(crate) fn new() -> NsThread {
            let (tx, rx) = mpsc::channel::<Job>();
            let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<String>>();
            let handle = std::thread::spawn(move || {
                let r = super::unshare_netns_for_this_thread().and_then(|()| {
                    let o = Command::new("ip")
                        .args(["link", "set", "lo", "up"])
                        .output()?;
                    if !o.status.success() {
                        let e = String::from_utf8_lossy(&o.stderr).into_owned();
                        return Err(std::io::Error::other(e));
                    }
                    std::fs::read_link("/proc/thread-self").map(|p| p.display().to_string())
                });
                let ok = r.is_ok();
                let _ = ready_tx.send(r);
                if !ok {
                    return;
                }
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
            let self_path = ready_rx
                .recv()
                .expect("namespace thread started")
                .expect("namespace thread set up");
            // "<pid>/task/<tid>"
            let tid = self_path.rsplit('/').next().unwrap_or_default().to_owned();
            NsThread {
                tx: Some(tx),
                handle: Some(handle),
                tid,
            }
        }

        /// Runs `f` in the namespace thread and returns its result; a panic in
        /// `f` is re-raised here.
        pub(crate) fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
            let (rtx, rrx) = mpsc::channel();
            let job: Job = Box::new(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                let _ = rtx.send(r);
            });
            self.tx
                .as_ref()
                .expect("running")
                .send(job)
                .expect("namespace thread alive");
            match rrx.recv().expect("namespace thread answered") {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        }

        /// Runs a program in the namespace (as a child of its thread).
        pub(crate) fn cmd(&self, args: &[&str]) -> Output {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            self.run(move || {
                let o = Command::new(&args[0])
                    .args(&args[1..])
                    .output()
                    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
                if !o.status.success() {
                    panic!("{args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
                }
                o
            })
        }

        /// Like [`NsThread::cmd`], returning stdout as text.
        pub(crate) fn out(&self, args: &[&str]) -> String {
            String::from_utf8_lossy(&self.cmd(args).stdout).into_owned()
        }
    }

    /// A star: a router namespace and one host namespace per spoke
    /// `(router device, router address/len, host device, host address/len)`,
    /// joined by a veth pair each, with the host's default route via the
    /// router and IPv4 forwarding on in the router.
    pub(crate) fn star(spokes: &[(&str, &str, &str, &str)]) -> (NsThread, Vec<NsThread>) {
        let router = NsThread::new();
        router.run(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .expect("ip_forward in the namespace")
        });
        let mut hosts = Vec::new();
        for (rdev, raddr, hdev, haddr) in spokes {
            let host = NsThread::new();
            router.cmd(&[
                "ip", "link", "add", rdev, "type", "veth", "peer", "name", hdev, "netns", &host.tid,
            ]);
            for (ns, dev, addr) in [(&router, rdev, raddr), (&host, hdev, haddr)] {
                ns.cmd(&["ip", "addr", "add", addr, "dev", dev]);
                ns.cmd(&["ip", "link", "set", dev, "up"]);
            }
            let via = raddr.split('/').next().unwrap_or_default();
            host.cmd(&["ip", "route", "add", "default", "via", via]);
            hosts.push(host);
        }
        (router, hosts)
    }

    impl Drop for NsThread {
        fn drop(&mut self) {
            self.tx.take();
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_attr as a;
    use super::test_nlmsg as nlmsg;
    use super::*;

    /// neli's derived decoder subtracts the header size from `nlmsg_len`
    /// unchecked: a short length panics where overflow checks are on (debug,
    /// and OpenWrt's feed builds). [`Messages`] refuses it first.
    #[test]
    fn neli_panics_on_short_nlmsg_len() {
        let mut bad = nlmsg(0x1d, 0, 1, &[0xa, 1, 0, 0]);
        bad[..4].copy_from_slice(&4u32.to_ne_bytes());
        if cfg!(debug_assertions) {
            let direct = std::panic::catch_unwind(|| {
                let _ = Nlmsghdr::<u16, Buffer>::from_bytes(&mut Cursor::new(&bad[..]));
            });
            assert!(
                direct.is_err(),
                "neli now checks nlmsg_len: the guard in Messages may go"
            );
        }
        let r: Vec<_> = Messages::new("t", &bad).collect();
        assert!(matches!(&r[..], [Err(SysError::Malformed { .. })]));
    }

    #[test]
    fn framing_never_panics() {
        let mut good = nlmsg(0x1d, 0, 1, &[0xa, 1, 0, 0]);
        good.extend(a(1, &5u32.to_ne_bytes()));
        let len = good.len() as u32;
        good[..4].copy_from_slice(&len.to_ne_bytes());
        let mut err = (-1i32).to_ne_bytes().to_vec();
        err.extend_from_slice(&good);
        err.extend(a(1, b"x\0"));
        let err = nlmsg(0x2, 0x200, 1, &err);
        let done = nlmsg(0x3, 0x2, 1, &0i32.to_ne_bytes());
        // An error echoing a 17-byte request in 17 bytes: neli pads the
        // echo to 20 and subtracts past zero. A multipart NLMSG_DONE with 2
        // status bytes: neli's own error.
        let mut echo17 = (-1i32).to_ne_bytes().to_vec();
        echo17.extend(nlmsg(0x1d, 0, 1, &[0xa]));
        let echo17 = nlmsg(0x2, 0, 1, &echo17);
        let r: Vec<_> = Messages::new("t", &echo17).collect();
        assert!(matches!(&r[..], [Err(SysError::Malformed { .. })]), "{r:?}");
        let done2 = nlmsg(0x3, 0x2, 1, &[0, 0]);
        let r: Vec<_> = Messages::new("t", &done2).collect();
        assert!(matches!(&r[..], [Err(SysError::Decode { .. })]), "{r:?}");
        for sample in [good, err, done, echo17, done2] {
            for cut in 0..=sample.len() {
                let _ = Messages::new("t", &sample[..cut]).count();
            }
            for i in 0..sample.len() {
                for v in [0u8, 1, 3, 4, 15, 16, 17, 0x7f, 0xff] {
                    let mut s = sample.clone();
                    s[i] = v;
                    let _ = Messages::new("t", &s).count();
                }
            }
        }
    }

    #[test]
    fn attributes_round_trip_and_wrong_widths_are_errors() {
        let n = nest(
            "t",
            4u16,
            &[
                attr("t", 1u16, &9u8.to_ne_bytes()).unwrap(),
                attr("t", 2u16, &30_000u64.to_be_bytes()).unwrap(),
            ],
        )
        .unwrap();
        let mut c = Cursor::new(Vec::new());
        n.to_bytes(&mut c).unwrap();
        let bytes = c.into_inner();
        let mut inner = a(1, &[9]);
        inner.extend(a(2, &30_000u64.to_be_bytes()));
        assert_eq!(bytes, a(4 | 0x8000, &inner));
        let outer = attrs("t", &bytes).unwrap();
        let got = outer.iter().next().unwrap();
        assert_eq!(ty(got), 4);
        let inner = nested("t", got).unwrap();
        let v: Vec<_> = inner.iter().collect();
        assert_eq!(u8_("t", v[0]).unwrap(), 9);
        assert_eq!(be64("t", v[1]).unwrap(), 30_000);
        assert!(be32("t", v[1]).is_err() && be16("t", v[0]).is_err());
        // Truncated or impossible streams are errors, never panics.
        for cut in 0..bytes.len() {
            if let Ok(b) = attrs("t", &bytes[..cut]) {
                b.iter().for_each(|x| drop(nested("t", x)));
            }
        }
        assert!(attrs("t", &bytes[..bytes.len() - 1]).is_err());
    }

    /// Against the running kernel (no root needed): an empty queue is
    /// `WouldBlock`, not a wait.
    #[test]
    fn kernel_nonblocking_recv() {
        let mut s = NlConn::open(NlFamily::Generic, "generic netlink").unwrap();
        assert_eq!(
            s.recv_nowait().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
