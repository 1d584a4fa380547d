//! The special-purpose address table: one list, built from the IANA IPv4 and
//! IPv6 Special-Purpose Address Registries (RFC 6890) and the multicast
//! registries, of every block a detour must never be aimed at.
//!
//! Used everywhere DCol decides whether an address is "the Internet": the
//! waypoint's NAT destination policy ([`crate::waypoint::policy`]), the VPN
//! tunnels' kernel firewall ([`crate::sys::vpnfw`], through [`deny_blocks`]),
//! and the LAN proxy's choice of what to intercept. Pure code, no I/O.
//!
//! Guarantees:
//! - [`classify`] returns `None` only for an address that is globally routable
//!   unicast by the registries (or a block this table deliberately leaves
//!   open, see below), and names the registry entry otherwise.
//! - Addresses that embed an IPv4 address get the embedded address's verdict
//!   *and* their own: IPv4-mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`
//!   (RFC 6052) and 6to4 `2002::/16` (RFC 3056). `64:ff9b::a00:1` is as
//!   private as `10.0.0.1`.
//! - [`deny_blocks`] lists the same decisions as prefixes (the embedded IPv4
//!   blocks expanded into their NAT64 and 6to4 forms), so the kernel's copy of
//!   the policy and this one cannot drift.
//!
//! Left open on purpose: the globally reachable anycast entries inside
//! otherwise special blocks of the IPv4 registry (AS112 192.31.196.0/24,
//! 192.175.48.0/24, AMT 192.52.193.0/24) are ordinary Internet services. In
//! IPv6, everything outside 2000::/3 is refused.
//!
//! ```
//! use dcol::special::{classify, Class};
//! assert_eq!(classify("10.1.2.3".parse().unwrap()).map(|e| e.class), Some(Class::Private));
//! assert_eq!(classify("64:ff9b::c0a8:101".parse().unwrap()).map(|e| e.class), Some(Class::Private));
//! assert!(classify("93.184.216.34".parse().unwrap()).is_none());
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::types::{mask4, mask6, Cidr};

/// What kind of special block an address is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `0.0.0.0/8`, `::/128`: "this network", the unspecified address.
    Unspecified,
    /// `127.0.0.0/8`, `::1/128`.
    Loopback,
    /// RFC 1918, shared address space (RFC 6598, CGNAT), unique local (RFC 4193).
    Private,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// Multicast and the limited broadcast address.
    Multicast,
    /// Documentation, benchmarking, protocol assignments, translation prefixes
    /// for local use, the deprecated 6to4 relay anycast, and everything the
    /// registries reserve.
    Reserved,
}

/// One registry entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The block.
    pub block: Block,
    /// The kind of block.
    pub class: Class,
    /// The registry's name for it and its RFC, for logs and refusals.
    pub name: &'static str,
}

/// An address block of the table (a `const`-friendly [`Cidr`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// IPv4 network (host bits clear) and prefix length.
    V4(u32, u8),
    /// IPv6 network (host bits clear) and prefix length.
    V6(u128, u8),
}

impl Block {
    /// As a [`Cidr`].
    pub fn cidr(&self) -> Cidr {
        match *self {
            Block::V4(a, p) => Cidr {
                addr: IpAddr::V4(Ipv4Addr::from(a)),
                prefix: p,
            },
            Block::V6(a, p) => Cidr {
                addr: IpAddr::V6(Ipv6Addr::from(a)),
                prefix: p,
            },
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Block::V4(n, p), IpAddr::V4(a)) => mask4(u32::from(a), p) == n,
            (Block::V6(n, p), IpAddr::V6(a)) => mask6(u128::from(a), p) == n,
            _ => false,
        }
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, p: u8, class: Class, name: &'static str) -> Entry {
    Entry {
        block: Block::V4(u32::from_be_bytes([a, b, c, d]), p),
        class,
        name,
    }
}

const fn v6(a: u128, p: u8, class: Class, name: &'static str) -> Entry {
    Entry {
        block: Block::V6(a, p),
        class,
        name,
    }
}

use Class::*;

