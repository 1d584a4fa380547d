//! `dcol run`: wires the pure roles ([`crate::client`], [`crate::waypoint`]) to
//! the kernel ([`crate::sys`]) in one single-threaded `poll(2)` loop.
//!
//! Start-up order matters for "nothing left behind": signals are blocked first,
//! then every piece of kernel state is created through an owner whose `Drop` (or
//! explicit teardown) removes it, and crash leftovers are reconciled before new
//! state is made: the NAT table of a crashed run is listed, its conntrack flows
//! deleted and the table replaced (live tunnels of the crashed run are cleanly
//! revoked; their clients see the renewal refused and ask again), and sysctls
//! recorded in the state directory are restored.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::client::{self, Action, Client, PeerSpec};
use crate::config::{self, Config, DetourPolicy, TunnelKind};
use crate::control::{self, ControlServer, Status};
use crate::mptcp::PmEvent;
use crate::proxy::Gate;
use crate::routes::Routes;
use crate::sys::conntrack;
use crate::sys::diag::Diag;
use crate::sys::mptcp_pm::{PmEvents, PmSocket};
use crate::sys::nft::{Caps, NatElement, NatTable};
use crate::sys::os::{self, Signals};
use crate::sys::relay::RelayEvent;
use crate::sys::routewatch::RouteWatch;
use crate::sys::rtnl::Rtnl;
use crate::sys::sysctl::{self, SysctlGuard};
use crate::sys::vpnfw::VpnFirewall;
use crate::sys::wg::{WgDevice, WgPeer};
use crate::sys::SysError;
use crate::trust::{self, files, Certificate, MemberId, Revocations, SecretKey};
use crate::waypoint::evidence::{self, EvidenceLog};
use crate::waypoint::{self, Decision, Lease, Waypoint};

mod lan;
mod membership;
mod traversal;

use lan::LanRole;
pub use lan::LAN_TABLE;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Keys, certificate or configuration are unusable (exit code 2).
    #[error("{0}")]
    Config(String),
    /// The kernel or the OS refused something (exit code 1).
    #[error("{0}")]
    Sys(#[from] SysError),
    /// Socket or file trouble (exit code 1).
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The control socket.
    #[error("{0}")]
    Control(#[from] control::ControlError),
}

impl DaemonError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_) => 2,
            _ => 1,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Unix time in milliseconds.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// At most `per_sec` log lines per second for one noisy source; the rest are
/// counted and summarized, so a flood of garbage cannot fill the router's log.
#[derive(Debug)]
pub(crate) struct LogLimit {
    per_sec: u32,
    window: Instant,
    used: u32,
    dropped: u64,
}

impl LogLimit {
    pub(crate) fn new(per_sec: u32) -> Self {
        LogLimit {
            per_sec,
            window: Instant::now(),
            used: 0,
            dropped: 0,
        }
    }

    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            if self.dropped > 0 {
                log::warn!(
                    "{} more refusals not logged in the last second",
                    self.dropped
                );
            }
            self.window = now;
            self.used = 0;
            self.dropped = 0;
        }
        if self.used < self.per_sec {
            self.used += 1;
            true
        } else {
            self.dropped = self.dropped.wrapping_add(1);
            false
        }
    }
}

struct Identity {
    cert: Certificate,
    key: SecretKey,
    root: trust::PublicKey,
    revocations: Revocations,
    /// Serial of the revocation list file (0: none).
    rev_serial: u64,
}

fn load_identity(cfg: &Config) -> Result<Identity, DaemonError> {
    let cfgerr = |e: files::FileError| DaemonError::Config(e.to_string());
    let key = files::read_secret_key(&cfg.main.key).map_err(cfgerr)?;
    let cert = files::read_certificate(&cfg.main.cert).map_err(cfgerr)?;
    let root = files::read_public_key(&cfg.main.collective).map_err(cfgerr)?;
    let mut revocations = Revocations::default();
    for r in &cfg.main.revoked {
        let id = r.parse().map_err(|_| {
            DaemonError::Config(format!("revoked member id '{r}' is not 16 hex digits"))
        })?;
        revocations.insert(id);
    }
    let mut rev_serial = 0;
    if let Some(path) = &cfg.main.revocation_list {
        match files::read_revocations(path, &root) {
            Ok(list) => {
                rev_serial = list.serial;
                revocations = revocations.union(&list.revocations());
            }
            Err(files::FileError::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                log::debug!("{}: no revocation list yet", path.display());
            }
            Err(e) => return Err(cfgerr(e)),
        }
    }
    if cert.key != key.public() {
        return Err(DaemonError::Config(format!(
            "{}: certificate is for another key than {}",
            cfg.main.cert.display(),
            cfg.main.key.display()
        )));
    }
    cert.verify(&root, wall_ms() / 1000)
        .map_err(|e| DaemonError::Config(format!("{}: {e}", cfg.main.cert.display())))?;
    Ok(Identity {
        cert,
        key,
        root,
        revocations,
        rev_serial,
    })
}

struct WaypointRole {
    core: Waypoint,
    sockets: Vec<UdpSocket>,
    nat: Option<NatTable>,
    log: LogLimit,
    /// VPN tunnels: the WireGuard interface and its firewall table.
    wg: Option<WgDevice>,
    vpnfw: Option<VpnFirewall>,
    /// The WAN interfaces the NAT and VPN tables let detours leave by.
    wan: Vec<String>,
    /// Donation caps in force, and the monthly quota's bookkeeping.
    caps: Caps,
    month: (i64, u32),
    next_quota_check: Option<Instant>,
    /// When the quota's counter was last read: a request re-reads it when
    /// older than [`QUOTA_FRESH`], so grants stop as soon as it runs out.
    quota_read: Instant,
    /// When the month's count is next written to `donation_file`.
    next_persist: Instant,
    /// The month's count every [`QUOTA_CHECK`] (RAM on OpenWrt) ...
    donated_file: PathBuf,
    /// ... and every [`QUOTA_PERSIST`] (flash: survives a reboot).
    donation_file: PathBuf,
    /// Granted requests, kept as attribution evidence.
    evidence: Option<EvidenceLog>,
    /// Buffers for reading the signaling sockets, [`DATAGRAMS_PER_TURN`] at a time.
    batch: os::RecvBatch,
    /// Log lines about the kernel's drop list (apart from refusals').
    filter_log: LogLimit,
}

/// The evidence log of `cfg`, or None when it is off or cannot be opened
/// (logged: the waypoint serves on without it).
fn open_evidence(cfg: &Config) -> Option<EvidenceLog> {
    let w = &cfg.waypoint;
    if w.evidence_max_kb == 0 {
        return None;
    }
    let dir = w
        .evidence_dir
        .clone()
        .unwrap_or_else(|| cfg.main.state_dir.join("evidence"));
    match EvidenceLog::open(&dir, u64::from(w.evidence_max_kb) * 1024) {
        Ok(l) => Some(l),
        Err(e) => {
            log::error!(
                "evidence log {}: {e}; granted requests are not kept",
                dir.display()
            );
            None
        }
    }
}

/// How often the monthly quota's count is saved in `state_dir` (and the
/// month checked).
const QUOTA_CHECK: Duration = Duration::from_secs(30);

/// How often the count is saved to `donation_file` (flash on a router: 720
/// small writes a month).
const QUOTA_PERSIST: Duration = Duration::from_secs(3600);

/// A request re-reads a quota counter older than this (one `nft` run).
const QUOTA_FRESH: Duration = Duration::from_secs(1);

/// Datagrams a waypoint socket is read for per turn of the event loop.
const DATAGRAMS_PER_TURN: usize = 64;

/// Receive buffer of a waypoint's signaling socket: about a thousand
/// request-sized datagrams, a few milliseconds of a one-sender flood.
const SIGNAL_RCVBUF: usize = 2 << 20;

