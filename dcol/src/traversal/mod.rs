//! NAT traversal for the waypoint role: learn this router's public address
//! and mapping behaviour with STUN, and map its ports on a home gateway with
//! UPnP IGD (or, where no UPnP gateway answers, NAT-PMP at the default
//! gateway), renewing the leases and deleting the mappings on exit.
//!
//! [`stun`], [`upnp`], [`natpmp`] and [`pcp`] are the pure wire formats; this
//! module is the background thread that talks to the servers (std sockets,
//! [`crate::http`] for the description, `igd-next` for the SOAP calls;
//! blocking, bounded by timeouts, never on the daemon's poll loop, which
//! learns of results through [`Traversal::fd`]) and [`decide`], the pure rule
//! for what this router can publish as its address.
//!
//! One pass: discover the gateway (SSDP, or `option upnp_url`; else NAT-PMP),
//! ask its external address, map every port (external = internal, lease
//! `upnp_lease_s`; a gateway that only takes permanent leases gets lease 0),
//! then ask each STUN server from one socket. Passes repeat at half the
//! lease (a re-add renews), and after a failure after 60 s growing to 10 min.
//! A gateway that refuses a port or disappears is logged; the waypoint keeps
//! serving what it can (its LAN, other mapped ports).
//!
//! Other LAN hosts are not trusted to name the gateway: an SSDP answer is
//! taken only from the IPv4 default gateway (lowest metric in the routing
//! table) with its description on that address, the description is fetched
//! without following redirects, and the control URL must be on the host the
//! description came from. The SOAP calls go to that address only:
//! `igd-next`'s [`igd_next::Gateway`] is built from what was checked here
//! ([`soap_gateway`]), and its HTTP client follows no redirects.

pub mod natpmp;
pub mod pcp;
mod record;
pub mod stun;
pub mod upnp;

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{self, Url};
pub use stun::Mapping;
pub use upnp::Protocol;

/// How long SSDP answers are awaited.
const SSDP_WAIT: Duration = Duration::from_secs(2);
/// How long fetching the gateway's description may take (`igd-next`'s SOAP
/// calls have their own limit, 10 s each).
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(5);
/// STUN retransmissions (RFC 8489's 500 ms doubling), then give up.
const STUN_TRIES: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_millis(1000),
    Duration::from_millis(2000),
];
/// Retry after a failed pass: first, and at most.
const RETRY: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(600));
/// The STUN check is repeated this often even without leases to renew (the
/// public address of a home line changes).
const RECHECK: Duration = Duration::from_secs(1800);
/// Mapping description on the gateway.
const DESCRIPTION: &str = "dcol waypoint";

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// STUN servers, `host:port`.
    pub stun: Vec<String>,
    /// Map ports with UPnP IGD.
    pub upnp: bool,
    /// The gateway's description URL (skips SSDP discovery).
    pub upnp_url: Option<Url>,
    /// Lease of each mapping, s (0: permanent).
    pub lease_s: u32,
    /// The ports to map (external = internal).
    pub ports: Vec<(Protocol, u16)>,
    /// The signaling port: the one published with the public address.
    pub signaling_port: u16,
    /// Where the mappings not deleted yet are recorded (see [`delete_leftovers`]).
    pub record: Option<PathBuf>,
    /// Ports to open in the gateway's IPv6 firewall with PCP (the waypoint
    /// listens on IPv6); only with `upnp` on.
    pub pinholes: Vec<(Protocol, u16)>,
}

/// The result of one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The address to publish (`None`: not reachable from outside, see `note`).
    pub public: Option<SocketAddr>,
    /// Why `public` is what it is.
    pub note: String,
    /// The gateway's control URL.
    pub gateway: Option<String>,
    /// The gateway's external address.
    pub external_ip: Option<IpAddr>,
    /// Ports mapped on the gateway.
    pub mapped: Vec<(Protocol, u16)>,
    /// Problems of this pass (a port refused, a server silent...).
    pub errors: Vec<String>,
    /// The addresses STUN servers saw.
    pub stun_seen: Vec<SocketAddr>,
    /// The mapping behaviour found.
    pub mapping: Option<Mapping>,
    /// Ports open in the gateway's IPv6 firewall (PCP pinholes).
    pub pinholes: Vec<(Protocol, u16)>,
    /// This router's global IPv6 signaling address, when its pinhole is open.
    pub public6: Option<SocketAddr>,
}

/// What this router can publish, from what a pass found (pure).
pub fn decide(
    signaling_port: u16,
    local_ip: Option<IpAddr>,
    stun_port: u16,
    stun_seen: &[SocketAddr],
    external_ip: Option<IpAddr>,
    signaling_mapped: bool,
) -> (Option<SocketAddr>, Option<Mapping>, String) {
    let mapping = stun::classify(
        stun_port,
        &local_ip.into_iter().collect::<Vec<_>>(),
        stun_seen,
    );
    let stun_ip = stun_seen.first().map(|s| s.ip());
    if mapping == Some(Mapping::None) {
        let ip = stun_ip.expect("classify saw an address");
        return (
            Some(SocketAddr::new(ip, signaling_port)),
            mapping,
            "no NAT: the STUN servers saw this router's own address".into(),
        );
    }
    if signaling_mapped {
        if let Some(ext) = external_ip {
            return match stun_ip {
                Some(s) if s != ext => (
                    None,
                    mapping,
                    format!(
                        "the gateway's external address {ext} is not the public address {s} \
                         (another NAT beyond it, e.g. the ISP's): not reachable from outside"
                    ),
                ),
                None if is_private(ext) => (
                    None,
                    mapping,
                    format!(
                        "the gateway's external address {ext} is private and no STUN server \
                         answered: not reachable from outside"
                    ),
                ),
                _ => (
                    Some(SocketAddr::new(ext, signaling_port)),
                    mapping,
                    "ports mapped on the gateway".into(),
                ),
            };
        }
    }
    if let Some(own) = local_ip.filter(|ip| stun_seen.is_empty() && !is_private(*ip)) {
        return (
            Some(SocketAddr::new(own, signaling_port)),
            mapping,
            "this router's own address is public (no STUN answer to confirm it)".into(),
        );
    }
    let note = match (stun_ip, mapping) {
        (Some(ip), _) => format!(
            "behind NAT (public address {ip}) without a UPnP mapping: forward the ports on the \
             gateway and set 'list advertise'"
        ),
        _ => "public address unknown (no STUN answer, no UPnP gateway)".into(),
    };
    (None, mapping, note)
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.octets()[0] == 100 && (a.octets()[1] & 0xC0) == 64
        }
        IpAddr::V6(a) => a.is_loopback() || (a.segments()[0] & 0xfe00) == 0xfc00,
    }
}