/// The IPv4 Special-Purpose Address Registry (RFC 6890 and its updates), the
/// multicast block and the limited broadcast address; entries that are
/// globally reachable services are left out (see the module docs).
pub const IPV4: &[Entry] = &[
    v4(0, 0, 0, 0, 8, Unspecified, "\"this network\" (RFC 791)"),
    v4(10, 0, 0, 0, 8, Private, "private-use (RFC 1918)"),
    v4(
        100,
        64,
        0,
        0,
        10,
        Private,
        "shared address space (RFC 6598)",
    ),
    v4(127, 0, 0, 0, 8, Loopback, "loopback (RFC 1122)"),
    v4(169, 254, 0, 0, 16, LinkLocal, "link local (RFC 3927)"),
    v4(172, 16, 0, 0, 12, Private, "private-use (RFC 1918)"),
    v4(
        192,
        0,
        0,
        0,
        24,
        Reserved,
        "IETF protocol assignments (RFC 6890)",
    ),
    v4(
        192,
        0,
        2,
        0,
        24,
        Reserved,
        "documentation TEST-NET-1 (RFC 5737)",
    ),
    v4(
        192,
        88,
        99,
        0,
        24,
        Reserved,
        "deprecated 6to4 relay anycast (RFC 7526)",
    ),
    v4(192, 168, 0, 0, 16, Private, "private-use (RFC 1918)"),
    v4(198, 18, 0, 0, 15, Reserved, "benchmarking (RFC 2544)"),
    v4(
        198,
        51,
        100,
        0,
        24,
        Reserved,
        "documentation TEST-NET-2 (RFC 5737)",
    ),
    v4(
        203,
        0,
        113,
        0,
        24,
        Reserved,
        "documentation TEST-NET-3 (RFC 5737)",
    ),
    v4(224, 0, 0, 0, 4, Multicast, "multicast (RFC 5771)"),
    v4(
        255,
        255,
        255,
        255,
        32,
        Multicast,
        "limited broadcast (RFC 919)",
    ),
    v4(240, 0, 0, 0, 4, Reserved, "reserved (RFC 1112)"),
];

/// NAT64 well-known prefix (RFC 6052): the low 32 bits are an IPv4 address.
pub const NAT64: Block = Block::V6(0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96);
/// 6to4 (RFC 3056): bits 16..48 are an IPv4 address.
pub const SIX_TO_FOUR: Block = Block::V6(0x2002_0000_0000_0000_0000_0000_0000_0000, 16);
/// IPv4-mapped addresses (RFC 4291): the low 32 bits are an IPv4 address.
pub const MAPPED: Block = Block::V6(0x0000_0000_0000_0000_0000_ffff_0000_0000, 96);

/// The IPv6 Special-Purpose Address Registry (RFC 6890 and its updates) and
/// the multicast block; the embedding prefixes ([`NAT64`], [`SIX_TO_FOUR`],
/// [`MAPPED`]) are judged by the address they embed (see [`classify`]).
pub const IPV6: &[Entry] = &[
    v6(0, 128, Unspecified, "unspecified address (RFC 4291)"),
    v6(1, 128, Loopback, "loopback address (RFC 4291)"),
    v6(
        0x0064_ff9b_0001_0000_0000_0000_0000_0000,
        48,
        Reserved,
        "IPv4-IPv6 translation for local use (RFC 8215)",
    ),
    v6(
        0x0100_0000_0000_0000_0000_0000_0000_0000,
        64,
        Reserved,
        "discard-only (RFC 6666)",
    ),
    v6(
        0x0100_0000_0000_0001_0000_0000_0000_0000,
        64,
        Reserved,
        "dummy IPv6 prefix (RFC 9780)",
    ),
    v6(
        0x2001_0000_0000_0000_0000_0000_0000_0000,
        32,
        Reserved,
        "Teredo (RFC 4380)",
    ),
    v6(
        0x2001_0000_0000_0000_0000_0000_0000_0000,
        23,
        Reserved,
        "IETF protocol assignments (RFC 2928)",
    ),
    v6(
        0x2001_0db8_0000_0000_0000_0000_0000_0000,
        32,
        Reserved,
        "documentation (RFC 3849)",
    ),
    v6(
        0x3fff_0000_0000_0000_0000_0000_0000_0000,
        20,
        Reserved,
        "documentation (RFC 9637)",
    ),
    v6(
        0x5f00_0000_0000_0000_0000_0000_0000_0000,
        16,
        Reserved,
        "segment routing SIDs (RFC 9602)",
    ),
    v6(
        0xfc00_0000_0000_0000_0000_0000_0000_0000,
        7,
        Private,
        "unique local (RFC 4193)",
    ),
    v6(
        0xfe80_0000_0000_0000_0000_0000_0000_0000,
        10,
        LinkLocal,
        "link-local unicast (RFC 4291)",
    ),
    v6(
        0xff00_0000_0000_0000_0000_0000_0000_0000,
        8,
        Multicast,
        "multicast (RFC 4291)",
    ),
];

