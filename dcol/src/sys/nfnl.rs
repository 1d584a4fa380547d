//! Netfilter netlink (nfnetlink) on neli: `struct nfgenmsg` and its
//! attributes as a neli type ([`Nfgenmsg`]), requests of the nf_tables and
//! ctnetlink subsystems ([`NfMsg`]: neli's `Nlmsghdr` around it when sent),
//! and the socket ([`NfSocket`]): request/acknowledgement, dump, batch
//! (`NFNL_MSG_BATCH_BEGIN`, the messages, `NFNL_MSG_BATCH_END` in one
//! datagram: the kernel applies nf_tables batches atomically) and multicast
//! subscription. Errors keep the kernel's extended-ack text
//! ([`super::netlink`]). The subsystems' messages and attributes live with
//! their users (`nft`, `lan`, `vpnfw`, `conntrack`).
//!
//! Why the header is ours: neli 0.7.5's `netfilter` cargo feature gates no
//! code, and its `consts::netfilter` knows only nfnetlink_log
//! (`NFULNL_MSG_*`, `NFULA_*`): no `nfgenmsg`, no nf_tables or ctnetlink
//! message types, no batches (test `neli_knows_no_nf_tables_messages`). So
//! [`Nfgenmsg`] is neli's derives on the kernel's struct, and everything
//! else (attributes, nesting, framing, the socket) is neli's generic types.
//!
//! Byte order: `res_id` is big-endian on the wire (`htons`), the one
//! network-order field of the header; attribute payloads are as each
//! subsystem defines them (mostly network order: `to_be_bytes`).

use std::io::Cursor;
use std::os::fd::BorrowedFd;

use neli::consts::nl::NlmF;
use neli::consts::socket::NlFamily;
use neli::err::DeError;
use neli::types::{Buffer, GenlBuffer};
use neli::{FromBytesWithInput, Header, Size, ToBytes};

use super::netlink::{encode, Attr, NlConn};
use super::SysError;

