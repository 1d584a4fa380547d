//! The waypoint's lease table: which (client address, port) is mapped to which
//! destination, for which member, until when. Pure: takes `now`, never reads a
//! clock.
//!
//! A lease is keyed by the client's observed address and the allocated port,
//! exactly like the kernel map element it mirrors. Ports are unique per client
//! address; a released or expired `(client, port)` rests in quarantine before it
//! is handed out again, because MPTCP subflows linger after they close
//! (`net.mptcp.close_timeout`, 60 s by default).
//!
//! **Shared leases.** A second grant for the same member, client address and
//! destination while a lease is live joins that lease instead of taking a
//! port: the kernel element already maps `(client, port)` to the destination,
//! and the subflows of different connections differ by their source ports.
//! Each grant is a *holder* named by its request's nonce, renews and releases
//! on its own, and counts against the member's quota like a lease of its own;
//! the lease (element and flows) ends when its last holder releases or
//! expires. A household whose connections all detour to one destination (a
//! converter, one busy server) then needs one port per waypoint, not one per
//! connection: the ports a UPnP gateway maps are few.

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
    /// When it ends unless renewed (its last holder's expiry).
    pub expires_at: Instant,
    /// Its holders: the nonce of each grant's request (renewals and releases
    /// must name one) and when that holder's share ends unless renewed. The
    /// first created the lease. Never empty while the lease is live.
    pub holders: Vec<(Nonce, Instant)>,
}

impl Lease {
    /// Whether the grant of request `nonce` holds it.
    pub fn held_by(&self, nonce: Nonce) -> bool {
        self.holders.iter().any(|(n, _)| *n == nonce)
    }
}

/// What [`LeaseTable::grant`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Granted {
    /// A new lease on a free port.
    New(Lease),
    /// A holder added to the member's live lease to the same destination.
    Joined(Lease),
}

