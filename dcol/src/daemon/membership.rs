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
//! The snapshot's peers and revocations go to the roles as events
//! ([`Event::DirectoryPeers`], [`Event::DirectoryRevoked`]); the waypoint's
//! used-up donation ([`Event::DonationUsedUp`]) and NAT traversal's public
//! addresses ([`Event::Reachable`]) come in as events. A renewed
//! certificate reloads the daemon ([`Command::Reload`]).

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::driver::{earliest, Command, Ctx, Driver, Event, Outbox, Role};
use super::identity::Identity;
use super::{wall_ms, DaemonError};
use crate::client::PeerSpec;
use crate::config::{self, Config, PeerConfig};
use crate::control::{DirectoryStatus, Status};
use crate::directory::agent::{self, Agent, AgentSettings, PostError, Report};
use crate::directory::{self as dir, renew, store};
use crate::directory::{Advert, Chosen, Record, Selection, Statement, Tunnels};
use crate::trust::files::{self, FileError};
use crate::trust::{Certificate, MemberId, SecretKey, TrustError};
use crate::types::TunnelKind;

/// How often a published record is renewed (the directory drops records not
/// renewed within its record lifetime, 3 h by default).
const REPUBLISH: Duration = Duration::from_secs(3600);
/// Wait before asking again after a failed certificate renewal.
const RENEW_RETRY: Duration = Duration::from_secs(3600);
/// Time a withdrawal may take at exit.
const EXIT_WITHDRAW: Duration = Duration::from_secs(3);

/// The directory side of the daemon.
pub(super) struct MembershipDriver {
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
    /// The revocation list of the snapshot in force.
    revoked: BTreeSet<MemberId>,
    status: DirectoryStatus,
    /// The configuration in force (what to publish, where the certificate
    /// is, the static peers).
    cfg: Config,
}

