//! Destination policy: which addresses a waypoint may forward detours to.
//!
//! A router in the field must never become a doorway into its owner's LAN or
//! into itself. A destination is refused, in this order, when
//! 1. its port is 0, or one the owner denies (`list deny_port`, by default
//!    25: no detour carries mail);
//! 2. its route does not leave by the WAN ([`crate::routes`]): the router's
//!    own addresses (also ones added after the start), the LAN, a guest
//!    network or a tunnel behind the router, whatever their addresses are
//!    (a public IPv4 LAN subnet, the LAN's global IPv6 prefix), or no route;
//!    nothing overrides this;
//! 3. it is in a special-purpose block ([`crate::special`]), unless the owner
//!    allows it with `list allow_destination 'CIDR'` (tests and labs, whose
//!    "Internet" is private space).
//!
//! The kernel checks the same thing again on every forwarded packet (dcol's
//! tables drop marked flows that leave by a non-WAN interface or aim at the
//! router itself), so a mistake in one is caught by the other. Pure code:
//! the caller passes the routing snapshot in.

use std::net::{IpAddr, SocketAddr};

use crate::routes::{Routes, Verdict};
use crate::special::{self, Class};
use crate::types::{Cidr, PortRange};

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forbidden {
    /// Port 0 is never a real service.
    PortZero,
    /// A port the owner denies (`list deny_port`).
    DeniedPort,
    /// 0.0.0.0 or `::`.
    Unspecified,
    /// 127.0.0.0/8 or `::1`.
    Loopback,
    /// RFC 1918, RFC 6598 (CGNAT) or RFC 4193 (ULA) space.
    Private,
    /// 169.254.0.0/16 or fe80::/10.
    LinkLocal,
    /// Multicast or broadcast.
    Multicast,
    /// Reserved, documentation or translation ranges of the special-purpose
    /// registries (0/8, 240/4, 192.0.2/24, 2001:db8::/32, Teredo, ...).
    Reserved,
    /// One of the waypoint's own addresses.
    OwnAddress,
    /// The route leaves by this interface, which is not the WAN.
    NotViaWan(String),
    /// No usable route.
    NoRoute,
}

impl std::fmt::Display for Forbidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Forbidden::PortZero => "port 0",
            Forbidden::DeniedPort => "a port the owner denies",
            Forbidden::Unspecified => "unspecified address",
            Forbidden::Loopback => "loopback address",
            Forbidden::Private => "private address",
            Forbidden::LinkLocal => "link-local address",
            Forbidden::Multicast => "multicast or broadcast address",
            Forbidden::Reserved => "reserved address",
            Forbidden::OwnAddress => "the waypoint's own address",
            Forbidden::NotViaWan(i) => return write!(f, "routed to {i}, not the WAN"),
            Forbidden::NoRoute => "no route to it",
        })
    }
}

/// The owner's rules for destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Special-purpose blocks allowed anyway (`list allow_destination`).
    pub allow: Vec<Cidr>,
    /// Ports never detoured to (`list deny_port`).
    pub deny_ports: Vec<PortRange>,
}

