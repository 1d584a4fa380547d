//! The daemon's part in NAT traversal: with the waypoint role on and UPnP or
//! STUN configured it runs the [`Traversal`] thread, logs what each pass
//! found, shows it in `dcol status` and hands the public address to the
//! membership directory (published unless `list advertise` overrides it)
//! and to the client ([`Event::Reachable`], [`Event::PublicAddress`]).
//! At exit, or when the settings change on reload, the mappings are deleted
//! from the gateway (at most [`STOP_WAIT`]; what is left is recorded in
//! `state_dir/port-mappings` and deleted at the next start, or ends with
//! its lease).

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::driver::{Ctx, Driver, Event, Outbox, Role};
use super::DaemonError;
use crate::config::Config;
use crate::control::{Status, TraversalStatus};
use crate::traversal::{self, Outcome, Protocol, Settings, Traversal};

/// Time allowed for deleting the mappings.
/// Within procd's `term_timeout` of 10 s (the init script): miniupnpd with its
/// nftables backend took 5-6 s to delete 34 NAT-PMP mappings here.
const STOP_WAIT: Duration = Duration::from_secs(8);

/// The traversal side of the daemon.
pub(super) struct TraversalDriver {
    thread: Traversal,
    status: TraversalStatus,
}

/// What to run with, `None` when traversal is off.
pub(super) fn settings(cfg: &Config) -> Option<Settings> {
    let w = &cfg.waypoint;
    if !cfg.main.enabled || !w.enabled || (!w.upnp && w.stun_servers.is_empty()) {
        return None;
    }
    let mut ports: Vec<(Protocol, u16)> = Vec::new();
    for a in &w.listen {
        if a.is_ipv4() && !ports.contains(&(Protocol::Udp, a.port())) {
            ports.push((Protocol::Udp, a.port()));
        }
    }
    let signaling_port = ports.first().map_or(7447, |p| p.1);
    if w.vpn_subnet.is_some() {
        ports.push((Protocol::Udp, w.vpn_port));
    }
    let (lo, hi) = w.grant_ports();
    ports.extend((lo..=hi).map(|p| (Protocol::Tcp, p)));
    // The converter listens on TCP (IPv4 and IPv6, every address).
    let convert = w.convert.then_some((Protocol::Tcp, w.convert_port));
    ports.extend(convert.filter(|c| !ports.contains(c)));
    // IPv6: the same ports, as pinholes in the gateway's firewall, when the
    // waypoint listens on IPv6 (signaling from the IPv6 listen ports).
    let mut pinholes: Vec<(Protocol, u16)> = Vec::new();
    for a in w.listen.iter().filter(|a| a.is_ipv6()) {
        if !pinholes.contains(&(Protocol::Udp, a.port())) {
            pinholes.push((Protocol::Udp, a.port()));
        }
    }
    if !pinholes.is_empty() {
        if w.vpn_subnet.is_some() || w.vpn_subnet6.is_some() {
            pinholes.push((Protocol::Udp, w.vpn_port));
        }
        pinholes.extend((lo..=hi).map(|p| (Protocol::Tcp, p)));
        pinholes.extend(convert.filter(|c| !pinholes.contains(c)));
    }
    Some(Settings {
        stun: w.stun_servers.clone(),
        upnp: w.upnp,
        upnp_url: w.upnp_url.clone(),
        lease_s: w.upnp_lease_s,
        ports: if w.upnp { ports } else { Vec::new() },
        signaling_port,
        record: Some(record_path(cfg)),
        pinholes: if w.upnp { pinholes } else { Vec::new() },
    })
}

/// Where the mappings not deleted yet are recorded.
fn record_path(cfg: &Config) -> PathBuf {
    cfg.main.state_dir.join("port-mappings")
}

