//! How long the poll loop's turns take: a histogram and the slowest turn,
//! for `dcol status --json`'s `loop` object (issue 18: "no loop turn over
//! 50 ms" under load must be measurable).
//!
//! A turn is the work between two `poll(2)` calls: calling the ready
//! drivers, handing their events out, answering status requests, and
//! collecting the next descriptors and deadlines. Recording a turn costs one
//! clock read (the loop reads the clock anyway) and a few comparisons.
//! Pure: the loop passes the durations in.

use std::time::{Duration, Instant};

use crate::control::LoopStatus;

/// Upper bounds of the histogram's buckets, in microseconds; one more
/// bucket counts the turns above the last bound.
pub(super) const BOUNDS_US: [u64; 13] = [
    100, 250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000,
];

/// The statistics since the daemon started.
#[derive(Debug, Clone, Default)]
pub(super) struct Turns {
    counts: [u64; BOUNDS_US.len() + 1],
    turns: u64,
    max: Duration,
    /// When the slowest turn ended, since the daemon started.
    max_at: Duration,
    /// The driver that took the longest part of the slowest turn.
    max_driver: &'static str,
}

impl Turns {
    /// Records a turn of `took` that ended `at` after the start; `driver`
    /// took the longest part of it.
    pub fn record(&mut self, took: Duration, at: Duration, driver: &'static str) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BOUNDS_US.len());
        self.counts[i] = self.counts[i].wrapping_add(1);
        self.turns = self.turns.wrapping_add(1);
        if took > self.max {
            self.max = took;
            self.max_at = at;
            self.max_driver = driver;
        }
    }

    /// The `loop` object of the status.
    pub fn status(&self) -> LoopStatus {
        LoopStatus {
            turns: self.turns,
            max_ms: round3(self.max.as_secs_f64() * 1e3),
            max_at_s: self.max_at.as_secs(),
            max_driver: (!self.max_driver.is_empty()).then(|| self.max_driver.to_owned()),
            le_ms: BOUNDS_US.iter().map(|b| *b as f64 / 1e3).collect(),
            counts: self.counts.to_vec(),
        }
    }
}

/// One turn being timed: which part of it took longest.
#[derive(Debug, Clone, Copy)]
pub(super) struct Turn {
    start: Instant,
    last: Instant,
    longest: (Duration, &'static str),
}

impl Turn {
    /// A turn that starts at `now` (the poll returned).
    pub fn new(now: Instant) -> Turn {
        Turn {
            start: now,
            last: now,
            longest: (Duration::ZERO, ""),
        }
    }

    /// The part `name` of the turn ended at `now`.
    pub fn lap(&mut self, name: &'static str, now: Instant) {
        let took = now.saturating_duration_since(self.last);
        if took > self.longest.0 || self.longest.1.is_empty() {
            self.longest = (took, name);
        }
        self.last = now;
    }

    /// How long the turn took, and its longest part.
    pub fn end(&self) -> (Duration, &'static str) {
        (
            self.last.saturating_duration_since(self.start),
            self.longest.1,
        )
    }
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_fall_into_buckets_and_the_slowest_is_kept() {
        let mut t = Turns::default();
        let ms = Duration::from_millis;
        t.record(Duration::from_micros(80), ms(1), "host");
        t.record(Duration::from_micros(100), ms(2), "host");
        t.record(ms(30), Duration::from_secs(7), "client");
        t.record(ms(3), Duration::from_secs(9), "lan");
        t.record(Duration::from_secs(2), Duration::from_secs(11), "waypoint");
        let s = t.status();
        assert_eq!(s.turns, 5);
        assert_eq!(s.counts.len(), s.le_ms.len() + 1);
        assert_eq!(s.counts[0], 2, "80 and 100 us are in the first bucket");
        assert_eq!(s.counts[5], 1, "3 ms: (2, 5]");
        assert_eq!(s.counts[8], 1, "30 ms: (20, 50]");
        assert_eq!(s.counts[13], 1, "2 s: above the last bound");
        assert_eq!(s.max_ms, 2000.0);
        assert_eq!(s.max_at_s, 11);
        assert_eq!(s.max_driver.as_deref(), Some("waypoint"));
        assert_eq!(Turns::default().status().max_driver, None);
    }

    #[test]
    fn a_turn_names_its_longest_part() {
        let t0 = Instant::now();
        let mut t = Turn::new(t0);
        let ms = Duration::from_millis;
        t.lap("host", t0 + ms(1));
        t.lap("lan", t0 + ms(9));
        t.lap("deliver", t0 + ms(10));
        assert_eq!(t.end(), (ms(10), "lan"));
    }
}
