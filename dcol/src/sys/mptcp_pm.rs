//! The kernel's MPTCP path manager over generic netlink (family `mptcp_pm`,
//! include/uapi/linux/mptcp_pm.h), on neli: typed events from the
//! `mptcp_pm_events` multicast group ([`PmEvents`]) and the userspace-PM
//! commands the client needs ([`PmSocket`]: SUBFLOW_CREATE, SUBFLOW_DESTROY,
//! SET_FLAGS). Family and group ids are resolved at run time
//! (`CTRL_CMD_GETFAMILY`: they differ between kernels); a refused command's
//! error carries the kernel's extended-ack text.
//!
//! Events decode into the neutral vocabulary of [`crate::mptcp`]; this module
//! does not switch the path manager (`net.mptcp.path_manager`, see
//! `sys::sysctl`), keep any per-connection state, or decide anything: decoding
//! is pure ([`decode_event_bytes`], [`decode_datagram`]) and the commands are
//! one request each.
//!
//! Byte order: in events, addresses and ports are network order. In requests,
//! `MPTCP_PM_ADDR_ATTR_PORT` is **host** order (the kernel does
//! `htons(nla_get_u16())`), addresses network order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::BorrowedFd;

use neli::neli_enum;
use neli::nl::NlPayload;

use super::genl::{self, Attr, GenlMsg, GenlSocket, Messages};
use super::SysError;
use crate::mptcp::{AddrId, PmEvent, SubflowInfo, Token};

/// `MPTCP_PM_NAME`.
const FAMILY_NAME: &str = "mptcp_pm";
/// `MPTCP_PM_EV_GRP_NAME`.
const EVENTS_GROUP: &str = "mptcp_pm_events";
/// `MPTCP_PM_VER`.
const PM_VERSION: u8 = 0x1;

/// `enum mptcp_event_type`: the `cmd` of an event message (the ones we act on).
#[neli_enum(serialized_type = "u8")]
enum EventType {
    /// `MPTCP_EVENT_UNSPEC`.
    Unspec = 0x0,
    /// `MPTCP_EVENT_CREATED`.
    Created = 0x1,
    /// `MPTCP_EVENT_ESTABLISHED`.
    Established = 0x2,
    /// `MPTCP_EVENT_CLOSED`.
    Closed = 0x3,
    /// `MPTCP_EVENT_SUB_ESTABLISHED`.
    SubEstablished = 0xa,
    /// `MPTCP_EVENT_SUB_CLOSED`.
    SubClosed = 0xb,
    /// `MPTCP_EVENT_SUB_PRIORITY`.
    SubPriority = 0xd,
}

/// `enum mptcp_event_attr`.
#[neli_enum(serialized_type = "u16")]
enum EventAttr {
    /// `MPTCP_ATTR_UNSPEC`.
    Unspec = 0x0,
    /// `MPTCP_ATTR_TOKEN` (u32).
    Token = 0x1,
    /// `MPTCP_ATTR_FAMILY` (u16).
    Family = 0x2,
    /// `MPTCP_ATTR_LOC_ID` (u8).
    LocId = 0x3,
    /// `MPTCP_ATTR_REM_ID` (u8).
    RemId = 0x4,
    /// `MPTCP_ATTR_SADDR4` (be32).
    Saddr4 = 0x5,
    /// `MPTCP_ATTR_SADDR6` (in6_addr).
    Saddr6 = 0x6,
    /// `MPTCP_ATTR_DADDR4` (be32).
    Daddr4 = 0x7,
    /// `MPTCP_ATTR_DADDR6` (in6_addr).
    Daddr6 = 0x8,
    /// `MPTCP_ATTR_SPORT` (be16).
    Sport = 0x9,
    /// `MPTCP_ATTR_DPORT` (be16).
    Dport = 0xa,
    /// `MPTCP_ATTR_BACKUP` (u8).
    Backup = 0xb,
    /// `MPTCP_ATTR_ERROR` (u8 on current kernels; u32 accepted too).
    Error = 0xc,
    /// `MPTCP_ATTR_FLAGS` (u16).
    Flags = 0xd,
    /// `MPTCP_ATTR_SERVER_SIDE` (u8, deprecated for `MPTCP_PM_EV_FLAG_SERVER_SIDE`).
    ServerSide = 0x12,
}

