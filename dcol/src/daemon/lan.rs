//! The daemon's LAN proxy: the relay ([`Relay`]), the interception table
//! that feeds it ([`LanIntercept`]) and what keeps the table honest:
//! - the WAN: only flows whose route leaves by the default routes'
//!   interfaces are intercepted; the daemon's routing snapshot
//!   ([`crate::routes::Routes::wan`]) names them at start and whenever the
//!   kernel announces a change ([`Event::Routes`]);
//! - the firewall: with `proxy_follow_firewall` the kernel records which
//!   flows the firewall forwarded, and a [`RulesetWatch`] makes the table
//!   forget them whenever another table changes;
//! - room: the heartbeat that keeps interception on stops while the relay
//!   is at its cap or short of descriptors, so new LAN flows go direct;
//!   each pause is logged once and shown in `dcol status`.
//!
//! When to beat, pause and forget is decided by [`Admission`]; the relay's
//! news about the connections it opens go to the client role
//! ([`Event::Relay`]). The proxy runs only with the client role.

use std::os::fd::{BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use super::driver::{earliest, Ctx, Driver, Event, Outbox, Role};
use super::identity::Identity;
use super::DaemonError;
use crate::config::{Config, ConvertMode};
use crate::control::{self, Status};
use crate::proxy::admission::{Action as AdmissionAction, Admission, Full};
use crate::proxy::convert::{ConverterPeer, Converters};
use crate::sys::lan::{self, InterceptSpec, LanIntercept, RulesetWatch};
use crate::sys::relay::{Relay, RelaySettings};
use crate::sys::SysError;
use crate::types::DetourPolicy;

/// Name of the interception table (`inet dcol_lan`).
pub const LAN_TABLE: &str = "dcol_lan";

/// The transparent proxy for LAN devices.
pub(super) struct LanDriver {
    relay: Relay,
    intercept: Option<LanIntercept>,
    /// Another table changed: forget the firewall's verdicts (only while
    /// following them).
    watch: Option<RulesetWatch>,
    /// Tables whose changes are ours.
    own_tables: Vec<String>,
    spec: InterceptSpec,
    policy: DetourPolicy,
    /// Whether new LAN flows are intercepted now.
    admission: Admission,
    /// Converters: the configured peers', then the directory's.
    converter_peers: (Vec<ConverterPeer>, Vec<ConverterPeer>),
}

fn relay_settings(cfg: &Config) -> RelaySettings {
    let c = &cfg.client;
    RelaySettings {
        port: c.proxy_port,
        max_per_host: c.max_conns_per_host,
        max_per_prefix: c.max_conns_per_prefix,
        max_conns: c.proxy_max_conns,
        allow: c.proxy_allow_destination.clone(),
        idle: Duration::from_secs(u64::from(c.proxy_idle_timeout_s)),
        policy: c.detour_policy,
    }
}

/// The converter peers of `cfg` (`option convert '1'`; the converter
/// listens on TCP at the signaling address).
fn converter_peers(cfg: &Config) -> Vec<ConverterPeer> {
    cfg.peers
        .iter()
        .filter(|p| p.convert)
        .map(|p| ConverterPeer {
            name: p.name.clone(),
            address: p.address,
        })
        .collect()
}

/// The relay's converters with `option convert 'auto'`.
fn converters(cfg: &Config, id: &Identity) -> Option<Converters> {
    if cfg.client.convert == ConvertMode::Off {
        return None;
    }
    let mut prefix = [0u8; 8];
    if let Err(e) = super::client::random_bytes(&mut prefix) {
        log::warn!("lan proxy: /dev/urandom: {e}; converter cookies use a time-based nonce");
        prefix.copy_from_slice(&super::wall_ms().to_be_bytes());
    }
    let peers = converter_peers(cfg);
    if peers.is_empty() {
        log::warn!("lan proxy: option convert 'auto' but no peer converts ('option convert' in a peer section)");
    }
    let identity = Some((id.cert.clone(), id.key.clone()));
    Some(Converters::new(
        peers,
        identity,
        prefix,
        cfg.client.convert_fastopen,
    ))
}

fn intercept_spec(cfg: &Config) -> InterceptSpec {
    let c = &cfg.client;
    InterceptSpec {
        interfaces: c.lan_interfaces.clone(),
        port: c.proxy_port,
        bypass: c.bypass.clone(),
        bypass_ports: c.bypass_ports.clone(),
        allow: c.proxy_allow_destination.clone(),
        follow_firewall: c.proxy_follow_firewall,
        max_per_host: c.max_conns_per_host,
        max_per_prefix: c.max_conns_per_prefix,
    }
}

/// The daemon's own tables: their changes say nothing about the firewall.
fn own_tables(cfg: &Config) -> Vec<String> {
    let w = &cfg.waypoint.table;
    vec![LAN_TABLE.to_owned(), w.clone(), format!("{w}_vpn")]
}

fn open_watch(spec: &InterceptSpec, own: &[String]) -> Option<RulesetWatch> {
    if !spec.follow_firewall {
        return None;
    }
    match RulesetWatch::open(own.to_vec()) {
        Ok(w) => Some(w),
        Err(e) => {
            // Verdicts then live their full PERMIT_TTL after a change.
            log::warn!(
                "lan proxy: cannot watch the firewall for changes ({e}); a changed rule applies to proxied flows within {} s",
                lan::PERMIT_TTL.as_secs()
            );
            None
        }
    }
}

impl LanDriver {
    /// Starts the relay, then switches interception on for flows routed to
    /// `wan` (relay first: a redirected connection must find a listener).
    fn start(cfg: &Config, id: &Identity, wan: &[String]) -> Result<LanDriver, DaemonError> {
        let c = &cfg.client;
        let mut relay = Relay::open(relay_settings(cfg))?;
        relay.set_converters(converters(cfg, id));
        let spec = intercept_spec(cfg);
        let own = own_tables(cfg);
        // The watch first: a change while the table is made is not missed.
        let watch = open_watch(&spec, &own);
        let mut role = LanDriver {
            relay,
            intercept: None,
            watch,
            own_tables: own,
            spec,
            policy: c.detour_policy,
            admission: Admission::new(Instant::now(), lan::HEARTBEAT),
            converter_peers: (converter_peers(cfg), Vec::new()),
        };
        role.intercept = Some(role.start_intercept(wan)?);
        log::info!(
            "lan proxy: TCP from {} to the Internet redirected to port {} (detour policy {}; {}off within {} s if dcol dies)",
            c.lan_interfaces.join(", "),
            c.proxy_port,
            c.detour_policy.name(),
            if c.proxy_follow_firewall {
                "only flows the firewall forwards; "
            } else {
                ""
            },
            lan::ALIVE_TTL.as_secs()
        );
        Ok(role)
    }

    /// Creates (or replaces) the interception table, names the WAN and
    /// switches interception on.
    fn start_intercept(&mut self, wan: &[String]) -> Result<LanIntercept, DaemonError> {
        let mut intercept = LanIntercept::create(LAN_TABLE, &self.spec)?;
        let r = set_wan(&mut intercept, wan).and_then(|()| intercept.heartbeat());
        if let Err(e) = r {
            let _ = intercept.destroy();
            return Err(e.into());
        }
        Ok(intercept)
    }

    /// Intercepts only flows routed to `wan` from now on (see
    /// [`LanIntercept::set_wan`]); called when the routes change.
    fn set_wan(&mut self, wan: &[String]) {
        if let Some(i) = self.intercept.as_mut() {
            if let Err(e) = set_wan(i, wan) {
                // The old WAN stays in force; the next change tries again.
                log::warn!("lan proxy: {e}");
            }
        }
    }

    /// Everything that is due: firewall changes, the relay's work, the
    /// pause and the heartbeat; the relay's news go to the client.
    fn turn(&mut self, now: Instant, out: &mut Outbox) {
        if self.watch.as_mut().is_some_and(RulesetWatch::changed) {
            let a = self.admission.firewall_changed();
            self.carry_out(a);
        }
        for e in self.relay.step(now) {
            out.event(Event::Relay(e));
        }
        let (active, cap) = (self.relay.active(), self.relay.capacity());
        let short = self.relay.fd_short(now);
        for a in self.admission.after_relay(now, active, short, &cap) {
            self.carry_out(a);
        }
    }

    /// Carries out an admission decision on the interception table.
    fn carry_out(&mut self, a: AdmissionAction) {
        let Some(i) = self.intercept.as_mut() else {
            return;
        };
        match a {
            AdmissionAction::ForgetVerdicts => match i.flush_permits() {
                Ok(()) => log::debug!(
                    "lan proxy: the ruleset changed; the firewall's verdicts are asked again"
                ),
                Err(e) => log::warn!("lan proxy: forgetting the firewall's verdicts: {e}"),
            },
            AdmissionAction::Pause { active, why } => {
                if let Err(e) = i.pause() {
                    log::warn!(
                        "lan proxy: pausing interception: {e} (it lapses within {} s)",
                        lan::ALIVE_TTL.as_secs()
                    );
                }
                let why = match why {
                    Full::OutOfFiles => "out of open files".to_owned(),
                    Full::Cap(n) => format!("the cap is {n}"),
                };
                log::warn!(
                    "lan proxy: {active} connections open ({why}): interception paused, new LAN connections go direct"
                );
            }
            AdmissionAction::Resume { active } => {
                log::info!("lan proxy: {active} connections open: interception resumed");
            }
            AdmissionAction::Heartbeat => {
                if let Err(e) = i.heartbeat() {
                    log::warn!("lan proxy heartbeat (interception lapses without it): {e}");
                }
            }
        }
    }

    /// The `lan_proxy` part of `dcol status`.
    fn status_doc(&self) -> control::LanProxyStatus {
        control::LanProxyStatus {
            counters: self.relay.stats(),
            detour_policy: self.policy.name().to_owned(),
            max_conns: self.relay.capacity().max_conns,
            paused: self.admission.paused(),
            pauses: self.admission.pauses(),
            wan_interfaces: self
                .intercept
                .as_ref()
                .map(|i| i.wan().to_vec())
                .unwrap_or_default(),
            follow_firewall: self.spec.follow_firewall,
            firewall_changes: self.admission.firewall_changes(),
            converters: self.relay.converter_status(Instant::now()),
        }
    }
}

impl Driver for LanDriver {
    fn fds<'a>(&'a self, out: &mut Vec<BorrowedFd<'a>>) {
        out.push(self.relay.fd());
        out.extend(self.watch.as_ref().map(RulesetWatch::fd));
    }

    fn deadline(&self, _now: Instant) -> Option<Instant> {
        earliest(Some(self.relay.next_timeout()), self.admission.deadline())
    }

    fn on_ready(&mut self, _fd: RawFd, now: Instant, out: &mut Outbox) {
        self.turn(now, out);
    }

    fn on_timeout(&mut self, now: Instant, out: &mut Outbox) {
        self.turn(now, out);
    }

    fn on_event(&mut self, ev: &Event, _now: Instant, _out: &mut Outbox) {
        match ev {
            Event::Routes(r) => self.set_wan(&r.wan()),
            Event::PublicAddress(a) => {
                if let Some(c) = self.relay.converters_mut() {
                    c.set_public_address(*a);
                }
            }
            Event::DirectoryPeers(peers) => {
                self.converter_peers.1 = peers
                    .iter()
                    .filter(|p| p.convert)
                    .map(|p| ConverterPeer {
                        name: p.name.clone(),
                        address: p.address,
                    })
                    .collect();
                if let Some(c) = self.relay.converters_mut() {
                    let (own, dir) = &self.converter_peers;
                    c.set_peers(own.iter().chain(dir).cloned().collect());
                }
            }
            _ => {}
        }
    }

    fn status(&self, _now: Instant, doc: &mut Status) {
        if let Some(c) = doc.client.as_mut() {
            c.lan_proxy = Some(self.status_doc());
        }
    }
}

