//! The kernel's MPTCP path manager over generic netlink (family `mptcp_pm`,
//! include/uapi/linux/mptcp_pm.h): typed events from the `mptcp_pm_events`
//! multicast group ([`PmEvents`]) and the userspace-PM commands the client needs
//! ([`PmSocket`]: SUBFLOW_CREATE, SUBFLOW_DESTROY, SET_FLAGS). Family and group
//! ids are resolved at run time (they differ between kernels).
//!
//! It does not switch the path manager (`net.mptcp.path_manager`, see
//! `sys::sysctl`), keep any per-connection state, or decide anything: decoding
//! is pure ([`decode_event_bytes`]) and the commands are one request each.
//!
//! Byte order: in events, addresses and ports are network order. In requests,
//! `MPTCP_PM_ADDR_ATTR_PORT` is **host** order (the kernel does
//! `htons(nla_get_u16())`), addresses network order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;

use super::netlink::{
    self, Attr, Attrs, Messages, MsgBuilder, NlSocket, GENL_HDRLEN, NETLINK_GENERIC,
};
use super::SysError;
use crate::client::{PmEvent, SubflowInfo, Token};

/// `MPTCP_PM_NAME`.
const FAMILY_NAME: &str = "mptcp_pm";
/// `MPTCP_PM_EV_GRP_NAME`.
const EVENTS_GROUP: &str = "mptcp_pm_events";
/// `MPTCP_PM_VER`.
const PM_VERSION: u8 = 0x1;

// enum mptcp_event_type (include/uapi/linux/mptcp_pm.h)
/// `MPTCP_EVENT_CREATED`.
const EV_CREATED: u8 = 0x1;
/// `MPTCP_EVENT_ESTABLISHED`.
const EV_ESTABLISHED: u8 = 0x2;
/// `MPTCP_EVENT_CLOSED`.
const EV_CLOSED: u8 = 0x3;
/// `MPTCP_EVENT_SUB_ESTABLISHED`.
const EV_SUB_ESTABLISHED: u8 = 0xa;
/// `MPTCP_EVENT_SUB_CLOSED`.
const EV_SUB_CLOSED: u8 = 0xb;
/// `MPTCP_EVENT_SUB_PRIORITY`.
const EV_SUB_PRIORITY: u8 = 0xd;

// enum mptcp_event_attr
/// `MPTCP_ATTR_TOKEN` (u32).
const ATTR_TOKEN: u16 = 0x1;
/// `MPTCP_ATTR_FAMILY` (u16).
const ATTR_FAMILY: u16 = 0x2;
/// `MPTCP_ATTR_LOC_ID` (u8).
const ATTR_LOC_ID: u16 = 0x3;
/// `MPTCP_ATTR_REM_ID` (u8).
const ATTR_REM_ID: u16 = 0x4;
/// `MPTCP_ATTR_SADDR4` (be32).
const ATTR_SADDR4: u16 = 0x5;
/// `MPTCP_ATTR_SADDR6` (in6_addr).
const ATTR_SADDR6: u16 = 0x6;
/// `MPTCP_ATTR_DADDR4` (be32).
const ATTR_DADDR4: u16 = 0x7;
/// `MPTCP_ATTR_DADDR6` (in6_addr).
const ATTR_DADDR6: u16 = 0x8;
/// `MPTCP_ATTR_SPORT` (be16).
const ATTR_SPORT: u16 = 0x9;
/// `MPTCP_ATTR_DPORT` (be16).
const ATTR_DPORT: u16 = 0xa;
/// `MPTCP_ATTR_BACKUP` (u8).
const ATTR_BACKUP: u16 = 0xb;
/// `MPTCP_ATTR_ERROR` (u8 on current kernels; u32 accepted too).
const ATTR_ERROR: u16 = 0xc;
/// `MPTCP_ATTR_FLAGS` (u16).
const ATTR_FLAGS: u16 = 0xd;
/// `MPTCP_ATTR_SERVER_SIDE` (u8, deprecated for `MPTCP_PM_EV_FLAG_SERVER_SIDE`).
const ATTR_SERVER_SIDE: u16 = 0x12;
/// `MPTCP_PM_EV_FLAG_SERVER_SIDE` in `MPTCP_ATTR_FLAGS` (include/uapi/linux/mptcp.h).
const EV_FLAG_SERVER_SIDE: u32 = 0x2;

// MPTCP_PM_CMD_*
/// `MPTCP_PM_CMD_SET_FLAGS`.
const CMD_SET_FLAGS: u8 = 0x7;
/// `MPTCP_PM_CMD_SUBFLOW_CREATE`.
const CMD_SUBFLOW_CREATE: u8 = 0xa;
/// `MPTCP_PM_CMD_SUBFLOW_DESTROY`.
const CMD_SUBFLOW_DESTROY: u8 = 0xb;

// MPTCP_PM_ATTR_*
/// `MPTCP_PM_ATTR_ADDR` (nest: the local address).
const PM_ATTR_ADDR: u16 = 0x1;
/// `MPTCP_PM_ATTR_TOKEN` (u32).
const PM_ATTR_TOKEN: u16 = 0x4;
/// `MPTCP_PM_ATTR_ADDR_REMOTE` (nest).
const PM_ATTR_ADDR_REMOTE: u16 = 0x6;

