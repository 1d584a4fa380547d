//! The LAN proxy's side of converters (issue 17), pure: which converter a
//! connection to a server without MPTCP goes through, the Convert message
//! that starts it (Connect TLV + the member's signed cookie), what the
//! converter's answer means, and which converters are held down after a
//! refusal or a failure (the connection then goes direct: fail open).
//!
//! ```
//! use std::time::Instant;
//! use dcol::convert::wire::{self, ErrorCode, Message};
//! use dcol::proxy::convert::{Answer, ConverterPeer, Converters};
//!
//! let peers = vec![ConverterPeer { name: "carol".into(), address: "192.0.2.9:7447".parse().unwrap() }];
//! let mut c = Converters::new(peers, None, [0; 8], true);
//! let now = Instant::now();
//! // Without a member identity there is no cookie, so no conversion.
//! assert!(c.pick(now, 0, "198.51.100.7:5201".parse().unwrap(), "10.0.0.1".parse().unwrap()).is_none());
//! let refusal = wire::encode(&Message::refusal(ErrorCode::NOT_AUTHORIZED, None));
//! assert_eq!(Converters::answer(&refusal), Answer::Refused(ErrorCode::NOT_AUTHORIZED));
//! assert_eq!(Converters::answer(&refusal[..2]), Answer::Incomplete(8));
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::convert::cookie::{self, Ask};
use crate::convert::wire::{self, ErrorCode, Message, Tlv};
use crate::proto::Nonce;
use crate::trust::{Certificate, SecretKey};

/// A converter is skipped this long after its first refusal or failure,
/// doubling with each further one up to [`MAX_HOLD_DOWN`].
pub const HOLD_DOWN: Duration = Duration::from_secs(30);
/// The longest hold-down.
pub const MAX_HOLD_DOWN: Duration = Duration::from_secs(600);

/// A member that converts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConverterPeer {
    /// Its certificate name (cookies are addressed to it).
    pub name: String,
    /// Its converter's MPTCP address.
    pub address: SocketAddr,
}

/// What the converter's Convert message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// So many bytes of it are needed in all (read no more than that).
    Incomplete(usize),
    /// The conversion is on; this many bytes were the message.
    Converted(usize),
    /// Refused with this RFC 8803 error.
    Refused(ErrorCode),
    /// Not a Convert message.
    Malformed(wire::WireError),
}

/// How one connection through a converter went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The converter answered: bytes move.
    Converted,
    /// It refused (Error TLV).
    Refused,
    /// It broke or timed out before answering.
    Failed,
}

/// A converter picked for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// Index, for [`Converters::outcome`] and [`Converters::closed`].
    pub idx: usize,
    /// Where to connect.
    pub address: SocketAddr,
    /// The Convert message to start the stream with.
    pub message: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct State {
    used: ConverterUse,
    down_until: Option<Instant>,
    strikes: u32,
}

/// What the LAN proxy sent through one converter (issue 17), in
/// `client.lan_proxy.converters`: `{ "converter": "carol", "address":
/// "10.0.5.2:7447", "converted": 5, "active": 1, "refused": 0, "failed": 0,
/// "held_down": false }`. `refused` counts Error TLV answers, `failed`
/// connections that broke before an answer; both went direct instead.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConverterUse {
    /// The converter's name.
    pub converter: String,
    /// Its MPTCP address.
    pub address: String,
    /// Connections it converted.
    pub converted: u64,
    /// Converted connections open now.
    pub active: u64,
    /// Refusals (Error TLV) it answered; those went direct.
    pub refused: u64,
    /// Connections that failed before its answer; those went direct.
    pub failed: u64,
    /// Not used for now after a refusal or failure.
    pub held_down: bool,
}

/// The converters the proxy may use.
#[derive(Debug)]
pub struct Converters {
    peers: Vec<ConverterPeer>,
    state: Vec<State>,
    identity: Option<(Certificate, SecretKey)>,
    nonce_prefix: [u8; 8],
    counter: u64,
    /// TCP Fast Open on the connection to the converter.
    pub fastopen: bool,
    /// This router's public IPv4 address, when known: a cookie names it as
    /// the source where the local address is private.
    public4: Option<IpAddr>,
}

