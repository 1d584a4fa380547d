//! The detour strategy: which waypoints to ask, and what to do with a detour
//! subflow once it runs. Pure: no I/O, no clock; it takes `now` and
//! cumulative per-subflow counters ([`Sample`], read by `sys::diag` from the
//! kernel's `struct tcp_info`) and returns verdicts.
//!
//! **Objective.** Throughput first; a detour that does not add throughput must
//! not cost any (beyond MPTCP's header overhead, which every subflow pays).
//! A detour subflow therefore runs in three roles:
//! - `probing`: fresh (or re-probed) and carrying data, for
//!   [`StrategySettings::probation`]; the verdict is taken after it;
//! - `active`: it passed — kept as a normal subflow;
//! - `backup`: it failed (lossy, or so slow in round trip that it would stall
//!   the connection's in-order delivery): marked backup with SET_FLAGS, which
//!   makes the *server* stop sending on it too (the download direction), and
//!   the local scheduler stop uploading on it. After
//!   [`StrategySettings::reprobe`] (doubling each time it fails again) it is
//!   probed again, so a path that recovers is used again.
//!
//! **Does it add throughput?** A detour sharing the direct path's bottleneck
//! adds nothing and costs its tunnel's overhead (a WireGuard detour over the
//! same access link cost 5-8 % of the throughput): such a detour is
//! **parked** (backup, probed again later as a demoted one). The evidence,
//! cheapest first:
//! - *the connection alone*: where no outcome is remembered for the
//!   (waypoint, prefix), the client creates the detour subflow only
//!   [`StrategySettings::baseline`] after the connection's ESTABLISHED and
//!   measures the direct subflow alone meanwhile (its best sampling
//!   interval: `alone`, handed to [`Judge::set_alone`]). At the probation's
//!   end the connection's rate with the detour (its last
//!   [`StrategySettings::park_test`]) is compared with it: at least
//!   [`HELPS`] × `alone` → it adds throughput (in use, never removed: two
//!   independent paths run at twice the rate); below (1 +
//!   [`StrategySettings::park_gain`]) × `alone` → parked at once (the direct
//!   subflow's rate fell as much as the detour took);
//! - *the removal test*, only where that is ambiguous (in between, or no
//!   `alone`: an app-limited start, a re-probe): the connection runs
//!   [`StrategySettings::park_test`] (after a 1 s settling) without the
//!   detour (marked backup); unless it moved `park_gain` more with the
//!   detour than without, the detour stays parked.
//!
//! A connection moving too little to tell keeps its detour. The client
//! remembers each outcome per (waypoint, prefix) for
//! [`StrategySettings::park_memory`]: the next connections' detours through
//! a parked one start parked, and those through one that added throughput
//! start at once and are not tested.
//!
//! A detour failing its first probation while another waypoint has never been tried
//! for this destination is destroyed instead of kept as backup: the server's
//! subflow limit (usually 2 extra) makes its slot worth more elsewhere.
//!
//! **Waypoint choice** ([`Scoreboard`]): per waypoint and destination prefix
//! (/24 IPv4, /48 IPv6), a discounted mean of the rewards of past detours (a
//! reward is the detour's share of the connection's bytes, doubled and capped
//! at 1, so a path as good as the direct one scores 1; a waypoint that did not
//! answer scores 0), ranked by a discounted UCB rule: untried pairs first,
//! then `mean + c·sqrt(ln N / n)`. Discounting (each new reward multiplies
//! the pair's past weight by [`StrategySettings::discount`]) lets a newly bad
//! waypoint drop and, through the exploration term, a newly good one rise.
//! Where a prefix has no history, the waypoint's history over every prefix
//! stands in, with half the weight.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::mptcp::Sample;