/// `MPTCP_PM_EV_FLAG_SERVER_SIDE` in `MPTCP_ATTR_FLAGS` (include/uapi/linux/mptcp.h).
const EV_FLAG_SERVER_SIDE: u32 = 0x2;

/// `MPTCP_PM_CMD_*`: the commands we send.
#[neli_enum(serialized_type = "u8")]
enum PmCmd {
    /// `MPTCP_PM_CMD_UNSPEC`.
    Unspec = 0x0,
    /// `MPTCP_PM_CMD_SET_FLAGS`.
    SetFlags = 0x7,
    /// `MPTCP_PM_CMD_SUBFLOW_CREATE`.
    SubflowCreate = 0xa,
    /// `MPTCP_PM_CMD_SUBFLOW_DESTROY`.
    SubflowDestroy = 0xb,
}

/// `MPTCP_PM_ATTR_*`.
#[neli_enum(serialized_type = "u16")]
enum PmAttr {
    /// `MPTCP_PM_ATTR_UNSPEC`.
    Unspec = 0x0,
    /// `MPTCP_PM_ATTR_ADDR` (nest: the local address).
    Addr = 0x1,
    /// `MPTCP_PM_ATTR_TOKEN` (u32).
    Token = 0x4,
    /// `MPTCP_PM_ATTR_ADDR_REMOTE` (nest).
    AddrRemote = 0x6,
}

/// `MPTCP_PM_ADDR_ATTR_*`.
#[neli_enum(serialized_type = "u16")]
enum AddrAttr {
    /// `MPTCP_PM_ADDR_ATTR_UNSPEC`.
    Unspec = 0x0,
    /// `MPTCP_PM_ADDR_ATTR_FAMILY` (u16).
    Family = 0x1,
    /// `MPTCP_PM_ADDR_ATTR_ID` (u8).
    Id = 0x2,
    /// `MPTCP_PM_ADDR_ATTR_ADDR4` (be32).
    Addr4 = 0x3,
    /// `MPTCP_PM_ADDR_ATTR_ADDR6` (in6_addr).
    Addr6 = 0x4,
    /// `MPTCP_PM_ADDR_ATTR_PORT` (u16, **host** order in requests).
    Port = 0x5,
    /// `MPTCP_PM_ADDR_ATTR_FLAGS` (u32).
    Flags = 0x6,
}

/// `MPTCP_PM_ADDR_FLAG_BACKUP` (include/uapi/linux/mptcp.h).
const ADDR_FLAG_BACKUP: u32 = 0x4;

/// At most this many datagrams per [`PmEvents::read`], so that an event storm
/// cannot starve the daemon loop (the fd stays readable for the next round).
const MAX_DATAGRAMS_PER_READ: usize = 64;

const OP_EVENT: &str = "decode mptcp_pm event";

/// Subscription to the path manager's event group (reads never block).
#[derive(Debug)]
pub struct PmEvents {
    sock: GenlSocket,
    family: u16,
}

impl PmEvents {
    /// Resolves `mptcp_pm` and its `mptcp_pm_events` group and joins the
    /// group. [`SysError::Unsupported`] if the kernel has no MPTCP path manager.
    pub fn open() -> Result<Self, SysError> {
        let mut sock = GenlSocket::open()?;
        let fam = sock.resolve(FAMILY_NAME)?;
        let group = fam.group(EVENTS_GROUP).ok_or_else(|| {
            SysError::Unsupported(format!("{FAMILY_NAME} has no {EVENTS_GROUP} group"))
        })?;
        // Best effort: a bigger queue makes overflow rarer under bursts.
        if let Err(e) = sock.set_recv_buffer(1 << 20) {
            log::debug!("mptcp_pm events: {e}");
        }
        sock.join(group)?;
        Ok(PmEvents {
            sock,
            family: fam.id,
        })
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.fd()
    }