/// (year, month) of a Unix time, UTC (Howard Hinnant's `civil_from_days`).
fn year_month(unix_s: u64) -> (i64, u32) {
    let z = (unix_s / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

/// The month and byte count of a donation count file (`YYYY-MM BYTES`).
fn parse_donated(text: &str) -> Result<((i64, u32), u64), String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let [month, bytes] = words.as_slice() else {
        return Err(format!("'{}' is not 'YYYY-MM BYTES'", text.trim()));
    };
    let month = month
        .split_once('-')
        .and_then(|(y, m)| Some((y.parse().ok()?, m.parse().ok()?)))
        .filter(|&(y, m): &(i64, u32)| y > 0 && (1..=12).contains(&m))
        .ok_or_else(|| format!("'{month}' is not a month (YYYY-MM)"))?;
    let bytes = bytes
        .parse()
        .map_err(|_| format!("'{bytes}' is not a byte count"))?;
    Ok((month, bytes))
}

/// The bytes donated in `month` according to `path` (0: none counted, or
/// another month's count; a damaged file is logged and counts 0).
fn read_donated(path: &Path, month: (i64, u32)) -> u64 {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
        Err(e) => {
            log::warn!("donation count {}: {e}; counting from 0", path.display());
            return 0;
        }
    };
    match parse_donated(&text) {
        Ok((m, bytes)) if m == month => bytes,
        Ok(_) => 0,
        Err(e) => {
            log::warn!("donation count {}: {e}; counting from 0", path.display());
            0
        }
    }
}

fn write_donated(path: &Path, month: (i64, u32), used: u64) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let text = format!("{:04}-{:02} {used}\n", month.0, month.1);
    if let Err(e) = std::fs::write(path, text) {
        log::warn!("saving {}: {e}", path.display());
    }
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

/// A client's tunnel to one VPN waypoint.
struct ClientVpn {
    dev: WgDevice,
    rules: Vec<(IpAddr, u32)>,
}

struct ClientRole {
    core: Client,
    events: PmEvents,
    pm: PmSocket,
    sock4: UdpSocket,
    sock6: Option<UdpSocket>,
    tunnels: Vec<TunnelKind>,
    log: LogLimit,
    lan: Option<LanRole>,
    /// Tunnels to VPN waypoints, by peer index.
    vpns: std::collections::HashMap<usize, ClientVpn>,
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
}

/// The running daemon.
pub struct Daemon {
    started: Instant,
    /// The UCI file, re-read on SIGHUP.
    path: PathBuf,
    /// The configuration in force.
    cfg: Config,
    /// The collective root of that configuration.
    root: trust::PublicKey,
    cert: Certificate,
    control: ControlServer,
    signals: Signals,
    waypoint: Option<WaypointRole>,
    client: Option<ClientRole>,
    /// Sysctls changed by either role, restored at shutdown.
    sysctls: SysctlGuard,
    /// Revoked members in force (UCI `list revoked` and the list file).
    revocations: Revocations,
    /// Serial of the revocation list in force: an older one is refused.
    rev_serial: u64,
    /// The revocation list file, watched for changes.
    rev_watch: Option<RevWatch>,
    /// The membership directory, with `option directory`.
    membership: Option<membership::Membership>,
    /// NAT traversal (UPnP, STUN) for the waypoint role.
    traversal: Option<traversal::NatTraversal>,
    /// Follows addresses and routes (the WAN, the router's own addresses).
    route_watch: RouteWatch,
    /// The routing state in force.
    routes: Routes,
}

/// How often the revocation list file is checked for changes.
const REVOCATION_CHECK: Duration = Duration::from_secs(2);

/// A watched file: its (modification time, length) when last seen.
struct RevWatch {
    path: PathBuf,
    seen: Option<(std::time::SystemTime, u64)>,
    next: Instant,
}

impl RevWatch {
    fn new(path: &Path) -> RevWatch {
        RevWatch {
            path: path.to_owned(),
            seen: Self::stamp(path),
            next: Instant::now() + REVOCATION_CHECK,
        }
    }

    fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
        let m = std::fs::metadata(path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    /// True (once) when the file changed since last seen; checks at most
    /// every [`REVOCATION_CHECK`].
    fn changed(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + REVOCATION_CHECK;
        let stamp = Self::stamp(&self.path);
        if stamp == self.seen {
            return false;
        }
        self.seen = stamp;
        true
    }
}

impl Daemon {
    /// Sets everything up (see the module docs for the order).
    pub fn start(cfg: &Config, path: &Path) -> Result<Self, DaemonError> {
        let signals = Signals::new().map_err(io_err("signalfd"))?;
        let id = load_identity(cfg)?;
        let control = ControlServer::bind(&cfg.main.control_socket)?;
        let mut sysctls = SysctlGuard::recover(&cfg.main.state_dir)?;
        let (route_watch, routes) = RouteWatch::start()?;
        log::info!("routes: WAN {}", show_wan(&routes));
        let waypoint = if cfg.waypoint.enabled {
            Some(start_waypoint(cfg, &id, &mut sysctls, &routes)?)
        } else {
            None
        };
        let client = if cfg.client.enabled {
            Some(start_client(cfg, &id, &mut sysctls, &routes)?)
        } else {
            None
        };
        let membership = membership::Membership::start(cfg, &id)?;
        let traversal = Daemon::start_traversal(cfg);
        log::info!(
            "dcol {} running as '{}' ({}): client {}, waypoint {}",
            env!("CARGO_PKG_VERSION"),
            id.cert.name,
            id.cert.member,
            if client.is_some() { "on" } else { "off" },
            if waypoint.is_some() { "on" } else { "off" },
        );
        Ok(Daemon {
            started: Instant::now(),
            path: path.to_owned(),
            cfg: cfg.clone(),
            root: id.root,
            cert: id.cert,
            control,
            signals,
            waypoint,
            client,
            sysctls,
            revocations: id.revocations,
            rev_serial: id.rev_serial,
            rev_watch: cfg.main.revocation_list.as_deref().map(RevWatch::new),
            membership,
            traversal,
            route_watch,
            routes,
        })
    }

    /// A new routing snapshot: the waypoint's destination policy follows it.
    fn apply_routes(&mut self, routes: Routes) {
        if routes == self.routes {
            return;
        }
        if routes.wan() != self.routes.wan() {
            log::info!("routes: WAN now {}", show_wan(&routes));
        } else {
            log::debug!("routes: addresses or routes changed");
        }
        if let Some(w) = &mut self.waypoint {
            w.core.set_routes(routes.clone());
            if let Err(e) = w.set_wan(&routes.wan()) {
                log::error!("waypoint: WAN interfaces {:?}: {e}", routes.wan());
            }
        }
        if let Some(l) = self.client.as_mut().and_then(|c| c.lan.as_mut()) {
            l.set_wan(&routes.wan());
        }
        self.routes = routes;
    }

    /// Runs until SIGTERM or SIGINT, then tears down.
    pub fn run(mut self) -> Result<(), DaemonError> {
        let result = self.event_loop();
        self.shutdown();
        result
    }

