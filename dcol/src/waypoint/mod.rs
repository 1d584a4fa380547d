//! The waypoint role, as a state machine that does no I/O.
//!
//! [`Waypoint::handle`] takes a datagram, its source and the time, checks it
//! and returns a [`Decision`]: the kernel change to make (a NAT map element to
//! add, refresh or remove) and the signed reply to send after it succeeded.
//! The daemon carries decisions out; if the kernel change fails it calls
//! [`Waypoint::abort`] and sends the refusal that returns instead.
//!
//! Checks, cheapest first, so that forged requests cost little (issue 14):
//! 1. the source's token bucket ([`limits`]): a source over its rate is
//!    dropped before its datagram is even decoded;
//! 2. wire format and version, freshness, the waypoint's name, the
//!    certificate's collective, revocation, validity, name and member id,
//!    the client role: no cryptography yet; a refusal here is an
//!    [`proto::UnsignedRefusal`] (making it costs no signature; the client
//!    only logs it);
//! 3. the certificate's signature (once per certificate: [`CertCache`]),
//!    then the request's; a bad one gets an unsigned refusal too;
//! 4. authenticated: the request's `source` must be the address it came
//!    from (else a signed [`Outcome::WrongSource`] naming it), replay, the
//!    member's request rate (one bucket for new tunnels, one for renewals
//!    and releases), its share of the replay cache and of the evidence log,
//!    then the owner's policy (donation, destination, quota, ports).
//!
//! Every datagram that is not a fresh authenticated request of its own
//! member within its rate costs its source a token; a fresh one costs its
//! member a token. Neither a source nor a member can exhaust what another
//! is allowed.
//!
//! Anti-amplification: a reply is never longer than the datagram it answers;
//! where a signed refusal would be, nothing is sent.
//!
//! Idempotence: a request repeated with the same nonce from the same address
//! (a retransmission, from any port) gets the same reply bytes and no second
//! port; the same nonce with another body is refused as a replay.
//!
//! One exception to "no I/O": [`evidence::EvidenceLog`] appends the granted
//! requests to plain files (as `trust::files` reads and writes key files);
//! the record format and its checks in [`evidence`] are pure.

pub mod donation;
pub mod evidence;
pub mod leases;
pub mod limits;
pub mod policy;
pub mod vpn;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::proto::{
    self, Message, Nonce, Outcome, RefusalReason, Request, RequestKind, Response, ResponseBody,
    UnsignedRefusal, WireError,
};
use crate::routes::Routes;
use crate::trust::{
    CertCache, Certificate, MemberId, PublicKey, Revocations, Roles, SecretKey, TrustError,
};
use evidence::Shares;
pub use leases::{Lease, LeaseError, LeaseTable};
pub use limits::Limits;
use limits::{Blocklist, Buckets, Source};
pub use vpn::{VpnLease, VpnSettings, VpnTable};

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
    /// Per-source and per-member admission limits.
    pub limits: Limits,
}