impl Converters {
    /// Converters `peers`; cookies signed as `identity`; nonces start with
    /// `nonce_prefix` (random per start).
    pub fn new(
        peers: Vec<ConverterPeer>,
        identity: Option<(Certificate, SecretKey)>,
        nonce_prefix: [u8; 8],
        fastopen: bool,
    ) -> Converters {
        let mut c = Converters {
            peers: Vec::new(),
            state: Vec::new(),
            identity,
            nonce_prefix,
            counter: 0,
            fastopen,
            public4: None,
        };
        c.set_peers(peers);
        c
    }

    /// New peers (counters and hold-downs of the same names stay) and
    /// identity.
    pub fn set_peers(&mut self, peers: Vec<ConverterPeer>) {
        let mut state = Vec::with_capacity(peers.len());
        for p in &peers {
            let old = self.peers.iter().position(|o| o == p);
            let mut s = old.map(|i| self.state[i].clone()).unwrap_or_default();
            s.used.converter = p.name.clone();
            s.used.address = p.address.to_string();
            state.push(s);
        }
        self.peers = peers;
        self.state = state;
    }

    /// The member identity cookies are signed with.
    pub fn set_identity(&mut self, identity: Option<(Certificate, SecretKey)>) {
        self.identity = identity;
    }

    /// This router's public address (from NAT traversal), if known.
    pub fn set_public_address(&mut self, public: Option<IpAddr>) {
        self.public4 = public.filter(IpAddr::is_ipv4);
    }

