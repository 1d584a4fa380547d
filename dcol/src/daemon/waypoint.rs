//! The waypoint role's driver: the signaling sockets, the pure
//! [`Waypoint`] core, and the kernel state its decisions make: the NAT
//! table's elements and their conntrack flows ([`nat`]), the WireGuard
//! interface and its firewall ([`vpn`]), the donation caps and the month's
//! count ([`donation`]), and the evidence log.
//!
//! Dropping the driver removes its tables, interface and flows, also when
//! it fails half-way through starting. A crashed run's NAT table is found
//! at start, its flows deleted and the table replaced.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use super::driver::{Ctx, Driver, Event, Outbox, Role};
use super::identity::Identity;
use super::plan::WaypointChange;
use super::{io_err, wall_ms, DaemonError};
use crate::config::Config;
use crate::control::{self, Status};
use crate::loglimit::LogLimit;
use crate::routes::Routes;
use crate::sys::conntrack::{self, BatchId, Cleaner};
use crate::sys::nft::{NatTable, DETOUR_CT_MARK};
use crate::sys::os;
use crate::sys::sysctl::{self, SysctlGuard};
use crate::sys::vpnfw::VpnFirewall;
use crate::sys::wg::WgDevice;
use crate::sys::SysError;
use crate::trust::{self, MemberId, Revocations};
use crate::waypoint::evidence::{self, EvidenceLog};
use crate::waypoint::{self, Lease, Waypoint};

mod convert;
mod donation;
mod nat;
mod vpn;

use convert::ConvertRole;
use donation::Donated;

/// Datagrams a waypoint socket is read for per turn of the event loop.
const DATAGRAMS_PER_TURN: usize = 64;

/// Receive buffer of a waypoint's signaling socket: about a thousand
/// request-sized datagrams, a few milliseconds of a one-sender flood.
const SIGNAL_RCVBUF: usize = 2 << 20;

/// The waypoint role.
pub(super) struct WaypointDriver {
    core: Waypoint,
    sockets: Vec<UdpSocket>,
    nat: Option<NatTable>,
    log: LogLimit,
    /// VPN tunnels: the WireGuard interface and its firewall table.
    wg: Option<WgDevice>,
    vpnfw: Option<VpnFirewall>,
    /// The WAN interfaces the NAT and VPN tables let detours leave by.
    wan: Vec<String>,
    /// The donation caps in force and the month's count.
    donation: Donated,
    /// Granted requests, kept as attribution evidence.
    evidence: Option<EvidenceLog>,
    /// Buffers for reading the signaling sockets, [`DATAGRAMS_PER_TURN`] at a time.
    batch: os::RecvBatch,
    /// Log lines about the kernel's drop list (apart from refusals').
    filter_log: LogLimit,
    /// Members the directory revokes (with the identity's own revocations).
    dir_revoked: BTreeSet<MemberId>,
    /// Whether the others were last told the donation is used up.
    told_used_up: Option<bool>,
    /// The converter (`option convert '1'`).
    convert: Option<ConvertRole>,
    /// NAT leases ended in this loop turn, and why: their conntrack flows
    /// are handed to the cleaner together at its end
    /// ([`WaypointDriver::flush_ended`]).
    ended: Vec<(Lease, String)>,
    /// Deletes the conntrack flows of ended tunnels on its own thread (a
    /// dump takes 10 ms and more: never on the loop thread).
    cleaner: Option<Cleaner>,
    /// The batches handed to the cleaner: when they ended (wall clock,
    /// for the evidence), the leases and why.
    ending: BTreeMap<BatchId, (u64, Vec<(Lease, String)>)>,
}

/// Binds the signaling sockets.
fn bind_signaling(listen: &[SocketAddr]) -> Result<Vec<UdpSocket>, DaemonError> {
    let mut sockets = Vec::new();
    for addr in listen {
        let s = os::bind_udp(*addr).map_err(io_err(format!("waypoint: bind {addr}")))?;
        if let Err(e) = os::set_recv_buffer(&s, SIGNAL_RCVBUF) {
            log::warn!("waypoint: receive buffer of {addr}: {e}");
        }
        sockets.push(s);
    }
    Ok(sockets)
}