    /// Every event queued now; `Ok(empty)` when there is none. Malformed events
    /// are logged and skipped; a queue overflow (`ENOBUFS`: events were lost) is
    /// logged and reading continues.
    pub fn read(&mut self) -> Result<Vec<PmEvent>, SysError> {
        let mut out = Vec::new();
        let family = self.family;
        for _ in 0..MAX_DATAGRAMS_PER_READ {
            let data = match self.sock.recv_nowait() {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    log::warn!("mptcp_pm events: receive queue overflowed, events were lost");
                    continue;
                }
                Err(e) => return Err(SysError::io("read mptcp_pm events", e)),
            };
            for ev in decode_datagram(family, data) {
                match ev {
                    Ok(ev) => out.push(ev),
                    Err(e) => log::warn!("mptcp_pm events: skipped: {e}"),
                }
            }
        }
        Ok(out)
    }
}

/// Decodes one datagram of the event group: every message of type `family`
/// (the resolved `mptcp_pm` id) becomes an event or an error; other messages
/// are skipped. Pure; the `pm_event` fuzz target's entry point.
pub fn decode_datagram(family: u16, data: &[u8]) -> Vec<Result<PmEvent, SysError>> {
    let mut out = Vec::new();
    for m in Messages::new(OP_EVENT, data) {
        match m {
            Ok(m) if *m.nl_type() == family => {
                if let NlPayload::Payload(p) = m.nl_payload() {
                    out.push(decode_event_bytes(p.as_ref()));
                }
            }
            Ok(_) => {}
            Err(e) => out.push(Err(e)),
        }
    }
    out
}

/// Decodes one event message body: `struct genlmsghdr` (cmd = event type)
/// followed by attributes, with neli. Pure; also a fuzz entry point.
pub fn decode_event_bytes(payload: &[u8]) -> Result<PmEvent, SysError> {
    Ok(decode_event(&genl::genl_payload(OP_EVENT, payload)?))
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
    fn parse(msg: &GenlMsg) -> Fields {
        let mut f = Fields::default();
        for a in msg.attrs().iter() {
            if let Err(e) = f.take(a) {
                log::warn!("mptcp_pm event: ignored attribute: {e}");
            }
        }
        f
    }

    fn take(&mut self, a: &Attr) -> Result<(), SysError> {
        const OP: &str = OP_EVENT;
        match EventAttr::from(genl::ty(a)) {
            EventAttr::Token => self.token = Some(genl::u32_ne(OP, a)?),
            EventAttr::Family => self.family = Some(genl::u16_ne(OP, a)?),
            EventAttr::LocId => self.loc_id = Some(genl::u8_(OP, a)?),
            EventAttr::RemId => self.rem_id = Some(genl::u8_(OP, a)?),
            EventAttr::Saddr4 => self.saddr4 = Some(genl::array::<4>(OP, a)?.into()),
            EventAttr::Saddr6 => self.saddr6 = Some(genl::array::<16>(OP, a)?.into()),
            EventAttr::Daddr4 => self.daddr4 = Some(genl::array::<4>(OP, a)?.into()),
            EventAttr::Daddr6 => self.daddr6 = Some(genl::array::<16>(OP, a)?.into()),
            EventAttr::Sport => self.sport = Some(genl::be16(OP, a)?),
            EventAttr::Dport => self.dport = Some(genl::be16(OP, a)?),
            EventAttr::Backup => self.backup = genl::u8_(OP, a)? != 0,
            EventAttr::Error => self.error = Some(uint(a)?),
            EventAttr::Flags => self.server_side |= uint(a)? & EV_FLAG_SERVER_SIDE != 0,
            // A flag attribute (no payload) or a u8.
            EventAttr::ServerSide => {
                self.server_side |= a.nla_payload().is_empty() || genl::u8_(OP, a)? != 0
            }
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
            local_id: AddrId(self.loc_id.unwrap_or(0)),
            remote_id: AddrId(self.rem_id.unwrap_or(0)),
            local,
            remote,
            backup: self.backup,
        })
    }
}