/// `NFNL_MSG_BATCH_BEGIN` (linux/netfilter/nfnetlink.h; `NLMSG_MIN_TYPE`).
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`.
const NFNL_MSG_BATCH_END: u16 = 0x11;
/// `NFNETLINK_V0`: the only nfnetlink version.
const NFNETLINK_V0: u8 = 0x0;

/// The message type of message `msg` of subsystem `subsys`
/// (`NFNL_SUBSYS_*`): `subsys << 8 | msg`.
pub const fn msg_type(subsys: u8, msg: u8) -> u16 {
    ((subsys as u16) << 8) | msg as u16
}

/// `struct nfgenmsg` (family, version, resource id) and the attributes that
/// follow it: the body of every nfnetlink message.
#[derive(Debug, Clone, PartialEq, Eq, Size, ToBytes, FromBytesWithInput, Header)]
pub struct Nfgenmsg {
    family: u8,
    version: u8,
    /// `res_id` as neli writes it: host order of the big-endian value, so
    /// that the bytes on the wire are big-endian ([`Nfgenmsg::res_id`]).
    res_id: u16,
    #[neli(input = "input.checked_sub(Self::header_size()).ok_or(DeError::InvalidInput(input))?")]
    attrs: GenlBuffer<u16, Buffer>,
}

impl Nfgenmsg {
    /// A body for address family `family` (`NFPROTO_*`, `AF_*`) with
    /// resource id `res_id` (0, or the subsystem in batch markers).
    pub fn new(family: u8, res_id: u16, attrs: Vec<Attr>) -> Nfgenmsg {
        Nfgenmsg {
            family,
            version: NFNETLINK_V0,
            res_id: res_id.to_be(),
            attrs: attrs.into_iter().collect(),
        }
    }

    /// Decodes a message body (what follows the netlink header) with neli.
    pub fn decode(op: &'static str, payload: &[u8]) -> Result<Nfgenmsg, SysError> {
        Nfgenmsg::from_bytes_with_input(&mut Cursor::new(payload), payload.len())
            .map_err(|source| SysError::Decode { op, source })
    }

    /// The address family.
    pub fn family(&self) -> u8 {
        self.family
    }

    /// The resource id.
    pub fn res_id(&self) -> u16 {
        u16::from_be(self.res_id)
    }

    /// The attributes.
    pub fn attrs(&self) -> &GenlBuffer<u16, Buffer> {
        &self.attrs
    }
}

/// An nfnetlink request before it is sent: its type ([`msg_type`]), flags
/// beyond the `NLM_F_REQUEST` and `NLM_F_ACK` or `NLM_F_DUMP` the socket
/// adds (`NLM_F_CREATE` ...), and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfMsg {
    ty: u16,
    flags: NlmF,
    body: Nfgenmsg,
}

impl NfMsg {
    /// Message `msg` of subsystem `subsys` for address family `family`.
    pub fn new(subsys: u8, msg: u8, flags: NlmF, family: u8, attrs: Vec<Attr>) -> NfMsg {
        NfMsg {
            ty: msg_type(subsys, msg),
            flags,
            body: Nfgenmsg::new(family, 0, attrs),
        }
    }

    /// The message type.
    pub fn ty(&self) -> u16 {
        self.ty
    }

    /// The body.
    pub fn body(&self) -> &Nfgenmsg {
        &self.body
    }

    /// The bytes sent: netlink header with sequence number `seq` and the
    /// message's flags plus `extra`, then the body.
    pub fn encode(self, op: &'static str, seq: u32, extra: NlmF) -> Result<Vec<u8>, SysError> {
        encode(op, self.ty, self.flags | extra, seq, self.body)
    }
}

/// A `NETLINK_NETFILTER` socket (neli's) with extended acks on. Exchanges
/// block for at most a few seconds; [`NfSocket::recv_nowait`] never blocks.
#[derive(Debug)]
pub struct NfSocket {
    conn: NlConn,
}

impl NfSocket {
    /// Opens and binds the socket.
    pub fn open() -> Result<NfSocket, SysError> {
        Ok(NfSocket {
            conn: NlConn::open(NlFamily::Netfilter, "netfilter netlink")?,
        })
    }

    /// A socket subscribed to multicast group `group` (`NFNLGRP_*`) with a
    /// receive buffer of `buffer` bytes (the kernel doubles it), for
    /// [`NfSocket::recv_nowait`].
    pub fn subscribe(group: u32, buffer: usize) -> Result<NfSocket, SysError> {
        let s = NfSocket::open()?;
        s.conn.join(group)?;
        // Best effort: a smaller buffer only makes overflows (ENOBUFS) likelier.
        if let Err(e) = s.conn.set_recv_buffer(buffer) {
            log::debug!("netfilter netlink: {e}");
        }
        Ok(s)
    }

    /// The descriptor, for `poll`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.conn.fd()
    }

    /// One queued datagram, without waiting: `WouldBlock` when there is none;
    /// `ENOBUFS` when notifications were lost.
    pub fn recv_nowait(&mut self) -> std::io::Result<&[u8]> {
        self.conn.recv_nowait()
    }

    /// Sends `m` with `NLM_F_REQUEST | NLM_F_ACK` and waits for its
    /// acknowledgement; answers before it go to `on_reply` as (type, body
    /// bytes). A refusal is [`SysError::Netlink`] with the kernel's errno and
    /// extended-ack text.
    pub fn request(
        &mut self,
        op: &'static str,
        m: NfMsg,
        on_reply: impl FnMut(u16, &[u8]) -> Result<(), SysError>,
    ) -> Result<(), SysError> {
        self.conn.request(op, m.ty, m.flags, m.body, on_reply)
    }

    /// Sends `m` as a dump request and hands every answer to `on_reply` as
    /// (type, body bytes) until the dump ends. An interrupted dump (the table
    /// changed meanwhile) is `EINTR` after all its messages; callers may
    /// retry.
    pub fn dump(
        &mut self,
        op: &'static str,
        m: NfMsg,
        on_reply: impl FnMut(u16, &[u8]) -> Result<(), SysError>,
    ) -> Result<(), SysError> {
        self.conn.dump(op, m.ty, m.body, on_reply)
    }

    /// Sends `msgs` as one batch of subsystem `subsys`: `BATCH_BEGIN`, each
    /// message with `NLM_F_REQUEST | NLM_F_ACK` and its own sequence number,
    /// `BATCH_END`, in one datagram, and waits for every message's
    /// acknowledgement. The kernel applies the batch atomically; the first
    /// refusal is returned.
    pub fn batch(
        &mut self,
        op: &'static str,
        subsys: u8,
        msgs: Vec<NfMsg>,
    ) -> Result<(), SysError> {
        let mut bytes = Vec::new();
        let mut all = Vec::with_capacity(msgs.len().saturating_add(2));
        let mut acked = Vec::with_capacity(msgs.len());
        let begin = self.conn.next_seq();
        bytes.extend(batch_marker(op, NFNL_MSG_BATCH_BEGIN, begin, subsys)?);
        all.push(begin);
        for m in msgs {
            let seq = self.conn.next_seq();
            bytes.extend(m.encode(op, seq, NlmF::REQUEST | NlmF::ACK)?);
            all.push(seq);
            acked.push(seq);
        }
        let end = self.conn.next_seq();
        bytes.extend(batch_marker(op, NFNL_MSG_BATCH_END, end, subsys)?);
        all.push(end);
        self.conn
            .exchange(op, &bytes, &all, &acked, &mut |_, _| Ok(()))
            .map(drop)
    }
}

/// `BATCH_BEGIN` or `BATCH_END` for subsystem `subsys` (its `res_id`).
fn batch_marker(op: &'static str, ty: u16, seq: u32, subsys: u8) -> Result<Vec<u8>, SysError> {
    let body = Nfgenmsg::new(libc::AF_UNSPEC as u8, u16::from(subsys), Vec::new());
    encode(op, ty, NlmF::REQUEST, seq, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::{attr_str, string, test_attr as a, test_nlmsg, Messages};
    use neli::consts::netfilter::NetfilterMsg;

    /// The layout of `struct nfgenmsg` (res_id big-endian on every host)
    /// and of a batch marker.
    #[test]
    fn nfgenmsg_and_batch_marker_layout() {
        let m = NfMsg::new(
            0xa,
            0x1,
            NlmF::empty(),
            1,
            vec![attr_str("t", 1u16, "dcol").unwrap()],
        );
        let b = m.encode("t", 7, NlmF::REQUEST | NlmF::ACK).unwrap();
        let mut body = vec![1, 0, 0, 0];
        body.extend(a(1, b"dcol\0"));
        assert_eq!(b, test_nlmsg(0x0a01, 0x5, 7, &body));
        let marker = batch_marker("t", NFNL_MSG_BATCH_BEGIN, 5, 10).unwrap();
        assert_eq!(marker, test_nlmsg(0x10, 0x1, 5, &[0, 0, 0, 10]));
        let back = Nfgenmsg::decode("t", &body).unwrap();
        assert_eq!((back.family(), back.res_id()), (1, 0));
        assert_eq!(string(back.attrs().iter().next().unwrap()), "dcol");
        let marker_body = Nfgenmsg::decode("t", &marker[16..]).unwrap();
        assert_eq!(marker_body.res_id(), 10);
        // Short or broken bodies are errors, not panics.
        for cut in 0..body.len() {
            let _ = Nfgenmsg::decode("t", &body[..cut]);
        }
        assert!(Nfgenmsg::decode("t", &body[..3]).is_err());
        assert!(Nfgenmsg::decode("t", &body[..body.len() - 1]).is_err());
        let whole: Vec<_> = Messages::new("t", &b).collect::<Result<_, _>>().unwrap();
        assert_eq!(*whole[0].nl_type(), 0x0a01);
    }

    /// What neli's netfilter support covers: nfnetlink_log only. nf_tables
    /// and ctnetlink message types are unknown to it (so [`Nfgenmsg`] and
    /// the message types are ours).
    #[test]
    fn neli_knows_no_nf_tables_messages() {
        assert!(matches!(
            NetfilterMsg::from(0x0401u16),
            NetfilterMsg::LogConfig
        ));
        for ty in [msg_type(0xa, 0xc), msg_type(0x1, 0x2), NFNL_MSG_BATCH_BEGIN] {
            assert!(
                matches!(NetfilterMsg::from(ty), NetfilterMsg::UnrecognizedConst(_)),
                "neli now knows message type {ty:#x}: use its constants"
            );
        }
    }

    /// Against the running kernel (root, a fresh namespace; nothing is
    /// created): a request nf_tables refuses keeps the kernel's errno; an
    /// empty batch is fine; a refused batch reports the refusal with the
    /// kernel's extended-ack text; the socket stays usable and nothing is
    /// left queued.
    #[test]
    #[cfg_attr(
        not(dcol_root),
        ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
    )]
    fn root_refusals_and_batches() {
        if !crate::sys::netlink::testns::is_root() {
            eprintln!("SKIP: needs root");
            return;
        }
        let ns = crate::sys::netlink::testns::NsThread::new();
        ns.run(|| {
            let mut s = NfSocket::open().unwrap();
            // NFT_MSG_GETTABLE of a table that does not exist.
            let get = |name: &str| {
                NfMsg::new(
                    0xa,
                    0x1,
                    NlmF::empty(),
                    1,
                    vec![attr_str("t", 1u16, name).unwrap()],
                )
            };
            let e = s.request("t", get("dcol_none"), |_, _| Ok(()));
            assert!(
                matches!(e, Err(SysError::Netlink { errno, .. }) if errno == libc::ENOENT),
                "{e:?}"
            );
            s.batch("t", 0xa, Vec::new()).expect("an empty batch");
            // NFT_MSG_DELTABLE of a missing table inside a batch: ENOENT,
            // with nf_tables' extack pointing at the name.
            let del = NfMsg::new(
                0xa,
                0x2,
                NlmF::empty(),
                1,
                vec![attr_str("t", 1u16, "dcol_none").unwrap()],
            );
            let e = s.batch("t", 0xa, vec![del]);
            assert!(
                matches!(&e, Err(SysError::Netlink { errno, .. }) if *errno == libc::ENOENT),
                "{e:?}"
            );
            // A NEWTABLE whose name is longer than the policy allows: the
            // kernel's reason comes back with the errno.
            let long = NfMsg::new(
                0xa,
                0x0,
                NlmF::CREATE,
                1,
                vec![attr_str("t", 1u16, &"x".repeat(300)).unwrap()],
            );
            match s.batch("t", 0xa, vec![long]) {
                Err(SysError::Netlink { errno, extack, .. }) => {
                    assert_eq!(errno, libc::ERANGE);
                    assert_eq!(
                        extack.as_deref(),
                        Some("Attribute failed policy validation")
                    );
                }
                other => panic!("{other:?}"),
            }
            assert!(s.request("t", get("dcol_none"), |_, _| Ok(())).is_err());
            assert_eq!(
                s.recv_nowait().unwrap_err().kind(),
                std::io::ErrorKind::WouldBlock
            );
        });
    }
}