// MPTCP_PM_ADDR_ATTR_*
/// `MPTCP_PM_ADDR_ATTR_FAMILY` (u16).
const ADDR_ATTR_FAMILY: u16 = 0x1;
/// `MPTCP_PM_ADDR_ATTR_ID` (u8).
const ADDR_ATTR_ID: u16 = 0x2;
/// `MPTCP_PM_ADDR_ATTR_ADDR4` (be32).
const ADDR_ATTR_ADDR4: u16 = 0x3;
/// `MPTCP_PM_ADDR_ATTR_ADDR6` (in6_addr).
const ADDR_ATTR_ADDR6: u16 = 0x4;
/// `MPTCP_PM_ADDR_ATTR_PORT` (u16, host order in requests).
const ADDR_ATTR_PORT: u16 = 0x5;
/// `MPTCP_PM_ADDR_ATTR_FLAGS` (u32).
const ADDR_ATTR_FLAGS: u16 = 0x6;
/// `MPTCP_PM_ADDR_FLAG_BACKUP` (include/uapi/linux/mptcp.h).
const ADDR_FLAG_BACKUP: u32 = 0x4;

/// At most this many datagrams per [`PmEvents::read`], so that an event storm
/// cannot starve the daemon loop (the fd stays readable for the next round).
const MAX_DATAGRAMS_PER_READ: usize = 64;

const OP_EVENT: &str = "decode mptcp_pm event";

/// Subscription to the path manager's event group (non-blocking).
#[derive(Debug)]
pub struct PmEvents {
    sock: NlSocket,
    family: u16,
}

impl PmEvents {
    /// Resolves `mptcp_pm` and its `mptcp_pm_events` group, joins the group and
    /// switches the socket to non-blocking. [`SysError::Unsupported`] if the
    /// kernel has no MPTCP path manager.
    pub fn open() -> Result<Self, SysError> {
        let mut sock = NlSocket::open(NETLINK_GENERIC)?;
        let fam = netlink::resolve_family(&mut sock, FAMILY_NAME)?;
        let group = fam.group(EVENTS_GROUP).ok_or_else(|| {
            SysError::Unsupported(format!("{FAMILY_NAME} has no {EVENTS_GROUP} group"))
        })?;
        // Best effort: a bigger queue makes overflow rarer under bursts.
        if let Err(e) = sock.set_recv_buffer(1 << 20) {
            log::debug!("mptcp_pm events: {e}");
        }
        sock.add_membership(group)?;
        sock.set_nonblocking(true)?;
        Ok(PmEvents {
            sock,
            family: fam.id,
        })
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.sock.fd()
    }

    /// Every event queued now; `Ok(empty)` when there is none. Malformed events
    /// are logged and skipped; a queue overflow (`ENOBUFS`: events were lost) is
    /// logged and reading continues.
    pub fn read(&mut self) -> Result<Vec<PmEvent>, SysError> {
        let mut out = Vec::new();
        let family = self.family;
        for _ in 0..MAX_DATAGRAMS_PER_READ {
            let data = match self.sock.recv() {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    log::warn!("mptcp_pm events: receive queue overflowed, events were lost");
                    continue;
                }
                Err(e) => return Err(SysError::io("read mptcp_pm events", e)),
            };
            for m in Messages::new(OP_EVENT, data) {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        log::warn!("mptcp_pm events: {e}");
                        break;
                    }
                };
                if m.ty != family {
                    continue;
                }
                match decode_event_bytes(m.payload) {
                    Ok(ev) => out.push(ev),
                    Err(e) => log::warn!("mptcp_pm events: skipped: {e}"),
                }
            }
        }
        Ok(out)
    }
}

/// Decodes one event message body: `struct genlmsghdr` (cmd = event type)
/// followed by attributes. Pure; also the fuzz target's entry point.
pub fn decode_event_bytes(payload: &[u8]) -> Result<PmEvent, SysError> {
    let (Some(&cmd), Some(attrs)) = (payload.first(), payload.get(GENL_HDRLEN..)) else {
        return Err(SysError::Malformed {
            op: OP_EVENT,
            what: format!("{} bytes, short of a genl header", payload.len()),
        });
    };
    decode_event(cmd, attrs)
}

/// The attributes of an event, as far as they were present and well-formed.
#[derive(Debug, Default)]
struct Fields {
    token: Option<u32>,
    family: Option<u16>,
    loc_id: Option<u8>,
    rem_id: Option<u8>,
    saddr4: Option<Ipv4Addr>,
    saddr6: Option<Ipv6Addr>,
    daddr4: Option<Ipv4Addr>,
    daddr6: Option<Ipv6Addr>,
    sport: Option<u16>,
    dport: Option<u16>,
    backup: bool,
    error: Option<u32>,
    server_side: bool,
}