/// What the daemon must do with a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send nothing (undecodable input, or a refusal that would amplify).
    Ignore {
        /// Why, for the log.
        reason: String,
    },
    /// Send nothing: the datagram's source is over its rate, and the
    /// datagram was dropped unread (no allocation: this is a flood's path).
    Drop {
        /// The datagram's source address.
        source: IpAddr,
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
    /// Refusals by reason name, plus `garbage` for undecodable input and
    /// `RateLimited` for datagrams dropped unread.
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
    /// Entries of `seen` per member (its share of the replay cache).
    seen_held: HashMap<MemberId, u32>,
    /// Token buckets of sources (unauthenticated datagrams) ...
    sources: Buckets<Source>,
    /// ... and of members (authenticated requests): one for new tunnels,
    /// one for the rest, so that a burst of new connections never starves
    /// the renewals of the tunnels a member holds.
    members_new: Buckets<MemberId>,
    members: Buckets<MemberId>,
    /// Certificates whose signature was checked.
    certs: CertCache,
    /// Each member's share of the evidence log, with the log on.
    shares: Option<Shares>,
    /// Sources over their rate, for the kernel to drop for a while.
    blocklist: Blocklist,
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
        let l = &settings.limits;
        let sources = Buckets::new(l.source_rate, l.source_burst, l.max_sources);
        // Members are bounded by the collective (only verified ones get a bucket).
        let members = Buckets::new(l.member_rate, l.member_burst, usize::MAX);
        let members_new = Buckets::new(l.member_rate, l.member_burst, usize::MAX);
        let certs = CertCache::new(l.cert_cache);
        let shares = l.evidence_share.map(Shares::new);
        Waypoint {
            seen_held: HashMap::new(),
            sources,
            members,
            members_new,
            certs,
            shares,
            blocklist: Blocklist::default(),
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
        let source = Source::of(from.ip());
        if !self.sources.allows(&source, now) {
            self.count_refusal(RefusalReason::RateLimited);
            self.blocklist.block(source, now);
            return Decision::Drop { source: from.ip() };
        }
        let req = match self.authenticate(wall_ms, from, dgram) {
            Ok(r) => r,
            Err(d) => {
                self.sources.charge(source, now);
                return *d;
            }
        };
        let member = req.cert.member;
        let nonce = req.body.nonce;
        let limit = dgram.len();
        if req.body.source.to_canonical() != from.ip().to_canonical() {
            self.sources.charge(source, now);
            let d = format!(
                "{}'s request names source {}",
                req.cert.name, req.body.source
            );
            let outcome = Outcome::WrongSource {
                observed: from.ip(),
            };
            return self.signed_refusal(wall_ms, from, nonce, outcome, d, limit);
        }
        self.forget_seen(now);
        if let Some(s) = self.seen.get(&(member, nonce)) {
            if s.from.ip() == from.ip() && s.signature == req.signature.0 {
                self.sources.charge(source, now);
                let bytes = self.sign(s.reply.clone());
                self.count_grant();
                return Decision::Reply {
                    to: from,
                    bytes,
                    refused: None,
                };
            }
            self.members.charge(member, now);
            let d = format!("nonce of {} already used from {}", req.cert.name, s.from);
            return self.refusal(wall_ms, from, nonce, RefusalReason::Replay, d, limit);
        }
        let new_tunnel = matches!(
            req.body.kind,
            RequestKind::NatDetour { .. } | RequestKind::Vpn
        );
        let bucket = match new_tunnel {
            true => &mut self.members_new,
            false => &mut self.members,
        };
        if !bucket.charge(member, now) {
            // Over its rate: the answer costs a signature, which its source pays.
            self.sources.charge(source, now);
            let d = format!("{} over its request rate", req.cert.name);
            return self.refusal(wall_ms, from, nonce, RefusalReason::RateLimited, d, limit);
        }
        if let Some(d) = self.over_shares(wall_ms, from, &req, dgram) {
            return d;
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
        if matches!(
            decision,
            Decision::Install { .. } | Decision::VpnInstall { .. }
        ) {
            if let Some(sh) = self.shares.as_mut() {
                sh.add(member, wall_ms, evidence_cost(dgram));
            }
        }
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
            let held = self.seen_held.entry(member).or_default();
            *held = held.saturating_add(1);
        }
        decision
    }

    /// The checks before a request counts as its member's: all but the two
    /// signature checks need no cryptography, and every refusal here is
    /// unsigned.
    fn authenticate(
        &mut self,
        wall_ms: u64,
        from: SocketAddr,
        dgram: &[u8],
    ) -> Result<Request, Box<Decision>> {
        let req = match proto::decode(dgram) {
            Ok(Message::Request(r)) => r,
            Ok(_) => {
                return Err(Box::new(
                    self.ignore("a response sent to the waypoint port"),
                ))
            }
            Err(e @ WireError::UnsupportedVersion(_)) if proto::other_version_request(dgram) => {
                let d = e.to_string();
                let r = RefusalReason::UnsupportedVersion;
                return Err(Box::new(self.unsigned(from, None, r, d, dgram.len())));
            }
            Err(e) => {
                let d = format!("undecodable datagram ({} bytes): {e}", dgram.len());
                return Err(Box::new(self.ignore(&d)));
            }
        };
        let nonce = Some(req.body.nonce);
        let limit = dgram.len();
        let refuse = |wp: &mut Self, reason, detail: String| {
            Err(Box::new(wp.unsigned(from, nonce, reason, detail, limit)))
        };
        let skew = self.settings.max_skew.as_millis() as u64;
        if req.body.timestamp_ms.abs_diff(wall_ms) > skew {
            let d = format!(
                "timestamp {} ms off our clock (limit {skew} ms)",
                i128::from(req.body.timestamp_ms) - i128::from(wall_ms)
            );
            return refuse(self, RefusalReason::Stale, d);
        }
        if !proto::addressed_to(&req.body, &self.cert) {
            let d = "addressed to another waypoint".to_owned();
            return refuse(self, RefusalReason::WrongWaypoint, d);
        }
        let now_s = wall_ms / 1000;
        let checked = req.cert.check_fields(&self.root, &self.revocations, now_s);
        if let Err(e) = checked {
            return refuse(self, trust_reason(&e), e.to_string());
        }
        if !req.cert.roles.contains(Roles::CLIENT) {
            let d = "member lacks the client role".to_owned();
            return refuse(self, RefusalReason::NotAWaypoint, d);
        }
        let verified = self
            .certs
            .check(&req.cert, &self.root, &self.revocations, now_s)
            .and_then(|()| req.verify_signature());
        if let Err(e) = verified {
            return refuse(self, trust_reason(&e), e.to_string());
        }
        Ok(req)
    }

    /// A refusal when `req`'s member holds its share of the replay cache,
    /// or (for a new tunnel) of the evidence log.
    fn over_shares(
        &mut self,
        wall_ms: u64,
        from: SocketAddr,
        req: &Request,
        dgram: &[u8],
    ) -> Option<Decision> {
        let (member, nonce, limit) = (req.cert.member, req.body.nonce, dgram.len());
        let cap = self.settings.limits.seen_cap;
        let held = self.seen_held.get(&member).copied().unwrap_or(0) as usize;
        let fair = cap / self.seen_held.len().max(1);
        if self.seen.len() >= cap && held >= fair {
            let d = format!(
                "{} holds {held} of {} replay-cache entries (fair share {fair})",
                req.cert.name,
                self.seen.len()
            );
            return Some(self.refusal(wall_ms, from, nonce, RefusalReason::RateLimited, d, limit));
        }
        let new_tunnel = matches!(
            req.body.kind,
            RequestKind::NatDetour { .. } | RequestKind::Vpn
        );
        let cost = evidence_cost(dgram);
        let sh = self.shares.as_mut().filter(|_| new_tunnel)?;
        if sh.admits(member, wall_ms, cost) {
            return None;
        }
        let d = format!(
            "{} caused {} evidence bytes in the last day (share {})",
            req.cert.name,
            sh.used(member, wall_ms),
            sh.share()
        );
        Some(self.refusal(wall_ms, from, nonce, RefusalReason::EvidenceFull, d, limit))
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
            RequestKind::Convert { .. } => self.ignore(
                "a conversion request on the signaling port (it belongs in a Convert cookie)",
            ),
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
        self.unsee((lease.member, nonce));
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
        self.unsee((lease.member, nonce));
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
        let l = &settings.limits;
        self.sources.set_rate(l.source_rate, l.source_burst);
        self.members.set_rate(l.member_rate, l.member_burst);
        self.members_new.set_rate(l.member_rate, l.member_burst);
        match (self.shares.as_mut(), l.evidence_share) {
            (Some(sh), Some(share)) => sh.set_share(share),
            (_, share) => self.shares = share.map(Shares::new),
        }
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

    /// Counts the records already in the evidence log against their
    /// members' shares (at start, and when the log is replaced).
    pub fn seed_evidence(&mut self, records: &[evidence::Record]) {
        if let Some(share) = self.settings.limits.evidence_share {
            let mut sh = Shares::new(share);
            sh.seed(records);
            self.shares = Some(sh);
        }
    }

    /// When [`Waypoint::expire`] or [`Waypoint::take_filter`] next has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        let vpn = self.vpn.as_ref().and_then(|t| t.next_expiry());
        let blocks = self.blocklist.next_change();
        [self.leases.next_expiry(), vpn, blocks]
            .into_iter()
            .flatten()
            .min()
    }

    /// The sources (IPv4 addresses, IPv6 /64s) whose datagrams the kernel
    /// should drop from `now` on, when that changed: sources found over
    /// their rate, for a while ([`limits::Blocklist`]).
    pub fn take_filter(&mut self, now: Instant) -> Option<Vec<IpAddr>> {
        let list = self.blocklist.take_changed(now)?;
        Some(list.iter().map(Source::addr).collect())
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
                self.unsee(key);
            }
        }
    }

    /// Forgets a remembered request.
    fn unsee(&mut self, key: (MemberId, Nonce)) {
        if self.seen.remove(&key).is_none() {
            return;
        }
        if let Some(n) = self.seen_held.get_mut(&key.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.seen_held.remove(&key.0);
            }
        }
    }

    fn count_grant(&mut self) {
        self.stats.granted = self.stats.granted.wrapping_add(1);
    }

    fn ignore(&mut self, reason: &str) -> Decision {
        self.count("garbage".to_owned());
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

    /// Counts a refusal by the reason's name.
    fn count_refusal(&mut self, reason: RefusalReason) {
        if reason == RefusalReason::RateLimited {
            // The flood's path: no formatting.
            if let Some(c) = self.stats.refused.get_mut("RateLimited") {
                *c = c.wrapping_add(1);
                return;
            }
        }
        self.count(format!("{reason:?}"));
    }

    fn count(&mut self, name: String) {
        // Without a new key, no allocation (a flood's path).
        match self.stats.refused.get_mut(&name) {
            Some(c) => *c = c.wrapping_add(1),
            None => {
                self.stats.refused.insert(name, 1);
            }
        }
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
        let outcome = Outcome::Refused { reason };
        self.signed_refusal(wall_ms, to, nonce, outcome, detail, limit)
    }

    /// A signed refusal (`outcome` is `Refused` or `WrongSource`).
    fn signed_refusal(
        &mut self,
        wall_ms: u64,
        to: SocketAddr,
        nonce: Nonce,
        outcome: Outcome,
        detail: String,
        limit: usize,
    ) -> Decision {
        let what = match &outcome {
            Outcome::Refused { reason } => {
                self.count_refusal(*reason);
                reason.to_string()
            }
            _ => {
                self.count("WrongSource".to_owned());
                "wrong source".to_owned()
            }
        };
        let bytes = self.response_bytes(wall_ms, nonce, outcome);
        if bytes.len() > limit {
            return Decision::Ignore {
                reason: format!("{what}: {detail} (not answered: reply would amplify)"),
            };
        }
        let refused = Some(format!("{what}: {detail}"));
        Decision::Reply { to, bytes, refused }
    }

    /// An unsigned refusal of a request not (yet) authenticated.
    fn unsigned(
        &mut self,
        to: SocketAddr,
        nonce: Option<Nonce>,
        reason: RefusalReason,
        detail: String,
        limit: usize,
    ) -> Decision {
        self.count_refusal(reason);
        let bytes = proto::encode(&Message::Refusal(UnsignedRefusal { reason, nonce }));
        if bytes.len() > limit {
            return Decision::Ignore {
                reason: format!("{reason}: {detail} (not answered: reply would amplify)"),
            };
        }
        let refused = Some(format!("{reason}: {detail} (unsigned answer)"));
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

/// The refusal reason for a failed certificate or signature check.
fn trust_reason(e: &TrustError) -> RefusalReason {
    match e {
        TrustError::Revoked { .. } => RefusalReason::Revoked,
        _ => RefusalReason::BadCertificate,
    }
}

/// What granting the request `dgram` may add to its member's evidence.
fn evidence_cost(dgram: &[u8]) -> u64 {
    evidence::lease_cost(proto::unpadded(dgram).map_or(dgram.len(), <[u8]>::len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, cert, cert_by, nat, request, request_from, T0};

    const MS: u64 = T0 * 1000;

    fn from() -> SocketAddr {
        "10.0.1.2:50000".parse().unwrap()
    }

    fn waypoint() -> Waypoint {
        waypoint_with(Limits::default())
    }

    fn waypoint_with(limits: Limits) -> Waypoint {
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
            limits,
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

    /// The reason of an unsigned refusal (a request refused before it was
    /// authenticated).
    fn unsigned(d: &Decision) -> RefusalReason {
        match d {
            Decision::Reply {
                bytes,
                refused: Some(_),
                ..
            } => match proto::decode(bytes) {
                Ok(Message::Refusal(r)) => r.reason,
                other => panic!("not an unsigned refusal: {other:?}"),
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
        // The same copy from another port of the same address (a second
        // router behind the same NAT racing the member): the same reply.
        let port2: SocketAddr = "10.0.1.2:50001".parse().unwrap();
        assert!(matches!(
            w.handle(t, MS, port2, &req),
            Decision::Reply { bytes: ref b, refused: None, to } if *b == bytes && to == port2
        ));
        // The same request from another address names the wrong source.
        let other: SocketAddr = "10.9.9.9:1".parse().unwrap();
        let d = w.handle(t, MS, other, &req);
        assert!(matches!(
            outcome(reply_bytes(&d)),
            Outcome::WrongSource { observed } if observed == other.ip()
        ));
        assert_eq!(w.leases().count(), 1);
        // Another nonce with the same body is a new request; the same nonce
        // with another body (signed again) is a replay.
        let again = request(&bob(), 3, "alice", 1, MS + 1, nat("10.0.3.2:5201"));
        assert_eq!(
            refusal(&w.handle(t, MS, from(), &again)),
            RefusalReason::Replay
        );
    }

    fn reply_bytes(d: &Decision) -> &[u8] {
        match d {
            Decision::Reply { bytes, .. } => bytes,
            d => panic!("no reply: {d:?}"),
        }
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
        assert_eq!(unsigned(&d), RefusalReason::BadCertificate);
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
        assert_eq!(unsigned(&d), RefusalReason::BadCertificate);
        // Signed by a key that is not the certificate's.
        let d = w.handle(t, MS, from(), &request(&bob(), 9, "alice", 3, MS, nat(dst)));
        assert_eq!(unsigned(&d), RefusalReason::BadCertificate);
        // Stale and future timestamps.
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", 4, MS - 31_000, nat(dst)),
        );
        assert_eq!(unsigned(&d), RefusalReason::Stale);
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", 5, MS + 31_000, nat(dst)),
        );
        assert_eq!(unsigned(&d), RefusalReason::Stale);
        // A certificate whose fields were changed after the root signed it.
        let mut tampered = bob();
        tampered.roles = Roles::CLIENT | Roles::WAYPOINT;
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&tampered, 3, "alice", 11, MS, nat(dst)),
        );
        assert_eq!(unsigned(&d), RefusalReason::BadCertificate);
        // A member without the client role.
        let wp_only = cert("dave", 8, Roles::WAYPOINT);
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&wp_only, 8, "alice", 12, MS, nat(dst)),
        );
        assert_eq!(unsigned(&d), RefusalReason::NotAWaypoint);
        // Addressed to another waypoint.
        let d = w.handle(t, MS, from(), &request(&bob(), 3, "carol", 6, MS, nat(dst)));
        assert_eq!(unsigned(&d), RefusalReason::WrongWaypoint);
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
        assert_eq!(unsigned(&d), RefusalReason::Revoked);
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
        // A request of another protocol version: a clear unsigned refusal.
        let mut v1 = req.clone();
        v1[0] = 1;
        let d = w.handle(t, MS, from(), &v1);
        assert_eq!(unsigned(&d), RefusalReason::UnsupportedVersion);
        match d {
            Decision::Reply {
                refused: Some(r),
                bytes,
                ..
            } => {
                assert!(r.contains("protocol version 1"), "{r}");
                assert!(bytes.len() < 24, "{} bytes", bytes.len());
            }
            d => panic!("{d:?}"),
        }
        // Garbage in another version's clothes (too short for a request): ignored.
        assert!(matches!(
            w.handle(t, MS, from(), &v1[..100]),
            Decision::Ignore { .. }
        ));
        let mut big = req.clone();
        big.resize(1500, 0);
        assert!(matches!(
            w.handle(t, MS, from(), &big),
            Decision::Ignore { .. }
        ));
        assert_eq!(w.leases().count(), 0);
        assert_eq!(w.stats().refused.get("garbage").copied(), Some(6));
        assert_eq!(
            w.stats().refused.get("UnsupportedVersion").copied(),
            Some(1)
        );
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

    fn member(name: &str, seed: u8) -> Certificate {
        cert(name, seed, Roles::CLIENT)
    }

    fn renew(port: u16, dst: &str, lease: u8) -> RequestKind {
        RequestKind::Renew {
            port,
            destination: dst.parse().unwrap(),
            lease: Nonce([lease; 16]),
        }
    }

    fn port_of(d: &Decision) -> u16 {
        match d {
            Decision::Install { lease, .. } => lease.port,
            d => panic!("expected a grant, got {d:?}"),
        }
    }

    #[test]
    fn a_flooding_source_is_dropped_unread_and_honest_requests_cost_it_nothing() {
        let mut w = waypoint_with(Limits {
            source_rate: 1,
            source_burst: 3,
            ..Limits::default()
        });
        let t = Instant::now();
        let dst = "10.0.3.2:5201";
        // Authenticated requests of their own member never spend the source's
        // tokens (their member's instead).
        let port = port_of(&w.handle(t, MS, from(), &request(&bob(), 3, "alice", 1, MS, nat(dst))));
        for n in 2..10 {
            let d = w.handle(
                t,
                MS,
                from(),
                &request(&bob(), 3, "alice", n, MS, renew(port, dst, 1)),
            );
            assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
        }
        // Garbage spends them: three, then the source is dropped unread.
        for _ in 0..3 {
            assert!(matches!(
                w.handle(t, MS, from(), &[0xff; 700]),
                Decision::Ignore { .. }
            ));
        }
        let next = request(&bob(), 3, "alice", 20, MS, renew(port, dst, 1));
        assert_eq!(
            w.handle(t, MS, from(), &next),
            Decision::Drop {
                source: from().ip()
            }
        );
        assert_eq!(w.stats().refused.get("RateLimited").copied(), Some(1));
        // ... and goes to the kernel's drop list for a while.
        assert_eq!(w.take_filter(t), Some(vec![from().ip()]));
        assert_eq!(w.take_filter(t), None);
        assert_eq!(w.next_timeout(), Some(t + limits::BLOCK_BASE));
        // Another source is not affected.
        let other: SocketAddr = "10.0.9.9:7000".parse().unwrap();
        let carol = request_from(&member("carol", 4), 4, "alice", 1, MS, nat(dst), other.ip());
        assert!(matches!(
            w.handle(t, MS, other, &carol),
            Decision::Install { .. }
        ));
        // A token comes back after a second.
        let d = w.handle(t + limits::token_time(1), MS + 1000, from(), &next);
        assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
        // The block ends.
        assert_eq!(w.take_filter(t + limits::BLOCK_BASE), Some(vec![]));
    }

    #[test]
    fn a_member_over_its_rate_is_refused_and_forgers_cannot_spend_its_tokens() {
        let mut w = waypoint_with(Limits {
            member_rate: 1,
            member_burst: 2,
            ..Limits::default()
        });
        let t = Instant::now();
        let dst = |p: u16| format!("10.0.3.2:{p}");
        let ask = |w: &mut Waypoint, t: Instant, n: u8, kind: RequestKind| {
            w.handle(t, MS, from(), &request(&bob(), 3, "alice", n, MS, kind))
        };
        // Two new tunnels, then bob is over his rate for new ones: a signed
        // refusal (he is authenticated; he may act on it).
        let port = port_of(&ask(&mut w, t, 1, nat(&dst(5201))));
        port_of(&ask(&mut w, t, 2, nat(&dst(5202))));
        assert_eq!(
            refusal(&ask(&mut w, t, 3, nat(&dst(5203)))),
            RefusalReason::RateLimited
        );
        // His renewals have their own bucket: the burst did not starve them.
        for n in 4..6 {
            let d = ask(&mut w, t, n, renew(port, &dst(5201), 1));
            assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
        }
        let d = ask(&mut w, t, 6, renew(port, &dst(5201), 1));
        assert_eq!(refusal(&d), RefusalReason::RateLimited);
        // Another member is not affected.
        let carol = request(&member("carol", 4), 4, "alice", 1, MS, nat(&dst(5201)));
        assert!(matches!(
            w.handle(t, MS, from(), &carol),
            Decision::Install { .. }
        ));
        // A second later bob has a token of each; forged requests in his name
        // (his certificate, another key's signature) cannot spend them.
        let t1 = t + Duration::from_secs(1);
        for n in 30..40 {
            let forged = request(&bob(), 9, "alice", n, MS, renew(port, &dst(5201), 1));
            assert_eq!(
                unsigned(&w.handle(t1, MS, from(), &forged)),
                RefusalReason::BadCertificate
            );
        }
        let d = ask(&mut w, t1, 7, renew(port, &dst(5201), 1));
        assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
        assert!(matches!(
            ask(&mut w, t1, 8, nat(&dst(5203))),
            Decision::Install { .. }
        ));
        // Bob's certificate was checked once; the forged requests cost one
        // signature check each (the request's), none for the certificate.
        assert_eq!(w.certs.len(), 2);
    }

    #[test]
    fn one_member_cannot_fill_the_replay_cache_for_another() {
        let mut w = waypoint_with(Limits {
            seen_cap: 4,
            ..Limits::default()
        });
        let t = Instant::now();
        let dst = "10.0.3.2:5201";
        let port = port_of(&w.handle(t, MS, from(), &request(&bob(), 3, "alice", 1, MS, nat(dst))));
        for n in 2..=4 {
            let d = w.handle(
                t,
                MS,
                from(),
                &request(&bob(), 3, "alice", n, MS, renew(port, dst, 1)),
            );
            assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
        }
        // The cache holds 4: bob has all of it and is refused ...
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", 5, MS, renew(port, dst, 1)),
        );
        assert_eq!(refusal(&d), RefusalReason::RateLimited);
        // ... while carol, holding nothing, is served up to her fair share.
        let carol = member("carol", 4);
        let cport =
            port_of(&w.handle(t, MS, from(), &request(&carol, 4, "alice", 1, MS, nat(dst))));
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&carol, 4, "alice", 2, MS, renew(cport, dst, 1)),
        );
        assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&carol, 4, "alice", 3, MS, renew(cport, dst, 1)),
        );
        assert_eq!(refusal(&d), RefusalReason::RateLimited);
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", 6, MS, renew(port, dst, 1)),
        );
        assert_eq!(refusal(&d), RefusalReason::RateLimited);
        // Entries age out after two freshness windows: bob is served again.
        let t60 = t + Duration::from_secs(60);
        let d = w.handle(
            t60,
            MS + 60_000,
            from(),
            &request(&bob(), 3, "alice", 7, MS + 60_000, renew(port, dst, 1)),
        );
        assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
        assert_eq!(w.seen.len(), 1);
        assert_eq!(w.seen_held.len(), 1);
    }

    #[test]
    fn a_request_from_another_address_than_its_source_gets_only_the_observed_address() {
        let mut w = waypoint_with(Limits {
            member_rate: 1,
            member_burst: 1,
            ..Limits::default()
        });
        let t = Instant::now();
        let req = request(&bob(), 3, "alice", 1, MS, nat("10.0.3.2:5201"));
        // Sniffed and replayed from elsewhere, many times: refused, signed,
        // naming the replayer's own address; no lease, and bob's token is
        // not spent (the replayer's source pays).
        let nat_ip: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        for _ in 0..10 {
            let d = w.handle(t, MS, nat_ip, &req);
            assert!(matches!(
                outcome(reply_bytes(&d)),
                Outcome::WrongSource { observed } if observed == nat_ip.ip()
            ));
        }
        assert_eq!(w.leases().count(), 0);
        assert_eq!(w.stats().granted, 0);
        assert_eq!(w.stats().refused.get("WrongSource").copied(), Some(10));
        // Bob's own copy is granted.
        assert!(matches!(
            w.handle(t, MS, from(), &req),
            Decision::Install { .. }
        ));
        // A member behind a NAT, told its address, asks again naming it.
        let t1 = t + Duration::from_secs(1);
        let again = request_from(&bob(), 3, "alice", 2, MS, nat("10.0.3.2:5202"), nat_ip.ip());
        match w.handle(t1, MS, nat_ip, &again) {
            Decision::Install { lease, .. } => assert_eq!(lease.client, nat_ip.ip()),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn evidence_share_refuses_new_tunnels_of_a_member_whose_share_is_full() {
        let dst = |p: u16| format!("10.0.3.2:{p}");
        let first = request(&bob(), 3, "alice", 1, MS, nat(&dst(5201)));
        let cost = evidence::lease_cost(proto::unpadded(&first).unwrap().len());
        let mut w = waypoint_with(Limits {
            evidence_share: Some(2 * cost + cost / 2),
            ..Limits::default()
        });
        let t = Instant::now();
        let p1 = port_of(&w.handle(t, MS, from(), &first));
        let p2 = port_of(&w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", 2, MS, nat(&dst(5202))),
        ));
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", 3, MS, nat(&dst(5203))),
        );
        assert_eq!(refusal(&d), RefusalReason::EvidenceFull);
        // Renewals and releases go on.
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", 4, MS, renew(p1, &dst(5201), 1)),
        );
        assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
        let rel = RequestKind::Release {
            port: p2,
            lease: Nonce([2; 16]),
        };
        assert!(matches!(
            w.handle(t, MS, from(), &request(&bob(), 3, "alice", 5, MS, rel)),
            Decision::Remove { .. }
        ));
        // Another member has its own share.
        let carol = request(&member("carol", 4), 4, "alice", 1, MS, nat(&dst(5201)));
        assert!(matches!(
            w.handle(t, MS, from(), &carol),
            Decision::Install { .. }
        ));
        // A day later bob's records no longer count.
        let day = evidence::WINDOW + Duration::from_secs(60);
        let ms = MS + day.as_millis() as u64;
        let d = w.handle(
            t + day,
            ms,
            from(),
            &request(&bob(), 3, "alice", 6, ms, nat(&dst(5203))),
        );
        assert!(matches!(d, Decision::Install { .. }), "{d:?}");
        // A restart does not give bob a fresh share: the log's records count.
        let mut w = waypoint_with(Limits {
            evidence_share: Some(cost),
            ..Limits::default()
        });
        let kept = evidence::Record {
            at_ms: MS,
            from: from(),
            member_id: bob().member.to_string(),
            member: "bob".into(),
            grant: format!("nat {p1} -> {}", dst(5201)),
            bytes: None,
            request: proto::unpadded(&first).unwrap().to_vec(),
        };
        w.seed_evidence(&[kept]);
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", 7, MS, nat(&dst(5204))),
        );
        assert_eq!(refusal(&d), RefusalReason::EvidenceFull);
    }

    #[test]
    fn port_range_and_vpn_subnet_exhaustion_and_no_vpn() {
        let mut w = waypoint();
        let t = Instant::now();
        // Ten ports for one client address; four members of three tunnels.
        let mut granted = 0;
        for (name, seed) in [("bob", 3), ("carol", 4), ("dave", 5), ("erin", 6)] {
            for n in 1..=3u8 {
                let d = w.handle(
                    t,
                    MS,
                    from(),
                    &request(
                        &member(name, seed),
                        seed,
                        "alice",
                        n,
                        MS,
                        nat(&format!("10.0.3.2:{}", 5200 + u16::from(n))),
                    ),
                );
                match d {
                    Decision::Install { .. } => granted += 1,
                    d => assert_eq!(refusal(&d), RefusalReason::NoPortsLeft),
                }
            }
        }
        assert_eq!(granted, 10);
        assert_eq!(w.stats().refused.get("NoPortsLeft").copied(), Some(2));
        // A waypoint without VPN tunnels; one with a /30 (one member address).
        let k = |seed: u8| testutil::key(seed);
        let wg_member = |name: &str, seed: u8| {
            let wg = crate::trust::wg::public(&crate::trust::wg::secret(&k(seed)));
            Certificate::issue(
                &testutil::root(),
                name,
                k(seed).public(),
                Some(wg),
                T0 - 10,
                T0 + 10,
                Roles::CLIENT,
            )
            .unwrap()
        };
        let mut w = waypoint();
        w.vpn = None;
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&wg_member("carol", 4), 4, "alice", 1, MS, RequestKind::Vpn),
        );
        assert_eq!(refusal(&d), RefusalReason::NoVpn);
        let mut w = waypoint();
        w.vpn = Some(VpnTable::new(VpnSettings {
            subnet: "10.200.7.0/30".parse().unwrap(),
            subnet6: None,
            port: 51820,
            wg_key: [5; 32],
        }));
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&wg_member("carol", 4), 4, "alice", 1, MS, RequestKind::Vpn),
        );
        assert!(matches!(d, Decision::VpnInstall { .. }), "{d:?}");
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&wg_member("dave", 5), 5, "alice", 1, MS, RequestKind::Vpn),
        );
        assert_eq!(refusal(&d), RefusalReason::NoAddressesLeft);
    }
}
