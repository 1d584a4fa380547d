//! The client's path-manager state machine. No I/O, no clock: it takes kernel
//! events, waypoint datagrams and `now`, and returns [`Action`]s.
//!
//! For each outgoing MPTCP connection that is ESTABLISHED it asks up to
//! `max_detours` waypoints (in parallel) for a NAT tunnel to the connection's
//! server, creates one subflow per grant (local address of the connection with
//! one non-zero local id, remote = waypoint address and granted port), renews
//! each lease every `renew_interval` (the renewal doubles as the waypoint's
//! liveness probe), drops detours through a waypoint that stops answering, and
//! stops adding detours to a connection whose server refuses joins (a stock
//! server accepts 2 extra subflows by default: a refused join shows as
//! SUB_ESTABLISHED immediately followed by SUB_CLOSED).
//!
//! Every request names the source address the waypoint will see
//! ([`proto::RequestBody::source`]): the address that waypoint reported
//! (`observed`) for earlier requests from the same local address, else a
//! public address STUN or the gateway found ([`Client::set_public_address`]),
//! else the local address itself. A wrong guess (a NAT on first contact)
//! costs one round trip: the waypoint's signed [`Outcome::WrongSource`] names
//! the address, and the request goes again at once with it. An unsigned
//! refusal is only logged: anyone can forge one, so it never ends a lease,
//! stops a retransmission or holds a waypoint down.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

mod steer;
mod vpn;
pub use vpn::{VpnPeer, VpnState};

use super::strategy::{Judge, Meter, Scoreboard, StrategySettings, Tested};
use crate::mptcp::{AddrId, PmEvent, SubflowInfo, Token};
use crate::proto::{
    self, Message, Nonce, Outcome, RefusalReason, Request, RequestBody, RequestKind,
};
use crate::proxy::Gate;
use crate::trust::{Certificate, PublicKey, Revocations, Roles, SecretKey};

/// The local address id we use for detour subflows (RFC 8684 §3.2: id 0 is the
/// initial subflow's; any other id names the address in MP_JOIN).
pub const DETOUR_LOCAL_ID: AddrId = AddrId(1);

/// A subflow that closes sooner than this after it was established was refused
/// by the server (its subflow limit), not lost on the path.
const JOIN_REFUSED_WINDOW: Duration = Duration::from_millis(1000);

/// How long a waypoint whose owner's monthly donation is used up is skipped:
/// it refuses until the month ends or its owner raises the cap.
pub(crate) const USED_UP_HOLDDOWN: Duration = Duration::from_secs(3600);

/// How long a waypoint that refused a new tunnel for our request rate is
/// not asked for another.
pub(crate) const RATE_LIMITED_HOLDDOWN: Duration = Duration::from_secs(2);

/// Attempts for a detour request before the waypoint counts as unreachable.
const REQUEST_ATTEMPTS: u32 = 4;

/// Fresh requests a connection may make after losing detours.
const MAX_RETRIES: u32 = 3;

/// Errors of a subflow that mean the waypoint's mapping is gone (ECONNREFUSED:
/// the port is not mapped; ECONNRESET: the waypoint lost its state).
const ECONNREFUSED: u32 = 111;
const ECONNRESET: u32 = 104;

/// What the daemon must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a signaling datagram.
    Send {
        /// Source address: the connection's own, which its detour subflows
        /// will use too (the waypoint maps the address it sees).
        from: IpAddr,
        /// Waypoint address.
        to: SocketAddr,
        /// Encoded request.
        bytes: Vec<u8>,
    },
    /// `MPTCP_PM_CMD_SUBFLOW_CREATE`.
    CreateSubflow {
        /// Connection.
        token: Token,
        /// Local address (the connection's).
        local: IpAddr,
        /// Non-zero local address id.
        local_id: AddrId,
        /// Waypoint address and granted port.
        remote: SocketAddr,
    },
    /// Bring up the WireGuard tunnel to VPN peer `peer` as granted.
    VpnUp {
        /// Peer index.
        peer: usize,
        /// Our tunnel address.
        address: std::net::Ipv4Addr,
        /// Our IPv6 tunnel address, if granted.
        address6: Option<std::net::Ipv6Addr>,
        /// The waypoint's WireGuard public key.
        wg_key: [u8; 32],
        /// The waypoint's WireGuard endpoint.
        endpoint: SocketAddr,
    },
    /// Take the tunnel to VPN peer `peer` down.
    VpnDown {
        /// Peer index.
        peer: usize,
    },
    /// `MPTCP_PM_CMD_SET_FLAGS`: mark a detour subflow backup (the server
    /// and we stop sending on it) or clear the flag.
    SetBackup {
        /// Connection.
        token: Token,
        /// Local address and port of the subflow.
        local: SocketAddr,
        /// Remote address and port of the subflow.
        remote: SocketAddr,
        /// Backup on or off.
        backup: bool,
    },
    /// `MPTCP_PM_CMD_SUBFLOW_DESTROY`.
    DestroySubflow {
        /// Connection.
        token: Token,
        /// Local address and port of the subflow.
        local: SocketAddr,
        /// Remote address and port of the subflow.
        remote: SocketAddr,
    },
}

/// One configured waypoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The name in its certificate; responses must come from a certificate with it.
    pub name: String,
    /// Signaling address.
    pub address: SocketAddr,
    /// A VPN (WireGuard) waypoint rather than a NAT one.
    pub vpn: bool,
}

/// Tunables.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Detours per connection.
    pub max_detours: u8,
    /// First retransmission timeout of a request (doubles per attempt).
    pub request_timeout: Duration,
    /// Lease renewal and liveness probe interval.
    pub renew_interval: Duration,
    /// Unanswered renewals before a waypoint counts as gone.
    pub liveness_misses: u32,
    /// How long an unreachable waypoint is skipped for new connections.
    pub holddown: Duration,
    /// The detour gate of connections the LAN proxy did not open (programs on
    /// this host): their bytes are not inspected, so they are detoured unless
    /// the policy is `none`.
    pub own_connections: Gate,
    /// The detour strategy's tunables.
    pub strategy: StrategySettings,
}

/// Where a detour stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetourState {
    /// Waiting for the waypoint's grant.
    Requesting,
    /// Granted; SUBFLOW_CREATE sent, waiting for SUB_ESTABLISHED.
    Connecting,
    /// Carrying data.
    Established,
    /// Ended; the text says why.
    Failed(String),
}

impl DetourState {
    /// Short name for status output.
    pub fn name(&self) -> &'static str {
        match self {
            DetourState::Requesting => "requesting",
            DetourState::Connecting => "connecting",
            DetourState::Established => "established",
            DetourState::Failed(_) => "failed",
        }
    }
}

/// One detour of a connection.
#[derive(Debug, Clone)]
pub struct Detour {
    /// Index into the peers.
    pub peer: usize,
    /// State.
    pub state: DetourState,
    /// Granted port.
    pub port: Option<u16>,
    /// Nonce of the request that got the grant: names the lease in renewals.
    lease: Option<Nonce>,
    /// Local port of the subflow once established.
    pub local_port: Option<u16>,
    /// ESTABLISHED of the connection → SUB_ESTABLISHED of this detour.
    pub setup: Option<Duration>,
    /// Unanswered renewals in a row.
    misses: u32,
    renew_due: Option<Instant>,
    established_at: Option<Instant>,
    /// VPN detours: the tunnel address (local) and the server (remote).
    vpn: Option<(IpAddr, SocketAddr)>,
    /// The strategy's state once the subflow is established.
    pub judge: Option<Judge>,
    /// Its reward went to the scoreboard already.
    scored: bool,
}

impl Conn {
    /// Peers of its live detours.
    fn live_peers(&self) -> Vec<usize> {
        self.detours
            .iter()
            .filter(|d| d.live())
            .map(|d| d.peer)
            .collect()
    }
}

impl Detour {
    fn remote(&self, peers: &[Peer]) -> Option<SocketAddr> {
        if let Some((_, server)) = self.vpn {
            return Some(server);
        }
        self.port
            .map(|p| SocketAddr::new(peers[self.peer].spec.address.ip(), p))
    }

    /// The local address of its subflow: the connection's, or the tunnel's.
    pub fn local_ip(&self, conn_local: IpAddr) -> IpAddr {
        self.vpn.map_or(conn_local, |(l, _)| l)
    }

    /// Whether subflow `sf` is this detour's.
    fn is(&self, peers: &[Peer], sf: &SubflowInfo) -> bool {
        self.live()
            && self.remote(peers) == Some(sf.remote)
            && self.vpn.is_none_or(|(l, _)| l == sf.local.ip())
    }

