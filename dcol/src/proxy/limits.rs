//! How much of the router the LAN proxy may take, without I/O: the global
//! connection cap derived from the open-file limit ([`Capacity`]), the
//! pause that keeps the proxy below it ([`Pause`]), the per-source
//! accounting the relay keeps as a second line behind the kernel's
//! ([`source_key`]), and the destinations it never relays to
//! ([`destination_refused`]).
//!
//! The first line of every limit is in the kernel (see
//! [`crate::sys::lan`]): flows over a per-device or per-prefix cap, or
//! arriving while interception is paused, are not redirected and go direct,
//! so a LAN host that exhausts its share or the proxy's never makes another
//! host's connection fail. Only what slips past the kernel (races, a full
//! kernel set) meets the relay's own refusals.
//!
//! ```
//! use dcol::proxy::limits::{Capacity, Pause, PauseChange};
//! let cap = Capacity::from_nofile(16_384, 0);
//! assert!(cap.max_conns >= 2000 && cap.max_conns < 16_384 / 6);
//! let mut p = Pause::default();
//! assert_eq!(p.update(cap.max_conns.into(), false, &cap), Some(PauseChange::Paused));
//! assert_eq!(p.update(cap.resume_at.into(), false, &cap), Some(PauseChange::Resumed));
//! ```

use std::net::{IpAddr, Ipv6Addr};

use crate::special;
use crate::types::{mask6, Cidr};

/// Descriptors one proxied connection may hold: two sockets and a pipe
/// (two ends) per direction.
pub const FDS_PER_CONN: u64 = 6;
/// Descriptors kept for everything else the daemon opens (netlink and UDP
/// sockets, the control socket, files, the VPN tunnels' devices).
pub const FDS_RESERVED: u64 = 128;
/// The largest listen backlog (per listener) the relay asks for.
pub const MAX_BACKLOG: u32 = 1024;

/// The proxy's size, from the open-file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Interception pauses when this many connections are open.
    pub max_conns: u32,
    /// ... and resumes when no more than this many are.
    pub resume_at: u32,
    /// Listen backlog of each of the (at most two) listeners: connections
    /// redirected before the pause took effect must still find descriptors.
    pub backlog: u32,
    /// Connections the descriptors allow at most.
    pub fit: u32,
}

impl Capacity {
    /// For a process allowed `nofile` descriptors; `configured` (the
    /// owner's `proxy_max_conns`, 0 for none) can only lower the cap.
    ///
    /// A quarter of what the descriptors fit is kept for the accept queues
    /// (the connections the kernel redirected before the pause), so the cap
    /// is at most 3/4 of `(nofile - FDS_RESERVED) / FDS_PER_CONN`.
    pub fn from_nofile(nofile: u64, configured: u32) -> Capacity {
        let fit = (nofile.saturating_sub(FDS_RESERVED) / FDS_PER_CONN).min(u64::from(u32::MAX));
        let fit = fit as u32;
        let auto = fit / 4 * 3;
        let max_conns = if configured == 0 {
            auto
        } else {
            configured.min(auto)
        };
        // Both listeners' queues together fill at most the kept quarter.
        let backlog = ((fit - auto) / 2).clamp(1, MAX_BACKLOG);
        Capacity {
            max_conns,
            resume_at: max_conns / 10 * 9,
            backlog,
            fit,
        }
    }
}

/// A change of the pause state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseChange {
    /// Interception stopped: new LAN flows go direct.
    Paused,
    /// Interception on again.
    Resumed,
}

/// Whether interception is paused because the proxy is (nearly) full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pause {
    paused: bool,
    episodes: u64,
}

impl Pause {
    /// Pauses at `cap.max_conns` open connections, or at once when the
    /// process ran out of descriptors (`fd_short`); resumes at
    /// `cap.resume_at` (and descriptors available again).
    pub fn update(&mut self, active: u64, fd_short: bool, cap: &Capacity) -> Option<PauseChange> {
        if !self.paused && (fd_short || active >= u64::from(cap.max_conns)) {
            self.paused = true;
            self.episodes = self.episodes.wrapping_add(1);
            return Some(PauseChange::Paused);
        }
        if self.paused
            && !fd_short
            && active <= u64::from(cap.resume_at)
            && active < u64::from(cap.max_conns)
        {
            self.paused = false;
            return Some(PauseChange::Resumed);
        }
        None
    }

    /// Paused now.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Pauses since start.
    pub fn episodes(&self) -> u64 {
        self.episodes
    }
}

/// The source a relayed connection counts against: the IPv4 address, or
/// the IPv6 /64 (every address of one /64 is one source; an IPv4-mapped
/// address counts as its IPv4 address).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(mask6(u128::from(v6), 64))),
        },
        v4 => v4,
    }
}