/// Tunables of the strategy.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategySettings {
    /// How long a new or re-probed detour carries data before its verdict.
    pub probation: Duration,
    /// A path losing more than this fraction of its segments, more than
    /// twice what the best other path loses (plus half a point) and moving
    /// less than `loss_rate_ratio` × the best other path's rate is bad.
    /// (Congestion drops at a bottleneck queue are normal; a lossy path that
    /// still adds throughput is kept: throughput first.)
    pub max_loss: f64,
    /// See `max_loss`.
    pub loss_rate_ratio: f64,
    /// A path whose minimum RTT (its propagation delay: queueing at a busy
    /// bottleneck is not the path's fault) exceeds `rtt_factor` × the best
    /// other path's minimum RTT plus `rtt_slack` is bad.
    pub rtt_factor: f64,
    /// See `rtt_factor`.
    pub rtt_slack: Duration,
    /// First wait before a backup detour is probed again (doubles per failure).
    pub reprobe: Duration,
    /// Exploration weight of the UCB rule.
    pub explore: f64,
    /// Weight kept by past rewards of a (waypoint, prefix) per new reward.
    pub discount: f64,
    /// A detour must add this fraction to its connection's throughput to stay
    /// in use after its probation (0 turns the test off).
    pub park_gain: f64,
    /// How long the connection runs without the detour for that test (and
    /// how much of the probation's end the rate with it is taken from).
    pub park_test: Duration,
    /// How long a park test's outcome holds for its (waypoint, destination
    /// prefix): new detours through it start parked, or skip the test.
    pub park_memory: Duration,
    /// How long a connection runs alone before a detour without a
    /// remembered outcome is created: the rate it shows meanwhile is what
    /// the detour is judged against (0: created at once, the removal test
    /// decides).
    pub baseline: Duration,
}

impl Default for StrategySettings {
    fn default() -> Self {
        StrategySettings {
            probation: Duration::from_millis(2000),
            max_loss: 0.015,
            loss_rate_ratio: 0.5,
            rtt_factor: 3.0,
            rtt_slack: Duration::from_millis(40),
            reprobe: Duration::from_secs(10),
            explore: 0.3,
            discount: 0.8,
            park_gain: 0.05,
            park_test: Duration::from_millis(1500),
            park_memory: Duration::from_secs(300),
            baseline: Duration::from_millis(750),
        }
    }
}

/// What a subflow's counters say, over the last sampling interval and smoothed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meter {
    last: Option<(Instant, Sample)>,
    /// Smoothed throughput (both directions), bits/s.
    pub rate_bps: f64,
    /// Loss (retransmitted / sent segments) over the last interval with
    /// enough segments, smoothed.
    pub loss: f64,
    /// Latest smoothed RTT.
    pub rtt: Option<Duration>,
    /// Lowest RTT the kernel saw: the path's own delay, without the queue a
    /// busy path builds up at its bottleneck.
    pub min_rtt: Option<Duration>,
    /// Bytes carried (acked + received) since the meter started.
    pub bytes: u64,
    /// Bytes carried since the current role began.
    pub bytes_in_role: u64,
    /// Highest rate of one sampling interval, bits/s.
    pub peak_bps: f64,
    /// Sampling intervals measured.
    pub intervals: u32,
}

/// Segments an interval needs before its loss fraction counts.
const MIN_SEGS: u32 = 20;

impl Meter {
    /// Feeds a cumulative sample taken at `now`.
    pub fn feed(&mut self, now: Instant, s: Sample) {
        if let Some((t, p)) = self.last {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            let db = s
                .bytes_acked
                .saturating_sub(p.bytes_acked)
                .saturating_add(s.bytes_received.saturating_sub(p.bytes_received));
            self.bytes = self.bytes.saturating_add(db);
            self.bytes_in_role = self.bytes_in_role.saturating_add(db);
            if dt > 0.0 {
                let r = db as f64 * 8.0 / dt;
                self.peak_bps = self.peak_bps.max(r);
                self.intervals = self.intervals.saturating_add(1);
                self.rate_bps = if self.rate_bps == 0.0 {
                    r
                } else {
                    0.5 * self.rate_bps + 0.5 * r
                };
            }
            let segs = s.segs_out.wrapping_sub(p.segs_out);
            if segs >= MIN_SEGS {
                let l = f64::from(s.retrans.wrapping_sub(p.retrans).min(segs)) / f64::from(segs);
                self.loss = 0.5 * self.loss + 0.5 * l;
            }
        }
        // An idle subflow's RTT is the kernel's initial guess (1 s), not a
        // measurement: take it only while the subflow sends.
        let sent = self
            .last
            .map_or(s.segs_out > 0, |(_, p)| s.segs_out != p.segs_out);
        if !s.rtt.is_zero() && sent {
            self.rtt = Some(s.rtt);
        }
        if !s.min_rtt.is_zero() && sent && s.min_rtt.as_secs() < 60 {
            self.min_rtt = Some(s.min_rtt);
        }
        self.last = Some((now, s));
    }
}

