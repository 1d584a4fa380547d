//! Deleting the conntrack entries of a revoked NAT tunnel over ctnetlink
//! (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_CTNETLINK`).
//!
//! An nftables map element only steers *new* connections; a running subflow
//! keeps its NAT binding in conntrack. [`delete_flows`] dumps the TCP entries of
//! the client's family, picks those whose original tuple is
//! `client:* → *:port` and deletes each by its original tuple (and id, so that a
//! newer entry with the same tuple survives). The kernel then drops the
//! binding, and the next packet of the flow is no longer translated.
//!
//! It does not filter in the kernel (`CTA_FILTER` needs 5.x kernels; the dump is
//! filtered here), does not touch UDP or other protocols, and keeps no state.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::rawnl::{nfgenmsg, Attr, Attrs, Msg, MsgBuilder, NlSocket, NETLINK_NETFILTER};
use super::SysError;

// include/uapi/linux/netfilter/nfnetlink.h
/// `NFNL_SUBSYS_CTNETLINK`.
const NFNL_SUBSYS_CTNETLINK: u8 = 0x1;
// include/uapi/linux/netfilter/nfnetlink_conntrack.h, enum cntl_msg_types
/// `IPCTNL_MSG_CT_NEW` (type of dump replies).
const IPCTNL_MSG_CT_NEW: u8 = 0x0;
/// `IPCTNL_MSG_CT_GET`.
const IPCTNL_MSG_CT_GET: u8 = 0x1;
/// `IPCTNL_MSG_CT_DELETE`.
const IPCTNL_MSG_CT_DELETE: u8 = 0x2;
// enum ctattr_type
/// `CTA_TUPLE_ORIG` (nest).
const CTA_TUPLE_ORIG: u16 = 0x1;
/// `CTA_ID` (be32).
const CTA_ID: u16 = 0xc;
/// `CTA_ZONE` (be16).
const CTA_ZONE: u16 = 0x12;
/// `CTA_COUNTERS_ORIG` / `CTA_COUNTERS_REPLY` (nests; present when
/// `net.netfilter.nf_conntrack_acct` is 1).
const CTA_COUNTERS_ORIG: u16 = 0x9;
const CTA_COUNTERS_REPLY: u16 = 0xa;
/// `CTA_COUNTERS_BYTES` (be64) inside the counter nests.
const CTA_COUNTERS_BYTES: u16 = 0x2;
// enum ctattr_tuple
/// `CTA_TUPLE_IP` (nest).
const CTA_TUPLE_IP: u16 = 0x1;
/// `CTA_TUPLE_PROTO` (nest).
const CTA_TUPLE_PROTO: u16 = 0x2;
// enum ctattr_ip
/// `CTA_IP_V4_SRC` (be32).
const CTA_IP_V4_SRC: u16 = 0x1;
/// `CTA_IP_V4_DST` (be32).
const CTA_IP_V4_DST: u16 = 0x2;
/// `CTA_IP_V6_SRC` (in6_addr).
const CTA_IP_V6_SRC: u16 = 0x3;
/// `CTA_IP_V6_DST` (in6_addr).
const CTA_IP_V6_DST: u16 = 0x4;
// enum ctattr_l4proto
/// `CTA_PROTO_NUM` (u8).
const CTA_PROTO_NUM: u16 = 0x1;
/// `CTA_PROTO_SRC_PORT` (be16).
const CTA_PROTO_SRC_PORT: u16 = 0x2;
/// `CTA_PROTO_DST_PORT` (be16).
const CTA_PROTO_DST_PORT: u16 = 0x3;
/// `IPPROTO_TCP`.
const IPPROTO_TCP: u8 = 0x6;

const fn ct_type(msg: u8) -> u16 {
    ((NFNL_SUBSYS_CTNETLINK as u16) << 8) | msg as u16
}

/// The original-direction tuple of one conntrack entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Flow {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    id: Option<u32>,
    zone: Option<u16>,
    /// Bytes both ways (0 without conntrack accounting).
    bytes: u64,
}

/// Deletes every TCP conntrack entry whose original tuple has source address
/// `client` and destination port `port` (a tunnel's allocated port). Returns
/// how many were deleted; entries that vanish meanwhile are not errors.
pub fn delete_flows(client: IpAddr, port: u16) -> Result<usize, SysError> {
    delete_counted(&[(client, port)]).map(|(n, _)| n)
}

/// [`delete_flows`], also returning the bytes the deleted entries carried in
/// both directions (0 unless `net.netfilter.nf_conntrack_acct` is 1).
pub fn delete_flows_counted(client: IpAddr, port: u16) -> Result<(usize, u64), SysError> {
    delete_counted(&[(client, port)])
}

