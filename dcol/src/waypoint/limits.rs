//! Admission limits of the waypoint, per source address and per member, so
//! that no party can starve or refuse another. Pure: token buckets on
//! `now`, bounded maps.
//!
//! - **Per source** (an IPv4 address, an IPv6 /64): every datagram that does
//!   not turn out to be a fresh authenticated request of its own member,
//!   within that member's rate, costs its source one token: garbage,
//!   refusals before the signature, bad signatures, replays, requests naming
//!   another source, requests over their member's rate. A source without a
//!   token is dropped before anything else is done with its datagram
//!   (before decoding, long before any signature check). A flood from one
//!   source thus costs one lookup per datagram, and at most the source's
//!   rate in signature checks; honest members, whose requests verify, never
//!   spend their source's tokens.
//! - **Per member**: a fresh authenticated request costs its member one
//!   token, from one bucket for new tunnels and another for the rest
//!   (renewals, releases), so that a burst of new connections does not
//!   starve the renewals of the tunnels it holds. A member without a token
//!   gets a signed refusal it can act on. A forger can spend no member's
//!   tokens: only verified requests are charged.
//! - **In the kernel**: a source found over its rate goes on a [`Blocklist`]
//!   for a while (2 s, doubling for a repeat offender up to a minute); the
//!   daemon installs the list as a socket filter, so a one-source flood is
//!   dropped before it reaches the socket's queue, where it would crowd out
//!   honest datagrams whenever the daemon is not scheduled.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The admission limits (derived from the member quota by [`Limits::for_quota`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Authenticated requests per second one member may make, sustained.
    pub member_rate: u32,
    /// ... and at once.
    pub member_burst: u32,
    /// Unauthenticated datagrams per second from one source, sustained.
    pub source_rate: u32,
    /// ... and at once.
    pub source_burst: u32,
    /// Sources tracked at once; the longest known makes room for a new one.
    pub max_sources: usize,
    /// Replay-cache entries. When that many are held, a member holding its
    /// fair share (this divided by the members holding entries) or more is
    /// refused until its entries age out; one member can never fill the
    /// cache for another.
    pub seen_cap: usize,
    /// Certificates whose signature is cached.
    pub cert_cache: usize,
    /// Evidence bytes one member may cause within a day, `None` with no
    /// evidence log ([`super::evidence::member_share`]).
    pub evidence_share: Option<u64>,
}

impl Limits {
    /// Limits for a waypoint letting each member hold `max_per_member`
    /// tunnels: a member renews each lease at most once a second (the
    /// client's shortest `renew_interval`) and grants and releases are
    /// one-offs, so twice the quota per second (at least 32) with a burst of
    /// four times it (at least 64) never slows an honest member. A source may
    /// carry two members' worth of unauthenticated datagrams (several
    /// routers behind one address, first contacts, retransmissions).
    pub fn for_quota(max_per_member: u32) -> Limits {
        let rate = max_per_member.saturating_mul(2).max(32);
        let burst = max_per_member.saturating_mul(4).max(64);
        Limits {
            member_rate: rate,
            member_burst: burst,
            source_rate: rate.saturating_mul(2),
            source_burst: burst.saturating_mul(2),
            max_sources: 4096,
            seen_cap: 16_384,
            cert_cache: 1024,
            evidence_share: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::for_quota(16)
    }
}

/// Who a source is: an IPv4 address, or an IPv6 /64 (one subscriber's
/// network); an IPv4-mapped IPv6 address is its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a datagram from `ip`.
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V6(a) => {
                let mut o = a.octets();
                o[8..].fill(0);
                Source(IpAddr::from(o))
            }
            v4 => Source(v4),
        }
    }

    /// The address (an IPv6 source: its /64, the rest zero).
    pub fn addr(&self) -> IpAddr {
        self.0
    }
}

/// A token bucket in thousandths of a token.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    at: Instant,
}

impl Bucket {
    fn level(&self, now: Instant, rate: u32, burst: u32) -> u64 {
        let ms = now.saturating_duration_since(self.at).as_millis();
        let add = u64::try_from(ms)
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(rate));
        self.milli
            .saturating_add(add)
            .min(u64::from(burst).saturating_mul(1000))
    }
}

/// Token buckets by key, at most `cap` of them.
#[derive(Debug)]
pub struct Buckets<K> {
    rate: u32,
    burst: u32,
    cap: usize,
    map: HashMap<K, Bucket>,
    /// Keys in the order they were added, for eviction.
    order: VecDeque<K>,
}