    fn live(&self) -> bool {
        !matches!(self.state, DetourState::Failed(_))
    }
}

/// One MPTCP connection this host opened.
#[derive(Debug, Clone)]
pub struct Conn {
    /// Kernel token.
    pub token: Token,
    /// Local address and port of the initial subflow.
    pub local: SocketAddr,
    /// The server.
    pub remote: SocketAddr,
    /// When ESTABLISHED arrived.
    pub established_at: Option<Instant>,
    /// The server refused a join: no more detours for this connection.
    pub join_refused: bool,
    /// Detours asked for again after being lost.
    retries: u32,
    /// Its detours.
    pub detours: Vec<Detour>,
    /// The LAN host this connection carries, when the LAN proxy opened it.
    pub lan: Option<SocketAddr>,
    /// Whether it may have detours (the LAN proxy's detour policy).
    pub gate: Gate,
    /// The initial (direct) subflow's counters.
    pub direct: Meter,
    /// Peers whose detour the strategy destroyed: not asked again.
    rejected: Vec<usize>,
}

#[derive(Debug)]
struct Peer {
    spec: PeerSpec,
    down_until: Option<Instant>,
    last_rtt: Option<Duration>,
    /// The tunnel, for VPN peers.
    vpn: Option<vpn::VpnPeer>,
}

impl Peer {
    fn new(spec: PeerSpec) -> Peer {
        Peer {
            vpn: spec.vpn.then(vpn::VpnPeer::default),
            spec,
            down_until: None,
            last_rtt: None,
        }
    }
}

/// A peer as status shows it.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    /// Configured name.
    pub name: String,
    /// Signaling address.
    pub address: SocketAddr,
    /// False while held down after it stopped answering.
    pub up: bool,
    /// Last request round trip.
    pub rtt: Option<Duration>,
}

#[derive(Debug)]
struct Pending {
    token: Token,
    detour: usize,
    kind: RequestKind,
    from: IpAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
    sent_at: Instant,
    next_at: Instant,
    attempts: u32,
    max_attempts: u32,
    /// Sent again after a [`Outcome::WrongSource`]: not a second time.
    rebound: bool,
}

/// The client's protocol state.
#[derive(Debug)]
pub struct Client {
    settings: Settings,
    cert: Certificate,
    key: SecretKey,
    root: PublicKey,
    revocations: Revocations,
    peers: Vec<Peer>,
    conns: BTreeMap<Token, Conn>,
    /// Connections the LAN proxy opened, by upstream local address: the LAN
    /// host and the detour gate.
    proxied: HashMap<SocketAddr, (SocketAddr, Gate)>,
    pending: HashMap<Nonce, Pending>,
    vpn_pending: HashMap<Nonce, vpn::VpnPending>,
    nonce_prefix: [u8; 8],
    nonce_counter: u64,
    /// Waypoint scores, learned across connections.
    board: Scoreboard,
    /// The last park test's outcome per (peer, destination prefix), and
    /// until when it holds for new detours.
    parked: HashMap<(usize, String), (Instant, Tested)>,
    /// The address each waypoint saw our requests from, by (peer, local
    /// address; unspecified for requests whose source routing picks).
    observed: HashMap<(usize, IpAddr), IpAddr>,
    /// This router's public IPv4 address, if STUN or the gateway told.
    public4: Option<IpAddr>,
}

impl Client {
    /// A client signing as `cert`/`key`. `nonce_prefix` must be random per process
    /// start so that nonces never repeat across restarts.
    pub fn new(
        settings: Settings,
        cert: Certificate,
        key: SecretKey,
        root: PublicKey,
        revocations: Revocations,
        peers: Vec<PeerSpec>,
        nonce_prefix: [u8; 8],
    ) -> Self {
        let peers = peers.into_iter().map(Peer::new).collect();
        Client {
            settings,
            cert,
            key,
            root,
            revocations,
            peers,
            conns: BTreeMap::new(),
            proxied: HashMap::new(),
            pending: HashMap::new(),
            vpn_pending: HashMap::new(),
            nonce_prefix,
            nonce_counter: 0,
            board: Scoreboard::default(),
            parked: HashMap::new(),
            observed: HashMap::new(),
            public4: None,
        }
    }

    /// Handles a path-manager event.
    pub fn on_event(&mut self, now: Instant, wall_ms: u64, ev: &PmEvent) -> Vec<Action> {
        match *ev {
            PmEvent::Created {
                token,
                local,
                remote,
                server_side,
            } => {
                if !server_side && !self.conns.contains_key(&token) {
                    let conn = self.new_conn(token, local, remote);
                    self.conns.insert(token, conn);
                }
                Vec::new()
            }
            PmEvent::Established {
                token,
                local,
                remote,
                server_side,
            } => {
                if server_side {
                    return Vec::new();
                }
                // CREATED may have been lost (event queue overflow): ESTABLISHED
                // carries everything we need.
                if !self.conns.contains_key(&token) {
                    let conn = self.new_conn(token, local, remote);
                    self.conns.insert(token, conn);
                }
                let conn = self.conns.get_mut(&token).expect("inserted above");
                if conn.established_at.is_some() {
                    return Vec::new();
                }
                conn.established_at = Some(now);
                self.add_detours(now, wall_ms, token)
            }
            PmEvent::Closed { token } => self.close(now, wall_ms, token),
            PmEvent::SubEstablished { token, subflow } => {
                self.sub_established(now, token, &subflow);
                Vec::new()
            }
            PmEvent::SubClosed {
                token,
                subflow,
                error,
            } => self.sub_closed(now, wall_ms, token, &subflow, error),
            PmEvent::SubPriority { .. } | PmEvent::Other { .. } => Vec::new(),
        }
    }

    /// Applies a changed configuration: settings, identity and revocations
    /// apply to requests and connections from now on; live detours are kept.
    /// (A changed peer list needs a new `Client`.)
    pub fn reconfigure(
        &mut self,
        settings: Settings,
        cert: Certificate,
        key: SecretKey,
        revocations: Revocations,
    ) {
        self.settings = settings;
        self.cert = cert;
        self.key = key;
        self.revocations = revocations;
    }

    /// Appends peers (waypoints learned from the directory). Existing peers
    /// keep their indices, so running detours are not disturbed.
    pub fn add_peers(&mut self, peers: Vec<PeerSpec>) {
        self.peers.extend(peers.into_iter().map(Peer::new));
    }

    /// The LAN proxy is opening an upstream connection from `local` for the
    /// LAN host `lan`; `gate` says whether it may have detours yet. Call before
    /// the path manager's events for it are handled.
    pub fn proxy_opened(&mut self, local: SocketAddr, lan: SocketAddr, gate: Gate) {
        self.proxied.insert(local, (lan, gate));
    }

    /// The detour gate of the proxied connection from `local` changed; an
    /// opened gate of an established connection asks for its detours now.
    pub fn proxy_gate(
        &mut self,
        now: Instant,
        wall_ms: u64,
        local: SocketAddr,
        gate: Gate,
    ) -> Vec<Action> {
        if let Some(p) = self.proxied.get_mut(&local) {
            p.1 = gate;
        }
        let Some(conn) = self.conns.values_mut().find(|c| c.local == local) else {
            return Vec::new();
        };
        conn.gate = gate;
        if gate == Gate::Open && conn.established_at.is_some() {
            let token = conn.token;
            return self.add_detours(now, wall_ms, token);
        }
        Vec::new()
    }

    /// The proxied connection from `local` is gone.
    pub fn proxy_closed(&mut self, local: SocketAddr) {
        self.proxied.remove(&local);
    }

    /// The token of the connection from `local`, if the kernel announced it.
    pub fn token_of(&self, local: SocketAddr) -> Option<Token> {
        self.conns
            .values()
            .find(|c| c.local == local)
            .map(|c| c.token)
    }

    fn new_conn(&self, token: Token, local: SocketAddr, remote: SocketAddr) -> Conn {
        let (lan, gate) = match self.proxied.get(&local) {
            Some(&(lan, gate)) => (Some(lan), gate),
            None => (None, self.settings.own_connections),
        };
        Conn {
            token,
            local,
            remote,
            established_at: None,
            join_refused: false,
            retries: 0,
            detours: Vec::new(),
            lan,
            gate,
            direct: Meter::default(),
            rejected: Vec::new(),
        }
    }

