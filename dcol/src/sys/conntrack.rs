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
//! The kernel filters a dump only by conntrack mark ([`delete_marked`]:
//! `CTA_MARK` and `CTA_MARK_MASK`, in every kernel dcol runs on), so only
//! the detour flows are sent; the tuples are matched here (`CTA_FILTER`
//! needs 5.8). It does not touch UDP or other protocols and keeps no state.
//! A dump takes ~10 ms and more under load: the daemon's loop hands ended
//! tunnels to a [`Cleaner`], which deletes their flows on its own thread.

use std::net::{IpAddr, Ipv6Addr};

use neli::consts::nl::NlmF;

use super::netlink::{array, attr, be16, be32, be64, nest, nested, ty, u8_, Attr};
use super::nfnl::{msg_type, NfMsg, NfSocket, Nfgenmsg};
use super::SysError;

mod cleaner;

pub use cleaner::{BatchId, Cleaned, Cleaner};

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
/// `CTA_MARK` (be32): in a dump request, the mark to match.
const CTA_MARK: u16 = 0x8;
/// `CTA_MARK_MASK` (be32): in a dump request, the bits of the mark compared.
const CTA_MARK_MASK: u16 = 0x15;
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
    msg_type(NFNL_SUBSYS_CTNETLINK, msg)
}

/// The original-direction tuple of one conntrack entry, and what its
/// deletion needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Source port (0 for protocols without ports).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// The entry's id (`CTA_ID`), if the kernel gave one.
    pub id: Option<u32>,
    /// Its conntrack zone, if any.
    pub zone: Option<u16>,
    /// Bytes both ways (0 without conntrack accounting).
    pub bytes: u64,
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
    let per = delete_batch(tunnels)?;
    Ok(per
        .0
        .values()
        .fold((0, 0u64), |(n, b), (k, x)| (n + k, b.saturating_add(*x))))
}

/// What [`delete_batch`] deleted: per tunnel (client, port), the entries and
/// the bytes they carried.
#[derive(Debug, Default)]
pub struct Deleted(std::collections::HashMap<(IpAddr, u16), (usize, u64)>);

impl Deleted {
    /// Entries deleted for the tunnel of `client` on `port`, and their bytes.
    pub fn of(&self, client: IpAddr, port: u16) -> (usize, u64) {
        self.0.get(&(client, port)).copied().unwrap_or_default()
    }
}

/// [`delete_flows_counted`] for many tunnels with one dump per address
/// family: per tunnel (client, port), the entries deleted and the bytes they
/// carried (tunnels without entries are absent). A dump walks the whole
/// conntrack hash table (~10-40 ms on a busy host), so a waypoint ending many
/// leases in one loop turn (a batch of releases, a revocation) pays it once
/// instead of once per lease.
pub fn delete_batch(tunnels: &[(IpAddr, u16)]) -> Result<Deleted, SysError> {
    delete_filtered(tunnels, None)
}

/// [`delete_batch`] with a dump the kernel filters: only entries whose
/// conntrack mark has every bit of `mark` are sent and deleted (dcol's NAT
/// table marks each flow its map translated: the dump then skips the rest of
/// a busy router's table).
pub fn delete_marked(tunnels: &[(IpAddr, u16)], mark: u32) -> Result<Deleted, SysError> {
    delete_filtered(tunnels, Some(mark))
}

fn delete_filtered(tunnels: &[(IpAddr, u16)], mark: Option<u32>) -> Result<Deleted, SysError> {
    if tunnels.is_empty() {
        return Ok(Deleted::default());
    }
    delete_on(&mut NfSocket::open()?, tunnels, mark)
}