/// A host-order unsigned integer of 1, 2 or 4 bytes (the kernel changed some
/// widths between versions).
fn uint(a: &Attr) -> Result<u32, SysError> {
    match a.nla_payload().len() {
        1 => genl::u8_(OP_EVENT, a).map(u32::from),
        2 => genl::u16_ne(OP_EVENT, a).map(u32::from),
        _ => genl::u32_ne(OP_EVENT, a),
    }
}

/// Decodes an event. Events that lack what their type needs, and event
/// types we do not act on, become [`PmEvent::Other`].
fn decode_event(msg: &GenlMsg) -> PmEvent {
    let kind = *msg.cmd();
    let ty = EventType::from(kind);
    let f = Fields::parse(msg);
    let token = f.token.map(Token);
    let odd = |what: &str| {
        log::warn!("mptcp_pm event {kind}: {what}; kept as Other");
        PmEvent::Other { kind, token }
    };
    let Some(token) = token else {
        return match ty {
            EventType::Unspec | EventType::UnrecognizedConst(_) => PmEvent::Other { kind, token },
            _ => odd("no token"),
        };
    };
    match ty {
        EventType::Created | EventType::Established => match f.endpoints() {
            Some((local, remote)) if ty == EventType::Created => PmEvent::Created {
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
        EventType::Closed => PmEvent::Closed { token },
        EventType::SubEstablished | EventType::SubClosed | EventType::SubPriority => {
            match f.subflow() {
                Some(subflow) if ty == EventType::SubEstablished => {
                    PmEvent::SubEstablished { token, subflow }
                }
                Some(subflow) if ty == EventType::SubClosed => PmEvent::SubClosed {
                    token,
                    subflow,
                    error: f.error,
                },
                Some(subflow) => PmEvent::SubPriority { token, subflow },
                None => odd("no complete subflow addresses"),
            }
        }
        EventType::Unspec | EventType::UnrecognizedConst(_) => PmEvent::Other {
            kind,
            token: Some(token),
        },
    }
}

/// A `NETLINK_GENERIC` socket for path-manager commands (blocking, each call
/// waits for the kernel's answer, at most a few seconds).
#[derive(Debug)]
pub struct PmSocket {
    sock: GenlSocket,
    family: u16,
}

impl PmSocket {
    /// Opens the socket and resolves `mptcp_pm`. [`SysError::Unsupported`] if
    /// the kernel has no MPTCP path manager.
    pub fn open() -> Result<Self, SysError> {
        let mut sock = GenlSocket::open()?;
        let family = sock.resolve(FAMILY_NAME)?.id;
        Ok(PmSocket { sock, family })
    }

    /// `MPTCP_PM_CMD_SUBFLOW_CREATE`: asks the kernel to open a subflow of
    /// connection `token` from `local` (address id `local_id`, not the initial
    /// one; reuse one id per local address and connection) to `remote`. `Ok`
    /// means only "SYN sent": the outcome arrives as SUB_ESTABLISHED or
    /// SUB_CLOSED. A refusal carries the kernel's reason (e.g. "invalid token").
    pub fn subflow_create(
        &mut self,
        token: Token,
        local: IpAddr,
        local_id: AddrId,
        remote: SocketAddr,
    ) -> Result<(), SysError> {
        let op = "mptcp_pm SUBFLOW_CREATE";
        let m = subflow_create_msg(op, token, local, local_id, remote)?;
        self.sock.request(op, self.family, m)
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
        let m = subflow_destroy_msg(op, token, local, remote)?;
        self.sock.request(op, self.family, m)
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
        let m = set_backup_msg(op, token, local, remote, backup)?;
        self.sock.request(op, self.family, m)
    }
}

fn invalid(op: &'static str, what: String) -> SysError {
    SysError::io(
        op,
        std::io::Error::new(std::io::ErrorKind::InvalidInput, what),
    )
}

fn same_family(op: &'static str, a: IpAddr, b: IpAddr) -> Result<(), SysError> {
    if a.is_ipv4() != b.is_ipv4() {
        return Err(invalid(op, format!("{a} and {b} differ in address family")));
    }
    Ok(())
}

/// An `MPTCP_PM_ADDR_ATTR_*` nest: FAMILY, [ID], ADDR4/ADDR6, [PORT in host
/// order], [FLAGS].
fn addr_nest(
    op: &'static str,
    ty: PmAttr,
    ip: IpAddr,
    id: Option<AddrId>,
    port: Option<u16>,
    flags: Option<u32>,
) -> Result<Attr, SysError> {
    let family = match ip {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    };
    let mut c = vec![genl::attr(
        op,
        AddrAttr::Family,
        &(family as u16).to_ne_bytes(),
    )?];
    if let Some(id) = id {
        c.push(genl::attr(op, AddrAttr::Id, &[id.0])?);
    }
    c.push(match ip {
        IpAddr::V4(a) => genl::attr(op, AddrAttr::Addr4, &a.octets())?,
        IpAddr::V6(a) => genl::attr(op, AddrAttr::Addr6, &a.octets())?,
    });
    if let Some(p) = port {
        // Host order: the kernel does htons(nla_get_u16()).
        c.push(genl::attr(op, AddrAttr::Port, &p.to_ne_bytes())?);
    }
    if let Some(f) = flags {
        c.push(genl::attr(op, AddrAttr::Flags, &f.to_ne_bytes())?);
    }
    genl::nest(op, ty, &c)
}

/// Builds SUBFLOW_CREATE.
fn subflow_create_msg(
    op: &'static str,
    token: Token,
    local: IpAddr,
    local_id: AddrId,
    remote: SocketAddr,
) -> Result<GenlMsg, SysError> {
    if local_id.is_initial() {
        return Err(invalid(
            op,
            "local address id 0 is the initial subflow's".into(),
        ));
    }
    same_family(op, local, remote.ip())?;
    let attrs = vec![
        genl::attr(op, PmAttr::Token, &token.0.to_ne_bytes())?,
        addr_nest(op, PmAttr::Addr, local, Some(local_id), None, None)?,
        addr_nest(
            op,
            PmAttr::AddrRemote,
            remote.ip(),
            None,
            Some(remote.port()),
            None,
        )?,
    ];
    genl::genl(op, PmCmd::SubflowCreate, PM_VERSION, attrs)
}

/// Builds SUBFLOW_DESTROY.
fn subflow_destroy_msg(
    op: &'static str,
    token: Token,
    local: SocketAddr,
    remote: SocketAddr,
) -> Result<GenlMsg, SysError> {
    same_family(op, local.ip(), remote.ip())?;
    let attrs = vec![
        genl::attr(op, PmAttr::Token, &token.0.to_ne_bytes())?,
        addr_nest(op, PmAttr::Addr, local.ip(), None, Some(local.port()), None)?,
        addr_nest(
            op,
            PmAttr::AddrRemote,
            remote.ip(),
            None,
            Some(remote.port()),
            None,
        )?,
    ];
    genl::genl(op, PmCmd::SubflowDestroy, PM_VERSION, attrs)
}

/// Builds SET_FLAGS for the backup flag.
fn set_backup_msg(
    op: &'static str,
    token: Token,
    local: SocketAddr,
    remote: SocketAddr,
    backup: bool,
) -> Result<GenlMsg, SysError> {
    same_family(op, local.ip(), remote.ip())?;
    let flags = if backup { ADDR_FLAG_BACKUP } else { 0 };
    let attrs = vec![
        genl::attr(op, PmAttr::Token, &token.0.to_ne_bytes())?,
        addr_nest(
            op,
            PmAttr::Addr,
            local.ip(),
            None,
            Some(local.port()),
            Some(flags),
        )?,
        addr_nest(
            op,
            PmAttr::AddrRemote,
            remote.ip(),
            None,
            Some(remote.port()),
            None,
        )?,
    ];
    genl::genl(op, PmCmd::SetFlags, PM_VERSION, attrs)
}

#[cfg(test)]
mod tests;