/// A detour subflow's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Carrying data on probation.
    Probing,
    /// Passed: a normal subflow.
    Active,
    /// Marked backup: the server and we stop sending on it.
    Backup,
}

impl Role {
    /// Name for status output.
    pub fn name(self) -> &'static str {
        match self {
            Role::Probing => "probing",
            Role::Active => "active",
            Role::Backup => "backup",
        }
    }
}

/// The strategy's state of one running detour subflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Judge {
    /// Its role.
    pub role: Role,
    since: Instant,
    /// Current wait before a backup is probed again.
    backoff: Duration,
    /// It has been probed before: a failed re-probe is demoted, never destroyed.
    reprobed: bool,
    /// Why it was last demoted.
    pub why: Option<String>,
    /// Its counters.
    pub meter: Meter,
    /// Where a throughput window began: when, and the connection's bytes.
    window: Option<(Instant, u64)>,
    /// While the connection is tested without it: its rate with it, bits/s.
    test: Option<f64>,
    /// Its (waypoint, prefix) passed the park test lately: no test.
    tested: bool,
    /// The connection's rate before any detour, bits/s (see the module doc).
    alone: Option<f64>,
    /// Started parked: how many times the backup flag is still to be set.
    /// The kernel answers SET_FLAGS on a subflow just announced with
    /// "subflow not found" at times (seen 250 ms after SUB_ESTABLISHED), and
    /// the verdicts hear nothing of the command's fate: flagged at 0.5 s and
    /// again at 1.5 s (a repeated flag is harmless).
    flag_due: u8,
}

/// What the last park test of a (waypoint, destination prefix) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tested {
    /// The detour added throughput: new ones skip the test.
    Adds,
    /// It added nothing (why): new ones start parked.
    AddsNothing(String),
}

/// Bytes the connection must move in the window before its end for the
/// park test to run (1.4 Mbit/s over 1.5 s): a slower connection keeps its
/// detour, as before the test existed.
const PARK_MIN_BYTES: u64 = 256 * 1024;

/// A connection moving at least this many times its rate alone with a
/// detour: the detour adds throughput, no removal test.
pub const HELPS: f64 = 1.5;

/// The rate alone below which it is no evidence (an app-limited start, or
/// too few bytes to tell): 1 Mbit/s.
const ALONE_MIN_BPS: f64 = 1e6;

/// Round trips a connection must have run alone for its rate to count:
/// slow start takes a few (ten segments doubling per round trip reach a
/// 10 Mbit/s × 30 ms window in three), and a path whose round trip is long
/// against [`StrategySettings::baseline`] is still in slow start when the
/// detour comes.
const ALONE_RTTS: u32 = 8;

/// The connection's rate alone, from its direct subflow's meter after it
/// ran `ran` without a detour: the best sampling interval's, if there was
/// one and the connection ran at least [`ALONE_RTTS`] round trips.
pub fn rate_alone(direct: &Meter, ran: Duration) -> Option<f64> {
    let rtt = direct.min_rtt?;
    (direct.intervals >= 1 && ran >= rtt * ALONE_RTTS).then_some(direct.peak_bps)
}

/// How long the other subflows get to take the detour's share before the
/// park test measures the connection without it: a congestion window
/// sized for part of the bottleneck grows back over a few round trips, and
/// data queued on the detour drains.
const PARK_SETTLE: Duration = Duration::from_millis(1000);

/// Bits per second between `(t0, b0)` and `(t1, b1)`.
fn rate(t0: Instant, b0: u64, t1: Instant, b1: u64) -> f64 {
    let dt = t1.saturating_duration_since(t0).as_secs_f64();
    if dt <= 0.0 {
        return 0.0;
    }
    b1.saturating_sub(b0) as f64 * 8.0 / dt
}