    fn event_loop(&mut self) -> Result<(), DaemonError> {
        loop {
            let now = Instant::now();
            let mut fds = vec![self.signals.fd(), self.control.fd()];
            if let Some(c) = &self.client {
                if let Some(l) = &c.lan {
                    fds.extend(l.fds());
                }
                fds.push(c.events.fd());
                fds.push(c.sock4.as_raw_fd());
                if let Some(s) = &c.sock6 {
                    fds.push(s.as_raw_fd());
                }
            }
            if let Some(w) = &self.waypoint {
                fds.extend(w.sockets.iter().map(|s| s.as_raw_fd()));
            }
            fds.push(self.route_watch.fd());
            fds.extend(self.membership_fd());
            fds.extend(self.traversal_fd());
            let deadline = [
                self.client.as_ref().and_then(|c| c.core.next_timeout(now)),
                self.client.as_ref().and_then(|c| c.next_sample()),
                self.client
                    .as_ref()
                    .and_then(|c| c.lan.as_ref())
                    .map(LanRole::next_timeout),
                self.waypoint.as_ref().and_then(|w| w.core.next_timeout()),
                self.waypoint.as_ref().and_then(|w| w.next_quota_check),
                self.rev_watch.as_ref().map(|r| r.next),
                self.membership_deadline(),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = deadline.map(|d| d.saturating_duration_since(now));
            let ready = os::poll_readable(&fds, timeout).map_err(io_err("poll"))?;
            if ready[0] {
                while let Some(sig) = self.signals.read() {
                    if sig == libc::SIGHUP {
                        if !self.reload() {
                            return Ok(());
                        }
                    } else {
                        log::info!("signal {sig}: shutting down");
                        return Ok(());
                    }
                }
            }
            // Control clients are served by their own threads; the loop
            // only builds the status they wait for.
            if ready[1] && self.control.waiting() {
                let status = self.status();
                self.control.answer(&status);
            }
            if let Some(r) = &mut self.rev_watch {
                if r.changed(Instant::now()) {
                    log::info!("{}: changed; reloading", r.path.display());
                    if !self.reload() {
                        return Ok(());
                    }
                }
            }
            if let Some(r) = self.route_watch.latest() {
                self.apply_routes(r);
            }
            if let Some(c) = &mut self.client {
                c.step();
            }
            if let Some(w) = &mut self.waypoint {
                w.step();
            }
            let used_up = self
                .waypoint
                .as_ref()
                .is_some_and(|w| w.core.used_up().is_some());
            self.membership_used_up(used_up);
            self.step_membership();
            self.step_traversal();
        }
    }

    /// SIGHUP: re-reads the UCI file and applies what changed, keeping
    /// established connections wherever the change allows it (see
    /// [`Daemon::apply`]). An unreadable or invalid file changes nothing.
    /// Returns false when the daemon should stop (`enabled '0'`).
    fn reload(&mut self) -> bool {
        let new = match config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload: {e}; keeping the running configuration");
                return true;
            }
        };
        for w in &new.warnings {
            log::warn!("{w}");
        }
        if !new.main.enabled {
            log::info!("reload: option enabled is now '0'; shutting down");
            return false;
        }
        let id = match load_identity(&new) {
            Ok(id) => id,
            Err(e) => {
                log::error!("reload: {e}; keeping the running configuration");
                return true;
            }
        };
        if id.root == self.root && id.rev_serial < self.rev_serial {
            log::error!(
                "reload: revocation list serial {} is older than the one in force ({}); keeping the running configuration",
                id.rev_serial,
                self.rev_serial
            );
            return true;
        }
        match self.apply(&new, &id) {
            Ok(changes) if changes.is_empty() => log::info!("reload: nothing changed"),
            Ok(changes) => log::info!("reloaded: {}", changes.join("; ")),
            Err(e) => log::error!("reload: {e}; the affected role is off until the next reload"),
        }
        if new.main.revocation_list != self.cfg.main.revocation_list {
            self.rev_watch = new.main.revocation_list.as_deref().map(RevWatch::new);
        }
        let old = std::mem::replace(&mut self.cfg, new);
        self.root = id.root;
        self.cert = id.cert;
        self.revocations = id.revocations;
        self.rev_serial = id.rev_serial;
        self.reload_membership(&old, &id.key);
        if let Some(c) = self.reload_traversal() {
            log::info!("reloaded: {c}");
        }
        true
    }

    /// Applies `new` (already validated) over the running configuration.
    ///
    /// In place, live tunnels and connections kept: log level; identity
    /// (certificate, key) and revocations (a revoked member's tunnels end
    /// now); client tunables and detour policy; LAN interfaces and bypass
    /// lists (the interception table is replaced; proxied connections live
    /// on); waypoint lease length, caps, allowed destinations, listen
    /// addresses. With a restart of the role: a new collective root, a
    /// changed peer list (the client's detours are released and asked for
    /// afresh by new connections), a new proxy port (proxied connections
    /// are reset), a new NAT port range or table (tunnels revoked). Turning a
    /// role on or off starts or stops it.
    fn apply(&mut self, new: &Config, id: &Identity) -> Result<Vec<String>, DaemonError> {
        let old = self.cfg.clone();
        let mut changes = Vec::new();
        let now = Instant::now();
        if new.main.log_level != old.main.log_level {
            log::set_max_level(new.main.log_level);
            changes.push(format!("log level {}", new.main.log_level));
        }
        let root_changed = id.root != self.root;
        let identity_changed =
            root_changed || id.cert != self.cert || id.revocations != self.revocations;
        if identity_changed {
            changes.push("identity or revocations".into());
        }
        if new.main.control_socket != old.main.control_socket {
            self.control = ControlServer::bind(&new.main.control_socket)?;
            changes.push(format!(
                "control socket {}",
                new.main.control_socket.display()
            ));
        }
        if new.main.state_dir != old.main.state_dir {
            log::warn!("reload: state_dir changes apply at the next start");
        }

        // Waypoint.
        let (wo, wn) = (&old.waypoint, &new.waypoint);
        let vpn_changed = (
            &wo.vpn_subnet,
            &wo.vpn_subnet6,
            wo.vpn_port,
            &wo.vpn_interface,
        ) != (
            &wn.vpn_subnet,
            &wn.vpn_subnet6,
            wn.vpn_port,
            &wn.vpn_interface,
        );
        if wo.enabled
            && (!wn.enabled
                || root_changed
                || vpn_changed
                || id.key.public() != self.cert.key
                || wo.nat_ports != wn.nat_ports
                || wo.grant_ports() != wn.grant_ports()
                || wo.table != wn.table)
        {
            drop(self.waypoint.take());
            changes.push("waypoint stopped (tunnels revoked)".into());
        }
        if wn.enabled && self.waypoint.is_none() {
            self.waypoint = Some(start_waypoint(new, id, &mut self.sysctls, &self.routes)?);
            changes.push("waypoint started".into());
        } else if let Some(w) = self.waypoint.as_mut() {
            if wo != wn || identity_changed {
                let ended = w.core.reconfigure(
                    now,
                    waypoint_settings(new, id),
                    id.cert.clone(),
                    id.key.clone(),
                    id.revocations.clone(),
                );
                w.end_leases(&ended);
                w.expire_vpn(now);
                if (&wo.evidence_dir, wo.evidence_max_kb) != (&wn.evidence_dir, wn.evidence_max_kb)
                {
                    w.evidence = open_evidence(new);
                    w.seed_evidence();
                    changes.push("evidence log".into());
                }
                w.donation_file.clone_from(&wn.donation_file);
                if (wo.donate_kbit, wo.donate_monthly_bytes)
                    != (wn.donate_kbit, wn.donate_monthly_bytes)
                {
                    // A failure changes nothing (one nft transaction): the
                    // caps in force stay, and the waypoint keeps serving.
                    match w.set_caps(wn.donate_kbit, wn.donate_monthly_bytes) {
                        Ok(()) => changes.push("donation caps".into()),
                        Err(e) => log::error!(
                            "reload: donation caps: {e}; the caps in force stay (dcol status shows them)"
                        ),
                    }
                }
                if wo.listen != wn.listen {
                    let mut sockets = Vec::new();
                    for addr in &wn.listen {
                        sockets.push(
                            os::bind_udp(*addr)
                                .map_err(io_err(format!("waypoint: bind {addr}")))?,
                        );
                    }
                    w.sockets = sockets;
                }
                changes.push("waypoint settings".into());
            }
        }

        // Client.
        let (co, cn) = (&old.client, &new.client);
        if co.enabled && (!cn.enabled || root_changed) {
            if let Some(c) = self.client.take() {
                c.stop();
            }
            changes.push("client stopped".into());
        }
        if cn.enabled && self.client.is_none() {
            self.client = Some(start_client(new, id, &mut self.sysctls, &self.routes)?);
            changes.push("client started".into());
        } else if let Some(c) = self.client.as_mut() {
            if old.peers != new.peers {
                c.release_all();
                let (mut core, tunnels) = client_core(new, id)?;
                core.set_scoreboard(c.core.scoreboard().clone());
                c.core = core;
                c.tunnels = tunnels;
                changes.push(format!(
                    "peers ({} now; detours of running connections released)",
                    c.tunnels.len()
                ));
            } else if co != cn || identity_changed {
                c.core.reconfigure(
                    client_settings(new),
                    id.cert.clone(),
                    id.key.clone(),
                    id.revocations.clone(),
                );
            }
            if co != cn {
                changes.push("client settings".into());
            }
            // The LAN proxy.
            if cn.lan_proxy && co.lan_proxy && cn.proxy_port == co.proxy_port {
                if let Some(l) = c.lan.as_mut() {
                    changes.extend(l.reconfigure(new, &self.routes.wan())?);
                }
            } else if cn.lan_proxy != co.lan_proxy || cn.proxy_port != co.proxy_port {
                if let Some(l) = c.lan.take() {
                    l.stop();
                }
                if cn.lan_proxy {
                    c.lan = Some(LanRole::start(new, &self.routes.wan())?);
                    changes.push("LAN proxy (re)started".into());
                } else {
                    changes.push("LAN proxy stopped".into());
                }
            }
        }
        Ok(changes)
    }

