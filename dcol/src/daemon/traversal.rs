//! The daemon's part in NAT traversal: with the waypoint role on and UPnP or
//! STUN configured it runs the [`Traversal`] thread, logs what each pass
//! found, shows it in `dcol status` and hands the public address to the
//! membership directory (published unless `list advertise` overrides it).
//! At exit, or when the settings change on reload, the mappings are deleted
//! from the gateway (at most [`STOP_WAIT`]; what is left is recorded in
//! `state_dir/port-mappings` and deleted at the next start, or ends with
//! its lease).

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Daemon;
use crate::config::Config;
use crate::control::TraversalStatus;
use crate::traversal::{self, Outcome, Protocol, Settings, Traversal};

/// Time allowed for deleting the mappings.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The traversal side of the daemon.
pub(super) struct NatTraversal {
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
        errors: o.errors.clone(),
        last_pass: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok(),
        public6: o.public6.map(|a| a.to_string()),
        pinholes: port_ranges(&o.pinholes),
    }
}

impl NatTraversal {
    fn start(s: Settings) -> Option<NatTraversal> {
        log::info!(
            "traversal: UPnP {}, {} STUN server(s), {} port(s) to map, {} IPv6 pinhole(s)",
            if s.upnp { "on" } else { "off" },
            s.stun.len(),
            s.ports.len(),
            s.pinholes.len()
        );
        match Traversal::start(s) {
            Ok(thread) => Some(NatTraversal {
                thread,
                status: TraversalStatus::default(),
            }),
            Err(e) => {
                log::error!("traversal: cannot start its thread: {e}");
                None
            }
        }
    }

    fn stop(self) {
        if !self.thread.stop(STOP_WAIT) {
            log::warn!(
                "traversal: the gateway did not answer in time; mappings end with their lease"
            );
        }
    }
}

impl Daemon {
    /// Starts traversal if the configuration asks for it. Otherwise the
    /// mappings an earlier run left (it crashed) are deleted in the
    /// background; with traversal on, its thread does that first.
    pub(super) fn start_traversal(cfg: &Config) -> Option<NatTraversal> {
        let s = settings(cfg);
        let path = record_path(cfg);
        if s.is_none() && path.exists() {
            let spawned = std::thread::Builder::new()
                .name("dcol-leftovers".into())
                .spawn(move || traversal::delete_leftovers(&path));
            if let Err(e) = spawned {
                log::warn!("traversal: cannot delete the mappings left by an earlier run: {e}");
            }
        }
        s.and_then(NatTraversal::start)
    }

    /// Readable when a pass finished.
    pub(super) fn traversal_fd(&self) -> Option<RawFd> {
        self.traversal.as_ref().map(|t| t.thread.fd())
    }

    /// Applies finished passes.
    pub(super) fn step_traversal(&mut self) {
        let Some(t) = self.traversal.as_mut() else {
            return;
        };
        let outcomes = t.thread.outcomes();
        let Some(o) = outcomes.last() else {
            return;
        };
        let s = status_of(o);
        for e in &s.errors {
            log::warn!("traversal: {e}");
        }
        if (&s.public6, &s.pinholes) != (&t.status.public6, &t.status.pinholes) {
            match &s.public6 {
                Some(p) => log::info!(
                    "traversal: reachable over IPv6 at {p} (pinholes {})",
                    s.pinholes.join(", ")
                ),
                None if !t.status.pinholes.is_empty() => {
                    log::warn!("traversal: the IPv6 pinholes are gone")
                }
                None => {}
            }
        }
        if (&s.public, &s.mapping, &s.mapped)
            != (&t.status.public, &t.status.mapping, &t.status.mapped)
        {
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
        let learned: Vec<SocketAddr> = o.public.into_iter().chain(o.public6).collect();
        // The client's first guess of the address waypoints see (issue 14).
        if let Some(c) = self.client.as_mut() {
            let public = o.stun_seen.first().map(SocketAddr::ip).or(o.external_ip);
            c.core.set_public_address(public);
        }
        t.status = s;
        self.membership_learned(learned);
    }

    /// After a reload: restarts traversal when its settings changed.
    pub(super) fn reload_traversal(&mut self) -> Option<String> {
        let new = settings(&self.cfg);
        if new.as_ref() == self.traversal.as_ref().map(|t| t.thread.settings()) {
            return None;
        }
        if let Some(t) = self.traversal.take() {
            t.stop();
        }
        self.traversal = new.and_then(NatTraversal::start);
        if self.traversal.is_none() {
            self.membership_learned(Vec::new());
        }
        Some(format!(
            "NAT traversal {}",
            if self.traversal.is_some() {
                "restarted"
            } else {
                "off"
            }
        ))
    }

    /// At exit: deletes the mappings.
    pub(super) fn stop_traversal(&mut self) {
        if let Some(t) = self.traversal.take() {
            t.stop();
        }
    }

    /// For `dcol status`.
    pub(super) fn traversal_status(&self) -> Option<TraversalStatus> {
        self.traversal.as_ref().map(|t| t.status.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
