//! Detour requests and their answers: choosing and asking waypoints,
//! signing, retransmitting, renewing and releasing leases.

use super::*;

impl Client {
    pub(super) fn on_outcome(
        &mut self,
        now: Instant,
        wall_ms: u64,
        nonce: Nonce,
        p: Pending,
        outcome: Outcome,
    ) -> Vec<Action> {
        let renew = self.settings.renew_interval;
        let peers = &self.peers;
        let Some(conn) = self.conns.get_mut(&p.token) else {
            return Vec::new();
        };
        let local_ip = conn.local.ip();
        let token = conn.token;
        let Some(d) = conn.detours.get_mut(p.detour) else {
            return Vec::new();
        };
        match (p.kind, outcome) {
            (RequestKind::NatDetour { .. }, Outcome::Granted { port, .. }) => {
                if d.state != DetourState::Requesting {
                    return Vec::new();
                }
                d.port = Some(port);
                d.lease = Some(nonce);
                d.state = DetourState::Connecting;
                d.renew_due = Some(now + renew);
                let remote = d.remote(peers).expect("port set just above");
                let create = Action::CreateSubflow {
                    token,
                    local: local_ip,
                    local_id: DETOUR_LOCAL_ID,
                    remote,
                };
                self.defer_creates(now, vec![create])
            }
            (RequestKind::NatDetour { .. }, Outcome::Refused { reason }) => {
                d.state = DetourState::Failed(format!("refused: {reason}"));
                let peer = d.peer;
                self.tunnel_refused(now, wall_ms, (token, peer), reason)
            }
            (RequestKind::Renew { .. }, Outcome::Granted { .. }) => {
                d.misses = 0;
                Vec::new()
            }
            (
                RequestKind::Renew { .. },
                Outcome::Refused {
                    reason: RefusalReason::RateLimited,
                },
            ) => {
                // Not renewed yet, not lost: ask again in a second (the
                // lease runs for many renewal intervals).
                d.renew_due = Some(now + Duration::from_secs(1).min(renew));
                Vec::new()
            }
            (RequestKind::Renew { .. }, Outcome::Refused { reason }) => {
                self.lease_lost(now, wall_ms, (p.token, p.detour), reason)
            }
            (RequestKind::Release { .. }, _) => Vec::new(),
            (_, _) => Vec::new(),
        }
    }

    /// A new NAT tunnel through `peer` for connection `token` was refused:
    /// the waypoint is paused for new tunnels as the reason says, and the
    /// connection's slot goes to the next waypoint.
    fn tunnel_refused(
        &mut self,
        now: Instant,
        wall_ms: u64,
        (token, peer): (Token, usize),
        reason: RefusalReason,
    ) -> Vec<Action> {
        let p = &mut self.peers[peer];
        match reason {
            // Full for us for now: a short back-off, not a hold-down.
            RefusalReason::NoPortsLeft | RefusalReason::QuotaExceeded => {
                p.full_until = Some(now + FULL_BACKOFF);
            }
            RefusalReason::DonationUsedUp | RefusalReason::EvidenceFull => {
                p.refused_until = Some(now + USED_UP_HOLDDOWN);
            }
            // Over our rate there: ask it for no new tunnel for a moment
            // (hammering it would make it drop our address).
            RefusalReason::RateLimited => p.refused_until = Some(now + RATE_LIMITED_HOLDDOWN),
            _ => return Vec::new(),
        }
        self.add_detours(now, wall_ms, token)
    }

    /// A renewal refused (not for rate): the waypoint lost the lease
    /// (restart, revocation), so this subflow is dead; ask afresh unless the
    /// server is full.
    pub(super) fn lease_lost(
        &mut self,
        now: Instant,
        wall_ms: u64,
        (token, detour): (Token, usize),
        reason: RefusalReason,
    ) -> Vec<Action> {
        let peers = &self.peers;
        let Some(conn) = self.conns.get_mut(&token) else {
            return Vec::new();
        };
        let local_ip = conn.local.ip();
        let Some(d) = conn.detours.get_mut(detour) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let (Some(remote), Some(lp)) = (d.remote(peers), d.local_port) {
            out.push(Action::DestroySubflow {
                token,
                local: SocketAddr::new(local_ip, lp),
                remote,
            });
        }
        d.state = DetourState::Failed(format!("lease lost: {reason}"));
        let peer = d.peer;
        if reason == RefusalReason::DonationUsedUp {
            self.peers[peer].refused_until = Some(now + USED_UP_HOLDDOWN);
        }
        if reason == RefusalReason::UnknownLease && self.retry_allowed(token) {
            out.extend(self.request_detour(now, wall_ms, token, peer));
        }
        out
    }

    pub(super) fn add_detours(&mut self, now: Instant, wall_ms: u64, token: Token) -> Vec<Action> {
        let Some(conn) = self.conns.get(&token) else {
            return Vec::new();
        };
        if conn.join_refused || conn.remote.ip().is_loopback() || conn.gate != Gate::Open {
            return Vec::new();
        }
        let used = conn.live_peers();
        let want = usize::from(self.settings.max_detours).saturating_sub(used.len());
        let candidates: Vec<usize> = self.ranked_candidates(now, conn, &used);
        let vpn = self.add_vpn_detours(token, want);
        let want = want.saturating_sub(vpn.len());
        let mut out = self.defer_creates(now, vpn);
        for peer in candidates.into_iter().take(want) {
            out.extend(self.request_detour(now, wall_ms, token, peer));
        }
        out
    }

