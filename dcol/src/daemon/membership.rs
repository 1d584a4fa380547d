//! The daemon's part in the membership directory (join and leave). With
//! `option directory` set it runs the fetch [`Agent`] (a thread: nothing here
//! blocks the poll loop), hands each accepted snapshot's revocation list to
//! both roles (union with UCI `list revoked`: the waypoint ends a revoked
//! member's tunnels and refuses it from then on) and its members to the client
//! as peers (after the static `config peer` ones), and publishes this router's
//! record while the waypoint role is on: at start, hourly, and when the advert
//! changes. Membership toggled off (waypoint disabled, `enabled '0'` or the
//! directory option removed on reload, or a clean exit when the file on disk
//! says so) withdraws the record. A certificate in the last third of its
//! validity is renewed through the directory (when its server runs with
//! `--renew`): the new one is checked, written over `option cert` and taken
//! as on SIGHUP. While the owner's monthly donation is used up the record
//! is withdrawn too (members stop picking a waypoint that refuses), and
//! published again when it grants again.
//!
//! Directory peers are appended to the client core (running detours keep
//! their peer indices); when a peer in use leaves the directory the core is
//! rebuilt like for a changed static peer list (detours of running
//! connections are released).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use super::{client_core, client_settings, wall_ms, Daemon, DaemonError, Identity};
use crate::client::PeerSpec;
use crate::config::{self, Config, TunnelKind};
use crate::control::DirectoryStatus;
use crate::directory::agent::{self, Agent, AgentSettings, Report};
use crate::directory::{self as dir, renew, store};
use crate::directory::{Advert, Chosen, Record, Selection, Statement, Tunnels};
use crate::trust::{files, Certificate, MemberId, Revocations, SecretKey};

/// How often a published record is renewed (the directory drops records not
/// renewed within its record lifetime, 3 h by default).
const REPUBLISH: Duration = Duration::from_secs(3600);
/// Wait before asking again after a failed certificate renewal.
const RENEW_RETRY: Duration = Duration::from_secs(3600);
/// Time a withdrawal may take at exit.
const EXIT_WITHDRAW: Duration = Duration::from_secs(3);

/// The directory side of the daemon.
pub(super) struct Membership {
    agent: Agent,
    settings: AgentSettings,
    key: SecretKey,
    cert: Certificate,
    /// Public addresses learned by NAT traversal (published before the
    /// non-wildcard listen addresses unless `list advertise` is set).
    learned: Vec<SocketAddr>,
    /// The waypoint refuses new detours (this month's donation is used up).
    used_up: bool,
    /// The advert in force; `None`: this router does not publish.
    advert: Option<Advert>,
    /// A publishing record was posted and not withdrawn since.
    posted: bool,
    next_publish: Option<Instant>,
    last_seq: u64,
    /// A certificate renewal is asked and not answered yet.
    renewing: bool,
    /// No renewal is asked before then (after a refusal or failure).
    renew_wait: Instant,
    /// The peers picked from the snapshot in force.
    chosen: Vec<PeerSpec>,
    /// Directory peers in the client core (after the static peers): those
    /// chosen that are not static peers too.
    peers: Vec<PeerSpec>,
    /// The revocation list of the snapshot in force.
    revoked: BTreeSet<MemberId>,
    /// Members the waypoint core was told about.
    revoked_in_waypoint: BTreeSet<MemberId>,
    status: DirectoryStatus,
}

fn agent_settings(cfg: &Config, id: &Identity) -> Option<AgentSettings> {
    let d = &cfg.directory;
    Some(AgentSettings {
        snapshot: d.url.clone()?,
        publish: d.publish_url()?,
        interval: Duration::from_secs(u64::from(d.interval_s)),
        cache: d.cache.clone(),
        root: id.root,
        selection: Selection {
            own: id.cert.member,
            max_peers: d.max_peers as usize,
            vpn: d.tunnel == TunnelKind::Vpn,
        },
        revoked: id.revocations.clone(),
    })
}