/// The peers of `chosen` that are not static peers too (those come first in
/// the client, and are not repeated).
pub(super) fn directory_only(chosen: &[PeerSpec], statics: &[PeerConfig]) -> Vec<PeerSpec> {
    chosen
        .iter()
        .filter(|p| {
            !statics
                .iter()
                .any(|s| s.address == p.address && (s.tunnel == TunnelKind::Vpn) == p.vpn)
        })
        .cloned()
        .collect()
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
    // Members reach a converter on TCP at the published endpoint.
    if w.convert && endpoints.iter().all(|e| e.port() == w.convert_port) {
        tunnels = Tunnels(tunnels.0 | Tunnels::CONVERT.0);
    } else if w.convert {
        log::warn!(
            "directory: the converter is not published: its port {} is not the signaling endpoints' port",
            w.convert_port
        );
    }
    Some(Advert {
        endpoints,
        tunnels,
        donate_kbit: w.donate_kbit,
        software: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

impl MembershipDriver {
    /// Starts the agent when `option directory` is set.
    fn start(cfg: &Config, id: &Identity) -> Result<Option<MembershipDriver>, DaemonError> {
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
        Ok(Some(MembershipDriver {
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
            revoked: BTreeSet::new(),
            cfg: cfg.clone(),
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

    /// When the certificate is next due for renewal (in its last third),
    /// unless a renewal is asked already.
    fn renew_deadline(&self, now: Instant) -> Option<Instant> {
        if self.renewing {
            return None;
        }
        // One second past the start of the last third: due by then.
        let due_s = renew::due_from(&self.cert).saturating_add(1);
        let wait = Duration::from_secs(due_s.saturating_sub(wall_ms() / 1000));
        Some((now + wait).max(self.renew_wait))
    }

    /// Asks the directory for a new certificate when this one is in the
    /// last third of its validity.
    fn maybe_renew(&mut self, now: Instant) {
        let now_s = wall_ms() / 1000;
        if self.renewing || now < self.renew_wait || !renew::due(&self.cert, now_s) {
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
    fn check_renewed(&self, text: &str) -> Result<Certificate, RenewalError> {
        let c = files::parse_certificate(Path::new("the directory's answer"), text)
            .map_err(RenewalError::Unreadable)?;
        if c.key != self.key.public() {
            return Err(RenewalError::OtherKey);
        }
        c.verify(&self.settings.root, wall_ms() / 1000)
            .map_err(RenewalError::Invalid)?;
        if c.not_after <= self.cert.not_after {
            return Err(RenewalError::NotLater(c.not_after));
        }
        Ok(c)
    }

    /// Public addresses learned by NAT traversal (STUN, UPnP): published
    /// (unless `list advertise` overrides them) from now on.
    fn learned(&mut self, addrs: &[SocketAddr]) {
        if self.learned == addrs {
            return;
        }
        self.learned = addrs.to_vec();
        let a = advert(&self.cfg, &self.learned, self.used_up);
        if a != self.advert {
            self.advert = a;
            // No reachable address any more: withdraw rather than leave a
            // stale one listed until the record ages out.
            if self.advert.is_some() {
                self.publish();
            } else {
                self.withdraw();
            }
        }
    }

    /// The waypoint stopped or resumed granting (its owner's monthly
    /// donation): withdraws or publishes the record.
    fn used_up(&mut self, used_up: bool) {
        if self.used_up == used_up {
            return;
        }
        self.used_up = used_up;
        self.advert = advert(&self.cfg, &self.learned, used_up);
        if used_up {
            log::info!("directory: this month's donation is used up; withdrawing the record until the waypoint grants again");
            self.withdraw();
        } else if self.advert.is_some() {
            self.publish();
        }
    }

    /// Renews the record when due; applies the agent's reports.
    fn turn(&mut self, now: Instant, out: &mut Outbox) {
        if self.next_publish.is_some_and(|t| t <= now) {
            self.publish();
        }
        self.maybe_renew(now);
        let mut retry = false;
        for r in self.agent.reports() {
            retry |= self.report(r, out);
        }
        if retry && self.advert.is_some() {
            // Try again after one fetch interval rather than in an hour.
            self.next_publish = Some(Instant::now() + self.settings.interval);
        }
    }

    /// Applies one of the agent's reports; true when a post failed.
    fn report(&mut self, r: Report, out: &mut Outbox) -> bool {
        let st = &mut self.status;
        match r {
            Report::Snapshot {
                chosen,
                from_cache,
                at,
            } => {
                if let Some(e) = &chosen.error {
                    log::warn!("directory: snapshot serial {}: {e}", chosen.serial);
                }
                log::info!(
                    "directory: snapshot serial {}{}: {} member(s), {} revoked, {} waypoint peer(s) picked",
                    chosen.serial,
                    if from_cache { " (cached)" } else { "" },
                    chosen.members,
                    chosen.revoked.len(),
                    chosen.peers.len()
                );
                st.last_fetch = Some(at);
                st.last_result = Some(if from_cache { "cached" } else { "ok" }.into());
                self.apply_chosen(chosen, out);
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
            Report::Renewed { result, at: _ } => self.renewed(result, out),
            Report::Posted {
                withdraw,
                result,
                at,
            } => return self.posted(withdraw, result, at),
        }
        false
    }

    /// The directory's answer to a renewal: a good certificate is written
    /// over `option cert` and taken as on SIGHUP (detours stay).
    fn renewed(&mut self, result: Result<String, PostError>, out: &mut Outbox) {
        self.renewing = false;
        let path = self.cfg.main.cert.clone();
        let written = result.map_err(RenewalError::Post).and_then(|text| {
            let c = self.check_renewed(&text)?;
            store::write_atomic(&path, text.as_bytes(), 0o644).map_err(|source| {
                RenewalError::Write {
                    path: path.clone(),
                    source,
                }
            })?;
            Ok(c)
        });
        match written {
            Ok(c) => {
                log::info!(
                    "directory: certificate renewed until {} (Unix s), written to {}",
                    c.not_after,
                    path.display()
                );
                self.status.renewal = Some(format!("renewed until {} (Unix s)", c.not_after));
                // Not due any more, and the record carries it from now on;
                // the reload gives it to the roles.
                self.cert = c;
                if self.advert.is_some() {
                    self.publish();
                }
                out.command(Command::Reload);
            }
            Err(e) => {
                // A directory without --renew: ask daily, not hourly.
                let wait = if matches!(e, RenewalError::Post(PostError::Status { status: 404, .. }))
                {
                    RENEW_RETRY * 24
                } else {
                    RENEW_RETRY
                };
                log::warn!(
                    "directory: certificate renewal: {e}; asking again in {} h",
                    wait.as_secs() / 3600
                );
                self.status.renewal = Some(e.to_string());
                self.renew_wait = Instant::now() + wait;
            }
        }
    }

    /// A record was posted; true when a publication failed.
    fn posted(&mut self, withdraw: bool, result: Result<String, PostError>, at: u64) -> bool {
        let st = &mut self.status;
        st.last_publish = Some(at);
        match result {
            Ok(text) => {
                log::info!("directory: {text}");
                st.published = Some(if withdraw { "withdrawn" } else { "published" }.into());
                st.publish_result = Some(text);
                false
            }
            Err(e) => {
                log::warn!("directory: posting the record: {e}");
                st.publish_result = Some(e.to_string());
                !withdraw
            }
        }
    }

    /// A snapshot accepted: its peers go to the client, its revocations
    /// (when they changed) to both roles.
    fn apply_chosen(&mut self, c: Chosen, out: &mut Outbox) {
        self.status.serial = Some(c.serial);
        self.status.issued = Some(c.issued);
        self.status.members = Some(c.members);
        self.status.revoked = c.revoked.len();
        // Inserted one by one: collecting into a set would add sort code.
        let mut revoked = BTreeSet::new();
        for member in c.revoked {
            revoked.insert(member);
        }
        self.chosen = c.peers;
        self.count_peers();
        out.event(Event::DirectoryPeers(self.chosen.clone()));
        if revoked != self.revoked {
            self.revoked = revoked;
            out.event(Event::DirectoryRevoked(self.revoked.clone()));
        }
    }

    /// The members whose routers the client uses as directory peers.
    fn count_peers(&mut self) {
        let mut members: Vec<&str> = Vec::new();
        let peers = directory_only(&self.chosen, &self.cfg.peers);
        for p in &peers {
            if !members.contains(&p.name.as_str()) {
                members.push(&p.name);
            }
        }
        self.status.peers = members.len();
    }

    /// At exit: withdraws the record when the file on disk says membership
    /// is off (waypoint disabled, `enabled '0'`, no directory), within
    /// [`EXIT_WITHDRAW`].
    pub(super) fn exit(mut self, path: &Path) {
        if !self.posted {
            return;
        }
        let off = match config::load(path) {
            Ok(c) => !c.main.enabled || !c.waypoint.enabled || c.directory.url.is_none(),
            Err(_) => false,
        };
        if !off {
            return;
        }
        let bytes = self.record(Statement::Withdraw);
        match agent::post_record(&self.settings.publish, &bytes, EXIT_WITHDRAW) {
            Ok(text) => log::info!("directory: membership off: {text}"),
            Err(e) => log::warn!("directory: membership off, but the withdrawal failed: {e}"),
        }
    }
}

impl Driver for MembershipDriver {
    fn fds<'a>(&'a self, out: &mut Vec<BorrowedFd<'a>>) {
        out.push(self.agent.fd());
    }

    fn deadline(&self, now: Instant) -> Option<Instant> {
        earliest(self.next_publish, self.renew_deadline(now))
    }

    fn on_ready(&mut self, _fd: RawFd, now: Instant, out: &mut Outbox) {
        self.turn(now, out);
    }

    fn on_timeout(&mut self, now: Instant, out: &mut Outbox) {
        self.turn(now, out);
    }

    fn on_event(&mut self, ev: &Event, _now: Instant, _out: &mut Outbox) {
        match ev {
            Event::Reachable(a) => self.learned(a),
            Event::DonationUsedUp(u) => self.used_up(*u),
            _ => {}
        }
    }

    fn status(&self, _now: Instant, doc: &mut Status) {
        doc.directory = Some(self.status.clone());
    }
}

impl Role for MembershipDriver {
    type Change = ();
    const NAME: &'static str = "directory";

    fn start(ctx: &mut Ctx<'_>, _out: &mut Outbox) -> Result<Option<Self>, DaemonError> {
        MembershipDriver::start(ctx.cfg, ctx.id)
    }

    /// The new identity and settings; publishes or withdraws as the
    /// waypoint role and the options now say.
    fn reconfigure(
        &mut self,
        _change: &(),
        ctx: &mut Ctx<'_>,
        _out: &mut Outbox,
    ) -> Result<Vec<String>, DaemonError> {
        let (cfg, id) = (ctx.cfg, ctx.id);
        if cfg.peers != self.cfg.peers {
            log::debug!("directory: static peers changed; directory peers follow them");
        }
        self.cfg = cfg.clone();
        let identity_changed = self.cert != id.cert || self.key.public() != id.key.public();
        self.cert = id.cert.clone();
        self.key = id.key.clone();
        if let Some(settings) = agent_settings(cfg, id).filter(|s| *s != self.settings) {
            self.status.url = settings.snapshot.to_string();
            self.agent.set(settings.clone());
            self.settings = settings;
        }
        let a = advert(cfg, &self.learned, self.used_up);
        match (&a, self.posted) {
            (None, true) => {
                self.advert = None;
                self.withdraw();
            }
            (Some(_), _) if a != self.advert || identity_changed || !self.posted => {
                self.advert = a;
                self.publish();
            }
            _ => {}
        }
        self.count_peers();
        Ok(Vec::new())
    }

    /// `option directory` removed: the record is withdrawn (the agent posts
    /// the withdrawal before it stops).
    fn stop(mut self, _out: &mut Outbox) {
        self.withdraw();
        log::info!("directory: option directory removed");
    }

    /// No directory: no directory peers, no directory revocations.
    fn off(out: &mut Outbox) {
        out.event(Event::DirectoryPeers(Vec::new()));
        out.event(Event::DirectoryRevoked(BTreeSet::new()));
    }
}

/// Why a renewed certificate was not taken (the one in force stays).
#[derive(Debug, thiserror::Error)]
enum RenewalError {
    /// Asking the directory failed.
    #[error("{0}")]
    Post(#[source] PostError),
    /// The answer is not a certificate.
    #[error("{0}")]
    Unreadable(#[source] FileError),
    /// It certifies another key.
    #[error("the directory's certificate is for another key")]
    OtherKey,
    /// It does not verify against the collective now.
    #[error("the directory's certificate: {0}")]
    Invalid(#[source] TrustError),
    /// It ends no later than the one in force (its end, Unix seconds).
    #[error("the directory's certificate ends at {0}, not later than this one")]
    NotLater(u64),
    /// It could not be written over `option cert`.
    #[error("{}: {source}", path.display())]
    Write {
        /// `option cert`.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}