    pub(super) fn request_detour(
        &mut self,
        now: Instant,
        wall_ms: u64,
        token: Token,
        peer: usize,
    ) -> Vec<Action> {
        let Some(conn) = self.conns.get_mut(&token) else {
            return Vec::new();
        };
        conn.detours.push(Detour {
            peer,
            state: DetourState::Requesting,
            port: None,
            lease: None,
            local_port: None,
            setup: None,
            misses: 0,
            renew_due: None,
            established_at: None,
            vpn: None,
            judge: None,
            scored: false,
        });
        let idx = conn.detours.len() - 1;
        let kind = RequestKind::NatDetour {
            destination: conn.remote,
        };
        let timeout = self.settings.request_timeout;
        self.send_request(
            now,
            wall_ms,
            token,
            idx,
            kind,
            REQUEST_ATTEMPTS - 1,
            timeout,
            false,
        )
    }

    /// Signs and sends a request for detour `detour` of `token`; `rebound`:
    /// it repeats one the waypoint saw from another address.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_request(
        &mut self,
        now: Instant,
        wall_ms: u64,
        token: Token,
        detour: usize,
        kind: RequestKind,
        retries: u32,
        timeout: Duration,
        rebound: bool,
    ) -> Vec<Action> {
        let Some((peer, from)) = self
            .conns
            .get(&token)
            .and_then(|c| Some((c.detours.get(detour)?.peer, c.local.ip())))
        else {
            return Vec::new();
        };
        let to = self.peers[peer].spec.address;
        let (nonce, bytes) = self.sign_request(peer, from, wall_ms, kind.clone());
        self.pending.insert(
            nonce,
            Pending {
                token,
                detour,
                kind,
                from,
                to,
                bytes: bytes.clone(),
                sent_at: now,
                next_at: now + timeout,
                attempts: 0,
                max_attempts: retries,
                rebound,
            },
        );
        vec![Action::Send { from, to, bytes }]
    }

    /// A fresh nonce and the encoded request to `peer`, sent from `local`.
    pub(super) fn sign_request(
        &mut self,
        peer: usize,
        local: IpAddr,
        wall_ms: u64,
        kind: RequestKind,
    ) -> (Nonce, Vec<u8>) {
        let nonce = self.next_nonce();
        let body = RequestBody {
            waypoint: self.peers[peer].spec.name.clone(),
            timestamp_ms: wall_ms,
            nonce,
            source: self.source_for(peer, local),
            kind,
        };
        let req = Request::sign(self.cert.clone(), &self.key, body);
        (nonce, proto::encode(&Message::Request(req)))
    }

    pub(super) fn unanswered(&mut self, now: Instant, wall_ms: u64, p: Pending) -> Vec<Action> {
        let Some(peer) = self
            .conns
            .get(&p.token)
            .and_then(|c| c.detours.get(p.detour))
            .map(|d| d.peer)
        else {
            return Vec::new();
        };
        match p.kind {
            RequestKind::NatDetour { .. } => {
                if let Some(d) = self
                    .conns
                    .get_mut(&p.token)
                    .and_then(|c| c.detours.get_mut(p.detour))
                {
                    d.state = DetourState::Failed("waypoint did not answer".into());
                    d.scored = true;
                }
                self.peers[peer].down_until = Some(now + self.settings.holddown);
                // A dead waypoint scores nothing; its slot goes to the next one.
                self.score_dead(p.token, peer);
                self.add_detours(now, wall_ms, p.token)
            }
            RequestKind::Renew { .. } => {
                let misses = {
                    let Some(d) = self
                        .conns
                        .get_mut(&p.token)
                        .and_then(|c| c.detours.get_mut(p.detour))
                    else {
                        return Vec::new();
                    };
                    d.misses += 1;
                    d.misses
                };
                if misses >= self.settings.liveness_misses {
                    self.peer_lost(now, peer)
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    /// Releases detour `i`'s lease (`port`, `lease`), if it had one.
    pub(super) fn release_lease(
        &mut self,
        now: Instant,
        wall_ms: u64,
        token: Token,
        i: usize,
        release: Option<(u16, Nonce)>,
    ) -> Vec<Action> {
        let Some((port, lease)) = release else {
            return Vec::new();
        };
        let timeout = self.settings.request_timeout;
        self.send_request(
            now,
            wall_ms,
            token,
            i,
            RequestKind::Release { port, lease },
            1,
            timeout,
            false,
        )
    }

    /// Whether a connection may ask again for a detour it lost.
    pub(super) fn retry_allowed(&mut self, token: Token) -> bool {
        match self.conns.get_mut(&token) {
            Some(c) if !c.join_refused && c.retries < MAX_RETRIES => {
                c.retries += 1;
                true
            }
            _ => false,
        }
    }

    pub(super) fn next_nonce(&mut self) -> Nonce {
        self.nonce_counter = self.nonce_counter.wrapping_add(1);
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&self.nonce_prefix);
        n[8..].copy_from_slice(&self.nonce_counter.to_be_bytes());
        Nonce(n)
    }
}