enum Command {
    Stop(Sender<()>),
}

/// The traversal thread, seen from the daemon.
#[derive(Debug)]
pub struct Traversal {
    settings: Settings,
    /// Set by the thread once it found a gateway (it may have mappings).
    found: Arc<AtomicBool>,
    tx: Sender<Command>,
    rx: Receiver<Outcome>,
    wake: UnixStream,
}

impl Traversal {
    /// Starts the thread; its first pass begins at once.
    pub fn start(settings: Settings) -> io::Result<Traversal> {
        let (wake, wake_tx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        let (tx, cmd_rx) = mpsc::channel();
        let (out, rx) = mpsc::channel();
        let s = settings.clone();
        let found = Arc::new(AtomicBool::new(false));
        let found_w = Arc::clone(&found);
        thread::Builder::new()
            .name("dcol-traversal".into())
            .spawn(move || {
                Worker {
                    settings: s,
                    found: found_w,
                    gateway: None,
                    mapped: Vec::new(),
                    recorded: record::Record::default(),
                    pcp: None,
                    pinholed: Vec::new(),
                    stop: None,
                    out,
                    wake: wake_tx,
                }
                .run(&cmd_rx)
            })?;
        Ok(Traversal {
            settings,
            found,
            tx,
            rx,
            wake,
        })
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Readable when outcomes are waiting.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The outcomes waiting (never blocks).
    pub fn outcomes(&mut self) -> Vec<Outcome> {
        let mut b = [0u8; 64];
        while matches!((&self.wake).read(&mut b), Ok(n) if n > 0) {}
        self.rx.try_iter().collect()
    }

    /// Deletes the mappings on the gateway, waiting at most `wait` (a pass
    /// in progress finishes first). Without a gateway found there is
    /// nothing to delete and nothing to wait for (a search in progress may
    /// take seconds).
    pub fn stop(self, wait: Duration) -> bool {
        let (done_tx, done) = mpsc::channel();
        if self.tx.send(Command::Stop(done_tx)).is_err() || !self.found.load(Ordering::SeqCst) {
            return true;
        }
        done.recv_timeout(wait).is_ok()
    }
}

struct Worker {
    settings: Settings,
    found: Arc<AtomicBool>,
    /// The gateway, once found.
    gateway: Option<Gateway>,
    /// Ports mapped and not deleted.
    mapped: Vec<(Protocol, u16)>,
    /// What the record on disk lists.
    recorded: record::Record,
    /// The PCP server for IPv6 pinholes, once found.
    pcp: Option<PcpServer>,
    /// Pinholes open and not deleted.
    pinholed: Vec<(Protocol, u16)>,
    /// The daemon asked to stop (answered once the mappings are deleted).
    stop: Option<Sender<()>>,
    out: Sender<Outcome>,
    wake: UnixStream,
}

impl Worker {
    fn run(&mut self, rx: &Receiver<Command>) {
        if let Some(path) = &self.settings.record {
            delete_leftovers(path);
        }
        let mut retry = RETRY.0;
        loop {
            let started = Instant::now();
            let o = self.pass(rx);
            if let Some(done) = self.stop.take() {
                self.unmap();
                let _ = done.send(());
                return;
            }
            let failed = o.public.is_none() && !o.errors.is_empty();
            if self.out.send(o).is_ok() {
                let _ = (&self.wake).write(&[1]);
            }
            // A renewal is due half a lease after the pass that made the
            // last one began: a slow gateway (miniupnpd takes seconds for
            // tens of mappings) must not push it past the lease's end.
            let renewal = |half: u64| {
                Duration::from_secs(half)
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_secs(1))
            };
            let wait = if failed {
                let w = retry;
                retry = (retry * 2).min(RETRY.1);
                w
            } else {
                retry = RETRY.0;
                match (self.mapped.is_empty(), self.settings.lease_s) {
                    (false, l) if l > 0 => renewal(u64::from(l / 2).max(5)),
                    _ => RECHECK,
                }
            };
            // Pinholes end with their lifetime: renewed at half of it even
            // while IPv4 mapping fails.
            let wait = if self.pinholed.is_empty() {
                wait
            } else {
                wait.min(renewal(u64::from(pcp_lifetime(self.settings.lease_s) / 2)))
            };
            match rx.recv_timeout(wait) {
                Ok(Command::Stop(done)) => {
                    self.unmap();
                    let _ = done.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.unmap();
                    return;
                }
            }
        }
    }

    /// True (and the pass ends) once the daemon asked to stop.
    fn stopping(&mut self, rx: &Receiver<Command>) -> bool {
        if self.stop.is_none() {
            match rx.try_recv() {
                Ok(Command::Stop(done)) => self.stop = Some(done),
                Err(mpsc::TryRecvError::Disconnected) => self.stop = Some(mpsc::channel().0),
                Err(mpsc::TryRecvError::Empty) => {}
            }
        }
        self.stop.is_some()
    }

    fn pass(&mut self, rx: &Receiver<Command>) -> Outcome {
        let mut o = Outcome::default();
        if self.settings.upnp {
            if let Err(e) = self.map_ports(&mut o, rx) {
                o.errors.push(e);
                self.gateway = None;
            }
            if !self.settings.pinholes.is_empty() {
                if let Err(e) = self.open_pinholes(&mut o, rx) {
                    o.errors.push(e);
                    self.pcp = None;
                }
            }
        }
        let mut stun_port = 0;
        let mut local_ip = None;
        if !self.settings.stun.is_empty() {
            match UdpSocket::bind("0.0.0.0:0") {
                Ok(sock) => {
                    stun_port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
                    for server in &self.settings.stun.clone() {
                        if self.stopping(rx) {
                            break;
                        }
                        match ask_stun(&sock, server) {
                            Ok((seen, local)) => {
                                o.stun_seen.push(seen);
                                local_ip = local_ip.or(local);
                            }
                            Err(e) => o.errors.push(format!("STUN {server}: {e}")),
                        }
                    }
                }
                Err(e) => o.errors.push(format!("STUN socket: {e}")),
            }
        }
        if o.stun_seen.is_empty() {
            // No STUN answer: this router's address on its default route
            // (a route lookup; connect() on UDP sends nothing).
            local_ip = local_ip_towards(&Url {
                host: "203.0.113.1".into(),
                port: 9,
                path: "/".into(),
            })
            .ok()
            .map(IpAddr::V4);
        }
        let signaling = (Protocol::Udp, self.settings.signaling_port);
        let (public, mapping, note) = decide(
            self.settings.signaling_port,
            local_ip,
            stun_port,
            &o.stun_seen,
            o.external_ip,
            o.mapped.contains(&signaling),
        );
        o.public = public;
        o.mapping = mapping;
        o.note = note;
        o
    }

    /// Finds the gateway (once), asks its external address, maps the ports.
    fn map_ports(&mut self, o: &mut Outcome, rx: &Receiver<Command>) -> Result<(), String> {
        let gw = match self.gateway.clone() {
            Some(g) => g,
            None => {
                let g = Gateway::find(self.settings.upnp_url.as_ref())?;
                log::info!("traversal: gateway {}", g.name());
                self.found.store(true, Ordering::SeqCst);
                self.gateway = Some(g.clone());
                g
            }
        };
        o.gateway = Some(gw.name());
        o.external_ip = Some(
            gw.external_ip()
                .map_err(|e| format!("gateway {}: {e}", gw.name()))?,
        );
        for (proto, port) in self.settings.ports.clone() {
            if self.stopping(rx) {
                return Ok(());
            }
            match gw.map(proto, port, self.settings.lease_s) {
                Ok(()) => {
                    o.mapped.push((proto, port));
                    if !self.mapped.contains(&(proto, port)) {
                        self.mapped.push((proto, port));
                    }
                }
                Err(MapError::Refused(e)) => o
                    .errors
                    .push(format!("mapping {} {port}: {e}", proto.as_str())),
                // The gateway is gone: no use trying the other ports.
                Err(MapError::Gone(e)) => {
                    self.record();
                    return Err(format!("mapping {} {port}: {e}", proto.as_str()));
                }
            }
        }
        self.record();
        Ok(())
    }

    /// Opens the IPv6 pinholes with PCP at the IPv6 default router, from
    /// this router's global address (PCP requires the mapping's address to
    /// be the request's source).
    fn open_pinholes(&mut self, o: &mut Outcome, rx: &Receiver<Command>) -> Result<(), String> {
        let (server, me, nonce) = match self.pcp {
            Some(p) => p,
            None => {
                let me = global_ip6().ok_or("IPv6: no global address on the default route")?;
                let route = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
                let (hop, ifname) =
                    pcp::default_router6(&route).ok_or("IPv6: no default router for PCP")?;
                let scope = if (hop.segments()[0] & 0xffc0) == 0xfe80 {
                    match crate::sys::rtnl::index_of(&ifname) {
                        0 => return Err(format!("IPv6: no interface {ifname}")),
                        i => i,
                    }
                } else {
                    0
                };
                let server = SocketAddr::V6(std::net::SocketAddrV6::new(hop, pcp::PORT, 0, scope));
                let mut nonce = [0u8; 12];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| f.read_exact(&mut nonce))
                    .map_err(|e| format!("/dev/urandom: {e}"))?;
                let p = (server, me, nonce);
                self.pcp = Some(p);
                self.found.store(true, Ordering::SeqCst);
                p
            }
        };
        let lifetime = pcp_lifetime(self.settings.lease_s);
        for (proto, port) in self.settings.pinholes.clone() {
            if self.stopping(rx) {
                return Ok(());
            }
            match pcp_exchange(
                server,
                me,
                &pcp::map_request(&nonce, proto, port, lifetime, me),
            )
            .and_then(|b| pcp::parse_map(&b, &nonce, proto, port).map_err(PcpFailure::from))
            {
                Ok(_) => {
                    o.pinholes.push((proto, port));
                    if !self.pinholed.contains(&(proto, port)) {
                        self.pinholed.push((proto, port));
                    }
                }
                Err(PcpFailure::Refused(e)) => o
                    .errors
                    .push(format!("IPv6 pinhole {} {port}: {e}", proto.as_str())),
                Err(PcpFailure::Gone(e)) => {
                    self.record();
                    return Err(format!("IPv6 pinholes with PCP at {server}: {e}"));
                }
            }
        }
        self.record();
        let signaling = (Protocol::Udp, self.settings.signaling_port);
        if o.pinholes.contains(&signaling) {
            o.public6 = Some(SocketAddr::new(
                IpAddr::V6(me),
                self.settings.signaling_port,
            ));
        }
        Ok(())
    }