    fn shutdown(&mut self) {
        self.stop_traversal();
        self.stop_membership();
        if let Some(c) = self.client.take() {
            c.stop();
        }
        // Dropping the waypoint role removes its table and revokes its tunnels.
        drop(self.waypoint.take());
        self.sysctls.restore();
        log::info!("stopped; kernel state removed");
    }

    /// The status document.
    pub fn status(&self) -> Status {
        let now = Instant::now();
        let client = self.client.as_ref().map(|c| client_status(c, now));
        let waypoint = self.waypoint.as_ref().map(|w| waypoint_status(w, now));
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: now.saturating_duration_since(self.started).as_secs(),
            member: control::MemberStatus {
                name: self.cert.name.clone(),
                id: self.cert.member.to_string(),
                collective: trust::to_hex(&self.cert.collective.0),
                cert_not_after: self.cert.not_after,
                roles: self.cert.roles.to_string(),
            },
            client,
            waypoint,
            directory: self.membership_status(),
            traversal: self.traversal_status(),
        }
    }
}

/// The WAN interfaces for the log.
fn show_wan(routes: &Routes) -> String {
    let w = routes.wan();
    if w.is_empty() {
        "none (no default route: no destination is served)".into()
    } else {
        w.join(", ")
    }
}

fn start_waypoint(
    cfg: &Config,
    id: &Identity,
    sysctls: &mut SysctlGuard,
    routes: &Routes,
) -> Result<WaypointRole, DaemonError> {
    let w = &cfg.waypoint;
    if !id.cert.roles.contains(trust::Roles::WAYPOINT) {
        return Err(DaemonError::Config(format!(
            "{}: the certificate lacks the waypoint role, but the waypoint section is enabled",
            cfg.main.cert.display()
        )));
    }
    let mut sockets = Vec::new();
    for addr in &w.listen {
        let s = os::bind_udp(*addr).map_err(io_err(format!("waypoint: bind {addr}")))?;
        if let Err(e) = os::set_recv_buffer(&s, SIGNAL_RCVBUF) {
            log::warn!("waypoint: receive buffer of {addr}: {e}");
        }
        sockets.push(s);
    }
    // A waypoint forwards the DNATed subflows: routers have forwarding on; a
    // host serving as waypoint gets it on for the daemon's lifetime.
    for (path, v4) in [(sysctl::IPV4_FORWARD, true), (sysctl::IPV6_FORWARD, false)] {
        if w.listen.iter().any(|l| l.is_ipv4() == v4) && sysctl::read(path)? == "0" {
            log::warn!("enabling {path} for the waypoint role (restored on exit)");
            sysctls.set(path, "1")?;
        }
    }
    // Bytes per lease for the evidence log: conntrack's per-flow counters.
    if w.evidence_max_kb > 0 && sysctl::read(sysctl::CONNTRACK_ACCT).is_ok_and(|v| v == "0") {
        log::info!(
            "enabling {} for the evidence log (restored on exit)",
            sysctl::CONNTRACK_ACCT
        );
        sysctls.set(sysctl::CONNTRACK_ACCT, "1")?;
    }
    let (nat, leftovers) = NatTable::create(&w.table, w.nat_ports)?;
    if !leftovers.is_empty() {
        log::warn!(
            "found {} NAT tunnels of a previous run: revoking them (table replaced, flows deleted)",
            leftovers.len()
        );
        let tunnels: Vec<(IpAddr, u16)> = leftovers.iter().map(|e| (e.client, e.port)).collect();
        if let Err(e) = conntrack::delete_many(&tunnels) {
            log::warn!("conntrack cleanup of the previous run: {e}");
        }
    }
    let core = Waypoint::new(
        waypoint_settings(cfg, id),
        id.cert.clone(),
        id.key.clone(),
        id.root,
        id.revocations.clone(),
        routes.clone(),
    );
    // From here on, Drop removes what was made if a later step fails.
    let donated_file = cfg.main.state_dir.join("donated");
    let month = year_month(wall_ms() / 1000);
    let now = Instant::now();
    let mut role = WaypointRole {
        core,
        sockets,
        nat: Some(nat),
        log: LogLimit::new(20),
        wg: None,
        vpnfw: None,
        wan: Vec::new(),
        caps: Caps::default(),
        month,
        next_quota_check: None,
        quota_read: now,
        next_persist: now + QUOTA_PERSIST,
        donated_file,
        donation_file: w.donation_file.clone(),
        evidence: open_evidence(cfg),
        batch: os::RecvBatch::new(DATAGRAMS_PER_TURN),
        filter_log: LogLimit::new(2),
    };
    role.seed_evidence();
    role.set_caps(w.donate_kbit, w.donate_monthly_bytes)?;
    role.set_wan(&routes.wan())?;
    if let Some(subnet) = &w.vpn_subnet {
        let secret = trust::wg::secret(&id.key);
        let dev = WgDevice::create(&w.vpn_interface, &secret, w.vpn_port)?;
        let vpn = waypoint_settings(cfg, id).vpn.expect("subnet set");
        let mut rt = Rtnl::open()?;
        let r = rt
            .add_addr(
                &w.vpn_interface,
                IpAddr::V4(vpn.own_address()),
                subnet.prefix,
            )
            .and_then(|()| match (vpn.own_address6(), &w.vpn_subnet6) {
                (Some(a), Some(s6)) => rt.add_addr(&w.vpn_interface, IpAddr::V6(a), s6.prefix),
                _ => Ok(()),
            })
            .and_then(|()| rt.set_up(&w.vpn_interface));
        if let Err(e) = r {
            dev.destroy();
            return Err(e.into());
        }
        log::info!(
            "waypoint: VPN tunnels on {} ({}, key {}, port {}), subnet {subnet}",
            w.vpn_interface,
            dev.backend(),
            trust::wg::to_base64(&vpn.wg_key),
            w.vpn_port
        );
        role.wg = Some(dev);
        let mut fw = VpnFirewall::create(
            &format!("{}_vpn", w.table),
            &w.vpn_interface,
            subnet,
            w.vpn_subnet6.as_ref(),
            &w.allow_destination,
        )?;
        // Before it is kept: Drop removes a table the role holds.
        let r = fw.set_wan(&role.wan);
        role.vpnfw = Some(fw);
        r?;
    }
    log::info!(
        "waypoint: NAT tunnels on ports {}-{}, signaling on {:?}",
        w.nat_ports.0,
        w.nat_ports.1,
        w.listen
    );
    Ok(role)
}

fn waypoint_settings(cfg: &Config, id: &Identity) -> waypoint::Settings {
    let w = &cfg.waypoint;
    waypoint::Settings {
        vpn: w.vpn_subnet.map(|subnet| waypoint::VpnSettings {
            subnet,
            subnet6: w.vpn_subnet6,
            port: w.vpn_port,
            wg_key: trust::wg::public(&trust::wg::secret(&id.key)),
        }),
        ports: w.grant_ports(),
        lease: Duration::from_secs(u64::from(w.lease_s)),
        max_per_member: w.max_tunnels_per_member,
        destinations: waypoint::policy::Rules {
            allow: w.allow_destination.clone(),
            deny_ports: w.deny_port.clone(),
        },
        max_skew: Duration::from_secs(u64::from(w.max_clock_skew_s)),
        limits: waypoint::Limits {
            evidence_share: (w.evidence_max_kb > 0)
                .then(|| evidence::member_share(u64::from(w.evidence_max_kb) * 1024)),
            ..waypoint::Limits::for_quota(w.max_tunnels_per_member)
        },
    }
}

