//! Generic netlink on neli: the socket, family and multicast-group resolution
//! (`CTRL_CMD_GETFAMILY`), request/acknowledgement and dump exchanges, and the
//! attribute helpers that `mptcp_pm` and `wg` build their messages with.
//! Messages, attributes and the socket are neli's types (`Nlmsghdr`,
//! `Genlmsghdr`, `Nlattr`, `socket::NlSocket`); no netlink family is known here.
//!
//! Two small pieces are our own, where neli 0.7.5 falls short:
//! - **Errors keep the kernel's extended-ack text.** neli's `NlRouter` turns
//!   replies into typed ones with `Nlmsgerr::to_typed`, which drops the
//!   `ext_ack` attributes (test
//!   `sys::mptcp_pm::tests::root_neli_router_drops_extack`). We read each
//!   `Nlmsgerr` ourselves ([`kernel_error`]), so a refused command says why
//!   ("invalid token", "did not match address and id").
//! - **Framing checks lengths before neli parses.** neli's derived decoders
//!   subtract header sizes from the lengths a message states without checking
//!   them (`nlmsg_len - 16`; the echoed request's padded length in an error),
//!   which panics under overflow checks (debug builds, OpenWrt's feed).
//!   [`Messages`] cuts a datagram at each header's length, checks those two
//!   lengths and hands neli one message at a time (tests
//!   `neli_panics_on_short_nlmsg_len`, `framing_never_panics`).
//!
//! Byte order: neli encodes and decodes integers in host order, as netlink
//! does; fields the kernel defines as network order are read as byte arrays
//! by the caller ([`be16`], [`array`]).

use std::io::Cursor;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use neli::attr::Attribute;
use neli::consts::genl::{CtrlAttr, CtrlAttrMcastGrp, CtrlCmd};
use neli::consts::nl::{NlmF, Nlmsg, NlmsgerrAttr};
use neli::consts::socket::{Msg, NlFamily};
use neli::err::{BuilderError, SerError};
use neli::genl::{AttrTypeBuilder, Genlmsghdr, GenlmsghdrBuilder, Nlattr, NlattrBuilder};
use neli::nl::{NlPayload, Nlmsghdr, NlmsghdrBuilder};
use neli::socket::NlSocket;
use neli::types::{Buffer, GenlBuffer};
use neli::utils::Groups;
use neli::{FromBytes, FromBytesWithInput, Size, ToBytes};

use super::os::poll_readable;
use super::SysError;

/// `GENL_ID_CTRL` (linux/genetlink.h): the controller family.
const GENL_ID_CTRL: u16 = 0x10;
/// `NLMSG_HDRLEN`.
const NLMSG_HDRLEN: usize = 16;
/// Receive buffer: larger than any datagram the kernel builds (it caps dump
/// datagrams at 32 KiB plus headers).
const RECV_BUF: usize = 64 * 1024;
/// How long an exchange waits for the kernel before giving up.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

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

/// A generic netlink message as neli decodes and encodes it here: command
/// and attribute types as numbers, so that neli's generic code is built once
/// for every family (each family's `neli_enum`s name the numbers: match on
/// `EventAttr::from(ty(a))`). That keeps its code size small on the router.
pub type GenlMsg = Genlmsghdr<u8, u16>;

/// A generic netlink attribute (type as a number, payload as bytes).
pub type Attr = Nlattr<u16, Buffer>;

/// A generic netlink family as the controller describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// Its message type (`nlmsg_type`), assigned when the family registered.
    pub id: u16,
    /// Multicast groups: name and id.
    pub groups: Vec<(String, u32)>,
}

impl Family {
    /// The id of multicast group `name`.
    pub fn group(&self, name: &str) -> Option<u32> {
        self.groups.iter().find(|(n, _)| n == name).map(|g| g.1)
    }
}

/// A `NETLINK_GENERIC` socket (neli's) with extended acks on. Exchanges block
/// for at most a few seconds; [`GenlSocket::recv_nowait`] never blocks.
pub struct GenlSocket {
    sock: NlSocket,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for GenlSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenlSocket")
            .field("fd", &self.fd())
            .field("seq", &self.seq)
            .finish()
    }
}

