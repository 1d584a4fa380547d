//! The waypoint's lease table: which (client address, port) is mapped to which
//! destination, for which member, until when. Pure: takes `now`, never reads a
//! clock.
//!
//! A lease is keyed by the client's observed address and the allocated port,
//! exactly like the kernel map element it mirrors. Ports are unique per client
//! address; a released or expired `(client, port)` rests in quarantine before it
//! is handed out again, because MPTCP subflows linger after they close
//! (`net.mptcp.close_timeout`, 60 s by default).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::proto::Nonce;
use crate::trust::MemberId;

/// How long a `(client, port)` pair rests after its lease ends.
pub const QUARANTINE: Duration = Duration::from_secs(90);

/// One granted NAT tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The member it was granted to.
    pub member: MemberId,
    /// The member's certificate name, for status and logs.
    pub member_name: String,
    /// The client's address as the waypoint saw it (source of the request).
    pub client: IpAddr,
    /// The allocated port on the waypoint.
    pub port: u16,
    /// Where the kernel forwards joins to.
    pub destination: SocketAddr,
    /// When it was first granted.
    pub granted_at: Instant,
    /// When it ends unless renewed.
    pub expires_at: Instant,
    /// Nonce of the request that created it; renewals and releases must name it.
    pub nonce: Nonce,
}

/// Why no lease could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseError {
    /// The member already holds its maximum number of tunnels.
    QuotaExceeded,
    /// Every port of the range is in use or in quarantine for this client.
    NoPortsLeft,
}

/// The table of live leases, indexed so that every operation is logarithmic or
/// constant in the number of leases (a busy waypoint holds thousands).
#[derive(Debug)]
pub struct LeaseTable {
    ports: (u16, u16),
    max_per_member: u32,
    live: BTreeMap<(IpAddr, u16), Lease>,
    by_flow: HashMap<(MemberId, IpAddr, SocketAddr), u16>,
    per_member: HashMap<MemberId, u32>,
    expiry: BTreeSet<(Instant, IpAddr, u16)>,
    resting: HashMap<(IpAddr, u16), Instant>,
    /// `resting` in the order rests began (their ends are in order too, the
    /// quarantine being fixed), so forgetting the rests that are over costs
    /// only those, never a scan of the map.
    rest_order: VecDeque<(Instant, IpAddr, u16)>,
    cursor: u16,
}

impl LeaseTable {
    /// Changes the per-member cap for new leases (live ones are kept).
    pub fn set_max_per_member(&mut self, max: u32) {
        self.max_per_member = max;
    }

    /// A table allocating from `ports` (inclusive), at most `max_per_member` live
    /// leases per member.
    pub fn new(ports: (u16, u16), max_per_member: u32) -> Self {
        LeaseTable {
            ports,
            max_per_member,
            live: BTreeMap::new(),
            by_flow: HashMap::new(),
            per_member: HashMap::new(),
            expiry: BTreeSet::new(),
            resting: HashMap::new(),
            rest_order: VecDeque::new(),
            cursor: ports.0,
        }
    }

    /// The live lease of `member` from `client` to `destination`, if any.
    pub fn find(
        &self,
        member: MemberId,
        client: IpAddr,
        destination: SocketAddr,
    ) -> Option<&Lease> {
        let port = self.by_flow.get(&(member, client, destination))?;
        self.live.get(&(client, *port))
    }

    /// The live lease on `(client, port)`.
    pub fn lookup(&self, client: IpAddr, port: u16) -> Option<&Lease> {
        self.live.get(&(client, port))
    }

    /// Allocates a new lease.
    #[allow(clippy::too_many_arguments)]
    pub fn allocate(
        &mut self,
        now: Instant,
        nonce: Nonce,
        member: MemberId,
        member_name: &str,
        client: IpAddr,
        destination: SocketAddr,
        lease: Duration,
    ) -> Result<Lease, LeaseError> {
        let held = self.per_member.get(&member).copied().unwrap_or(0);
        if held >= self.max_per_member {
            return Err(LeaseError::QuotaExceeded);
        }
        let (lo, hi) = self.ports;
        let span = u32::from(hi - lo) + 1;
        for i in 0..span {
            let offset = (u32::from(self.cursor - lo) + i) % span;
            // offset < span <= 65536 - lo, so lo + offset fits in u16.
            let port = lo + offset as u16;
            let key = (client, port);
            if self.live.contains_key(&key) {
                continue;
            }
            if let Some(until) = self.resting.get(&key) {
                if *until > now {
                    continue;
                }
                self.resting.remove(&key);
            }
            self.cursor = if port == hi { lo } else { port + 1 };
            let l = Lease {
                member,
                member_name: member_name.to_owned(),
                client,
                port,
                destination,
                granted_at: now,
                expires_at: now + lease,
                nonce,
            };
            self.live.insert(key, l.clone());
            self.by_flow.insert((member, client, destination), port);
            *self.per_member.entry(member).or_default() += 1;
            self.expiry.insert((l.expires_at, client, port));
            return Ok(l);
        }
        Err(LeaseError::NoPortsLeft)
    }