fn start_client(
    cfg: &Config,
    id: &Identity,
    sysctls: &mut SysctlGuard,
    routes: &Routes,
) -> Result<ClientRole, DaemonError> {
    let c = &cfg.client;
    if std::path::Path::new(sysctl::MPTCP_PATH_MANAGER).exists() {
        sysctls.set(sysctl::MPTCP_PATH_MANAGER, "userspace")?;
    } else {
        sysctls.set(sysctl::MPTCP_PM_TYPE, "1")?;
    }
    let events = PmEvents::open()?;
    let pm = PmSocket::open()?;
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
    let (mut core, tunnels) = client_core(cfg, id)?;
    let scores_file = cfg.main.state_dir.join("scores");
    core.set_scoreboard(load_scores(&scores_file));
    let diag = if c.sample_interval_ms == 0 {
        None
    } else {
        match Diag::open() {
            Ok(d) => Some(d),
            Err(e) => {
                log::warn!("client: no subflow measurements, detours stay as created: {e}");
                None
            }
        }
    };
    log::info!(
        "client: userspace path manager on, {} waypoint(s), max {} detours",
        tunnels.len(),
        c.max_detours
    );
    let lan = if c.lan_proxy {
        Some(LanRole::start(cfg, &routes.wan())?)
    } else {
        None
    };
    Ok(ClientRole {
        core,
        events,
        pm,
        sock4,
        sock6,
        tunnels,
        log: LogLimit::new(20),
        lan,
        vpns: std::collections::HashMap::new(),
        vpn_prefix: c.vpn_interface_prefix.clone(),
        vpn_table: c.vpn_table,
        wg_secret: trust::wg::secret(&id.key),
        diag,
        sample_interval: Duration::from_millis(u64::from(c.sample_interval_ms.max(50))),
        next_sample: Instant::now(),
        scores_file,
        next_save: Instant::now(),
    })
}

fn client_settings(cfg: &Config) -> client::Settings {
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
            ..Default::default()
        },
    }
}

/// The client's protocol core for `cfg`'s peers, and each peer's tunnel kind.
fn client_core(cfg: &Config, id: &Identity) -> Result<(Client, Vec<TunnelKind>), DaemonError> {
    let mut peers = Vec::new();
    let mut tunnels = Vec::new();
    for p in &cfg.peers {
        peers.push(PeerSpec {
            name: p.name.clone(),
            address: p.address,
            vpn: p.tunnel == TunnelKind::Vpn,
        });
        tunnels.push(p.tunnel);
    }
    if peers.is_empty() && cfg.directory.url.is_none() {
        log::warn!("client: no usable peers configured; connections get no detours");
    }
    let mut prefix = [0u8; 8];
    random_bytes(&mut prefix).map_err(io_err("/dev/urandom"))?;
    let core = Client::new(
        client_settings(cfg),
        id.cert.clone(),
        id.key.clone(),
        id.root,
        id.revocations.clone(),
        peers,
        prefix,
    );
    Ok((core, tunnels))
}

fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

fn vpn_down(v: ClientVpn) {
    match Rtnl::open() {
        Ok(mut rt) => {
            for (src, table) in &v.rules {
                if let Err(e) = rt.del_rule(*src, *table, *table) {
                    log::warn!("removing rule from {src}: {e}");
                }
            }
        }
        Err(e) => log::warn!("rtnetlink: {e}"),
    }
    // The routes in its table go with the interface.
    v.dev.destroy();
}

impl ClientRole {
    /// Creates the tunnel interface for VPN peer `peer`: key, waypoint as
    /// its peer, address, a default route in the peer's own table and the
    /// rule `from <address> lookup <table>`, so only subflows bound to the
    /// tunnel address use it.
    fn vpn_up(
        &mut self,
        peer: usize,
        address: std::net::Ipv4Addr,
        address6: Option<Ipv6Addr>,
        wg_key: trust::wg::WgKey,
        endpoint: SocketAddr,
    ) -> Result<ClientVpn, DaemonError> {
        if let Some(old) = self.vpns.remove(&peer) {
            vpn_down(old);
        }
        let name = format!("{}{peer}", self.vpn_prefix);
        let table = self.vpn_table.saturating_add(peer as u32);
        let dev = WgDevice::create(&name, &self.wg_secret, 0)?;
        let mut v = ClientVpn {
            dev,
            rules: Vec::new(),
        };
        let r = (|| -> Result<(), SysError> {
            let mut allowed = vec![(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)];
            if address6.is_some() {
                allowed.push((IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0));
            }
            v.dev.set_peer(&WgPeer {
                key: wg_key,
                endpoint: Some(endpoint),
                allowed,
                keepalive: Some(25),
            })?;
            let mut rt = Rtnl::open()?;
            rt.add_addr(&name, IpAddr::V4(address), 32)?;
            if let Some(a6) = address6 {
                rt.add_addr(&name, IpAddr::V6(a6), 128)?;
            }
            rt.set_up(&name)?;
            rt.add_default_route(&name, true, table)?;
            rt.add_rule(IpAddr::V4(address), table, table)?;
            v.rules.push((IpAddr::V4(address), table));
            if let Some(a6) = address6 {
                rt.add_default_route(&name, false, table)?;
                rt.add_rule(IpAddr::V6(a6), table, table)?;
                v.rules.push((IpAddr::V6(a6), table));
            }
            Ok(())
        })();
        match r {
            Ok(()) => Ok(v),
            Err(e) => {
                vpn_down(v);
                Err(e.into())
            }
        }
    }

    /// Stops the LAN proxy and releases every lease.
    fn stop(mut self) {
        if let Some(l) = self.lan.take() {
            l.stop();
        }
        self.release_all();
        save_scores(&self.scores_file, self.core.scoreboard());
        for (_, v) in self.vpns.drain() {
            vpn_down(v);
        }
    }

    fn release_all(&mut self) {
        let (now, wall) = (Instant::now(), wall_ms());
        for a in self.core.shutdown(now, wall) {
            self.act(a);
        }
    }