/// Sysctls the role needs: forwarding (a host serving as waypoint gets it
/// on for the daemon's lifetime) and conntrack's byte counters for the
/// evidence log.
fn set_sysctls(cfg: &Config, sysctls: &mut SysctlGuard) -> Result<(), DaemonError> {
    let w = &cfg.waypoint;
    for (path, v4) in [(sysctl::IPV4_FORWARD, true), (sysctl::IPV6_FORWARD, false)] {
        if w.listen.iter().any(|l| l.is_ipv4() == v4) && sysctl::read(path)? == "0" {
            log::warn!("enabling {path} for the waypoint role (restored on exit)");
            sysctls.set(path, "1")?;
        }
    }
    if w.evidence_max_kb > 0 && sysctl::read(sysctl::CONNTRACK_ACCT).is_ok_and(|v| v == "0") {
        log::info!(
            "enabling {} for the evidence log (restored on exit)",
            sysctl::CONNTRACK_ACCT
        );
        sysctls.set(sysctl::CONNTRACK_ACCT, "1")?;
    }
    Ok(())
}

/// The NAT table, made anew; the tunnels a crashed run left are revoked.
fn nat_table(cfg: &Config) -> Result<NatTable, DaemonError> {
    let w = &cfg.waypoint;
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
    Ok(nat)
}

/// The core's settings from `cfg`.
fn settings(cfg: &Config, id: &Identity) -> waypoint::Settings {
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

/// The identity's revocations and the directory's.
fn union(local: &Revocations, dir: &BTreeSet<MemberId>) -> Revocations {
    let mut r = local.clone();
    for m in dir {
        r.insert(*m);
    }
    r
}

impl WaypointDriver {
    fn start(ctx: &mut Ctx<'_>, out: &mut Outbox) -> Result<WaypointDriver, DaemonError> {
        let (cfg, id) = (ctx.cfg, ctx.id);
        let w = &cfg.waypoint;
        if !id.cert.roles.contains(trust::Roles::WAYPOINT) {
            return Err(DaemonError::Config(format!(
                "{}: the certificate lacks the waypoint role, but the waypoint section is enabled",
                cfg.main.cert.display()
            )));
        }
        let sockets = bind_signaling(&w.listen)?;
        set_sysctls(cfg, ctx.sysctls)?;
        let nat = nat_table(cfg)?;
        let core = Waypoint::new(
            settings(cfg, id),
            id.cert.clone(),
            id.key.clone(),
            id.root,
            id.revocations.clone(),
            ctx.routes.clone(),
        );
        // From here on, Drop removes what was made if a later step fails.
        let mut role = WaypointDriver {
            core,
            sockets,
            nat: Some(nat),
            log: LogLimit::new(20),
            wg: None,
            vpnfw: None,
            wan: Vec::new(),
            donation: Donated::new(cfg),
            evidence: open_evidence(cfg),
            batch: os::RecvBatch::new(DATAGRAMS_PER_TURN),
            filter_log: LogLimit::new(2),
            dir_revoked: BTreeSet::new(),
            told_used_up: None,
            convert: None,
            ended: Vec::new(),
            // Only the flows our NAT table marked are dumped.
            cleaner: Some(Cleaner::start(Some(DETOUR_CT_MARK))?),
            ending: BTreeMap::new(),
        };
        role.seed_evidence();
        role.set_caps(w.donate_kbit, w.donate_monthly_bytes)?;
        role.set_wan(&ctx.routes.wan())?;
        if w.vpn_subnet.is_some() {
            role.start_vpn(cfg, id)?;
        }
        if w.convert {
            let cv = ConvertRole::start(cfg, id, &role.dir_revoked, ctx.routes, ctx.sysctls)?;
            role.convert = Some(cv);
        }
        log::info!(
            "waypoint: NAT tunnels on ports {}-{}, signaling on {:?}",
            w.nat_ports.0,
            w.nat_ports.1,
            w.listen
        );
        role.tell_used_up(out);
        Ok(role)
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

    /// A new routing snapshot: the destination policy and the WAN follow it.
    fn set_routes(&mut self, routes: &Routes) {
        self.core.set_routes(routes.clone());
        if let Some(cv) = self.convert.as_mut() {
            cv.set_routes(routes);
        }
        if let Err(e) = self.set_wan(&routes.wan()) {
            log::error!("waypoint: WAN interfaces {:?}: {e}", routes.wan());
        }
    }

    /// Ends the tunnels of members the directory newly revokes.
    fn directory_revoked(&mut self, revoked: &BTreeSet<MemberId>, now: Instant) {
        for member in revoked {
            if self.dir_revoked.contains(member) {
                continue;
            }
            let ended = self.core.revoke(now, *member);
            if !ended.is_empty() || self.core.vpn_leases().any(|l| l.member == *member) {
                log::info!("directory: member {member} is revoked; its tunnels end now");
            }
            self.end_leases(&ended);
        }
        self.expire_vpn(now);
        if let Some(cv) = self.convert.as_mut() {
            cv.set_revoked(revoked);
        }
        self.dir_revoked.clone_from(revoked);
    }

    /// Tells the other drivers when the month's donation is used up, or
    /// when the waypoint grants again.
    fn tell_used_up(&mut self, out: &mut Outbox) {
        let used_up = self.core.used_up().is_some();
        if self.told_used_up != Some(used_up) {
            self.told_used_up = Some(used_up);
            out.event(Event::DonationUsedUp(used_up));
        }
    }

    /// One batch of datagrams from socket `i`: under a flood the loop goes
    /// back to poll, and the other sockets, timers and the LAN proxy get
    /// their turn.
    fn read_socket(&mut self, i: usize) {
        let mut batch = std::mem::take(&mut self.batch);
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
            self.refresh_quota(now);
            let d = self.core.handle(now, wall, from, dgram);
            self.execute(i, now, wall, from, d, dgram);
        }
        self.batch = batch;
    }

    /// What is due: the kernel's drop list, expired leases, the quota, the
    /// converter's connections.
    fn turn(&mut self, now: Instant, out: &mut Outbox) {
        self.convert_turn(now);
        self.filter_sources(now);
        for l in self.core.expire(now) {
            self.end_lease(&l, "lease expired");
        }
        for (l, _) in self.core.take_pruned() {
            self.share_ended(&l, "share expired");
        }
        self.flush_ended();
        self.expire_vpn(now);
        self.check_quota(now);
        self.tell_used_up(out);
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

    fn send(&self, i: usize, to: SocketAddr, bytes: &[u8]) {
        if let Err(e) = self.sockets[i].send_to(bytes, to) {
            log::debug!("waypoint: send to {to}: {e}");
        }
    }

    /// Counts the evidence already kept against the members' shares.
    fn seed_evidence(&mut self) {
        if let Some(log) = &self.evidence {
            let (records, _) = log.records();
            self.core.seed_evidence(&records);
        }
    }

    /// Keeps a granted request as evidence (see `waypoint::evidence`).
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

    /// The `waypoint` part of `dcol status`.
    fn status_doc(&self, now: Instant) -> control::WaypointStatus {
        let grants = self
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
                holders: l.holders.len(),
            })
            .collect();
        let st = self.core.stats();
        let caps = self.donation.caps();
        control::WaypointStatus {
            listen: self
                .sockets
                .iter()
                .filter_map(|s| s.local_addr().ok())
                .map(|a| a.to_string())
                .collect(),
            grants,
            datagrams: st.datagrams,
            granted: st.granted,
            refused: st.refused.clone(),
            donate_kbit: caps.kbit,
            donate_monthly_bytes: caps.month_bytes,
            donated_month_bytes: caps.used,
            refusing: self.core.used_up().map(str::to_owned),
            vpn_peers: self.vpn_status(now),
            converter: self.convert.as_ref().map(|c| c.status(now)),
            ending_tunnels: self.cleaner.as_ref().map_or(0, Cleaner::pending),
        }
    }
}

