//! Converter members (issue 17): the 0-RTT TCP Convert Protocol (RFC 8803)
//! so that detours help servers that do not speak MPTCP.
//!
//! A client opens MPTCP to a converter and starts the stream with a
//! Convert message ([`wire`]): a Connect TLV naming the plain TCP server
//! and a Cookie TLV holding the member's signed request ([`cookie`]). The
//! converter checks it ([`Converter::admit`]), opens plain TCP to the
//! server, answers with a Convert message (an Error TLV when it refuses)
//! and relays the bytes. The client's path manager adds detour subflows
//! toward the converter through other waypoints, as for any MPTCP server.
//!
//! This module is pure: the admission decisions, on `now`, bytes and
//! addresses; `sys::convert` holds the sockets and the relay,
//! `daemon::waypoint::convert` wires them.
//!
//! What a converter refuses, with which RFC 8803 error (§5.2.6):
//! - more connections from one source (IPv4 address, IPv6 /64) than
//!   `max_per_source`, or more admissions a second than its bucket holds:
//!   Resource Exceeded (64);
//! - a malformed or truncated message: Malformed Message (1); another
//!   version: Unsupported Version (0); a TLV of an unknown type:
//!   Unsupported Message (2, value: the type); no Connect TLV: Malformed;
//! - no cookie: Missing Cookie (3);
//! - a cookie that is not a fresh, signed conversion request of a member
//!   of the collective with the client role, addressed to this converter,
//!   from the address the connection comes from, for the Connect TLV's
//!   destination, with an unused nonce; a revoked member; a destination the
//!   owner's policy forbids (the NAT detours' policy: routed to the WAN,
//!   not special-purpose space, not a denied port): Not Authorized (32);
//! - the month's donation used up, or the member holding
//!   `max_per_member` conversions: Resource Exceeded (64).
//!
//! Connecting to the server can fail later: refused or reset gives
//! Connection Reset (96), no answer Destination Unreachable (97)
//! (`sys::convert::connect_error`).

pub mod cookie;
pub mod wire;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::proto::Nonce;
use crate::routes::Routes;
use crate::trust::{CertCache, MemberId, PublicKey, Revocations, Roles, TrustError};
use crate::waypoint::limits::{Buckets, Source};
use crate::waypoint::policy;
use wire::{ErrorCode, Message, Tlv, WireError};

/// The owner's settings for the converter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The destination rules (the waypoint's: allowed blocks, denied ports).
    pub destinations: policy::Rules,
    /// How far a cookie's timestamp may be from our clock.
    pub max_skew: Duration,
    /// Conversions one member may hold at once.
    pub max_per_member: u32,
    /// Connections one source (IPv4 address, IPv6 /64) may hold at once,
    /// admitted or still sending its header.
    pub max_per_source: u32,
    /// Admissions one source may ask a second (each costs a signature
    /// check); twice that in a burst.
    pub source_rate: u32,
}

/// Why a connection is refused: the RFC 8803 error and the log's detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The Error TLV's code.
    pub code: ErrorCode,
    /// The Error TLV's value (Unsupported Message: the TLV type).
    pub value: Option<u8>,
    /// For the log.
    pub why: String,
    /// The member, when the cookie named one.
    pub member: Option<String>,
}

impl Refusal {
    fn new(code: ErrorCode, why: impl Into<String>) -> Refusal {
        Refusal {
            code,
            value: None,
            why: why.into(),
            member: None,
        }
    }

    fn of(mut self, member: &str) -> Refusal {
        self.member = Some(member.to_owned());
        self
    }

    /// The Convert message that answers it.
    pub fn message(&self) -> Message {
        Message::refusal(self.code, self.value)
    }
}

/// A conversion the converter agreed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The member.
    pub member: MemberId,
    /// Its certificate name.
    pub name: String,
    /// The plain TCP server.
    pub destination: SocketAddr,
    /// The cookie (the signed request), kept as evidence.
    pub request: Vec<u8>,
}

/// Counters for `dcol status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: u64,
    /// Conversions admitted.
    pub admitted: u64,
    /// Refusals by RFC 8803 error name.
    pub refused: BTreeMap<String, u64>,
}

/// The converter's admission state.
#[derive(Debug)]
pub struct Converter {
    settings: Settings,
    /// Our certificate name: cookies must be addressed to it.
    name: String,
    root: PublicKey,
    revocations: Revocations,
    routes: Routes,
    certs: CertCache,
    /// Nonces used, until they are stale anyway.
    seen: HashMap<(MemberId, Nonce), Instant>,
    seen_order: VecDeque<(Instant, (MemberId, Nonce))>,
    per_member: HashMap<MemberId, u32>,
    per_source: HashMap<Source, u32>,
    buckets: Buckets<Source>,
    used_up: Option<String>,
    stats: Stats,
}

/// Most nonces remembered (a member's cookies beyond it are refused until
/// older ones are stale).
const MAX_SEEN: usize = 65_536;

