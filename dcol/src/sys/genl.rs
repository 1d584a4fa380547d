//! Generic netlink on neli: the socket, family and multicast-group resolution
//! (`CTRL_CMD_GETFAMILY`), request/acknowledgement and dump exchanges, and
//! the generic netlink header that `mptcp_pm` and `wg` build their messages
//! with. Messages, attributes and the socket are neli's types (`Nlmsghdr`,
//! `Genlmsghdr`, `Nlattr`, `socket::NlSocket`), through the layer every
//! netlink protocol here shares ([`super::netlink`]: extended-ack text in
//! errors, length-checked framing, attribute helpers, re-exported below for
//! the families' code); no netlink family is known here.

use std::io::Cursor;
use std::os::fd::BorrowedFd;

use neli::consts::genl::{CtrlAttr, CtrlAttrMcastGrp, CtrlCmd};
use neli::consts::nl::NlmF;
use neli::consts::socket::NlFamily;
use neli::err::BuilderError;
use neli::genl::{Genlmsghdr, GenlmsghdrBuilder};
use neli::types::{Buffer, GenlBuffer};
use neli::FromBytesWithInput;

#[cfg(test)]
pub(crate) use super::netlink::test_attr;
pub use super::netlink::{
    array, attr, attr_str, be16, encode, kernel_error, nest, nested, string, ty, u16_ne, u32_ne,
    u64_ne, u8_, Attr, Messages,
};
use super::netlink::{encode_err, NlConn};
use super::SysError;

/// `GENL_ID_CTRL` (linux/genetlink.h): the controller family.
const GENL_ID_CTRL: u16 = 0x10;

/// A generic netlink message as neli decodes and encodes it here: command
/// and attribute types as numbers, so that neli's generic code is built once
/// for every family (each family's `neli_enum`s name the numbers: match on
/// `EventAttr::from(ty(a))`). That keeps its code size small on the router.
pub type GenlMsg = Genlmsghdr<u8, u16>;

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
#[derive(Debug)]
pub struct GenlSocket {
    conn: NlConn,
}

impl GenlSocket {
    /// Opens and binds the socket and turns extended acks on (kernels before
    /// 4.12 lack them: errors then come without text).
    pub fn open() -> Result<Self, SysError> {
        Ok(GenlSocket {
            conn: NlConn::open(NlFamily::Generic, "generic netlink")?,
        })
    }

    /// The descriptor, for `poll`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.conn.fd()
    }

    /// Joins multicast group `group` (an id from [`Family::group`]).
    pub fn join(&self, group: u32) -> Result<(), SysError> {
        self.conn.join(group)
    }

    /// Sets `SO_RCVBUF` (the kernel doubles it); a larger buffer makes
    /// event-group overflows (`ENOBUFS`) rarer.
    pub fn set_recv_buffer(&self, bytes: usize) -> Result<(), SysError> {
        self.conn.set_recv_buffer(bytes)
    }

    /// One queued datagram, without waiting: `WouldBlock` when there is none.
    /// Other errors keep their `io::Error` (`ENOBUFS`: multicast messages were
    /// lost) for the caller to judge.
    pub fn recv_nowait(&mut self) -> std::io::Result<&[u8]> {
        self.conn.recv_nowait()
    }

    /// Sends `msg` to `family` with `NLM_F_REQUEST | NLM_F_ACK` and waits for
    /// its acknowledgement. A refusal becomes [`SysError::Netlink`] with the
    /// kernel's errno and extended-ack text.
    pub fn request(&mut self, op: &'static str, family: u16, msg: GenlMsg) -> Result<(), SysError> {
        self.conn
            .request(op, family, NlmF::empty(), msg, |_, _| Ok(()))
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
        self.conn.dump(op, family, msg, |ty, p| {
            if ty == family {
                on_reply(genl_payload(op, p)?)?;
            }
            Ok(())
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
        let mut found = None;
        let r = self
            .conn
            .request(op, GENL_ID_CTRL, NlmF::empty(), msg, |ty, p| {
                if ty == GENL_ID_CTRL {
                    found = Some(parse_family(op, p)?);
                }
                Ok(())
            });
        match r {
            Err(SysError::Netlink { errno, .. }) if errno == libc::ENOENT => Err(
                SysError::Unsupported(format!("the kernel has no generic netlink family {name}")),
            ),
            Err(e) => Err(e),
            Ok(()) => found.ok_or_else(|| SysError::Malformed {
                op,
                what: format!("no answer describing {name}"),
            }),
        }
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

/// Decodes a generic netlink message body (`struct genlmsghdr` and
/// attributes) with neli.
pub fn genl_payload(op: &'static str, payload: &[u8]) -> Result<GenlMsg, SysError> {
    Genlmsghdr::from_bytes_with_input(&mut Cursor::new(payload), payload.len())
        .map_err(|source| SysError::Decode { op, source })
}

#[cfg(test)]
mod tests {
    use super::test_attr as a;
    use super::*;
    use crate::sys::netlink::{test_nlmsg as nlmsg, NLMSG_HDRLEN};
    use neli::nl::NlPayload;

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
