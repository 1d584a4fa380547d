//! Rate-limited logging for noisy sources: a flood of garbage (refused
//! requests, bad datagrams, busy clients) must not fill the router's log.
//! [`LogLimit::allow`] takes the time from its caller.

use std::time::{Duration, Instant};

/// At most `per_sec` log lines per second for one noisy source; the rest are
/// counted and summarized, so a flood of garbage cannot fill the router's log.
#[derive(Debug)]
pub struct LogLimit {
    per_sec: u32,
    window: Instant,
    used: u32,
    dropped: u64,
}

impl LogLimit {
    pub fn new(per_sec: u32) -> Self {
        LogLimit {
            per_sec,
            window: Instant::now(),
            used: 0,
            dropped: 0,
        }
    }

    pub fn allow(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            if self.dropped > 0 {
                log::warn!(
                    "{} more refusals not logged in the last second",
                    self.dropped
                );
            }
            self.window = now;
            self.used = 0;
            self.dropped = 0;
        }
        if self.used < self.per_sec {
            self.used += 1;
            true
        } else {
            self.dropped = self.dropped.wrapping_add(1);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_per_sec_lines_a_second_then_a_fresh_window() {
        let mut l = LogLimit::new(3);
        let t0 = Instant::now();
        let first: Vec<bool> = (0..5)
            .map(|i| l.allow(t0 + Duration::from_millis(i)))
            .collect();
        assert_eq!(first, [true, true, true, false, false]);
        assert_eq!(l.dropped, 2);
        assert!(l.allow(t0 + Duration::from_millis(1000)));
        assert_eq!(l.dropped, 0, "a new window forgets the old count");
    }
}