/// Everything outside global unicast 2000::/3 (RFC 4291 §2.4) that no entry
/// above names.
const NOT_GLOBAL6: Entry = v6(0, 0, Reserved, "outside global unicast 2000::/3 (RFC 4291)");

/// The registry entry `ip` falls in, or `None` for an ordinary global
/// unicast address. Addresses that embed an IPv4 address (IPv4-mapped,
/// NAT64, 6to4) get the embedded address's entry when it has one.
pub fn classify(ip: IpAddr) -> Option<&'static Entry> {
    match ip {
        IpAddr::V4(a) => IPV4.iter().find(|e| e.block.contains(IpAddr::V4(a))),
        IpAddr::V6(a) => classify6(a),
    }
}

fn classify6(a: Ipv6Addr) -> Option<&'static Entry> {
    let ip = IpAddr::V6(a);
    let bits = u128::from(a);
    if MAPPED.contains(ip) || NAT64.contains(ip) {
        // Low 32 bits: the IPv4 address; ordinary IPv4 through NAT64 is fine.
        return classify(IpAddr::V4(Ipv4Addr::from(bits as u32)));
    }
    if SIX_TO_FOUR.contains(ip) {
        return classify(IpAddr::V4(Ipv4Addr::from((bits >> 80) as u32)));
    }
    if let Some(e) = IPV6.iter().find(|e| e.block.contains(ip)) {
        return Some(e);
    }
    if bits >> 125 != 0b001 {
        return Some(&NOT_GLOBAL6);
    }
    None
}

/// Every refused block of one family as prefixes, for a kernel deny set:
/// the registry entries plus, for IPv6, the refused IPv4 blocks in their
/// NAT64 and 6to4 forms, all of IPv4-mapped space, and what lies outside
/// 2000::/3 (the seven other /3 blocks, with the NAT64 prefix cut out of
/// `::/3`: public IPv4 through NAT64 stays reachable). No two blocks overlap
/// (a kernel interval set refuses overlapping elements).
pub fn deny_blocks(v6: bool) -> Vec<Cidr> {
    if !v6 {
        return without_overlaps(IPV4.iter().map(|e| e.block.cidr()).collect());
    }
    let mut out: Vec<Cidr> = IPV6.iter().map(|e| e.block.cidr()).collect();
    out.push(MAPPED.cidr());
    for e in IPV4 {
        let Block::V4(n, p) = e.block else { continue };
        out.push(Block::V6(0x0064_ff9b_u128 << 96 | u128::from(n), 96 + p).cidr());
        out.push(Block::V6(0x2002_u128 << 112 | u128::from(n) << 80, 16 + p).cidr());
    }
    for top in 2u128..8 {
        out.push(Block::V6(top << 125, 3).cidr());
    }
    out.extend(split_around(0, 3, NAT64));
    without_overlaps(out)
}

/// The prefixes that cover `net/len` except `hole` (which it contains):
/// halve the block, keep the half without the hole, go on in the other.
fn split_around(net: u128, len: u8, hole: Block) -> Vec<Cidr> {
    let Block::V6(h, hl) = hole else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let (mut net, mut len) = (net, len);
    while len < hl {
        len += 1;
        let bit = 1u128 << (128 - u32::from(len));
        let (lo, hi) = (net, net | bit);
        if mask6(h, len) == lo {
            out.push(Block::V6(hi, len).cidr());
            net = lo;
        } else {
            out.push(Block::V6(lo, len).cidr());
            net = hi;
        }
    }
    out
}

/// Drops every block that a wider one in `out` already holds.
fn without_overlaps(mut out: Vec<Cidr>) -> Vec<Cidr> {
    let mut kept: Vec<Cidr> = Vec::new();
    out.sort_by_key(|c| c.prefix);
    for c in out {
        if !kept.iter().any(|k| covers(k, c.addr)) {
            kept.push(c);
        }
    }
    kept
}