/// Checks a destination (see the module docs for the order).
pub fn check_destination(
    dest: SocketAddr,
    rules: &Rules,
    routes: &Routes,
) -> Result<(), Forbidden> {
    if dest.port() == 0 {
        return Err(Forbidden::PortZero);
    }
    if rules.deny_ports.iter().any(|r| r.contains(dest.port())) {
        return Err(Forbidden::DeniedPort);
    }
    let ip = canonical(dest.ip());
    match routes.verdict(ip) {
        Verdict::Wan => {}
        Verdict::Local => return Err(Forbidden::OwnAddress),
        Verdict::NotWan(i) => return Err(Forbidden::NotViaWan(i)),
        Verdict::NoRoute => return Err(Forbidden::NoRoute),
    }
    if rules.allow.iter().any(|c| c.contains(&ip)) {
        return Ok(());
    }
    classify(ip)
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) to IPv4 so that they get
/// the IPv4 rules.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The verdict of the special-purpose table ([`crate::special`]) on `ip`.
fn classify(ip: IpAddr) -> Result<(), Forbidden> {
    match special::classify(ip).map(|e| e.class) {
        None => Ok(()),
        Some(Class::Unspecified) => Err(Forbidden::Unspecified),
        Some(Class::Loopback) => Err(Forbidden::Loopback),
        Some(Class::Private) => Err(Forbidden::Private),
        Some(Class::LinkLocal) => Err(Forbidden::LinkLocal),
        Some(Class::Multicast) => Err(Forbidden::Multicast),
        Some(Class::Reserved) => Err(Forbidden::Reserved),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{Route, RouteKind};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    /// A waypoint router: WAN (2, defaults and its own public address),
    /// a LAN (3) with a private IPv4 subnet, a public IPv4 subnet and a
    /// global IPv6 /64.
    fn routes() -> Routes {
        Routes::new(
            vec![
                Route::main(cidr("0.0.0.0/0"), RouteKind::Unicast, vec![2]),
                Route::main(cidr("::/0"), RouteKind::Unicast, vec![2]),
                Route::main(cidr("192.168.1.0/24"), RouteKind::Unicast, vec![3]),
                Route::main(cidr("93.184.0.0/24"), RouteKind::Unicast, vec![3]),
                Route::main(cidr("2a02:1:2:3::/64"), RouteKind::Unicast, vec![3]),
                Route::main(cidr("11.0.0.0/8"), RouteKind::Unroutable, vec![]),
            ],
            vec![
                "93.184.216.34".parse().unwrap(),
                "192.168.1.1".parse().unwrap(),
            ],
            vec![(2, "wan".into()), (3, "br-lan".into())],
        )
    }

    fn rules(allow: &[&str], deny: &[&str]) -> Rules {
        Rules {
            allow: allow.iter().map(|c| cidr(c)).collect(),
            deny_ports: deny.iter().map(|p| p.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn refuses_special_ranges() {
        let cases = [
            ("10.1.2.3:80", Forbidden::Private),
            ("172.16.0.1:80", Forbidden::Private),
            ("100.64.0.1:80", Forbidden::Private),
            ("127.0.0.1:80", Forbidden::Loopback),
            ("0.0.0.0:80", Forbidden::Unspecified),
            ("169.254.1.1:80", Forbidden::LinkLocal),
            ("224.0.0.1:80", Forbidden::Multicast),
            ("255.255.255.255:80", Forbidden::Multicast),
            ("192.0.2.1:80", Forbidden::Reserved),
            ("[::1]:80", Forbidden::Loopback),
            ("[::]:80", Forbidden::Unspecified),
            ("[fd00::1]:80", Forbidden::Private),
            ("[fe80::1]:80", Forbidden::LinkLocal),
            ("[ff02::1]:80", Forbidden::Multicast),
            ("[2001:db8::1]:80", Forbidden::Reserved),
            ("[::ffff:172.16.0.1]:80", Forbidden::Private),
            ("[64:ff9b::172.16.0.1]:80", Forbidden::Private),
            ("[2002:ac10:1::1]:80", Forbidden::Private),
            ("[2001::1]:80", Forbidden::Reserved),
            ("192.88.99.1:80", Forbidden::Reserved),
            ("192.0.0.170:80", Forbidden::Reserved),
            ("8.8.8.8:0", Forbidden::PortZero),
        ];
        for (d, why) in cases {
            assert_eq!(
                check_destination(sa(d), &rules(&[], &[]), &routes()),
                Err(why),
                "{d}"
            );
        }
    }

    #[test]
    fn refuses_what_is_not_routed_to_the_wan() {
        let r = routes();
        let all = rules(&["0.0.0.0/0", "::/0"], &[]);
        let cases = [
            // The LAN, whatever its addresses, even with everything allowed.
            ("192.168.1.20:22", Forbidden::NotViaWan("br-lan".into())),
            ("93.184.0.9:22", Forbidden::NotViaWan("br-lan".into())),
            ("[2a02:1:2:3::99]:22", Forbidden::NotViaWan("br-lan".into())),
            // The router itself.
            ("93.184.216.34:22", Forbidden::OwnAddress),
            ("192.168.1.1:80", Forbidden::OwnAddress),
            ("[::ffff:192.168.1.1]:80", Forbidden::OwnAddress),
            ("11.1.1.1:80", Forbidden::NoRoute),
        ];
        for (d, why) in cases {
            assert_eq!(check_destination(sa(d), &all, &r), Err(why), "{d}");
        }
        // No default route: nothing is the Internet.
        assert_eq!(
            check_destination(sa("8.8.8.8:443"), &all, &Routes::default()),
            Err(Forbidden::NoRoute)
        );
    }

    #[test]
    fn deny_ports() {
        let r = rules(&[], &["25", "6660-6669"]);
        for (d, ok) in [
            ("8.8.8.8:25", false),
            ("8.8.8.8:6665", false),
            ("8.8.8.8:6670", true),
            ("8.8.8.8:443", true),
        ] {
            let want = if ok {
                Ok(())
            } else {
                Err(Forbidden::DeniedPort)
            };
            assert_eq!(check_destination(sa(d), &r, &routes()), want, "{d}");
        }
    }

    #[test]
    fn accepts_public_and_allowed() {
        let r = routes();
        assert_eq!(
            check_destination(sa("8.8.8.8:443"), &rules(&[], &[]), &r),
            Ok(())
        );
        assert_eq!(
            check_destination(sa("[2a00:1450::1]:443"), &rules(&[], &[]), &r),
            Ok(())
        );
        let allow = rules(&["10.0.0.0/8"], &[]);
        assert_eq!(check_destination(sa("10.0.3.2:5201"), &allow, &r), Ok(()));
        assert_eq!(
            check_destination(sa("172.16.0.1:80"), &allow, &r),
            Err(Forbidden::Private)
        );
    }
}