    /// Handles a datagram from a waypoint.
    pub fn on_datagram(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: SocketAddr,
        dgram: &[u8],
    ) -> Result<Vec<Action>, String> {
        let resp = match proto::decode(dgram) {
            Ok(Message::Response(r)) => r,
            Ok(Message::Request(_)) => return Err(format!("{from}: a request sent to the client")),
            Ok(Message::Refusal(r)) => {
                return Err(format!(
                    "{from}: unsigned refusal ({}); not acted on: anyone can forge one",
                    r.reason
                ))
            }
            Err(e) => return Err(format!("{from}: undecodable datagram: {e}")),
        };
        if self.vpn_pending.contains_key(&resp.body.nonce) {
            return self.on_vpn_response(now, wall_ms, from, resp);
        }
        let Some(p) = self.pending.get(&resp.body.nonce) else {
            return Err(format!(
                "{from}: response to no pending request (late or forged)"
            ));
        };
        if p.to != from {
            return Err(format!("{from}: response for a request sent to {}", p.to));
        }
        let peer_idx = self
            .conns
            .get(&p.token)
            .and_then(|c| c.detours.get(p.detour))
            .map(|d| d.peer);
        let Some(peer_idx) = peer_idx else {
            self.pending.remove(&resp.body.nonce);
            return Ok(Vec::new());
        };
        resp.verify(&self.root, &self.revocations, wall_ms / 1000)
            .map_err(|e| format!("{from}: waypoint certificate or signature: {e}"))?;
        let peer = &self.peers[peer_idx];
        if resp.cert.name != peer.spec.name {
            return Err(format!(
                "{from}: answered as '{}', configured as '{}'",
                resp.cert.name, peer.spec.name
            ));
        }
        if !resp.cert.roles.contains(Roles::WAYPOINT) {
            return Err(format!(
                "{from}: '{}' lacks the waypoint role",
                resp.cert.name
            ));
        }
        let p = self
            .pending
            .remove(&resp.body.nonce)
            .expect("looked up above");
        self.peers[peer_idx].last_rtt = Some(now.saturating_duration_since(p.sent_at));
        self.peers[peer_idx].down_until = None;
        match resp.body.outcome {
            Outcome::WrongSource { observed } => {
                Ok(self.rebind(now, wall_ms, peer_idx, p, observed))
            }
            outcome => {
                if let Outcome::Granted { observed, .. } = outcome {
                    self.observed.insert((peer_idx, p.from), observed);
                }
                Ok(self.on_outcome(now, wall_ms, resp.body.nonce, p, outcome))
            }
        }
    }

    /// The waypoint saw request `p` come from `observed`, not from the
    /// source it named: remember it and ask again at once (once).
    fn rebind(
        &mut self,
        now: Instant,
        wall_ms: u64,
        peer: usize,
        p: Pending,
        observed: IpAddr,
    ) -> Vec<Action> {
        self.observed.insert((peer, p.from), observed);
        if p.rebound {
            // Seen from another address each time (a NAT that changes it):
            // this request fails; a renewal is simply tried again later.
            let d = self
                .conns
                .get_mut(&p.token)
                .and_then(|c| c.detours.get_mut(p.detour));
            if let Some(d) = d.filter(|d| d.state == DetourState::Requesting) {
                d.state = DetourState::Failed(format!(
                    "waypoint sees us from changing addresses ({observed})"
                ));
            }
            return Vec::new();
        }
        let timeout = match p.kind {
            RequestKind::Renew { .. } => self.settings.renew_interval,
            _ => self.settings.request_timeout,
        };
        let retries = p.max_attempts.saturating_sub(p.attempts);
        self.send_request(
            now, wall_ms, p.token, p.detour, p.kind, retries, timeout, true,
        )
    }

    /// The address to name as the source of a request to `peer` sent from
    /// `local` (see the module docs).
    fn source_for(&self, peer: usize, local: IpAddr) -> IpAddr {
        if let Some(o) = self.observed.get(&(peer, local)) {
            return *o;
        }
        match (local, self.public4) {
            (IpAddr::V4(l), Some(p)) if l.is_unspecified() || l.is_private() => p,
            _ => local,
        }
    }

    /// This router's public IPv4 address (from STUN or the gateway), a first
    /// guess for requests from private addresses; `None` when unknown.
    pub fn set_public_address(&mut self, public4: Option<IpAddr>) {
        self.public4 = public4.filter(IpAddr::is_ipv4);
    }