impl Fields {
    fn parse(attrs: &[u8]) -> Result<Fields, SysError> {
        let mut f = Fields::default();
        for a in Attrs::new(OP_EVENT, attrs) {
            let a = a?;
            if let Err(e) = f.take(&a) {
                log::warn!("mptcp_pm event: ignored attribute: {e}");
            }
        }
        Ok(f)
    }

    fn take(&mut self, a: &Attr<'_>) -> Result<(), SysError> {
        match a.ty {
            ATTR_TOKEN => self.token = Some(a.u32_ne()?),
            ATTR_FAMILY => self.family = Some(a.u16_ne()?),
            ATTR_LOC_ID => self.loc_id = Some(a.u8()?),
            ATTR_REM_ID => self.rem_id = Some(a.u8()?),
            ATTR_SADDR4 => self.saddr4 = Some(Ipv4Addr::from(a.u32_be()?)),
            ATTR_SADDR6 => self.saddr6 = Some(ipv6(a)?),
            ATTR_DADDR4 => self.daddr4 = Some(Ipv4Addr::from(a.u32_be()?)),
            ATTR_DADDR6 => self.daddr6 = Some(ipv6(a)?),
            ATTR_SPORT => self.sport = Some(a.u16_be()?),
            ATTR_DPORT => self.dport = Some(a.u16_be()?),
            ATTR_BACKUP => self.backup = a.u8()? != 0,
            ATTR_ERROR => self.error = Some(uint(a)?),
            ATTR_FLAGS => self.server_side |= uint(a)? & EV_FLAG_SERVER_SIDE != 0,
            // A flag attribute (no payload) or a u8.
            ATTR_SERVER_SIDE => self.server_side |= a.payload.is_empty() || a.u8()? != 0,
            _ => {}
        }
        Ok(())
    }

    fn ips(&self) -> Option<(IpAddr, IpAddr)> {
        let v4 = || Some((IpAddr::V4(self.saddr4?), IpAddr::V4(self.daddr4?)));
        let v6 = || Some((IpAddr::V6(self.saddr6?), IpAddr::V6(self.daddr6?)));
        match self.family.map(i32::from) {
            Some(libc::AF_INET6) => v6().or_else(v4),
            _ => v4().or_else(v6),
        }
    }

    /// Local and remote socket addresses of the (sub)flow.
    fn endpoints(&self) -> Option<(SocketAddr, SocketAddr)> {
        let (s, d) = self.ips()?;
        Some((
            SocketAddr::new(s, self.sport?),
            SocketAddr::new(d, self.dport?),
        ))
    }

    fn subflow(&self) -> Option<SubflowInfo> {
        let (local, remote) = self.endpoints()?;
        Some(SubflowInfo {
            local_id: self.loc_id.unwrap_or(0),
            remote_id: self.rem_id.unwrap_or(0),
            local,
            remote,
            backup: self.backup,
        })
    }
}

fn ipv6(a: &Attr<'_>) -> Result<Ipv6Addr, SysError> {
    <[u8; 16]>::try_from(a.payload)
        .map(Ipv6Addr::from)
        .map_err(|_| SysError::Malformed {
            op: OP_EVENT,
            what: format!(
                "attribute {} has {} bytes, expected 16",
                a.ty,
                a.payload.len()
            ),
        })
}

/// A host-order unsigned integer of 1, 2 or 4 bytes (the kernel changed some
/// widths between versions).
fn uint(a: &Attr<'_>) -> Result<u32, SysError> {
    match a.payload.len() {
        1 => a.u8().map(u32::from),
        2 => a.u16_ne().map(u32::from),
        _ => a.u32_ne(),
    }
}

/// Decodes event `cmd` from its attribute stream. Events that lack what their
/// type needs, and event types we do not act on, become [`PmEvent::Other`].
fn decode_event(cmd: u8, attrs: &[u8]) -> Result<PmEvent, SysError> {
    let f = Fields::parse(attrs)?;
    let token = f.token.map(Token);
    let odd = |what: &str| {
        log::warn!("mptcp_pm event {cmd}: {what}; kept as Other");
        PmEvent::Other { kind: cmd, token }
    };
    let ev = match (cmd, token) {
        (EV_CREATED | EV_ESTABLISHED, Some(token)) => match f.endpoints() {
            Some((local, remote)) if cmd == EV_CREATED => PmEvent::Created {
                token,
                local,
                remote,
                server_side: f.server_side,
            },
            Some((local, remote)) => PmEvent::Established {
                token,
                local,
                remote,
                server_side: f.server_side,
            },
            None => odd("no complete addresses"),
        },
        (EV_CLOSED, Some(token)) => PmEvent::Closed { token },
        (EV_SUB_ESTABLISHED | EV_SUB_CLOSED | EV_SUB_PRIORITY, Some(token)) => match f.subflow() {
            Some(subflow) if cmd == EV_SUB_ESTABLISHED => {
                PmEvent::SubEstablished { token, subflow }
            }
            Some(subflow) if cmd == EV_SUB_CLOSED => PmEvent::SubClosed {
                token,
                subflow,
                error: f.error,
            },
            Some(subflow) => PmEvent::SubPriority { token, subflow },
            None => odd("no complete subflow addresses"),
        },
        (
            EV_CREATED | EV_ESTABLISHED | EV_CLOSED | EV_SUB_ESTABLISHED | EV_SUB_CLOSED
            | EV_SUB_PRIORITY,
            None,
        ) => odd("no token"),
        _ => PmEvent::Other { kind: cmd, token },
    };
    Ok(ev)
}

