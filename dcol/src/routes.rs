//! The router's routing table as a value: which interfaces are the WAN, which
//! addresses are the router's own, and where a destination's route leaves.
//!
//! A [`Routes`] snapshot is built by the kernel glue
//! ([`crate::sys::routewatch`]) from the main and local routing tables, the
//! interface addresses and names, and rebuilt whenever the kernel announces an
//! address, route or link change. Decisions that depend on it (the
//! waypoint's destination policy, the LAN proxy's choice of what to intercept)
//! take the snapshot in and stay pure.
//!
//! What it answers ([`Routes::verdict`]):
//! - the router's own addresses (any interface, and every address of a
//!   `local`, `broadcast`, `anycast` or `multicast` route in the local table)
//!   are [`Verdict::Local`];
//! - otherwise the longest matching route of the main table decides: a
//!   unicast route whose every next hop leaves by a WAN interface is
//!   [`Verdict::Wan`]; one leaving by any other interface (the LAN, a guest
//!   network, a tunnel) is [`Verdict::NotWan`]; `blackhole`, `unreachable`,
//!   `prohibit` and no route at all are [`Verdict::NoRoute`].
//! - The WAN is the set of interfaces the default routes (IPv4 and IPv6)
//!   leave by. No default route: nothing is the WAN.
//!
//! Not modelled: policy routing rules other than the standard local/main
//! lookups (a rule steering some traffic elsewhere is caught by the kernel's
//! own check on the forwarded packets, `oifname @wan` in dcol's tables).
//!
//! ```
//! use dcol::routes::{Route, RouteKind, Routes, Verdict};
//! let r = Routes::new(
//!     vec![
//!         Route::main("0.0.0.0/0".parse().unwrap(), RouteKind::Unicast, vec![2]),
//!         Route::main("192.168.1.0/24".parse().unwrap(), RouteKind::Unicast, vec![3]),
//!     ],
//!     vec!["203.0.113.7".parse().unwrap()],
//!     vec![(2, "wan".into()), (3, "br-lan".into())],
//! );
//! assert_eq!(r.wan(), ["wan"]);
//! assert_eq!(r.verdict("93.184.216.34".parse().unwrap()), Verdict::Wan);
//! assert_eq!(
//!     r.verdict("192.168.1.20".parse().unwrap()),
//!     Verdict::NotWan("br-lan".into())
//! );
//! assert_eq!(r.verdict("203.0.113.7".parse().unwrap()), Verdict::Local);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::types::Cidr;

/// The kernel's `RT_TABLE_MAIN`.
pub const TABLE_MAIN: u32 = 254;
/// The kernel's `RT_TABLE_LOCAL`.
pub const TABLE_LOCAL: u32 = 255;

/// A route's type (`rtm_type`), as far as it matters here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Forwarded to a next hop or on-link.
    Unicast,
    /// Delivered to the router itself (`local`, `broadcast`, `anycast`,
    /// `multicast` in the local table).
    Local,
    /// `blackhole`, `unreachable`, `prohibit`, `throw`: goes nowhere.
    Unroutable,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination block.
    pub dst: Cidr,
    /// Routing table id.
    pub table: u32,
    /// Type.
    pub kind: RouteKind,
    /// Output interface index of every next hop (one for a plain route).
    pub oifs: Vec<u32>,
}

impl Route {
    /// A route of the main table.
    pub fn main(dst: Cidr, kind: RouteKind, oifs: Vec<u32>) -> Route {
        Route {
            dst,
            table: TABLE_MAIN,
            kind,
            oifs,
        }
    }
}

/// Where a destination's route leaves, for the checks that need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Out of a WAN interface: the Internet.
    Wan,
    /// The router's own address.
    Local,
    /// Out of the named non-WAN interface (LAN, guest, tunnel ...).
    NotWan(String),
    /// No usable route (none, blackhole, unreachable, prohibit).
    NoRoute,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Wan => f.write_str("routed to the WAN"),
            Verdict::Local => f.write_str("the router's own address"),
            Verdict::NotWan(i) => write!(f, "routed to {i}, not the WAN"),
            Verdict::NoRoute => f.write_str("no route"),
        }
    }
}

