//! The client role's driver: the MPTCP path manager's events and commands,
//! the signaling sockets, the pure [`Client`] core, the measurements of
//! detour subflows (sock_diag), the scoreboard file and the tunnels to VPN
//! waypoints ([`vpn`]).
//!
//! Its peers are the static `config peer` ones, then those the directory
//! picks ([`Event::DirectoryPeers`]), appended so that running detours keep
//! their peer indices; when a directory peer in use leaves, the core is
//! rebuilt like for a changed static peer list (detours of running
//! connections are released). The LAN proxy's news about the connections
//! it opens ([`Event::Relay`]) reach the core before any path-manager event
//! about the same connection can: the relay reports a connection when it
//! creates its socket, before the kernel can announce it.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::driver::{earliest, Ctx, Driver, Event, Outbox, Role};
use super::identity::Identity;
use super::membership::directory_only;
use super::plan::ClientChange;
use super::{io_err, wall_ms, DaemonError};
use crate::client::{self, Action, Client, PeerSpec};
use crate::config::Config;
use crate::control::Status;
use crate::loglimit::LogLimit;
use crate::mptcp::PmEvent;
use crate::proxy::Gate;
use crate::sys::diag::Diag;
use crate::sys::mptcp_pm::{PmEvents, PmSocket};
use crate::sys::os;
use crate::sys::relay::RelayEvent;
use crate::sys::sysctl;
use crate::trust::{self, MemberId, Revocations};
use crate::types::{DetourPolicy, TunnelKind};

mod status;
mod vpn;

use vpn::ClientVpn;

/// The client role.
pub(super) struct ClientDriver {
    core: Client,
    events: PmEvents,
    pm: PmSocket,
    sock4: UdpSocket,
    sock6: Option<UdpSocket>,
    /// Each peer's tunnel kind, by peer index.
    tunnels: Vec<TunnelKind>,
    log: LogLimit,
    /// Tunnels to VPN waypoints, by peer index.
    vpns: HashMap<usize, ClientVpn>,
    /// Interface name prefix and first routing table of VPN tunnels.
    vpn_prefix: String,
    vpn_table: u32,
    /// This member's WireGuard secret key.
    wg_secret: trust::wg::WgKey,
    /// Measurement of detour subflows (None: strategy off or no sock_diag).
    diag: Option<Diag>,
    sample_interval: Duration,
    next_sample: Instant,
    /// `state_dir/scores`: the waypoint scoreboard.
    scores_file: PathBuf,
    next_save: Instant,
    /// The configuration and identity in force (to rebuild the core).
    cfg: Config,
    id: Identity,
    /// The peers the directory picked, and those of them in the core
    /// (after the static peers).
    dir_chosen: Vec<PeerSpec>,
    dir_in_core: Vec<PeerSpec>,
    /// Members the directory revokes.
    dir_revoked: BTreeSet<MemberId>,
}

/// The core's settings from `cfg`; `measured`: sock_diag is open (the
/// strategy has subflow measurements).
fn settings(cfg: &Config, measured: bool) -> client::Settings {
    let c = &cfg.client;
    client::Settings {
        max_detours: c.max_detours,
        request_timeout: Duration::from_millis(u64::from(c.request_timeout_ms)),
        renew_interval: Duration::from_secs(u64::from(c.renew_interval_s)),
        liveness_misses: c.liveness_misses,
        holddown: Duration::from_secs(30),
        own_connections: if c.detour_policy == DetourPolicy::None {
            Gate::Shut("detour_policy 'none'")
        } else {
            Gate::Open
        },
        strategy: client::strategy::StrategySettings {
            probation: Duration::from_millis(u64::from(c.probation_ms)),
            // Nothing measures the connection alone without sampling: no
            // detour is held back for it.
            baseline: if !measured {
                Duration::ZERO
            } else {
                client::strategy::StrategySettings::default().baseline
            },
            ..Default::default()
        },
    }
}

fn tunnel_kind(p: &PeerSpec) -> TunnelKind {
    if p.vpn {
        TunnelKind::Vpn
    } else {
        TunnelKind::Nat
    }
}