/// What [`LeaseTable::leave`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left {
    /// The last holder left: the lease ended (it is returned as it was).
    Ended(Lease),
    /// Other holders remain: the lease stays.
    Stays(Lease),
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
    /// Holders dropped by [`Self::prune_holders`] since the last
    /// [`Self::take_pruned`]: the lease as it stayed, and the holder's nonce.
    pruned: Vec<(Lease, Nonce)>,
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
            pruned: Vec::new(),
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

    /// A grant for request `nonce` of `(member, its name)` on the flow
    /// `(client, destination)`: joins the member's live lease on that flow
    /// if there is one, else allocates a new lease. Either way the holder
    /// counts against the member's quota.
    pub fn grant(
        &mut self,
        now: Instant,
        nonce: Nonce,
        (member, member_name): (MemberId, &str),
        (client, destination): (IpAddr, SocketAddr),
        lease: Duration,
    ) -> Result<Granted, LeaseError> {
        let Some(port) = self.find(member, client, destination).map(|l| l.port) else {
            return self
                .allocate(now, nonce, member, member_name, client, destination, lease)
                .map(Granted::New);
        };
        self.prune_holders(now, client, port);
        let held = self.per_member.get(&member).copied().unwrap_or(0);
        if held >= self.max_per_member {
            return Err(LeaseError::QuotaExceeded);
        }
        let until = now + lease;
        let l = self
            .live
            .get_mut(&(client, port))
            .expect("by_flow names live leases only");
        l.holders.push((nonce, until));
        if until > l.expires_at {
            self.expiry.remove(&(l.expires_at, client, port));
            l.expires_at = until;
            self.expiry.insert((until, client, port));
        }
        *self.per_member.entry(member).or_default() += 1;
        Ok(Granted::Joined(l.clone()))
    }

    /// Allocates a new lease (never joins one: see [`Self::grant`]).
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
                holders: vec![(nonce, now + lease)],
            };
            self.live.insert(key, l.clone());
            self.by_flow.insert((member, client, destination), port);
            *self.per_member.entry(member).or_default() += 1;
            self.expiry.insert((l.expires_at, client, port));
            return Ok(l);
        }
        Err(LeaseError::NoPortsLeft)
    }

    /// Extends holder `nonce`'s share of a live lease (and the lease with
    /// it); returns the lease, or `None` when there is no such lease or
    /// holder.
    pub fn renew(
        &mut self,
        now: Instant,
        (client, port): (IpAddr, u16),
        nonce: Nonce,
        until: Instant,
    ) -> Option<&Lease> {
        self.prune_holders(now, client, port);
        let l = self.live.get_mut(&(client, port))?;
        let h = l.holders.iter_mut().find(|(n, _)| *n == nonce)?;
        h.1 = h.1.max(until);
        if until > l.expires_at {
            self.expiry.remove(&(l.expires_at, client, port));
            l.expires_at = until;
            self.expiry.insert((until, client, port));
        }
        Some(l)
    }

    /// Holder `nonce` leaves the lease on `(client, port)` (its release, or
    /// its failed grant): the lease ends with its last holder. `None` when
    /// there is no such lease or holder.
    pub fn leave(
        &mut self,
        now: Instant,
        (client, port): (IpAddr, u16),
        nonce: Nonce,
    ) -> Option<Left> {
        let l = self.live.get_mut(&(client, port))?;
        let i = l.holders.iter().position(|(n, _)| *n == nonce)?;
        let others_live = l
            .holders
            .iter()
            .enumerate()
            .any(|(j, (_, until))| j != i && *until > now);
        if !others_live {
            // Ended with every holder it had (each one's end is recorded).
            return self.end(now, client, port).map(Left::Ended);
        }
        l.holders.swap_remove(i);
        // It now lasts as long as its longest remaining share.
        let last = l.holders.iter().map(|h| h.1).max().unwrap_or(now);
        if last < l.expires_at {
            self.expiry.remove(&(l.expires_at, client, port));
            l.expires_at = last;
            self.expiry.insert((last, client, port));
        }
        let (member, kept) = (l.member, l.clone());
        self.uncount(member, 1);
        Some(Left::Stays(kept))
    }

    /// Takes back the grant of request `nonce` before anything of it
    /// reached the kernel or the evidence (its install failed, or its answer
    /// would not fit): a new lease ends (nothing to undo), a joined one only
    /// loses that holder and otherwise runs its course (its element and
    /// flows end through [`Self::expire`] or a release, with their records).
    pub fn withdraw(&mut self, now: Instant, (client, port): (IpAddr, u16), nonce: Nonce) {
        let Some(l) = self.live.get_mut(&(client, port)) else {
            return;
        };
        let Some(i) = l.holders.iter().position(|(n, _)| *n == nonce) else {
            return;
        };
        if l.holders.len() == 1 {
            self.end(now, client, port);
            return;
        }
        l.holders.swap_remove(i);
        let member = l.member;
        self.uncount(member, 1);
    }

    /// Drops the holders of `(client, port)` whose shares ended by `now`
    /// without a release (their connection's end was never told); the
    /// lease itself ends by [`Self::expire`] when its last share does.
    fn prune_holders(&mut self, now: Instant, client: IpAddr, port: u16) {
        let Some(l) = self.live.get_mut(&(client, port)) else {
            return;
        };
        if l.holders.iter().all(|(_, until)| *until <= now) {
            // The lease itself has expired: `expire` ends it, holders and all.
            return;
        }
        let (kept, gone): (Vec<_>, Vec<_>) = l.holders.iter().partition(|(_, until)| *until > now);
        if gone.is_empty() {
            return;
        }
        l.holders = kept;
        let (member, stays) = (l.member, l.clone());
        self.uncount(member, gone.len());
        self.pruned
            .extend(gone.into_iter().map(|(n, _)| (stays.clone(), n)));
    }

    /// The holders whose shares ended without a release while their lease
    /// stayed (for their end records), since the last call.
    pub fn take_pruned(&mut self) -> Vec<(Lease, Nonce)> {
        std::mem::take(&mut self.pruned)
    }

    fn uncount(&mut self, member: MemberId, holders: usize) {
        if let Some(n) = self.per_member.get_mut(&member) {
            *n = n.saturating_sub(u32::try_from(holders).unwrap_or(u32::MAX));
            if *n == 0 {
                self.per_member.remove(&member);
            }
        }
    }

    /// Ends a lease now, whoever holds it (expiry, revocation, failed install).
    pub fn end(&mut self, now: Instant, client: IpAddr, port: u16) -> Option<Lease> {
        let l = self.live.remove(&(client, port))?;
        self.expiry.remove(&(l.expires_at, client, port));
        let flow = (l.member, client, l.destination);
        if self.by_flow.get(&flow) == Some(&port) {
            self.by_flow.remove(&flow);
        }
        self.uncount(l.member, l.holders.len());
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
        let key = (a.client, a.port);
        assert!(t.renew(t0, key, Nonce([9; 16]), t0 + LEASE * 2).is_none());
        t.renew(t0, key, Nonce([0; 16]), t0 + LEASE * 2).unwrap();
        assert!(t.expire(t0 + LEASE).is_empty());
        let gone = t.expire(t0 + LEASE * 2);
        assert_eq!(gone.len(), 1);
        assert!(t.is_empty());
        assert!(t.renew(t0, key, Nonce([0; 16]), t0 + LEASE * 3).is_none());
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

    fn n(b: u8) -> Nonce {
        Nonce([b; 16])
    }

    fn joined(g: Result<Granted, LeaseError>) -> Lease {
        match g {
            Ok(Granted::Joined(l)) => l,
            other => panic!("expected a join, got {other:?}"),
        }
    }

    fn new(g: Result<Granted, LeaseError>) -> Lease {
        match g {
            Ok(Granted::New(l)) => l,
            other => panic!("expected a new lease, got {other:?}"),
        }
    }

    #[test]
    fn grants_to_one_destination_share_a_port_and_count_each() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new((40000, 40009), 3);
        let c = ip("10.0.1.2");
        let a = new(t.grant(t0, n(1), (m(1), "a"), (c, dst()), LEASE));
        let b = joined(t.grant(t0, n(2), (m(1), "a"), (c, dst()), LEASE));
        assert_eq!(a.port, b.port);
        assert_eq!(b.holders.len(), 2);
        assert_eq!(t.len(), 1);
        // Another destination, another client address or another member
        // take a port of their own.
        let other: SocketAddr = "10.0.3.2:443".parse().unwrap();
        let d = new(t.grant(t0, n(3), (m(1), "a"), (c, other), LEASE));
        assert_ne!(d.port, a.port);
        new(t.grant(t0, n(4), (m(2), "b"), (c, dst()), LEASE));
        new(t.grant(t0, n(5), (m(2), "b"), (ip("10.0.1.3"), dst()), LEASE));
        // Each holder counts against the member's quota (3): a join too.
        assert_eq!(
            t.grant(t0, n(6), (m(1), "a"), (c, dst()), LEASE),
            Err(LeaseError::QuotaExceeded)
        );
    }

    #[test]
    fn holders_renew_and_leave_on_their_own() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new((40000, 40009), 10);
        let c = ip("10.0.1.2");
        let a = new(t.grant(t0, n(1), (m(1), "a"), (c, dst()), LEASE));
        let key = (c, a.port);
        let t1 = t0 + Duration::from_secs(10);
        joined(t.grant(t1, n(2), (m(1), "a"), (c, dst()), LEASE));
        assert_eq!(t.next_expiry(), Some(t1 + LEASE));
        // A stranger's nonce neither renews nor releases.
        assert!(t.renew(t1, key, n(7), t1 + LEASE).is_none());
        assert!(t.leave(t1, key, n(7)).is_none());
        // The second holder leaves: the lease stays, for the first holder's
        // time only.
        match t.leave(t1, key, n(2)) {
            Some(Left::Stays(l)) => assert_eq!(l.holders.len(), 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.next_expiry(), Some(t0 + LEASE));
        assert!(t.renew(t1, key, n(2), t1 + LEASE).is_none());
        // The last holder leaves: it ends, and its port rests.
        match t.leave(t1, key, n(1)) {
            Some(Left::Ended(l)) => assert_eq!(l.holders.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(t.is_empty());
        assert_eq!(t.resting(), 1);
        // The quota is whole again.
        let mut q = LeaseTable::new((40000, 40009), 1);
        let l = new(q.grant(t0, n(1), (m(1), "a"), (c, dst()), LEASE));
        q.leave(t0, (c, l.port), n(1));
        new(q.grant(t0, n(2), (m(1), "a"), (c, dst()), LEASE));
    }

    #[test]
    fn unreleased_shares_end_by_themselves() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new((40000, 40009), 2);
        let c = ip("10.0.1.2");
        let a = new(t.grant(t0, n(1), (m(1), "a"), (c, dst()), LEASE));
        let key = (c, a.port);
        joined(t.grant(t0, n(2), (m(1), "a"), (c, dst()), LEASE));
        // Holder 1 renews; holder 2 never does (its connection's end was
        // never told) and is pruned once its share is over.
        let t1 = t0 + LEASE - Duration::from_secs(1);
        t.renew(t1, key, n(1), t1 + LEASE).unwrap();
        let t2 = t0 + LEASE + Duration::from_secs(1);
        assert!(t.expire(t2).is_empty());
        t.renew(t2, key, n(1), t2 + LEASE).unwrap();
        let pruned = t.take_pruned();
        assert_eq!(pruned.len(), 1);
        assert_eq!(pruned[0].1, n(2));
        assert_eq!(pruned[0].0.holders.len(), 1);
        assert!(t.take_pruned().is_empty());
        // Its quota share is back.
        joined(t.grant(t2, n(3), (m(1), "a"), (c, dst()), LEASE));
        // When every share is over, the whole lease expires with its holders.
        let gone = t.expire(t2 + LEASE);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].holders.len(), 2);
        assert!(t.is_empty());
        new(t.grant(t2 + LEASE, n(4), (m(1), "a"), (c, dst()), LEASE));
    }

    #[test]
    fn releasing_beside_expired_shares_ends_the_lease() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new((40000, 40009), 10);
        let c = ip("10.0.1.2");
        let a = new(t.grant(t0, n(1), (m(1), "a"), (c, dst()), LEASE));
        let key = (c, a.port);
        let t1 = t0 + LEASE / 2;
        joined(t.grant(t1, n(2), (m(1), "a"), (c, dst()), LEASE));
        // Holder 1's share is over (unrenewed); holder 2 releases: nobody
        // live is left, so the lease ends now, both holders recorded.
        match t.leave(t0 + LEASE + Duration::from_secs(1), key, n(2)) {
            Some(Left::Ended(l)) => assert_eq!(l.holders.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(t.is_empty());
    }

    #[test]
    fn a_withdrawn_join_leaves_the_lease_to_its_holders() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new((40000, 40009), 10);
        let c = ip("10.0.1.2");
        let a = new(t.grant(t0, n(1), (m(1), "a"), (c, dst()), LEASE));
        let key = (c, a.port);
        joined(t.grant(t0 + LEASE, n(2), (m(1), "a"), (c, dst()), LEASE));
        // Holder 1's share is over, holder 2's grant is taken back: the
        // lease stays (its element is in the kernel) and expires with its
        // stale holder, recorded then.
        t.withdraw(t0 + LEASE, key, n(2));
        assert_eq!(t.len(), 1);
        assert!(t.lookup(c, a.port).is_some_and(|l| !l.held_by(n(2))));
        let gone = t.expire(t0 + LEASE * 2);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].holders.len(), 1);
        // A new lease taken back ends at once.
        let b = new(t.grant(t0, n(3), (m(1), "a"), (c, dst()), LEASE));
        t.withdraw(t0, (c, b.port), n(3));
        assert!(t.is_empty());
        new(t.grant(t0, n(4), (m(1), "a"), (c, dst()), LEASE));
    }
}
