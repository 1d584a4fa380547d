//! The waypoint role, as a state machine that does no I/O.
//!
//! [`Waypoint::handle`] takes a datagram, its source and the time, checks it
//! (wire format, certificate, signature, freshness, replay, addressing, role,
//! destination policy, quota) and returns a [`Decision`]: the kernel change to make
//! (a NAT map element to add, refresh or remove) and the signed reply to send
//! after it succeeded. The daemon carries decisions out; if the kernel change
//! fails it calls [`Waypoint::abort`] and sends the refusal that returns instead.
//!
//! Anti-amplification: a reply is never longer than the datagram it answers;
//! where a signed refusal would be, nothing is sent.
//!
//! Idempotence: a request repeated with the same nonce (a retransmission) gets the
//! same reply bytes and no second port; the same nonce from another address or
//! with another body is refused as a replay.
//!
//! One exception to "no I/O": [`evidence::EvidenceLog`] appends the granted
//! requests to plain files (as `trust::files` reads and writes key files);
//! the record format and its checks in [`evidence`] are pure.

pub mod evidence;
pub mod leases;
pub mod policy;
pub mod vpn;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::proto::{
    self, Message, Nonce, Outcome, RefusalReason, Request, RequestKind, Response, ResponseBody,
};
use crate::routes::Routes;
use crate::trust::{Certificate, MemberId, PublicKey, Revocations, Roles, SecretKey, TrustError};
pub use leases::{Lease, LeaseError, LeaseTable};
pub use vpn::{VpnLease, VpnSettings, VpnTable};

/// At most this many remembered nonces (~200 bytes each: 3 MB on a router);
/// beyond it new requests are refused until old ones age out of the freshness
/// window. Reached only by more than ~270 valid signed requests per second
/// sustained over a whole window (2 × `max_skew`).
const MAX_SEEN: usize = 16_384;

/// The owner's settings for the waypoint role.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Inclusive port range for NAT tunnels.
    pub ports: (u16, u16),
    /// Lease length; the kernel element carries the same timeout.
    pub lease: Duration,
    /// Live tunnels one member may hold.
    pub max_per_member: u32,
    /// The owner's destination rules (allowed blocks, denied ports).
    pub destinations: policy::Rules,
    /// How far a request's timestamp may be from our clock.
    pub max_skew: Duration,
    /// VPN tunnels, when offered.
    pub vpn: Option<VpnSettings>,
}

/// What the daemon must do with a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send nothing (undecodable input, or a refusal that would amplify).
    Ignore {
        /// Why, for the log.
        reason: String,
    },
    /// Send `bytes` to `to`; no kernel change. `refused` says why when it is a refusal.
    Reply {
        /// Destination of the reply.
        to: SocketAddr,
        /// The encoded, signed response.
        bytes: Vec<u8>,
        /// The refusal reason (with detail for the log), or `None` for a repeat.
        refused: Option<String>,
    },
    /// Add a map element for `lease` with `timeout`, then send the grant.
    Install {
        /// The new lease.
        lease: Lease,
        /// Element timeout.
        timeout: Duration,
        /// Destination of the reply.
        to: SocketAddr,
        /// The encoded grant.
        bytes: Vec<u8>,
        /// Nonce of the request (for [`Waypoint::abort`]).
        nonce: Nonce,
    },
    /// Refresh the element of `lease` to `timeout`, then send the grant.
    Refresh {
        /// The renewed lease.
        lease: Lease,
        /// New element timeout.
        timeout: Duration,
        /// Destination of the reply.
        to: SocketAddr,
        /// The encoded grant.
        bytes: Vec<u8>,
    },
    /// Add (or update) the WireGuard peer of `lease`, then send the grant.
    VpnInstall {
        /// The lease.
        lease: VpnLease,
        /// A key of the same member to remove first (its key changed).
        replaced: Option<crate::trust::wg::WgKey>,
        /// Destination of the reply.
        to: SocketAddr,
        /// The encoded grant.
        bytes: Vec<u8>,
        /// Nonce of the request (for [`Waypoint::abort_vpn`]).
        nonce: Nonce,
    },
    /// The VPN lease was renewed: send the grant (no kernel change).
    VpnRefresh {
        /// The lease.
        lease: VpnLease,
        /// Destination of the reply.
        to: SocketAddr,
        /// The encoded grant.
        bytes: Vec<u8>,
    },
    /// Remove the WireGuard peer of `lease`, then send the reply.
    VpnRemove {
        /// The ended lease.
        lease: VpnLease,
        /// Destination of the reply.
        to: SocketAddr,
        /// The encoded confirmation.
        bytes: Vec<u8>,
    },
    /// Remove the element (and conntrack entries) of `lease`, then send the reply.
    Remove {
        /// The ended lease.
        lease: Lease,
        /// Destination of the reply.
        to: SocketAddr,
        /// The encoded confirmation.
        bytes: Vec<u8>,
    },
}

/// Counters for status.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Datagrams received.
    pub datagrams: u64,
    /// Grants (new, renewed and repeated).
    pub granted: u64,
    /// Refusals by reason name, plus `garbage` for undecodable input.
    pub refused: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct Seen {
    from: SocketAddr,
    signature: [u8; 64],
    /// The reply's body; re-signing it gives the same bytes (Ed25519 is deterministic).
    reply: ResponseBody,
    until: Instant,
}