    /// Extends a live lease; returns it, or `None` when there is no such lease.
    pub fn renew(&mut self, client: IpAddr, port: u16, until: Instant) -> Option<&Lease> {
        let l = self.live.get_mut(&(client, port))?;
        if until > l.expires_at {
            self.expiry.remove(&(l.expires_at, client, port));
            l.expires_at = until;
            self.expiry.insert((until, client, port));
        }
        Some(l)
    }

    /// Ends a lease now (release, revocation, failed install).
    pub fn end(&mut self, now: Instant, client: IpAddr, port: u16) -> Option<Lease> {
        let l = self.live.remove(&(client, port))?;
        self.expiry.remove(&(l.expires_at, client, port));
        self.by_flow.remove(&(l.member, client, l.destination));
        if let Some(n) = self.per_member.get_mut(&l.member) {
            *n -= 1;
            if *n == 0 {
                self.per_member.remove(&l.member);
            }
        }
        self.forget_rests(now);
        let until = now + QUARANTINE;
        self.resting.insert((client, port), until);
        self.rest_order.push_back((until, client, port));
        Some(l)
    }

    /// Forgets the rests that are over by `now`, oldest first, so the map
    /// stays as small as the churn of the last [`QUARANTINE`].
    fn forget_rests(&mut self, now: Instant) {
        while let Some(&(until, c, p)) = self.rest_order.front() {
            if until > now {
                break;
            }
            self.rest_order.pop_front();
            // Only if it did not rest again since (a later rest is its own entry).
            if self.resting.get(&(c, p)) == Some(&until) {
                self.resting.remove(&(c, p));
            }
        }
    }

    /// Ports resting now (for tests and status).
    pub fn resting(&self) -> usize {
        self.resting.len()
    }