/// `ip` is in `c` (no IPv4-mapped shortcut, unlike [`Cidr::contains`]).
fn covers(c: &Cidr, ip: IpAddr) -> bool {
    match (c.addr, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => mask4(u32::from(a), c.prefix) == u32::from(n),
        (IpAddr::V6(n), IpAddr::V6(a)) => mask6(u128::from(a), c.prefix) == u128::from(n),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Option<Class> {
        classify(s.parse().unwrap()).map(|e| e.class)
    }

    #[test]
    fn ipv4_registry() {
        let cases = [
            ("0.1.2.3", Some(Unspecified)),
            ("10.9.8.7", Some(Private)),
            ("100.64.0.1", Some(Private)),
            ("100.127.255.254", Some(Private)),
            ("100.128.0.1", None),
            ("127.0.0.53", Some(Loopback)),
            ("169.254.1.1", Some(LinkLocal)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.1", None),
            ("192.0.0.9", Some(Reserved)),
            ("192.0.2.1", Some(Reserved)),
            ("192.88.99.1", Some(Reserved)),
            ("192.168.1.1", Some(Private)),
            ("198.19.0.1", Some(Reserved)),
            ("198.51.100.7", Some(Reserved)),
            ("203.0.113.5", Some(Reserved)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("240.0.0.1", Some(Reserved)),
            ("255.255.255.255", Some(Multicast)),
            ("93.184.216.34", None),
            ("192.31.196.1", None),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv6_registry_and_embedded_ipv4() {
        let cases = [
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("::ffff:10.0.0.1", Some(Private)),
            ("::ffff:93.184.216.34", None),
            ("64:ff9b::10.0.0.1", Some(Private)),
            ("64:ff9b::127.0.0.1", Some(Loopback)),
            ("64:ff9b::93.184.216.34", None),
            ("64:ff9b:1::1", Some(Reserved)),
            ("100::1", Some(Reserved)),
            ("2001::1", Some(Reserved)),
            ("2001:1ff::1", Some(Reserved)),
            ("2001:200::1", None),
            ("2001:db8::1", Some(Reserved)),
            ("2002:c0a8:0101::1", Some(Private)),
            ("2002:0a00:0001::1", Some(Private)),
            ("2002:5db8:d822::1", None),
            ("3fff::1", Some(Reserved)),
            ("5f00::1", Some(Reserved)),
            ("fd12:3456::1", Some(Private)),
            ("fe80::1", Some(LinkLocal)),
            ("fec0::1", Some(Reserved)),
            ("ff02::1", Some(Multicast)),
            ("4000::1", Some(Reserved)),
            ("2a00:1450::1", None),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn deny_blocks_agree_with_classify() {
        let samples = [
            "10.0.0.1",
            "100.100.1.1",
            "127.1.1.1",
            "192.0.0.170",
            "192.88.99.2",
            "198.18.5.5",
            "255.255.255.255",
            "93.184.216.34",
            "1.1.1.1",
            "::1",
            "::",
            "::ffff:8.8.8.8",
            "64:ff9b::10.1.1.1",
            "64:ff9b::8.8.8.8",
            "64:ff9b:1::8.8.8.8",
            "2001::5",
            "2001:db8::5",
            "2002:0a01:0101::5",
            "2002:0808:0808::5",
            "3fff:1::1",
            "fd00::5",
            "fe80::5",
            "ff05::2",
            "8000::1",
            "2a00:1450::1",
            "2600::1",
        ];
        for s in samples {
            let ip: IpAddr = s.parse().unwrap();
            // IPv4-mapped space is refused whole in the kernel (the kernel
            // never routes it); classify judges the embedded address.
            let in_kernel = deny_blocks(ip.is_ipv6())
                .iter()
                .any(|c| c.addr.is_ipv6() == ip.is_ipv6() && covers(c, ip));
            let refused = classify(ip).is_some() || MAPPED.contains(ip);
            assert_eq!(in_kernel, refused, "{s}");
        }
    }

    #[test]
    fn deny_blocks_do_not_overlap() {
        for v6 in [false, true] {
            let b = deny_blocks(v6);
            for (i, x) in b.iter().enumerate() {
                for y in &b[i + 1..] {
                    assert!(
                        !(covers(x, y.addr) || covers(y, x.addr)),
                        "{x} and {y} overlap"
                    );
                }
            }
        }
    }
}
