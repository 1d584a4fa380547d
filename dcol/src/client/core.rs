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

mod error;
mod peer;
mod request;
mod steer;
mod vpn;

pub use error::DatagramError;
use peer::Peer;
pub use vpn::{VpnPeer, VpnState};

use super::strategy::{self, Judge, Meter, Scoreboard, StrategySettings, Tested};
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

/// How long a waypoint that refused a new tunnel because it is full for us
/// (`NoPortsLeft`: no port left for our address; `QuotaExceeded`: our
/// member's tunnel quota) is not asked for another: a short back-off, not
/// the hold-down of a dead waypoint, since its leases end and free ports all
/// the time. Running detours through it and requests naming a destination
/// it already leases to us are not affected once the back-off is over.
pub(crate) const FULL_BACKOFF: Duration = Duration::from_secs(5);

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
    /// It converts too (RFC 8803, issue 17): its converter listens on TCP
    /// at `address` (the LAN proxy's business, not the path manager's).
    pub convert: bool,
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
    /// ESTABLISHED of the connection (or the end of [`Conn::held`]) →
    /// SUB_ESTABLISHED of this detour.
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
    /// The direct subflow's best rate before its first detour, bits/s.
    alone_bps: Option<f64>,
    /// How long its first detours' SUBFLOW_CREATE was held back after
    /// ESTABLISHED, for the rate alone.
    pub held: Option<Duration>,
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
    /// SUBFLOW_CREATEs held back while their connection runs alone for
    /// [`StrategySettings::baseline`], with when they are due.
    deferred: Vec<(Instant, Action)>,
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
            deferred: Vec::new(),
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
            alone_bps: None,
            held: None,
        }
    }

    /// Handles a datagram from a waypoint.
    pub fn on_datagram(
        &mut self,
        now: Instant,
        wall_ms: u64,
        from: SocketAddr,
        dgram: &[u8],
    ) -> Result<Vec<Action>, DatagramError> {
        let resp = match proto::decode(dgram) {
            Ok(Message::Response(r)) => r,
            Ok(Message::Request(_)) => return Err(DatagramError::Request { from }),
            Ok(Message::Refusal(r)) => {
                let reason = r.reason;
                return Err(DatagramError::UnsignedRefusal { from, reason });
            }
            Err(source) => return Err(DatagramError::Undecodable { from, source }),
        };
        if self.vpn_pending.contains_key(&resp.body.nonce) {
            return self.on_vpn_response(now, wall_ms, from, resp);
        }
        let Some(p) = self.pending.get(&resp.body.nonce) else {
            return Err(DatagramError::NotPending { from });
        };
        if p.to != from {
            return Err(DatagramError::WrongSender { from, to: p.to });
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
            .map_err(|source| DatagramError::Untrusted { from, source })?;
        let peer = &self.peers[peer_idx];
        if resp.cert.name != peer.spec.name {
            return Err(DatagramError::WrongName {
                from,
                name: resp.cert.name.clone(),
                configured: peer.spec.name.clone(),
            });
        }
        if !resp.cert.roles.contains(Roles::WAYPOINT) {
            let name = resp.cert.name.clone();
            return Err(DatagramError::NotAWaypoint { from, name });
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
        out.extend(self.due_creates(now));
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
        let c = self.deferred.iter().map(|(t, _)| *t).min();
        [p, r, c, self.vpn_next_timeout(now)]
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
                up: p.down_until.is_none_or(|t| t <= now)
                    && p.refused_until.is_none_or(|t| t <= now),
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
        // The first detour: what the direct subflow did alone until now.
        if conn.detours.iter().all(|d| d.judge.is_none()) {
            let ran = est.map_or(Duration::ZERO, |e| now.saturating_duration_since(e));
            conn.alone_bps = strategy::rate_alone(&conn.direct, ran);
            log::debug!(
                "connection {:#010x} alone: {:.2} Mbit/s at best over {} intervals",
                token.0,
                conn.direct.peak_bps / 1e6,
                conn.direct.intervals
            );
        }
        let alone = conn.alone_bps;
        let Some(d) = conn.detours.iter_mut().find(|d| d.is(&self.peers, sf)) else {
            return;
        };
        d.state = DetourState::Established;
        d.local_port = Some(sf.local.port());
        d.established_at = Some(now);
        let from = est.map(|e| e + conn.held.unwrap_or_default());
        d.setup = from.map(|e| now.saturating_duration_since(e));
        d.judge = Some(match tested {
            None => {
                let mut j = Judge::new(now, strategy);
                if let Some(a) = alone {
                    j.set_alone(a);
                }
                j
            }
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
}

#[cfg(test)]
mod tests;