/// The waypoint's protocol state.
#[derive(Debug)]
pub struct Waypoint {
    settings: Settings,
    cert: Certificate,
    key: SecretKey,
    root: PublicKey,
    revocations: Revocations,
    /// The router's routing state: what is the WAN, what is its own.
    routes: Routes,
    leases: LeaseTable,
    seen: HashMap<(MemberId, Nonce), Seen>,
    /// Insertion order of `seen` (its deadlines are monotonic), for cheap expiry.
    seen_order: VecDeque<(Instant, (MemberId, Nonce))>,
    /// Body of the last reply made, to remember it under its nonce.
    last_reply: Option<ResponseBody>,
    stats: Stats,
    vpn: Option<VpnTable>,
    /// VPN leases ended by revocation, handed out by [`Waypoint::expire_vpn`].
    vpn_ended: Vec<VpnLease>,
    /// Why new tunnels and renewals are refused for now (the monthly
    /// donation is used up), for the log.
    used_up: Option<String>,
}

impl Waypoint {
    /// A waypoint answering as `cert`/`key` for the collective `root`.
    /// `routes` is the router's routing state: only destinations routed to
    /// the WAN are served.
    pub fn new(
        settings: Settings,
        cert: Certificate,
        key: SecretKey,
        root: PublicKey,
        revocations: Revocations,
        routes: Routes,
    ) -> Self {
        let leases = LeaseTable::new(settings.ports, settings.max_per_member);
        let vpn = settings.vpn.clone().map(VpnTable::new);
        Waypoint {
            vpn,
            vpn_ended: Vec::new(),
            used_up: None,
            settings,
            cert,
            key,
            root,
            revocations,
            routes,
            leases,
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            last_reply: None,
            stats: Stats::default(),
        }
    }

    /// Replaces the routing state (addresses or routes changed). Running
    /// leases are not re-checked here: the kernel drops their packets if
    /// their destination no longer leaves by the WAN.
    pub fn set_routes(&mut self, routes: Routes) {
        self.routes = routes;
    }

    /// Handles one datagram from `from`. `wall_ms` is Unix time in milliseconds.
    pub fn handle(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: SocketAddr,
        dgram: &[u8],
    ) -> Decision {
        self.stats.datagrams = self.stats.datagrams.wrapping_add(1);
        let req = match proto::decode(dgram) {
            Ok(Message::Request(r)) => r,
            Ok(Message::Response(_)) => return self.ignore("a response sent to the waypoint port"),
            Err(e) => {
                return self.ignore(&format!(
                    "undecodable datagram ({} bytes): {e}",
                    dgram.len()
                ))
            }
        };
        let nonce = req.body.nonce;
        let limit = dgram.len();
        let refuse = |wp: &mut Self, reason: RefusalReason, detail: String| {
            wp.refusal(wall_ms, from, nonce, reason, detail, limit)
        };
        if let Err(e) = req.verify(&self.root, &self.revocations, wall_ms / 1000) {
            let reason = match e {
                TrustError::Revoked { .. } => RefusalReason::Revoked,
                _ => RefusalReason::BadCertificate,
            };
            return refuse(self, reason, format!("{e}"));
        }
        let member = req.cert.member;
        let skew = self.settings.max_skew.as_millis() as u64;
        if req.body.timestamp_ms.abs_diff(wall_ms) > skew {
            let d = format!(
                "timestamp {} ms off our clock (limit {skew} ms)",
                i128::from(req.body.timestamp_ms) - i128::from(wall_ms)
            );
            return refuse(self, RefusalReason::Stale, d);
        }
        self.forget_seen(now);
        if let Some(s) = self.seen.get(&(member, nonce)) {
            if s.from == from && s.signature == req.signature.0 {
                let bytes = self.sign(s.reply.clone());
                self.count_grant();
                return Decision::Reply {
                    to: from,
                    bytes,
                    refused: None,
                };
            }
            let d = format!("nonce of {} already used from {}", req.cert.name, s.from);
            return refuse(self, RefusalReason::Replay, d);
        }
        if !proto::addressed_to(&req.body, &self.cert) {
            return refuse(
                self,
                RefusalReason::WrongWaypoint,
                "addressed to another waypoint".into(),
            );
        }
        if !req.cert.roles.contains(Roles::CLIENT) {
            return refuse(
                self,
                RefusalReason::NotAWaypoint,
                "member lacks the client role".into(),
            );
        }
        if self.seen.len() >= MAX_SEEN {
            return refuse(self, RefusalReason::Internal, "replay cache full".into());
        }
        let decision = self.decide(now, wall_ms, from, &req, limit);
        let remember = matches!(
            decision,
            Decision::Install { .. }
                | Decision::Refresh { .. }
                | Decision::Remove { .. }
                | Decision::VpnInstall { .. }
                | Decision::VpnRefresh { .. }
                | Decision::VpnRemove { .. }
        );
        if let Some(reply) = self.last_reply.take().filter(|_| remember) {
            let until = now + self.settings.max_skew * 2;
            let seen = Seen {
                from,
                signature: req.signature.0,
                reply,
                until,
            };
            self.seen.insert((member, nonce), seen);
            self.seen_order.push_back((until, (member, nonce)));
        }
        decision
    }

