//! Which servers do not speak MPTCP: a per-destination cache, so that the next
//! connection to a server that fell back to TCP (or dropped MP_CAPABLE SYNs)
//! goes straight to plain TCP with no added delay. Pure: takes `now`.
//!
//! Entries expire after a TTL (servers get upgraded, paths change) and the
//! cache is bounded: when full, the entry closest to expiry is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Servers known not to speak MPTCP, until when.
#[derive(Debug)]
pub struct FallbackCache {
    ttl: Duration,
    cap: usize,
    until: HashMap<SocketAddr, Instant>,
}

impl FallbackCache {
    /// A cache remembering a server for `ttl`, at most `cap` servers.
    pub fn new(ttl: Duration, cap: usize) -> Self {
        FallbackCache {
            ttl,
            cap: cap.max(1),
            until: HashMap::new(),
        }
    }

    /// True when connections to `server` should skip MPTCP.
    pub fn plain_tcp(&mut self, now: Instant, server: SocketAddr) -> bool {
        match self.until.get(&server) {
            Some(t) if *t > now => true,
            Some(_) => {
                self.until.remove(&server);
                false
            }
            None => false,
        }
    }

    /// Records that `server` answered without MPTCP (fallback) or never answered
    /// an MP_CAPABLE SYN.
    pub fn record_fallback(&mut self, now: Instant, server: SocketAddr) {
        if self.until.len() >= self.cap && !self.until.contains_key(&server) {
            self.until.retain(|_, t| *t > now);
            if self.until.len() >= self.cap {
                if let Some(oldest) = self.until.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                    self.until.remove(&oldest);
                }
            }
        }
        self.until.insert(server, now + self.ttl);
    }

    /// Records that `server` spoke MPTCP after all.
    pub fn record_mptcp(&mut self, server: SocketAddr) {
        self.until.remove(&server);
    }

    /// Number of servers remembered.
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// True when no server is remembered.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn remembers_for_ttl_and_forgets() {
        let t = Instant::now();
        let mut c = FallbackCache::new(Duration::from_secs(600), 4);
        assert!(!c.plain_tcp(t, sa("198.51.100.1:80")));
        c.record_fallback(t, sa("198.51.100.1:80"));
        assert!(c.plain_tcp(t + Duration::from_secs(599), sa("198.51.100.1:80")));
        assert!(
            !c.plain_tcp(t, sa("198.51.100.1:443")),
            "per destination port"
        );
        assert!(!c.plain_tcp(t + Duration::from_secs(600), sa("198.51.100.1:80")));
        assert!(c.is_empty());
        c.record_fallback(t, sa("198.51.100.2:80"));
        c.record_mptcp(sa("198.51.100.2:80"));
        assert!(!c.plain_tcp(t, sa("198.51.100.2:80")));
    }

    #[test]
    fn bounded() {
        let t = Instant::now();
        let mut c = FallbackCache::new(Duration::from_secs(600), 3);
        for i in 0..10u16 {
            c.record_fallback(
                t + Duration::from_secs(u64::from(i)),
                sa(&format!("198.51.100.1:{}", 1000 + i)),
            );
        }
        assert_eq!(c.len(), 3);
        // The newest are kept.
        assert!(c.plain_tcp(t + Duration::from_secs(10), sa("198.51.100.1:1009")));
        assert!(!c.plain_tcp(t + Duration::from_secs(10), sa("198.51.100.1:1000")));
    }
}