/// The core for `cfg`'s static peers, and each peer's tunnel kind.
fn core(
    cfg: &Config,
    id: &Identity,
    revocations: Revocations,
    measured: bool,
) -> Result<(Client, Vec<TunnelKind>), DaemonError> {
    let peers: Vec<PeerSpec> = cfg
        .peers
        .iter()
        .map(|p| PeerSpec {
            name: p.name.clone(),
            address: p.address,
            vpn: p.tunnel == TunnelKind::Vpn,
            convert: p.convert,
        })
        .collect();
    if peers.is_empty() && cfg.directory.url.is_none() {
        log::warn!("client: no usable peers configured; connections get no detours");
    }
    let tunnels = peers.iter().map(tunnel_kind).collect();
    let mut prefix = [0u8; 8];
    random_bytes(&mut prefix).map_err(io_err("/dev/urandom"))?;
    let core = Client::new(
        settings(cfg, measured),
        id.cert.clone(),
        id.key.clone(),
        id.root,
        revocations,
        peers,
        prefix,
    );
    Ok((core, tunnels))
}

pub(super) fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// The waypoint scoreboard from `path`; a missing file is an empty board,
/// a corrupt one is logged and ignored (bad lines alone are skipped).
fn load_scores(path: &Path) -> client::strategy::Scoreboard {
    let text = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Default::default(),
        Err(e) => {
            log::warn!("{}: {e}; starting with no waypoint scores", path.display());
            return Default::default();
        }
    };
    let text = String::from_utf8_lossy(&text);
    match client::strategy::Scoreboard::from_file(&text) {
        Ok((board, bad)) => {
            for b in bad {
                log::warn!("{}:{}: skipped: {}", path.display(), b.line, b.why);
            }
            board
        }
        Err(e) => {
            log::warn!(
                "{}: {e}; ignored, starting with no waypoint scores",
                path.display()
            );
            Default::default()
        }
    }
}

/// Writes the scoreboard to `path` through a temporary file and a rename, so
/// a crash never leaves half a file.
fn save_scores(path: &Path, board: &client::strategy::Scoreboard) {
    let tmp = path.with_extension("tmp");
    let r = std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
        .and_then(|()| std::fs::write(&tmp, board.to_file()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        log::warn!("saving {}: {e}", path.display());
    }
}

/// Switches the kernel to the userspace path manager (restored on exit).
fn userspace_pm(sysctls: &mut sysctl::SysctlGuard) -> Result<(), DaemonError> {
    if Path::new(sysctl::MPTCP_PATH_MANAGER).exists() {
        sysctls.set(sysctl::MPTCP_PATH_MANAGER, "userspace")?;
    } else {
        sysctls.set(sysctl::MPTCP_PM_TYPE, "1")?;
    }
    Ok(())
}

/// The signaling sockets: IPv4, and IPv6 where the host has it.
fn bind_sockets() -> Result<(UdpSocket, Option<UdpSocket>), DaemonError> {
    let any4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);
    let sock4 = os::bind_udp(any4).map_err(io_err("client: bind UDP"))?;
    let sock6 = match os::bind_udp(any6) {
        Ok(s) => Some(s),
        Err(e) => {
            log::info!("client: no IPv6 signaling socket ({e})");
            None
        }
    };
    Ok((sock4, sock6))
}

/// sock_diag for the strategy, unless it is off (or the kernel lacks it).
fn open_diag(cfg: &Config) -> Option<Diag> {
    if cfg.client.sample_interval_ms == 0 {
        return None;
    }
    match Diag::open() {
        Ok(d) => Some(d),
        Err(e) => {
            log::warn!("client: no subflow measurements, detours stay as created: {e}");
            None
        }
    }
}

