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

pub mod leases;
pub mod policy;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::config::Cidr;
use crate::proto::{
    self, Message, Nonce, Outcome, RefusalReason, Request, RequestKind, Response, ResponseBody,
};
use crate::trust::{Certificate, MemberId, PublicKey, Revocations, Roles, SecretKey, TrustError};
pub use leases::{Lease, LeaseError, LeaseTable};

/// At most this many remembered nonces; beyond it new requests are refused
/// (only reachable under a flood of valid signed requests within one skew window).
const MAX_SEEN: usize = 65_536;

/// The owner's settings for the waypoint role.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Inclusive port range for NAT tunnels.
    pub ports: (u16, u16),
    /// Lease length; the kernel element carries the same timeout.
    pub lease: Duration,
    /// Live tunnels one member may hold.
    pub max_per_member: u32,
    /// Destinations allowed despite the built-in policy.
    pub allow: Vec<Cidr>,
    /// How far a request's timestamp may be from our clock.
    pub max_skew: Duration,
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
    reply: Vec<u8>,
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
    own: Vec<IpAddr>,
    leases: LeaseTable,
    seen: HashMap<(MemberId, Nonce), Seen>,
    stats: Stats,
}

impl Waypoint {
    /// A waypoint answering as `cert`/`key` for the collective `root`.
    /// `own` are the router's own addresses, never a destination.
    pub fn new(
        settings: Settings,
        cert: Certificate,
        key: SecretKey,
        root: PublicKey,
        revocations: Revocations,
        own: Vec<IpAddr>,
    ) -> Self {
        let leases = LeaseTable::new(settings.ports, settings.max_per_member);
        Waypoint {
            settings,
            cert,
            key,
            root,
            revocations,
            own,
            leases,
            seen: HashMap::new(),
            stats: Stats::default(),
        }
    }

