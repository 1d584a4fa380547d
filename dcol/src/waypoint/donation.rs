//! The owner's donation caps, as a state machine that does no I/O: the
//! month's count of donated bytes, when the kernel's count is read again,
//! when it is saved (RAM every [`CHECK`], flash every [`PERSIST`]), when
//! the month turns (UTC) and when the waypoint refuses new detours because
//! the month's volume is used up.
//!
//! The kernel enforces the caps (a policer and a named quota, see
//! `sys::nft`); the daemon reads its count, installs the caps and writes
//! the count files as the [`Action`]s say. The count file format is
//! `YYYY-MM BYTES` ([`Count`]).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use dcol::waypoint::donation::{Action, Caps, Donation, Month};
//! let (t0, dec) = (Instant::now(), Month::of_unix(1_798_000_000));
//! let mut d = Donation::new(t0, dec);
//! let caps = Caps { kbit: 0, month_bytes: 1000, used: 400 };
//! assert_eq!(d.installed(t0, caps), vec![Action::Announce(caps)]);
//! // 600 more bytes: the month's donation is used up.
//! let t1 = t0 + Duration::from_secs(30);
//! assert!(d.check_due(t1));
//! let acts = d.check(t1, dec, Some(1000));
//! assert!(matches!(acts[0], Action::UsedUp(_)));
//! assert!(d.refusing().is_some());
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// How often the month's count is saved in `state_dir` (and the month
/// checked).
pub const CHECK: Duration = Duration::from_secs(30);

/// How often the count is saved to `donation_file` (flash on a router: 720
/// small writes a month).
pub const PERSIST: Duration = Duration::from_secs(3600);

/// A request re-reads a count older than this.
pub const FRESH: Duration = Duration::from_secs(1);

/// A calendar month (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    /// The year.
    pub year: i64,
    /// 1-12.
    pub month: u32,
}

impl Month {
    /// The month of a Unix time (Howard Hinnant's `civil_from_days`).
    pub fn of_unix(unix_s: u64) -> Month {
        let z = (unix_s / 86_400) as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        Month { year: y, month: m }
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// Why a count file's text is not a count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CountError {
    /// Not two words.
    #[error("'{0}' is not 'YYYY-MM BYTES'")]
    Shape(String),
    /// The first word is not a month.
    #[error("'{0}' is not a month (YYYY-MM)")]
    Month(String),
    /// The second word is not a number.
    #[error("'{0}' is not a byte count")]
    Bytes(String),
}

impl FromStr for Month {
    type Err = CountError;

    fn from_str(s: &str) -> Result<Month, CountError> {
        s.split_once('-')
            .and_then(|(y, m)| Some((y.parse().ok()?, m.parse().ok()?)))
            .filter(|&(y, m): &(i64, u32)| y > 0 && (1..=12).contains(&m))
            .map(|(year, month)| Month { year, month })
            .ok_or_else(|| CountError::Month(s.to_owned()))
    }
}

/// The bytes donated in a month, as the count files keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// The month counted.
    pub month: Month,
    /// Bytes donated in it.
    pub bytes: u64,
}

impl FromStr for Count {
    type Err = CountError;

    fn from_str(text: &str) -> Result<Count, CountError> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let [month, bytes] = words.as_slice() else {
            return Err(CountError::Shape(text.trim().to_owned()));
        };
        Ok(Count {
            month: month.parse()?,
            bytes: bytes
                .parse()
                .map_err(|_| CountError::Bytes((*bytes).to_owned()))?,
        })
    }
}

impl fmt::Display for Count {
    /// The file's text (with its newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} {}", self.month, self.bytes)
    }
}

/// The caps and the month's count, as the kernel is to hold them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    /// Rate cap, kbit/s (0: none).
    pub kbit: u32,
    /// Monthly volume, bytes (0: none).
    pub month_bytes: u64,
    /// Bytes already used this month.
    pub used: u64,
}

/// Where the count carried into new caps comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountFrom {
    /// The kernel's running quota.
    Kernel,
    /// The count files (at start, or when a monthly cap is newly set): the
    /// larger of the two this month's (the RAM one is gone after a reboot,
    /// the flash one is up to an hour old).
    Files,
}

/// What the daemon does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Caps now in force (say so).
    Announce(Caps),
    /// The month's volume is used up (why): new detours are refused.
    UsedUp(String),
    /// Granting again: `used` of `month_bytes` bytes this month.
    Donating {
        /// This month's count.
        used: u64,
        /// The monthly cap.
        month_bytes: u64,
    },
    /// A new month: `last` bytes were donated in the one that ended.
    NewMonth {
        /// Last month's count.
        last: u64,
    },
    /// Install [`Donation::caps`] in the kernel (the quota starts afresh).
    Install,
    /// Save the count to the RAM file, and to flash too when `flash`.
    Save {
        /// To `donation_file` as well.
        flash: bool,
        /// What to write.
        count: Count,
    },
}