impl Role for LanDriver {
    type Change = ();
    const NAME: &'static str = "LAN proxy";
    const STOPPED: &'static str = "LAN proxy stopped";
    const STARTED: &'static str = "LAN proxy (re)started";
    const RESTARTED: &'static str = "LAN proxy (re)started";

    fn start(ctx: &mut Ctx<'_>, _out: &mut Outbox) -> Result<Option<Self>, DaemonError> {
        LanDriver::start(ctx.cfg, ctx.id, &ctx.routes.wan()).map(Some)
    }

    /// Applies the new settings in place (same port): proxied connections
    /// live on.
    fn reconfigure(
        &mut self,
        _change: &(),
        ctx: &mut Ctx<'_>,
        _out: &mut Outbox,
    ) -> Result<Vec<String>, DaemonError> {
        let new = ctx.cfg;
        self.relay.set_settings(relay_settings(new));
        match (self.relay.converters_mut(), new.client.convert) {
            (Some(c), ConvertMode::Auto) => {
                self.converter_peers.0 = converter_peers(new);
                let (own, dir) = &self.converter_peers;
                c.set_peers(own.iter().chain(dir).cloned().collect());
                c.set_identity(Some((ctx.id.cert.clone(), ctx.id.key.clone())));
                c.fastopen = new.client.convert_fastopen;
            }
            _ => self.relay.set_converters(converters(new, ctx.id)),
        }
        self.policy = new.client.detour_policy;
        let spec = intercept_spec(new);
        self.own_tables = own_tables(new);
        if let Some(w) = self.watch.as_mut() {
            w.set_own(self.own_tables.clone());
        }
        if spec == self.spec {
            return Ok(Vec::new());
        }
        if spec.follow_firewall != self.spec.follow_firewall {
            self.watch = open_watch(&spec, &self.own_tables);
        }
        self.spec = spec;
        match self.intercept.as_mut() {
            Some(i) => i.update(&self.spec)?,
            None => self.intercept = Some(self.start_intercept(&ctx.routes.wan())?),
        }
        Ok(vec!["LAN interception rules".to_owned()])
    }

    /// Interception off first (new LAN connections go direct), then the
    /// proxied connections are reset.
    fn stop(mut self, _out: &mut Outbox) {
        if let Some(i) = self.intercept.take() {
            if let Err(e) = i.destroy() {
                log::error!("removing the LAN interception table: {e}");
            }
        }
        let n = self.relay.close_all().len();
        log::info!("lan proxy stopped ({n} MPTCP connections reset)");
    }
}

/// Sets the WAN of `i`, logging a change.
fn set_wan(i: &mut LanIntercept, names: &[String]) -> Result<(), SysError> {
    if i.wan() == names {
        return Ok(());
    }
    i.set_wan(names)?;
    if names.is_empty() {
        log::warn!("lan proxy: no default route: intercepting nothing until there is one");
    } else {
        log::info!(
            "lan proxy: intercepting flows routed to {}",
            names.join(", ")
        );
    }
    Ok(())
}