impl<K: Copy + Eq + Hash> Buckets<K> {
    /// Buckets refilling `rate` tokens a second up to `burst`, at most `cap`
    /// keys (an unknown key has a full bucket).
    pub fn new(rate: u32, burst: u32, cap: usize) -> Self {
        Buckets {
            rate,
            burst,
            cap: cap.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// True when `key` has a token at `now` (takes none).
    pub fn allows(&self, key: &K, now: Instant) -> bool {
        self.map
            .get(key)
            .is_none_or(|b| b.level(now, self.rate, self.burst) >= 1000)
    }

    /// Takes one token from `key` (none left: stays empty). Returns whether
    /// it had one.
    pub fn charge(&mut self, key: K, now: Instant) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        let full = u64::from(burst).saturating_mul(1000);
        if !self.map.contains_key(&key) {
            self.make_room();
            self.order.push_back(key);
        }
        let b = self.map.entry(key).or_insert(Bucket {
            milli: full,
            at: now,
        });
        let level = b.level(now, rate, burst);
        let had = level >= 1000;
        *b = Bucket {
            milli: level.saturating_sub(1000),
            at: now.max(b.at),
        };
        had
    }

    /// Number of keys with state (a full bucket may still be among them).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no key has state.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Changes the rate and burst (existing levels are kept, capped).
    pub fn set_rate(&mut self, rate: u32, burst: u32) {
        self.rate = rate;
        self.burst = burst;
    }

    fn make_room(&mut self) {
        while self.map.len() >= self.cap {
            let Some(old) = self.order.pop_front() else {
                return;
            };
            self.map.remove(&old);
        }
    }
}

/// How long a source first stays on the [`Blocklist`]; each repeat within
/// [`STRIKE_MEMORY`] doubles it, up to [`BLOCK_MAX`].
pub const BLOCK_BASE: Duration = Duration::from_secs(2);
/// The longest block.
pub const BLOCK_MAX: Duration = Duration::from_secs(64);
/// How long a source's past blocks count towards a longer one.
pub const STRIKE_MEMORY: Duration = Duration::from_secs(600);
/// Sources blocked at once (a socket filter stays short); beyond it the
/// token buckets alone drop their datagrams.
pub const MAX_BLOCKED: usize = 64;

/// Sources to drop in the kernel for now. Pure: the daemon asks
/// [`Blocklist::take_changed`] and installs the list.
#[derive(Debug, Default)]
pub struct Blocklist {
    /// Block end and the number of earlier blocks within [`STRIKE_MEMORY`].
    entries: HashMap<Source, (Instant, u32)>,
    /// The list as last handed out, sorted.
    listed: Vec<Source>,
    /// Blocks begun since (bounded by [`MAX_BLOCKED`] with `listed`).
    begun: usize,
    /// When the earliest listed block ends.
    next_end: Option<Instant>,
}

impl Blocklist {
    /// Blocks `s` from `now`: nothing if it is blocked already or the list
    /// is full. Constant time (a flood's path).
    pub fn block(&mut self, s: Source, now: Instant) {
        if self.listed.len().saturating_add(self.begun) >= MAX_BLOCKED {
            return;
        }
        match self.entries.get_mut(&s) {
            Some((until, _)) if *until > now => return,
            Some((until, strikes)) => {
                *strikes = strikes.saturating_add(1);
                *until = now + block_for(*strikes);
            }
            None => {
                self.entries.insert(s, (now + BLOCK_BASE, 0));
            }
        }
        self.begun += 1;
    }

    /// The sources blocked at `now`, when that changed since the last call
    /// (a block began or ended); forgets offenders of long ago.
    pub fn take_changed(&mut self, now: Instant) -> Option<Vec<Source>> {
        if self.begun == 0 && self.next_end.is_none_or(|t| t > now) {
            return None;
        }
        self.begun = 0;
        self.entries.retain(|_, e| e.0 + STRIKE_MEMORY > now);
        let live = self.entries.iter().filter(|(_, e)| e.0 > now);
        let mut cur: Vec<Source> = live.clone().map(|(s, _)| *s).collect();
        cur.sort();
        self.next_end = live.map(|(_, e)| e.0).min();
        if cur == self.listed {
            return None;
        }
        self.listed.clone_from(&cur);
        Some(cur)
    }