    /// Closes the pinholes (lifetime 0, same nonce); those left after a
    /// transport failure stay recorded (and end with their lifetime).
    fn close_pinholes(&mut self) {
        if let Some(p) = self.pcp {
            let ports = std::mem::take(&mut self.pinholed);
            self.pinholed = close_all(p, &ports);
        }
    }

    /// Brings the record on disk up to date with what is mapped and open.
    /// A gateway or PCP server lost keeps its part: what was made there is
    /// still to delete.
    fn record(&mut self) {
        let Some(path) = &self.settings.record else {
            return;
        };
        let mut r = self.recorded.clone();
        if let Some(gw) = &self.gateway {
            r.mappings = Some((gw.clone(), self.mapped.clone()));
        }
        if let Some(p) = self.pcp {
            r.pinholes = Some((p, self.pinholed.clone()));
        }
        if r == self.recorded {
            return;
        }
        match record::save(path, &r) {
            Ok(()) => self.recorded = r,
            Err(e) => log::warn!(
                "traversal: recording the mappings in {}: {e}",
                path.display()
            ),
        }
    }

    /// Deletes every mapping made and closes the pinholes (bounded: one
    /// timeout per call, stops at the first transport failure).
    fn unmap(&mut self) {
        self.close_pinholes();
        if let Some(gw) = self.gateway.clone() {
            let ports = std::mem::take(&mut self.mapped);
            self.mapped = unmap_all(&gw, &ports);
        }
        self.record();
    }
}

/// The PCP server for IPv6 pinholes: its address, ours, and the nonce of our
/// mappings (PCP deletes or renews a mapping only for the same nonce).
type PcpServer = (SocketAddr, Ipv6Addr, [u8; 12]);