impl Converter {
    /// A converter answering as `name` for the collective `root`.
    pub fn new(
        settings: Settings,
        name: String,
        root: PublicKey,
        revocations: Revocations,
        routes: Routes,
    ) -> Converter {
        let rate = settings.source_rate.max(1);
        Converter {
            buckets: Buckets::new(rate, rate.saturating_mul(2), 4096),
            settings,
            name,
            root,
            revocations,
            routes,
            certs: CertCache::new(256),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            per_member: HashMap::new(),
            per_source: HashMap::new(),
            used_up: None,
            stats: Stats::default(),
        }
    }

    /// New settings, name and revocations (a reload); running conversions
    /// stay (the caller ends those of newly revoked members).
    pub fn reconfigure(&mut self, settings: Settings, name: String, revocations: Revocations) {
        let rate = settings.source_rate.max(1);
        self.buckets.set_rate(rate, rate.saturating_mul(2));
        self.settings = settings;
        self.name = name;
        self.revocations = revocations;
    }

    /// The revocations in force changed.
    pub fn set_revocations(&mut self, revocations: Revocations) {
        self.revocations = revocations;
    }

    /// Whether `member` is revoked (its running conversions must end).
    pub fn is_revoked(&self, member: &MemberId) -> bool {
        self.revocations.is_revoked(member)
    }

    /// The routing state changed.
    pub fn set_routes(&mut self, routes: Routes) {
        self.routes = routes;
    }

