//! The waypoint's VPN leases: which member's WireGuard key is a peer with
//! which tunnel address, until when. One lease per member (a member's routers
//! share its key; a second request replaces the first). Pure: takes `now`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::proto::Nonce;
use crate::trust::wg::WgKey;
use crate::trust::MemberId;
use crate::types::Cidr;

/// The MTU of a WireGuard interface whose packets travel over IPv4
/// (`v6` false) or IPv6 outside, on a path of 1500 bytes: the outer IP
/// header (20 or 40 bytes), UDP (8) and WireGuard's data header and tag (32)
/// come off. WireGuard's own default, 1420, assumes IPv6 everywhere, which
/// costs IPv4 tunnels 20 bytes a packet (`dcol-lab grid` measures both).
pub fn wg_mtu(v6: bool) -> u32 {
    if v6 {
        1500 - 40 - 8 - 32
    } else {
        1500 - 20 - 8 - 32
    }
}

/// The owner's VPN settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpnSettings {
    /// IPv4 subnet; its first host address is the waypoint's own.
    pub subnet: Cidr,
    /// Optional IPv6 subnet (host part mirrors the IPv4 one).
    pub subnet6: Option<Cidr>,
    /// WireGuard UDP port.
    pub port: u16,
    /// The waypoint's WireGuard public key.
    pub wg_key: WgKey,
}

impl VpnSettings {
    /// The waypoint's own tunnel address (the subnet's first host).
    pub fn own_address(&self) -> Ipv4Addr {
        host4(&self.subnet, 1)
    }

    /// The waypoint's own IPv6 tunnel address, if any.
    pub fn own_address6(&self) -> Option<Ipv6Addr> {
        self.subnet6.as_ref().map(|c| host6(c, 1))
    }
}