/// Closes `ports` at the PCP server; returns those left (after a transport
/// failure: they end with their lifetime).
fn close_all((server, me, nonce): PcpServer, ports: &[(Protocol, u16)]) -> Vec<(Protocol, u16)> {
    let mut closed = 0;
    let mut left = Vec::new();
    for (i, &(proto, port)) in ports.iter().enumerate() {
        match pcp_exchange(server, me, &pcp::map_request(&nonce, proto, port, 0, me)) {
            Ok(_) => closed += 1,
            Err(e) => {
                log::warn!(
                    "traversal: closing the IPv6 pinholes: {e}; they end with their lifetime"
                );
                left.extend_from_slice(&ports[i..]);
                break;
            }
        }
    }
    if closed > 0 {
        log::info!("traversal: closed {closed} IPv6 pinhole(s) at {server}");
    }
    left
}

/// Deletes `ports` on `gw`; returns those left (after a transport failure,
/// the gateway's: they end with their lease).
fn unmap_all(gw: &Gateway, ports: &[(Protocol, u16)]) -> Vec<(Protocol, u16)> {
    let mut deleted = 0;
    let mut left = Vec::new();
    for (i, &(proto, port)) in ports.iter().enumerate() {
        match gw.unmap(proto, port) {
            Ok(()) => deleted += 1,
            Err(MapError::Refused(e)) => {
                log::warn!("traversal: deleting {} {port}: {e}", proto.as_str())
            }
            Err(MapError::Gone(e)) => {
                log::warn!("traversal: deleting the mappings: {e}; they end with their lease");
                left.extend_from_slice(&ports[i..]);
                break;
            }
        }
    }
    if deleted > 0 {
        log::info!(
            "traversal: deleted {deleted} port mapping(s) on {}",
            gw.name()
        );
    }
    left
}

/// Deletes the mappings and closes the pinholes an earlier run recorded at
/// `path` and did not (it crashed). Bounded: one timeout per gateway that is
/// gone, and then the record is dropped (what is left ends with its lease,
/// or with the gateway's restart).
pub fn delete_leftovers(path: &Path) {
    let r = match record::load(path) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            log::warn!("traversal: {e}; ignored");
            let _ = record::remove(path);
            return;
        }
    };
    if let Some((gw, ports)) = r.mappings.as_ref().filter(|m| !m.1.is_empty()) {
        log::info!(
            "traversal: deleting {} port mapping(s) left on {} by an earlier run",
            ports.len(),
            gw.name()
        );
        unmap_all(gw, ports);
    }
    if let Some((p, ports)) = r.pinholes.as_ref().filter(|p| !p.1.is_empty()) {
        log::info!(
            "traversal: closing {} IPv6 pinhole(s) left at {} by an earlier run",
            ports.len(),
            p.0
        );
        close_all(*p, ports);
    }
    if let Err(e) = record::remove(path) {
        log::warn!("traversal: removing {}: {e}", path.display());
    }
}

/// A port mapping gateway: UPnP IGD, or NAT-PMP at the default gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Gateway {
    Upnp {
        service: upnp::Service,
        /// This router's address towards it (the mappings' internal client).
        me: Ipv4Addr,
    },
    Pmp(SocketAddr),
}

/// Why a mapping call failed.
enum MapError {
    /// The gateway answered no (this port).
    Refused(String),
    /// No answer or a broken one (the gateway, not the port).
    Gone(String),
}

impl MapError {
    /// A request that failed: a UPnP error code is the gateway's answer
    /// (this port), anything else (no answer, not SOAP) the gateway's fault.
    fn of(e: igd_next::RequestError) -> MapError {
        match e {
            igd_next::RequestError::ErrorCode(..)
            | igd_next::RequestError::UnsupportedAction(_) => MapError::refused(&e),
            e => MapError::Gone(short(&e)),
        }
    }

    /// The gateway said no (`e`: `igd-next`'s reading of its UPnP error).
    fn refused(e: &dyn std::fmt::Display) -> MapError {
        MapError::Refused(format!("refused by the gateway: {}", short(e)))
    }
}

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (MapError::Refused(m) | MapError::Gone(m)) = self;
        f.write_str(m)
    }
}

impl Gateway {
    /// UPnP (SSDP, or `url`); without an answer and without `url`, NAT-PMP
    /// at the default gateway.
    fn find(url: Option<&Url>) -> Result<Gateway, String> {
        let upnp = find_gateway(url).and_then(|service| {
            let me = local_ip_towards(&service.control)
                .map_err(|e| format!("the address towards the gateway: {e}"))?;
            Ok(Gateway::Upnp { service, me })
        });
        match upnp {
            Ok(g) => Ok(g),
            Err(e) if url.is_some() => Err(e),
            Err(e) => {
                let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
                let Some(gw) = natpmp::default_gateway(&route) else {
                    return Err(format!("{e}; no default gateway for NAT-PMP"));
                };
                let g = Gateway::Pmp(SocketAddr::from((gw, natpmp::PORT)));
                match g.external_ip() {
                    Ok(_) => Ok(g),
                    Err(p) => Err(format!("{e}; NAT-PMP at {gw}: {p}")),
                }
            }
        }
    }

    fn name(&self) -> String {
        match self {
            Gateway::Upnp { service, .. } => service.control.to_string(),
            Gateway::Pmp(a) => format!("natpmp://{a}"),
        }
    }

    fn external_ip(&self) -> Result<IpAddr, MapError> {
        match self {
            Gateway::Upnp { service, .. } => match soap_gateway(service)?.get_external_ip() {
                Ok(ip) => Ok(ip),
                Err(igd_next::GetExternalIpError::RequestError(e)) => Err(MapError::of(e)),
                Err(e) => Err(MapError::refused(&e)),
            },
            Gateway::Pmp(gw) => {
                let b = pmp_exchange(*gw, &natpmp::address_request())?;
                natpmp::parse_address(&b)
                    .map(IpAddr::V4)
                    .map_err(|e| MapError::Gone(e.to_string()))
            }
        }
    }