    fn decide(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: SocketAddr,
        req: &Request,
        limit: usize,
    ) -> Decision {
        let client = from.ip();
        let nonce = req.body.nonce;
        let member = req.cert.member;
        let lease_len = self.settings.lease;
        let releases = matches!(
            req.body.kind,
            RequestKind::Release { .. } | RequestKind::VpnRelease { .. }
        );
        if let Some(why) = self.used_up.as_ref().filter(|_| !releases) {
            let d = why.clone();
            return self.refusal(
                wall_ms,
                from,
                nonce,
                RefusalReason::DonationUsedUp,
                d,
                limit,
            );
        }
        match req.body.kind {
            RequestKind::NatDetour { destination } => {
                if let Err(why) = policy::check_destination(
                    destination,
                    &self.settings.destinations,
                    &self.routes,
                ) {
                    let d = format!("{destination}: {why}");
                    return self.refusal(
                        wall_ms,
                        from,
                        nonce,
                        RefusalReason::DestinationNotAllowed,
                        d,
                        limit,
                    );
                }
                match self.leases.allocate(
                    now,
                    nonce,
                    member,
                    &req.cert.name,
                    client,
                    destination,
                    lease_len,
                ) {
                    Ok(lease) => {
                        let bytes = self.grant_bytes(wall_ms, nonce, lease.port, client);
                        if bytes.len() > limit {
                            self.leases.end(now, lease.client, lease.port);
                            return self.ignore("grant would be larger than the request");
                        }
                        self.count_grant();
                        Decision::Install {
                            lease,
                            timeout: lease_len,
                            to: from,
                            bytes,
                            nonce,
                        }
                    }
                    Err(e) => {
                        let (reason, d) = match e {
                            LeaseError::QuotaExceeded => (
                                RefusalReason::QuotaExceeded,
                                format!(
                                    "{} holds {} tunnels",
                                    req.cert.name, self.settings.max_per_member
                                ),
                            ),
                            LeaseError::NoPortsLeft => {
                                (RefusalReason::NoPortsLeft, "port range exhausted".into())
                            }
                        };
                        self.refusal(wall_ms, from, nonce, reason, d, limit)
                    }
                }
            }
            RequestKind::Renew {
                port,
                destination,
                lease,
            } => {
                let owned = self.leases.lookup(client, port).is_some_and(|l| {
                    l.member == member && l.destination == destination && l.nonce == lease
                });
                if !owned {
                    let d = format!("no lease on port {port} for {client}");
                    return self.refusal(
                        wall_ms,
                        from,
                        nonce,
                        RefusalReason::UnknownLease,
                        d,
                        limit,
                    );
                }
                let lease = self.leases.renew(client, port, now + lease_len).cloned();
                let lease = lease.expect("lease checked just above");
                let bytes = self.grant_bytes(wall_ms, nonce, port, client);
                self.fit(bytes, limit, |bytes| Decision::Refresh {
                    lease,
                    timeout: lease_len,
                    to: from,
                    bytes,
                })
            }
            RequestKind::Vpn | RequestKind::VpnRenew { .. } | RequestKind::VpnRelease { .. } => {
                self.decide_vpn(now, wall_ms, from, req, limit)
            }
            RequestKind::Release { port, lease } => {
                let owned = self
                    .leases
                    .lookup(client, port)
                    .is_some_and(|l| l.member == member && l.nonce == lease);
                if !owned {
                    let d = format!("no lease on port {port} for {client}");
                    return self.refusal(
                        wall_ms,
                        from,
                        nonce,
                        RefusalReason::UnknownLease,
                        d,
                        limit,
                    );
                }
                let lease = self
                    .leases
                    .end(now, client, port)
                    .expect("lease checked just above");
                let bytes = self.response_bytes(
                    wall_ms,
                    nonce,
                    Outcome::Granted {
                        port,
                        lease_secs: 0,
                        observed: client,
                    },
                );
                self.fit(bytes, limit, |bytes| Decision::Remove {
                    lease,
                    to: from,
                    bytes,
                })
            }
        }
    }