/// `udp/7447`, `tcp/40000-40031`: consecutive ports of one protocol merged.
fn port_ranges(ports: &[(Protocol, u16)]) -> Vec<String> {
    let mut v = ports.to_vec();
    v.sort();
    let mut out: Vec<(Protocol, u16, u16)> = Vec::new();
    for (proto, port) in v {
        match out.last_mut() {
            Some((p, _, hi)) if *p == proto && hi.checked_add(1) == Some(port) => *hi = port,
            _ => out.push((proto, port, port)),
        }
    }
    out.iter()
        .map(|(p, lo, hi)| {
            let p = p.as_str().to_ascii_lowercase();
            if lo == hi {
                format!("{p}/{lo}")
            } else {
                format!("{p}/{lo}-{hi}")
            }
        })
        .collect()
}

fn status_of(o: &Outcome) -> TraversalStatus {
    TraversalStatus {
        public: o.public.map(|a| a.to_string()),
        note: o.note.clone(),
        mapping: o.mapping.map(|m| m.as_str().to_owned()),
        gateway: o.gateway.clone(),
        external_ip: o.external_ip.map(|a| a.to_string()),
        mapped: port_ranges(&o.mapped),
        mapped_ports: o.mapped.len(),
        stun_seen: o.stun_seen.iter().map(|a| a.to_string()).collect(),
        errors: o.errors.iter().map(ToString::to_string).collect(),
        last_pass: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok(),
        public6: o.public6.map(|a| a.to_string()),
        pinholes: port_ranges(&o.pinholes),
    }
}

impl TraversalDriver {
    fn start(s: Settings) -> Option<TraversalDriver> {
        log::info!(
            "traversal: UPnP {}, {} STUN server(s), {} port(s) to map, {} IPv6 pinhole(s)",
            if s.upnp { "on" } else { "off" },
            s.stun.len(),
            s.ports.len(),
            s.pinholes.len()
        );
        match Traversal::start(s) {
            Ok(thread) => Some(TraversalDriver {
                thread,
                status: TraversalStatus::default(),
            }),
            Err(e) => {
                log::error!("traversal: cannot start its thread: {e}");
                None
            }
        }
    }

    /// Deletes the mappings (at most [`STOP_WAIT`]).
    pub(super) fn exit(self) {
        if !self.thread.stop(STOP_WAIT) {
            log::warn!(
                "traversal: the gateway did not answer in time; mappings end with their lease"
            );
        }
    }

    /// Logs what changed in a pass's outcome.
    fn log_news(&self, s: &TraversalStatus) {
        for e in &s.errors {
            log::warn!("traversal: {e}");
        }
        let t = &self.status;
        if (&s.public6, &s.pinholes) != (&t.public6, &t.pinholes) {
            match &s.public6 {
                Some(p) => log::info!(
                    "traversal: reachable over IPv6 at {p} (pinholes {})",
                    s.pinholes.join(", ")
                ),
                None if !t.pinholes.is_empty() => {
                    log::warn!("traversal: the IPv6 pinholes are gone")
                }
                None => {}
            }
        }
        if (&s.public, &s.mapping, &s.mapped) != (&t.public, &t.mapping, &t.mapped) {
            match &s.public {
                Some(p) => log::info!(
                    "traversal: reachable at {p} ({}; mapping {}; mapped {})",
                    s.note,
                    s.mapping.as_deref().unwrap_or("unknown"),
                    if s.mapped.is_empty() {
                        "nothing".into()
                    } else {
                        s.mapped.join(", ")
                    }
                ),
                None => log::warn!("traversal: {}", s.note),
            }
        }
    }
}

/// Without traversal, the mappings an earlier run left (it crashed) are
/// deleted in the background; with traversal on, its thread does that
/// first.
pub(super) fn delete_leftovers(cfg: &Config) {
    let path = record_path(cfg);
    if settings(cfg).is_some() || !path.exists() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("dcol-leftovers".into())
        .spawn(move || traversal::delete_leftovers(&path));
    if let Err(e) = spawned {
        log::warn!("traversal: cannot delete the mappings left by an earlier run: {e}");
    }
}

