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
mod grant;
pub mod leases;
pub mod limits;
pub mod policy;
mod reply;
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
pub use leases::{Granted, Lease, LeaseError, LeaseTable, Left};
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
    /// A grant joined the member's live `lease` to the same destination
    /// ([`leases::Granted::Joined`]): refresh its element to `timeout`, keep
    /// the request as evidence, then send the grant.
    Join {
        /// The shared lease, the new holder included.
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
    /// One holder released a shared `lease` that others still hold: no
    /// kernel change; keep its end record, then send the reply.
    Leave {
        /// The lease as it stays.
        lease: Lease,
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
        if let Some(d) = self.replayed(now, wall_ms, from, &req, limit) {
            return d;
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
        self.remember(now, wall_ms, from, &req, dgram, &decision);
        decision
    }

    /// The answer to a request whose (member, nonce) was seen: the same
    /// reply again for a retransmission from the same address, else a
    /// replay refusal. `None` for a fresh request.
    fn replayed(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: SocketAddr,
        req: &Request,
        limit: usize,
    ) -> Option<Decision> {
        let source = Source::of(from.ip());
        let (member, nonce) = (req.cert.member, req.body.nonce);
        let s = self.seen.get(&(member, nonce))?;
        if s.from.ip() == from.ip() && s.signature == req.signature.0 {
            self.sources.charge(source, now);
            let bytes = self.sign(s.reply.clone());
            self.count_grant();
            return Some(Decision::Reply {
                to: from,
                bytes,
                refused: None,
            });
        }
        self.members.charge(member, now);
        let d = format!("nonce of {} already used from {}", req.cert.name, s.from);
        Some(self.refusal(wall_ms, from, nonce, RefusalReason::Replay, d, limit))
    }

    /// Keeps the reply to a request that changed the kernel for its
    /// retransmissions, and charges a new tunnel to its member's evidence share.
    fn remember(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: SocketAddr,
        req: &Request,
        dgram: &[u8],
        decision: &Decision,
    ) {
        let (member, nonce) = (req.cert.member, req.body.nonce);
        let remember = matches!(
            decision,
            Decision::Install { .. }
                | Decision::Join { .. }
                | Decision::Refresh { .. }
                | Decision::Leave { .. }
                | Decision::Remove { .. }
                | Decision::VpnInstall { .. }
                | Decision::VpnRefresh { .. }
                | Decision::VpnRemove { .. }
        );
        if matches!(
            decision,
            Decision::Install { .. } | Decision::Join { .. } | Decision::VpnInstall { .. }
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
        let nonce = req.body.nonce;
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
                self.decide_nat(now, wall_ms, from, req, limit, destination)
            }
            RequestKind::Renew {
                port,
                destination,
                lease,
            } => self.decide_renew(now, wall_ms, from, req, limit, (port, destination, lease)),
            RequestKind::Vpn | RequestKind::VpnRenew { .. } | RequestKind::VpnRelease { .. } => {
                self.decide_vpn(now, wall_ms, from, req, limit)
            }
            RequestKind::Convert { .. } => self.ignore(
                "a conversion request on the signaling port (it belongs in a Convert cookie)",
            ),
            RequestKind::Release { port, lease } => {
                self.decide_release(now, wall_ms, from, req, limit, (port, lease))
            }
        }
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

    /// Undoes an [`Decision::Install`] or [`Decision::Join`] whose kernel
    /// change failed (request `nonce`'s grant is withdrawn; a new lease
    /// ends) and
    /// returns the refusal to send to `to` instead (never longer than the
    /// grant it replaces).
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
        self.leases.withdraw(now, (lease.client, lease.port), nonce);
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

    /// Holders of shared leases whose shares ended unreleased while others
    /// kept the lease: the lease as it stays and the holder's nonce (the
    /// daemon writes their end records; nothing in the kernel changes).
    pub fn take_pruned(&mut self) -> Vec<(Lease, Nonce)> {
        self.leases.take_pruned()
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
mod tests;