    /// Maps `port` (external = internal) for `lease_s` (0: permanent).
    fn map(&self, proto: Protocol, port: u16, lease_s: u32) -> Result<(), MapError> {
        match self {
            Gateway::Upnp { service, me } => {
                let gw = soap_gateway(service)?;
                let to = SocketAddr::from((*me, port));
                let add = |lease| gw.add_port(proto.into(), port, to, lease, DESCRIPTION);
                match add(lease_s) {
                    Err(igd_next::AddPortError::OnlyPermanentLeasesSupported) => add(0),
                    r => r,
                }
                .map_err(|e| match e {
                    igd_next::AddPortError::RequestError(e) => MapError::of(e),
                    e => MapError::refused(&e),
                })
            }
            Gateway::Pmp(gw) => {
                // NAT-PMP has no permanent leases: a day, renewed like others.
                let lifetime = if lease_s == 0 { 86_400 } else { lease_s };
                let req = natpmp::map_request(proto, port, port, lifetime);
                let b = pmp_exchange(*gw, &req)?;
                match natpmp::parse_map(&b, proto, port) {
                    Ok(m) if m.external == port => Ok(()),
                    Ok(m) => {
                        // Another external port is of no use: grants name the port.
                        let _ = pmp_exchange(*gw, &natpmp::map_request(proto, port, 0, 0));
                        Err(MapError::Refused(format!(
                            "NAT-PMP gave external port {} instead",
                            m.external
                        )))
                    }
                    Err(e @ natpmp::PmpError::Refused(..)) => Err(MapError::Refused(e.to_string())),
                    Err(e) => Err(MapError::Gone(e.to_string())),
                }
            }
        }
    }

    fn unmap(&self, proto: Protocol, port: u16) -> Result<(), MapError> {
        match self {
            Gateway::Upnp { service, .. } => {
                match soap_gateway(service)?.remove_port(proto.into(), port) {
                    Ok(()) | Err(igd_next::RemovePortError::NoSuchPortMapping) => Ok(()),
                    Err(igd_next::RemovePortError::RequestError(e)) => Err(MapError::of(e)),
                    Err(e) => Err(MapError::refused(&e)),
                }
            }
            Gateway::Pmp(gw) => {
                let b = pmp_exchange(*gw, &natpmp::map_request(proto, port, 0, 0))?;
                natpmp::parse_map(&b, proto, port)
                    .map(drop)
                    .map_err(|e| MapError::Refused(e.to_string()))
            }
        }
    }
}

/// The lifetime asked for pinholes: the lease, within what PCP servers
/// grant (miniupnpd: at least 120 s; a day for "permanent").
fn pcp_lifetime(lease_s: u32) -> u32 {
    if lease_s == 0 {
        86_400
    } else {
        lease_s.clamp(120, 86_400)
    }
}

/// Why a PCP exchange failed.
enum PcpFailure {
    /// The server answered no (this port).
    Refused(String),
    /// No answer, or not a PCP server.
    Gone(String),
}

impl From<pcp::PcpError> for PcpFailure {
    fn from(e: pcp::PcpError) -> Self {
        match e {
            pcp::PcpError::Refused(..) => PcpFailure::Refused(e.to_string()),
            e => PcpFailure::Gone(e.to_string()),
        }
    }
}

impl std::fmt::Display for PcpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (PcpFailure::Refused(m) | PcpFailure::Gone(m)) = self;
        f.write_str(m)
    }
}

/// One PCP exchange from `me`.
fn pcp_exchange(server: SocketAddr, me: Ipv6Addr, req: &[u8]) -> Result<Vec<u8>, PcpFailure> {
    let gone = |e: io::Error| PcpFailure::Gone(format!("PCP {server}: {e}"));
    let mut buf = [0u8; pcp::MAX_MESSAGE + 1];
    match udp_exchange(SocketAddr::new(IpAddr::V6(me), 0), server, req, &mut buf) {
        Ok(Some(n)) => Ok(buf[..n].to_vec()),
        Ok(None) => Err(PcpFailure::Gone(format!("PCP {server}: no answer"))),
        Err(e) => Err(gone(e)),
    }
}

