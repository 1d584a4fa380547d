//! The client's use of the detour strategy ([`crate::client::strategy`]):
//! ranking waypoints for a connection, feeding per-subflow counters to each
//! detour's judge and turning verdicts into SET_FLAGS / SUBFLOW_DESTROY, and
//! scoring finished detours. Still pure: counters come in keyed by 4-tuple.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::{Action, Client, Conn, DetourState, Token};
use crate::client::strategy::{self, Meter, Role, Scoreboard, Tested, Verdict};
use crate::mptcp::{FourTuple, Sample};

/// Connections moving fewer bytes than this do not score their detours.
const MIN_SCORED_BYTES: u64 = 256 * 1024;

impl Client {
    /// Peers that may carry a detour of `conn` (not in `used`, not rejected
    /// by the strategy for it, not held down, not full for us, NAT, same address family), best
    /// first by the scoreboard for the server's prefix.
    pub(super) fn ranked_candidates(
        &self,
        now: Instant,
        conn: &Conn,
        used: &[usize],
    ) -> Vec<usize> {
        let remote = conn.remote;
        let cands: Vec<(usize, &str)> = self
            .peers
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                !used.contains(i)
                    && !conn.rejected.contains(i)
                    && !p.spec.vpn
                    && p.spec.address.is_ipv4() == remote.is_ipv4()
                    && p.spec.address.ip() != remote.ip()
                    && p.down_until.is_none_or(|t| t <= now)
                    && p.full_until.is_none_or(|t| t <= now)
                    && p.refused_until.is_none_or(|t| t <= now)
            })
            .map(|(i, p)| (i, p.spec.name.as_str()))
            .collect();
        let prefix = strategy::prefix_of(remote.ip());
        self.board
            .rank(&cands, &prefix, self.settings.strategy.explore)
    }

    /// A waypoint did not answer a detour request for connection `token`.
    pub(super) fn score_dead(&mut self, token: Token, peer: usize) {
        let Some(conn) = self.conns.get(&token) else {
            return;
        };
        let prefix = strategy::prefix_of(conn.remote.ip());
        let discount = self.settings.strategy.discount;
        self.board
            .record(&self.peers[peer].spec.name, &prefix, 0.0, discount);
    }

    /// Scores every detour of `token` not scored yet: a measured one by its
    /// share of the connection's bytes; one that was granted but whose subflow
    /// never came up (the path does not pass the join) with 0.
    pub(super) fn score_detours(&mut self, token: Token) {
        let n = self.conns.get(&token).map_or(0, |c| c.detours.len());
        for i in 0..n {
            self.score_detours_one(token, i);
        }
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let prefix = strategy::prefix_of(conn.remote.ip());
        let discount = self.settings.strategy.discount;
        // After the strategy destroyed a detour, the server may still count
        // that subflow against its limit and ignore a replacement's join:
        // that says nothing about the replacement's path.
        if !conn.rejected.is_empty() {
            return;
        }
        for d in conn.detours.iter_mut().filter(|d| !d.scored) {
            if d.state == DetourState::Connecting && d.established_at.is_none() {
                d.scored = true;
                self.board
                    .record(&self.peers[d.peer].spec.name, &prefix, 0.0, discount);
            }
        }
    }

    /// Holds back the SUBFLOW_CREATEs among `acts` whose connection is
    /// younger than [`strategy::StrategySettings::baseline`] and whose
    /// (waypoint, prefix) has no remembered outcome: the connection runs
    /// alone until then, measured, so that the detour's verdict can compare
    /// the rate with it against the rate without it (see the strategy's
    /// module doc). The rest pass through.
    pub(super) fn defer_creates(&mut self, now: Instant, acts: Vec<Action>) -> Vec<Action> {
        let s = &self.settings.strategy;
        if s.baseline.is_zero() || s.park_gain <= 0.0 {
            return acts;
        }
        let mut out = Vec::new();
        for a in acts {
            let due = match &a {
                Action::CreateSubflow { token, remote, .. } => {
                    self.baseline_due(now, *token, *remote)
                }
                _ => None,
            };
            match due {
                Some(t) if t > now => {
                    if let Action::CreateSubflow { token, .. } = &a {
                        if let Some(c) = self.conns.get_mut(token) {
                            c.held = Some(self.settings.strategy.baseline);
                        }
                    }
                    self.deferred.push((t, a));
                }
                _ => out.push(a),
            }
        }
        out
    }

    /// When a detour of `token` to `remote` is due, if it is to wait for
    /// the connection's rate alone.
    fn baseline_due(&mut self, now: Instant, token: Token, remote: SocketAddr) -> Option<Instant> {
        let conn = self.conns.get(&token)?;
        let at = conn.established_at? + self.settings.strategy.baseline;
        let peer = conn
            .detours
            .iter()
            .find(|d| d.live() && d.judge.is_none() && d.remote(&self.peers) == Some(remote))?
            .peer;
        let first = conn.detours.iter().all(|d| d.judge.is_none());
        let server = conn.remote;
        (first && self.parked_lately(now, peer, server).is_none()).then_some(at)
    }

    /// The held-back SUBFLOW_CREATEs now due whose detour still waits.
    pub(super) fn due_creates(&mut self, now: Instant) -> Vec<Action> {
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.deferred = wait;
        due.into_iter()
            .map(|(_, a)| a)
            .filter(|a| {
                let Action::CreateSubflow { token, remote, .. } = a else {
                    return false;
                };
                self.conns.get(token).is_some_and(|c| {
                    c.detours.iter().any(|d| {
                        d.state == DetourState::Connecting && d.remote(&self.peers) == Some(*remote)
                    })
                })
            })
            .collect()
    }

    /// The 4-tuples (local, remote) of every subflow the strategy measures:
    /// the direct subflow of each established connection with a detour
    /// (requested, held back or running), and the running detours.
    pub fn measured(&self) -> Vec<FourTuple> {
        let mut out = Vec::new();
        for conn in self.conns.values() {
            let mut any = conn.established_at.is_some() && conn.detours.iter().any(|d| d.live());
            for d in &conn.detours {
                if let (Some(_), Some(lp), Some(r)) =
                    (&d.judge, d.local_port, d.remote(&self.peers))
                {
                    if d.live() {
                        out.push((SocketAddr::new(d.local_ip(conn.local.ip()), lp), r));
                        any = true;
                    }
                }
            }
            if any {
                out.push((conn.local, conn.remote));
            }
        }
        out
    }

    /// Feeds one sampling round of subflow counters (keyed by local, remote)
    /// and returns what the verdicts ask for.
    pub fn on_samples(
        &mut self,
        now: Instant,
        wall_ms: u64,
        samples: &HashMap<FourTuple, Sample>,
    ) -> Vec<Action> {
        let strat = self.settings.strategy.clone();
        let tokens: Vec<Token> = self.conns.keys().copied().collect();
        let mut out = Vec::new();
        for token in tokens {
            let mut verdicts = Vec::new();
            {
                let peers = &self.peers;
                let Some(conn) = self.conns.get_mut(&token) else {
                    continue;
                };
                if let Some(s) = samples.get(&(conn.local, conn.remote)) {
                    conn.direct.feed(now, *s);
                }
                let conn_ip = conn.local.ip();
                let mut tuples = Vec::new();
                for (i, d) in conn.detours.iter_mut().enumerate() {
                    let (Some(lp), Some(r), true) = (d.local_port, d.remote(peers), d.live())
                    else {
                        continue;
                    };
                    let l = SocketAddr::new(d.local_ip(conn_ip), lp);
                    let Some(j) = d.judge.as_mut() else { continue };
                    if let Some(s) = samples.get(&(l, r)) {
                        j.meter.feed(now, *s);
                    }
                    tuples.push((i, l, r));
                }
                // The carrying subflows: (detour index or None for direct), meter.
                let carrying: Vec<(Option<usize>, Meter)> = conn
                    .detours
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| {
                        let j = d.judge.as_ref()?;
                        (d.live() && j.role != Role::Backup).then(|| (Some(i), j.meter.clone()))
                    })
                    .chain([(None, conn.direct.clone())])
                    .collect();
                let used = conn.live_peers();
                let alternative = !conn.join_refused
                    && conn.retries < super::MAX_RETRIES
                    && !self
                        .ranked_candidates(now, self.conns.get(&token).expect("present"), &used)
                        .is_empty();
                let conn = self.conns.get_mut(&token).expect("present");
                let all_bytes = conn_bytes(conn);
                for (i, l, r) in tuples {
                    let others = carrying.iter().filter(|(k, _)| *k != Some(i));
                    let other = strategy::Reference {
                        min_rtt: others.clone().filter_map(|(_, m)| m.min_rtt).min(),
                        loss: others
                            .clone()
                            .map(|(_, m)| m.loss)
                            .fold(f64::INFINITY, f64::min),
                        rate_bps: others.map(|(_, m)| m.rate_bps).fold(0.0, f64::max),
                        conn_bytes: all_bytes,
                    };
                    let j = conn.detours[i].judge.as_mut().expect("measured above");
                    let v = j.judge(now, &strat, &other, alternative);
                    if v != Verdict::Keep {
                        verdicts.push((i, l, r, v));
                    }
                }
            }
            for (i, local, remote, v) in verdicts {
                out.extend(self.apply_verdict(now, wall_ms, token, i, local, remote, v));
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_verdict(
        &mut self,
        now: Instant,
        wall_ms: u64,
        token: Token,
        i: usize,
        local: SocketAddr,
        remote: SocketAddr,
        v: Verdict,
    ) -> Vec<Action> {
        let name = |c: &Client, i: usize| -> String {
            c.conns
                .get(&token)
                .and_then(|conn| conn.detours.get(i))
                .map(|d| c.peers[d.peer].spec.name.clone())
                .unwrap_or_default()
        };
        match v {
            Verdict::Keep => Vec::new(),
            Verdict::Test | Verdict::Resume | Verdict::Park(_) | Verdict::Helps(_) => {
                self.remember_park(now, token, i, &v);
                if matches!(v, Verdict::Helps(_)) {
                    return Vec::new();
                }
                let backup = !matches!(v, Verdict::Resume);
                vec![Action::SetBackup {
                    token,
                    local,
                    remote,
                    backup,
                }]
            }
            Verdict::Demote(_) | Verdict::Probe => {
                let backup = matches!(v, Verdict::Demote(_));
                match &v {
                    Verdict::Demote(why) => log::info!(
                        "detour of {:#010x} via {} to backup: {why}",
                        token.0,
                        name(self, i)
                    ),
                    _ => log::debug!(
                        "detour of {:#010x} via {}: probing again",
                        token.0,
                        name(self, i)
                    ),
                }
                vec![Action::SetBackup {
                    token,
                    local,
                    remote,
                    backup,
                }]
            }
            Verdict::Destroy(why) => {
                log::info!(
                    "detour of {:#010x} via {} dropped: {why}",
                    token.0,
                    name(self, i)
                );
                self.score_detours_one(token, i);
                let mut out = vec![Action::DestroySubflow {
                    token,
                    local,
                    remote,
                }];
                let Some(conn) = self.conns.get_mut(&token) else {
                    return out;
                };
                conn.retries = conn.retries.saturating_add(1);
                let d = &mut conn.detours[i];
                d.state = DetourState::Failed(format!("strategy: {why}"));
                let peer = d.peer;
                let release = d.port.zip(d.lease);
                conn.rejected.push(peer);
                out.extend(self.release_lease(now, wall_ms, token, i, release));
                out.extend(self.add_detours(now, wall_ms, token));
                out
            }
        }
    }

    /// Logs a park test's step and remembers its outcome for the
    /// (waypoint, prefix): new detours through a parked one start parked,
    /// through one that added throughput skip the test.
    fn remember_park(&mut self, now: Instant, token: Token, i: usize, v: &Verdict) {
        let Some(conn) = self.conns.get(&token) else {
            return;
        };
        let Some(d) = conn.detours.get(i) else {
            return;
        };
        let key = (d.peer, strategy::prefix_of(conn.remote.ip()));
        let name = &self.peers[d.peer].spec.name;
        match v {
            Verdict::Test => log::info!(
                "detour of {:#010x} via {name}: {}",
                token.0,
                d.judge
                    .as_ref()
                    .and_then(|j| j.why.as_deref())
                    .unwrap_or("")
            ),
            Verdict::Resume | Verdict::Helps(_) => {
                let how = match v {
                    Verdict::Helps(how) => how.as_str(),
                    _ => "tested without it",
                };
                log::info!(
                    "detour of {:#010x} via {name} adds throughput ({how}): in use",
                    token.0
                );
                let until = now + self.settings.strategy.park_memory;
                self.parked.insert(key, (until, Tested::Adds));
            }
            Verdict::Park(why) => {
                log::info!("detour of {:#010x} via {name} parked: {why}", token.0);
                let until = now + self.settings.strategy.park_memory;
                self.parked
                    .insert(key, (until, Tested::AddsNothing(why.clone())));
            }
            _ => {}
        }
    }

    /// What the last park test of `peer` for `remote`'s prefix found, if it
    /// still holds.
    pub(super) fn parked_lately(
        &mut self,
        now: Instant,
        peer: usize,
        remote: SocketAddr,
    ) -> Option<Tested> {
        self.parked.retain(|_, (until, _)| *until > now);
        self.parked
            .get(&(peer, strategy::prefix_of(remote.ip())))
            .map(|(_, t)| t.clone())
    }

    fn score_detours_one(&mut self, token: Token, i: usize) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let total = conn_bytes(conn);
        let prefix = strategy::prefix_of(conn.remote.ip());
        let discount = self.settings.strategy.discount;
        let Some(d) = conn.detours.get_mut(i) else {
            return;
        };
        let Some(j) = &d.judge else { return };
        // A connection that moved next to nothing (a control channel) says
        // nothing about the path.
        if d.scored || total < MIN_SCORED_BYTES {
            return;
        }
        d.scored = true;
        let r = strategy::reward(j.meter.bytes, total);
        self.board
            .record(&self.peers[d.peer].spec.name, &prefix, r, discount);
    }

    /// The scoreboard (for status and saving).
    pub fn scoreboard(&self) -> &Scoreboard {
        &self.board
    }

    /// True once after the scoreboard changed: time to save it.
    pub fn scoreboard_dirty(&mut self) -> bool {
        self.board.take_dirty()
    }

    /// Whether the scoreboard changed since [`Client::scoreboard_dirty`]
    /// last said so (it stays so).
    pub fn scoreboard_changed(&self) -> bool {
        self.board.dirty()
    }

    /// Replaces the scoreboard (loaded from the state file at start).
    pub fn set_scoreboard(&mut self, board: Scoreboard) {
        self.board = board;
    }
}

/// Bytes a connection moved on its direct subflow and every measured detour.
fn conn_bytes(conn: &Conn) -> u64 {
    conn.detours
        .iter()
        .filter_map(|d| d.judge.as_ref())
        .fold(conn.direct.bytes, |a, j| a.saturating_add(j.meter.bytes))
}
