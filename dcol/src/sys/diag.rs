//! Per-subflow TCP counters through `sock_diag` (`NETLINK_SOCK_DIAG`,
//! `inet_diag`): every MPTCP subflow is a TCP socket the kernel lists with its
//! `struct tcp_info` (`INET_DIAG_INFO`), whichever program owns the MPTCP
//! socket — so connections of `mptcpize run iperf3` are measured as well as
//! the LAN proxy's. One dump per address family per sampling round; the
//! caller picks the 4-tuples it wants.
//!
//! Does not: open or touch the sockets, or read MPTCP-level counters.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use neli::consts::socket::NlFamily;

use super::netlink::{attrs, ty, NlConn};
use super::SysError;
use crate::mptcp::{FourTuple, Sample};

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 0x14;
/// `INET_DIAG_INFO` (linux/inet_diag.h): `struct tcp_info`.
const INET_DIAG_INFO: u16 = 0x2;
/// `TCPF_ESTABLISHED | TCPF_FIN_WAIT1 | TCPF_FIN_WAIT2 | TCPF_CLOSE_WAIT`:
/// states in which a subflow moves data.
const STATES: u32 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 8);
/// `sizeof(struct inet_diag_msg)`.
const DIAG_MSG_LEN: usize = 72;

// Offsets in `struct tcp_info` (linux/tcp.h; host byte order).
const TI_RTT: usize = 68;
const TI_TOTAL_RETRANS: usize = 100;
const TI_BYTES_ACKED: usize = 120;
const TI_BYTES_RECEIVED: usize = 128;
const TI_SEGS_OUT: usize = 136;
const TI_MIN_RTT: usize = 148;
const TI_DELIVERY_RATE: usize = 160;
/// The shortest `tcp_info` with every field we read (kernel ≥ 4.9).
const TI_MIN_LEN: usize = TI_DELIVERY_RATE + 8;

/// A `sock_diag` socket.
#[derive(Debug)]
pub struct Diag {
    sock: NlConn,
}

impl Diag {
    /// Opens the socket.
    pub fn open() -> Result<Self, SysError> {
        Ok(Diag {
            sock: NlConn::open(NlFamily::SockOrInetDiag, "sock_diag netlink")?,
        })
    }

    /// Counters of every TCP socket of `family_v6`'s family that moves data.
    pub fn dump(&mut self, v6: bool) -> Result<HashMap<FourTuple, Sample>, SysError> {
        let op = "sock_diag tcp dump";
        let mut out = HashMap::new();
        self.sock
            .dump(op, SOCK_DIAG_BY_FAMILY, request(v6), |ty, payload| {
                if ty == SOCK_DIAG_BY_FAMILY {
                    if let Some((k, s)) = parse_diag_msg(payload)? {
                        out.insert(k, s);
                    }
                }
                Ok(())
            })?;
        Ok(out)
    }

    /// Both families' counters.
    pub fn dump_all(&mut self) -> Result<HashMap<FourTuple, Sample>, SysError> {
        let mut all = self.dump(false)?;
        all.extend(self.dump(true)?);
        Ok(all)
    }
}

/// `struct inet_diag_req_v2` for a TCP dump asking for `tcp_info`.
fn request(v6: bool) -> [u8; 56] {
    let mut r = [0u8; 56];
    r[0] = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
    r[1] = libc::IPPROTO_TCP as u8;
    r[2] = 1 << (INET_DIAG_INFO - 1);
    r[4..8].copy_from_slice(&STATES.to_ne_bytes());
    // The socket id stays zero: a dump ignores it; the cookie must be
    // INET_DIAG_NOCOOKIE only for exact lookups.
    r
}

fn rd<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    if let Some(s) = b.get(at..at + N) {
        a.copy_from_slice(s);
    }
    a
}