impl Driver for WaypointDriver {
    fn fds<'a>(&'a self, out: &mut Vec<BorrowedFd<'a>>) {
        out.extend(self.sockets.iter().map(|s| s.as_fd()));
        out.extend(self.convert.as_ref().map(ConvertRole::fd));
        out.extend(self.cleaner.as_ref().map(Cleaner::fd));
    }

    fn deadline(&self, _now: Instant) -> Option<Instant> {
        let convert = self.convert.as_ref().and_then(ConvertRole::deadline);
        let t = super::driver::earliest(self.core.next_timeout(), self.donation.deadline());
        super::driver::earliest(t, convert)
    }

    /// One batch of the socket's datagrams (each handled at its own time),
    /// then what is due.
    fn on_ready(&mut self, fd: RawFd, _now: Instant, out: &mut Outbox) {
        if let Some(i) = self.sockets.iter().position(|s| s.as_raw_fd() == fd) {
            self.read_socket(i);
        }
        if self.cleaner.as_ref().map(|c| c.fd().as_raw_fd()) == Some(fd) {
            self.cleaned();
        }
        self.turn(Instant::now(), out);
    }

    fn on_timeout(&mut self, now: Instant, out: &mut Outbox) {
        self.turn(now, out);
    }

    fn on_event(&mut self, ev: &Event, now: Instant, _out: &mut Outbox) {
        match ev {
            Event::Routes(r) => self.set_routes(r),
            Event::DirectoryRevoked(r) => self.directory_revoked(r, now),
            _ => {}
        }
    }

    fn status(&self, now: Instant, doc: &mut Status) {
        doc.waypoint = Some(self.status_doc(now));
    }
}