    fn decide_vpn(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: SocketAddr,
        req: &Request,
        limit: usize,
    ) -> Decision {
        let nonce = req.body.nonce;
        let member = req.cert.member;
        let lease_len = self.settings.lease;
        let Some(table) = self.vpn.as_mut() else {
            let d = "this waypoint has no vpn_subnet".to_owned();
            return self.refusal(wall_ms, from, nonce, RefusalReason::NoVpn, d, limit);
        };
        match req.body.kind {
            RequestKind::Vpn => {
                let Some(wg_key) = req.cert.wg_key else {
                    let d = format!("{}'s certificate", req.cert.name);
                    return self.refusal(
                        wall_ms,
                        from,
                        nonce,
                        RefusalReason::NoWireGuardKey,
                        d,
                        limit,
                    );
                };
                let Some((lease, replaced)) = table.grant(
                    now,
                    nonce,
                    member,
                    &req.cert.name,
                    wg_key,
                    from.ip(),
                    lease_len,
                ) else {
                    let d = "no free address".to_owned();
                    return self.refusal(
                        wall_ms,
                        from,
                        nonce,
                        RefusalReason::NoAddressesLeft,
                        d,
                        limit,
                    );
                };
                let bytes = self.vpn_grant_bytes(wall_ms, nonce, &lease, lease_len);
                self.fit(bytes, limit, |bytes| Decision::VpnInstall {
                    lease,
                    replaced,
                    to: from,
                    bytes,
                    nonce,
                })
            }
            RequestKind::VpnRenew { lease } | RequestKind::VpnRelease { lease } => {
                if table.lookup(member, lease).is_none() {
                    let d = format!("no VPN lease of {}", req.cert.name);
                    return self.refusal(
                        wall_ms,
                        from,
                        nonce,
                        RefusalReason::UnknownLease,
                        d,
                        limit,
                    );
                }
                if matches!(req.body.kind, RequestKind::VpnRenew { .. }) {
                    let l = table
                        .renew(member, now + lease_len)
                        .cloned()
                        .expect("looked up");
                    let bytes = self.vpn_grant_bytes(wall_ms, nonce, &l, lease_len);
                    self.fit(bytes, limit, |bytes| Decision::VpnRefresh {
                        lease: l,
                        to: from,
                        bytes,
                    })
                } else {
                    let l = table.end(member).expect("looked up");
                    let bytes = self.vpn_grant_bytes(wall_ms, nonce, &l, Duration::ZERO);
                    self.fit(bytes, limit, |bytes| Decision::VpnRemove {
                        lease: l,
                        to: from,
                        bytes,
                    })
                }
            }
            _ => unreachable!("only VPN requests come here"),
        }
    }

    fn vpn_grant_bytes(
        &mut self,
        wall_ms: u64,
        nonce: Nonce,
        l: &VpnLease,
        len: Duration,
    ) -> Vec<u8> {
        let (wg_key, port) = self
            .vpn
            .as_ref()
            .map(|t| (t.settings().wg_key, t.settings().port))
            .unwrap_or_default();
        self.response_bytes(
            wall_ms,
            nonce,
            Outcome::VpnGranted {
                address: l.address,
                address6: l.address6,
                wg_key,
                port,
                lease_secs: u32::try_from(len.as_secs()).unwrap_or(u32::MAX),
            },
        )
    }

    /// Undoes a [`Decision::VpnInstall`] whose peer could not be added and
    /// returns the refusal to send instead.
    pub fn abort_vpn(
        &mut self,
        wall_ms: u64,
        lease: &VpnLease,
        to: SocketAddr,
        nonce: Nonce,
        limit: usize,
        why: &str,
    ) -> Decision {
        if let Some(t) = self.vpn.as_mut() {
            t.end(lease.member);
        }
        self.seen.remove(&(lease.member, nonce));
        self.stats.granted = self.stats.granted.saturating_sub(1);
        self.refusal(
            wall_ms,
            to,
            nonce,
            RefusalReason::Internal,
            why.to_owned(),
            limit,
        )
    }

    /// VPN leases that expired by `now` or were revoked: the daemon removes
    /// their WireGuard peers.
    pub fn expire_vpn(&mut self, now: Instant) -> Vec<VpnLease> {
        let mut out = std::mem::take(&mut self.vpn_ended);
        if let Some(t) = self.vpn.as_mut() {
            out.extend(t.expire(now));
        }
        out
    }

    /// The live VPN leases.
    pub fn vpn_leases(&self) -> impl Iterator<Item = &VpnLease> {
        self.vpn.iter().flat_map(|t| t.iter())
    }

    /// The VPN settings, when VPN tunnels are offered.
    pub fn vpn_settings(&self) -> Option<&VpnSettings> {
        self.vpn.as_ref().map(|t| t.settings())
    }

    /// Undoes an [`Decision::Install`] whose kernel change failed and returns the
    /// refusal to send to `to` instead (never longer than the grant it replaces).
    #[allow(clippy::too_many_arguments)]
    pub fn abort(
        &mut self,
        now: Instant,
        wall_ms: u64,
        lease: &Lease,
        to: SocketAddr,
        nonce: Nonce,
        limit: usize,
        why: &str,
    ) -> Decision {
        self.leases.end(now, lease.client, lease.port);
        self.seen.remove(&(lease.member, nonce));
        self.stats.granted = self.stats.granted.saturating_sub(1);
        self.refusal(
            wall_ms,
            to,
            nonce,
            RefusalReason::Internal,
            why.to_owned(),
            limit,
        )
    }

    /// Ends leases that expired by `now`; the daemon removes their elements and
    /// conntrack entries.
    pub fn expire(&mut self, now: Instant) -> Vec<Lease> {
        self.leases.expire(now)
    }

    /// Applies a changed configuration without dropping live tunnels: the
    /// new lease length, caps and allow list apply to requests from now on;
    /// members newly in `revocations` lose their leases now (returned, for
    /// the daemon to remove). The port range cannot change here (the caller
    /// restarts the role for that).
    pub fn reconfigure(
        &mut self,
        now: Instant,
        settings: Settings,
        cert: Certificate,
        key: SecretKey,
        revocations: Revocations,
    ) -> Vec<Lease> {
        debug_assert_eq!(settings.ports, self.settings.ports);
        self.leases.set_max_per_member(settings.max_per_member);
        self.settings = settings;
        self.cert = cert;
        self.key = key;
        let members: Vec<MemberId> = self.leases.iter().map(|l| l.member).collect();
        self.revocations = revocations;
        let mut ended = Vec::new();
        for m in members {
            if self.revocations.is_revoked(&m) {
                ended.extend(self.leases.end_member(now, m));
            }
        }
        let vpn_members: Vec<MemberId> = self.vpn_leases().map(|l| l.member).collect();
        for m in vpn_members {
            if self.revocations.is_revoked(&m) {
                if let Some(l) = self.vpn.as_mut().and_then(|t| t.end(m)) {
                    self.vpn_ended.push(l);
                }
            }
        }
        ended
    }