    /// Handles one datagram from `from`. `wall_ms` is Unix time in milliseconds.
    pub fn handle(&mut self, now: Instant, wall_ms: u64, from: SocketAddr, dgram: &[u8]) -> Decision {
        self.stats.datagrams = self.stats.datagrams.wrapping_add(1);
        let req = match proto::decode(dgram) {
            Ok(Message::Request(r)) => r,
            Ok(Message::Response(_)) => return self.ignore("a response sent to the waypoint port"),
            Err(e) => return self.ignore(&format!("undecodable datagram ({} bytes): {e}", dgram.len())),
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
        self.seen.retain(|_, s| s.until > now);
        if let Some(s) = self.seen.get(&(member, nonce)) {
            if s.from == from && s.signature == req.signature.0 {
                self.count_grant();
                return Decision::Reply { to: from, bytes: s.reply.clone(), refused: None };
            }
            let d = format!("nonce of {} already used from {}", req.cert.name, s.from);
            return refuse(self, RefusalReason::Replay, d);
        }
        if !proto::addressed_to(&req.body, &self.cert) {
            return refuse(self, RefusalReason::WrongWaypoint, "addressed to another waypoint".into());
        }
        if !req.cert.roles.contains(Roles::CLIENT) {
            return refuse(self, RefusalReason::NotAWaypoint, "member lacks the client role".into());
        }
        if self.seen.len() >= MAX_SEEN {
            return refuse(self, RefusalReason::Internal, "replay cache full".into());
        }
        let decision = self.decide(now, wall_ms, from, &req, limit);
        let reply = match &decision {
            Decision::Reply { bytes, refused: None, .. }
            | Decision::Install { bytes, .. }
            | Decision::Refresh { bytes, .. }
            | Decision::Remove { bytes, .. } => Some(bytes.clone()),
            _ => None,
        };
        if let Some(reply) = reply {
            let until = now + self.settings.max_skew * 2;
            let seen = Seen { from, signature: req.signature.0, reply, until };
            self.seen.insert((member, nonce), seen);
        }
        decision
    }

    fn decide(&mut self, now: Instant, wall_ms: u64, from: SocketAddr, req: &Request, limit: usize) -> Decision {
        let client = from.ip();
        let nonce = req.body.nonce;
        let member = req.cert.member;
        let lease_len = self.settings.lease;
        match req.body.kind {
            RequestKind::NatDetour { destination } => {
                if let Err(why) = policy::check_destination(destination, &self.settings.allow, &self.own) {
                    let d = format!("{destination}: {why}");
                    return self.refusal(wall_ms, from, nonce, RefusalReason::DestinationNotAllowed, d, limit);
                }
                if let Some(l) = self.leases.find(member, client, destination) {
                    let (c, p) = (l.client, l.port);
                    let lease = self.leases.renew(c, p, now + lease_len).cloned();
                    let lease = lease.expect("lease found just above");
                    let bytes = self.grant_bytes(wall_ms, nonce, lease.port, client);
                    return self.fit(bytes, limit, |bytes| Decision::Refresh { lease, timeout: lease_len, to: from, bytes });
                }
                match self.leases.allocate(now, member, &req.cert.name, client, destination, lease_len) {
                    Ok(lease) => {
                        let bytes = self.grant_bytes(wall_ms, nonce, lease.port, client);
                        if bytes.len() > limit {
                            self.leases.end(now, lease.client, lease.port);
                            return self.ignore("grant would be larger than the request");
                        }
                        self.count_grant();
                        Decision::Install { lease, timeout: lease_len, to: from, bytes, nonce }
                    }
                    Err(e) => {
                        let (reason, d) = match e {
                            LeaseError::QuotaExceeded => (
                                RefusalReason::QuotaExceeded,
                                format!("{} holds {} tunnels", req.cert.name, self.settings.max_per_member),
                            ),
                            LeaseError::NoPortsLeft => (RefusalReason::NoPortsLeft, "port range exhausted".into()),
                        };
                        self.refusal(wall_ms, from, nonce, reason, d, limit)
                    }
                }
            }
            RequestKind::Renew { port, destination } => {
                let owned = self
                    .leases
                    .lookup(client, port)
                    .is_some_and(|l| l.member == member && l.destination == destination);
                if !owned {
                    let d = format!("no lease on port {port} for {client}");
                    return self.refusal(wall_ms, from, nonce, RefusalReason::UnknownLease, d, limit);
                }
                let lease = self.leases.renew(client, port, now + lease_len).cloned();
                let lease = lease.expect("lease checked just above");
                let bytes = self.grant_bytes(wall_ms, nonce, port, client);
                self.fit(bytes, limit, |bytes| Decision::Refresh { lease, timeout: lease_len, to: from, bytes })
            }
            RequestKind::Release { port } => {
                let owned = self.leases.lookup(client, port).is_some_and(|l| l.member == member);
                if !owned {
                    let d = format!("no lease on port {port} for {client}");
                    return self.refusal(wall_ms, from, nonce, RefusalReason::UnknownLease, d, limit);
                }
                let lease = self.leases.end(now, client, port).expect("lease checked just above");
                let bytes = self.response_bytes(wall_ms, nonce, Outcome::Granted { port, lease_secs: 0, observed: client });
                self.fit(bytes, limit, |bytes| Decision::Remove { lease, to: from, bytes })
            }
        }
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
        self.refusal(wall_ms, to, nonce, RefusalReason::Internal, why.to_owned(), limit)
    }

    /// Ends leases that expired by `now`; the daemon removes their elements and
    /// conntrack entries.
    pub fn expire(&mut self, now: Instant) -> Vec<Lease> {
        self.leases.expire(now)
    }

    /// Revokes a member at run time: its leases end now.
    pub fn revoke(&mut self, now: Instant, member: MemberId) -> Vec<Lease> {
        self.revocations.insert(member);
        self.leases.end_member(now, member)
    }

    /// When [`Waypoint::expire`] next has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.leases.next_expiry()
    }

    /// The live leases.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.iter()
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn count_grant(&mut self) {
        self.stats.granted = self.stats.granted.wrapping_add(1);
    }

    fn ignore(&mut self, reason: &str) -> Decision {
        let c = self.stats.refused.entry("garbage".to_owned()).or_default();
        *c = c.wrapping_add(1);
        Decision::Ignore { reason: reason.to_owned() }
    }

    fn fit(&mut self, bytes: Vec<u8>, limit: usize, make: impl FnOnce(Vec<u8>) -> Decision) -> Decision {
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
            return Decision::Ignore { reason: format!("{reason}: {detail} (not answered: reply would amplify)") };
        }
        Decision::Reply { to, bytes, refused }
    }

    fn grant_bytes(&self, wall_ms: u64, nonce: Nonce, port: u16, observed: IpAddr) -> Vec<u8> {
        let lease_secs = u32::try_from(self.settings.lease.as_secs()).unwrap_or(u32::MAX);
        self.response_bytes(wall_ms, nonce, Outcome::Granted { port, lease_secs, observed })
    }

    fn response_bytes(&self, wall_ms: u64, nonce: Nonce, outcome: Outcome) -> Vec<u8> {
        let body = ResponseBody { nonce, timestamp_ms: wall_ms, outcome };
        let resp = Response::sign(self.cert.clone(), &self.key, body);
        proto::encode(&Message::Response(resp))
    }
}