    /// Why new conversions are refused for now (the month's donation is
    /// used up), or `None`.
    pub fn set_used_up(&mut self, why: Option<String>) {
        self.used_up = why;
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// A connection from `peer` was accepted: counted against its source
    /// until [`Converter::close`]; `Err` when the source holds its share
    /// (the connection is answered with the refusal and closed, and not
    /// counted).
    pub fn open(&mut self, peer: IpAddr) -> Result<(), Refusal> {
        self.stats.accepted = self.stats.accepted.wrapping_add(1);
        let source = Source::of(peer);
        let n = self.per_source.entry(source).or_insert(0);
        if *n >= self.settings.max_per_source {
            let why = format!(
                "{} connections open from {} (convert_max_per_source)",
                n,
                source.addr()
            );
            if *n == 0 {
                self.per_source.remove(&source);
            }
            return Err(self.refused(Refusal::new(ErrorCode::RESOURCE_EXCEEDED, why)));
        }
        *n += 1;
        Ok(())
    }

    /// The connection from `peer` is gone; `member`: it was admitted for it.
    pub fn close(&mut self, peer: IpAddr, member: Option<MemberId>) {
        let source = Source::of(peer);
        if let Some(n) = self.per_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
        if let Some(m) = member {
            self.close_member(m);
        }
    }

    /// A conversion of `member` is over (its source may stay connected).
    pub fn close_member(&mut self, member: MemberId) {
        if let Some(n) = self.per_member.get_mut(&member) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_member.remove(&member);
            }
        }
    }

    /// Decides on the Convert message (`header`: what parsing it gave) of
    /// a connection from `peer` at `now` (`wall_ms`: Unix milliseconds).
    /// An admitted conversion counts against its member until
    /// [`Converter::close`].
    pub fn admit(
        &mut self,
        now: Instant,
        wall_ms: u64,
        peer: IpAddr,
        header: Result<&Message, &WireError>,
    ) -> Result<Admitted, Refusal> {
        let r = self.decide(now, wall_ms, peer, header);
        match r {
            Ok(a) => {
                self.stats.admitted = self.stats.admitted.wrapping_add(1);
                *self.per_member.entry(a.member).or_insert(0) += 1;
                Ok(a)
            }
            Err(e) => Err(self.refused(e)),
        }
    }

    fn refused(&mut self, r: Refusal) -> Refusal {
        let n = self
            .stats
            .refused
            .entry(r.code.name().to_owned())
            .or_insert(0);
        *n = n.wrapping_add(1);
        r
    }

    fn decide(
        &mut self,
        now: Instant,
        wall_ms: u64,
        peer: IpAddr,
        header: Result<&Message, &WireError>,
    ) -> Result<Admitted, Refusal> {
        let msg = header.map_err(|e| {
            let (code, value) = e.code();
            Refusal {
                value,
                ..Refusal::new(code, e.to_string())
            }
        })?;
        let mut connect = None;
        let mut cookie = None;
        for t in &msg.0 {
            match t {
                Tlv::Connect { dest, .. } if connect.is_none() => connect = Some(*dest),
                Tlv::Cookie(c) if cookie.is_none() => cookie = Some(c.as_slice()),
                Tlv::Connect { .. } | Tlv::Cookie(_) => {
                    let why = "more than one Connect or Cookie TLV";
                    return Err(Refusal::new(ErrorCode::MALFORMED_MESSAGE, why));
                }
                _ => {}
            }
        }
        let Some(dest) = connect else {
            let why = "no Connect TLV";
            return Err(Refusal::new(ErrorCode::MALFORMED_MESSAGE, why));
        };
        let Some(cookie) = cookie else {
            let why = format!("{dest}: no Cookie TLV (members sign their conversions)");
            return Err(Refusal::new(ErrorCode::MISSING_COOKIE, why));
        };
        if !self.buckets.charge(Source::of(peer), now) {
            let why = format!("{peer}: over its admission rate");
            return Err(Refusal::new(ErrorCode::RESOURCE_EXCEEDED, why));
        }
        let (member, name) = self.authenticate(now, wall_ms, peer, dest, cookie)?;
        if let Some(why) = &self.used_up {
            let r = Refusal::new(ErrorCode::RESOURCE_EXCEEDED, why.clone());
            return Err(r.of(&name));
        }
        if let Err(why) = policy::check_destination(dest, &self.settings.destinations, &self.routes)
        {
            let r = Refusal::new(ErrorCode::NOT_AUTHORIZED, format!("{dest}: {why}"));
            return Err(r.of(&name));
        }
        let held = self.per_member.get(&member).copied().unwrap_or(0);
        if held >= self.settings.max_per_member {
            let why = format!("{name} holds {held} conversions (max_tunnels_per_member)");
            return Err(Refusal::new(ErrorCode::RESOURCE_EXCEEDED, why).of(&name));
        }
        self.remember(now, member, cookie)?;
        Ok(Admitted {
            member,
            name,
            destination: dest,
            request: crate::proto::unpadded(cookie).unwrap_or(cookie).to_vec(),
        })
    }

    /// The cookie's checks, cheapest first; the member's id and name.
    fn authenticate(
        &mut self,
        _now: Instant,
        wall_ms: u64,
        peer: IpAddr,
        dest: SocketAddr,
        cookie: &[u8],
    ) -> Result<(MemberId, String), Refusal> {
        let denied = |why: String| Refusal::new(ErrorCode::NOT_AUTHORIZED, why);
        let (req, asked) = cookie::read(cookie).map_err(|e| denied(e.to_string()))?;
        let name = req.cert.name.clone();
        if asked != dest {
            let why = format!("the cookie names {asked}, the Connect TLV {dest}");
            return Err(denied(why).of(&name));
        }
        let skew = self.settings.max_skew.as_millis() as u64;
        if req.body.timestamp_ms.abs_diff(wall_ms) > skew {
            let off = i128::from(req.body.timestamp_ms) - i128::from(wall_ms);
            let why = format!("cookie timestamp {off} ms off our clock (limit {skew} ms)");
            return Err(denied(why).of(&name));
        }
        if req.body.waypoint != self.name {
            let why = format!("cookie addressed to '{}'", req.body.waypoint);
            return Err(denied(why).of(&name));
        }
        let now_s = wall_ms / 1000;
        let trust = |e: TrustError| match e {
            TrustError::Revoked { member } => format!("member {member} is revoked"),
            e => e.to_string(),
        };
        let checked = req.cert.check_fields(&self.root, &self.revocations, now_s);
        checked.map_err(|e| denied(trust(e)).of(&name))?;
        if !req.cert.roles.contains(Roles::CLIENT) {
            return Err(denied("member lacks the client role".into()).of(&name));
        }
        self.certs
            .check(&req.cert, &self.root, &self.revocations, now_s)
            .and_then(|()| req.verify_signature())
            .map_err(|e| denied(trust(e)).of(&name))?;
        if req.body.source.to_canonical() != peer.to_canonical() {
            let why = format!(
                "cookie names source {}, the connection comes from {peer}",
                req.body.source
            );
            return Err(denied(why).of(&name));
        }
        Ok((req.cert.member, name))
    }

    /// Uses the cookie's nonce up (a replayed cookie is refused).
    fn remember(&mut self, now: Instant, member: MemberId, cookie: &[u8]) -> Result<(), Refusal> {
        while let Some(&(t, k)) = self.seen_order.front() {
            if t > now {
                break;
            }
            self.seen_order.pop_front();
            self.seen.remove(&k);
        }
        let nonce = match cookie::read(cookie) {
            Ok((r, _)) => r.body.nonce,
            Err(e) => return Err(Refusal::new(ErrorCode::NOT_AUTHORIZED, e.to_string())),
        };
        let key = (member, nonce);
        if self.seen.contains_key(&key) {
            let why = "cookie already used (replay)".to_owned();
            return Err(Refusal::new(ErrorCode::NOT_AUTHORIZED, why));
        }
        if self.seen.len() >= MAX_SEEN {
            let why = "too many recent conversions to remember".to_owned();
            return Err(Refusal::new(ErrorCode::RESOURCE_EXCEEDED, why));
        }
        let until = now + self.settings.max_skew * 2;
        self.seen.insert(key, until);
        self.seen_order.push_back((until, key));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