    /// Revokes a member at run time: its leases end now.
    pub fn revoke(&mut self, now: Instant, member: MemberId) -> Vec<Lease> {
        self.revocations.insert(member);
        if let Some(l) = self.vpn.as_mut().and_then(|t| t.end(member)) {
            self.vpn_ended.push(l);
        }
        self.leases.end_member(now, member)
    }

    /// Refuses new tunnels and renewals (releases still work) while `why` is
    /// set: the owner's monthly donation is used up. Running leases are left
    /// to end at their next renewal; the kernel's quota already stops their
    /// traffic.
    pub fn set_used_up(&mut self, why: Option<String>) {
        self.used_up = why;
    }

    /// Why new tunnels are refused for now, if they are.
    pub fn used_up(&self) -> Option<&str> {
        self.used_up.as_deref()
    }

    /// When [`Waypoint::expire`] next has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        let vpn = self.vpn.as_ref().and_then(|t| t.next_expiry());
        [self.leases.next_expiry(), vpn].into_iter().flatten().min()
    }

    /// The live leases.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.iter()
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn forget_seen(&mut self, now: Instant) {
        while let Some((until, key)) = self.seen_order.front().copied() {
            if until > now {
                break;
            }
            self.seen_order.pop_front();
            if self.seen.get(&key).is_some_and(|s| s.until <= now) {
                self.seen.remove(&key);
            }
        }
    }

    fn count_grant(&mut self) {
        self.stats.granted = self.stats.granted.wrapping_add(1);
    }

    fn ignore(&mut self, reason: &str) -> Decision {
        let c = self.stats.refused.entry("garbage".to_owned()).or_default();
        *c = c.wrapping_add(1);
        Decision::Ignore {
            reason: reason.to_owned(),
        }
    }

    fn fit(
        &mut self,
        bytes: Vec<u8>,
        limit: usize,
        make: impl FnOnce(Vec<u8>) -> Decision,
    ) -> Decision {
        if bytes.len() > limit {
            return self.ignore("reply would be larger than the request");
        }
        self.count_grant();
        make(bytes)
    }

    fn refusal(
        &mut self,
        wall_ms: u64,
        to: SocketAddr,
        nonce: Nonce,
        reason: RefusalReason,
        detail: String,
        limit: usize,
    ) -> Decision {
        let c = self.stats.refused.entry(format!("{reason:?}")).or_default();
        *c = c.wrapping_add(1);
        let bytes = self.response_bytes(wall_ms, nonce, Outcome::Refused { reason });
        let refused = Some(format!("{reason}: {detail}"));
        if bytes.len() > limit {
            return Decision::Ignore {
                reason: format!("{reason}: {detail} (not answered: reply would amplify)"),
            };
        }
        Decision::Reply { to, bytes, refused }
    }

    fn grant_bytes(&mut self, wall_ms: u64, nonce: Nonce, port: u16, observed: IpAddr) -> Vec<u8> {
        let lease_secs = u32::try_from(self.settings.lease.as_secs()).unwrap_or(u32::MAX);
        self.response_bytes(
            wall_ms,
            nonce,
            Outcome::Granted {
                port,
                lease_secs,
                observed,
            },
        )
    }

    fn response_bytes(&mut self, wall_ms: u64, nonce: Nonce, outcome: Outcome) -> Vec<u8> {
        let body = ResponseBody {
            nonce,
            timestamp_ms: wall_ms,
            outcome,
        };
        self.last_reply = Some(body.clone());
        self.sign(body)
    }

    fn sign(&self, body: ResponseBody) -> Vec<u8> {
        let resp = Response::sign(self.cert.clone(), &self.key, body);
        proto::encode(&Message::Response(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, cert, cert_by, nat, request, T0};

    const MS: u64 = T0 * 1000;

    fn from() -> SocketAddr {
        "10.0.1.2:50000".parse().unwrap()
    }

    fn waypoint() -> Waypoint {
        let settings = Settings {
            ports: (40000, 40009),
            lease: Duration::from_secs(60),
            max_per_member: 3,
            destinations: policy::Rules {
                allow: vec!["10.0.0.0/8".parse().unwrap()],
                deny_ports: vec!["25".parse().unwrap()],
            },
            max_skew: Duration::from_secs(30),
            vpn: Some(VpnSettings {
                subnet: "10.200.7.0/24".parse().unwrap(),
                subnet6: None,
                port: 51820,
                wg_key: [5; 32],
            }),
        };
        let own = vec!["10.0.6.2".parse().unwrap()];
        let me = cert("alice", 2, Roles::CLIENT | Roles::WAYPOINT);
        Waypoint::new(
            settings,
            me,
            testutil::key(2),
            testutil::root_pub(),
            Revocations::default(),
            Routes::all_wan(own),
        )
    }

    #[test]
    fn vpn_grant_renew_release_and_refusals() {
        use crate::trust::wg;
        let mut w = waypoint();
        let t = Instant::now();
        let vpn = |c: &Certificate, seed: u8, nonce: u8, kind: RequestKind| {
            request(c, seed, "alice", nonce, MS, kind)
        };
        // bob's certificate carries no WireGuard key.
        let d = w.handle(t, MS, from(), &vpn(&bob(), 3, 1, RequestKind::Vpn));
        assert_eq!(refusal(&d), RefusalReason::NoWireGuardKey);
        let k = testutil::key(4);
        let carol = Certificate::issue(
            &testutil::root(),
            "carol",
            k.public(),
            Some(wg::public(&wg::secret(&k))),
            T0 - 86_400,
            T0 + 86_400,
            Roles::CLIENT,
        )
        .unwrap();
        let d = w.handle(t, MS, from(), &vpn(&carol, 4, 2, RequestKind::Vpn));
        let Decision::VpnInstall { lease, bytes, .. } = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            lease.address,
            "10.200.7.2".parse::<std::net::Ipv4Addr>().unwrap()
        );
        assert_eq!(Some(lease.wg_key), carol.wg_key);
        assert!(matches!(
            outcome(&bytes),
            Outcome::VpnGranted { port: 51820, wg_key, .. } if wg_key == [5; 32]
        ));
        let renew = |lease: u8| RequestKind::VpnRenew {
            lease: Nonce([lease; 16]),
        };
        let d = w.handle(t, MS, from(), &vpn(&carol, 4, 3, renew(2)));
        assert!(matches!(d, Decision::VpnRefresh { .. }), "{d:?}");
        let d = w.handle(t, MS, from(), &vpn(&carol, 4, 4, renew(9)));
        assert_eq!(refusal(&d), RefusalReason::UnknownLease);
        // Revocation ends the tunnel; the daemon learns it from expire_vpn.
        w.revoke(t, carol.member);
        let ended = w.expire_vpn(t);
        assert_eq!(ended.len(), 1);
        assert_eq!(w.vpn_leases().count(), 0);
        // Expiry too.
        let mut w = waypoint();
        let _ = w.handle(t, MS, from(), &vpn(&carol, 4, 5, RequestKind::Vpn));
        assert!(w.expire_vpn(t + Duration::from_secs(59)).is_empty());
        assert_eq!(w.expire_vpn(t + Duration::from_secs(60)).len(), 1);
    }

    fn bob() -> Certificate {
        cert("bob", 3, Roles::CLIENT)
    }

    fn outcome(bytes: &[u8]) -> Outcome {
        match proto::decode(bytes) {
            Ok(Message::Response(r)) => {
                r.verify(&testutil::root_pub(), &Revocations::default(), T0)
                    .expect("signed by alice");
                r.body.outcome
            }
            other => panic!("not a response: {other:?}"),
        }
    }

    fn refusal(d: &Decision) -> RefusalReason {
        match d {
            Decision::Reply {
                bytes,
                refused: Some(_),
                ..
            } => match outcome(bytes) {
                Outcome::Refused { reason } => reason,
                o => panic!("{o:?}"),
            },
            d => panic!("expected a refusal, got {d:?}"),
        }
    }

    #[test]
    fn grants_once_and_repeats_the_same_grant() {
        let mut w = waypoint();
        let t = Instant::now();
        let req = request(&bob(), 3, "alice", 1, MS, nat("10.0.3.2:5201"));
        let d = w.handle(t, MS, from(), &req);
        let (lease, bytes) = match d {
            Decision::Install {
                lease,
                bytes,
                timeout,
                ..
            } => {
                assert_eq!(timeout, Duration::from_secs(60));
                (lease, bytes)
            }
            d => panic!("{d:?}"),
        };
        assert!(bytes.len() <= req.len(), "amplification");
        assert_eq!(lease.client, from().ip());
        assert_eq!(lease.destination, "10.0.3.2:5201".parse().unwrap());
        assert!(matches!(outcome(&bytes), Outcome::Granted { port, .. } if port == lease.port));
        // A retransmission gets the same bytes and no second port.
        match w.handle(t + Duration::from_millis(300), MS + 300, from(), &req) {
            Decision::Reply {
                bytes: again,
                refused: None,
                ..
            } => assert_eq!(again, bytes),
            d => panic!("{d:?}"),
        }
        assert_eq!(w.leases().count(), 1);
        // The same request from another address is a replay.
        let other: SocketAddr = "10.9.9.9:1".parse().unwrap();
        assert_eq!(
            refusal(&w.handle(t, MS, other, &req)),
            RefusalReason::Replay
        );
        assert_eq!(w.leases().count(), 1);
    }

    #[test]
    fn refuses_bad_members_and_requests() {
        let mut w = waypoint();
        let t = Instant::now();
        let dst = "10.0.3.2:5201";
        // Another collective.
        let evil_root = testutil::key(66);
        let mallory = cert_by(&evil_root, "mallory", 7, Roles::CLIENT, T0 - 10, T0 + 10);
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&mallory, 7, "alice", 1, MS, nat(dst)),
        );
        assert_eq!(refusal(&d), RefusalReason::BadCertificate);
        // Expired.
        let old = cert_by(
            &testutil::root(),
            "bob",
            3,
            Roles::CLIENT,
            T0 - 100,
            T0 - 10,
        );
        let d = w.handle(t, MS, from(), &request(&old, 3, "alice", 2, MS, nat(dst)));
        assert_eq!(refusal(&d), RefusalReason::BadCertificate);
        // Signed by a key that is not the certificate's.
        let d = w.handle(t, MS, from(), &request(&bob(), 9, "alice", 3, MS, nat(dst)));
        assert_eq!(refusal(&d), RefusalReason::BadCertificate);
        // Stale and future timestamps.
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", 4, MS - 31_000, nat(dst)),
        );
        assert_eq!(refusal(&d), RefusalReason::Stale);
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", 5, MS + 31_000, nat(dst)),
        );
        assert_eq!(refusal(&d), RefusalReason::Stale);
        // Addressed to another waypoint.
        let d = w.handle(t, MS, from(), &request(&bob(), 3, "carol", 6, MS, nat(dst)));
        assert_eq!(refusal(&d), RefusalReason::WrongWaypoint);
        // Private (not allowed), loopback and the waypoint's own address.
        for (n, bad) in [
            (7, "192.168.1.1:80"),
            (8, "127.0.0.1:22"),
            (9, "10.0.6.2:22"),
        ] {
            let d = w.handle(t, MS, from(), &request(&bob(), 3, "alice", n, MS, nat(bad)));
            assert_eq!(refusal(&d), RefusalReason::DestinationNotAllowed, "{bad}");
        }
        // Revoked at run time.
        let mut w2 = waypoint();
        w2.revoke(t, bob().member);
        let d = w2.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", 10, MS, nat(dst)),
        );
        assert_eq!(refusal(&d), RefusalReason::Revoked);
        assert_eq!(w.leases().count(), 0);
        assert_eq!(w.stats().granted, 0);
    }

    #[test]
    fn destinations_follow_the_routes_and_denied_ports() {
        use crate::routes::{Route, RouteKind};
        let mut w = waypoint();
        let t = Instant::now();
        let ask = |w: &mut Waypoint, n: u8, dst: &str| {
            w.handle(t, MS, from(), &request(&bob(), 3, "alice", n, MS, nat(dst)))
        };
        assert!(matches!(
            ask(&mut w, 1, "10.0.3.2:80"),
            Decision::Install { .. }
        ));
        assert_eq!(
            refusal(&ask(&mut w, 2, "10.0.3.2:25")),
            RefusalReason::DestinationNotAllowed,
            "denied port"
        );
        // The router gains an address and a LAN route (a public IPv4
        // subnet, a global IPv6 prefix): refused from the next request on,
        // although the allow list covers 10/8 and the rest is public.
        let cidr = |s: &str| s.parse().unwrap();
        w.set_routes(Routes::new(
            vec![
                Route::main(cidr("0.0.0.0/0"), RouteKind::Unicast, vec![1]),
                Route::main(cidr("::/0"), RouteKind::Unicast, vec![1]),
                Route::main(cidr("81.2.3.0/24"), RouteKind::Unicast, vec![2]),
                Route::main(cidr("2a02:9::/64"), RouteKind::Unicast, vec![2]),
            ],
            vec!["10.0.6.2".parse().unwrap(), "10.0.3.2".parse().unwrap()],
            vec![(1, "wan".into()), (2, "br-lan".into())],
        ));
        for (n, bad) in [
            (3, "10.0.3.2:80"),
            (4, "81.2.3.4:22"),
            (5, "[2a02:9::7]:22"),
        ] {
            assert_eq!(
                refusal(&ask(&mut w, n, bad)),
                RefusalReason::DestinationNotAllowed,
                "{bad}"
            );
        }
        assert!(matches!(
            ask(&mut w, 6, "81.2.4.4:80"),
            Decision::Install { .. }
        ));
        // No default route at all: nothing is served.
        w.set_routes(Routes::default());
        assert_eq!(
            refusal(&ask(&mut w, 7, "81.2.4.4:443")),
            RefusalReason::DestinationNotAllowed
        );
    }

    #[test]
    fn ignores_garbage_and_never_amplifies() {
        let mut w = waypoint();
        let t = Instant::now();
        let req = request(&bob(), 3, "alice", 1, MS, nat("10.0.3.2:5201"));
        for bad in [
            &[][..],
            &[0x01][..],
            &req[..req.len() / 3],
            &[0xff; 700][..],
        ] {
            assert!(matches!(
                w.handle(t, MS, from(), bad),
                Decision::Ignore { .. }
            ));
        }
        let mut v2 = req.clone();
        v2[0] = 2;
        match w.handle(t, MS, from(), &v2) {
            Decision::Ignore { reason } => assert!(reason.contains("version"), "{reason}"),
            d => panic!("{d:?}"),
        }
        let mut big = req.clone();
        big.resize(1500, 0);
        assert!(matches!(
            w.handle(t, MS, from(), &big),
            Decision::Ignore { .. }
        ));
        assert_eq!(w.leases().count(), 0);
        assert_eq!(w.stats().refused.get("garbage").copied(), Some(6));
    }

    #[test]
    fn quota_renew_release_and_expiry() {
        let mut w = waypoint();
        let t = Instant::now();
        let mut ports = Vec::new();
        for i in 0..3u8 {
            let dst = format!("10.0.3.2:{}", 5201 + u16::from(i));
            match w.handle(
                t,
                MS,
                from(),
                &request(&bob(), 3, "alice", i + 1, MS, nat(&dst)),
            ) {
                Decision::Install { lease, .. } => ports.push(lease.port),
                d => panic!("{d:?}"),
            }
        }
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", 9, MS, nat("10.0.3.2:6000")),
        );
        assert_eq!(refusal(&d), RefusalReason::QuotaExceeded);
        // Renew the first lease at t+50 s: it outlives the others.
        let t50 = t + Duration::from_secs(50);
        let renew = RequestKind::Renew {
            port: ports[0],
            destination: "10.0.3.2:5201".parse().unwrap(),
            lease: Nonce([1; 16]),
        };
        match w.handle(
            t50,
            MS + 50_000,
            from(),
            &request(&bob(), 3, "alice", 20, MS + 50_000, renew),
        ) {
            Decision::Refresh { lease, .. } => assert_eq!(lease.port, ports[0]),
            d => panic!("{d:?}"),
        }
        // Renewing a port one does not hold is refused.
        let bogus = RequestKind::Renew {
            port: 40009,
            destination: "10.0.3.2:5201".parse().unwrap(),
            lease: Nonce([1; 16]),
        };
        let d = w.handle(
            t50,
            MS + 50_000,
            from(),
            &request(&bob(), 3, "alice", 21, MS + 50_000, bogus),
        );
        assert_eq!(refusal(&d), RefusalReason::UnknownLease);
        // Release the second.
        // A renewal naming another lease's nonce (a restarted waypoint reused
        // the port) is refused.
        let alias = RequestKind::Renew {
            port: ports[1],
            destination: "10.0.3.2:5202".parse().unwrap(),
            lease: Nonce([9; 16]),
        };
        let d = w.handle(
            t50,
            MS + 50_000,
            from(),
            &request(&bob(), 3, "alice", 23, MS + 50_000, alias),
        );
        assert_eq!(refusal(&d), RefusalReason::UnknownLease);
        let rel = RequestKind::Release {
            port: ports[1],
            lease: Nonce([2; 16]),
        };
        assert!(matches!(
            w.handle(
                t50,
                MS + 50_000,
                from(),
                &request(&bob(), 3, "alice", 22, MS + 50_000, rel)
            ),
            Decision::Remove { .. }
        ));
        // At t+60 s the third expires; the renewed first lives until t+110 s.
        let gone = w.expire(t + Duration::from_secs(60));
        assert_eq!(
            gone.iter().map(|l| l.port).collect::<Vec<_>>(),
            vec![ports[2]]
        );
        assert_eq!(w.next_timeout(), Some(t50 + Duration::from_secs(60)));
        assert_eq!(w.leases().count(), 1);
    }

    #[test]
    fn used_up_donation_refuses_grants_and_renewals_but_not_releases() {
        let mut w = waypoint();
        let t = Instant::now();
        let port = match w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", 1, MS, nat("10.0.3.2:5201")),
        ) {
            Decision::Install { lease, .. } => lease.port,
            d => panic!("{d:?}"),
        };
        w.set_used_up(Some("100 of 100 bytes".into()));
        assert_eq!(w.used_up(), Some("100 of 100 bytes"));
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", 2, MS, nat("10.0.3.2:5202")),
        );
        assert_eq!(refusal(&d), RefusalReason::DonationUsedUp);
        let renew = RequestKind::Renew {
            port,
            destination: "10.0.3.2:5201".parse().unwrap(),
            lease: Nonce([1; 16]),
        };
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", 3, MS, renew.clone()),
        );
        assert_eq!(refusal(&d), RefusalReason::DonationUsedUp);
        assert_eq!(w.stats().refused.get("DonationUsedUp").copied(), Some(2));
        // A new month: grants again, and the lease is still there to renew.
        w.set_used_up(None);
        let d = w.handle(t, MS, from(), &request(&bob(), 3, "alice", 4, MS, renew));
        assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
        // Releases go through while used up (the member gives the port back).
        w.set_used_up(Some("used up".into()));
        let rel = RequestKind::Release {
            port,
            lease: Nonce([1; 16]),
        };
        let d = w.handle(t, MS, from(), &request(&bob(), 3, "alice", 5, MS, rel));
        assert!(matches!(d, Decision::Remove { .. }), "{d:?}");
        assert_eq!(w.leases().count(), 0);
    }

    #[test]
    fn abort_undoes_a_failed_install() {
        let mut w = waypoint();
        let t = Instant::now();
        let req = request(&bob(), 3, "alice", 1, MS, nat("10.0.3.2:5201"));
        let Decision::Install {
            lease,
            to,
            nonce,
            bytes,
            ..
        } = w.handle(t, MS, from(), &req)
        else {
            panic!("no install")
        };
        let d = w.abort(t, MS, &lease, to, nonce, bytes.len(), "netlink said no");
        assert_eq!(refusal(&d), RefusalReason::Internal);
        assert_eq!(w.leases().count(), 0);
        // The client's retransmission is evaluated afresh and granted.
        assert!(matches!(
            w.handle(t, MS, from(), &req),
            Decision::Install { .. }
        ));
    }
}