impl ClientDriver {
    fn start(ctx: &mut Ctx<'_>) -> Result<ClientDriver, DaemonError> {
        let (cfg, id) = (ctx.cfg, ctx.id);
        let c = &cfg.client;
        userspace_pm(ctx.sysctls)?;
        let events = PmEvents::open()?;
        let pm = PmSocket::open()?;
        let (sock4, sock6) = bind_sockets()?;
        let diag = open_diag(cfg);
        let (mut core, tunnels) = core(cfg, id, id.revocations.clone(), diag.is_some())?;
        let scores_file = cfg.main.state_dir.join("scores");
        core.set_scoreboard(load_scores(&scores_file));
        log::info!(
            "client: userspace path manager on, {} waypoint(s), max {} detours",
            tunnels.len(),
            c.max_detours
        );
        Ok(ClientDriver {
            core,
            events,
            pm,
            sock4,
            sock6,
            tunnels,
            log: LogLimit::new(20),
            vpns: HashMap::new(),
            vpn_prefix: c.vpn_interface_prefix.clone(),
            vpn_table: c.vpn_table,
            wg_secret: trust::wg::secret(&id.key),
            diag,
            sample_interval: Duration::from_millis(u64::from(c.sample_interval_ms.max(50))),
            next_sample: Instant::now(),
            scores_file,
            next_save: Instant::now(),
            cfg: cfg.clone(),
            id: id.clone(),
            dir_chosen: Vec::new(),
            dir_in_core: Vec::new(),
            dir_revoked: BTreeSet::new(),
        })
    }

    /// The identity's revocations and the directory's.
    fn revocations(&self) -> Revocations {
        let mut r = self.id.revocations.clone();
        for m in &self.dir_revoked {
            r.insert(*m);
        }
        r
    }

    fn release_all(&mut self) {
        let (now, wall) = (Instant::now(), wall_ms());
        for a in self.core.shutdown(now, wall) {
            self.act(a);
        }
    }

    /// A new core for the static peers and `dir` (the running connections'
    /// detours are released; the scoreboard carries over).
    fn rebuild(&mut self, dir: Vec<PeerSpec>) -> Result<(), DaemonError> {
        let (mut core, mut tunnels) =
            core(&self.cfg, &self.id, self.revocations(), self.diag.is_some())?;
        self.release_all();
        core.set_scoreboard(self.core.scoreboard().clone());
        tunnels.extend(dir.iter().map(tunnel_kind));
        core.add_peers(dir.clone());
        self.core = core;
        self.tunnels = tunnels;
        self.dir_in_core = dir;
        Ok(())
    }

    /// Gives the core the directory's peers (those that are not static
    /// peers too): appended while none in use left, else a new core.
    fn sync_directory_peers(&mut self) {
        let new = directory_only(&self.dir_chosen, &self.cfg.peers);
        if self.dir_in_core == new {
            return;
        }
        if self.dir_in_core.iter().all(|p| new.contains(p)) {
            let added: Vec<PeerSpec> = new
                .iter()
                .filter(|p| !self.dir_in_core.contains(p))
                .cloned()
                .collect();
            log::info!(
                "directory: {} new waypoint peer(s): {}",
                added.len(),
                names(&added)
            );
            self.tunnels.extend(added.iter().map(tunnel_kind));
            self.dir_in_core.extend(added.iter().cloned());
            self.core.add_peers(added);
            return;
        }
        log::info!(
            "directory: waypoint peers now {} (detours of running connections released)",
            names(&new)
        );
        if let Err(e) = self.rebuild(new) {
            log::error!("directory: rebuilding the client's peers: {e}");
        }
    }

    /// The LAN relay's news about a connection it opened.
    fn relay_event(&mut self, e: &RelayEvent, now: Instant) {
        match *e {
            RelayEvent::Opened {
                local,
                lan,
                server,
                gate,
            } => {
                log::debug!(
                    "lan proxy: {lan} -> {server} proxied from {local}, detours {}",
                    gate.describe()
                );
                self.core.proxy_opened(local, lan, gate);
            }
            RelayEvent::Connected { local, token } => {
                log::debug!("lan proxy: connection from {local} is MPTCP {token:#010x}");
            }
            RelayEvent::Gate { local, gate } => {
                for a in self.core.proxy_gate(now, wall_ms(), local, gate) {
                    self.act(a);
                }
            }
            RelayEvent::Closed { local } => self.core.proxy_closed(local),
        }
    }