/// The best of a connection's other carrying subflows, to judge one against.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Reference {
    /// Lowest minimum RTT.
    pub min_rtt: Option<Duration>,
    /// Lowest smoothed loss.
    pub loss: f64,
    /// Highest smoothed rate, bits/s.
    pub rate_bps: f64,
    /// Bytes every subflow of the connection carried so far (acked and
    /// received), for the park test.
    pub conn_bytes: u64,
}

/// What to do with a detour subflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing.
    Keep,
    /// Mark it backup (SET_FLAGS backup).
    Demote(String),
    /// Clear its backup flag (SET_FLAGS none) and probe it.
    Probe,
    /// Destroy it: its slot is worth more elsewhere.
    Destroy(String),
    /// Mark it backup for the park test (the connection runs without it).
    Test,
    /// The test found it adds throughput: clear its backup flag.
    Resume,
    /// The test, or the rate alone against the rate with it, found it adds
    /// nothing: it stays or goes backup (parked).
    Park(String),
    /// The rate with it against the rate alone shows it adds throughput: in
    /// use, untested (the text says by how much).
    Helps(String),
}

impl Judge {
    /// A detour subflow established at `now`: it starts on probation.
    pub fn new(now: Instant, s: &StrategySettings) -> Self {
        Judge {
            role: Role::Probing,
            since: now,
            backoff: s.reprobe,
            reprobed: false,
            why: None,
            meter: Meter::default(),
            window: None,
            test: None,
            tested: false,
            alone: None,
            flag_due: 0,
        }
    }

    /// The connection's rate before it had any detour, bits/s: evidence
    /// for the verdict at the probation's end (taken once: a re-probe has
    /// the removal test).
    pub fn set_alone(&mut self, bps: f64) {
        self.alone = Some(bps);
    }

    /// A detour established at `now` through a (waypoint, prefix) whose
    /// detours passed the park test lately: no test at its probation's end.
    pub fn tested(now: Instant, s: &StrategySettings) -> Self {
        let mut j = Judge::new(now, s);
        j.tested = true;
        j
    }

    /// A detour established at `now` through a (waypoint, prefix) that was
    /// parked lately: it starts parked (backup), probed after
    /// [`StrategySettings::reprobe`].
    pub fn parked(now: Instant, s: &StrategySettings, why: String) -> Self {
        let mut j = Judge::new(now, s);
        j.role = Role::Backup;
        j.reprobed = true;
        j.why = Some(why);
        j.flag_due = 2;
        j
    }

    /// Why the path is bad, if it is, compared with the connection's other
    /// carrying subflows.
    fn fault(&self, s: &StrategySettings, other: &Reference) -> Option<String> {
        let best_other_rtt = other.min_rtt;
        if self.meter.loss > s.max_loss
            && self.meter.loss > 2.0 * other.loss + 0.005
            && self.meter.rate_bps < s.loss_rate_ratio * other.rate_bps
        {
            return Some(format!("loss {:.1}%", self.meter.loss * 100.0));
        }
        if let (Some(rtt), Some(best)) = (self.meter.min_rtt, best_other_rtt) {
            if rtt.as_secs_f64() > best.as_secs_f64() * s.rtt_factor + s.rtt_slack.as_secs_f64() {
                return Some(format!(
                    "rtt {:.0} ms vs {:.0} ms",
                    rtt.as_secs_f64() * 1000.0,
                    best.as_secs_f64() * 1000.0
                ));
            }
        }
        None
    }

