//! The few rtnetlink operations VPN tunnels need: create, bring up and delete
//! a link; add an address; a default route in a table of our own; a
//! `from <address> lookup <table>` policy rule. Messages are built with
//! [`super::rawnl::MsgBuilder`] on a `NETLINK_ROUTE` socket; no `ip` binary.

use std::net::IpAddr;

use super::rawnl::{MsgBuilder, NlSocket, NLM_F_CREATE, NLM_F_EXCL};
use super::SysError;

const NETLINK_ROUTE: i32 = 0;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const FRA_SRC: u16 = 2;
const FRA_PRIORITY: u16 = 6;
const FRA_TABLE: u16 = 15;
const IFF_UP: u32 = 1;
const RTPROT_STATIC: u8 = 4;
const RTN_UNICAST: u8 = 1;
const RT_SCOPE_UNIVERSE: u8 = 0;
const FR_ACT_TO_TBL: u8 = 1;

/// An rtnetlink socket.
#[derive(Debug)]
pub struct Rtnl {
    sock: NlSocket,
}

fn family(a: &IpAddr) -> u8 {
    if a.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

fn octets(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// `struct ifinfomsg` (16 bytes).
fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0] = libc::AF_UNSPEC as u8;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

/// The index of interface `name` (0: none).
pub fn index_of(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: c is a valid NUL-terminated string.
    #[allow(unsafe_code)]
    unsafe {
        libc::if_nametoindex(c.as_ptr())
    }
}

impl Rtnl {
    /// Opens the socket.
    pub fn open() -> Result<Rtnl, SysError> {
        Ok(Rtnl {
            sock: NlSocket::open(NETLINK_ROUTE)?,
        })
    }

    /// Creates link `name` of `kind` (e.g. `wireguard`).
    pub fn add_link(&mut self, name: &str, kind: &str) -> Result<(), SysError> {
        let mut m = MsgBuilder::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.push_header(&ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, name);
        let n = m.begin_nested(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, kind);
        m.end_nested(n);
        self.sock.request("create link", m, |_| Ok(()))
    }

    /// Brings link `name` up.
    pub fn set_up(&mut self, name: &str) -> Result<(), SysError> {
        let idx = self.index(name)?;
        let mut m = MsgBuilder::new(RTM_NEWLINK, 0);
        m.push_header(&ifinfomsg(idx as i32, IFF_UP, IFF_UP));
        self.sock.request("set link up", m, |_| Ok(()))
    }

    /// Deletes link `name`; a missing link is not an error.
    pub fn del_link(&mut self, name: &str) -> Result<(), SysError> {
        let mut m = MsgBuilder::new(RTM_DELLINK, 0);
        m.push_header(&ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, name);
        match self.sock.request("delete link", m, |_| Ok(())) {
            Err(SysError::Netlink { errno, .. }) if errno == libc::ENODEV => Ok(()),
            r => r,
        }
    }

    fn index(&self, name: &str) -> Result<u32, SysError> {
        match index_of(name) {
            0 => Err(SysError::Unsupported(format!("no interface {name}"))),
            i => Ok(i),
        }
    }

    /// Adds `addr/prefix` to link `name`.
    pub fn add_addr(&mut self, name: &str, addr: IpAddr, prefix: u8) -> Result<(), SysError> {
        let idx = self.index(name)?;
        let mut m = MsgBuilder::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
        let mut h = [0u8; 8];
        h[0] = family(&addr);
        h[1] = prefix;
        h[4..8].copy_from_slice(&idx.to_ne_bytes());
        m.push_header(&h);
        m.attr(IFA_LOCAL, &octets(&addr));
        m.attr(IFA_ADDRESS, &octets(&addr));
        self.sock.request("add address", m, |_| Ok(()))
    }

    /// A default route (`v4`: IPv4, else IPv6) out of link `name` in `table`.
    pub fn add_default_route(&mut self, name: &str, v4: bool, table: u32) -> Result<(), SysError> {
        let idx = self.index(name)?;
        let mut m = MsgBuilder::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
        let mut h = [0u8; 12];
        h[0] = if v4 {
            libc::AF_INET as u8
        } else {
            libc::AF_INET6 as u8
        };
        h[4] = 0; // RT_TABLE_UNSPEC: RTA_TABLE says
        h[5] = RTPROT_STATIC;
        h[6] = RT_SCOPE_UNIVERSE;
        h[7] = RTN_UNICAST;
        m.push_header(&h);
        m.attr_u32(RTA_TABLE, table);
        m.attr_u32(RTA_OIF, idx);
        self.sock.request("add route", m, |_| Ok(()))
    }

    fn rule(&mut self, add: bool, src: IpAddr, table: u32, priority: u32) -> Result<(), SysError> {
        let (ty, flags) = if add {
            (RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL)
        } else {
            (RTM_DELRULE, 0)
        };
        let mut m = MsgBuilder::new(ty, flags);
        let mut h = [0u8; 12];
        h[0] = family(&src);
        h[2] = if src.is_ipv4() { 32 } else { 128 };
        h[7] = FR_ACT_TO_TBL;
        m.push_header(&h);
        m.attr(FRA_SRC, &octets(&src));
        m.attr_u32(FRA_TABLE, table);
        m.attr_u32(FRA_PRIORITY, priority);
        self.sock
            .request(if add { "add rule" } else { "delete rule" }, m, |_| Ok(()))
    }

    /// `from <src> lookup <table> pref <priority>`.
    pub fn add_rule(&mut self, src: IpAddr, table: u32, priority: u32) -> Result<(), SysError> {
        self.rule(true, src, table, priority)
    }

    /// Removes that rule; a missing rule is not an error.
    pub fn del_rule(&mut self, src: IpAddr, table: u32, priority: u32) -> Result<(), SysError> {
        match self.rule(false, src, table, priority) {
            Err(SysError::Netlink { errno, .. }) if errno == libc::ENOENT => Ok(()),
            r => r,
        }
    }
}