    /// Removes and returns every lease that has expired at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Lease> {
        let mut out = Vec::new();
        while let Some(&(t, c, p)) = self.expiry.first() {
            if t > now {
                break;
            }
            match self.end(now, c, p) {
                Some(l) => out.push(l),
                None => {
                    self.expiry.remove(&(t, c, p));
                }
            }
        }
        out
    }

    /// Ends every lease of a member (revocation).
    pub fn end_member(&mut self, now: Instant, member: MemberId) -> Vec<Lease> {
        let gone: Vec<(IpAddr, u16)> = self
            .live
            .iter()
            .filter(|(_, l)| l.member == member)
            .map(|(k, _)| *k)
            .collect();
        gone.into_iter()
            .filter_map(|(c, p)| self.end(now, c, p))
            .collect()
    }

    /// The earliest expiry among live leases.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiry.first().map(|e| e.0)
    }

    /// Every live lease, ordered by client and port.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.live.values()
    }

    /// Number of live leases.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// True when no lease is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(b: u8) -> MemberId {
        MemberId([b; 8])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn dst() -> SocketAddr {
        "10.0.3.2:5201".parse().unwrap()
    }

    const LEASE: Duration = Duration::from_secs(300);

    #[test]
    fn allocates_distinct_ports_and_respects_quota() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new((40000, 40009), 3);
        let a = t
            .allocate(t0, Nonce([0; 16]), m(1), "a", ip("10.0.1.2"), dst(), LEASE)
            .unwrap();
        let b = t
            .allocate(t0, Nonce([0; 16]), m(1), "a", ip("10.0.1.2"), dst(), LEASE)
            .unwrap();
        assert_ne!(a.port, b.port);
        t.allocate(t0, Nonce([0; 16]), m(1), "a", ip("10.0.1.2"), dst(), LEASE)
            .unwrap();
        assert_eq!(
            t.allocate(t0, Nonce([0; 16]), m(1), "a", ip("10.0.1.2"), dst(), LEASE),
            Err(LeaseError::QuotaExceeded)
        );
        // Another member is unaffected.
        t.allocate(t0, Nonce([0; 16]), m(2), "b", ip("10.0.1.3"), dst(), LEASE)
            .unwrap();
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn exhausts_range_per_client_and_quarantines() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new((40000, 40001), 10);
        let a = t
            .allocate(t0, Nonce([0; 16]), m(1), "a", ip("10.0.1.2"), dst(), LEASE)
            .unwrap();
        t.allocate(t0, Nonce([0; 16]), m(1), "a", ip("10.0.1.2"), dst(), LEASE)
            .unwrap();
        assert_eq!(
            t.allocate(t0, Nonce([0; 16]), m(1), "a", ip("10.0.1.2"), dst(), LEASE),
            Err(LeaseError::NoPortsLeft)
        );
        // Same ports are free for another client address.
        t.allocate(t0, Nonce([0; 16]), m(2), "b", ip("10.0.9.9"), dst(), LEASE)
            .unwrap();
        // A released port rests before reuse.
        assert!(t.end(t0, ip("10.0.1.2"), a.port).is_some());
        assert_eq!(
            t.allocate(t0, Nonce([0; 16]), m(1), "a", ip("10.0.1.2"), dst(), LEASE),
            Err(LeaseError::NoPortsLeft)
        );
        let later = t0 + QUARANTINE + Duration::from_secs(1);
        let again = t
            .allocate(
                later,
                Nonce([0; 16]),
                m(1),
                "a",
                ip("10.0.1.2"),
                dst(),
                LEASE,
            )
            .unwrap();
        assert_eq!(again.port, a.port);
    }

    #[test]
    fn rests_are_forgotten_in_order_without_scanning() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new((40000, 40999), 1000);
        let ip1 = ip("10.0.1.2");
        for i in 0..100u32 {
            let at = t0 + Duration::from_secs(u64::from(i));
            let l = t
                .allocate(at, Nonce([0; 16]), m(1), "a", ip1, dst(), LEASE)
                .unwrap();
            t.end(at, ip1, l.port);
        }
        // Rests still running at the last end are kept (one per second of
        // churn, 90 s of quarantine), the older ones are gone.
        assert_eq!(t.resting(), 90);
        assert_eq!(t.rest_order.len(), 90);
        // A port resting again keeps its newer rest when the old one ends.
        let later = t0 + Duration::from_secs(100) + QUARANTINE;
        let l = t
            .allocate(later, Nonce([0; 16]), m(1), "a", ip1, dst(), LEASE)
            .unwrap();
        t.end(later, ip1, l.port);
        assert_eq!(t.resting(), 1);
        let until = t.resting[&(ip1, l.port)];
        t.rest_order.push_front((later, ip1, l.port));
        t.forget_rests(later);
        assert_eq!(t.resting[&(ip1, l.port)], until);
    }

    #[test]
    fn expiry_and_renewal() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new((40000, 40999), 10);
        let a = t
            .allocate(t0, Nonce([0; 16]), m(1), "a", ip("10.0.1.2"), dst(), LEASE)
            .unwrap();
        assert_eq!(t.next_expiry(), Some(t0 + LEASE));
        assert!(t.expire(t0 + LEASE - Duration::from_secs(1)).is_empty());
        t.renew(a.client, a.port, t0 + LEASE * 2).unwrap();
        assert!(t.expire(t0 + LEASE).is_empty());
        let gone = t.expire(t0 + LEASE * 2);
        assert_eq!(gone.len(), 1);
        assert!(t.is_empty());
        assert!(t.renew(a.client, a.port, t0 + LEASE * 3).is_none());
    }

    #[test]
    fn finds_existing_lease_and_ends_member() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new((40000, 40999), 10);
        let a = t
            .allocate(t0, Nonce([0; 16]), m(1), "a", ip("10.0.1.2"), dst(), LEASE)
            .unwrap();
        t.allocate(t0, Nonce([0; 16]), m(2), "b", ip("10.0.1.3"), dst(), LEASE)
            .unwrap();
        assert_eq!(
            t.find(m(1), ip("10.0.1.2"), dst()).map(|l| l.port),
            Some(a.port)
        );
        assert!(t.find(m(1), ip("10.0.1.9"), dst()).is_none());
        assert_eq!(t.end_member(t0, m(1)).len(), 1);
        assert_eq!(t.len(), 1);
    }
}