/// Why the proxy must not relay to `dst`: a special-purpose address
/// ([`special::classify`]) that no block of `allow` contains. `None` for
/// an address it may relay to.
pub fn destination_refused(dst: IpAddr, allow: &[Cidr]) -> Option<&'static str> {
    let e = special::classify(dst)?;
    if allow.iter().any(|c| c.contains(&dst)) {
        return None;
    }
    Some(e.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_from_the_open_file_limit() {
        // procd's limit for dcol.
        let c = Capacity::from_nofile(16_384, 0);
        assert_eq!(c.fit, (16_384 - 128) / 6);
        assert_eq!(c.max_conns, 2709 / 4 * 3);
        assert_eq!(c.resume_at, c.max_conns / 10 * 9);
        // The cap and both full queues still fit the descriptors.
        assert!(u64::from(c.max_conns + 2 * c.backlog) * FDS_PER_CONN + FDS_RESERVED <= 16_384);
        // The owner may only lower it.
        assert_eq!(Capacity::from_nofile(16_384, 500).max_conns, 500);
        assert_eq!(
            Capacity::from_nofile(16_384, 1_000_000).max_conns,
            c.max_conns
        );
        // A low limit gives a small proxy, no overflow.
        let small = Capacity::from_nofile(1024, 0);
        assert_eq!(small.fit, 149);
        assert_eq!(small.max_conns, 111);
        assert!(u64::from(small.max_conns + 2 * small.backlog) * 6 + 128 <= 1024);
        let none = Capacity::from_nofile(100, 0);
        assert_eq!((none.max_conns, none.fit), (0, 0));
        assert_eq!(none.backlog, 1);
        // A huge limit: the backlog is capped.
        let big = Capacity::from_nofile(u64::MAX, 0);
        assert_eq!(big.backlog, MAX_BACKLOG);
        assert!(big.max_conns > 0);
    }

    #[test]
    fn pause_has_hysteresis_and_counts_episodes() {
        let cap = Capacity {
            max_conns: 100,
            resume_at: 90,
            backlog: 10,
            fit: 140,
        };
        let mut p = Pause::default();
        assert_eq!(p.update(99, false, &cap), None);
        assert_eq!(p.update(100, false, &cap), Some(PauseChange::Paused));
        assert!(p.paused());
        // Still over the resume mark: stays paused, logged once.
        assert_eq!(p.update(120, false, &cap), None);
        assert_eq!(p.update(91, false, &cap), None);
        assert_eq!(p.update(90, false, &cap), Some(PauseChange::Resumed));
        assert_eq!(p.update(95, false, &cap), None);
        // Out of descriptors: pause whatever the count, and stay paused
        // while short.
        assert_eq!(p.update(3, true, &cap), Some(PauseChange::Paused));
        assert_eq!(p.update(0, true, &cap), None);
        assert_eq!(p.update(0, false, &cap), Some(PauseChange::Resumed));
        assert_eq!(p.episodes(), 2);
        // A cap of 0 (no descriptors to spare): always paused.
        let zero = Capacity::from_nofile(0, 0);
        let mut p = Pause::default();
        assert_eq!(p.update(0, false, &zero), Some(PauseChange::Paused));
        assert_eq!(p.update(0, false, &zero), None);
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_prefixes() {
        let k = |s: &str| source_key(s.parse().unwrap()).to_string();
        assert_eq!(k("192.168.1.10"), "192.168.1.10");
        assert_eq!(k("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn special_destinations_are_refused_unless_allowed() {
        let no = |s: &str, allow: &[&str]| {
            let allow: Vec<Cidr> = allow.iter().map(|a| a.parse().unwrap()).collect();
            destination_refused(s.parse().unwrap(), &allow)
        };
        for d in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.100.1",
            "100.64.0.1",
            "169.254.169.254",
            "fd00::1",
            "fe80::1",
            "64:ff9b::a00:1",
            "::ffff:192.168.1.1",
            "127.0.0.1",
        ] {
            assert!(no(d, &[]).is_some(), "{d}");
        }
        assert_eq!(no("93.184.216.34", &[]), None);
        assert_eq!(no("2a00:1450::1", &[]), None);
        assert_eq!(no("10.0.3.2", &["10.0.0.0/8"]), None);
        assert!(no("10.0.3.2", &["10.1.0.0/16"]).is_some());
        assert_eq!(no("fd00:0:0:3::2", &["fd00::/8"]), None);
        assert_eq!(
            no("100.64.0.1", &[]),
            Some("shared address space (RFC 6598)")
        );
    }
}