impl GenlSocket {
    /// Opens and binds the socket and turns extended acks on (kernels before
    /// 4.12 lack them: errors then come without text).
    pub fn open() -> Result<Self, SysError> {
        let sock = NlSocket::connect(NlFamily::Generic, None, Groups::empty()).map_err(|e| {
            if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) {
                SysError::Unsupported("generic netlink is not supported by this kernel".into())
            } else {
                SysError::io("generic netlink socket", e)
            }
        })?;
        if let Err(e) = sock.enable_ext_ack(true) {
            log::debug!("generic netlink: NETLINK_EXT_ACK: {e}");
        }
        Ok(GenlSocket {
            sock,
            seq: initial_seq(),
            buf: vec![0; RECV_BUF],
        })
    }

    /// The descriptor, for `poll`.
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Joins multicast group `group` (an id from [`Family::group`]).
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
    pub fn recv_nowait(&mut self) -> std::io::Result<&[u8]> {
        self.recv(Msg::DONTWAIT)
    }

    fn recv(&mut self, flags: Msg) -> std::io::Result<&[u8]> {
        loop {
            match self.sock.recv(&mut self.buf[..], flags | Msg::TRUNC) {
                Ok((n, _)) if n > self.buf.len() => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("netlink datagram of {n} bytes truncated"),
                    ))
                }
                Ok((n, _)) => return Ok(&self.buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
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
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer from the kernel"),
            ));
        }
        self.recv(Msg::DONTWAIT).map_err(|e| SysError::io(op, e))
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    fn send(
        &mut self,
        op: &'static str,
        family: u16,
        flags: NlmF,
        msg: GenlMsg,
    ) -> Result<u32, SysError> {
        let seq = self.next_seq();
        let bytes = encode(op, family, flags, seq, msg)?;
        let n = self
            .sock
            .send(&bytes, Msg::empty())
            .map_err(|e| SysError::io(op, e))?;
        if n != bytes.len() {
            return Err(SysError::io(
                op,
                std::io::Error::new(std::io::ErrorKind::WriteZero, "short netlink send"),
            ));
        }
        Ok(seq)
    }

    /// Reads the kernel's messages answering request `seq` (others are
    /// stale and skipped) and hands each to `f` until it returns a result,
    /// for [`EXCHANGE_TIMEOUT`] at most.
    fn answers<R>(
        &mut self,
        op: &'static str,
        seq: u32,
        mut f: impl FnMut(Nlmsghdr<u16, Buffer>) -> Result<Option<R>, SysError>,
    ) -> Result<R, SysError> {
        let deadline = Instant::now() + EXCHANGE_TIMEOUT;
        loop {
            let data = self.recv_reply(op, deadline)?;
            for m in Messages::new(op, data) {
                let m = m?;
                if *m.nl_seq() != seq {
                    continue;
                }
                if let Some(r) = f(m)? {
                    return Ok(r);
                }
            }
        }
    }

    /// Sends `msg` to `family` with `NLM_F_REQUEST | NLM_F_ACK` and waits for
    /// its acknowledgement. A refusal becomes [`SysError::Netlink`] with the
    /// kernel's errno and extended-ack text.
    pub fn request(&mut self, op: &'static str, family: u16, msg: GenlMsg) -> Result<(), SysError> {
        let seq = self.send(op, family, NlmF::REQUEST | NlmF::ACK, msg)?;
        self.answers(op, seq, |m| match m.nl_payload() {
            NlPayload::Ack(_) => Ok(Some(())),
            NlPayload::Err(e) => Err(kernel_error(op, e.error(), e.ext_ack())),
            _ => Ok(None),
        })
    }

    /// Sends `msg` to `family` as a dump request (`NLM_F_REQUEST |
    /// NLM_F_DUMP`) and hands every reply's generic netlink message to
    /// `on_reply` until `NLMSG_DONE`. A dump the kernel reports as interrupted
    /// (`NLM_F_DUMP_INTR`: the object changed meanwhile) is `EINTR` after all
    /// its messages were delivered; callers may retry.
    pub fn dump(
        &mut self,
        op: &'static str,
        family: u16,
        msg: GenlMsg,
        mut on_reply: impl FnMut(GenlMsg) -> Result<(), SysError>,
    ) -> Result<(), SysError> {
        let seq = self.send(op, family, NlmF::REQUEST | NlmF::DUMP, msg)?;
        let mut interrupted = false;
        self.answers(op, seq, |m| {
            interrupted |= m.nl_flags().contains(NlmF::DUMP_INTR);
            match m.nl_payload() {
                NlPayload::Err(e) => Err(kernel_error(op, e.error(), e.ext_ack())),
                NlPayload::DumpExtAck(e) if *e.error() != 0 => {
                    Err(kernel_error(op, e.error(), e.ext_ack()))
                }
                NlPayload::DumpExtAck(_) | NlPayload::Empty | NlPayload::Ack(_) if interrupted => {
                    Err(SysError::Netlink {
                        op,
                        errno: libc::EINTR,
                        extack: Some("dump interrupted".into()),
                    })
                }
                NlPayload::DumpExtAck(_) | NlPayload::Empty | NlPayload::Ack(_) => Ok(Some(())),
                NlPayload::Payload(p) if *m.nl_type() == family => {
                    on_reply(genl_payload(op, p.as_ref())?)?;
                    Ok(None)
                }
                NlPayload::Payload(_) => Ok(None),
            }
        })
    }

    /// Resolves generic netlink family `name` (`CTRL_CMD_GETFAMILY`): its id
    /// and multicast groups, which differ between kernels.
    /// [`SysError::Unsupported`] when the kernel has no such family.
    pub fn resolve(&mut self, name: &str) -> Result<Family, SysError> {
        let op = "resolve generic netlink family";
        let msg = genl(
            op,
            CtrlCmd::Getfamily,
            0x2,
            vec![attr_str(op, CtrlAttr::FamilyName, name)?],
        )?;
        let seq = self.send(op, GENL_ID_CTRL, NlmF::REQUEST | NlmF::ACK, msg)?;
        let mut found = None;
        self.answers(op, seq, |m| match m.nl_payload() {
            NlPayload::Payload(p) if *m.nl_type() == GENL_ID_CTRL => {
                found = Some(parse_family(op, p.as_ref())?);
                Ok(None)
            }
            NlPayload::Err(e) if *e.error() == -libc::ENOENT => Err(SysError::Unsupported(
                format!("the kernel has no generic netlink family {name}"),
            )),
            NlPayload::Err(e) => Err(kernel_error(op, e.error(), e.ext_ack())),
            NlPayload::Ack(_) => found.take().map(Some).ok_or_else(|| SysError::Malformed {
                op,
                what: format!("no answer describing {name}"),
            }),
            _ => Ok(None),
        })
    }
}