    /// The verdict at `now`, after the latest sample was fed.
    /// `alternative` says whether another waypoint could take this slot.
    pub fn judge(
        &mut self,
        now: Instant,
        s: &StrategySettings,
        other: &Reference,
        alternative: bool,
    ) -> Verdict {
        let age = now.saturating_duration_since(self.since);
        if self.flag_due > 0 {
            let at = if self.flag_due == 2 { 500 } else { 1500 };
            if age < Duration::from_millis(at) {
                return Verdict::Keep;
            }
            self.flag_due -= 1;
            return Verdict::Demote(self.why.clone().unwrap_or_default());
        }
        match self.role {
            Role::Probing => {
                if self.window.is_none() && age + s.park_test >= s.probation {
                    self.window = Some((now, other.conn_bytes));
                }
                if age < s.probation {
                    return Verdict::Keep;
                }
                match self.fault(s, other) {
                    Some(why) if alternative && !self.reprobed => Verdict::Destroy(why),
                    Some(why) => self.demote(now, why),
                    None => self.passed(now, s, other),
                }
            }
            Role::Backup if self.test.is_some() => self.test_end(now, s, other),
            Role::Active => match self.fault(s, other) {
                Some(why) => self.demote(now, why),
                None => Verdict::Keep,
            },
            Role::Backup => {
                if age < self.backoff {
                    return Verdict::Keep;
                }
                self.backoff = (self.backoff * 2).min(s.reprobe * 16);
                // Old loss figures would condemn the fresh probe at once.
                self.meter.loss = 0.0;
                self.window = None;
                self.reprobed = true;
                self.set_role(now, Role::Probing);
                Verdict::Probe
            }
        }
    }

    /// Passed its probation: tested without it when the connection moved
    /// enough, else in use.
    fn passed(&mut self, now: Instant, s: &StrategySettings, other: &Reference) -> Verdict {
        let with = self
            .window
            .take()
            .filter(|(_, b)| other.conn_bytes.saturating_sub(*b) >= PARK_MIN_BYTES)
            .map(|(t, b)| rate(t, b, now, other.conn_bytes));
        let alone = self.alone.take().filter(|a| *a >= ALONE_MIN_BPS);
        let Some(w) = with.filter(|_| s.park_gain > 0.0 && !self.tested) else {
            self.set_role(now, Role::Active);
            self.backoff = s.reprobe;
            return Verdict::Keep;
        };
        let compared = |a: f64| {
            format!(
                "{:.2} Mbit/s with it, {:.2} alone before it",
                w / 1e6,
                a / 1e6
            )
        };
        match alone {
            Some(a) if w >= a * HELPS => {
                self.set_role(now, Role::Active);
                self.backoff = s.reprobe;
                Verdict::Helps(compared(a))
            }
            Some(a) if w < a * (1.0 + s.park_gain) => {
                let why = format!("adds nothing: {}", compared(a));
                self.set_role(now, Role::Backup);
                self.why = Some(why.clone());
                Verdict::Park(why)
            }
            _ => {
                self.set_role(now, Role::Backup);
                self.test = Some(w);
                self.window = None;
                let evidence = alone.map_or_else(|| "no rate alone".to_owned(), compared);
                self.why = Some(format!("testing the connection without it ({evidence})"));
                Verdict::Test
            }
        }
    }

    /// The end of the park test: the connection's rate without the detour
    /// against the rate with it.
    fn test_end(&mut self, now: Instant, s: &StrategySettings, other: &Reference) -> Verdict {
        let age = now.saturating_duration_since(self.since);
        if age < PARK_SETTLE {
            return Verdict::Keep;
        }
        let Some((t, _)) = self.window else {
            self.window = Some((now, other.conn_bytes));
            return Verdict::Keep;
        };
        if now.saturating_duration_since(t) < s.park_test {
            return Verdict::Keep;
        }
        let with = self.test.take().unwrap_or(0.0);
        let without = self
            .window
            .take()
            .map_or(0.0, |(t, b)| rate(t, b, now, other.conn_bytes));
        if with >= without * (1.0 + s.park_gain) {
            self.set_role(now, Role::Active);
            self.backoff = s.reprobe;
            self.why = None;
            return Verdict::Resume;
        }
        let why = format!(
            "adds nothing: {:.2} Mbit/s with it, {:.2} without",
            with / 1e6,
            without / 1e6
        );
        self.set_role(now, Role::Backup);
        self.why = Some(why.clone());
        Verdict::Park(why)
    }

    fn demote(&mut self, now: Instant, why: String) -> Verdict {
        self.set_role(now, Role::Backup);
        self.why = Some(why.clone());
        Verdict::Demote(why)
    }

    fn set_role(&mut self, now: Instant, role: Role) {
        self.role = role;
        self.since = now;
        self.meter.bytes_in_role = 0;
    }
}

/// The destination prefix a score is kept for: /24 for IPv4, /48 for IPv6.
pub fn prefix_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