impl Driver for TraversalDriver {
    fn fds<'a>(&'a self, out: &mut Vec<BorrowedFd<'a>>) {
        out.push(self.thread.fd());
    }

    /// A pass finished: its public addresses go to the directory record,
    /// and the client's first guess of the address waypoints see.
    fn on_ready(&mut self, _fd: RawFd, _now: Instant, out: &mut Outbox) {
        let outcomes = self.thread.outcomes();
        let Some(o) = outcomes.last() else {
            return;
        };
        let s = status_of(o);
        self.log_news(&s);
        self.status = s;
        let public = o.stun_seen.first().map(SocketAddr::ip).or(o.external_ip);
        out.event(Event::PublicAddress(public));
        out.event(Event::Reachable(
            o.public.into_iter().chain(o.public6).collect(),
        ));
    }

    fn status(&self, _now: Instant, doc: &mut Status) {
        doc.traversal = Some(self.status.clone());
    }
}

impl Role for TraversalDriver {
    type Change = ();
    const NAME: &'static str = "NAT traversal";
    const STOPPED: &'static str = "NAT traversal off";
    const STARTED: &'static str = "NAT traversal restarted";
    const RESTARTED: &'static str = "NAT traversal restarted";

    fn start(ctx: &mut Ctx<'_>, _out: &mut Outbox) -> Result<Option<Self>, DaemonError> {
        Ok(settings(ctx.cfg).and_then(TraversalDriver::start))
    }

    /// The mappings are deleted from the gateway.
    fn stop(self, _out: &mut Outbox) {
        self.exit();
    }

    /// No public address learned any more.
    fn off(out: &mut Outbox) {
        out.event(Event::Reachable(Vec::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `upnp_ports` bounds the tunnel ports mapped (and granted); the
    /// converter's TCP port is mapped (and pinholed) when it is on.
    #[test]
    fn mapped_ports_follow_upnp_ports_and_the_converter() {
        let text = "config dcol 'main'\nconfig waypoint 'waypoint'\n\toption nat_ports '40000-40999'\n\toption upnp_ports '100'\n\tlist listen '0.0.0.0:7447'\n\tlist listen '[::]:7447'\n";
        let mut cfg = crate::config::parse(text, std::path::Path::new("t")).expect("config");
        let tcp = |s: &Settings, v6: bool| -> Vec<u16> {
            let ports = if v6 { &s.pinholes } else { &s.ports };
            ports
                .iter()
                .filter(|p| p.0 == Protocol::Tcp)
                .map(|p| p.1)
                .collect()
        };
        let s = settings(&cfg).expect("UPnP is on by default");
        assert_eq!(cfg.waypoint.grant_ports(), (40000, 40099));
        assert_eq!(tcp(&s, false), (40000..=40099).collect::<Vec<_>>());
        assert_eq!(tcp(&s, true), tcp(&s, false));
        cfg.waypoint.convert = true;
        cfg.waypoint.convert_port = 7448;
        let s = settings(&cfg).expect("on");
        assert_eq!(tcp(&s, false).len(), 101);
        assert_eq!(tcp(&s, false).last(), Some(&7448));
        assert!(tcp(&s, true).contains(&7448));
        assert_eq!(
            port_ranges(&s.ports),
            ["tcp/7448", "tcp/40000-40099", "udp/7447"]
        );
        // A converter port inside the tunnel ports is mapped once.
        cfg.waypoint.convert_port = 40005;
        assert_eq!(tcp(&settings(&cfg).expect("on"), false).len(), 100);
        // Without UPnP nothing is mapped and grants use the whole range.
        cfg.waypoint.upnp = false;
        cfg.waypoint.stun_servers = vec!["stun.example.org:3478".into()];
        assert!(settings(&cfg).expect("STUN").ports.is_empty());
        assert_eq!(cfg.waypoint.grant_ports(), (40000, 40999));
    }

    #[test]
    fn ranges_merge() {
        let p = [
            (Protocol::Tcp, 40001),
            (Protocol::Udp, 7447),
            (Protocol::Tcp, 40000),
            (Protocol::Tcp, 40002),
            (Protocol::Tcp, 40009),
            (Protocol::Udp, 51820),
        ];
        assert_eq!(
            port_ranges(&p),
            ["tcp/40000-40002", "tcp/40009", "udp/7447", "udp/51820"]
        );
    }
}
