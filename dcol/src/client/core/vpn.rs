//! VPN waypoints in the client's state machine: one WireGuard tunnel per VPN
//! peer, asked for once (not per connection), renewed every `renew_interval`
//! (the renewal is the liveness probe, as for NAT leases), and used by every
//! connection: a VPN detour is a subflow from the tunnel address to the
//! server's own address, which policy routing sends through the tunnel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::{
    Action, Client, DatagramError, Detour, DetourState, Gate, RATE_LIMITED_HOLDDOWN,
    REQUEST_ATTEMPTS, USED_UP_HOLDDOWN,
};
use crate::mptcp::AddrId;
use crate::proto::{Nonce, Outcome, RefusalReason, RequestKind, Response};
use crate::trust::Roles;

/// Local address ids of VPN detours: one per tunnel address (RFC 8684 §3.2),
/// distinct from the NAT detours' id.
const VPN_LOCAL_ID_BASE: u8 = 2;

/// Where a VPN peer's tunnel stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum VpnState {
    /// No tunnel; ask at `retry_at` (`None`: now).
    #[default]
    Idle,
    /// Request sent.
    Requesting,
    /// The tunnel is up.
    Up {
        /// Our tunnel address.
        address: Ipv4Addr,
        /// Our IPv6 tunnel address.
        address6: Option<Ipv6Addr>,
        /// Nonce of the granting request: names the lease.
        lease: Nonce,
    },
}

/// A VPN peer's tunnel state.
#[derive(Debug, Clone, Default)]
pub struct VpnPeer {
    /// Where it stands.
    pub state: VpnState,
    /// Unanswered renewals in a row.
    misses: u32,
    renew_due: Option<Instant>,
    retry_at: Option<Instant>,
    /// Why the last attempt failed, for status.
    pub last_error: Option<String>,
}

/// A VPN request awaiting its answer.
#[derive(Debug)]
pub struct VpnPending {
    peer: usize,
    kind: RequestKind,
    to: SocketAddr,
    bytes: Vec<u8>,
    next_at: Instant,
    attempts: u32,
    max_attempts: u32,
    /// Sent again after a [`Outcome::WrongSource`]: not a second time.
    rebound: bool,
}

/// The unspecified address of `to`'s family: requests to VPN waypoints
/// leave from whatever address routing picks.
fn unspecified(to: SocketAddr) -> IpAddr {
    if to.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    }
}

/// How long to wait before asking a waypoint that refused with `reason`
/// for a tunnel again.
fn holddown_for(reason: RefusalReason, holddown: Duration) -> Duration {
    match reason {
        RefusalReason::DonationUsedUp | RefusalReason::EvidenceFull => USED_UP_HOLDDOWN,
        RefusalReason::RateLimited => RATE_LIMITED_HOLDDOWN,
        _ => holddown,
    }
}

impl Client {
    /// The tunnel state of peer `i`, if it is a VPN peer.
    pub fn vpn_state(&self, i: usize) -> Option<&VpnPeer> {
        self.peers.get(i)?.vpn.as_ref()
    }

    /// The daemon could not bring the tunnel to `peer` up: try again later.
    pub fn vpn_failed(&mut self, now: Instant, peer: usize, why: &str) {
        let holddown = self.settings.holddown;
        if let Some(v) = self.peers.get_mut(peer).and_then(|p| p.vpn.as_mut()) {
            v.state = VpnState::Idle;
            v.retry_at = Some(now + holddown);
            v.last_error = Some(why.to_owned());
        }
    }