/// The caps in force and the month's count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Donation {
    caps: Caps,
    month: Month,
    /// The next save to RAM and month check; only with a monthly cap.
    next_check: Option<Instant>,
    /// When the kernel's count was last read.
    read_at: Instant,
    /// The next save to flash.
    next_persist: Instant,
    refusing: bool,
}

impl Donation {
    /// No caps yet, in `month`.
    pub fn new(now: Instant, month: Month) -> Donation {
        Donation {
            caps: Caps::default(),
            month,
            next_check: None,
            read_at: now,
            next_persist: now + PERSIST,
            refusing: false,
        }
    }

    /// The caps in force.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// The month counted.
    pub fn month(&self) -> Month {
        self.month
    }

    /// Where the count carried into new caps comes from.
    pub fn count_from(&self) -> CountFrom {
        match self.next_check {
            Some(_) => CountFrom::Kernel,
            None => CountFrom::Files,
        }
    }

    /// `caps` were installed in the kernel (at start, on reload).
    pub fn installed(&mut self, now: Instant, caps: Caps) -> Vec<Action> {
        let mut out = Vec::new();
        if caps != self.caps && (caps.kbit > 0 || caps.month_bytes > 0) {
            out.push(Action::Announce(caps));
        }
        self.caps = caps;
        self.next_check = (caps.month_bytes > 0).then(|| now + CHECK);
        out.extend(self.update_refusing());
        out
    }

    /// Whether a request must have the kernel's count read first (so grants
    /// stop as soon as the month's volume runs out).
    pub fn stale(&self, now: Instant) -> bool {
        self.caps.month_bytes > 0 && now.saturating_duration_since(self.read_at) >= FRESH
    }

    /// The kernel's count, read at `now` (`None`: the read failed).
    pub fn counted(&mut self, now: Instant, used: Option<u64>) -> Vec<Action> {
        self.read_at = now;
        match used {
            Some(used) => {
                self.caps.used = used;
                self.update_refusing().into_iter().collect()
            }
            None => Vec::new(),
        }
    }

    /// When [`Donation::check`] is due.
    pub fn deadline(&self) -> Option<Instant> {
        self.next_check
    }

    /// Whether [`Donation::check`] is due: the kernel's count is to be read.
    pub fn check_due(&self, now: Instant) -> bool {
        self.next_check.is_some_and(|t| t <= now)
    }

    /// The periodic check, `used` the kernel's count just read (`None`: the
    /// read failed) and `month` the month now: saves the count, and at a
    /// new month starts the quota afresh.
    pub fn check(&mut self, now: Instant, month: Month, used: Option<u64>) -> Vec<Action> {
        if !self.check_due(now) {
            return Vec::new();
        }
        self.next_check = Some(now + CHECK);
        let mut out = self.counted(now, used);
        let Some(used) = used else {
            return out;
        };
        if month != self.month {
            self.month = month;
            self.caps.used = 0;
            out.push(Action::NewMonth { last: used });
            out.push(Action::Install);
            out.extend(self.update_refusing());
            out.push(self.save(true));
        } else {
            let flash = now >= self.next_persist;
            if flash {
                self.next_persist = now + PERSIST;
            }
            out.push(self.save(flash));
        }
        out
    }

    /// At exit: the count to save to both files, with a monthly cap
    /// (`used` the kernel's last count).
    pub fn at_exit(&self, used: u64) -> Option<Count> {
        (self.caps.month_bytes > 0).then_some(Count {
            month: self.month,
            bytes: used,
        })
    }

    /// Why new detours are refused, while the month's volume is used up.
    pub fn refusing(&self) -> Option<String> {
        self.refusing.then(|| {
            format!(
                "{} of {} bytes donated in {}",
                self.caps.used, self.caps.month_bytes, self.month
            )
        })
    }

    fn save(&self, flash: bool) -> Action {
        Action::Save {
            flash,
            count: Count {
                month: self.month,
                bytes: self.caps.used,
            },
        }
    }