/// A snapshot of the routing state (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    main: Vec<Route>,
    local: Vec<Route>,
    own: Vec<IpAddr>,
    names: BTreeMap<u32, String>,
    wan: Vec<u32>,
}

impl Routes {
    /// Builds the snapshot from routes of any table (only main and local are
    /// kept), the interface addresses and the interface names.
    pub fn new(routes: Vec<Route>, own: Vec<IpAddr>, names: Vec<(u32, String)>) -> Routes {
        let (mut main, mut local) = (Vec::new(), Vec::new());
        for r in routes {
            match r.table {
                TABLE_MAIN => main.push(r),
                TABLE_LOCAL => local.push(r),
                _ => {}
            }
        }
        // Longest prefix first: the first match is the best.
        main.sort_by_key(|r| std::cmp::Reverse(r.dst.prefix));
        let mut wan: Vec<u32> = main
            .iter()
            .filter(|r| r.dst.prefix == 0 && r.kind == RouteKind::Unicast)
            .flat_map(|r| r.oifs.iter().copied())
            .collect();
        wan.sort_unstable();
        wan.dedup();
        let mut own: Vec<IpAddr> = own.into_iter().map(canonical).collect();
        own.sort();
        own.dedup();
        Routes {
            main,
            local,
            own,
            names: names.into_iter().collect(),
            wan,
        }
    }

    /// A router with nothing but IPv4 and IPv6 default routes out of one
    /// interface named `wan` and the addresses `own`: every other
    /// destination is [`Verdict::Wan`]. For tests, benchmarks and labs.
    pub fn all_wan(own: Vec<IpAddr>) -> Routes {
        let default =
            |s: &str| Route::main(s.parse().expect("valid block"), RouteKind::Unicast, vec![1]);
        Routes::new(
            vec![default("0.0.0.0/0"), default("::/0")],
            own,
            vec![(1, "wan".into())],
        )
    }

    /// The names of the WAN interfaces, sorted (an interface without a
    /// known name is left out).
    pub fn wan(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .wan
            .iter()
            .filter_map(|i| self.names.get(i).cloned())
            .collect();
        v.sort();
        v
    }

    /// The router's own addresses.
    pub fn own(&self) -> &[IpAddr] {
        &self.own
    }