    /// The path manager's events.
    fn read_events(&mut self, now: Instant, wall: u64) {
        let evs = match self.events.read() {
            Ok(evs) => evs,
            Err(e) => {
                log::warn!("path manager events: {e}");
                return;
            }
        };
        for ev in evs {
            log::debug!("pm event: {ev:?}");
            for a in self.core.on_event(now, wall, &ev) {
                self.act(a);
            }
            if let PmEvent::SubEstablished { token, subflow } = &ev {
                if let Some((peer, setup)) = self.core.detour_setup(*token, subflow.remote) {
                    let held = self
                        .core
                        .conns()
                        .find(|c| c.token == *token)
                        .and_then(|c| c.held)
                        .map_or(String::new(), |h| {
                            format!("'s {} ms hold for its rate alone", h.as_millis())
                        });
                    log::info!(
                        "detour of {:#010x} via {peer} established {:.2} ms after the connection{held}",
                        token.0,
                        setup.as_secs_f64() * 1000.0
                    );
                }
            }
        }
    }

    /// The waypoints' answers on one signaling socket.
    fn read_datagrams(&mut self, v6: bool, now: Instant, wall: u64) {
        let mut buf = [0u8; 2048];
        loop {
            let sock = if v6 {
                self.sock6.as_ref()
            } else {
                Some(&self.sock4)
            };
            let Some(sock) = sock else { return };
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("client signaling socket: {e}");
                    return;
                }
            };
            match self.core.on_datagram(now, wall, from, &buf[..n]) {
                Ok(actions) => {
                    for a in actions {
                        self.act(a);
                    }
                }
                Err(e) => {
                    if self.log.allow(now) {
                        log::warn!("client: ignored datagram: {e}");
                    }
                }
            }
        }
    }

    /// What is due: the core's timers, a measuring round, the scoreboard.
    fn turn(&mut self, now: Instant, wall: u64) {
        for a in self.core.poll(now, wall) {
            self.act(a);
        }
        self.sample(now, wall);
    }

    /// When [`ClientDriver::sample`] next has work: only while detours run.
    fn next_sample(&self) -> Option<Instant> {
        (self.diag.is_some() && !self.core.measured().is_empty()).then_some(self.next_sample)
    }

    /// One measuring round: every detour subflow and its connection's direct
    /// subflow, from sock_diag; then the scoreboard is saved if it changed
    /// (at most every 5 s).
    fn sample(&mut self, now: Instant, wall: u64) {
        if now >= self.next_save && self.core.scoreboard_dirty() {
            self.next_save = now + Duration::from_secs(5);
            save_scores(&self.scores_file, self.core.scoreboard());
        }
        let Some(diag) = self.diag.as_mut() else {
            return;
        };
        if now < self.next_sample {
            return;
        }
        self.next_sample = now + self.sample_interval;
        if self.core.measured().is_empty() {
            return;
        }
        let samples = match diag.dump_all() {
            Ok(s) => s,
            Err(e) => {
                if self.log.allow(now) {
                    log::warn!("subflow measurements: {e}");
                }
                return;
            }
        };
        for a in self.core.on_samples(now, wall, &samples) {
            self.act(a);
        }
    }

    /// Carries out one of the core's actions.
    fn act(&mut self, a: Action) {
        match a {
            Action::Send { from, to, bytes } => {
                let sock = if to.is_ipv4() {
                    Some(&self.sock4)
                } else {
                    self.sock6.as_ref()
                };
                match sock.map(|s| os::send_from(s, &bytes, to, from)) {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => log::debug!("client: send to {to}: {e}"),
                    None => log::debug!("client: no IPv6 socket for {to}"),
                }
            }
            Action::CreateSubflow {
                token,
                local,
                local_id,
                remote,
            } => match self.pm.subflow_create(token, local, local_id, remote) {
                Ok(()) => log::info!("detour subflow for {:#010x}: {local} -> {remote}", token.0),
                Err(e) => {
                    log::warn!("detour subflow for {:#010x} via {remote}: {e}", token.0);
                    self.core.create_failed(token, remote, &e.to_string());
                }
            },
            Action::VpnUp {
                peer,
                address,
                address6,
                wg_key,
                endpoint,
            } => self.vpn_up(peer, address, address6, wg_key, endpoint),
            Action::VpnDown { peer } => self.vpn_down(peer),
            Action::SetBackup {
                token,
                local,
                remote,
                backup,
            } => {
                if let Err(e) = self.pm.set_backup(token, local, remote, backup) {
                    log::debug!("set backup={backup} on {local} -> {remote}: {e}");
                }
            }
            Action::DestroySubflow {
                token,
                local,
                remote,
            } => match self.pm.subflow_destroy(token, local, remote) {
                Ok(()) => log::info!(
                    "dropped detour subflow {local} -> {remote} of {:#010x}",
                    token.0
                ),
                Err(e) => log::debug!("destroy subflow {local} -> {remote}: {e}"),
            },
        }
    }
}

