//! Destination policy: which addresses a waypoint may forward detours to.
//!
//! A router in the field must never become a doorway into its owner's LAN, so
//! every special-purpose range (the table in [`crate::special`]) is refused
//! unless the owner explicitly allows it with `list allow_destination 'CIDR'`. Pure code: the caller passes the
//! waypoint's own addresses in.

use std::net::{IpAddr, SocketAddr};

use crate::config::Cidr;
use crate::special::{self, Class};

/// Why a destination is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    /// Port 0 is never a real service.
    PortZero,
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
    /// Reserved or documentation ranges (0/8, 240/4, 192.0.2/24, 2001:db8::/32, ...).
    Reserved,
    /// One of the waypoint's own addresses.
    OwnAddress,
}

impl std::fmt::Display for Forbidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Forbidden::PortZero => "port 0",
            Forbidden::Unspecified => "unspecified address",
            Forbidden::Loopback => "loopback address",
            Forbidden::Private => "private address",
            Forbidden::LinkLocal => "link-local address",
            Forbidden::Multicast => "multicast or broadcast address",
            Forbidden::Reserved => "reserved address",
            Forbidden::OwnAddress => "the waypoint's own address",
        })
    }
}

/// Checks a destination against the built-in rules, the owner's allow list and
/// the waypoint's own addresses. The allow list overrides every rule but port 0
/// and the waypoint's own addresses, which are never a destination.
pub fn check_destination(
    dest: SocketAddr,
    allow: &[Cidr],
    own: &[IpAddr],
) -> Result<(), Forbidden> {
    if dest.port() == 0 {
        return Err(Forbidden::PortZero);
    }
    let ip = canonical(dest.ip());
    if own.iter().any(|o| canonical(*o) == ip) {
        return Err(Forbidden::OwnAddress);
    }
    if allow.iter().any(|c| c.contains(&ip)) {
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

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_special_ranges() {
        let cases = [
            ("10.1.2.3:80", Forbidden::Private),
            ("172.16.0.1:80", Forbidden::Private),
            ("192.168.1.1:80", Forbidden::Private),
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
            ("[::ffff:192.168.0.1]:80", Forbidden::Private),
            ("[64:ff9b::192.168.0.1]:80", Forbidden::Private),
            ("[2002:c0a8:1::1]:80", Forbidden::Private),
            ("[2001::1]:80", Forbidden::Reserved),
            ("192.88.99.1:80", Forbidden::Reserved),
            ("192.0.0.170:80", Forbidden::Reserved),
            ("93.184.216.34:0", Forbidden::PortZero),
        ];
        for (d, why) in cases {
            assert_eq!(check_destination(sa(d), &[], &[]), Err(why), "{d}");
        }
    }

    #[test]
    fn accepts_public_and_allowed() {
        assert_eq!(check_destination(sa("93.184.216.34:443"), &[], &[]), Ok(()));
        assert_eq!(
            check_destination(sa("[2a00:1450::1]:443"), &[], &[]),
            Ok(())
        );
        let allow: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(check_destination(sa("10.0.3.2:5201"), &allow, &[]), Ok(()));
        assert_eq!(
            check_destination(sa("192.168.0.1:80"), &allow, &[]),
            Err(Forbidden::Private)
        );
    }

    #[test]
    fn refuses_own_address_even_if_public() {
        let own = [
            "93.184.216.34".parse().unwrap(),
            "10.0.6.2".parse().unwrap(),
        ];
        assert_eq!(
            check_destination(sa("93.184.216.34:22"), &[], &own),
            Err(Forbidden::OwnAddress)
        );
        let allow: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            check_destination(sa("10.0.6.2:22"), &allow, &own),
            Err(Forbidden::OwnAddress)
        );
    }
}