    /// Where `ip`'s route leaves (see the module docs). IPv4-mapped IPv6
    /// addresses are judged as IPv4.
    pub fn verdict(&self, ip: IpAddr) -> Verdict {
        let ip = canonical(ip);
        if self.own.contains(&ip)
            || self
                .local
                .iter()
                .any(|r| r.kind == RouteKind::Local && covers(&r.dst, ip))
        {
            return Verdict::Local;
        }
        let Some(r) = self.main.iter().find(|r| covers(&r.dst, ip)) else {
            return Verdict::NoRoute;
        };
        match r.kind {
            RouteKind::Unroutable => Verdict::NoRoute,
            RouteKind::Local => Verdict::Local,
            RouteKind::Unicast => match r.oifs.iter().find(|i| !self.wan.contains(i)) {
                None if !r.oifs.is_empty() => Verdict::Wan,
                None => Verdict::NoRoute,
                Some(i) => Verdict::NotWan(
                    self.names
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("interface {i}")),
                ),
            },
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `ip` is in `c`, same family only.
fn covers(c: &Cidr, ip: IpAddr) -> bool {
    c.addr.is_ipv4() == ip.is_ipv4() && c.contains(&ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A home router: wan (2) with IPv4 and IPv6 defaults, br-lan (3) with a
    /// private IPv4 subnet, a *public* IPv4 subnet and a global IPv6 /64, a
    /// guest network (4), a blackhole.
    fn home() -> Routes {
        Routes::new(
            vec![
                Route::main(cidr("0.0.0.0/0"), RouteKind::Unicast, vec![2]),
                Route::main(cidr("::/0"), RouteKind::Unicast, vec![2]),
                Route::main(cidr("203.0.113.0/24"), RouteKind::Unicast, vec![2]),
                Route::main(cidr("192.168.1.0/24"), RouteKind::Unicast, vec![3]),
                Route::main(cidr("198.51.100.0/28"), RouteKind::Unicast, vec![3]),
                Route::main(cidr("2001:db8:1:1::/64"), RouteKind::Unicast, vec![3]),
                Route::main(cidr("192.168.2.0/24"), RouteKind::Unicast, vec![4]),
                Route::main(cidr("100.100.0.0/16"), RouteKind::Unroutable, vec![]),
                Route {
                    dst: cidr("203.0.113.7/32"),
                    table: TABLE_LOCAL,
                    kind: RouteKind::Local,
                    oifs: vec![2],
                },
                Route {
                    dst: cidr("10.99.0.0/16"),
                    table: 100,
                    kind: RouteKind::Unicast,
                    oifs: vec![3],
                },
            ],
            vec![ip("192.168.1.1"), ip("2001:db8:1:1::1")],
            vec![
                (1, "lo".into()),
                (2, "wan".into()),
                (3, "br-lan".into()),
                (4, "br-guest".into()),
            ],
        )
    }

    #[test]
    fn verdicts() {
        let r = home();
        let cases = [
            ("93.184.216.34", Verdict::Wan),
            ("2a00:1450::1", Verdict::Wan),
            ("203.0.113.9", Verdict::Wan),
            ("203.0.113.7", Verdict::Local),
            ("192.168.1.1", Verdict::Local),
            ("::ffff:192.168.1.1", Verdict::Local),
            ("2001:db8:1:1::1", Verdict::Local),
            ("192.168.1.20", Verdict::NotWan("br-lan".into())),
            ("198.51.100.3", Verdict::NotWan("br-lan".into())),
            ("198.51.100.17", Verdict::Wan),
            ("2001:db8:1:1::22", Verdict::NotWan("br-lan".into())),
            ("192.168.2.5", Verdict::NotWan("br-guest".into())),
            ("100.100.1.1", Verdict::NoRoute),
            // Another table's route does not count; the default does.
            ("10.99.1.1", Verdict::Wan),
        ];
        for (a, want) in cases {
            assert_eq!(r.verdict(ip(a)), want, "{a}");
        }
        assert_eq!(r.wan(), ["wan"]);
        assert_eq!(r.own().len(), 2);
    }

    #[test]
    fn no_default_route_means_no_wan() {
        let r = Routes::new(
            vec![Route::main(
                cidr("192.168.1.0/24"),
                RouteKind::Unicast,
                vec![3],
            )],
            vec![],
            vec![(3, "br-lan".into())],
        );
        assert!(r.wan().is_empty());
        assert_eq!(r.verdict(ip("93.184.216.34")), Verdict::NoRoute);
        assert_eq!(
            r.verdict(ip("192.168.1.9")),
            Verdict::NotWan("br-lan".into())
        );
        assert_eq!(Routes::default().verdict(ip("1.1.1.1")), Verdict::NoRoute);
    }

    #[test]
    fn multipath_must_leave_by_the_wan_on_every_hop() {
        let r = Routes::new(
            vec![
                Route::main(cidr("0.0.0.0/0"), RouteKind::Unicast, vec![2, 5]),
                Route::main(cidr("198.18.0.0/15"), RouteKind::Unicast, vec![2, 3]),
            ],
            vec![],
            vec![(2, "wan".into()), (3, "br-lan".into()), (5, "wanb".into())],
        );
        assert_eq!(r.wan(), ["wan", "wanb"]);
        assert_eq!(r.verdict(ip("8.8.8.8")), Verdict::Wan);
        assert_eq!(
            r.verdict(ip("198.18.0.1")),
            Verdict::NotWan("br-lan".into())
        );
    }
}