    /// Sends a request to VPN peer `peer`; `rebound`: it repeats one the
    /// waypoint saw from another address.
    fn send_vpn(
        &mut self,
        now: Instant,
        wall_ms: u64,
        peer: usize,
        kind: RequestKind,
        attempts: u32,
        rebound: bool,
    ) -> Vec<Action> {
        let to = self.peers[peer].spec.address;
        let (nonce, bytes) = self.sign_request(peer, unspecified(to), wall_ms, kind.clone());
        let timeout = self.settings.request_timeout;
        self.vpn_pending.insert(
            nonce,
            VpnPending {
                peer,
                kind,
                to,
                bytes: bytes.clone(),
                next_at: now + timeout,
                attempts: 0,
                max_attempts: attempts,
                rebound,
            },
        );
        // Not tied to a connection: routing picks the source address.
        vec![Action::Send {
            from: unspecified(to),
            to,
            bytes,
        }]
    }

    /// VPN timers: first requests, retransmissions, renewals.
    pub(super) fn poll_vpn(&mut self, now: Instant, wall_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let due: Vec<Nonce> = self
            .vpn_pending
            .iter()
            .filter(|(_, p)| p.next_at <= now)
            .map(|(n, _)| *n)
            .collect();
        for nonce in due {
            let Some(p) = self.vpn_pending.get_mut(&nonce) else {
                continue;
            };
            if p.attempts < p.max_attempts {
                p.attempts += 1;
                p.next_at =
                    now + self.settings.request_timeout * 2u32.saturating_pow(p.attempts.min(16));
                out.push(Action::Send {
                    from: unspecified(p.to),
                    to: p.to,
                    bytes: p.bytes.clone(),
                });
                continue;
            }
            let p = self.vpn_pending.remove(&nonce).expect("looked up");
            out.extend(self.vpn_unanswered(now, p));
        }
        let renew = self.settings.renew_interval;
        for i in 0..self.peers.len() {
            let Some(v) = self.peers[i].vpn.as_mut() else {
                continue;
            };
            match v.state {
                VpnState::Idle if v.retry_at.is_none_or(|t| t <= now) => {
                    v.state = VpnState::Requesting;
                    v.retry_at = None;
                    out.extend(self.send_vpn(
                        now,
                        wall_ms,
                        i,
                        RequestKind::Vpn,
                        REQUEST_ATTEMPTS - 1,
                        false,
                    ));
                }
                VpnState::Up { lease, .. } if v.renew_due.is_some_and(|t| t <= now) => {
                    v.renew_due = Some(now + renew);
                    let kind = RequestKind::VpnRenew { lease };
                    out.extend(self.send_vpn(now, wall_ms, i, kind, 0, false));
                }
                _ => {}
            }
        }
        out
    }

    /// When [`Client::poll_vpn`] next has work: `now` for a tunnel to ask
    /// for at once.
    pub(super) fn vpn_next_timeout(&self, now: Instant) -> Option<Instant> {
        let p = self.vpn_pending.values().map(|p| p.next_at).min();
        let peers = self
            .peers
            .iter()
            .filter_map(|p| p.vpn.as_ref())
            .filter_map(|v| match v.state {
                VpnState::Idle => Some(v.retry_at.unwrap_or(now)),
                VpnState::Up { .. } => v.renew_due,
                VpnState::Requesting => None,
            });
        p.into_iter().chain(peers).min()
    }