    /// When [`Blocklist::take_changed`] next has work.
    pub fn next_change(&self) -> Option<Instant> {
        self.next_end
    }
}

fn block_for(strikes: u32) -> Duration {
    BLOCK_BASE
        .saturating_mul(1 << strikes.min(6))
        .min(BLOCK_MAX)
}

/// How long one token takes to come back at `rate` per second.
pub fn token_time(rate: u32) -> Duration {
    Duration::from_millis(1000 / u64::from(rate.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_cap_and_evict() {
        let t = Instant::now();
        let mut b: Buckets<u8> = Buckets::new(10, 3, 2);
        assert!(b.allows(&1, t));
        assert!(b.charge(1, t) && b.charge(1, t) && b.charge(1, t));
        assert!(!b.allows(&1, t));
        assert!(!b.charge(1, t), "empty stays empty");
        assert!(b.allows(&2, t), "another key is not affected");
        // 100 ms = one token at 10/s.
        assert!(!b.allows(&1, t + Duration::from_millis(99)));
        assert!(b.allows(&1, t + token_time(10)));
        // Refill caps at the burst.
        let later = t + Duration::from_secs(60);
        assert!(b.charge(1, later) && b.charge(1, later) && b.charge(1, later));
        assert!(!b.charge(1, later));
        // At most two keys: a third evicts the oldest (which starts full again).
        b.charge(2, later);
        b.charge(3, later);
        assert_eq!(b.len(), 2);
        assert!(b.allows(&1, later), "evicted: full again");
        // An earlier `now` than the bucket's own never adds tokens.
        assert!(!b.charge(3, t) || b.allows(&3, t));
    }

    #[test]
    fn blocklist_blocks_for_a_while_and_longer_for_repeat_offenders() {
        let t = Instant::now();
        let s = |a: &str| Source::of(a.parse().unwrap());
        let mut b = Blocklist::default();
        assert_eq!(b.take_changed(t), None);
        b.block(s("192.0.2.1"), t);
        b.block(s("192.0.2.1"), t);
        b.block(s("2001:db8::1"), t);
        assert_eq!(
            b.take_changed(t),
            Some(vec![s("192.0.2.1"), s("2001:db8::")])
        );
        assert_eq!(b.take_changed(t), None, "unchanged");
        assert_eq!(b.next_change(), Some(t + BLOCK_BASE));
        // Blocked already: no change.
        b.block(s("192.0.2.1"), t + Duration::from_secs(1));
        assert_eq!(b.take_changed(t + Duration::from_secs(1)), None);
        // Both blocks end.
        let t2 = t + BLOCK_BASE;
        assert_eq!(b.take_changed(t2), Some(vec![]));
        assert_eq!(b.next_change(), None);
        // Again within the strike memory: twice as long, then four times.
        b.block(s("192.0.2.1"), t2);
        assert_eq!(b.take_changed(t2), Some(vec![s("192.0.2.1")]));
        assert_eq!(b.next_change(), Some(t2 + BLOCK_BASE * 2));
        let t3 = t2 + BLOCK_BASE * 2;
        assert_eq!(b.take_changed(t3), Some(vec![]));
        b.block(s("192.0.2.1"), t3);
        b.take_changed(t3);
        assert_eq!(b.next_change(), Some(t3 + BLOCK_BASE * 4));
        assert_eq!(block_for(40), BLOCK_MAX);
        // Long after, a first offence again.
        let late = t3 + STRIKE_MEMORY + BLOCK_MAX;
        assert_eq!(b.take_changed(late), Some(vec![]));
        b.block(s("192.0.2.1"), late);
        b.take_changed(late);
        assert_eq!(b.next_change(), Some(late + BLOCK_BASE));
        // Bounded.
        let mut b = Blocklist::default();
        for i in 0..(MAX_BLOCKED as u32 + 10) {
            b.block(Source::of(std::net::Ipv4Addr::from(i).into()), t);
        }
        assert_eq!(b.take_changed(t).map(|l| l.len()), Some(MAX_BLOCKED));
    }

    #[test]
    fn sources_are_addresses_and_v6_prefixes() {
        let s = |a: &str| Source::of(a.parse().unwrap());
        assert_eq!(s("2001:db8:1:2::5"), s("2001:db8:1:2:ffff::1"));
        assert_ne!(s("2001:db8:1:2::5"), s("2001:db8:1:3::5"));
        assert_eq!(s("::ffff:192.0.2.1"), s("192.0.2.1"));
        assert_ne!(s("192.0.2.1"), s("192.0.2.2"));
    }

    #[test]
    fn limits_follow_the_quota() {
        let l = Limits::for_quota(16);
        assert_eq!((l.member_rate, l.member_burst), (32, 64));
        assert_eq!((l.source_rate, l.source_burst), (64, 128));
        let big = Limits::for_quota(u32::MAX);
        assert_eq!(big.member_rate, u32::MAX);
        assert_eq!(Limits::default(), Limits::for_quota(16));
    }
}