/// What this router publishes, when its waypoint role is on and grants.
fn advert(cfg: &Config, learned: &[SocketAddr], used_up: bool) -> Option<Advert> {
    let w = &cfg.waypoint;
    if !w.enabled || used_up {
        return None;
    }
    let endpoints = dir::endpoints(&w.advertise, learned, &w.listen);
    if endpoints.is_empty() {
        log::warn!(
            "directory: no address to publish (the waypoint listens on wildcard addresses and \
             NAT traversal found no public one); 'list advertise' in the waypoint section sets it"
        );
        return None;
    }
    let mut tunnels = Tunnels::NAT;
    if w.vpn_subnet.is_some() {
        tunnels = Tunnels(tunnels.0 | Tunnels::VPN.0);
    }
    Some(Advert {
        endpoints,
        tunnels,
        donate_kbit: w.donate_kbit,
        software: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

impl Membership {
    /// Starts the agent when `option directory` is set.
    pub(super) fn start(cfg: &Config, id: &Identity) -> Result<Option<Membership>, DaemonError> {
        let Some(settings) = agent_settings(cfg, id) else {
            return Ok(None);
        };
        let agent = Agent::start(settings.clone()).map_err(super::io_err("directory thread"))?;
        log::info!(
            "directory: {} every {} s (cache {}), up to {} member(s) as waypoints",
            settings.snapshot,
            settings.interval.as_secs(),
            settings.cache.display(),
            settings.selection.max_peers
        );
        let advert = advert(cfg, &[], false);
        Ok(Some(Membership {
            agent,
            status: DirectoryStatus {
                url: settings.snapshot.to_string(),
                ..DirectoryStatus::default()
            },
            settings,
            key: id.key.clone(),
            cert: id.cert.clone(),
            learned: Vec::new(),
            used_up: false,
            next_publish: advert.as_ref().map(|_| Instant::now()),
            advert,
            posted: false,
            last_seq: 0,
            renewing: false,
            renew_wait: Instant::now(),
            chosen: Vec::new(),
            peers: Vec::new(),
            revoked: BTreeSet::new(),
            revoked_in_waypoint: BTreeSet::new(),
        }))
    }

    fn record(&mut self, statement: Statement) -> Vec<u8> {
        self.last_seq = wall_ms().max(self.last_seq.saturating_add(1));
        Record::sign(&self.key, self.cert.clone(), self.last_seq, statement).encode()
    }

    fn publish(&mut self) {
        if let Some(a) = self.advert.clone() {
            let b = self.record(Statement::Publish(a));
            self.agent.post(b, false);
            self.posted = true;
            self.next_publish = Some(Instant::now() + REPUBLISH);
        } else {
            self.next_publish = None;
        }
    }

    fn withdraw(&mut self) {
        if self.posted {
            log::info!("directory: withdrawing this router's record");
            let b = self.record(Statement::Withdraw);
            self.agent.post(b, true);
            self.posted = false;
        }
        self.next_publish = None;
    }

    /// Asks the directory for a new certificate when this one is in the
    /// last third of its validity.
    fn maybe_renew(&mut self) {
        let now_s = wall_ms() / 1000;
        if self.renewing || Instant::now() < self.renew_wait || !renew::due(&self.cert, now_s) {
            return;
        }
        log::info!(
            "directory: the certificate ends at {} (Unix s); asking the directory for a new one",
            self.cert.not_after
        );
        let req = renew::RenewalRequest::sign(&self.key, self.cert.clone(), wall_ms());
        self.agent.renew(req.encode());
        self.renewing = true;
    }

    /// Checks a renewed certificate from the directory: this member's key,
    /// this collective, valid now, later than the one in force.
    fn check_renewed(&self, text: &str) -> Result<Certificate, String> {
        let c = files::parse_certificate(std::path::Path::new("the directory's answer"), text)
            .map_err(|e| e.to_string())?;
        if c.key != self.key.public() {
            return Err("the directory's certificate is for another key".into());
        }
        c.verify(&self.settings.root, wall_ms() / 1000)
            .map_err(|e| format!("the directory's certificate: {e}"))?;
        if c.not_after <= self.cert.not_after {
            return Err(format!(
                "the directory's certificate ends at {}, not later than this one",
                c.not_after
            ));
        }
        Ok(c)
    }

    /// Revoked by the snapshot or locally (UCI `list revoked` and the
    /// revocation list file).
    fn union(&self, local: &Revocations) -> Revocations {
        let mut r = local.clone();
        for m in &self.revoked {
            r.insert(*m);
        }
        r
    }
}

impl Daemon {
    /// Readable when the agent has news.
    pub(super) fn membership_fd(&self) -> Option<BorrowedFd<'_>> {
        self.membership.as_ref().map(|m| m.agent.fd())
    }

    /// When the record is due for renewal.
    pub(super) fn membership_deadline(&self) -> Option<Instant> {
        self.membership.as_ref().and_then(|m| m.next_publish)
    }

    /// Public addresses learned by NAT traversal (STUN, UPnP): published
    /// (unless `list advertise` overrides them) from now on.
    pub(super) fn membership_learned(&mut self, addrs: Vec<SocketAddr>) {
        let Some(m) = self.membership.as_mut() else {
            return;
        };
        if m.learned == addrs {
            return;
        }
        m.learned = addrs;
        let a = advert(&self.cfg, &m.learned, m.used_up);
        if a != m.advert {
            m.advert = a;
            // No reachable address any more: withdraw rather than leave a
            // stale one listed until the record ages out.
            if m.advert.is_some() {
                m.publish();
            } else {
                m.withdraw();
            }
        }
    }

    /// The waypoint stopped or resumed granting (its owner's monthly
    /// donation): withdraws or publishes the record.
    pub(super) fn membership_used_up(&mut self, used_up: bool) {
        let Some(m) = self.membership.as_mut() else {
            return;
        };
        if m.used_up == used_up {
            return;
        }
        m.used_up = used_up;
        m.advert = advert(&self.cfg, &m.learned, used_up);
        if used_up {
            log::info!("directory: this month's donation is used up; withdrawing the record until the waypoint grants again");
            m.withdraw();
        } else if m.advert.is_some() {
            m.publish();
        }
    }

    /// Renews the record when due; applies the agent's reports.
    pub(super) fn step_membership(&mut self) {
        let Some(m) = self.membership.as_mut() else {
            return;
        };
        if m.next_publish.is_some_and(|t| t <= Instant::now()) {
            m.publish();
        }
        m.maybe_renew();
        let mut renewed = false;
        let mut chosen = None;
        let mut retry = false;
        for r in m.agent.reports() {
            let st = &mut m.status;
            match r {
                Report::Snapshot {
                    chosen: c,
                    from_cache,
                    at,
                } => {
                    if let Some(e) = &c.error {
                        log::warn!("directory: snapshot serial {}: {e}", c.serial);
                    }
                    log::info!(
                        "directory: snapshot serial {}{}: {} member(s), {} revoked, {} waypoint peer(s) picked",
                        c.serial,
                        if from_cache { " (cached)" } else { "" },
                        c.members,
                        c.revoked.len(),
                        c.peers.len()
                    );
                    st.last_fetch = Some(at);
                    st.last_result = Some(if from_cache { "cached" } else { "ok" }.into());
                    chosen = Some(c);
                }
                Report::Unchanged { at } => {
                    st.last_fetch = Some(at);
                    st.last_result = Some("not modified".into());
                }
                Report::FetchFailed { error, at } => {
                    log::error!("directory: {error}");
                    st.last_fetch = Some(at);
                    st.last_result = Some(error);
                }
                Report::Renewed { result, at: _ } => {
                    m.renewing = false;
                    let written = result.and_then(|text| {
                        let c = m.check_renewed(&text)?;
                        store::write_atomic(&self.cfg.main.cert, text.as_bytes(), 0o644)
                            .map_err(|e| format!("{}: {e}", self.cfg.main.cert.display()))?;
                        Ok(c)
                    });
                    match written {
                        Ok(c) => {
                            log::info!(
                                "directory: certificate renewed until {} (Unix s), written to {}",
                                c.not_after,
                                self.cfg.main.cert.display()
                            );
                            m.status.renewal =
                                Some(format!("renewed until {} (Unix s)", c.not_after));
                            renewed = true;
                        }
                        Err(e) => {
                            // A directory without --renew: ask daily, not hourly.
                            let wait = if e.contains("HTTP 404") {
                                RENEW_RETRY * 24
                            } else {
                                RENEW_RETRY
                            };
                            log::warn!(
                                "directory: certificate renewal: {e}; asking again in {} h",
                                wait.as_secs() / 3600
                            );
                            m.status.renewal = Some(e);
                            m.renew_wait = Instant::now() + wait;
                        }
                    }
                }
                Report::Posted {
                    withdraw,
                    result,
                    at,
                } => {
                    st.last_publish = Some(at);
                    match result {
                        Ok(text) => {
                            log::info!("directory: {text}");
                            st.published =
                                Some(if withdraw { "withdrawn" } else { "published" }.into());
                            st.publish_result = Some(text);
                        }
                        Err(e) => {
                            log::warn!("directory: posting the record: {e}");
                            st.publish_result = Some(e);
                            retry = !withdraw;
                        }
                    }
                }
            }
        }
        if retry && m.advert.is_some() {
            // Try again after one fetch interval rather than in an hour.
            m.next_publish = Some(Instant::now() + m.settings.interval);
        }
        if let Some(c) = chosen {
            self.apply_chosen(c);
        }
        if renewed {
            // As on SIGHUP: the new certificate goes to both roles and the
            // record, detours stay.
            self.reload();
        }
    }

    fn apply_chosen(&mut self, c: Chosen) {
        let Some(m) = self.membership.as_mut() else {
            return;
        };
        m.status.serial = Some(c.serial);
        m.status.issued = Some(c.issued);
        m.status.members = Some(c.members);
        m.status.revoked = c.revoked.len();
        // Inserted one by one: collecting into a set would add sort code.
        let mut revoked = BTreeSet::new();
        for member in c.revoked {
            revoked.insert(member);
        }
        let revocations_changed = revoked != m.revoked;
        m.revoked = revoked;
        m.chosen = c.peers;
        self.sync_peers();
        if revocations_changed {
            self.apply_revocations();
        }
    }

    /// Gives the client core the chosen directory peers.
    fn sync_peers(&mut self) {
        let Some(m) = self.membership.as_mut() else {
            return;
        };
        // Static peers come first and are not repeated.
        let fixed: Vec<(SocketAddr, bool)> = self
            .cfg
            .peers
            .iter()
            .map(|p| (p.address, p.tunnel == TunnelKind::Vpn))
            .collect();
        let new: Vec<PeerSpec> = m
            .chosen
            .iter()
            .filter(|p| !fixed.contains(&(p.address, p.vpn)))
            .cloned()
            .collect();
        let mut members: Vec<&str> = Vec::new();
        for p in &new {
            if !members.contains(&p.name.as_str()) {
                members.push(&p.name);
            }
        }
        m.status.peers = members.len();
        let Some(c) = self.client.as_mut() else {
            m.peers = new;
            return;
        };
        let kind = |p: &PeerSpec| {
            if p.vpn {
                TunnelKind::Vpn
            } else {
                TunnelKind::Nat
            }
        };
        let statics = self.cfg.peers.len();
        // A core made afresh (start, reload) holds the static peers only.
        let in_core: &[PeerSpec] = if c.tunnels.len() == statics {
            &[]
        } else {
            &m.peers
        };
        if in_core == new.as_slice() {
            m.peers = new;
            return;
        }
        if in_core.iter().all(|p| new.contains(p)) {
            let added: Vec<PeerSpec> = new
                .iter()
                .filter(|p| !in_core.contains(p))
                .cloned()
                .collect();
            log::info!(
                "directory: {} new waypoint peer(s): {}",
                added.len(),
                names(&added)
            );
            let mut order = in_core.to_vec();
            order.extend(added.iter().cloned());
            c.tunnels.extend(added.iter().map(kind));
            c.core.add_peers(added);
            m.peers = order;
            return;
        }
        // A peer in use left: rebuild the core with the new list.
        log::info!(
            "directory: waypoint peers now {} (detours of running connections released)",
            names(&new)
        );
        let id = Identity {
            cert: self.cert.clone(),
            key: m.key.clone(),
            root: self.root,
            revocations: m.union(&self.revocations),
            rev_serial: self.rev_serial,
        };
        match client_core(&self.cfg, &id) {
            Ok((mut core, mut tunnels)) => {
                c.release_all();
                tunnels.extend(new.iter().map(kind));
                core.add_peers(new.clone());
                c.core = core;
                c.tunnels = tunnels;
                m.peers = new;
            }
            Err(e) => log::error!("directory: rebuilding the client's peers: {e}"),
        }
    }

    /// Hands the union of the snapshot's and UCI's revocations to both roles.
    fn apply_revocations(&mut self) {
        let Some(m) = self.membership.as_mut() else {
            return;
        };
        let union = m.union(&self.revocations);
        if let Some(c) = self.client.as_mut() {
            c.core.reconfigure(
                client_settings(&self.cfg),
                self.cert.clone(),
                m.key.clone(),
                union,
            );
        }
        if let Some(w) = self.waypoint.as_mut() {
            let now = Instant::now();
            for member in &m.revoked {
                if m.revoked_in_waypoint.insert(*member) {
                    let ended = w.core.revoke(now, *member);
                    if !ended.is_empty() || w.core.vpn_leases().any(|l| l.member == *member) {
                        log::info!("directory: member {member} is revoked; its tunnels end now");
                    }
                    w.end_leases(&ended);
                }
            }
            w.expire_vpn(now);
        }
    }

    /// After a reload (`self.cfg` is the new configuration, `old` the
    /// previous one): starts, reconfigures or stops the directory side,
    /// publishing or withdrawing as the waypoint role and the options say.
    pub(super) fn reload_membership(&mut self, old: &Config, key: &SecretKey) {
        let id = Identity {
            cert: self.cert.clone(),
            key: key.clone(),
            root: self.root,
            revocations: self.revocations.clone(),
            rev_serial: self.rev_serial,
        };
        let Some(settings) = agent_settings(&self.cfg, &id) else {
            if let Some(mut m) = self.membership.take() {
                // The agent posts the withdrawal before it stops.
                m.withdraw();
                log::info!("directory: option directory removed");
            }
            return;
        };
        let Some(m) = self.membership.as_mut() else {
            match Membership::start(&self.cfg, &id) {
                Ok(m) => self.membership = m,
                Err(e) => log::error!("directory: {e}"),
            }
            return;
        };
        let identity_changed = m.cert != self.cert || m.key.public() != key.public();
        m.cert = self.cert.clone();
        m.key = key.clone();
        if settings != m.settings {
            m.status.url = settings.snapshot.to_string();
            m.agent.set(settings.clone());
            m.settings = settings;
        }
        let a = advert(&self.cfg, &m.learned, m.used_up);
        match (&a, m.posted) {
            (None, true) => {
                m.advert = None;
                m.withdraw();
            }
            (Some(_), _) if a != m.advert || identity_changed || !m.posted => {
                m.advert = a;
                m.publish();
            }
            _ => {}
        }
        // The roles may have been rebuilt or reconfigured with the UCI
        // revocations only: give them the directory's again.
        m.revoked_in_waypoint.clear();
        if old.peers != self.cfg.peers {
            log::debug!("directory: static peers changed; directory peers follow them");
        }
        self.sync_peers();
        self.apply_revocations();
    }

    /// At exit: withdraws the record when the file on disk says membership
    /// is off (waypoint disabled, `enabled '0'`, no directory), within
    /// [`EXIT_WITHDRAW`].
    pub(super) fn stop_membership(&mut self) {
        let Some(mut m) = self.membership.take() else {
            return;
        };
        if !m.posted {
            return;
        }
        let off = match config::load(&self.path) {
            Ok(c) => !c.main.enabled || !c.waypoint.enabled || c.directory.url.is_none(),
            Err(_) => false,
        };
        if !off {
            return;
        }
        let bytes = m.record(Statement::Withdraw);
        match agent::post_record(&m.settings.publish, &bytes, EXIT_WITHDRAW) {
            Ok(text) => log::info!("directory: membership off: {text}"),
            Err(e) => log::warn!("directory: membership off, but the withdrawal failed: {e}"),
        }
    }

    /// The status object.
    pub(super) fn membership_status(&self) -> Option<DirectoryStatus> {
        self.membership.as_ref().map(|m| m.status.clone())
    }
}

fn names(peers: &[PeerSpec]) -> String {
    let v: Vec<String> = peers
        .iter()
        .map(|p| format!("{} {}", p.name, p.address))
        .collect();
    v.join(", ")
}