/// Parses one `SOCK_DIAG_BY_FAMILY` reply payload (`struct inet_diag_msg`
/// and attributes): the socket's 4-tuple and counters, or `None` for a
/// socket without `tcp_info`.
pub fn parse_diag_msg(p: &[u8]) -> Result<Option<(FourTuple, Sample)>, SysError> {
    let op = "sock_diag reply";
    if p.len() < DIAG_MSG_LEN {
        return Err(SysError::Malformed {
            op,
            what: format!("inet_diag_msg of {} bytes", p.len()),
        });
    }
    let family = i32::from(p[0]);
    let sport = u16::from_be_bytes(rd(p, 4));
    let dport = u16::from_be_bytes(rd(p, 6));
    let (src, dst) = match family {
        libc::AF_INET => (
            IpAddr::V4(Ipv4Addr::from(rd::<4>(p, 8))),
            IpAddr::V4(Ipv4Addr::from(rd::<4>(p, 24))),
        ),
        libc::AF_INET6 => {
            let s = Ipv6Addr::from(rd::<16>(p, 8));
            let d = Ipv6Addr::from(rd::<16>(p, 24));
            // A v4 subflow of a dual-stack socket shows as v4-mapped.
            let norm = |a: Ipv6Addr| a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4);
            (norm(s), norm(d))
        }
        f => {
            return Err(SysError::Malformed {
                op,
                what: format!("address family {f}"),
            })
        }
    };
    let attrs = attrs(op, &p[DIAG_MSG_LEN..])?;
    let Some(info) = attrs.iter().rev().find(|a| ty(a) == INET_DIAG_INFO) else {
        return Ok(None);
    };
    let ti = info.nla_payload().as_ref();
    if ti.len() < TI_MIN_LEN {
        return Ok(None);
    }
    let s = Sample {
        bytes_acked: u64::from_ne_bytes(rd(ti, TI_BYTES_ACKED)),
        bytes_received: u64::from_ne_bytes(rd(ti, TI_BYTES_RECEIVED)),
        segs_out: u32::from_ne_bytes(rd(ti, TI_SEGS_OUT)),
        retrans: u32::from_ne_bytes(rd(ti, TI_TOTAL_RETRANS)),
        rtt: Duration::from_micros(u64::from(u32::from_ne_bytes(rd(ti, TI_RTT)))),
        min_rtt: Duration::from_micros(u64::from(u32::from_ne_bytes(rd(ti, TI_MIN_RTT)))),
        delivery_rate: u64::from_ne_bytes(rd(ti, TI_DELIVERY_RATE)),
    };
    Ok(Some((
        (SocketAddr::new(src, sport), SocketAddr::new(dst, dport)),
        s,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<u8> {
        let mut p = vec![0u8; DIAG_MSG_LEN];
        p[0] = libc::AF_INET as u8;
        p[1] = 1; // ESTABLISHED
        p[4..6].copy_from_slice(&40001u16.to_be_bytes());
        p[6..8].copy_from_slice(&5201u16.to_be_bytes());
        p[8..12].copy_from_slice(&[10, 0, 1, 2]);
        p[24..28].copy_from_slice(&[10, 0, 2, 2]);
        let mut ti = vec![0u8; 232];
        ti[TI_RTT..TI_RTT + 4].copy_from_slice(&12_345u32.to_ne_bytes());
        ti[TI_TOTAL_RETRANS..TI_TOTAL_RETRANS + 4].copy_from_slice(&7u32.to_ne_bytes());
        ti[TI_MIN_RTT..TI_MIN_RTT + 4].copy_from_slice(&9_000u32.to_ne_bytes());
        ti[TI_BYTES_ACKED..TI_BYTES_ACKED + 8].copy_from_slice(&1_000_000u64.to_ne_bytes());
        ti[TI_BYTES_RECEIVED..TI_BYTES_RECEIVED + 8].copy_from_slice(&55u64.to_ne_bytes());
        ti[TI_SEGS_OUT..TI_SEGS_OUT + 4].copy_from_slice(&700u32.to_ne_bytes());
        ti[TI_DELIVERY_RATE..TI_DELIVERY_RATE + 8].copy_from_slice(&1_250_000u64.to_ne_bytes());
        p.extend_from_slice(&((ti.len() + 4) as u16).to_ne_bytes());
        p.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        p.extend_from_slice(&ti);
        p
    }

    #[test]
    fn reply_fixture_parses() {
        let ((l, r), s) = parse_diag_msg(&fixture()).unwrap().unwrap();
        assert_eq!(l, "10.0.1.2:40001".parse().unwrap());
        assert_eq!(r, "10.0.2.2:5201".parse().unwrap());
        assert_eq!(s.rtt, Duration::from_micros(12_345));
        assert_eq!(s.min_rtt, Duration::from_micros(9_000));
        assert_eq!(s.retrans, 7);
        assert_eq!(s.bytes_acked, 1_000_000);
        assert_eq!(s.bytes_received, 55);
        assert_eq!(s.segs_out, 700);
        assert_eq!(s.delivery_rate, 1_250_000);
    }

    #[test]
    fn short_or_odd_replies_are_errors_or_skipped() {
        let f = fixture();
        assert!(parse_diag_msg(&f[..10]).is_err());
        assert_eq!(parse_diag_msg(&f[..DIAG_MSG_LEN]).unwrap(), None);
        let mut g = f.clone();
        g[0] = 99;
        assert!(parse_diag_msg(&g).is_err());
        // A tcp_info shorter than the fields we read is skipped.
        let mut h = f[..DIAG_MSG_LEN].to_vec();
        h.extend_from_slice(&8u16.to_ne_bytes());
        h.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        h.extend_from_slice(&[0; 4]);
        assert_eq!(parse_diag_msg(&h).unwrap(), None);
        // A truncated attribute is an error.
        assert!(parse_diag_msg(&f[..f.len() - 100]).is_err());
    }

    #[test]
    fn request_asks_for_tcp_info_of_tcp() {
        let r = request(false);
        assert_eq!(r[0], libc::AF_INET as u8);
        assert_eq!(r[1], 6);
        assert_eq!(r[2], 0x2);
        assert_eq!(u32::from_ne_bytes([r[4], r[5], r[6], r[7]]), 0x132);
    }

    /// Against the running kernel (no root needed, read-only): a loopback
    /// connection of this process is in the dump, with counters.
    #[test]
    fn kernel_dump_lists_a_loopback_connection() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, _) = l.accept().unwrap();
        c.write_all(b"dcol").unwrap();
        let key = (c.local_addr().unwrap(), c.peer_addr().unwrap());
        let mut d = Diag::open().unwrap();
        let all = d.dump_all().unwrap();
        let s = all
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} not in the dump"));
        assert!(s.segs_out > 0, "{s:?}");
    }
}