/// A `NETLINK_GENERIC` socket for path-manager commands (blocking, each call
/// waits for the kernel's answer, at most a few seconds).
#[derive(Debug)]
pub struct PmSocket {
    sock: NlSocket,
    family: u16,
}

impl PmSocket {
    /// Opens the socket and resolves `mptcp_pm`. [`SysError::Unsupported`] if
    /// the kernel has no MPTCP path manager.
    pub fn open() -> Result<Self, SysError> {
        let mut sock = NlSocket::open(NETLINK_GENERIC)?;
        let fam = netlink::resolve_family(&mut sock, FAMILY_NAME)?;
        Ok(PmSocket {
            sock,
            family: fam.id,
        })
    }

    /// `MPTCP_PM_CMD_SUBFLOW_CREATE`: asks the kernel to open a subflow of
    /// connection `token` from `local` (address id `local_id`, non-zero; reuse
    /// one id per local address and connection) to `remote`. `Ok` means only
    /// "SYN sent": the outcome arrives as SUB_ESTABLISHED or SUB_CLOSED.
    pub fn subflow_create(
        &mut self,
        token: Token,
        local: IpAddr,
        local_id: u8,
        remote: SocketAddr,
    ) -> Result<(), SysError> {
        let op = "mptcp_pm SUBFLOW_CREATE";
        let m = subflow_create_msg(self.family, token, local, local_id, remote)
            .map_err(|e| SysError::io(op, e))?;
        self.sock.request(op, m, |_| Ok(()))
    }

    /// `MPTCP_PM_CMD_SUBFLOW_DESTROY`: closes the subflow `local` → `remote`
    /// (the local port is required) of connection `token`.
    pub fn subflow_destroy(
        &mut self,
        token: Token,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<(), SysError> {
        let op = "mptcp_pm SUBFLOW_DESTROY";
        let m = subflow_destroy_msg(self.family, token, local, remote)
            .map_err(|e| SysError::io(op, e))?;
        self.sock.request(op, m, |_| Ok(()))
    }

    /// `MPTCP_PM_CMD_SET_FLAGS`: sets or clears the backup flag of the subflow
    /// `local` → `remote` of connection `token` (sends MP_PRIO to the peer).
    pub fn set_backup(
        &mut self,
        token: Token,
        local: SocketAddr,
        remote: SocketAddr,
        backup: bool,
    ) -> Result<(), SysError> {
        let op = "mptcp_pm SET_FLAGS";
        let m = set_backup_msg(self.family, token, local, remote, backup)
            .map_err(|e| SysError::io(op, e))?;
        self.sock.request(op, m, |_| Ok(()))
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> std::io::Result<()> {
    if a.is_ipv4() != b.is_ipv4() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{a} and {b} differ in address family"),
        ));
    }
    Ok(())
}

/// Appends an `MPTCP_PM_ADDR_ATTR_*` nest: FAMILY, [ID], ADDR4/ADDR6, [PORT
/// in host order], [FLAGS].
fn put_addr(
    m: &mut MsgBuilder,
    ty: u16,
    ip: IpAddr,
    id: Option<u8>,
    port: Option<u16>,
    flags: Option<u32>,
) {
    let n = m.begin_nested(ty);
    match ip {
        IpAddr::V4(a) => {
            m.attr_u16(ADDR_ATTR_FAMILY, libc::AF_INET as u16);
            if let Some(id) = id {
                m.attr_u8(ADDR_ATTR_ID, id);
            }
            m.attr(ADDR_ATTR_ADDR4, &a.octets());
        }
        IpAddr::V6(a) => {
            m.attr_u16(ADDR_ATTR_FAMILY, libc::AF_INET6 as u16);
            if let Some(id) = id {
                m.attr_u8(ADDR_ATTR_ID, id);
            }
            m.attr(ADDR_ATTR_ADDR6, &a.octets());
        }
    }
    if let Some(p) = port {
        m.attr_u16(ADDR_ATTR_PORT, p);
    }
    if let Some(f) = flags {
        m.attr_u32(ADDR_ATTR_FLAGS, f);
    }
    m.end_nested(n);
}

/// Builds SUBFLOW_CREATE (without sequence number and request flags).
fn subflow_create_msg(
    family: u16,
    token: Token,
    local: IpAddr,
    local_id: u8,
    remote: SocketAddr,
) -> std::io::Result<MsgBuilder> {
    if local_id == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "local address id 0 is the initial subflow's",
        ));
    }
    same_family(local, remote.ip())?;
    let mut m = MsgBuilder::genl(family, CMD_SUBFLOW_CREATE, PM_VERSION);
    m.attr_u32(PM_ATTR_TOKEN, token.0);
    put_addr(&mut m, PM_ATTR_ADDR, local, Some(local_id), None, None);
    put_addr(
        &mut m,
        PM_ATTR_ADDR_REMOTE,
        remote.ip(),
        None,
        Some(remote.port()),
        None,
    );
    Ok(m)
}