/// [`delete_filtered`] on an open socket. Closing a netfilter netlink
/// socket is not free: the kernel then takes the namespace's nftables
/// commit mutex and waits for the pending transactions' RCU grace period
/// (`nft_rcv_nl_event`, 10-30 ms on a busy host), stalling every nftables
/// change meanwhile. A thread that deletes often keeps its socket.
fn delete_on(
    sock: &mut NfSocket,
    tunnels: &[(IpAddr, u16)],
    mark: Option<u32>,
) -> Result<Deleted, SysError> {
    let wanted: std::collections::HashSet<(IpAddr, u16)> = tunnels.iter().copied().collect();
    let mut per = Deleted::default();
    for v4 in [true, false] {
        if !wanted.iter().any(|(c, _)| c.is_ipv4() == v4) {
            continue;
        }
        let family = if v4 {
            libc::AF_INET as u8
        } else {
            libc::AF_INET6 as u8
        };
        let flows = dump(sock, family, mark)?;
        for f in flows
            .iter()
            .filter(|f| f.proto == IPPROTO_TCP && wanted.contains(&(f.src, f.dport)))
        {
            match sock.request("conntrack delete", delete_msg(family, f)?, |_, _| Ok(())) {
                Ok(()) => {
                    let e = per.0.entry((f.src, f.dport)).or_default();
                    e.0 += 1;
                    e.1 = e.1.saturating_add(f.bytes);
                }
                Err(SysError::Netlink { errno, .. }) if errno == libc::ENOENT => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(per)
}

/// The entries of `family`; with `mark`, only those whose mark has its bits.
fn dump(sock: &mut NfSocket, family: u8, mark: Option<u32>) -> Result<Vec<Flow>, SysError> {
    let op = "conntrack dump";
    let mut tries = 0;
    loop {
        let mut filter = Vec::new();
        if let Some(m) = mark {
            filter.push(attr(op, CTA_MARK, &m.to_be_bytes())?);
            filter.push(attr(op, CTA_MARK_MASK, &m.to_be_bytes())?);
        }
        let m = NfMsg::new(
            NFNL_SUBSYS_CTNETLINK,
            IPCTNL_MSG_CT_GET,
            NlmF::empty(),
            family,
            filter,
        );
        let mut flows = Vec::new();
        let r = sock.dump(op, m, |ty, payload| {
            if ty == ct_type(IPCTNL_MSG_CT_NEW) {
                match parse_flow(payload) {
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
pub fn parse_flow(payload: &[u8]) -> Result<Option<Flow>, SysError> {
    let op = "conntrack parse";
    let body = Nfgenmsg::decode(op, payload)?;
    let (mut tuple, mut id, mut zone, mut bytes) = (None, None, None, 0u64);
    for a in body.attrs().iter() {
        match ty(a) {
            CTA_TUPLE_ORIG => tuple = Some(a),
            CTA_ID => id = Some(be32(op, a)?),
            CTA_ZONE => zone = Some(be16(op, a)?),
            CTA_COUNTERS_ORIG | CTA_COUNTERS_REPLY => {
                for c in nested(op, a)?.iter() {
                    if ty(c) == CTA_COUNTERS_BYTES {
                        bytes = bytes.saturating_add(be64(op, c)?);
                    }
                }
            }
            _ => {}
        }
    }
    let Some(tuple) = tuple else { return Ok(None) };
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for t in nested(op, tuple)?.iter() {
        match ty(t) {
            CTA_TUPLE_IP => {
                for i in nested(op, t)?.iter() {
                    match ty(i) {
                        CTA_IP_V4_SRC => src = Some(IpAddr::V4(array::<4>(op, i)?.into())),
                        CTA_IP_V4_DST => dst = Some(IpAddr::V4(array::<4>(op, i)?.into())),
                        CTA_IP_V6_SRC => src = Some(IpAddr::V6(array::<16>(op, i)?.into())),
                        CTA_IP_V6_DST => dst = Some(IpAddr::V6(array::<16>(op, i)?.into())),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for p in nested(op, t)?.iter() {
                    match ty(p) {
                        CTA_PROTO_NUM => proto = Some(u8_(op, p)?),
                        CTA_PROTO_SRC_PORT => sport = Some(be16(op, p)?),
                        CTA_PROTO_DST_PORT => dport = Some(be16(op, p)?),
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

/// Builds `IPCTNL_MSG_CT_DELETE` for `f`: its original tuple, zone and id.
fn delete_msg(family: u8, f: &Flow) -> Result<NfMsg, SysError> {
    let op = "conntrack delete";
    let ip = match (f.src, f.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => [
            attr(op, CTA_IP_V4_SRC, &s.octets())?,
            attr(op, CTA_IP_V4_DST, &d.octets())?,
        ],
        (s, d) => [
            attr(op, CTA_IP_V6_SRC, &v6(s).octets())?,
            attr(op, CTA_IP_V6_DST, &v6(d).octets())?,
        ],
    };
    let proto = [
        attr(op, CTA_PROTO_NUM, &[f.proto])?,
        attr(op, CTA_PROTO_SRC_PORT, &f.sport.to_be_bytes())?,
        attr(op, CTA_PROTO_DST_PORT, &f.dport.to_be_bytes())?,
    ];
    let tuple = [
        nest(op, CTA_TUPLE_IP, &ip)?,
        nest(op, CTA_TUPLE_PROTO, &proto)?,
    ];
    let mut attrs: Vec<Attr> = vec![nest(op, CTA_TUPLE_ORIG, &tuple)?];
    if let Some(z) = f.zone {
        attrs.push(attr(op, CTA_ZONE, &z.to_be_bytes())?);
    }
    if let Some(id) = f.id {
        attrs.push(attr(op, CTA_ID, &id.to_be_bytes())?);
    }
    Ok(NfMsg::new(
        NFNL_SUBSYS_CTNETLINK,
        IPCTNL_MSG_CT_DELETE,
        NlmF::empty(),
        family,
        attrs,
    ))
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
    use crate::sys::netlink::{test_attr as a, NLMSG_HDRLEN};

    const NLA_F_NESTED: u16 = 0x8000;

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
        let b = delete_msg(2, &f)
            .unwrap()
            .encode("t", 0, NlmF::empty())
            .unwrap();
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

    /// Root, in a fresh namespace: entries inserted with `conntrack -I`
    /// (IPv4, IPv6, another zone, another port, UDP) are dumped and the
    /// tunnel's are deleted, by tuple, zone and id; the others stay. A
    /// second pass finds nothing.
    #[test]
    #[cfg_attr(
        not(dcol_root),
        ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
    )]
    fn root_dump_and_delete() {
        use crate::sys::netlink::testns::{is_root, NsThread};
        if !is_root() {
            eprintln!("SKIP: needs root");
            return;
        }
        let ns = NsThread::new();
        let insert = |args: &str| {
            let mut a = vec!["conntrack", "-I", "-t", "60"];
            a.extend(args.split_whitespace());
            ns.cmd(&a);
        };
        let tcp = "-p tcp --state ESTABLISHED";
        insert(&format!(
            "{tcp} -s 10.99.0.1 -d 10.98.0.2 --sport 51000 --dport 40000"
        ));
        insert(&format!(
            "{tcp} -s 10.99.0.1 -d 10.98.0.2 --sport 51001 --dport 40000 -w 7"
        ));
        insert(&format!(
            "{tcp} -s 10.99.0.1 -d 10.98.0.2 --sport 51002 --dport 40001"
        ));
        insert(&format!(
            "{tcp} -s fd00:99::1 -d fd00:98::2 --sport 51003 --dport 40000"
        ));
        insert("-p udp -s 10.99.0.1 -d 10.98.0.2 --sport 51004 --dport 40000");
        let v4: IpAddr = "10.99.0.1".parse().unwrap();
        let v6: IpAddr = "fd00:99::1".parse().unwrap();
        let n = ns
            .run(move || delete_many(&[(v4, 40000), (v6, 40000)]))
            .expect("delete");
        assert_eq!(n, 3, "two IPv4 zones and one IPv6 entry");
        let left = ns.out(&["conntrack", "-L"]);
        assert!(left.contains("dport=40001"), "{left}");
        assert!(left.contains("udp"), "{left}");
        assert!(
            !left.contains("sport=51000") && !left.contains("sport=51001"),
            "{left}"
        );
        let left6 = ns.out(&["conntrack", "-L", "-f", "ipv6"]);
        assert!(!left6.contains("sport=51003"), "{left6}");
        assert_eq!(ns.run(move || delete_flows(v4, 40000)).unwrap(), 0);
        // A dump filtered by mark: only the marked entry of the tunnel goes.
        for (sport, mark) in [("51010", "0x00dc0001"), ("51011", "0x00010000")] {
            insert(&format!(
                "{tcp} -s 10.99.0.1 -d 10.98.0.2 --sport {sport} --dport 40002 -m {mark}"
            ));
        }
        let d = ns
            .run(move || delete_marked(&[(v4, 40002)], 0x00dc_0000))
            .expect("delete marked");
        assert_eq!(d.of(v4, 40002).0, 1);
        let left = ns.out(&["conntrack", "-L"]);
        assert!(
            left.contains("sport=51011") && !left.contains("sport=51010"),
            "{left}"
        );
        assert_eq!(
            ns.run(move || delete_flows_counted(v4, 40001)).unwrap().0,
            1
        );
    }
}