    fn update_refusing(&mut self) -> Option<Action> {
        let Caps {
            month_bytes, used, ..
        } = self.caps;
        let refusing = month_bytes > 0 && used >= month_bytes;
        if refusing == self.refusing {
            return None;
        }
        self.refusing = refusing;
        Some(match self.refusing() {
            Some(why) => Action::UsedUp(why),
            None => Action::Donating { used, month_bytes },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEC: Month = Month {
        year: 2026,
        month: 12,
    };
    const JAN: Month = Month {
        year: 2027,
        month: 1,
    };

    fn capped(used: u64) -> Caps {
        Caps {
            kbit: 0,
            month_bytes: 1000,
            used,
        }
    }

    #[test]
    fn months_and_count_files() {
        assert_eq!(Month::of_unix(1_798_761_599), DEC);
        assert_eq!(Month::of_unix(1_798_761_600), JAN);
        assert_eq!(Month::of_unix(0).to_string(), "1970-01");
        let c: Count = "2026-12 4000123\n".parse().unwrap();
        assert_eq!(
            c,
            Count {
                month: DEC,
                bytes: 4_000_123
            }
        );
        assert_eq!(c.to_string(), "2026-12 4000123\n");
        for (text, want) in [
            ("", "'' is not 'YYYY-MM BYTES'"),
            ("2026-12", "is not 'YYYY-MM BYTES'"),
            ("2026-12 1 2", "is not 'YYYY-MM BYTES'"),
            ("2026-13 1", "'2026-13' is not a month"),
            ("december 1", "'december' is not a month"),
            ("2026-12 -5", "'-5' is not a byte count"),
            ("2026-12 lots", "'lots' is not a byte count"),
        ] {
            let e = text.parse::<Count>().unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn start_carries_the_saved_count_and_refuses_when_it_is_used_up() {
        let t0 = Instant::now();
        let mut d = Donation::new(t0, DEC);
        assert_eq!(d.count_from(), CountFrom::Files);
        assert_eq!(d.deadline(), None);
        let acts = d.installed(t0, capped(1000));
        assert_eq!(acts[0], Action::Announce(capped(1000)));
        assert_eq!(
            acts[1],
            Action::UsedUp("1000 of 1000 bytes donated in 2026-12".into())
        );
        assert_eq!(d.count_from(), CountFrom::Kernel);
        assert_eq!(d.deadline(), Some(t0 + CHECK));
        // A higher cap on reload grants again, at once.
        let t1 = t0 + Duration::from_secs(5);
        let acts = d.installed(
            t1,
            Caps {
                month_bytes: 2000,
                ..capped(1000)
            },
        );
        assert_eq!(
            acts[1],
            Action::Donating {
                used: 1000,
                month_bytes: 2000
            }
        );
        assert_eq!(d.refusing(), None);
        // The same caps again: nothing to say.
        assert!(d.installed(t1, d.caps()).is_empty());
        // No caps: no checks, nothing refused.
        assert!(d.installed(t1, Caps::default()).is_empty());
        assert_eq!(d.deadline(), None);
        assert!(!d.stale(t1 + PERSIST));
        assert_eq!(d.at_exit(5), None);
    }

    #[test]
    fn saves_every_check_to_ram_and_hourly_to_flash() {
        let t0 = Instant::now();
        let mut d = Donation::new(t0, DEC);
        d.installed(t0, capped(0));
        assert!(!d.check_due(t0 + CHECK - Duration::from_millis(1)));
        assert!(d.check(t0, DEC, Some(1)).is_empty(), "not due yet");
        let mut flashes = 0;
        let mut t = t0;
        for i in 1..=240u64 {
            t = d.deadline().unwrap();
            assert_eq!(t, t0 + CHECK * i as u32);
            let acts = d.check(t, DEC, Some(i));
            let [Action::Save { flash, count }] = acts.as_slice() else {
                panic!("{acts:?}");
            };
            assert_eq!(count.bytes, i);
            flashes += usize::from(*flash);
        }
        // Two hours of checks: the count reached flash twice.
        assert_eq!(flashes, 2);
        // A failed read saves nothing, and the next check is still due later.
        assert!(d.check(t + CHECK, DEC, None).is_empty());
        assert_eq!(d.deadline(), Some(t + CHECK * 2));
        assert_eq!(
            d.at_exit(300),
            Some(Count {
                month: DEC,
                bytes: 300
            })
        );
    }

    #[test]
    fn requests_reread_a_stale_count_and_stop_granting_when_it_runs_out() {
        let t0 = Instant::now();
        let mut d = Donation::new(t0, DEC);
        d.installed(t0, capped(900));
        assert!(!d.stale(t0 + Duration::from_millis(999)));
        let t1 = t0 + FRESH;
        assert!(d.stale(t1));
        assert!(d.counted(t1, Some(950)).is_empty());
        assert!(!d.stale(t1), "just read");
        let t2 = t1 + FRESH;
        assert_eq!(
            d.counted(t2, Some(1001)),
            vec![Action::UsedUp(
                "1001 of 1000 bytes donated in 2026-12".into()
            )]
        );
        // Refused until the month ends: the count does not change that ...
        assert!(d.counted(t2 + FRESH, None).is_empty());
        assert!(d.refusing().is_some());
        // ... a new month does (the quota starts afresh, saved as 0).
        let t3 = d.deadline().unwrap();
        let acts = d.check(t3, JAN, Some(1200));
        assert_eq!(
            acts,
            vec![
                Action::NewMonth { last: 1200 },
                Action::Install,
                Action::Donating {
                    used: 0,
                    month_bytes: 1000
                },
                Action::Save {
                    flash: true,
                    count: Count {
                        month: JAN,
                        bytes: 0
                    }
                },
            ]
        );
        assert_eq!(d.caps().used, 0);
        assert_eq!(d.month(), JAN);
    }
}