    /// Whether any converter is configured.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// A converter for a connection to `server` (at `wall_ms`, Unix ms)
    /// from the local address `local`, with its Convert message; `None`
    /// when every converter is held down or there is no identity.
    pub fn pick(
        &mut self,
        now: Instant,
        wall_ms: u64,
        server: SocketAddr,
        local: IpAddr,
    ) -> Option<Pick> {
        let (cert, key) = self.identity.as_ref()?;
        let up: Vec<usize> = (0..self.peers.len())
            .filter(|&i| self.state[i].down_until.is_none_or(|t| t <= now))
            .collect();
        if up.is_empty() {
            return None;
        }
        // Spread servers over the converters, each server to the same one.
        let h = server
            .ip()
            .to_canonical()
            .to_string()
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        let idx = up[h as usize % up.len()];
        self.counter = self.counter.wrapping_add(1);
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&self.nonce_prefix);
        n[8..].copy_from_slice(&self.counter.to_be_bytes());
        let source = match (local, self.public4) {
            (IpAddr::V4(l), Some(p)) if l.is_private() || l.is_unspecified() => p,
            _ => local,
        };
        let ask = Ask {
            converter: self.peers[idx].name.clone(),
            destination: server,
            source,
            timestamp_ms: wall_ms,
            nonce: Nonce(n),
        };
        let message = wire::encode(&Message(vec![
            Tlv::Connect {
                dest: server,
                options: Vec::new(),
            },
            Tlv::Cookie(cookie::make(cert, key, &ask)),
        ]));
        Some(Pick {
            idx,
            address: self.peers[idx].address,
            message,
        })
    }

    /// Reads the converter's Convert message from the bytes read so far.
    pub fn answer(b: &[u8]) -> Answer {
        match wire::message_len(b) {
            Ok(None) => return Answer::Incomplete(2),
            Ok(Some(n)) if b.len() < n => return Answer::Incomplete(n),
            Ok(Some(_)) => {}
            Err(e) => return Answer::Malformed(e),
        }
        match wire::parse(b) {
            Ok((m, n)) => match m.error() {
                Some(code) => Answer::Refused(code),
                None => Answer::Converted(n),
            },
            Err(e) => Answer::Malformed(e),
        }
    }

    /// Records how a connection through converter `idx` went at `now`;
    /// returns the hold-down a refusal or failure starts.
    pub fn outcome(&mut self, idx: usize, now: Instant, o: Outcome) -> Option<Duration> {
        let s = self.state.get_mut(idx)?;
        match o {
            Outcome::Converted => {
                s.used.converted = s.used.converted.wrapping_add(1);
                s.used.active = s.used.active.wrapping_add(1);
                s.strikes = 0;
                None
            }
            Outcome::Refused | Outcome::Failed => {
                if o == Outcome::Refused {
                    s.used.refused = s.used.refused.wrapping_add(1);
                } else {
                    s.used.failed = s.used.failed.wrapping_add(1);
                }
                let hold = HOLD_DOWN
                    .saturating_mul(1 << s.strikes.min(5))
                    .min(MAX_HOLD_DOWN);
                s.strikes = s.strikes.saturating_add(1);
                s.down_until = Some(now + hold);
                Some(hold)
            }
        }
    }

    /// A converted connection through `idx` closed.
    pub fn closed(&mut self, idx: usize) {
        if let Some(s) = self.state.get_mut(idx) {
            s.used.active = s.used.active.saturating_sub(1);
        }
    }

    /// The converter's name.
    pub fn name(&self, idx: usize) -> &str {
        self.peers.get(idx).map_or("?", |p| p.name.as_str())
    }

    /// Counters per converter for `dcol status`.
    pub fn status(&self, now: Instant) -> Vec<ConverterUse> {
        self.state
            .iter()
            .map(|s| ConverterUse {
                held_down: s.down_until.is_some_and(|t| t > now),
                ..s.used.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{cert, key};
    use crate::trust::Roles;

    fn peers() -> Vec<ConverterPeer> {
        ["carol", "dave"]
            .iter()
            .enumerate()
            .map(|(i, n)| ConverterPeer {
                name: (*n).into(),
                address: SocketAddr::new(IpAddr::from([192, 0, 2, i as u8 + 1]), 7447),
            })
            .collect()
    }

    fn converters() -> Converters {
        let id = (cert("bob", 3, Roles::CLIENT), key(3));
        Converters::new(peers(), Some(id), [1; 8], true)
    }

    #[test]
    fn picks_carry_a_fresh_signed_cookie_and_spread_servers() {
        let mut c = converters();
        let now = Instant::now();
        let server: SocketAddr = "198.51.100.7:5201".parse().unwrap();
        let local = "10.0.1.1".parse().unwrap();
        let a = c.pick(now, 1000, server, local).unwrap();
        let b = c.pick(now, 1000, server, local).unwrap();
        assert_eq!(a.idx, b.idx, "one server, one converter");
        assert_ne!(a.message, b.message, "a nonce per connection");
        let (m, n) = wire::parse(&a.message).unwrap();
        assert_eq!(n, a.message.len());
        let Tlv::Cookie(ck) = &m.0[1] else {
            panic!("{m:?}")
        };
        let (req, dest) = cookie::read(ck).unwrap();
        assert_eq!((dest, req.body.source), (server, local));
        assert_eq!(req.body.waypoint, c.name(a.idx));
        // Behind a NAT, the public address is named.
        c.set_public_address(Some("198.51.100.99".parse().unwrap()));
        let p = c
            .pick(now, 1000, server, "192.168.1.2".parse().unwrap())
            .unwrap();
        let (m, _) = wire::parse(&p.message).unwrap();
        let Tlv::Cookie(ck) = &m.0[1] else { panic!() };
        assert_eq!(
            cookie::read(ck).unwrap().0.body.source,
            "198.51.100.99".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn refusals_and_failures_hold_a_converter_down_with_backoff() {
        let mut c = converters();
        let now = Instant::now();
        let server: SocketAddr = "198.51.100.7:5201".parse().unwrap();
        let local = "10.0.1.1".parse().unwrap();
        let first = c.pick(now, 0, server, local).unwrap().idx;
        assert_eq!(c.outcome(first, now, Outcome::Refused), Some(HOLD_DOWN));
        let other = c.pick(now, 0, server, local).unwrap().idx;
        assert_ne!(first, other, "the held-down one is skipped");
        assert_eq!(c.outcome(other, now, Outcome::Failed), Some(HOLD_DOWN));
        assert!(
            c.pick(now, 0, server, local).is_none(),
            "all down: go direct"
        );
        let later = now + HOLD_DOWN;
        assert!(c.pick(later, 0, server, local).is_some());
        assert_eq!(
            c.outcome(first, later, Outcome::Failed),
            Some(HOLD_DOWN * 2)
        );
        let st = c.status(later);
        assert_eq!(
            (st[first].refused, st[first].failed, st[first].held_down),
            (1, 1, true)
        );
        assert_eq!(c.outcome(other, later, Outcome::Converted), None);
        c.closed(other);
        assert_eq!(c.status(later)[other].converted, 1);
        assert_eq!(c.status(later)[other].active, 0);
    }

    #[test]
    fn answers() {
        let ok = wire::encode(&Message::default());
        assert_eq!(Converters::answer(&ok), Answer::Converted(4));
        assert_eq!(Converters::answer(&[]), Answer::Incomplete(2));
        assert!(matches!(
            Converters::answer(&[9, 1, 0, 0]),
            Answer::Malformed(_)
        ));
    }
}