/// A `CTRL_CMD_NEWFAMILY` answer (generic netlink header and attributes): the
/// family's id and multicast groups.
pub fn parse_family(op: &'static str, payload: &[u8]) -> Result<Family, SysError> {
    let msg = genl_payload(op, payload)?;
    let (mut id, mut groups) = (None, Vec::new());
    for a in msg.attrs().iter() {
        match CtrlAttr::from(ty(a)) {
            CtrlAttr::FamilyId => id = Some(u16_ne(op, a)?),
            CtrlAttr::McastGroups => {
                for g in nested(op, a)?.iter() {
                    let (mut name, mut gid) = (None, None);
                    for f in nested(op, g)?.iter() {
                        match CtrlAttrMcastGrp::from(ty(f)) {
                            CtrlAttrMcastGrp::Name => name = Some(string(f)),
                            CtrlAttrMcastGrp::Id => gid = Some(u32_ne(op, f)?),
                            _ => {}
                        }
                    }
                    if let (Some(n), Some(i)) = (name, gid) {
                        groups.push((n, i));
                    }
                }
            }
            _ => {}
        }
    }
    let id = id.ok_or_else(|| SysError::Malformed {
        op,
        what: "no family id".into(),
    })?;
    Ok(Family { id, groups })
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

fn nul_terminated(b: &[u8]) -> String {
    let s = b.split(|&c| c == 0).next().unwrap_or_default();
    String::from_utf8_lossy(s).into_owned()
}

/// Encodes a request: netlink header (type `family`, `flags`, `seq`) and `msg`.
pub fn encode(
    op: &'static str,
    family: u16,
    flags: NlmF,
    seq: u32,
    msg: GenlMsg,
) -> Result<Vec<u8>, SysError> {
    let nl = NlmsghdrBuilder::default()
        .nl_type(family)
        .nl_flags(flags)
        .nl_seq(seq)
        .nl_payload(NlPayload::Payload(msg))
        .build()
        .map_err(|e| encode_err(op, BuilderError::from(e)))?;
    let mut c = Cursor::new(Vec::with_capacity(nl.padded_size()));
    nl.to_bytes(&mut c).map_err(|e| encode_err(op, e))?;
    Ok(c.into_inner())
}

fn encode_err(op: &'static str, e: impl Into<EncodeError>) -> SysError {
    SysError::Encode {
        op,
        source: e.into(),
    }
}

/// A generic netlink message: command `cmd` (a family's command enum or a
/// number), family version `version`, `attrs`.
pub fn genl(
    op: &'static str,
    cmd: impl Into<u8>,
    version: u8,
    attrs: Vec<Attr>,
) -> Result<GenlMsg, SysError> {
    GenlmsghdrBuilder::default()
        .cmd(cmd.into())
        .version(version)
        .attrs(attrs.into_iter().collect::<GenlBuffer<u16, Buffer>>())
        .build()
        .map_err(|e| encode_err(op, BuilderError::from(e)))
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

/// A nested attribute (`NLA_F_NESTED`) of type `ty` holding `children`.
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

/// Decodes a generic netlink message body (`struct genlmsghdr` and
/// attributes) with neli.
pub fn genl_payload(op: &'static str, payload: &[u8]) -> Result<GenlMsg, SysError> {
    Genlmsghdr::from_bytes_with_input(&mut Cursor::new(payload), payload.len())
        .map_err(|source| SysError::Decode { op, source })
}

/// The attributes nested in `a`.
pub fn nested(op: &'static str, a: &Attr) -> Result<GenlBuffer<u16, Buffer>, SysError> {
    let p = a.nla_payload().as_ref();
    GenlBuffer::from_bytes_with_input(&mut Cursor::new(p), p.len())
        .map_err(|source| SysError::Decode { op, source })
}

/// The type of `a` (without the nested and byte-order flags), to match as a
/// family's attribute enum: `EventAttr::from(ty(a))`.
pub fn ty(a: &Attr) -> u16 {
    *a.nla_type().nla_type()
}

/// The payload of `a`, which must be exactly `N` bytes.
pub fn array<const N: usize>(op: &'static str, a: &Attr) -> Result<[u8; N], SysError> {
    <[u8; N]>::try_from(a.payload().as_ref()).map_err(|_| SysError::Malformed {
        op,
        what: format!(
            "attribute {} has {} bytes, expected {N}",
            ty(a),
            a.payload().len()
        ),
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

/// A NUL-terminated string attribute (text after the first NUL is ignored;
/// invalid UTF-8 is replaced).
pub fn string(a: &Attr) -> String {
    nul_terminated(a.payload().as_ref())
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

    fn cut(&mut self) -> Result<&'a [u8], String> {
        let d = self.data;
        let len = d
            .get(..4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .filter(|_| d.len() >= NLMSG_HDRLEN)
            .ok_or_else(|| format!("{} trailing bytes, short of a header", d.len()))?;
        if len < NLMSG_HDRLEN || len > d.len() {
            return Err(format!("header states {len} bytes; {} are left", d.len()));
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
                return Err(format!(
                    "error message echoes {echoed} bytes in {}",
                    body.len() - 4
                ));
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
            Err(what) => {
                self.data = &[];
                return Some(Err(SysError::Malformed { op, what }));
            }
        };
        Some(
            Nlmsghdr::from_bytes(&mut Cursor::new(msg))
                .map_err(|source| SysError::Decode { op, source }),
        )
    }
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

#[cfg(test)]
mod tests {
    use super::test_attr as a;
    use super::*;

    fn nlmsg(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut v = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn family_answer_with_groups() {
        // CTRL_CMD_NEWFAMILY for mptcp_pm: id, name, version, two groups.
        let mut body = vec![0x1, 0x2, 0, 0];
        body.extend(a(1, &0x1du16.to_ne_bytes()));
        body.extend(a(2, b"mptcp_pm\0"));
        body.extend(a(3, &1u32.to_ne_bytes()));
        let mut g1 = a(1, b"mptcp_pm_cmds\0");
        g1.extend(a(2, &0xbu32.to_ne_bytes()));
        let mut g2 = a(2, &0xcu32.to_ne_bytes());
        g2.extend(a(1, b"mptcp_pm_events\0"));
        let mut groups = a(1 | 0x8000, &g1);
        groups.extend(a(2 | 0x8000, &g2));
        body.extend(a(7 | 0x8000, &groups));
        let f = parse_family("t", &body).unwrap();
        assert_eq!(f.id, 0x1d);
        assert_eq!(f.group("mptcp_pm_events"), Some(0xc));
        assert_eq!(f.group("mptcp_pm_cmds"), Some(0xb));
        assert_eq!(f.group("nope"), None);
        // No id: an error, not a panic; cuts anywhere: never a panic.
        assert!(parse_family("t", &[0x1, 0x2, 0, 0]).is_err());
        for cut in 0..body.len() {
            let _ = parse_family("t", &body[..cut]);
        }
    }

    /// A refusal laid out as the kernel sends it (error -EINVAL, the echoed
    /// request, then NLMSGERR_ATTR_MSG and _OFFS; a real one is in
    /// `mptcp_pm`'s tests), in host order so that it runs on big-endian too.
    #[test]
    fn error_with_extack_keeps_text() {
        let request = encode(
            "t",
            0x1d,
            NlmF::REQUEST | NlmF::ACK,
            7,
            genl(
                "t",
                0xa,
                1,
                vec![attr("t", 4u16, &5u32.to_ne_bytes()).unwrap()],
            )
            .unwrap(),
        )
        .unwrap();
        let mut body = (-libc::EINVAL).to_ne_bytes().to_vec();
        body.extend_from_slice(&request);
        body.extend(a(1, b"invalid token\0"));
        body.extend(a(2, &24u32.to_ne_bytes()));
        let dgram = nlmsg(0x2, 0x200, 7, &body);
        let msgs: Vec<_> = Messages::new("t", &dgram).collect();
        assert_eq!(msgs.len(), 1);
        let m = msgs.into_iter().next().unwrap().unwrap();
        let NlPayload::Err(e) = m.nl_payload() else {
            panic!("not an error: {m:?}");
        };
        let err = kernel_error("mptcp_pm SUBFLOW_CREATE", e.error(), e.ext_ack());
        assert!(matches!(
            &err,
            SysError::Netlink { errno, extack: Some(t), .. } if *errno == libc::EINVAL && t == "invalid token"
        ));
        assert!(err.to_string().contains("(invalid token)"), "{err}");
        // An ack, then a second message in the same datagram.
        let mut ack = 0i32.to_ne_bytes().to_vec();
        ack.extend_from_slice(&request[..NLMSG_HDRLEN]);
        let mut two = nlmsg(0x2, 0x100, 7, &ack);
        two.extend(nlmsg(0x1d, 0, 8, &[0xa, 1, 0, 0]));
        let msgs: Vec<_> = Messages::new("t", &two).collect::<Result<_, _>>().unwrap();
        assert!(matches!(msgs[0].nl_payload(), NlPayload::Ack(_)));
        assert_eq!(*msgs[1].nl_seq(), 8);
    }

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

    /// Against the running kernel (no root needed, read-only): the controller
    /// resolves itself through neli's socket; an unknown family is
    /// `Unsupported`, not an errno; a refused request keeps its extack text.
    #[test]
    fn kernel_resolve_family() {
        let mut s = GenlSocket::open().unwrap();
        let f = s.resolve("nlctrl").unwrap();
        assert_eq!(f.id, GENL_ID_CTRL);
        assert!(f.group("notify").is_some(), "{f:?}");
        let e = s.resolve("dcol_nofamily");
        assert!(matches!(e, Err(SysError::Unsupported(_))), "{e:?}");
        // Names longer than GENL_NAMSIZ - 1 fail policy validation, with the text.
        match s.resolve("dcol-name-too-long-for-genl") {
            Err(SysError::Netlink { errno, extack, .. }) => {
                assert_eq!(errno, libc::EINVAL);
                assert!(extack.is_some_and(|t| !t.is_empty()));
            }
            other => panic!("{other:?}"),
        }
        // The socket stays usable after an error, and nothing is left queued.
        assert_eq!(s.resolve("nlctrl").unwrap().id, GENL_ID_CTRL);
        assert_eq!(
            s.recv_nowait().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn request_encoding_is_netlink_layout() {
        let msg = genl(
            "t",
            0xa,
            1,
            vec![
                attr("t", 4u16, &0xaabb_ccddu32.to_ne_bytes()).unwrap(),
                nest("t", 1u16, &[attr("t", 1u16, &2u16.to_ne_bytes()).unwrap()]).unwrap(),
                attr_str("t", 2u16, "wg0").unwrap(),
            ],
        )
        .unwrap();
        let b = encode("t", 0x1d, NlmF::REQUEST | NlmF::ACK, 9, msg).unwrap();
        let mut want = nlmsg(0x1d, 0x5, 9, &[0xa, 1, 0, 0]);
        want.extend(a(4, &0xaabb_ccddu32.to_ne_bytes()));
        want.extend(a(1 | 0x8000, &a(1, &2u16.to_ne_bytes())));
        want.extend(a(2, b"wg0\0"));
        let len = want.len() as u32;
        want[..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(b, want);
    }
}