    /// The LAN relay's work; its events reach the core before any path-manager
    /// event about the same connection can.
    fn step_lan(&mut self, now: Instant, wall: u64) {
        let Some(l) = self.lan.as_mut() else { return };
        for e in l.step(now) {
            match e {
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
                    for a in self.core.proxy_gate(now, wall, local, gate) {
                        self.act(a);
                    }
                }
                RelayEvent::Closed { local } => self.core.proxy_closed(local),
            }
        }
    }

    fn step(&mut self) {
        let (now, wall) = (Instant::now(), wall_ms());
        self.step_lan(now, wall);
        match self.events.read() {
            Ok(evs) => {
                for ev in evs {
                    log::debug!("pm event: {ev:?}");
                    for a in self.core.on_event(now, wall, &ev) {
                        self.act(a);
                    }
                    if let PmEvent::SubEstablished { token, subflow } = &ev {
                        if let Some((peer, setup)) = self.core.detour_setup(*token, subflow.remote)
                        {
                            log::info!(
                                "detour of {:#010x} via {peer} established {:.2} ms after the connection",
                                token.0,
                                setup.as_secs_f64() * 1000.0
                            );
                        }
                    }
                }
            }
            Err(e) => log::warn!("path manager events: {e}"),
        }
        let mut buf = [0u8; 2048];
        for i in 0..2 {
            loop {
                let sock = if i == 0 {
                    Some(&self.sock4)
                } else {
                    self.sock6.as_ref()
                };
                let Some(sock) = sock else { break };
                let (n, from) = match sock.recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log::warn!("client signaling socket: {e}");
                        break;
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
        for a in self.core.poll(now, wall) {
            self.act(a);
        }
        self.sample(now, wall);
    }

    /// When [`ClientRole::sample`] next has work: only while detours run.
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
            } => {
                let name = self.core.peer_name(peer).to_owned();
                match self.vpn_up(peer, address, address6, wg_key, endpoint) {
                    Ok(v) => {
                        log::info!(
                            "VPN tunnel to {name} up: {} ({}) address {address}",
                            v.dev.name(),
                            v.dev.backend()
                        );
                        self.vpns.insert(peer, v);
                    }
                    Err(e) => {
                        log::warn!("VPN tunnel to {name}: {e}");
                        self.core.vpn_failed(Instant::now(), peer, &e.to_string());
                    }
                }
            }
            Action::VpnDown { peer } => {
                if let Some(v) = self.vpns.remove(&peer) {
                    let name = v.dev.name().to_owned();
                    vpn_down(v);
                    log::info!("VPN tunnel {name} down");
                }
            }
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

fn element(l: &Lease) -> NatElement {
    NatElement {
        client: l.client,
        port: l.port,
        destination: l.destination,
        expires_in: None,
    }
}

impl WaypointRole {
    /// A NAT lease ended (`why`): deletes its conntrack flows and, with the
    /// evidence log on, records the bytes they carried.
    fn drop_flows(&self, l: &Lease, why: &str) {
        let bytes = match conntrack::delete_flows_counted(l.client, l.port) {
            Ok((0, b)) => b,
            Ok((n, b)) => {
                log::info!("deleted {n} conntrack flow(s) of {}:{}", l.client, l.port);
                b
            }
            Err(e) => {
                log::warn!("conntrack cleanup for {}:{}: {e}", l.client, l.port);
                0
            }
        };
        self.keep_evidence(
            wall_ms(),
            SocketAddr::new(l.client, 0),
            (l.member, &l.member_name),
            format!("end nat {} -> {}: {why}", l.port, l.destination),
            Some(bytes),
            &[],
        );
    }
}

impl Drop for WaypointRole {
    /// Removes the NAT table and the conntrack flows of every live tunnel, also
    /// when the daemon fails half-way through starting.
    fn drop(&mut self) {
        let tunnels: Vec<(IpAddr, u16)> = self.core.leases().map(|l| (l.client, l.port)).collect();
        if self.caps.month_bytes > 0 {
            if let Some(Ok(used)) = self.nat.as_ref().map(|n| n.quota_used()) {
                write_donated(&self.donated_file, self.month, used);
                write_donated(&self.donation_file, self.month, used);
            }
        }
        if let Some(nat) = self.nat.take() {
            if let Err(e) = nat.destroy() {
                log::error!("removing the NAT table: {e}");
            }
        }
        if let Some(fw) = self.vpnfw.take() {
            if let Err(e) = fw.destroy() {
                log::error!("removing the VPN firewall table: {e}");
            }
        }
        let live: Vec<waypoint::vpn::VpnLease> = self.core.vpn_leases().cloned().collect();
        for l in &live {
            self.end_vpn(l, "waypoint stopped");
        }
        if let Some(dev) = self.wg.take() {
            let n = live.len();
            dev.destroy();
            log::info!("VPN interface removed ({n} peer(s))");
        }
        // After the table: no new flow can start through a tunnel meanwhile.
        match conntrack::delete_many(&tunnels) {
            Ok(n) => log::info!("revoked {} tunnel(s), {n} conntrack flow(s)", tunnels.len()),
            Err(e) => log::warn!("conntrack cleanup: {e}"),
        }
    }
}

impl WaypointRole {
    /// Removes the NAT elements and flows of leases ended by a revocation.
    fn end_leases(&mut self, ended: &[Lease]) {
        for l in ended {
            self.end_lease(l, "revoked");
        }
    }

    /// Removes the NAT element and the flows of an ended lease.
    fn end_lease(&mut self, l: &Lease, why: &str) {
        log::info!(
            "{why}: {} {}:{} -> {}",
            l.member_name,
            l.client,
            l.port,
            l.destination
        );
        if let Some(nat) = &mut self.nat {
            if let Err(e) = nat.remove(l.client, l.port) {
                log::warn!("removing the NAT element of {}:{}: {e}", l.client, l.port);
            }
        }
        self.drop_flows(l, why);
    }

    /// Lets detours leave by `ifnames` only (the NAT table's and the VPN
    /// firewall's `wan` sets); none: every detour is dropped.
    fn set_wan(&mut self, ifnames: &[String]) -> Result<(), SysError> {
        if let Some(nat) = self.nat.as_mut() {
            nat.set_wan(ifnames)?;
        }
        if let Some(fw) = self.vpnfw.as_mut() {
            fw.set_wan(ifnames)?;
        }
        if ifnames != self.wan.as_slice() {
            if ifnames.is_empty() {
                log::warn!("waypoint: no default route: detours are dropped until there is one");
            } else {
                log::info!("waypoint: detours leave by {}", ifnames.join(", "));
            }
        }
        self.wan = ifnames.to_vec();
        Ok(())
    }

    /// Installs the donation caps; the month's count carries over from the
    /// running quota or, at start, from the state file.
    fn set_caps(&mut self, kbit: u32, month_bytes: u64) -> Result<(), SysError> {
        let used = match self.next_quota_check {
            Some(_) => self.nat.as_ref().map_or(Ok(0), |n| n.quota_used())?,
            // At start: the later of the two counts (the RAM one is gone
            // after a reboot, the flash one is up to an hour old).
            None => read_donated(&self.donated_file, self.month)
                .max(read_donated(&self.donation_file, self.month)),
        };
        let caps = Caps {
            kbit,
            month_bytes,
            used,
        };
        if let Some(nat) = self.nat.as_mut() {
            nat.set_caps(&caps)?;
        }
        if caps != self.caps && (kbit > 0 || month_bytes > 0) {
            log::info!(
                "waypoint: donation caps {} kbit/s, {} bytes a month ({used} used)",
                kbit,
                month_bytes
            );
        }
        self.caps = caps;
        self.next_quota_check = (month_bytes > 0).then(|| Instant::now() + QUOTA_CHECK);
        self.update_used_up();
        Ok(())
    }

    /// Re-reads the quota's counter; stops or resumes granting.
    fn read_quota(&mut self, now: Instant) -> Option<u64> {
        self.quota_read = now;
        match self.nat.as_ref().map(|n| n.quota_used()) {
            Some(Ok(used)) => {
                self.caps.used = used;
                self.update_used_up();
                Some(used)
            }
            Some(Err(e)) => {
                log::warn!("reading the donation quota: {e}");
                None
            }
            None => None,
        }
    }

    /// Refuses new detours while the month's donation is used up (the
    /// kernel's quota already drops their traffic), and says so once.
    fn update_used_up(&mut self) {
        let Caps {
            month_bytes, used, ..
        } = self.caps;
        let why = (month_bytes > 0 && used >= month_bytes).then(|| {
            format!(
                "{used} of {month_bytes} bytes donated in {:04}-{:02}",
                self.month.0, self.month.1
            )
        });
        match (self.core.used_up().is_some(), &why) {
            (false, Some(w)) => log::warn!(
                "waypoint: this month's donation is used up ({w}): new detours are refused until the month ends or the cap is raised"
            ),
            (true, None) => log::info!("waypoint: donating again ({used} of {month_bytes} bytes this month)"),
            _ => {}
        }
        self.core.set_used_up(why);
    }

    /// Saves the month's count; at a new month, starts the quota afresh.
    fn check_quota(&mut self, now: Instant) {
        if self.next_quota_check.is_none_or(|t| t > now) {
            return;
        }
        self.next_quota_check = Some(now + QUOTA_CHECK);
        let Some(used) = self.read_quota(now) else {
            return;
        };
        let month = year_month(wall_ms() / 1000);
        if month != self.month {
            log::info!("new month: donation quota restarts ({used} bytes last month)");
            self.month = month;
            let caps = Caps {
                used: 0,
                ..self.caps
            };
            if let Some(nat) = self.nat.as_mut() {
                if let Err(e) = nat.set_caps(&caps) {
                    log::warn!("restarting the donation quota: {e}");
                }
            }
            self.caps = caps;
            self.update_used_up();
            write_donated(&self.donated_file, month, 0);
            write_donated(&self.donation_file, month, 0);
        } else {
            write_donated(&self.donated_file, month, used);
            if now >= self.next_persist {
                self.next_persist = now + QUOTA_PERSIST;
                write_donated(&self.donation_file, month, used);
            }
        }
    }

    fn step(&mut self) {
        // One batch per socket per turn: under a flood the loop goes back to
        // poll, and the other sockets, timers and the LAN proxy get theirs.
        let mut batch = std::mem::take(&mut self.batch);
        for i in 0..self.sockets.len() {
            let n = match batch.recv(&self.sockets[i]) {
                Ok(n) => n,
                Err(e) => {
                    log::warn!("waypoint socket: {e}");
                    0
                }
            };
            for j in 0..n {
                let Some((dgram, Some(from))) = batch.get(j) else {
                    continue;
                };
                let (now, wall) = (Instant::now(), wall_ms());
                if self.caps.month_bytes > 0 && now.duration_since(self.quota_read) >= QUOTA_FRESH {
                    self.read_quota(now);
                }
                let d = self.core.handle(now, wall, from, dgram);
                self.execute(i, now, wall, from, d, dgram);
            }
        }
        self.batch = batch;
        self.filter_sources(Instant::now());
        let now = Instant::now();
        for l in self.core.expire(now) {
            self.end_lease(&l, "lease expired");
        }
        self.expire_vpn(now);
        self.check_quota(now);
    }

    /// Has the kernel drop the datagrams of sources over their rate (a
    /// socket filter), when the list changed.
    fn filter_sources(&mut self, now: Instant) {
        let Some(list) = self.core.take_filter(now) else {
            return;
        };
        for s in &self.sockets {
            if let Err(e) = os::filter_sources(s, &list) {
                log::warn!("waypoint: socket filter: {e}");
            }
        }
        if self.filter_log.allow(now) {
            match list.len() {
                0 => log::info!("waypoint: no source dropped in the kernel any more"),
                n => log::warn!(
                    "waypoint: {n} source(s) over their rate dropped in the kernel for a while: {list:?}"
                ),
            }
        }
    }

    /// Counts the evidence already kept against the members' shares.
    fn seed_evidence(&mut self) {
        if let Some(log) = &self.evidence {
            let (records, _) = log.records();
            self.core.seed_evidence(&records);
        }
    }

    fn expire_vpn(&mut self, now: Instant) {
        for l in self.core.expire_vpn(now) {
            log::info!("VPN lease ended: {} {}", l.member_name, l.address);
            self.end_vpn(&l, "ended");
        }
    }

    /// Removes an ended VPN lease's peer and keeps its byte count (the
    /// peer's WireGuard counters, both ways) as evidence.
    fn end_vpn(&mut self, l: &waypoint::vpn::VpnLease, why: &str) {
        let mut bytes = None;
        if let Some(dev) = self.wg.as_mut() {
            match dev.peer_bytes(&l.wg_key) {
                Ok(b) => bytes = b.map(|(rx, tx)| rx.saturating_add(tx)),
                Err(e) => log::warn!("VPN byte count of {}: {e}", l.member_name),
            }
            if let Err(e) = dev.remove_peer(&l.wg_key) {
                log::warn!("removing VPN peer of {}: {e}", l.member_name);
            }
        }
        self.keep_evidence(
            wall_ms(),
            SocketAddr::new(l.client, 0),
            (l.member, &l.member_name),
            format!("end vpn {}: {why}", l.address),
            bytes,
            &[],
        );
    }

    fn execute_vpn(&mut self, i: usize, wall: u64, from: SocketAddr, d: Decision, request: &[u8]) {
        match d {
            Decision::VpnInstall {
                lease,
                replaced,
                to,
                bytes,
                nonce,
            } => {
                let Some(dev) = self.wg.as_mut() else { return };
                if let Some(old) = replaced {
                    let _ = dev.remove_peer(&old);
                }
                let mut allowed = vec![(IpAddr::V4(lease.address), 32)];
                if let Some(a6) = lease.address6 {
                    allowed.push((IpAddr::V6(a6), 128));
                }
                let peer = WgPeer {
                    key: lease.wg_key,
                    endpoint: None,
                    allowed,
                    keepalive: None,
                };
                match dev.set_peer(&peer) {
                    Ok(()) => {
                        log::info!(
                            "granted VPN to {} ({}) from {}: {} key {}",
                            lease.member_name,
                            lease.member,
                            lease.client,
                            lease.address,
                            trust::wg::to_base64(&lease.wg_key)
                        );
                        self.keep_evidence(
                            wall,
                            from,
                            (lease.member, &lease.member_name),
                            format!("vpn {}", lease.address),
                            None,
                            request,
                        );
                        self.send(i, to, &bytes);
                    }
                    Err(e) => {
                        log::error!("adding VPN peer: {e}");
                        let r = self.core.abort_vpn(
                            wall,
                            &lease,
                            to,
                            nonce,
                            bytes.len(),
                            "internal error",
                        );
                        if let Decision::Reply { to, bytes, .. } = r {
                            self.send(i, to, &bytes);
                        }
                    }
                }
            }
            Decision::VpnRefresh { lease, to, bytes } => {
                log::debug!("renewed VPN of {}", lease.member_name);
                self.send(i, to, &bytes);
            }
            Decision::VpnRemove { lease, to, bytes } => {
                self.end_vpn(&lease, "released");
                log::info!("released VPN of {} ({})", lease.member_name, lease.address);
                self.send(i, to, &bytes);
            }
            _ => {}
        }
    }

    fn send(&self, i: usize, to: SocketAddr, bytes: &[u8]) {
        if let Err(e) = self.sockets[i].send_to(bytes, to) {
            log::debug!("waypoint: send to {to}: {e}");
        }
    }

    /// Keeps a granted request as evidence (see `waypoint::evidence`).
    #[allow(clippy::too_many_arguments)]
    fn keep_evidence(
        &self,
        wall: u64,
        from: SocketAddr,
        member: (MemberId, &str),
        grant: String,
        bytes: Option<u64>,
        request: &[u8],
    ) {
        if let Some(log) = &self.evidence {
            let r = evidence::Record {
                at_ms: wall,
                from,
                member_id: member.0.to_string(),
                member: member.1.to_owned(),
                grant,
                bytes,
                // Without the zero padding (the signature does not cover it).
                request: crate::proto::unpadded(request).unwrap_or(request).to_vec(),
            };
            if let Err(e) = log.append(&r) {
                log::warn!("evidence log: {e}");
            }
        }
    }

    fn execute(
        &mut self,
        i: usize,
        now: Instant,
        wall: u64,
        from: SocketAddr,
        d: Decision,
        request: &[u8],
    ) {
        let d = match d {
            Decision::VpnInstall { .. }
            | Decision::VpnRefresh { .. }
            | Decision::VpnRemove { .. } => {
                return self.execute_vpn(i, wall, from, d, request);
            }
            d => d,
        };
        let Some(nat) = self.nat.as_mut() else { return };
        match d {
            Decision::VpnInstall { .. }
            | Decision::VpnRefresh { .. }
            | Decision::VpnRemove { .. } => {}
            Decision::Drop { source } => {
                if self.log.allow(now) {
                    log::warn!("waypoint: {source} over its rate: datagram dropped unread");
                }
            }
            Decision::Ignore { reason } => {
                if self.log.allow(now) {
                    log::warn!("waypoint: ignored datagram from {from}: {reason}");
                }
            }
            Decision::Reply { to, bytes, refused } => {
                match refused {
                    Some(why) => {
                        if self.log.allow(now) {
                            log::warn!("waypoint: refused request from {from}: {why}");
                        }
                    }
                    None => log::debug!("waypoint: repeated request from {from}, same reply"),
                }
                self.send(i, to, &bytes);
            }
            Decision::Install {
                lease,
                timeout,
                to,
                bytes,
                nonce,
            } => match nat.add(&element(&lease), timeout) {
                Ok(()) => {
                    log::info!(
                        "granted {} ({}) {}:{} -> {} for {}s",
                        lease.member_name,
                        lease.member,
                        lease.client,
                        lease.port,
                        lease.destination,
                        timeout.as_secs()
                    );
                    self.keep_evidence(
                        wall,
                        from,
                        (lease.member, &lease.member_name),
                        format!("nat {} -> {}", lease.port, lease.destination),
                        None,
                        request,
                    );
                    self.send(i, to, &bytes);
                }
                Err(e) => {
                    log::error!("installing NAT element: {e}");
                    let r = self.core.abort(
                        now,
                        wall,
                        &lease,
                        to,
                        nonce,
                        bytes.len(),
                        "internal error",
                    );
                    if let Decision::Reply { to, bytes, .. } = r {
                        self.send(i, to, &bytes);
                    }
                }
            },
            Decision::Refresh {
                lease,
                timeout,
                to,
                bytes,
            } => match nat.refresh(&element(&lease), timeout) {
                Ok(()) => {
                    log::debug!(
                        "renewed {}:{} for {}",
                        lease.client,
                        lease.port,
                        lease.member_name
                    );
                    self.send(i, to, &bytes);
                }
                Err(e) => log::error!(
                    "refreshing NAT element {}:{}: {e}",
                    lease.client,
                    lease.port
                ),
            },
            Decision::Remove { lease, to, bytes } => {
                if let Err(e) = nat.remove(lease.client, lease.port) {
                    log::warn!("removing NAT element: {e}");
                }
                self.drop_flows(&lease, "released");
                log::info!(
                    "released {}:{} of {}",
                    lease.client,
                    lease.port,
                    lease.member_name
                );
                self.send(i, to, &bytes);
            }
        }
    }
}

fn client_status(c: &ClientRole, now: Instant) -> control::ClientStatus {
    let board = c.core.scoreboard();
    let connections = c
        .core
        .conns()
        .map(|conn| {
            let mut subflows = vec![control::SubflowStatus {
                path: "direct".into(),
                waypoint: None,
                tunnel: None,
                local: Some(conn.local.to_string()),
                remote: Some(conn.remote.to_string()),
                state: if conn.established_at.is_some() {
                    "established"
                } else {
                    "connecting"
                }
                .into(),
                detail: None,
                setup_ms: None,
                role: None,
                ..meter_status(&conn.direct)
            }];
            for d in &conn.detours {
                let detail = match &d.state {
                    client::DetourState::Failed(why) => Some(why.clone()),
                    _ => None,
                };
                subflows.push(control::SubflowStatus {
                    path: "detour".into(),
                    waypoint: Some(c.core.peer_name(d.peer).to_owned()),
                    tunnel: Some(tunnel_name(c.tunnels[d.peer]).into()),
                    local: d
                        .local_port
                        .map(|p| SocketAddr::new(d.local_ip(conn.local.ip()), p).to_string()),
                    remote: c.core.detour_remote(d).map(|r| r.to_string()),
                    state: d.state.name().into(),
                    detail: detail.or_else(|| {
                        d.judge
                            .as_ref()
                            .filter(|j| j.role == client::strategy::Role::Backup)
                            .and_then(|j| j.why.clone())
                    }),
                    setup_ms: d.setup.map(|s| s.as_millis() as u64),
                    role: d
                        .judge
                        .as_ref()
                        .filter(|_| d.state == client::DetourState::Established)
                        .map(|j| j.role.name().to_owned()),
                    ..d.judge
                        .as_ref()
                        .map(|j| meter_status(&j.meter))
                        .unwrap_or_else(|| meter_status(&Default::default()))
                });
            }
            control::ConnectionStatus {
                token: format!("{:#010x}", conn.token.0),
                local: conn.local.to_string(),
                remote: conn.remote.to_string(),
                state: if conn.established_at.is_some() {
                    "established"
                } else {
                    "connecting"
                }
                .into(),
                lan_client: conn.lan.map(|l| l.to_string()),
                detour_gate: conn.gate.describe().to_owned(),
                subflows,
            }
        })
        .collect();
    let peers = c
        .core
        .peers(now)
        .into_iter()
        .enumerate()
        .map(|(i, p)| control::PeerStatus {
            address: p.address.to_string(),
            tunnel: tunnel_name(c.tunnels[i]).into(),
            up: p.up,
            rtt_ms: p.rtt.map(|r| r.as_secs_f64() * 1000.0),
            vpn_state: c.core.vpn_state(i).map(|v| {
                match v.state {
                    client::VpnState::Idle => "idle",
                    client::VpnState::Requesting => "requesting",
                    client::VpnState::Up { .. } => "up",
                }
                .to_owned()
            }),
            vpn_address: c.core.vpn_state(i).and_then(|v| match v.state {
                client::VpnState::Up { address, .. } => Some(address.to_string()),
                _ => None,
            }),
            vpn_error: c.core.vpn_state(i).and_then(|v| v.last_error.clone()),
            score: board.score(&p.name, "*").and_then(|s| s.mean()),
            detours_scored: board.score(&p.name, "*").map_or(0, |s| s.count),
            name: p.name,
        })
        .collect();
    let lan_proxy = c.lan.as_ref().map(LanRole::status);
    let scores = board
        .entries()
        .filter(|(_, p, _)| *p != "*")
        .filter_map(|(w, p, s)| {
            Some(control::ScoreStatus {
                waypoint: w.to_owned(),
                prefix: p.to_owned(),
                mean: s.mean()?,
                weight: s.weight,
                count: s.count,
            })
        })
        .collect();
    control::ClientStatus {
        connections,
        peers,
        lan_proxy,
        scores,
    }
}

/// A subflow's measurements as status shows them (`null` before any).
fn meter_status(m: &client::strategy::Meter) -> control::SubflowStatus {
    let measured = m.rtt.is_some();
    control::SubflowStatus {
        path: String::new(),
        waypoint: None,
        tunnel: None,
        local: None,
        remote: None,
        state: String::new(),
        detail: None,
        setup_ms: None,
        role: None,
        rate_kbit: measured.then_some(m.rate_bps / 1000.0),
        rtt_ms: m.rtt.map(|r| r.as_secs_f64() * 1000.0),
        loss_pct: measured.then_some(m.loss * 100.0),
        bytes: measured.then_some(m.bytes),
    }
}

fn tunnel_name(t: TunnelKind) -> &'static str {
    match t {
        TunnelKind::Nat => "nat",
        TunnelKind::Vpn => "vpn",
    }
}