/// [`delete_flows`] for many tunnels at once: one dump per address family
/// (a dump walks the whole conntrack hash table, ~10 ms here), then one delete
/// per matching entry. Used at shutdown and for crash reconciliation.
pub fn delete_many(tunnels: &[(IpAddr, u16)]) -> Result<usize, SysError> {
    delete_counted(tunnels).map(|(n, _)| n)
}

fn delete_counted(tunnels: &[(IpAddr, u16)]) -> Result<(usize, u64), SysError> {
    let wanted: std::collections::HashSet<(IpAddr, u16)> = tunnels.iter().copied().collect();
    let mut sock = NlSocket::open(NETLINK_NETFILTER)?;
    let (mut n, mut bytes) = (0, 0u64);
    for v4 in [true, false] {
        if !wanted.iter().any(|(c, _)| c.is_ipv4() == v4) {
            continue;
        }
        let family = if v4 {
            libc::AF_INET as u8
        } else {
            libc::AF_INET6 as u8
        };
        let flows = dump(&mut sock, family)?;
        for f in flows
            .iter()
            .filter(|f| f.proto == IPPROTO_TCP && wanted.contains(&(f.src, f.dport)))
        {
            match sock.request("conntrack delete", delete_msg(family, f), |_| Ok(())) {
                Ok(()) => {
                    n += 1;
                    bytes = bytes.saturating_add(f.bytes);
                }
                Err(SysError::Netlink { errno, .. }) if errno == libc::ENOENT => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok((n, bytes))
}

fn dump(sock: &mut NlSocket, family: u8) -> Result<Vec<Flow>, SysError> {
    let op = "conntrack dump";
    let mut tries = 0;
    loop {
        let mut m = MsgBuilder::new(ct_type(IPCTNL_MSG_CT_GET), 0);
        m.push_header(&nfgenmsg(family, 0));
        let mut flows = Vec::new();
        let r = sock.dump(op, m, |reply: &Msg<'_>| {
            if reply.ty == ct_type(IPCTNL_MSG_CT_NEW) {
                match parse_flow(reply.payload) {
                    Ok(Some(f)) => flows.push(f),
                    Ok(None) => {}
                    Err(e) => log::warn!("conntrack: skipped an entry: {e}"),
                }
            }
            Ok(())
        });
        match r {
            Ok(()) => return Ok(flows),
            // The table changed during the dump: read it again.
            Err(SysError::Netlink { errno, .. }) if errno == libc::EINTR && tries < 3 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Parses one `IPCTNL_MSG_CT_NEW` payload (nfgenmsg + attributes) into its
/// original tuple; `None` if it has none.
fn parse_flow(payload: &[u8]) -> Result<Option<Flow>, SysError> {
    let op = "conntrack parse";
    let attrs = payload.get(4..).ok_or_else(|| SysError::Malformed {
        op,
        what: "short nfgenmsg".into(),
    })?;
    let (mut tuple, mut id, mut zone, mut bytes) = (None, None, None, 0u64);
    for a in Attrs::new(op, attrs) {
        let a = a?;
        match a.ty {
            CTA_TUPLE_ORIG => tuple = Some(a),
            CTA_ID => id = Some(a.u32_be()?),
            CTA_ZONE => zone = Some(a.u16_be()?),
            CTA_COUNTERS_ORIG | CTA_COUNTERS_REPLY => {
                for c in a.nested() {
                    let c = c?;
                    if c.ty == CTA_COUNTERS_BYTES {
                        let b =
                            <[u8; 8]>::try_from(c.payload).map_err(|_| SysError::Malformed {
                                op,
                                what: format!("byte counter of {} bytes", c.payload.len()),
                            })?;
                        bytes = bytes.saturating_add(u64::from_be_bytes(b));
                    }
                }
            }
            _ => {}
        }
    }
    let Some(tuple) = tuple else { return Ok(None) };
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for t in tuple.nested() {
        let t = t?;
        match t.ty {
            CTA_TUPLE_IP => {
                for i in t.nested() {
                    let i = i?;
                    match i.ty {
                        CTA_IP_V4_SRC => src = Some(IpAddr::V4(Ipv4Addr::from(i.u32_be()?))),
                        CTA_IP_V4_DST => dst = Some(IpAddr::V4(Ipv4Addr::from(i.u32_be()?))),
                        CTA_IP_V6_SRC => src = Some(IpAddr::V6(ipv6(&i)?)),
                        CTA_IP_V6_DST => dst = Some(IpAddr::V6(ipv6(&i)?)),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for p in t.nested() {
                    let p = p?;
                    match p.ty {
                        CTA_PROTO_NUM => proto = Some(p.u8()?),
                        CTA_PROTO_SRC_PORT => sport = Some(p.u16_be()?),
                        CTA_PROTO_DST_PORT => dport = Some(p.u16_be()?),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    match (src, dst, proto) {
        (Some(src), Some(dst), Some(proto)) => Ok(Some(Flow {
            src,
            dst,
            proto,
            sport: sport.unwrap_or(0),
            dport: dport.unwrap_or(0),
            id,
            zone,
            bytes,
        })),
        _ => Ok(None),
    }
}

fn ipv6(a: &Attr<'_>) -> Result<Ipv6Addr, SysError> {
    <[u8; 16]>::try_from(a.payload)
        .map(Ipv6Addr::from)
        .map_err(|_| SysError::Malformed {
            op: "conntrack parse",
            what: format!("IPv6 address of {} bytes", a.payload.len()),
        })
}

/// Builds `IPCTNL_MSG_CT_DELETE` for `f`: its original tuple, zone and id.
fn delete_msg(family: u8, f: &Flow) -> MsgBuilder {
    let mut m = MsgBuilder::new(ct_type(IPCTNL_MSG_CT_DELETE), 0);
    m.push_header(&nfgenmsg(family, 0));
    let t = m.begin_nested(CTA_TUPLE_ORIG);
    let ip = m.begin_nested(CTA_TUPLE_IP);
    match (f.src, f.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            m.attr(CTA_IP_V4_SRC, &s.octets())
                .attr(CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            m.attr(CTA_IP_V6_SRC, &v6(s).octets())
                .attr(CTA_IP_V6_DST, &v6(d).octets());
        }
    }
    m.end_nested(ip);
    let p = m.begin_nested(CTA_TUPLE_PROTO);
    m.attr_u8(CTA_PROTO_NUM, f.proto)
        .attr_be16(CTA_PROTO_SRC_PORT, f.sport)
        .attr_be16(CTA_PROTO_DST_PORT, f.dport);
    m.end_nested(p);
    m.end_nested(t);
    if let Some(z) = f.zone {
        m.attr_be16(CTA_ZONE, z);
    }
    if let Some(id) = f.id {
        m.attr_be32(CTA_ID, id);
    }
    m
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::rawnl::{NLA_F_NESTED, NLMSG_HDRLEN};

    fn a(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut v = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    fn tuple_v4() -> Vec<u8> {
        let mut ip = a(CTA_IP_V4_SRC, &[10, 99, 0, 1]);
        ip.extend(a(CTA_IP_V4_DST, &[10, 99, 0, 2]));
        let mut proto = a(CTA_PROTO_NUM, &[6]);
        proto.extend(a(CTA_PROTO_SRC_PORT, &51000u16.to_be_bytes()));
        proto.extend(a(CTA_PROTO_DST_PORT, &40000u16.to_be_bytes()));
        let mut t = a(CTA_TUPLE_IP | NLA_F_NESTED, &ip);
        t.extend(a(CTA_TUPLE_PROTO | NLA_F_NESTED, &proto));
        t
    }

    #[test]
    fn parse_entry_and_build_delete() {
        let mut p = vec![2, 0, 0, 0];
        p.extend(a(CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple_v4()));
        p.extend(a(CTA_ID, &0x1234_5678u32.to_be_bytes()));
        let f = parse_flow(&p).unwrap().unwrap();
        assert_eq!(
            f,
            Flow {
                src: "10.99.0.1".parse().unwrap(),
                dst: "10.99.0.2".parse().unwrap(),
                proto: 6,
                sport: 51000,
                dport: 40000,
                id: Some(0x1234_5678),
                zone: None,
                bytes: 0,
            }
        );
        let b = delete_msg(2, &f).finish("t").unwrap();
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x0102);
        let mut want = vec![2, 0, 0, 0];
        want.extend(a(CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple_v4()));
        want.extend(a(CTA_ID, &0x1234_5678u32.to_be_bytes()));
        assert_eq!(&b[NLMSG_HDRLEN..], &want[..]);
        for cut in 0..p.len() {
            let _ = parse_flow(&p[..cut]);
        }
        assert!(parse_flow(&p[..p.len() - 2]).is_err());
        assert_eq!(parse_flow(&[2, 0, 0, 0]).unwrap(), None);
    }
}