    fn on_outcome(
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
                vec![Action::CreateSubflow {
                    token,
                    local: local_ip,
                    local_id: DETOUR_LOCAL_ID,
                    remote,
                }]
            }
            (RequestKind::NatDetour { .. }, Outcome::Refused { reason }) => {
                d.state = DetourState::Failed(format!("refused: {reason}"));
                let skip = match reason {
                    RefusalReason::DonationUsedUp | RefusalReason::EvidenceFull => USED_UP_HOLDDOWN,
                    // Over our rate there: ask it for no new tunnel for a
                    // moment (hammering it would make it drop our address).
                    RefusalReason::RateLimited => RATE_LIMITED_HOLDDOWN,
                    _ => return Vec::new(),
                };
                // Skip it for a while; the slot goes to the next waypoint.
                let peer = d.peer;
                self.peers[peer].down_until = Some(now + skip);
                self.add_detours(now, wall_ms, token)
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
                // The waypoint lost the lease (restart, revocation): this subflow is
                // dead; ask afresh unless the server is full.
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
                    self.peers[peer].down_until = Some(now + USED_UP_HOLDDOWN);
                }
                if reason == RefusalReason::UnknownLease && self.retry_allowed(token) {
                    out.extend(self.request_detour(now, wall_ms, token, peer));
                }
                out
            }
            (RequestKind::Release { .. }, _) => Vec::new(),
            (_, _) => Vec::new(),
        }
    }

    /// Reports that SUBFLOW_CREATE failed for a detour.
    pub fn create_failed(&mut self, token: Token, remote: SocketAddr, why: &str) {
        let peers = &self.peers;
        if let Some(conn) = self.conns.get_mut(&token) {
            if let Some(d) = conn.detours.iter_mut().find(|d| {
                d.remote(peers) == Some(remote)
                    && d.live()
                    && d.state == DetourState::Connecting
                    && d.established_at.is_none()
            }) {
                d.state = DetourState::Failed(format!("subflow create: {why}"));
            }
        }
    }

    /// Timers: retransmissions, renewals, liveness.
    pub fn poll(&mut self, now: Instant, wall_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let due: Vec<Nonce> = self
            .pending
            .iter()
            .filter(|(_, p)| p.next_at <= now)
            .map(|(n, _)| *n)
            .collect();
        for nonce in due {
            // Handling one may drop others (a lost waypoint takes its pending
            // requests with it).
            let Some(p) = self.pending.get_mut(&nonce) else {
                continue;
            };
            if p.attempts < p.max_attempts {
                p.attempts += 1;
                let backoff =
                    self.settings.request_timeout * 2u32.saturating_pow(p.attempts.min(16));
                p.next_at = now + backoff;
                out.push(Action::Send {
                    from: p.from,
                    to: p.to,
                    bytes: p.bytes.clone(),
                });
                continue;
            }
            if let Some(p) = self.pending.remove(&nonce) {
                out.extend(self.unanswered(now, wall_ms, p));
            }
        }
        let renew_interval = self.settings.renew_interval;
        let mut renewals = Vec::new();
        for conn in self.conns.values_mut() {
            for (i, d) in conn.detours.iter_mut().enumerate() {
                if let (true, Some(port), Some(lease)) = (d.live(), d.port, d.lease) {
                    if d.renew_due.is_some_and(|t| t <= now) {
                        d.renew_due = Some(now + renew_interval);
                        renewals.push((
                            conn.token,
                            i,
                            RequestKind::Renew {
                                port,
                                destination: conn.remote,
                                lease,
                            },
                        ));
                    }
                }
            }
        }
        for (token, i, kind) in renewals {
            out.extend(self.send_request(now, wall_ms, token, i, kind, 0, renew_interval, false));
        }
        out.extend(self.poll_vpn(now, wall_ms));
        out
    }

    /// When [`Client::poll`] next has work (`now` where it has work at
    /// once).
    pub fn next_timeout(&self, now: Instant) -> Option<Instant> {
        let p = self.pending.values().map(|p| p.next_at).min();
        let r = self
            .conns
            .values()
            .flat_map(|c| c.detours.iter())
            .filter(|d| d.live())
            .filter_map(|d| d.renew_due)
            .min();
        [p, r, self.vpn_next_timeout(now)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Connections, for status.
    pub fn conns(&self) -> impl Iterator<Item = &Conn> {
        self.conns.values()
    }

    /// The configured name of peer `i`.
    pub fn peer_name(&self, i: usize) -> &str {
        &self.peers[i].spec.name
    }

    /// The waypoint-side address of a detour, once granted.
    pub fn detour_remote(&self, d: &Detour) -> Option<SocketAddr> {
        d.remote(&self.peers)
    }

    /// For an established detour subflow to `remote`: the waypoint's name and the
    /// time from the connection's ESTABLISHED to this subflow's SUB_ESTABLISHED.
    pub fn detour_setup(&self, token: Token, remote: SocketAddr) -> Option<(&str, Duration)> {
        let conn = self.conns.get(&token)?;
        let d = conn.detours.iter().find(|d| {
            d.live() && d.remote(&self.peers) == Some(remote) && d.established_at.is_some()
        })?;
        Some((&self.peers[d.peer].spec.name, d.setup?))
    }

    /// Peers, for status.
    pub fn peers(&self, now: Instant) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|p| PeerStatus {
                name: p.spec.name.clone(),
                address: p.spec.address,
                up: p.down_until.is_none_or(|t| t <= now),
                rtt: p.last_rtt,
            })
            .collect()
    }

    /// Releases every lease (daemon shutdown). One datagram each, no retries.
    pub fn shutdown(&mut self, now: Instant, wall_ms: u64) -> Vec<Action> {
        let tokens: Vec<Token> = self.conns.keys().copied().collect();
        let mut out = Vec::new();
        for t in tokens {
            out.extend(self.close(now, wall_ms, t));
        }
        self.pending.clear();
        out.extend(self.vpn_shutdown(now, wall_ms));
        out
    }

    fn add_detours(&mut self, now: Instant, wall_ms: u64, token: Token) -> Vec<Action> {
        let Some(conn) = self.conns.get(&token) else {
            return Vec::new();
        };
        if conn.join_refused || conn.remote.ip().is_loopback() || conn.gate != Gate::Open {
            return Vec::new();
        }
        let used = conn.live_peers();
        let want = usize::from(self.settings.max_detours).saturating_sub(used.len());
        let candidates: Vec<usize> = self.ranked_candidates(now, conn, &used);
        let mut out = self.add_vpn_detours(token, want);
        let want = want.saturating_sub(out.len());
        for peer in candidates.into_iter().take(want) {
            out.extend(self.request_detour(now, wall_ms, token, peer));
        }
        out
    }

    fn request_detour(
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
    fn send_request(
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
    fn sign_request(
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

    fn unanswered(&mut self, now: Instant, wall_ms: u64, p: Pending) -> Vec<Action> {
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

    /// Every live detour through `peer` fails with `why`; returns the
    /// SUBFLOW_DESTROYs for those that had a subflow.
    fn fail_detours_via(&mut self, peer: usize, why: &str) -> Vec<Action> {
        let peers = &self.peers;
        let mut out = Vec::new();
        for conn in self.conns.values_mut() {
            for d in conn
                .detours
                .iter_mut()
                .filter(|d| d.peer == peer && d.live())
            {
                if let (Some(remote), Some(lp)) = (d.remote(peers), d.local_port) {
                    out.push(Action::DestroySubflow {
                        token: conn.token,
                        local: SocketAddr::new(d.local_ip(conn.local.ip()), lp),
                        remote,
                    });
                }
                d.state = DetourState::Failed(why.to_owned());
            }
        }
        out
    }

    /// A waypoint stopped answering: drop every detour through it.
    fn peer_lost(&mut self, now: Instant, peer: usize) -> Vec<Action> {
        self.peers[peer].down_until = Some(now + self.settings.holddown);
        let out = self.fail_detours_via(peer, "waypoint stopped answering");
        let dead: Vec<Nonce> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                self.conns
                    .get(&p.token)
                    .and_then(|c| c.detours.get(p.detour))
                    .is_some_and(|d| d.peer == peer)
            })
            .map(|(n, _)| *n)
            .collect();
        for n in dead {
            self.pending.remove(&n);
        }
        out
    }

    /// A detour subflow is up: its judge starts (parked when its waypoint
    /// added nothing to this prefix lately, without a park test when it
    /// added throughput lately).
    fn sub_established(&mut self, now: Instant, token: Token, sf: &SubflowInfo) {
        let peers = &self.peers;
        let Some(conn) = self.conns.get(&token) else {
            return;
        };
        let Some(peer) = conn
            .detours
            .iter()
            .find(|d| d.is(peers, sf))
            .map(|d| d.peer)
        else {
            return;
        };
        let tested = self.parked_lately(now, peer, conn.remote);
        let strategy = &self.settings.strategy;
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let est = conn.established_at;
        let Some(d) = conn.detours.iter_mut().find(|d| d.is(&self.peers, sf)) else {
            return;
        };
        d.state = DetourState::Established;
        d.local_port = Some(sf.local.port());
        d.established_at = Some(now);
        d.setup = est.map(|e| now.saturating_duration_since(e));
        d.judge = Some(match tested {
            None => Judge::new(now, strategy),
            Some(Tested::Adds) => Judge::tested(now, strategy),
            Some(Tested::AddsNothing(why)) => {
                Judge::parked(now, strategy, format!("parked lately ({why})"))
            }
        });
    }

    fn sub_closed(
        &mut self,
        now: Instant,
        wall_ms: u64,
        token: Token,
        sf: &SubflowInfo,
        error: Option<u32>,
    ) -> Vec<Action> {
        let peers = &self.peers;
        let Some(conn) = self.conns.get_mut(&token) else {
            return Vec::new();
        };
        let Some(i) = conn.detours.iter().position(|d| d.is(peers, sf)) else {
            return Vec::new();
        };
        let d = &mut conn.detours[i];
        let quick = d
            .established_at
            .is_some_and(|t| now.saturating_duration_since(t) < JOIN_REFUSED_WINDOW);
        let why = match error {
            Some(ECONNREFUSED) => "waypoint has no mapping (connection refused)".to_owned(),
            Some(ECONNRESET) => "waypoint lost its state (connection reset)".to_owned(),
            _ if quick => {
                conn.join_refused = true;
                "server refused the join (its subflow limit)".to_owned()
            }
            Some(e) => format!("subflow closed (error {e})"),
            None => "subflow closed".to_owned(),
        };
        // The waypoint lost our mapping (restart, expiry): ask it afresh, a few
        // times per connection at most.
        let lost = matches!(error, Some(ECONNREFUSED) | Some(ECONNRESET)) && d.vpn.is_none();
        d.state = DetourState::Failed(why);
        let (release, peer) = (d.port.zip(d.lease), d.peer);
        let mut out = self.release_lease(now, wall_ms, token, i, release);
        if lost && self.retry_allowed(token) {
            out.extend(self.request_detour(now, wall_ms, token, peer));
        }
        out
    }

    /// Releases detour `i`'s lease (`port`, `lease`), if it had one.
    fn release_lease(
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
    fn retry_allowed(&mut self, token: Token) -> bool {
        match self.conns.get_mut(&token) {
            Some(c) if !c.join_refused && c.retries < MAX_RETRIES => {
                c.retries += 1;
                true
            }
            _ => false,
        }
    }

    fn close(&mut self, now: Instant, wall_ms: u64, token: Token) -> Vec<Action> {
        let Some(conn) = self.conns.get(&token) else {
            return Vec::new();
        };
        let releases: Vec<(usize, RequestKind)> = conn
            .detours
            .iter()
            .enumerate()
            .filter(|(_, d)| d.live())
            .filter_map(|(i, d)| {
                Some((
                    i,
                    RequestKind::Release {
                        port: d.port?,
                        lease: d.lease?,
                    },
                ))
            })
            .collect();
        let mut out = Vec::new();
        let timeout = self.settings.request_timeout;
        for (i, kind) in releases {
            out.extend(self.send_request(now, wall_ms, token, i, kind, 0, timeout, false));
        }
        self.score_detours(token);
        // Pending requests of this connection can no longer be matched.
        self.pending
            .retain(|_, p| p.token != token || matches!(p.kind, RequestKind::Release { .. }));
        self.conns.remove(&token);
        out
    }

    fn next_nonce(&mut self) -> Nonce {
        self.nonce_counter = self.nonce_counter.wrapping_add(1);
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&self.nonce_prefix);
        n[8..].copy_from_slice(&self.nonce_counter.to_be_bytes());
        Nonce(n)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::client::strategy::Scoreboard;
    use crate::mptcp::Sample;
    use crate::testutil::{self, cert, T0};
    use crate::waypoint::{self, Decision, Waypoint};

    const MS: u64 = T0 * 1000;
    const WP: &str = "10.0.6.2:7447";
    const CLIENT_IP: &str = "10.0.1.2";

    /// A client and a real (pure) waypoint on a virtual network with a clock.
    struct Pair {
        c: Client,
        w: Waypoint,
        t0: Instant,
        now: Instant,
        /// Drop the next n client → waypoint datagrams.
        drop_next: usize,
        created: Vec<(Token, SocketAddr)>,
        destroyed: Vec<(Token, SocketAddr)>,
        /// VpnUp/VpnDown actions, as "up <address>" / "down".
        vpn: Vec<String>,
        /// Local addresses of created subflows.
        locals: Vec<IpAddr>,
        /// SetBackup actions: remote, flag.
        backups: Vec<(SocketAddr, bool)>,
        /// A NAT between client and waypoint: the address the waypoint sees.
        nat: Option<IpAddr>,
        /// Datagrams the client sent.
        sent: usize,
    }

    fn settings() -> Settings {
        Settings {
            max_detours: 2,
            request_timeout: Duration::from_millis(300),
            renew_interval: Duration::from_secs(1),
            liveness_misses: 3,
            holddown: Duration::from_secs(30),
            own_connections: Gate::Open,
            strategy: StrategySettings::default(),
        }
    }

    impl Pair {
        fn new(peers: Vec<PeerSpec>) -> Pair {
            Pair::with_limits(peers, waypoint::Limits::default())
        }

        fn with_limits(peers: Vec<PeerSpec>, limits: waypoint::Limits) -> Pair {
            let k = testutil::key(3);
            let bob = Certificate::issue(
                &testutil::root(),
                "bob",
                k.public(),
                Some(crate::trust::wg::public(&crate::trust::wg::secret(&k))),
                testutil::T0 - 86_400,
                testutil::T0 + 86_400,
                Roles::CLIENT,
            )
            .unwrap();
            let c = Client::new(
                settings(),
                bob,
                testutil::key(3),
                testutil::root_pub(),
                Revocations::default(),
                peers,
                [7; 8],
            );
            let ws = waypoint::Settings {
                ports: (40000, 40099),
                lease: Duration::from_secs(60),
                max_per_member: 16,
                destinations: crate::waypoint::policy::Rules {
                    allow: vec!["10.0.0.0/8".parse().unwrap()],
                    deny_ports: vec!["25".parse().unwrap()],
                },
                max_skew: Duration::from_secs(30),
                vpn: Some(crate::waypoint::VpnSettings {
                    subnet: "10.200.7.0/24".parse().unwrap(),
                    subnet6: None,
                    port: 51820,
                    wg_key: [5; 32],
                }),
                limits,
            };
            let me = cert("alice", 2, Roles::CLIENT | Roles::WAYPOINT);
            let w = Waypoint::new(
                ws,
                me,
                testutil::key(2),
                testutil::root_pub(),
                Revocations::default(),
                crate::routes::Routes::all_wan(Vec::new()),
            );
            let t0 = Instant::now();
            Pair {
                c,
                w,
                t0,
                now: t0,
                drop_next: 0,
                created: vec![],
                destroyed: vec![],
                vpn: vec![],
                locals: vec![],
                backups: vec![],
                nat: None,
                sent: 0,
            }
        }

        fn vpn_alice() -> Vec<PeerSpec> {
            vec![PeerSpec {
                vpn: true,
                ..Pair::alice().remove(0)
            }]
        }

        fn alice() -> Vec<PeerSpec> {
            vec![PeerSpec {
                name: "alice".into(),
                address: WP.parse().unwrap(),
                vpn: false,
            }]
        }

        fn ms(&self) -> u64 {
            MS + self.now.duration_since(self.t0).as_millis() as u64
        }

        /// Carries actions out: datagrams go to the waypoint (if it is up) and
        /// its replies come back; subflow commands are recorded.
        fn run(&mut self, actions: Vec<Action>, waypoint_up: bool) {
            let mut queue = actions;
            while let Some(a) = queue.pop() {
                match a {
                    Action::Send { from, to, bytes } => {
                        assert_eq!(to, WP.parse().unwrap());
                        assert!(
                            from == CLIENT_IP.parse::<IpAddr>().unwrap() || from.is_unspecified(),
                            "{from}"
                        );
                        self.sent += 1;
                        if self.drop_next > 0 {
                            self.drop_next -= 1;
                            continue;
                        }
                        if !waypoint_up {
                            continue;
                        }
                        let seen = match self.nat {
                            // A NAT that picks another address every time.
                            Some(IpAddr::V4(a)) if a.is_unspecified() => {
                                IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, self.sent as u8))
                            }
                            Some(a) => a,
                            None => CLIENT_IP.parse().unwrap(),
                        };
                        let from = SocketAddr::new(seen, 50000);
                        let reply = match self.w.handle(self.now, self.ms(), from, &bytes) {
                            Decision::Reply { bytes, .. }
                            | Decision::Install { bytes, .. }
                            | Decision::Refresh { bytes, .. }
                            | Decision::Remove { bytes, .. }
                            | Decision::VpnInstall { bytes, .. }
                            | Decision::VpnRefresh { bytes, .. }
                            | Decision::VpnRemove { bytes, .. } => bytes,
                            Decision::Ignore { reason } => panic!("waypoint ignored: {reason}"),
                            Decision::Drop { source } => panic!("waypoint dropped {source}"),
                        };
                        let more = self
                            .c
                            .on_datagram(self.now, self.ms(), to, &reply)
                            .expect("valid reply");
                        queue.extend(more);
                    }
                    Action::CreateSubflow {
                        token,
                        local,
                        local_id,
                        remote,
                    } => {
                        if local == CLIENT_IP.parse::<IpAddr>().unwrap() {
                            assert_eq!(local_id, DETOUR_LOCAL_ID);
                        } else {
                            assert_ne!(local_id, DETOUR_LOCAL_ID, "one id per address");
                        }
                        self.locals.push(local);
                        self.created.push((token, remote));
                    }
                    Action::VpnUp { address, .. } => self.vpn.push(format!("up {address}")),
                    Action::VpnDown { .. } => self.vpn.push("down".into()),
                    Action::DestroySubflow { token, remote, .. } => {
                        self.destroyed.push((token, remote))
                    }
                    Action::SetBackup { remote, backup, .. } => self.backups.push((remote, backup)),
                }
            }
        }

        fn event(&mut self, ev: PmEvent) {
            let a = self.c.on_event(self.now, self.ms(), &ev);
            self.run(a, true);
        }

        fn advance(&mut self, d: Duration, waypoint_up: bool) {
            let end = self.now + d;
            while let Some(t) = self.c.next_timeout(self.now).filter(|t| *t <= end) {
                self.now = t.max(self.now);
                let a = self.c.poll(self.now, self.ms());
                self.run(a, waypoint_up);
            }
            self.now = end;
        }
    }

    fn established(token: u32) -> PmEvent {
        PmEvent::Established {
            token: Token(token),
            local: format!("{CLIENT_IP}:40404").parse().unwrap(),
            remote: "10.0.3.2:5201".parse().unwrap(),
            server_side: false,
        }
    }

    fn sub(remote: SocketAddr, local_port: u16) -> SubflowInfo {
        SubflowInfo {
            local_id: DETOUR_LOCAL_ID,
            remote_id: AddrId::INITIAL,
            local: SocketAddr::new(CLIENT_IP.parse().unwrap(), local_port),
            remote,
            backup: false,
        }
    }

    fn detour_state(p: &Pair, token: u32) -> Vec<&'static str> {
        p.c.conns()
            .filter(|c| c.token == Token(token))
            .flat_map(|c| c.detours.iter().map(|d| d.state.name()))
            .collect()
    }

    #[test]
    fn established_connection_gets_a_detour_subflow() {
        let mut p = Pair::new(Pair::alice());
        p.event(established(1));
        assert_eq!(p.created.len(), 1);
        let (token, remote) = p.created[0];
        assert_eq!(token, Token(1));
        assert_eq!(remote.ip(), "10.0.6.2".parse::<IpAddr>().unwrap());
        assert!((40000..=40099).contains(&remote.port()));
        assert_eq!(detour_state(&p, 1), vec!["connecting"]);
        p.now += Duration::from_millis(20);
        p.event(PmEvent::SubEstablished {
            token: Token(1),
            subflow: sub(remote, 41000),
        });
        assert_eq!(detour_state(&p, 1), vec!["established"]);
        let setup = p.c.conns().next().unwrap().detours[0].setup;
        assert_eq!(setup, Some(Duration::from_millis(20)));
        // Renewals keep it alive for a long time.
        p.advance(Duration::from_secs(30), true);
        assert_eq!(detour_state(&p, 1), vec!["established"]);
        assert!(p.destroyed.is_empty());
    }

    #[test]
    fn waypoint_whose_donation_is_used_up_is_skipped_for_an_hour() {
        let mut p = Pair::new(Pair::alice());
        p.w.set_used_up(Some("used up".into()));
        p.event(established(1));
        assert!(p.created.is_empty());
        assert_eq!(detour_state(&p, 1), vec!["failed"]);
        let asked = p.w.stats().datagrams;
        // Later connections do not ask it again ...
        p.advance(Duration::from_secs(600), true);
        p.event(established(2));
        assert_eq!(p.w.stats().datagrams, asked);
        assert!(p.created.is_empty());
        // ... until the hour is over; by then its owner raised the cap.
        p.w.set_used_up(None);
        p.advance(USED_UP_HOLDDOWN, true);
        p.event(established(3));
        assert_eq!(p.w.stats().datagrams, asked + 1);
        assert_eq!(p.created.len(), 1);
        assert_eq!(p.created[0].0, Token(3));
    }

    #[test]
    fn proxied_connection_waits_for_its_gate() {
        let mut p = Pair::new(Pair::alice());
        let local: SocketAddr = format!("{CLIENT_IP}:40404").parse().unwrap();
        let lan: SocketAddr = "192.168.1.20:50000".parse().unwrap();
        // The proxy announces the flow before the kernel's events arrive.
        p.c.proxy_opened(local, lan, Gate::Waiting);
        p.event(established(1));
        assert!(p.created.is_empty(), "detour before the gate opened");
        let conn = p.c.conns().next().unwrap();
        assert_eq!((conn.lan, conn.gate), (Some(lan), Gate::Waiting));
        // Still nothing after a while: no timer opens the gate.
        p.advance(Duration::from_secs(5), true);
        assert!(p.created.is_empty());
        // The TLS handshake passed: detours now.
        let a = p.c.proxy_gate(p.now, p.ms(), local, Gate::Open);
        p.run(a, true);
        assert_eq!(p.created.len(), 1);
        assert_eq!(p.c.token_of(local), Some(Token(1)));
        p.c.proxy_closed(local);

        // A shut gate (plaintext) never opens by itself; other connections are
        // unaffected.
        let local2: SocketAddr = format!("{CLIENT_IP}:40405").parse().unwrap();
        p.c.proxy_opened(local2, lan, Gate::Waiting);
        p.event(PmEvent::Established {
            token: Token(2),
            local: local2,
            remote: "10.0.3.2:443".parse().unwrap(),
            server_side: false,
        });
        let a =
            p.c.proxy_gate(p.now, p.ms(), local2, Gate::Shut("plaintext"));
        p.run(a, true);
        p.advance(Duration::from_secs(5), true);
        assert_eq!(p.created.len(), 1, "a shut connection got a detour");
        // The gate opening before ESTABLISHED: detours at ESTABLISHED.
        let local3: SocketAddr = format!("{CLIENT_IP}:40406").parse().unwrap();
        p.c.proxy_opened(local3, lan, Gate::Waiting);
        let a = p.c.proxy_gate(p.now, p.ms(), local3, Gate::Open);
        assert!(a.is_empty());
        p.event(PmEvent::Established {
            token: Token(3),
            local: local3,
            remote: "10.0.3.2:443".parse().unwrap(),
            server_side: false,
        });
        assert_eq!(p.created.len(), 2);
    }

    #[test]
    fn vpn_tunnel_serves_every_connection_and_is_dropped_when_the_waypoint_dies() {
        let mut p = Pair::new(Pair::vpn_alice());
        // The tunnel is asked for at once (due now, on virtual time), not
        // per connection.
        assert_eq!(p.c.next_timeout(p.now), Some(p.now));
        p.advance(Duration::from_millis(10), true);
        assert_eq!(p.vpn, vec!["up 10.200.7.2"]);
        for token in [1, 2] {
            let mut ev = established(token);
            if let PmEvent::Established { local, .. } = &mut ev {
                local.set_port(40000 + token as u16);
            }
            p.event(ev);
        }
        // One VPN detour per connection: tunnel address -> the server itself.
        assert_eq!(p.created.len(), 2);
        assert!(p
            .created
            .iter()
            .all(|(_, r)| *r == "10.0.3.2:5201".parse().unwrap()));
        assert!(p
            .locals
            .iter()
            .all(|l| *l == "10.200.7.2".parse::<IpAddr>().unwrap()));
        for (token, remote) in p.created.clone() {
            let mut sf = sub(remote, 41000 + token.0 as u16);
            sf.local = SocketAddr::new("10.200.7.2".parse().unwrap(), sf.local.port());
            p.event(PmEvent::SubEstablished { token, subflow: sf });
        }
        assert_eq!(detour_state(&p, 1), vec!["established"]);
        // Renewals keep it; a silent waypoint takes it down with its subflows.
        p.advance(Duration::from_secs(20), true);
        assert_eq!(p.vpn.len(), 1);
        p.advance(Duration::from_secs(10), false);
        assert_eq!(p.vpn, vec!["up 10.200.7.2", "down"]);
        assert_eq!(p.destroyed.len(), 2);
        assert_eq!(detour_state(&p, 2), vec!["failed"]);
        // After the hold-down it comes back, and new connections use it.
        p.advance(Duration::from_secs(40), true);
        assert_eq!(p.vpn.last().map(String::as_str), Some("up 10.200.7.2"));
    }

    #[test]
    fn server_side_and_unknown_connections_are_left_alone() {
        let mut p = Pair::new(Pair::alice());
        let mut ev = established(2);
        if let PmEvent::Established { server_side, .. } = &mut ev {
            *server_side = true;
        }
        p.event(ev);
        p.event(PmEvent::SubClosed {
            token: Token(99),
            subflow: sub(WP.parse().unwrap(), 1),
            error: Some(111),
        });
        p.event(PmEvent::Closed { token: Token(98) });
        assert!(p.created.is_empty());
        assert_eq!(p.c.conns().count(), 0);
    }

    #[test]
    fn lost_request_is_retransmitted_and_granted_once() {
        let mut p = Pair::new(Pair::alice());
        p.drop_next = 2;
        p.event(established(1));
        assert!(p.created.is_empty());
        p.advance(Duration::from_millis(299), true);
        assert!(p.created.is_empty(), "retransmitted too early");
        p.advance(Duration::from_secs(2), true);
        assert_eq!(p.created.len(), 1, "not granted after retransmission");
        assert_eq!(p.w.leases().count(), 1);
    }

    #[test]
    fn refused_join_stops_further_detours() {
        let mut p = Pair::new(Pair::alice());
        p.event(established(1));
        let (_, remote) = p.created[0];
        p.event(PmEvent::SubEstablished {
            token: Token(1),
            subflow: sub(remote, 41000),
        });
        p.now += Duration::from_millis(5);
        p.event(PmEvent::SubClosed {
            token: Token(1),
            subflow: sub(remote, 41000),
            error: None,
        });
        let c = p.c.conns().next().unwrap();
        assert!(c.join_refused);
        assert_eq!(detour_state(&p, 1), vec!["failed"]);
        // The lease was released at the waypoint.
        assert_eq!(p.w.leases().count(), 0);
        assert_eq!(p.created.len(), 1);
    }

    #[test]
    fn dead_waypoint_is_detected_and_its_subflow_destroyed() {
        let mut p = Pair::new(Pair::alice());
        p.event(established(1));
        let (_, remote) = p.created[0];
        p.event(PmEvent::SubEstablished {
            token: Token(1),
            subflow: sub(remote, 41000),
        });
        // The waypoint goes silent: 3 renewals at 1 s intervals go unanswered.
        p.advance(Duration::from_millis(2500), false);
        assert!(p.destroyed.is_empty(), "gave up too early");
        p.advance(Duration::from_secs(3), false);
        assert_eq!(p.destroyed, vec![(Token(1), remote)]);
        assert_eq!(detour_state(&p, 1), vec!["failed"]);
        // Held down: a new connection does not wait on it.
        p.event(established(2));
        assert_eq!(p.created.len(), 1);
    }

    #[test]
    fn dead_waypoint_with_many_connections() {
        let mut p = Pair::new(Pair::alice());
        for t in 1..=3 {
            p.event(established(t));
        }
        for (i, (token, remote)) in p.created.clone().into_iter().enumerate() {
            p.event(PmEvent::SubEstablished {
                token,
                subflow: sub(remote, 41000 + i as u16),
            });
        }
        // All renewals of all connections go unanswered at once.
        p.advance(Duration::from_secs(6), false);
        assert_eq!(p.destroyed.len(), 3);
        for t in 1..=3 {
            assert_eq!(detour_state(&p, t), vec!["failed"]);
        }
    }

    #[test]
    fn waypoint_restart_means_a_fresh_grant() {
        let mut p = Pair::new(Pair::alice());
        p.event(established(1));
        let (_, remote) = p.created[0];
        p.event(PmEvent::SubEstablished {
            token: Token(1),
            subflow: sub(remote, 41000),
        });
        // The waypoint restarts and forgets its leases.
        let fresh = Pair::new(Pair::alice()).w;
        p.w = fresh;
        p.advance(Duration::from_millis(1100), true);
        assert_eq!(p.destroyed, vec![(Token(1), remote)]);
        assert_eq!(p.created.len(), 2, "no fresh grant after the restart");
        assert_eq!(detour_state(&p, 1), vec!["failed", "connecting"]);
    }

    #[test]
    fn closed_connection_releases_its_leases() {
        let mut p = Pair::new(Pair::alice());
        p.event(established(1));
        assert_eq!(p.w.leases().count(), 1);
        p.event(PmEvent::Closed { token: Token(1) });
        assert_eq!(p.w.leases().count(), 0);
        assert_eq!(p.c.conns().count(), 0);
        assert_eq!(p.c.next_timeout(p.now), None);
    }

    #[test]
    fn forged_and_misaddressed_responses_are_rejected() {
        let mut p = Pair::new(Pair::alice());
        p.drop_next = 1;
        p.event(established(1));
        // A response signed by a non-member, with a nonce it could have sniffed.
        let nonce = *p.c.pending.keys().next().unwrap();
        let evil = crate::testutil::cert_by(
            &testutil::key(66),
            "alice",
            5,
            Roles::WAYPOINT,
            T0 - 9,
            T0 + 9,
        );
        let body = crate::proto::ResponseBody {
            nonce,
            timestamp_ms: MS,
            outcome: Outcome::Granted {
                port: 40050,
                lease_secs: 60,
                observed: CLIENT_IP.parse().unwrap(),
            },
        };
        let forged = proto::encode(&Message::Response(crate::proto::Response::sign(
            evil,
            &testutil::key(5),
            body.clone(),
        )));
        assert!(p
            .c
            .on_datagram(p.now, MS, WP.parse().unwrap(), &forged)
            .is_err());
        // A genuine member answering for the wrong peer name.
        let carol = cert("carol", 4, Roles::WAYPOINT);
        let wrong = proto::encode(&Message::Response(crate::proto::Response::sign(
            carol,
            &testutil::key(4),
            body.clone(),
        )));
        let e =
            p.c.on_datagram(p.now, MS, WP.parse().unwrap(), &wrong)
                .unwrap_err();
        assert!(e.contains("carol"), "{e}");
        // From another address than the one asked.
        let other: SocketAddr = "10.0.9.9:7447".parse().unwrap();
        assert!(p.c.on_datagram(p.now, MS, other, &forged).is_err());
        assert!(p.created.is_empty());
        // The genuine answer still gets through afterwards.
        p.advance(Duration::from_secs(1), true);
        assert_eq!(p.created.len(), 1);
    }

    #[test]
    fn max_detours_and_address_family() {
        let peers = vec![
            PeerSpec {
                name: "alice".into(),
                address: WP.parse().unwrap(),
                vpn: false,
            },
            PeerSpec {
                name: "alice".into(),
                address: "[fd00:0:0:6::2]:7447".parse().unwrap(),
                vpn: false,
            },
        ];
        let mut p = Pair::new(peers);
        p.event(established(1));
        // Only the IPv4 peer serves an IPv4 connection.
        assert_eq!(p.created.len(), 1);
        assert_eq!(p.c.conns().next().unwrap().detours.len(), 1);
    }

    /// One 250 ms sampling round: the direct subflow moves 300 kB in 200
    /// segments at 10 ms; the detour `tuple` moves (bytes, segments,
    /// retransmissions, rtt ms).
    fn sample_round(
        p: &mut Pair,
        conn: &Conn,
        tuple: (SocketAddr, SocketAddr),
        acc: &mut (Sample, Sample),
        (bytes, segs, retrans, rtt): (u64, u32, u32, u64),
    ) {
        p.now += Duration::from_millis(250);
        acc.0.bytes_acked += 300_000;
        acc.0.segs_out += 200;
        acc.0.rtt = Duration::from_millis(10);
        acc.0.min_rtt = Duration::from_millis(10);
        acc.1.bytes_acked += bytes;
        acc.1.segs_out += segs;
        acc.1.retrans += retrans;
        acc.1.rtt = Duration::from_millis(rtt);
        acc.1.min_rtt = Duration::from_millis(rtt);
        let samples = HashMap::from([((conn.local, conn.remote), acc.0), (tuple, acc.1)]);
        let a = p.c.on_samples(p.now, p.ms(), &samples);
        p.run(a, true);
    }

    /// A connection with one established detour via the first peer (after
    /// `max_detours` requests), and that detour's remote.
    fn established_pair_with(peers: Vec<PeerSpec>, max_detours: u8) -> (Pair, SocketAddr) {
        let mut p = Pair::new(peers);
        p.c.settings.max_detours = max_detours;
        p.event(established(1));
        let remote = p.created[0].1;
        p.now += Duration::from_millis(20);
        p.event(PmEvent::SubEstablished {
            token: Token(1),
            subflow: sub(remote, 41000),
        });
        (p, remote)
    }

    #[test]
    fn slow_detour_is_demoted_then_scored_at_close() {
        let (mut p, remote) = established_pair_with(Pair::alice(), 2);
        let conn = p.c.conns().next().unwrap().clone();
        let detour_local = SocketAddr::new(conn.local.ip(), 41000);
        assert_eq!(p.c.measured().len(), 2);
        let mut acc = (Sample::default(), Sample::default());
        let mut backups_at = None;
        for step in 1..=16u64 {
            let step_sample = (20_000, 14, 0, 210);
            sample_round(&mut p, &conn, (detour_local, remote), &mut acc, step_sample);
            if backups_at.is_none() && !p.backups.is_empty() {
                backups_at = Some(step * 250);
            }
        }
        // Demoted at the end of its 2 s probation; no alternative waypoint,
        // so kept as backup rather than destroyed.
        assert_eq!(p.backups, vec![(remote, true)]);
        assert_eq!(backups_at, Some(2000));
        assert!(p.destroyed.is_empty());
        let c = p.c.conns().next().unwrap();
        let j = c.detours[0].judge.as_ref().unwrap();
        assert_eq!(j.role.name(), "backup");
        assert!(
            (c.direct.rate_bps - 9.6e6).abs() < 0.1e6,
            "{}",
            c.direct.rate_bps
        );
        // Closing the connection scores the detour by its byte share.
        p.event(PmEvent::Closed { token: Token(1) });
        let s = p.c.scoreboard().score("alice", "10.0.3.0/24").unwrap();
        let share = 2.0 * 15.0 * 20_000.0 / (15.0 * 320_000.0);
        assert!((s.mean().unwrap() - share).abs() < 1e-9, "{s:?}");
        assert!(p.c.scoreboard_dirty());
        assert!(!p.c.scoreboard_dirty());
        let (back, bad) = Scoreboard::from_file(&p.c.scoreboard().to_file()).unwrap();
        assert!(bad.is_empty());
        assert_eq!(&back, p.c.scoreboard());
    }

    #[test]
    fn lossy_detour_is_destroyed_and_the_next_waypoint_asked() {
        let (mut p, remote) = established_pair_with(
            vec![
                PeerSpec {
                    name: "alice".into(),
                    address: WP.parse().unwrap(),
                    vpn: false,
                },
                PeerSpec {
                    name: "alice".into(),
                    address: WP.parse().unwrap(),
                    vpn: false,
                },
            ],
            1,
        );
        let conn = p.c.conns().next().unwrap().clone();
        let detour_local = SocketAddr::new(conn.local.ip(), 41000);
        let created_before = p.created.len();
        let mut acc = (Sample::default(), Sample::default());
        for _ in 0..12 {
            sample_round(
                &mut p,
                &conn,
                (detour_local, remote),
                &mut acc,
                (100_000, 70, 3, 12),
            );
        }
        assert_eq!(p.destroyed, vec![(Token(1), remote)]);
        assert!(p.backups.is_empty());
        let states = detour_state(&p, 1);
        assert!(states.contains(&"failed"), "{states:?}");
        // Scored at once, and the slot went to another candidate.
        assert!(p.c.scoreboard().score("alice", "*").is_some());
        assert!(p.created.len() > created_before, "{:?}", p.created);
    }

    #[test]
    fn granted_detour_that_never_comes_up_scores_zero() {
        let mut p = Pair::new(Pair::alice());
        p.event(established(1));
        assert_eq!(detour_state(&p, 1), vec!["connecting"]);
        p.event(PmEvent::Closed { token: Token(1) });
        let s = p.c.scoreboard().score("alice", "10.0.3.0/24").unwrap();
        assert_eq!((s.count, s.mean()), (1, Some(0.0)));
    }

    fn wrong_sources(p: &Pair) -> u64 {
        p.w.stats().refused.get("WrongSource").copied().unwrap_or(0)
    }

    #[test]
    fn behind_a_nat_the_first_request_learns_the_observed_address() {
        let mut p = Pair::new(Pair::alice());
        p.nat = Some("198.51.100.7".parse().unwrap());
        p.event(established(1));
        // One extra round trip: WrongSource, then granted at once.
        assert_eq!(p.created.len(), 1);
        assert_eq!((wrong_sources(&p), p.sent), (1, 2));
        let lease = p.w.leases().next().unwrap().clone();
        assert_eq!(lease.client, p.nat.unwrap());
        // Renewals and later connections name the learned address.
        p.advance(Duration::from_secs(3), true);
        let mut ev = established(2);
        if let PmEvent::Established { local, .. } = &mut ev {
            local.set_port(40002);
        }
        p.event(ev);
        assert_eq!(p.created.len(), 2);
        assert_eq!(wrong_sources(&p), 1);
        assert!(p.w.stats().granted >= 5, "{:?}", p.w.stats());
    }

    #[test]
    fn a_nat_changing_address_every_time_fails_the_request_after_one_retry() {
        let mut p = Pair::new(Pair::alice());
        p.nat = Some("0.0.0.0".parse().unwrap());
        p.event(established(1));
        assert_eq!((wrong_sources(&p), p.sent), (2, 2));
        assert!(p.created.is_empty());
        let c = p.c.conns().next().unwrap();
        assert!(
            matches!(&c.detours[0].state, DetourState::Failed(w) if w.contains("changing addresses")),
            "{:?}",
            c.detours[0].state
        );
        assert!(p.c.pending.is_empty());
    }

    #[test]
    fn a_public_address_from_stun_saves_the_extra_round_trip() {
        let mut p = Pair::new(Pair::alice());
        p.nat = Some("198.51.100.7".parse().unwrap());
        p.c.set_public_address(p.nat);
        p.event(established(1));
        assert_eq!(p.created.len(), 1);
        assert_eq!((wrong_sources(&p), p.sent), (0, 1));
        // An IPv6 hint is no IPv4 source.
        p.c.set_public_address(Some("2001:db8::1".parse().unwrap()));
        assert_eq!(p.c.public4, None);
    }

    #[test]
    fn a_vpn_request_learns_its_source_on_first_contact() {
        let mut p = Pair::new(Pair::vpn_alice());
        p.advance(Duration::from_millis(10), true);
        assert_eq!(p.vpn, vec!["up 10.200.7.2"]);
        assert_eq!((wrong_sources(&p), p.sent), (1, 2));
        // Renewals name the learned address: no more WrongSource.
        p.advance(Duration::from_secs(3), true);
        assert_eq!(wrong_sources(&p), 1);
        assert_eq!(p.vpn, vec!["up 10.200.7.2"]);
    }

    #[test]
    fn an_unsigned_refusal_is_only_logged() {
        let mut p = Pair::new(Pair::alice());
        p.drop_next = 1;
        p.event(established(1));
        let nonce = *p.c.pending.keys().next().unwrap();
        // Anyone can send one, naming the pending request's nonce.
        for reason in [
            RefusalReason::BadCertificate,
            RefusalReason::RateLimited,
            RefusalReason::DonationUsedUp,
        ] {
            let forged = proto::encode(&Message::Refusal(proto::UnsignedRefusal {
                reason,
                nonce: Some(nonce),
            }));
            let e =
                p.c.on_datagram(p.now, MS, WP.parse().unwrap(), &forged)
                    .unwrap_err();
            assert!(
                e.contains("unsigned refusal") && e.contains("not acted on"),
                "{e}"
            );
        }
        // Nothing changed: the request is still pending, the peer is up, the
        // retransmission gets the grant.
        assert_eq!(detour_state(&p, 1), vec!["requesting"]);
        assert!(p.c.peers(p.now).iter().all(|s| s.up));
        p.advance(Duration::from_secs(1), true);
        assert_eq!(p.created.len(), 1);
        // Nor does one end a granted lease.
        let forged = proto::encode(&Message::Refusal(proto::UnsignedRefusal {
            reason: RefusalReason::UnknownLease,
            nonce: None,
        }));
        assert!(p
            .c
            .on_datagram(p.now, MS, WP.parse().unwrap(), &forged)
            .is_err());
        assert_eq!(detour_state(&p, 1), vec!["connecting"]);
        assert!(p.destroyed.is_empty());
    }

    #[test]
    fn a_renewal_refused_for_its_rate_keeps_the_detour_and_is_asked_again() {
        for vpn in [false, true] {
            let limits = waypoint::Limits {
                member_rate: 1,
                member_burst: 1,
                ..waypoint::Limits::default()
            };
            let peers = if vpn {
                Pair::vpn_alice()
            } else {
                Pair::alice()
            };
            let mut p = Pair::with_limits(peers, limits);
            p.event(established(1));
            if !vpn {
                let remote = p.created[0].1;
                p.event(PmEvent::SubEstablished {
                    token: Token(1),
                    subflow: sub(remote, 50001),
                });
            }
            // Just before the first renewal, someone (bob's own second
            // router, say) spends bob's renewal token.
            p.advance(Duration::from_millis(10), true);
            let due = p.c.next_timeout(p.now).expect("a renewal is due");
            let ms = Duration::from_millis(1);
            p.advance(due.saturating_duration_since(p.now) - ms, true);
            let stray = testutil::request_from(
                &p.c.cert,
                3,
                "alice",
                0xaa,
                p.ms(),
                RequestKind::Release {
                    port: 1,
                    lease: Nonce([0; 16]),
                },
                CLIENT_IP.parse().unwrap(),
            );
            let from = SocketAddr::new(CLIENT_IP.parse().unwrap(), 50000);
            let d = p.w.handle(p.now, p.ms(), from, &stray);
            assert!(
                matches!(
                    d,
                    Decision::Reply {
                        refused: Some(_),
                        ..
                    }
                ),
                "{d:?}"
            );
            // The renewal is refused for the rate: nothing is torn down ...
            p.advance(Duration::from_millis(1), true);
            let limited = p.w.stats().refused.get("RateLimited").copied();
            assert_eq!(limited, Some(1), "vpn {vpn}: {:?}", p.w.stats());
            let granted = p.w.stats().granted;
            // ... and it is asked again a second later, and renewed.
            p.advance(Duration::from_millis(1000), true);
            assert!(p.w.stats().granted > granted, "vpn {vpn}");
            assert!(p.destroyed.is_empty());
            if vpn {
                assert_eq!(p.vpn, vec!["up 10.200.7.2"]);
            } else {
                assert_eq!(detour_state(&p, 1), vec!["established"]);
            }
        }
    }

    #[test]
    fn a_new_tunnel_refused_for_the_rate_pauses_that_waypoint_briefly() {
        let limits = waypoint::Limits {
            member_rate: 1,
            member_burst: 1,
            ..waypoint::Limits::default()
        };
        let mut p = Pair::with_limits(Pair::alice(), limits);
        let conn = |p: &mut Pair, token: u32| {
            let mut ev = established(token);
            if let PmEvent::Established { local, .. } = &mut ev {
                local.set_port(40000 + token as u16);
            }
            p.event(ev);
        };
        conn(&mut p, 1);
        assert_eq!(p.created.len(), 1);
        // The second connection's request is over bob's rate: refused, and
        // alice is not asked for new tunnels for a moment.
        conn(&mut p, 2);
        assert_eq!(detour_state(&p, 2), vec!["failed"]);
        assert!(p.c.peers(p.now).iter().all(|s| !s.up));
        let sent = p.sent;
        conn(&mut p, 3);
        assert_eq!(p.sent, sent, "asked again at once");
        // Later it is.
        p.advance(RATE_LIMITED_HOLDDOWN, true);
        conn(&mut p, 4);
        assert_eq!(detour_state(&p, 4), vec!["connecting"]);
    }
}