fn waypoint_status(w: &WaypointRole, now: Instant) -> control::WaypointStatus {
    let grants = w
        .core
        .leases()
        .map(|l| control::GrantStatus {
            member: l.member_name.clone(),
            member_id: l.member.to_string(),
            client: l.client.to_string(),
            port: l.port,
            destination: l.destination.to_string(),
            age_s: now.saturating_duration_since(l.granted_at).as_secs(),
            expires_in_s: l.expires_at.saturating_duration_since(now).as_secs(),
        })
        .collect();
    let st = w.core.stats();
    control::WaypointStatus {
        listen: w
            .sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .map(|a| a.to_string())
            .collect(),
        grants,
        datagrams: st.datagrams,
        granted: st.granted,
        refused: st.refused.clone(),
        donate_kbit: w.caps.kbit,
        donate_monthly_bytes: w.caps.month_bytes,
        donated_month_bytes: w.caps.used,
        refusing: w.core.used_up().map(str::to_owned),
        vpn_peers: w
            .core
            .vpn_leases()
            .map(|l| control::VpnPeerStatus {
                member: l.member_name.clone(),
                member_id: l.member.to_string(),
                address: l.address.to_string(),
                client: l.client.to_string(),
                wg_key: trust::wg::to_base64(&l.wg_key),
                age_s: now.saturating_duration_since(l.granted_at).as_secs(),
                expires_in_s: l.expires_at.saturating_duration_since(now).as_secs(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn donation_count_files() {
        assert_eq!(
            parse_donated("2026-12 4000123\n"),
            Ok(((2026, 12), 4_000_123))
        );
        assert_eq!(year_month(1_798_761_599), (2026, 12));
        assert_eq!(year_month(1_798_761_600), (2027, 1));
        for (text, want) in [
            ("", "'' is not 'YYYY-MM BYTES'"),
            ("2026-12", "is not 'YYYY-MM BYTES'"),
            ("2026-12 1 2", "is not 'YYYY-MM BYTES'"),
            ("2026-13 1", "'2026-13' is not a month"),
            ("december 1", "'december' is not a month"),
            ("2026-12 -5", "'-5' is not a byte count"),
            ("2026-12 lots", "'lots' is not a byte count"),
        ] {
            let e = parse_donated(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        // Read back as written; another month counts 0.
        let dir = std::env::temp_dir().join(format!("dcol-donated-{}", std::process::id()));
        let path = dir.join("donated");
        write_donated(&path, (2026, 12), 77);
        assert_eq!(read_donated(&path, (2026, 12)), 77);
        assert_eq!(read_donated(&path, (2027, 1)), 0);
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(read_donated(&path, (2026, 12)), 0);
        assert_eq!(read_donated(&dir.join("none"), (2026, 12)), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