/// The reward of a detour that carried `detour` of a connection's `total`
/// bytes: its share doubled, capped at 1.
pub fn reward(detour: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    (2.0 * detour as f64 / total as f64).min(1.0)
}

/// The discounted record of one (waypoint, prefix).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Score {
    /// Discounted number of rewards.
    pub weight: f64,
    /// Discounted sum of rewards.
    pub sum: f64,
    /// Rewards ever recorded.
    pub count: u64,
}

impl Score {
    /// Discounted mean reward.
    pub fn mean(&self) -> Option<f64> {
        (self.weight > 1e-9).then(|| self.sum / self.weight)
    }
}

/// Waypoint name and prefix (`*` for the waypoint over every prefix).
type Key = (String, String);

/// Scores per waypoint and destination prefix, learned across connections.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scoreboard {
    scores: BTreeMap<Key, Score>,
    /// Records since the last [`Scoreboard::take_dirty`].
    dirty: bool,
}

/// Version line of the scoreboard file.
const FILE_HEADER: &str = "dcol-scores 1";

/// Entries kept at most (oldest-learned prefixes are not tracked; the
/// lowest-weight entries go first).
const MAX_ENTRIES: usize = 4096;

/// A line of a scoreboard file that was skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub why: ScoreLineError,
}

/// Why a scoreboard file is not read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScoreFileError {
    /// The first line is not the header (its first 40 characters).
    #[error("line 1: expected '{FILE_HEADER}', found '{found}'")]
    WrongHeader {
        /// What line 1 holds.
        found: String,
    },
    /// The file is empty.
    #[error("empty file")]
    Empty,
}

/// Why a line of a scoreboard file is skipped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScoreLineError {
    /// Not five tab-separated fields.
    #[error("{0} fields, expected 5")]
    Fields(usize),
    /// The waypoint or the prefix is empty.
    #[error("empty waypoint or prefix")]
    EmptyKey,
    /// A weight or sum that is not a finite non-negative number.
    #[error("{what} '{text}' is not a non-negative number")]
    NotANumber {
        /// Which field.
        what: &'static str,
        /// Its text.
        text: String,
    },
    /// More reward than weight.
    #[error("sum {sum} exceeds weight {weight}")]
    SumOverWeight {
        /// The sum read.
        sum: f64,
        /// The weight read.
        weight: f64,
    },
    /// The count is not an integer.
    #[error("count '{text}' is not an integer")]
    Count {
        /// Its text.
        text: String,
        /// The cause.
        #[source]
        source: std::num::ParseIntError,
    },
}

impl Scoreboard {
    /// Records the reward of a detour via `waypoint` to a destination in `prefix`.
    pub fn record(&mut self, waypoint: &str, prefix: &str, reward: f64, discount: f64) {
        let reward = if reward.is_finite() {
            reward.clamp(0.0, 1.0)
        } else {
            0.0
        };
        for p in [prefix, "*"] {
            let e = self
                .scores
                .entry((waypoint.to_owned(), p.to_owned()))
                .or_default();
            e.weight = e.weight * discount + 1.0;
            e.sum = e.sum * discount + reward;
            e.count = e.count.saturating_add(1);
        }
        self.dirty = true;
        if self.scores.len() > MAX_ENTRIES {
            self.trim();
        }
    }

    fn trim(&mut self) {
        let mut ws: Vec<(f64, Key)> = self
            .scores
            .iter()
            .filter(|(k, _)| k.1 != "*")
            .map(|(k, s)| (s.weight, k.clone()))
            .collect();
        ws.sort_by(|a, b| a.0.total_cmp(&b.0));
        let excess = self.scores.len().saturating_sub(MAX_ENTRIES);
        for (_, k) in ws.into_iter().take(excess) {
            self.scores.remove(&k);
        }
    }

    /// The score of `waypoint` for `prefix` (`*`: over every prefix).
    pub fn score(&self, waypoint: &str, prefix: &str) -> Option<Score> {
        self.scores
            .get(&(waypoint.to_owned(), prefix.to_owned()))
            .copied()
    }