impl Role for WaypointDriver {
    type Change = WaypointChange;
    const NAME: &'static str = "waypoint";
    const STOPPED: &'static str = "waypoint stopped (tunnels revoked)";
    const STARTED: &'static str = "waypoint started";
    const RESTARTED: &'static str = "waypoint stopped (tunnels revoked); waypoint started";

    fn start(ctx: &mut Ctx<'_>, out: &mut Outbox) -> Result<Option<Self>, DaemonError> {
        WaypointDriver::start(ctx, out).map(Some)
    }

    /// Live tunnels are kept; a newly revoked member's end now.
    fn reconfigure(
        &mut self,
        change: &WaypointChange,
        ctx: &mut Ctx<'_>,
        out: &mut Outbox,
    ) -> Result<Vec<String>, DaemonError> {
        let (cfg, id) = (ctx.cfg, ctx.id);
        let now = Instant::now();
        let mut changes = Vec::new();
        let ended = self.core.reconfigure(
            now,
            settings(cfg, id),
            id.cert.clone(),
            id.key.clone(),
            union(&id.revocations, &self.dir_revoked),
        );
        self.end_leases(&ended);
        self.expire_vpn(now);
        if change.evidence {
            self.evidence = open_evidence(cfg);
            self.seed_evidence();
            changes.push("evidence log".to_owned());
        }
        self.donation.set_file(&cfg.waypoint.donation_file);
        if change.caps {
            // A failure changes nothing (one nft transaction): the caps in
            // force stay, and the waypoint keeps serving.
            let w = &cfg.waypoint;
            match self.set_caps(w.donate_kbit, w.donate_monthly_bytes) {
                Ok(()) => changes.push("donation caps".to_owned()),
                Err(e) => log::error!(
                    "reload: donation caps: {e}; the caps in force stay (dcol status shows them)"
                ),
            }
        }
        self.tell_used_up(out);
        if change.vpn_policy {
            if let Some(fw) = self.vpnfw.as_mut() {
                match fw.set_policy(&vpn::policy(&cfg.waypoint)) {
                    Ok(()) => changes.push("VPN destination rules".to_owned()),
                    Err(e) => {
                        log::error!("reload: VPN destination rules: {e}; the rules in force stay")
                    }
                }
            }
        }
        if change.listen {
            self.sockets = bind_signaling(&cfg.waypoint.listen)?;
        }
        self.reconfigure_convert(ctx, &mut changes)?;
        changes.push("waypoint settings".to_owned());
        Ok(changes)
    }

    fn stop(self, _out: &mut Outbox) {
        drop(self);
    }

    /// No waypoint: nothing refused for a used-up donation.
    fn off(out: &mut Outbox) {
        out.event(Event::DonationUsedUp(false));
    }
}

impl Drop for WaypointDriver {
    /// Removes the NAT table and the conntrack flows of every live tunnel, also
    /// when the daemon fails half-way through starting.
    fn drop(&mut self) {
        if let Some(mut cv) = self.convert.take() {
            let ended = cv.close_all();
            self.convert_events(Instant::now(), ended);
        }
        self.flush_ended();
        // The flows of the tunnels ended so far, deleted before the table
        // goes (the thread ends after them).
        if let Some(c) = self.cleaner.take() {
            for done in c.finish() {
                self.record_cleaned(done);
            }
        }
        let tunnels: Vec<(IpAddr, u16)> = self.core.leases().map(|l| (l.client, l.port)).collect();
        self.save_at_exit();
        if let Some(nat) = self.nat.take() {
            if let Err(e) = nat.destroy() {
                log::error!("removing the NAT table: {e}");
            }
        }
        self.stop_vpn();
        // After the table: no new flow can start through a tunnel meanwhile.
        match conntrack::delete_many(&tunnels) {
            Ok(n) => log::info!("revoked {} tunnel(s), {n} conntrack flow(s)", tunnels.len()),
            Err(e) => log::warn!("conntrack cleanup: {e}"),
        }
    }
}