impl Driver for ClientDriver {
    fn fds<'a>(&'a self, out: &mut Vec<BorrowedFd<'a>>) {
        out.push(self.events.fd());
        out.push(self.sock4.as_fd());
        out.extend(self.sock6.as_ref().map(|s| s.as_fd()));
    }

    fn deadline(&self, now: Instant) -> Option<Instant> {
        let save = self.core.scoreboard_changed().then_some(self.next_save);
        earliest(
            earliest(self.core.next_timeout(now), self.next_sample()),
            save,
        )
    }

    fn on_ready(&mut self, fd: RawFd, now: Instant, _out: &mut Outbox) {
        let wall = wall_ms();
        if fd == self.events.fd().as_raw_fd() {
            self.read_events(now, wall);
        } else {
            let v6 = self.sock6.as_ref().is_some_and(|s| s.as_raw_fd() == fd);
            self.read_datagrams(v6, now, wall);
        }
        self.turn(now, wall);
    }

    fn on_timeout(&mut self, now: Instant, _out: &mut Outbox) {
        self.turn(now, wall_ms());
    }

    fn on_event(&mut self, ev: &Event, now: Instant, _out: &mut Outbox) {
        match ev {
            Event::Relay(e) => self.relay_event(e, now),
            Event::PublicAddress(a) => self.core.set_public_address(*a),
            Event::DirectoryPeers(p) => {
                self.dir_chosen.clone_from(p);
                self.sync_directory_peers();
            }
            Event::DirectoryRevoked(r) => {
                self.dir_revoked.clone_from(r);
                let (cert, key) = (self.id.cert.clone(), self.id.key.clone());
                let revocations = self.revocations();
                self.core.reconfigure(
                    settings(&self.cfg, self.diag.is_some()),
                    cert,
                    key,
                    revocations,
                );
            }
            _ => {}
        }
    }

    fn status(&self, now: Instant, doc: &mut Status) {
        doc.client = Some(self.status_doc(now));
    }
}

impl Role for ClientDriver {
    type Change = ClientChange;
    const NAME: &'static str = "client";
    const STOPPED: &'static str = "client stopped";
    const STARTED: &'static str = "client started";
    const RESTARTED: &'static str = "client stopped; client started";

    fn start(ctx: &mut Ctx<'_>, _out: &mut Outbox) -> Result<Option<Self>, DaemonError> {
        ClientDriver::start(ctx).map(Some)
    }

    fn reconfigure(
        &mut self,
        change: &ClientChange,
        ctx: &mut Ctx<'_>,
        _out: &mut Outbox,
    ) -> Result<Vec<String>, DaemonError> {
        self.cfg = ctx.cfg.clone();
        self.id = ctx.id.clone();
        let mut changes = Vec::new();
        if change.peers {
            self.rebuild(Vec::new())?;
            changes.push(format!(
                "peers ({} now; detours of running connections released)",
                self.tunnels.len()
            ));
            self.sync_directory_peers();
        } else if change.settings || change.identity {
            let (cert, key) = (self.id.cert.clone(), self.id.key.clone());
            let revocations = self.revocations();
            self.core.reconfigure(
                settings(&self.cfg, self.diag.is_some()),
                cert,
                key,
                revocations,
            );
        }
        if change.settings {
            changes.push("client settings".to_owned());
        }
        Ok(changes)
    }

    /// Releases every lease, saves the scoreboard, takes the VPN tunnels
    /// down.
    fn stop(mut self, _out: &mut Outbox) {
        self.release_all();
        save_scores(&self.scores_file, self.core.scoreboard());
        self.vpns_down();
    }
}

fn names(peers: &[PeerSpec]) -> String {
    let v: Vec<String> = peers
        .iter()
        .map(|p| format!("{} {}", p.name, p.address))
        .collect();
    v.join(", ")
}