/// Builds SUBFLOW_DESTROY.
fn subflow_destroy_msg(
    family: u16,
    token: Token,
    local: SocketAddr,
    remote: SocketAddr,
) -> std::io::Result<MsgBuilder> {
    same_family(local.ip(), remote.ip())?;
    let mut m = MsgBuilder::genl(family, CMD_SUBFLOW_DESTROY, PM_VERSION);
    m.attr_u32(PM_ATTR_TOKEN, token.0);
    put_addr(
        &mut m,
        PM_ATTR_ADDR,
        local.ip(),
        None,
        Some(local.port()),
        None,
    );
    put_addr(
        &mut m,
        PM_ATTR_ADDR_REMOTE,
        remote.ip(),
        None,
        Some(remote.port()),
        None,
    );
    Ok(m)
}

/// Builds SET_FLAGS for the backup flag.
fn set_backup_msg(
    family: u16,
    token: Token,
    local: SocketAddr,
    remote: SocketAddr,
    backup: bool,
) -> std::io::Result<MsgBuilder> {
    same_family(local.ip(), remote.ip())?;
    let mut m = MsgBuilder::genl(family, CMD_SET_FLAGS, PM_VERSION);
    m.attr_u32(PM_ATTR_TOKEN, token.0);
    let flags = if backup { ADDR_FLAG_BACKUP } else { 0 };
    put_addr(
        &mut m,
        PM_ATTR_ADDR,
        local.ip(),
        None,
        Some(local.port()),
        Some(flags),
    );
    put_addr(
        &mut m,
        PM_ATTR_ADDR_REMOTE,
        remote.ip(),
        None,
        Some(remote.port()),
        None,
    );
    Ok(m)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::sys::netlink::testns::{is_root, NsThread};
    use crate::sys::netlink::testsock;
    use crate::sys::netlink::NLMSG_HDRLEN;

    /// Raw attribute bytes (host-order header), padded.
    fn a(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut v = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    fn event(cmd: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![cmd, 1, 0, 0];
        for x in attrs {
            v.extend_from_slice(x);
        }
        v
    }

    fn sub_attrs_v4() -> Vec<Vec<u8>> {
        vec![
            a(ATTR_TOKEN, &0xdead_beefu32.to_ne_bytes()),
            a(ATTR_FAMILY, &2u16.to_ne_bytes()),
            a(ATTR_LOC_ID, &[1]),
            a(ATTR_REM_ID, &[0]),
            a(ATTR_SADDR4, &[10, 0, 1, 1]),
            a(ATTR_DADDR4, &[203, 0, 113, 5]),
            a(ATTR_SPORT, &[0x9c, 0x40]), // 40000, network order
            a(ATTR_DPORT, &[0x01, 0xbb]), // 443
            a(ATTR_BACKUP, &[1]),
        ]
    }

    #[test]
    fn decode_created_server_side_by_flag_and_attr() {
        let base = vec![
            a(ATTR_TOKEN, &0x0102_0304u32.to_ne_bytes()),
            a(ATTR_FAMILY, &2u16.to_ne_bytes()),
            a(ATTR_SADDR4, &[127, 0, 0, 1]),
            a(ATTR_DADDR4, &[127, 0, 0, 2]),
            a(ATTR_SPORT, &1234u16.to_be_bytes()),
            a(ATTR_DPORT, &80u16.to_be_bytes()),
        ];
        let ev = decode_event_bytes(&event(EV_CREATED, &base)).unwrap();
        assert_eq!(
            ev,
            PmEvent::Created {
                token: Token(0x0102_0304),
                local: "127.0.0.1:1234".parse().unwrap(),
                remote: "127.0.0.2:80".parse().unwrap(),
                server_side: false,
            }
        );
        let mut with_flag = base.clone();
        with_flag.push(a(ATTR_FLAGS, &2u16.to_ne_bytes()));
        assert!(matches!(
            decode_event_bytes(&event(EV_ESTABLISHED, &with_flag)).unwrap(),
            PmEvent::Established {
                server_side: true,
                ..
            }
        ));
        // DENY_JOIN_ID0 (bit 0) is not server side.
        let mut deny = base.clone();
        deny.push(a(ATTR_FLAGS, &1u16.to_ne_bytes()));
        assert!(matches!(
            decode_event_bytes(&event(EV_ESTABLISHED, &deny)).unwrap(),
            PmEvent::Established {
                server_side: false,
                ..
            }
        ));
        let mut with_attr = base;
        with_attr.push(a(ATTR_SERVER_SIDE, &[1]));
        assert!(matches!(
            decode_event_bytes(&event(EV_CREATED, &with_attr)).unwrap(),
            PmEvent::Created {
                server_side: true,
                ..
            }
        ));
    }

    #[test]
    fn decode_sub_events_v4() {
        let ev = decode_event_bytes(&event(EV_SUB_ESTABLISHED, &sub_attrs_v4())).unwrap();
        let want = SubflowInfo {
            local_id: 1,
            remote_id: 0,
            local: "10.0.1.1:40000".parse().unwrap(),
            remote: "203.0.113.5:443".parse().unwrap(),
            backup: true,
        };
        assert_eq!(
            ev,
            PmEvent::SubEstablished {
                token: Token(0xdead_beef),
                subflow: want
            }
        );
        let mut closed = sub_attrs_v4();
        closed.push(a(ATTR_ERROR, &[111]));
        assert_eq!(
            decode_event_bytes(&event(EV_SUB_CLOSED, &closed)).unwrap(),
            PmEvent::SubClosed {
                token: Token(0xdead_beef),
                subflow: want,
                error: Some(111)
            }
        );
        let mut closed32 = sub_attrs_v4();
        closed32.push(a(ATTR_ERROR, &104u32.to_ne_bytes()));
        assert!(matches!(
            decode_event_bytes(&event(EV_SUB_CLOSED, &closed32)).unwrap(),
            PmEvent::SubClosed {
                error: Some(104),
                ..
            }
        ));
        assert!(matches!(
            decode_event_bytes(&event(EV_SUB_PRIORITY, &sub_attrs_v4())).unwrap(),
            PmEvent::SubPriority { .. }
        ));
    }

    #[test]
    fn decode_sub_established_v6() {
        let s: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let d: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let attrs = vec![
            a(ATTR_TOKEN, &7u32.to_ne_bytes()),
            a(ATTR_FAMILY, &10u16.to_ne_bytes()),
            a(ATTR_LOC_ID, &[3]),
            a(ATTR_REM_ID, &[4]),
            a(ATTR_SADDR6, &s.octets()),
            a(ATTR_DADDR6, &d.octets()),
            a(ATTR_SPORT, &5000u16.to_be_bytes()),
            a(ATTR_DPORT, &6000u16.to_be_bytes()),
            a(ATTR_BACKUP, &[0]),
        ];
        let PmEvent::SubEstablished { token, subflow } =
            decode_event_bytes(&event(EV_SUB_ESTABLISHED, &attrs)).unwrap()
        else {
            panic!("wrong event");
        };
        assert_eq!(token, Token(7));
        assert_eq!(subflow.local, SocketAddr::new(s.into(), 5000));
        assert_eq!(subflow.remote, SocketAddr::new(d.into(), 6000));
        assert_eq!(
            (subflow.local_id, subflow.remote_id, subflow.backup),
            (3, 4, false)
        );
    }

    #[test]
    fn decode_other_and_odd_events() {
        assert_eq!(
            decode_event_bytes(&event(EV_CLOSED, &[a(ATTR_TOKEN, &9u32.to_ne_bytes())])).unwrap(),
            PmEvent::Closed { token: Token(9) }
        );
        // ANNOUNCED, LISTENER_CREATED: Other.
        assert_eq!(
            decode_event_bytes(&event(
                6,
                &[a(ATTR_TOKEN, &9u32.to_ne_bytes()), a(ATTR_REM_ID, &[2])]
            ))
            .unwrap(),
            PmEvent::Other {
                kind: 6,
                token: Some(Token(9))
            }
        );
        assert_eq!(
            decode_event_bytes(&event(15, &[a(ATTR_FAMILY, &2u16.to_ne_bytes())])).unwrap(),
            PmEvent::Other {
                kind: 15,
                token: None
            }
        );
        // CREATED without ports, CLOSED without token: Other, not an error.
        assert_eq!(
            decode_event_bytes(&event(EV_CREATED, &[a(ATTR_TOKEN, &9u32.to_ne_bytes())])).unwrap(),
            PmEvent::Other {
                kind: EV_CREATED,
                token: Some(Token(9))
            }
        );
        assert_eq!(
            decode_event_bytes(&event(EV_CLOSED, &[])).unwrap(),
            PmEvent::Other {
                kind: EV_CLOSED,
                token: None
            }
        );
        // A known attribute with a wrong width is skipped (logged), the rest decodes.
        let mut bad = sub_attrs_v4();
        bad.push(a(ATTR_SPORT, &[1, 2, 3]));
        bad.insert(0, a(ATTR_SPORT, &[1, 2, 3]));
        assert!(matches!(
            decode_event_bytes(&event(EV_SUB_ESTABLISHED, &bad)).unwrap(),
            PmEvent::SubEstablished { .. }
        ));
    }

    #[test]
    fn decode_malformed_is_an_error_not_a_panic() {
        assert!(decode_event_bytes(&[]).is_err());
        assert!(decode_event_bytes(&[1, 1]).is_err());
        let good = event(EV_SUB_ESTABLISHED, &sub_attrs_v4());
        for cut in 0..good.len() {
            let _ = decode_event_bytes(&good[..cut]);
        }
        // A cut in the middle of an attribute is Malformed.
        assert!(matches!(
            decode_event_bytes(&good[..good.len() - 4]),
            Err(SysError::Malformed { .. })
        ));
        // Flipped bytes anywhere: never a panic.
        for i in 0..good.len() {
            for v in [0u8, 0xff, 3] {
                let mut g = good.clone();
                g[i] = v;
                let _ = decode_event_bytes(&g);
            }
        }
    }

    /// The SUBFLOW_CREATE bytes, field by field: PORT is host order.
    #[test]
    fn subflow_create_encoding() {
        let m = subflow_create_msg(
            0x1d,
            Token(0xaabb_ccdd),
            "10.0.1.1".parse().unwrap(),
            1,
            "203.0.113.5:40000".parse().unwrap(),
        )
        .unwrap();
        let b = m.finish("t").unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(&(b.len() as u32).to_ne_bytes());
        want.extend_from_slice(&0x1du16.to_ne_bytes());
        want.extend_from_slice(&[0; 10]); // flags, seq, pid
        want.extend_from_slice(&[CMD_SUBFLOW_CREATE, 1, 0, 0]);
        want.extend(a(PM_ATTR_TOKEN, &0xaabb_ccddu32.to_ne_bytes()));
        let mut local = a(ADDR_ATTR_FAMILY, &2u16.to_ne_bytes());
        local.extend(a(ADDR_ATTR_ID, &[1]));
        local.extend(a(ADDR_ATTR_ADDR4, &[10, 0, 1, 1]));
        want.extend(a(PM_ATTR_ADDR | netlink::NLA_F_NESTED, &local));
        let mut remote = a(ADDR_ATTR_FAMILY, &2u16.to_ne_bytes());
        remote.extend(a(ADDR_ATTR_ADDR4, &[203, 0, 113, 5]));
        remote.extend(a(ADDR_ATTR_PORT, &40000u16.to_ne_bytes()));
        want.extend(a(PM_ATTR_ADDR_REMOTE | netlink::NLA_F_NESTED, &remote));
        assert_eq!(b, want);
        // On little-endian x86 the port bytes are 0x40 0x9c: host order, not network.
        if cfg!(target_endian = "little") {
            let port_at = b.len() - 4;
            assert_eq!(&b[port_at..port_at + 2], &[0x40, 0x9c]);
        }
        assert!(subflow_create_msg(
            1,
            Token(1),
            "10.0.0.1".parse().unwrap(),
            0,
            "10.0.0.2:1".parse().unwrap()
        )
        .is_err());
        assert!(subflow_create_msg(
            1,
            Token(1),
            "::1".parse().unwrap(),
            1,
            "10.0.0.2:1".parse().unwrap()
        )
        .is_err());
    }

    #[test]
    fn set_backup_and_destroy_encoding() {
        let local: SocketAddr = "[2001:db8::1]:5555".parse().unwrap();
        let remote: SocketAddr = "[2001:db8::2]:443".parse().unwrap();
        let b = set_backup_msg(0x1d, Token(5), local, remote, true)
            .unwrap()
            .finish("t")
            .unwrap();
        let attrs: Vec<_> = Attrs::new("t", &b[NLMSG_HDRLEN + 4..])
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(b[NLMSG_HDRLEN], CMD_SET_FLAGS);
        assert_eq!(attrs[0].u32_ne().unwrap(), 5);
        let l: Vec<_> = attrs[1].nested().collect::<Result<_, _>>().unwrap();
        assert!(attrs[1].nested_flag);
        assert_eq!(
            l.iter().map(|x| x.ty).collect::<Vec<_>>(),
            [
                ADDR_ATTR_FAMILY,
                ADDR_ATTR_ADDR6,
                ADDR_ATTR_PORT,
                ADDR_ATTR_FLAGS
            ]
        );
        assert_eq!(l[0].u16_ne().unwrap(), 10);
        assert_eq!(
            l[1].payload,
            &local.ip().to_string().parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(l[2].u16_ne().unwrap(), 5555);
        assert_eq!(l[3].u32_ne().unwrap(), 4);
        let b = set_backup_msg(0x1d, Token(5), local, remote, false)
            .unwrap()
            .finish("t")
            .unwrap();
        let attrs: Vec<_> = Attrs::new("t", &b[NLMSG_HDRLEN + 4..])
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            attrs[1].nested().last().unwrap().unwrap().u32_ne().unwrap(),
            0
        );
        let b = subflow_destroy_msg(0x1d, Token(5), local, remote)
            .unwrap()
            .finish("t")
            .unwrap();
        assert_eq!(b[NLMSG_HDRLEN], CMD_SUBFLOW_DESTROY);
        let attrs: Vec<_> = Attrs::new("t", &b[NLMSG_HDRLEN + 4..])
            .collect::<Result<_, _>>()
            .unwrap();
        let r: Vec<_> = attrs[2].nested().collect::<Result<_, _>>().unwrap();
        assert_eq!(attrs[2].ty, PM_ATTR_ADDR_REMOTE);
        assert_eq!(r[2].u16_ne().unwrap(), 443);
    }

    fn wait_for(
        ev: &mut PmEvents,
        seen: &mut Vec<PmEvent>,
        what: &str,
        pred: impl Fn(&PmEvent) -> bool,
    ) -> PmEvent {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(e) = seen.iter().find(|e| pred(e)) {
                return e.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; saw {seen:#?}"
            );
            let _ = crate::sys::os::poll_readable(&[ev.fd()], Some(Duration::from_millis(100)));
            seen.extend(ev.read().expect("read events"));
        }
    }

    /// Root, in a fresh network namespace: the userspace path manager end to end
    /// over loopback — events, SUBFLOW_CREATE to a second address, SET_FLAGS,
    /// SUBFLOW_DESTROY, and a kernel error with its extack text.
    #[test]
    fn root_userspace_pm_over_loopback() {
        if !is_root() {
            eprintln!("SKIP: needs root");
            return;
        }
        let host_pm = std::fs::read_to_string("/proc/sys/net/mptcp/path_manager").ok();
        let ns = NsThread::new();
        ns.run(|| {
            // /proc/sys/net reflects the netns of the thread that opens the file.
            std::fs::write("/proc/sys/net/mptcp/path_manager", "userspace").expect("set path_manager");
            assert_eq!(std::fs::read_to_string("/proc/sys/net/mptcp/pm_type").unwrap().trim(), "1");
            let mut events = PmEvents::open().expect("subscribe");
            let mut pm = PmSocket::open().expect("pm socket");
            assert!(events.read().unwrap().is_empty(), "no events yet");

            let listener = testsock::listen("0.0.0.0:0".parse().unwrap(), true).expect("mptcp listen");
            let port = listener.local_addr().unwrap().port();
            let server: SocketAddr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
            let mut client = testsock::connect(None, server, true).expect("mptcp connect");
            let (mut accepted, _) = listener.accept().unwrap();
            let client_addr = client.local_addr().unwrap();
            use std::io::{Read, Write};
            client.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            accepted.read_exact(&mut buf).unwrap();

            let mut seen = Vec::new();
            let is_client = |e: &PmEvent| match e {
                PmEvent::Created { local, remote, server_side, .. } => *local == client_addr && *remote == server && !server_side,
                _ => false,
            };
            let PmEvent::Created { token, .. } = wait_for(&mut events, &mut seen, "client CREATED", is_client) else {
                unreachable!()
            };
            wait_for(&mut events, &mut seen, "client ESTABLISHED", |e| {
                matches!(e, PmEvent::Established { token: t, local, remote, server_side: false }
                    if *t == token && *local == client_addr && *remote == server)
            });
            wait_for(&mut events, &mut seen, "server CREATED", |e| {
                matches!(e, PmEvent::Created { local, remote, server_side: true, .. }
                    if *local == server && *remote == client_addr)
            });

            // A second path: from 127.0.0.1 (id 1) to 127.0.0.2, the listener's
            // other address.
            let remote2 = SocketAddr::new(Ipv4Addr::new(127, 0, 0, 2).into(), port);
            pm.subflow_create(token, Ipv4Addr::LOCALHOST.into(), 1, remote2).expect("SUBFLOW_CREATE");
            let PmEvent::SubEstablished { subflow, .. } = wait_for(&mut events, &mut seen, "SUB_ESTABLISHED", |e| {
                matches!(e, PmEvent::SubEstablished { token: t, subflow } if *t == token && subflow.remote == remote2)
            }) else {
                unreachable!()
            };
            assert_eq!(subflow.local.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
            assert_eq!(subflow.local_id, 1);

            pm.set_backup(token, subflow.local, remote2, true).expect("SET_FLAGS backup");
            // The peer (our own server side here) learns it through MP_PRIO.
            wait_for(&mut events, &mut seen, "server SUB_PRIORITY backup", |e| {
                matches!(e, PmEvent::SubPriority { token: t, subflow: s }
                    if *t != token && s.backup && s.local == remote2 && s.remote == subflow.local)
            });
            pm.set_backup(token, subflow.local, remote2, false).expect("SET_FLAGS normal");

            pm.subflow_destroy(token, subflow.local, remote2).expect("SUBFLOW_DESTROY");
            wait_for(&mut events, &mut seen, "SUB_CLOSED", |e| {
                matches!(e, PmEvent::SubClosed { token: t, subflow: s, .. } if *t == token && s.remote == remote2)
            });

            // Kernel errors keep errno and the extended-ack text.
            match pm.subflow_create(Token(token.0 ^ 0x5a5a_5a5a), Ipv4Addr::LOCALHOST.into(), 1, remote2) {
                Err(SysError::Netlink { errno, extack, .. }) => {
                    assert_ne!(errno, 0);
                    assert!(extack.is_some(), "extack text kept (errno {errno})");
                    eprintln!("bad token: errno {errno}, extack {extack:?}");
                }
                other => panic!("bad token accepted: {other:?}"),
            }

            drop((client, accepted));
            wait_for(&mut events, &mut seen, "CLOSED", |e| matches!(e, PmEvent::Closed { token: t } if *t == token));
        });
        drop(ns);
        // The host's path manager was not touched.
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/mptcp/path_manager").ok(),
            host_pm
        );
    }
}
