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

mod error;
mod gateway;
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
pub use error::{StunFailure, TraversalError};
use gateway::*;
pub use gateway::{MapError, PcpFailure};
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
#[derive(Debug, Default)]
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
    pub errors: Vec<TraversalError>,
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
                            Err(source) => o.errors.push(TraversalError::Stun {
                                server: server.clone(),
                                source,
                            }),
                        }
                    }
                }
                Err(e) => o.errors.push(TraversalError::StunSocket(e)),
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
    fn map_ports(&mut self, o: &mut Outcome, rx: &Receiver<Command>) -> Result<(), TraversalError> {
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
        let ip = gw
            .external_ip()
            .map_err(|source| TraversalError::ExternalIp {
                gateway: gw.name(),
                source,
            });
        o.external_ip = Some(ip?);
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
                Err(source @ MapError::Refused(_)) => o.errors.push(TraversalError::Mapping {
                    proto,
                    port,
                    source,
                }),
                // The gateway is gone: no use trying the other ports.
                Err(source @ MapError::Gone(_)) => {
                    self.record();
                    return Err(TraversalError::Mapping {
                        proto,
                        port,
                        source,
                    });
                }
            }
        }
        self.record();
        Ok(())
    }

    /// Opens the IPv6 pinholes with PCP at the IPv6 default router, from
    /// this router's global address (PCP requires the mapping's address to
    /// be the request's source).
    fn open_pinholes(
        &mut self,
        o: &mut Outcome,
        rx: &Receiver<Command>,
    ) -> Result<(), TraversalError> {
        let (server, me, nonce) = match self.pcp {
            Some(p) => p,
            None => {
                let me = global_ip6().ok_or(TraversalError::NoGlobal6)?;
                let route = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
                let (hop, ifname) =
                    pcp::default_router6(&route).ok_or(TraversalError::NoRouter6)?;
                let scope = if (hop.segments()[0] & 0xffc0) == 0xfe80 {
                    match crate::sys::rtnl::index_of(&ifname) {
                        0 => return Err(TraversalError::NoInterface(ifname)),
                        i => i,
                    }
                } else {
                    0
                };
                let server = SocketAddr::V6(std::net::SocketAddrV6::new(hop, pcp::PORT, 0, scope));
                let mut nonce = [0u8; 12];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| f.read_exact(&mut nonce))
                    .map_err(TraversalError::Random)?;
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
                Err(source @ PcpFailure::Refused(_)) => o.errors.push(TraversalError::Pinhole {
                    proto,
                    port,
                    source,
                }),
                Err(source @ PcpFailure::Gone(_)) => {
                    self.record();
                    return Err(TraversalError::PcpGone { server, source });
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

#[cfg(test)]
mod tests;
