//! The few rtnetlink operations VPN tunnels need: create, bring up and delete
//! a link; add an address; a default route in a table of our own; a
//! `from <address> lookup <table>` policy rule. On the `rtnetlink` crate; no
//! `ip` binary.
//!
//! rtnetlink is async; the daemon decides in one thread. [`Rtnl`] runs each
//! operation on a current-thread tokio runtime of its own (no thread: the
//! runtime's I/O driver is an epoll descriptor, driven only while the caller
//! blocks on it), for at most [`EXCHANGE_TIMEOUT`]. The kernel answers these
//! requests as it handles them, so the caller blocks about as long as it
//! did on a plain netlink socket. Not the route watcher's worker thread
//! ([`super::routewatch`]) through a command channel: every caller needs the
//! answer before its next step (a tunnel's address before its route, its
//! route before its rule, and a failure unwinds what was made), so it would
//! block on the reply all the same, with a second thread and a channel in
//! between; and the WireGuard glue ([`super::wg`]) makes and removes links
//! where no watcher runs (the waypoint's VPN at start, tests).
//!
//! The socket is opened by [`Rtnl::open`] in the calling thread: operations
//! act in that thread's network namespace. The kernel's refusals are
//! [`SysError::Netlink`] with the errno and the extended-ack text, read from
//! the error payload rtnetlink keeps ([`super::netlink::extack_after_echo`]).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::InfoKind;
use rtnetlink::packet_route::route::{RouteAttribute, RouteHeader};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::sys::AsyncSocket;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};
use tokio::runtime::Runtime;

use super::netlink::{extack_after_echo, EXCHANGE_TIMEOUT};
use super::SysError;

/// An rtnetlink connection and the runtime its calls block on.
pub struct Rtnl {
    rt: Runtime,
    handle: Handle,
}

impl std::fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtnl").finish_non_exhaustive()
    }
}

/// The index of interface `name` (0: none).
pub fn index_of(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or(0)
}

/// What a failed rtnetlink request becomes: a kernel refusal keeps its errno
/// and extended-ack text; anything else is rtnetlink's own error.
fn rtnl_error(op: &'static str, e: rtnetlink::Error) -> SysError {
    match e {
        rtnetlink::Error::NetlinkError(m) => SysError::Netlink {
            op,
            errno: m.raw_code().saturating_neg(),
            extack: extack_after_echo(&m.header),
        },
        source => SysError::Rtnetlink { op, source },
    }
}