    fn vpn_unanswered(&mut self, now: Instant, p: VpnPending) -> Vec<Action> {
        let holddown = self.settings.holddown;
        let misses_allowed = self.settings.liveness_misses;
        let Some(v) = self.peers[p.peer].vpn.as_mut() else {
            return Vec::new();
        };
        match p.kind {
            RequestKind::Vpn => {
                v.state = VpnState::Idle;
                v.retry_at = Some(now + holddown);
                v.last_error = Some("waypoint did not answer".into());
                self.peers[p.peer].down_until = Some(now + holddown);
                Vec::new()
            }
            RequestKind::VpnRenew { .. } => {
                v.misses += 1;
                if v.misses >= misses_allowed {
                    v.last_error = Some("waypoint stopped answering".into());
                    self.vpn_lost(now, p.peer, Some(now + holddown))
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    /// The tunnel to `peer` is gone: its detours fail, the tunnel goes down,
    /// a new one is asked for at `retry` (`None`: now).
    fn vpn_lost(&mut self, now: Instant, peer: usize, retry: Option<Instant>) -> Vec<Action> {
        let mut out = self.fail_detours_via(peer, "VPN tunnel lost");
        if retry.is_some() {
            self.peers[peer].down_until = retry;
        }
        if let Some(v) = self.peers[peer].vpn.as_mut() {
            if matches!(v.state, VpnState::Up { .. }) {
                out.push(Action::VpnDown { peer });
            }
            v.state = VpnState::Idle;
            v.retry_at = retry;
            v.misses = 0;
            v.renew_due = None;
        }
        let _ = now;
        out
    }

    pub(super) fn on_vpn_response(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: SocketAddr,
        resp: Response,
    ) -> Result<Vec<Action>, DatagramError> {
        let p = &self.vpn_pending[&resp.body.nonce];
        if p.to != from {
            return Err(DatagramError::WrongSender { from, to: p.to });
        }
        resp.verify(&self.root, &self.revocations, wall_ms / 1000)
            .map_err(|source| DatagramError::Untrusted { from, source })?;
        let peer = p.peer;
        if resp.cert.name != self.peers[peer].spec.name
            || !resp.cert.roles.contains(Roles::WAYPOINT)
        {
            let name = resp.cert.name.clone();
            return Err(DatagramError::NotTheVpnWaypoint { from, name });
        }
        let p = self
            .vpn_pending
            .remove(&resp.body.nonce)
            .expect("looked up");
        self.peers[peer].down_until = None;
        if let Outcome::WrongSource { observed } = resp.body.outcome {
            self.observed.insert((peer, unspecified(p.to)), observed);
            if !p.rebound {
                let retries = p.max_attempts.saturating_sub(p.attempts);
                return Ok(self.send_vpn(now, wall_ms, peer, p.kind, retries, true));
            }
            // Seen from another address each time: as if unanswered.
            let out = self.vpn_unanswered(now, p);
            if let Some(v) = self.peers[peer].vpn.as_mut() {
                v.last_error = Some(format!(
                    "waypoint sees us from changing addresses ({observed})"
                ));
            }
            return Ok(out);
        }
        let answer = (resp.body.nonce, resp.body.outcome);
        Ok(self.vpn_outcome(now, wall_ms, peer, p.kind, answer))
    }

    /// What the answer `resp` from `peer` to a request of `kind` changes.
    fn vpn_outcome(
        &mut self,
        now: Instant,
        wall_ms: u64,
        peer: usize,
        kind: RequestKind,
        (nonce, outcome): (Nonce, Outcome),
    ) -> Vec<Action> {
        let renew = self.settings.renew_interval;
        let holddown = self.settings.holddown;
        let endpoint_ip = self.peers[peer].spec.address.ip();
        let Some(v) = self.peers[peer].vpn.as_mut() else {
            return Vec::new();
        };
        match (kind, outcome) {
            (
                RequestKind::Vpn,
                Outcome::VpnGranted {
                    address,
                    address6,
                    wg_key,
                    port,
                    ..
                },
            ) => {
                if v.state != VpnState::Requesting {
                    return Vec::new();
                }
                v.state = VpnState::Up {
                    address,
                    address6,
                    lease: nonce,
                };
                v.renew_due = Some(now + renew);
                v.misses = 0;
                v.last_error = None;
                let mut out = vec![Action::VpnUp {
                    peer,
                    address,
                    address6,
                    wg_key,
                    endpoint: SocketAddr::new(endpoint_ip, port),
                }];
                out.extend(self.detour_all(now, wall_ms));
                out
            }
            (RequestKind::Vpn, Outcome::Refused { reason }) => {
                v.state = VpnState::Idle;
                v.retry_at = Some(now + holddown_for(reason, holddown));
                v.last_error = Some(format!("refused: {reason}"));
                Vec::new()
            }
            (RequestKind::VpnRenew { .. }, Outcome::VpnGranted { .. }) => {
                v.misses = 0;
                Vec::new()
            }
            (
                RequestKind::VpnRenew { .. },
                Outcome::Refused {
                    reason: RefusalReason::RateLimited,
                },
            ) => {
                // Not renewed yet, not lost: ask again in a second.
                v.renew_due = Some(now + Duration::from_secs(1).min(renew));
                Vec::new()
            }
            (RequestKind::VpnRenew { .. }, Outcome::Refused { reason }) => {
                v.last_error = Some(format!("lease lost: {reason}"));
                // The waypoint forgot us (restart): a fresh tunnel now, or
                // after the hold-down if we were revoked.
                let retry = (reason != RefusalReason::UnknownLease)
                    .then(|| now + holddown_for(reason, holddown));
                self.vpn_lost(now, peer, retry)
            }
            _ => Vec::new(),
        }
    }

    /// Detours for every established connection (a new tunnel is up).
    fn detour_all(&mut self, now: Instant, wall_ms: u64) -> Vec<Action> {
        let tokens: Vec<_> = self
            .conns
            .values()
            .filter(|c| c.established_at.is_some() && c.gate == Gate::Open && !c.join_refused)
            .map(|c| c.token)
            .collect();
        let mut out = Vec::new();
        for t in tokens {
            out.extend(self.add_detours(now, wall_ms, t));
        }
        out
    }

    /// VPN detours for connection `token`, at most `want`.
    pub(super) fn add_vpn_detours(
        &mut self,
        token: crate::mptcp::Token,
        want: usize,
    ) -> Vec<Action> {
        let Some(conn) = self.conns.get(&token) else {
            return Vec::new();
        };
        let remote = conn.remote;
        let used: Vec<usize> = conn
            .detours
            .iter()
            .filter(|d| d.live())
            .map(|d| d.peer)
            .collect();
        let mut picks = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            if picks.len() >= want || used.contains(&i) {
                continue;
            }
            if let Some(VpnPeer {
                state: VpnState::Up {
                    address, address6, ..
                },
                ..
            }) = &p.vpn
            {
                let local = match remote {
                    SocketAddr::V4(_) => Some(IpAddr::V4(*address)),
                    SocketAddr::V6(_) => address6.map(IpAddr::V6),
                };
                if let Some(local) = local {
                    picks.push((i, local));
                }
            }
        }
        let conn = self.conns.get_mut(&token).expect("looked up");
        let mut out = Vec::new();
        for (peer, local) in picks {
            conn.detours.push(Detour {
                peer,
                state: DetourState::Connecting,
                port: None,
                lease: None,
                local_port: None,
                setup: None,
                misses: 0,
                renew_due: None,
                established_at: None,
                vpn: Some((local, remote)),
                judge: None,
                scored: false,
            });
            out.push(Action::CreateSubflow {
                token,
                local,
                local_id: AddrId(VPN_LOCAL_ID_BASE.saturating_add(peer.min(250) as u8)),
                remote,
            });
        }
        out
    }

    /// Releases every VPN lease and takes the tunnels down (shutdown).
    pub(super) fn vpn_shutdown(&mut self, now: Instant, wall_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        for i in 0..self.peers.len() {
            if let Some(VpnPeer {
                state: VpnState::Up { lease, .. },
                ..
            }) = self.peers[i].vpn.clone()
            {
                let kind = RequestKind::VpnRelease { lease };
                out.extend(self.send_vpn(now, wall_ms, i, kind, 0, false));
                out.push(Action::VpnDown { peer: i });
            }
            if let Some(v) = self.peers[i].vpn.as_mut() {
                v.state = VpnState::Idle;
                v.retry_at = Some(now + self.settings.holddown);
            }
        }
        self.vpn_pending.clear();
        out
    }
}