fn host4(c: &Cidr, i: u32) -> Ipv4Addr {
    match c.addr {
        IpAddr::V4(a) => Ipv4Addr::from(u32::from(a).wrapping_add(i)),
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

fn host6(c: &Cidr, i: u32) -> Ipv6Addr {
    match c.addr {
        IpAddr::V6(a) => Ipv6Addr::from(u128::from(a).wrapping_add(u128::from(i))),
        IpAddr::V4(_) => Ipv6Addr::UNSPECIFIED,
    }
}

/// One member's VPN tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpnLease {
    /// The member.
    pub member: MemberId,
    /// Its certificate name.
    pub member_name: String,
    /// Its WireGuard public key (from the certificate).
    pub wg_key: WgKey,
    /// Its tunnel address.
    pub address: Ipv4Addr,
    /// Its IPv6 tunnel address.
    pub address6: Option<Ipv6Addr>,
    /// Where its request came from.
    pub client: IpAddr,
    /// First granted.
    pub granted_at: Instant,
    /// Ends unless renewed.
    pub expires_at: Instant,
    /// Nonce of the request that made it.
    pub nonce: Nonce,
}

/// The VPN lease table.
#[derive(Debug)]
pub struct VpnTable {
    settings: VpnSettings,
    by_member: BTreeMap<MemberId, VpnLease>,
    used: BTreeSet<u32>,
}

impl VpnTable {
    /// An empty table for `settings`.
    pub fn new(settings: VpnSettings) -> Self {
        VpnTable {
            settings,
            by_member: BTreeMap::new(),
            used: BTreeSet::new(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &VpnSettings {
        &self.settings
    }

    /// Host indexes usable for members: 2 .. last-but-broadcast.
    fn hosts(&self) -> u32 {
        let bits = 32u32.saturating_sub(u32::from(self.settings.subnet.prefix));
        if bits >= 31 {
            return u32::MAX - 2;
        }
        (1u32 << bits).saturating_sub(3)
    }

    /// Grants `member` a tunnel (or renews its existing one under the new
    /// nonce, same address). Returns the lease and the key it replaced, if the
    /// member's key changed. `None`: no address left.
    #[allow(clippy::too_many_arguments)]
    pub fn grant(
        &mut self,
        now: Instant,
        nonce: Nonce,
        member: MemberId,
        name: &str,
        wg_key: WgKey,
        client: IpAddr,
        len: Duration,
    ) -> Option<(VpnLease, Option<WgKey>)> {
        if let Some(l) = self.by_member.get_mut(&member) {
            let old = (l.wg_key != wg_key).then_some(l.wg_key);
            l.wg_key = wg_key;
            l.nonce = nonce;
            l.client = client;
            l.expires_at = now + len;
            return Some((l.clone(), old));
        }
        let i = (2..2 + self.hosts()).find(|i| !self.used.contains(i))?;
        self.used.insert(i);
        let lease = VpnLease {
            member,
            member_name: name.to_owned(),
            wg_key,
            address: host4(&self.settings.subnet, i),
            address6: self.settings.subnet6.as_ref().map(|c| host6(c, i)),
            client,
            granted_at: now,
            expires_at: now + len,
            nonce,
        };
        self.by_member.insert(member, lease.clone());
        Some((lease, None))
    }

    /// The member's lease if it was made by the request `nonce`.
    pub fn lookup(&self, member: MemberId, nonce: Nonce) -> Option<&VpnLease> {
        self.by_member.get(&member).filter(|l| l.nonce == nonce)
    }

    /// Extends the member's lease.
    pub fn renew(&mut self, member: MemberId, until: Instant) -> Option<&VpnLease> {
        let l = self.by_member.get_mut(&member)?;
        l.expires_at = until;
        Some(l)
    }

    /// Ends the member's lease.
    pub fn end(&mut self, member: MemberId) -> Option<VpnLease> {
        let l = self.by_member.remove(&member)?;
        let i = u32::from(l.address).wrapping_sub(u32::from(host4(&self.settings.subnet, 0)));
        self.used.remove(&i);
        Some(l)
    }

    /// Ends the leases expired by `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<VpnLease> {
        let gone: Vec<MemberId> = self
            .by_member
            .values()
            .filter(|l| l.expires_at <= now)
            .map(|l| l.member)
            .collect();
        gone.into_iter().filter_map(|m| self.end(m)).collect()
    }

    /// The earliest expiry.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_member.values().map(|l| l.expires_at).min()
    }

    /// Live leases.
    pub fn iter(&self) -> impl Iterator<Item = &VpnLease> {
        self.by_member.values()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ipv4_tunnels_get_twenty_bytes_more() {
        assert_eq!(super::wg_mtu(false), 1440);
        assert_eq!(super::wg_mtu(true), 1420);
    }

    use super::*;

    fn table(prefix: &str) -> VpnTable {
        VpnTable::new(VpnSettings {
            subnet: prefix.parse().unwrap(),
            subnet6: Some("fd77::/64".parse().unwrap()),
            port: 51820,
            wg_key: [9; 32],
        })
    }

    #[test]
    fn addresses_per_member_renewal_and_reuse() {
        let t0 = Instant::now();
        let len = Duration::from_secs(60);
        let mut t = table("10.200.7.0/29");
        assert_eq!(t.settings().own_address(), Ipv4Addr::new(10, 200, 7, 1));
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let mut got = Vec::new();
        for m in 0..5u8 {
            let (l, old) = t
                .grant(t0, Nonce([m; 16]), MemberId([m; 8]), "m", [m; 32], ip, len)
                .unwrap();
            assert!(old.is_none());
            got.push(l.address);
        }
        // /29: hosts .1-.6; .1 is the waypoint; .2-.6 for members.
        assert_eq!(got.first(), Some(&Ipv4Addr::new(10, 200, 7, 2)));
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 200, 7, 6)));
        assert!(t
            .grant(t0, Nonce([9; 16]), MemberId([9; 8]), "x", [9; 32], ip, len)
            .is_none());
        // The same member again: same address, new nonce, key change reported.
        let (l, old) = t
            .grant(
                t0,
                Nonce([42; 16]),
                MemberId([1; 8]),
                "m",
                [77; 32],
                ip,
                len,
            )
            .unwrap();
        assert_eq!(l.address, Ipv4Addr::new(10, 200, 7, 3));
        assert_eq!(l.address6, Some("fd77::3".parse().unwrap()));
        assert_eq!(old, Some([1; 32]));
        assert!(t.lookup(MemberId([1; 8]), Nonce([1; 16])).is_none());
        assert!(t.lookup(MemberId([1; 8]), Nonce([42; 16])).is_some());
        // Expiry frees the address.
        t.renew(MemberId([0; 8]), t0 + Duration::from_secs(600));
        let gone = t.expire(t0 + len);
        assert_eq!(gone.len(), 4);
        assert_eq!(t.next_expiry(), Some(t0 + Duration::from_secs(600)));
        let (l, _) = t
            .grant(t0, Nonce([9; 16]), MemberId([9; 8]), "x", [9; 32], ip, len)
            .unwrap();
        assert_eq!(l.address, Ipv4Addr::new(10, 200, 7, 3));
    }
}