impl Rtnl {
    /// Opens the socket (extended acks on) in the calling thread's network
    /// namespace.
    pub fn open() -> Result<Rtnl, SysError> {
        let op = "rtnetlink socket";
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| SysError::io(op, e))?;
        let (mut conn, handle, _) = {
            let _in_runtime = rt.enter();
            rtnetlink::new_connection().map_err(|e| SysError::io(op, e))?
        };
        // Kernels before 4.12 lack extended acks: errors then come without text.
        if let Err(e) = conn.socket_mut().socket_mut().set_ext_ack(true) {
            log::debug!("rtnetlink: NETLINK_EXT_ACK: {e}");
        }
        rt.spawn(conn);
        Ok(Rtnl { rt, handle })
    }

    /// Runs request `f` to its end, for [`EXCHANGE_TIMEOUT`] at most.
    fn run(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<(), rtnetlink::Error>>,
    ) -> Result<(), SysError> {
        match self
            .rt
            .block_on(async { tokio::time::timeout(EXCHANGE_TIMEOUT, f).await })
        {
            Ok(r) => r.map_err(|e| rtnl_error(op, e)),
            Err(_) => Err(SysError::io(
                op,
                io::Error::new(io::ErrorKind::TimedOut, "no answer from the kernel"),
            )),
        }
    }

    /// Creates link `name` of `kind` (e.g. `wireguard`).
    pub fn add_link(&mut self, name: &str, kind: &str) -> Result<(), SysError> {
        let m = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Other(kind.into()))
            .name(name.to_owned())
            .build();
        self.run("create link", self.handle.link().add(m).execute())
    }

    /// Brings link `name` up.
    pub fn set_up(&mut self, name: &str) -> Result<(), SysError> {
        let m = LinkUnspec::new_with_index(self.index(name)?).up().build();
        self.run("set link up", self.handle.link().change(m).execute())
    }

    /// Sets link `name`'s MTU.
    pub fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<(), SysError> {
        let m = LinkUnspec::new_with_index(self.index(name)?)
            .mtu(mtu)
            .build();
        self.run("set link mtu", self.handle.link().change(m).execute())
    }

    /// Deletes link `name`; a missing link is not an error.
    pub fn del_link(&mut self, name: &str) -> Result<(), SysError> {
        let m = LinkUnspec::new_with_name(name).build();
        match self.run(
            "delete link",
            self.handle.link().del_with_message(m).execute(),
        ) {
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

    /// Adds `addr/prefix` to link `name` (local and peer address both
    /// `addr`, no broadcast address: as `ip address add` does).
    pub fn add_addr(&mut self, name: &str, addr: IpAddr, prefix: u8) -> Result<(), SysError> {
        let mut req = self.handle.address().add(self.index(name)?, addr, prefix);
        req.message_mut()
            .attributes
            .retain(|a| !matches!(a, AddressAttribute::Broadcast(_)));
        self.run("add address", req.execute())
    }

    /// A default route (`v4`: IPv4, else IPv6) out of link `name` in `table`
    /// (static, universe scope, unicast).
    pub fn add_default_route(&mut self, name: &str, v4: bool, table: u32) -> Result<(), SysError> {
        let idx = self.index(name)?;
        let mut m = if v4 {
            RouteMessageBuilder::<Ipv4Addr>::new()
                .output_interface(idx)
                .build()
        } else {
            RouteMessageBuilder::<Ipv6Addr>::new()
                .output_interface(idx)
                .build()
        };
        // The table as an attribute, whatever its number.
        m.header.table = RouteHeader::RT_TABLE_UNSPEC;
        m.attributes.push(RouteAttribute::Table(table));
        self.run("add route", self.handle.route().add(m).execute())
    }

    /// `from <src> lookup <table> pref <priority>`.
    pub fn add_rule(&mut self, src: IpAddr, table: u32, priority: u32) -> Result<(), SysError> {
        let mut req = self.handle.rule().add();
        *req.message_mut() = rule_msg(src, table, priority);
        self.run("add rule", req.execute())
    }

    /// Removes that rule; a missing rule is not an error.
    pub fn del_rule(&mut self, src: IpAddr, table: u32, priority: u32) -> Result<(), SysError> {
        let req = self.handle.rule().del(rule_msg(src, table, priority));
        match self.run("delete rule", req.execute()) {
            Err(SysError::Netlink { errno, .. }) if errno == libc::ENOENT => Ok(()),
            r => r,
        }
    }
}

/// The rule `from <src>/32 (or /128) lookup <table> pref <priority>`.
fn rule_msg(src: IpAddr, table: u32, priority: u32) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = if src.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.src_len = if src.is_ipv4() { 32 } else { 128 };
    m.header.action = RuleAction::ToTable;
    m.attributes = vec![
        RuleAttribute::Source(src),
        RuleAttribute::Table(table),
        RuleAttribute::Priority(priority),
    ];
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::testns::{is_root, NsThread};

    /// Root, in a fresh namespace: a link made (a veth: this kernel has no
    /// dummy module; the kernel names the peer), brought up, given addresses
    /// (no broadcast address), a default route in a table of its own and
    /// rules, all as `ip` shows them; refusals keep the kernel's text;
    /// everything removed again.
    #[test]
    #[cfg_attr(
        not(dcol_root),
        ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
    )]
    fn root_link_address_route_rule() {
        if !is_root() {
            eprintln!("SKIP: needs root");
            return;
        }
        NsThread::new().run(|| {
            let ip = |args: &str| {
                let o = std::process::Command::new("ip")
                    .args(args.split_whitespace())
                    .output()
                    .unwrap();
                assert!(o.status.success(), "ip {args}");
                String::from_utf8_lossy(&o.stdout).into_owned()
            };
            let mut rt = Rtnl::open().unwrap();
            rt.add_link("dcoltest0", "veth").unwrap();
            match rt.add_link("dcoltest0", "veth") {
                Err(SysError::Netlink { errno, .. }) => assert_eq!(errno, libc::EEXIST),
                other => panic!("{other:?}"),
            }
            match rt.add_link("dcoltest1", "dcol-no-such-kind") {
                Err(SysError::Netlink { errno, extack, .. }) => {
                    assert_eq!(errno, libc::EOPNOTSUPP);
                    assert_eq!(extack.as_deref(), Some("Unknown device type"));
                }
                other => panic!("{other:?}"),
            }
            rt.set_up("dcoltest0").unwrap();
            assert!(ip("link show dcoltest0").contains(",UP"));
            rt.add_addr("dcoltest0", "10.77.0.1".parse().unwrap(), 24)
                .unwrap();
            rt.add_addr("dcoltest0", "fd00:77::1".parse().unwrap(), 64)
                .unwrap();
            let a = ip("-4 addr show dcoltest0");
            assert!(a.contains("inet 10.77.0.1/24 scope global"), "{a}");
            assert!(!a.contains("brd"), "no broadcast address: {a}");
            assert!(ip("-6 addr show dcoltest0").contains("fd00:77::1/64"));
            rt.add_default_route("dcoltest0", true, 4242).unwrap();
            rt.add_default_route("dcoltest0", false, 4242).unwrap();
            let r = ip("-4 route show table 4242");
            // Universe scope: `ip` names no scope.
            let universe =
                r.starts_with("default dev dcoltest0 proto static") && !r.contains("scope");
            assert!(universe, "{r}");
            let r = ip("-6 route show table 4242");
            assert!(r.starts_with("default dev dcoltest0 proto static"), "{r}");
            let src4: IpAddr = "10.77.0.1".parse().unwrap();
            let src6: IpAddr = "fd00:77::1".parse().unwrap();
            rt.add_rule(src4, 4242, 4242).unwrap();
            rt.add_rule(src6, 4242, 4242).unwrap();
            let r = ip("-4 rule");
            assert!(r.contains("4242:\tfrom 10.77.0.1 lookup 4242"), "{r}");
            let r = ip("-6 rule");
            assert!(r.contains("4242:\tfrom fd00:77::1 lookup 4242"), "{r}");
            assert!(matches!(
                rt.add_rule(src4, 4242, 4242),
                Err(SysError::Netlink { errno, .. }) if errno == libc::EEXIST
            ));
            rt.del_rule(src4, 4242, 4242).unwrap();
            rt.del_rule(src6, 4242, 4242).unwrap();
            rt.del_rule(src4, 4242, 4242)
                .expect("a missing rule is fine");
            assert!(!ip("-4 rule").contains("4242"));
            assert!(!ip("-6 rule").contains("4242"));
            rt.del_link("dcoltest0").unwrap();
            rt.del_link("dcoltest0").expect("a missing link is fine");
            assert!(matches!(
                rt.set_up("dcoltest0"),
                Err(SysError::Unsupported(_))
            ));
            assert_eq!(
                ip("-4 route show table 4242"),
                "",
                "the routes went with the link"
            );
            assert!(!ip("link").contains("dcoltest"));
        });
    }
}