/// One request from `local` to `server` and its answer, with
/// retransmissions (250 ms doubling, 4 tries, as NAT-PMP and PCP say);
/// `None`: no answer.
fn udp_exchange(
    local: SocketAddr,
    server: SocketAddr,
    req: &[u8],
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    let sock = UdpSocket::bind(local)?;
    sock.connect(server)?;
    let mut wait = Duration::from_millis(250);
    for _ in 0..4 {
        sock.send(req)?;
        sock.set_read_timeout(Some(wait))?;
        match sock.recv(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                wait *= 2
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// This router's global IPv6 address on its default route (a route lookup:
/// connect() on UDP sends nothing).
fn global_ip6() -> Option<Ipv6Addr> {
    let s = UdpSocket::bind("[::]:0").ok()?;
    s.connect("[2001:db8::1]:9").ok()?;
    match s.local_addr().ok()?.ip() {
        IpAddr::V6(a) if (a.segments()[0] & 0xe000) == 0x2000 => Some(a),
        _ => None,
    }
}

/// One NAT-PMP exchange.
fn pmp_exchange(gw: SocketAddr, req: &[u8]) -> Result<Vec<u8>, MapError> {
    let mut buf = [0u8; 64];
    match udp_exchange(SocketAddr::from(([0, 0, 0, 0], 0)), gw, req, &mut buf) {
        Ok(Some(n)) => Ok(buf[..n].to_vec()),
        Ok(None) => Err(MapError::Gone(format!("NAT-PMP {gw}: no answer"))),
        Err(e) => Err(MapError::Gone(format!("NAT-PMP {gw}: {e}"))),
    }
}

/// The input arguments of the two actions called, in the order of the IGD
/// specification (WANIPConnection:1 §2.4.16 and §2.4.17; the same in v2 and
/// WANPPPConnection). `igd-next` writes a request's arguments from this
/// list; its `search_gateway` would read them from the gateway's SCPD.
const ARGUMENTS: [(&str, &[&str]); 2] = [
    (
        "AddPortMapping",
        &[
            "NewRemoteHost",
            "NewExternalPort",
            "NewProtocol",
            "NewInternalPort",
            "NewInternalClient",
            "NewEnabled",
            "NewPortMappingDescription",
            "NewLeaseDuration",
        ],
    ),
    (
        "DeletePortMapping",
        &["NewRemoteHost", "NewExternalPort", "NewProtocol"],
    ),
];

/// `igd-next`'s handle on the gateway's `service`: SOAP calls go to the
/// control URL's address (a name, from `option upnp_url`, resolved here) and
/// nowhere else. The control URL is handed over absolute, with that address
/// as its host: `igd-next` resolves it against `http://addr/`, where a path
/// starting with `//` would name another host.
fn soap_gateway(service: &upnp::Service) -> Result<igd_next::Gateway, MapError> {
    let c = &service.control;
    let addr = (c.host.as_str(), c.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| MapError::Gone(format!("{c}: cannot resolve {}", c.host)))?;
    let control_schema = ARGUMENTS
        .iter()
        .map(|(action, args)| {
            let args = args.iter().map(|a| (*a).to_owned()).collect();
            ((*action).to_owned(), args)
        })
        .collect();
    Ok(igd_next::Gateway {
        addr,
        root_url: "/".into(),
        control_url: format!("http://{addr}{}", c.path),
        control_schema_url: String::new(),
        control_schema,
        service_type: service.kind.clone(),
    })
}

/// An error's text, at most 200 characters (`igd-next` puts a gateway's
/// whole answer into some).
fn short(e: &dyn std::fmt::Display) -> String {
    let t = e.to_string();
    match t.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t,
    }
}

/// SSDP discovery (or the configured URL), then the description, fetched
/// without following redirects; its control URL must be on the host the
/// description came from (the URL SOAP calls go to, which follow no
/// redirects either).
fn find_gateway(url: Option<&Url>) -> Result<upnp::Service, String> {
    let location = match url {
        Some(u) => u.clone(),
        None => {
            let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
            let gw = natpmp::default_gateway(&route)
                .ok_or("UPnP discovery: no IPv4 default gateway (only it may answer the search)")?;
            discover(gw).map_err(|e| format!("UPnP discovery: {e}"))?
        }
    };
    let limits = http::Limits {
        timeout: GATEWAY_TIMEOUT,
        max_body: upnp::MAX_DESCRIPTION,
    };
    let r = http::get_only(&location, &[], limits).map_err(|e| format!("UPnP description: {e}"))?;
    if r.status != 200 {
        let redirect = match &r.location {
            Some(to) if (300..400).contains(&r.status) => {
                format!(" (a redirect to {}: not followed)", to.escape_debug())
            }
            _ => String::new(),
        };
        return Err(format!(
            "UPnP description {location}: HTTP status {}{redirect}",
            r.status
        ));
    }
    let xml = String::from_utf8_lossy(&r.body);
    let s = upnp::parse_description(&xml, &location).map_err(|e| format!("{location}: {e}"))?;
    if !same_host(&s.control, &location) {
        return Err(format!(
            "{location}: the control URL {} is on another host",
            s.control
        ));
    }
    Ok(s)
}

/// Searches for IGDs; only an answer from the default gateway `gateway`,
/// whose description is on that gateway, is taken: another LAN host must not
/// steer the router's requests (and its port mappings) elsewhere.
fn discover(gateway: Ipv4Addr) -> Result<Url, String> {
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    let _ = sock.set_multicast_ttl_v4(2);
    let group = SocketAddr::from((Ipv4Addr::new(239, 255, 255, 250), 1900));
    for target in upnp::SEARCH_TARGETS {
        sock.send_to(upnp::msearch(target).as_bytes(), group)
            .map_err(|e| format!("sending the search: {e}"))?;
    }
    let deadline = Instant::now() + SSDP_WAIT;
    let mut buf = [0u8; 2048];
    let mut last = format!("the default gateway {gateway} did not answer");
    let mut foreign = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => match ssdp_location(&buf[..n], from, gateway) {
                Ok(u) => return Ok(u),
                Err(Ssdp::NotTheGateway) => {
                    if !foreign {
                        log::warn!(
                            "traversal: ignored an SSDP answer from {from}: not the default gateway {gateway}"
                        );
                        foreign = true;
                    }
                }
                Err(Ssdp::Bad(e)) => last = format!("{from}: {e}"),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(last)
}

/// Why an SSDP answer is not taken.
#[derive(Debug, PartialEq, Eq)]
enum Ssdp {
    /// It did not come from the default gateway.
    NotTheGateway,
    /// The gateway's answer is unusable (why).
    Bad(String),
}

/// The description URL in SSDP answer `b` from `from`, when `from` is the
/// default gateway `gateway` and the URL names it by that address.
fn ssdp_location(b: &[u8], from: SocketAddr, gateway: Ipv4Addr) -> Result<Url, Ssdp> {
    if from.ip() != IpAddr::V4(gateway) {
        return Err(Ssdp::NotTheGateway);
    }
    let u = upnp::parse_ssdp(b).map_err(|e| Ssdp::Bad(e.to_string()))?;
    if !on_host(&u, from.ip()) {
        return Err(Ssdp::Bad(format!("LOCATION {u} is on another host")));
    }
    Ok(u)
}

/// Whether `url` names the host with address `ip` (the gateway that
/// answered) by that address.
fn on_host(url: &Url, ip: IpAddr) -> bool {
    url.host.parse::<IpAddr>().is_ok_and(|h| h == ip)
}

/// Whether `a` and `b` name the same host (addresses compared as
/// addresses, names as names).
fn same_host(a: &Url, b: &Url) -> bool {
    match (a.host.parse::<IpAddr>(), b.host.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        (Err(_), Err(_)) => a.host.eq_ignore_ascii_case(&b.host),
        _ => false,
    }
}

/// This router's IPv4 address on the route to `url`'s host (no packet sent).
fn local_ip_towards(url: &Url) -> io::Result<Ipv4Addr> {
    let target = (url.host.as_str(), url.port)
        .to_socket_addrs()?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no IPv4 address"))?;
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(target)?;
    match s.local_addr()?.ip() {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(_) => Err(io::Error::new(io::ErrorKind::Unsupported, "IPv6")),
    }
}

/// Asks one STUN server from `sock`: what it saw, and this router's address
/// on the route to it.
fn ask_stun(sock: &UdpSocket, server: &str) -> Result<(SocketAddr, Option<IpAddr>), String> {
    let addr = server
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .find(SocketAddr::is_ipv4)
        .ok_or("no IPv4 address")?;
    let local = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect(addr).and_then(|()| s.local_addr()))
        .ok()
        .map(|a| a.ip());
    let mut tid = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut tid))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    let req = stun::request(tid);
    let mut buf = [0u8; stun::MAX_MESSAGE];
    let mut last = "no answer".to_owned();
    for wait in STUN_TRIES {
        sock.send_to(&req, addr).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let _ = sock.set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == addr => match stun::parse_response(&buf[..n], &tid) {
                    Ok(seen) => return Ok((seen, local)),
                    Err(stun::StunError::OtherTransaction) => {}
                    Err(e) => last = e.to_string(),
                },
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    Err(format!("{last} after {} tries", STUN_TRIES.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn gateway_urls_must_stay_on_the_gateway() {
        let gw: IpAddr = "192.168.7.1".parse().unwrap();
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(on_host(&u("http://192.168.7.1:5000/rootDesc.xml"), gw));
        assert!(!on_host(&u("http://192.168.7.9:5000/rootDesc.xml"), gw));
        assert!(!on_host(&u("http://gateway.lan:5000/rootDesc.xml"), gw));
        let desc = u("http://192.168.7.1:5000/rootDesc.xml");
        assert!(same_host(&u("http://192.168.7.1:6000/ctl/IPConn"), &desc));
        assert!(!same_host(&u("http://192.168.7.9:5000/ctl/IPConn"), &desc));
        assert!(!same_host(&u("http://gw.lan:5000/ctl/IPConn"), &desc));
        assert!(same_host(
            &u("http://[fe80::0:1]/c"),
            &u("http://[fe80::1]:80/d")
        ));
        assert!(same_host(&u("http://GW.lan/c"), &u("http://gw.lan/d")));
    }

    #[test]
    fn ssdp_answers_only_from_the_default_gateway() {
        let gw = Ipv4Addr::new(192, 168, 7, 1);
        let answer = |loc: &str| {
            format!("HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: {loc}\r\n\r\n")
                .into_bytes()
        };
        let good = answer("http://192.168.7.1:5000/rootDesc.xml");
        assert_eq!(
            ssdp_location(&good, sa("192.168.7.1:1900"), gw),
            Ok(Url::parse("http://192.168.7.1:5000/rootDesc.xml").unwrap())
        );
        // Another LAN host, even naming itself or the gateway: ignored.
        let rogue = answer("http://192.168.7.66:5000/rootDesc.xml");
        assert_eq!(
            ssdp_location(&rogue, sa("192.168.7.66:1900"), gw),
            Err(Ssdp::NotTheGateway)
        );
        assert_eq!(
            ssdp_location(&good, sa("192.168.7.66:1900"), gw),
            Err(Ssdp::NotTheGateway)
        );
        // The gateway pointing elsewhere, or garbage from it: unusable.
        assert!(matches!(
            ssdp_location(&rogue, sa("192.168.7.1:1900"), gw),
            Err(Ssdp::Bad(e)) if e.contains("on another host")
        ));
        assert!(matches!(
            ssdp_location(b"garbage", sa("192.168.7.1:1900"), gw),
            Err(Ssdp::Bad(_))
        ));
    }

    /// The requests a [`serve`] server got: method, target, `SOAPAction`
    /// and body, one string each.
    type Seen = Arc<std::sync::Mutex<Vec<String>>>;

    /// Serves `replies` on loopback, one connection each, in order; records
    /// the requests it got.
    fn serve(replies: Vec<String>) -> (SocketAddr, Seen) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Seen::default();
        let log = Arc::clone(&seen);
        thread::spawn(move || {
            for r in replies {
                let Ok((mut c, _)) = l.accept() else { return };
                let line = match http::read_request(&mut c, 1 << 16, Duration::from_secs(5)) {
                    Ok((h, body)) => format!(
                        "{} {} {} {}",
                        h.first,
                        h.second,
                        h.field("soapaction").unwrap_or("-"),
                        String::from_utf8_lossy(&body)
                    ),
                    Err(e) => format!("unreadable: {e}"),
                };
                log.lock().unwrap().push(line);
                let _ = c.write_all(r.as_bytes());
            }
        });
        (addr, seen)
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn description(control: &str) -> String {
        format!("<root><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>{control}</controlURL></service></root>")
    }

    #[test]
    fn the_description_is_fetched_without_redirects() {
        // A second server with a valid description, where the gateway
        // redirects to: never asked.
        let (elsewhere, asked) = serve(vec![ok(&description("/ctl")); 2]);
        let target = format!("http://{elsewhere}/rootDesc.xml");
        let (gw, _) = serve(vec![format!(
            "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n"
        )]);
        let url = Url::parse(&format!("http://{gw}/rootDesc.xml")).unwrap();
        let e = find_gateway(Some(&url)).unwrap_err();
        assert!(e.contains("HTTP status 302"), "{e}");
        assert!(
            e.contains(&format!("a redirect to {target}: not followed")),
            "{e}"
        );
        assert!(
            asked.lock().unwrap().is_empty(),
            "the redirect was followed"
        );
        // Without a redirect the same description is taken.
        let s = find_gateway(Some(&Url::parse(&target).unwrap())).unwrap();
        assert_eq!(s.control.to_string(), format!("http://{elsewhere}/ctl"));
    }

    #[test]
    fn the_control_url_must_be_on_the_gateway() {
        for control in ["http://127.0.0.2:5000/ctl", "http://gateway.example/ctl"] {
            let (gw, _) = serve(vec![ok(&description(control))]);
            let url = Url::parse(&format!("http://{gw}/rootDesc.xml")).unwrap();
            let e = find_gateway(Some(&url)).unwrap_err();
            let shown = Url::parse(control).unwrap();
            assert!(
                e.contains(&format!("the control URL {shown} is on another host")),
                "{e}"
            );
        }
        // A URLBase elsewhere moves a relative control URL with it.
        let (gw, _) = serve(vec![ok(
            "<root><URLBase>http://127.0.0.3:80/</URLBase><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/ctl</controlURL></service></root>",
        )]);
        let url = Url::parse(&format!("http://{gw}/rootDesc.xml")).unwrap();
        let e = find_gateway(Some(&url)).unwrap_err();
        assert!(e.contains("is on another host"), "{e}");
    }

    /// A SOAP answer: `inner` in the body, status 200.
    fn soap_ok(inner: &str) -> String {
        ok(&format!(
            "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>{inner}</s:Body></s:Envelope>"
        ))
    }

    /// A SOAP fault with UPnP error `code` (status 500, as miniupnpd sends it).
    fn soap_fault(code: u16, what: &str) -> String {
        let body = format!(
            "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>{code}</errorCode><errorDescription>{what}</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"
        );
        format!(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// The SOAP calls, made by `igd-next` on the gateway built from the
    /// checked description: the right actions and arguments to the control
    /// URL, a permanent lease where only that is taken, a missing mapping
    /// deleted, a refusal kept apart from a gateway that is gone, and a
    /// redirect not followed.
    #[test]
    fn soap_calls_through_igd_next() {
        const KIND: &str = "urn:schemas-upnp-org:service:WANIPConnection:1";
        let (elsewhere, asked) = serve(vec![soap_ok(""); 1]);
        let (gw, seen) = serve(vec![
            soap_ok(&format!("<u:GetExternalIPAddressResponse xmlns:u=\"{KIND}\"><NewExternalIPAddress>11.7.1.1</NewExternalIPAddress></u:GetExternalIPAddressResponse>")),
            soap_fault(725, "OnlyPermanentLeasesSupported"),
            soap_ok(&format!("<u:AddPortMappingResponse xmlns:u=\"{KIND}\"/>")),
            soap_fault(718, "ConflictInMappingEntry"),
            soap_fault(714, "NoSuchEntryInArray"),
            "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot here.".into(),
            format!("HTTP/1.1 307 Moved\r\nLocation: http://{elsewhere}/ctl\r\nContent-Length: 0\r\n\r\n"),
        ]);
        let g = Gateway::Upnp {
            service: upnp::Service {
                kind: KIND.into(),
                control: Url::parse(&format!("http://{gw}/ctl/IPConn")).unwrap(),
            },
            me: Ipv4Addr::new(192, 168, 7, 2),
        };
        assert_eq!(g.external_ip().ok(), Some("11.7.1.1".parse().unwrap()));
        assert!(g.map(Protocol::Udp, 7447, 3600).is_ok());
        assert!(
            matches!(g.map(Protocol::Tcp, 40000, 3600), Err(MapError::Refused(e)) if e.contains("refused by the gateway: The requested mapping conflicts"))
        );
        assert!(g.unmap(Protocol::Udp, 7447).is_ok());
        assert!(matches!(
            g.unmap(Protocol::Udp, 7447),
            Err(MapError::Gone(_))
        ));
        assert!(matches!(
            g.unmap(Protocol::Udp, 7447),
            Err(MapError::Gone(_))
        ));
        assert!(
            asked.lock().unwrap().is_empty(),
            "a SOAP redirect was followed"
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 7, "{seen:#?}");
        let action = |i: usize, a: &str| {
            assert!(
                seen[i].starts_with(&format!("POST /ctl/IPConn \"{KIND}#{a}\"")),
                "{i}: {}",
                seen[i]
            );
        };
        action(0, "GetExternalIPAddress");
        for i in 1..=3 {
            action(i, "AddPortMapping");
        }
        action(4, "DeletePortMapping");
        for want in [
            "<NewExternalPort>7447</NewExternalPort>",
            "<NewProtocol>UDP</NewProtocol>",
            "<NewInternalPort>7447</NewInternalPort>",
            "<NewInternalClient>192.168.7.2</NewInternalClient>",
            "<NewPortMappingDescription>dcol waypoint</NewPortMappingDescription>",
            "<NewLeaseDuration>3600</NewLeaseDuration>",
        ] {
            assert!(seen[1].contains(want), "{want} not in {}", seen[1]);
        }
        assert!(
            seen[2].contains("<NewLeaseDuration>0</NewLeaseDuration>"),
            "{}",
            seen[2]
        );
        assert!(
            seen[4].contains("<NewExternalPort>7447</NewExternalPort>"),
            "{}",
            seen[4]
        );
    }

    /// A control URL whose path starts with `//` (from the gateway's own
    /// description) still sends SOAP to the gateway: the path is not taken
    /// for another host.
    #[test]
    fn soap_stays_on_the_control_urls_host() {
        let (other, asked) = serve(vec![soap_ok(""); 1]);
        let (gw, seen) = serve(vec![soap_fault(606, "Action not authorized")]);
        let service = upnp::Service {
            kind: "urn:schemas-upnp-org:service:WANIPConnection:1".into(),
            control: Url {
                host: "127.0.0.1".into(),
                port: gw.port(),
                path: format!("//{other}/ctl"),
            },
        };
        let g = Gateway::Upnp {
            service,
            me: Ipv4Addr::new(192, 168, 7, 2),
        };
        assert!(g.external_ip().is_err());
        assert!(asked.lock().unwrap().is_empty(), "SOAP went to {other}");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].starts_with(&format!("POST //{other}/ctl ")),
            "{seen:?}"
        );
    }

    #[test]
    fn what_a_router_publishes() {
        let lan: IpAddr = "192.168.7.2".parse().unwrap();
        let public: IpAddr = "11.7.1.1".parse().unwrap();
        // Behind a UPnP gateway whose external address STUN confirms.
        let (p, m, _) = decide(
            7447,
            Some(lan),
            5000,
            &[sa("11.7.1.1:5000"), sa("11.7.1.1:5000")],
            Some(public),
            true,
        );
        assert_eq!(
            (p, m),
            (
                Some(sa("11.7.1.1:7447")),
                Some(Mapping::EndpointIndependent)
            )
        );
        // Double NAT: the gateway's address is not the public one.
        let (p, _, note) = decide(
            7447,
            Some(lan),
            5000,
            &[sa("11.7.1.1:5000")],
            Some("100.64.0.9".parse().unwrap()),
            true,
        );
        assert_eq!(p, None);
        assert!(note.contains("another NAT"), "{note}");
        // Mapped, no STUN: a public external address is trusted, a private one not.
        assert_eq!(
            decide(7447, None, 0, &[], Some(public), true).0,
            Some(sa("11.7.1.1:7447"))
        );
        assert_eq!(
            decide(7447, None, 0, &[], Some("10.0.0.2".parse().unwrap()), true).0,
            None
        );
        // No NAT at all.
        let (p, m, _) = decide(
            7447,
            Some(public),
            5000,
            &[sa("11.7.1.1:5000")],
            None,
            false,
        );
        assert_eq!((p, m), (Some(sa("11.7.1.1:7447")), Some(Mapping::None)));
        // NAT without a mapping: nothing to publish, and why.
        let (p, _, note) = decide(7447, Some(lan), 5000, &[sa("11.7.1.1:6000")], None, false);
        assert_eq!(p, None);
        assert!(note.contains("forward the ports"), "{note}");
        let (p, m, _) = decide(7447, None, 0, &[], None, false);
        assert_eq!((p, m), (None, None));
        // No STUN server, no gateway: a public address of its own is used,
        // a private one is not.
        let (p, _, note) = decide(7447, Some(public), 0, &[], None, false);
        assert_eq!(p, Some(sa("11.7.1.1:7447")), "{note}");
        assert_eq!(decide(7447, Some(lan), 0, &[], None, false).0, None);
        let cgnat: IpAddr = "100.64.1.2".parse().unwrap();
        assert_eq!(decide(7447, Some(cgnat), 0, &[], None, false).0, None);
    }
}