    /// Every entry, for status: waypoint, prefix, score.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, &Score)> {
        self.scores
            .iter()
            .map(|((w, p), s)| (w.as_str(), p.as_str(), s))
    }

    /// The UCB index of `waypoint` for `prefix`: infinite when untried.
    pub fn index(&self, waypoint: &str, prefix: &str, explore: f64, total: f64) -> f64 {
        let own = self.score(waypoint, prefix).filter(|s| s.weight > 1e-9);
        let any = self.score(waypoint, "*").filter(|s| s.weight > 1e-9);
        let (mean, n) = match (own, any) {
            (Some(s), _) => (s.sum / s.weight, s.weight),
            (None, Some(s)) => (s.sum / s.weight, s.weight * 0.5),
            (None, None) => return f64::INFINITY,
        };
        mean + explore * ((total.max(1.0)).ln().max(0.0) / n).sqrt()
    }

    /// Orders `candidates` (waypoint names with the caller's index) best
    /// first for a destination in `prefix`. Ties keep the given order.
    pub fn rank(&self, candidates: &[(usize, &str)], prefix: &str, explore: f64) -> Vec<usize> {
        let total: f64 = candidates
            .iter()
            .filter_map(|(_, w)| {
                self.score(w, prefix)
                    .or_else(|| self.score(w, "*"))
                    .map(|s| s.weight)
            })
            .sum();
        let mut scored: Vec<(f64, usize, usize)> = candidates
            .iter()
            .enumerate()
            .map(|(pos, (i, w))| (self.index(w, prefix, explore, total), pos, *i))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().map(|(_, _, i)| i).collect()
    }

    /// Whether `waypoint` has no record for `prefix`.
    pub fn untried(&self, waypoint: &str, prefix: &str) -> bool {
        self.score(waypoint, prefix).is_none()
    }

    /// True once after any record: the caller should save the file.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Whether there are records since the last [`Scoreboard::take_dirty`]
    /// (without taking them).
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// The file form: a header line, then one line per entry:
    /// `waypoint<TAB>prefix<TAB>weight<TAB>sum<TAB>count`.
    pub fn to_file(&self) -> String {
        let mut out = String::from(FILE_HEADER);
        out.push('\n');
        for ((w, p), s) in &self.scores {
            let _ = writeln!(out, "{w}\t{p}\t{}\t{}\t{}", s.weight, s.sum, s.count);
        }
        out
    }

    /// Parses the file form. A wrong header rejects the whole file; a bad
    /// line is skipped and reported.
    pub fn from_file(text: &str) -> Result<(Scoreboard, Vec<BadLine>), ScoreFileError> {
        let mut lines = text.lines();
        match lines.next() {
            Some(h) if h.trim_end() == FILE_HEADER => {}
            Some(h) => {
                let found: String = h.chars().take(40).collect();
                return Err(ScoreFileError::WrongHeader { found });
            }
            None => return Err(ScoreFileError::Empty),
        }
        let mut board = Scoreboard::default();
        let mut bad = Vec::new();
        for (i, line) in lines.enumerate() {
            let n = i + 2;
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(line) {
                Ok((k, s)) => {
                    if board.scores.len() < MAX_ENTRIES {
                        board.scores.insert(k, s);
                    }
                }
                Err(why) => bad.push(BadLine { line: n, why }),
            }
        }
        Ok((board, bad))
    }
}

fn parse_line(line: &str) -> Result<(Key, Score), ScoreLineError> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() != 5 {
        return Err(ScoreLineError::Fields(f.len()));
    }
    if f[0].is_empty() || f[1].is_empty() {
        return Err(ScoreLineError::EmptyKey);
    }
    let num = |s: &str, what: &'static str| match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(ScoreLineError::NotANumber {
            what,
            text: s.to_owned(),
        }),
    };
    let weight = num(f[2], "weight")?;
    let sum = num(f[3], "sum")?;
    if sum > weight + 1e-6 {
        return Err(ScoreLineError::SumOverWeight { sum, weight });
    }
    let count = f[4]
        .parse::<u64>()
        .map_err(|source| ScoreLineError::Count {
            text: f[4].to_owned(),
            source,
        })?;
    Ok((
        (f[0].to_owned(), f[1].to_owned()),
        Score { weight, sum, count },
    ))
}

#[cfg(test)]
mod tests;
