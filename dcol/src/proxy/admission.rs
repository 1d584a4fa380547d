//! Whether the kernel sends new LAN flows to the proxy right now, without
//! I/O: the heartbeat that keeps interception on (the kernel's switch
//! lapses a few seconds after the last one, so a dead daemon stops
//! intercepting), the pause while the relay is at its cap or out of
//! descriptors (new LAN flows then go direct), and the firewall's changes
//! that make the interception table forget the verdicts it recorded.
//!
//! The daemon carries the [`Action`]s out on the interception table
//! (`sys::lan`) after each turn of the relay.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use dcol::proxy::admission::{Action, Admission};
//! use dcol::proxy::limits::Capacity;
//! let (t0, beat) = (Instant::now(), Duration::from_millis(500));
//! let cap = Capacity::from_nofile(1024, 0);
//! let mut a = Admission::new(t0, beat);
//! assert!(a.after_relay(t0, 0, false, &cap).is_empty());
//! assert_eq!(a.after_relay(t0 + beat, 0, false, &cap), vec![Action::Heartbeat]);
//! ```

use std::time::{Duration, Instant};

use super::limits::{Capacity, Pause, PauseChange};

/// Why interception paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The process ran out of descriptors.
    OutOfFiles,
    /// The relay reached its cap of this many connections.
    Cap(u32),
}

/// What the daemon does to the interception table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forget the firewall's recorded verdicts (another table changed):
    /// the next flow of each kind goes direct and meets the firewall.
    ForgetVerdicts,
    /// Stop intercepting (`active` connections open): new LAN flows go
    /// direct.
    Pause {
        /// Connections open.
        active: u64,
        /// Why.
        why: Full,
    },
    /// Intercept again (`active` connections open).
    Resume {
        /// Connections open.
        active: u64,
    },
    /// Keep interception on for another while.
    Heartbeat,
}

/// Interception's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    heartbeat: Duration,
    next_beat: Instant,
    pause: Pause,
    firewall_changes: u64,
}

impl Admission {
    /// Interception just switched on at `now`, kept on every `heartbeat`.
    pub fn new(now: Instant, heartbeat: Duration) -> Admission {
        Admission {
            heartbeat,
            next_beat: now + heartbeat,
            pause: Pause::default(),
            firewall_changes: 0,
        }
    }

    /// Another nftables table changed.
    pub fn firewall_changed(&mut self) -> Action {
        self.firewall_changes = self.firewall_changes.wrapping_add(1);
        Action::ForgetVerdicts
    }

    /// After the relay's turn at `now`: `active` connections open, `short`
    /// of descriptors, within `cap`.
    pub fn after_relay(
        &mut self,
        now: Instant,
        active: u64,
        short: bool,
        cap: &Capacity,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        match self.pause.update(active, short, cap) {
            Some(PauseChange::Paused) => out.push(Action::Pause {
                active,
                why: if short {
                    Full::OutOfFiles
                } else {
                    Full::Cap(cap.max_conns)
                },
            }),
            Some(PauseChange::Resumed) => {
                out.push(Action::Resume { active });
                self.next_beat = now;
            }
            None => {}
        }
        if !self.pause.paused() && now >= self.next_beat {
            self.next_beat = now + self.heartbeat;
            out.push(Action::Heartbeat);
        }
        out
    }

    /// When the next heartbeat is due (none while paused).
    pub fn deadline(&self) -> Option<Instant> {
        (!self.pause.paused()).then_some(self.next_beat)
    }

    /// Paused now.
    pub fn paused(&self) -> bool {
        self.pause.paused()
    }

    /// Pauses since start.
    pub fn pauses(&self) -> u64 {
        self.pause.episodes()
    }

    /// Firewall changes seen since start.
    pub fn firewall_changes(&self) -> u64 {
        self.firewall_changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEAT: Duration = Duration::from_millis(500);

    #[test]
    fn heartbeats_keep_interception_on() {
        let t0 = Instant::now();
        let cap = Capacity::from_nofile(16_384, 0);
        let mut a = Admission::new(t0, BEAT);
        assert_eq!(a.deadline(), Some(t0 + BEAT));
        let mut beats = 0;
        let mut t = t0;
        // The relay's own turns in between (every 100 ms) beat nothing.
        while t < t0 + Duration::from_secs(5) {
            t += Duration::from_millis(100);
            for act in a.after_relay(t, 3, false, &cap) {
                assert_eq!(act, Action::Heartbeat);
                beats += 1;
            }
        }
        assert_eq!(beats, 10);
        assert_eq!(a.deadline(), Some(t + BEAT));
    }

    #[test]
    fn pauses_at_the_cap_and_resumes_with_a_heartbeat_at_once() {
        let t0 = Instant::now();
        let cap = Capacity::from_nofile(16_384, 100);
        let mut a = Admission::new(t0, BEAT);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(
            a.after_relay(t1, 100, false, &cap),
            vec![Action::Pause {
                active: 100,
                why: Full::Cap(100)
            }]
        );
        assert!(a.paused());
        assert_eq!(a.deadline(), None, "no heartbeat while paused");
        // Still above 90%: paused (the kernel's switch lapses meanwhile).
        let t2 = t1 + Duration::from_secs(10);
        assert!(a.after_relay(t2, 91, false, &cap).is_empty());
        assert_eq!(
            a.after_relay(t2, 90, false, &cap),
            vec![Action::Resume { active: 90 }, Action::Heartbeat]
        );
        assert_eq!(a.deadline(), Some(t2 + BEAT));
        // Out of descriptors: paused at once, whatever the count.
        assert_eq!(
            a.after_relay(t2, 1, true, &cap),
            vec![Action::Pause {
                active: 1,
                why: Full::OutOfFiles
            }]
        );
        assert_eq!(a.pauses(), 2);
    }

    #[test]
    fn firewall_changes_are_counted() {
        let mut a = Admission::new(Instant::now(), BEAT);
        assert_eq!(a.firewall_changed(), Action::ForgetVerdicts);
        a.firewall_changed();
        assert_eq!(a.firewall_changes(), 2);
    }
}
