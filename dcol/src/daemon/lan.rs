//! The daemon's LAN proxy: the relay ([`Relay`]), the interception table
//! that feeds it ([`LanIntercept`]) and what keeps the table honest:
//! - the WAN: only flows whose route leaves by the default routes'
//!   interfaces are intercepted; the daemon's routing snapshot
//!   ([`crate::routes::Routes::wan`]) names them at start and whenever the
//!   kernel announces a change ([`LanRole::set_wan`]);
//! - the firewall: with `proxy_follow_firewall` the kernel records which
//!   flows the firewall forwarded, and a [`RulesetWatch`] makes the table
//!   forget them whenever another table changes;
//! - room: the heartbeat that keeps interception on stops while the relay
//!   is at its cap or short of descriptors ([`Pause`]), so new LAN flows go
//!   direct; each pause is logged once and shown in `dcol status`.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use super::DaemonError;
use crate::config::{Config, DetourPolicy};
use crate::control;
use crate::proxy::limits::{Pause, PauseChange};
use crate::sys::lan::{self, InterceptSpec, LanIntercept, RulesetWatch};
use crate::sys::relay::{Relay, RelayEvent, RelaySettings};
use crate::sys::SysError;

/// Name of the interception table (`inet dcol_lan`).
pub const LAN_TABLE: &str = "dcol_lan";

/// The transparent proxy for LAN devices.
pub(super) struct LanRole {
    relay: Relay,
    intercept: Option<LanIntercept>,
    /// Another table changed: forget the firewall's verdicts (only while
    /// following them).
    watch: Option<RulesetWatch>,
    /// Tables whose changes are ours.
    own_tables: Vec<String>,
    spec: InterceptSpec,
    pub(super) policy: DetourPolicy,
    next_beat: Instant,
    pause: Pause,
    firewall_changes: u64,
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

impl LanRole {
    /// Starts the relay, then switches interception on for flows routed to
    /// `wan` (relay first: a redirected connection must find a listener).
    pub(super) fn start(cfg: &Config, wan: &[String]) -> Result<LanRole, DaemonError> {
        let c = &cfg.client;
        let relay = Relay::open(relay_settings(cfg))?;
        let spec = intercept_spec(cfg);
        let own = own_tables(cfg);
        // The watch first: a change while the table is made is not missed.
        let watch = open_watch(&spec, &own);
        let mut role = LanRole {
            relay,
            intercept: None,
            watch,
            own_tables: own,
            spec,
            policy: c.detour_policy,
            next_beat: Instant::now() + lan::HEARTBEAT,
            pause: Pause::default(),
            firewall_changes: 0,
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

    /// Applies `new`'s settings in place (same port); what changed, for the
    /// reload's log line. `wan`: the WAN in force (for a table made anew).
    pub(super) fn reconfigure(
        &mut self,
        new: &Config,
        wan: &[String],
    ) -> Result<Option<String>, DaemonError> {
        self.relay.set_settings(relay_settings(new));
        self.policy = new.client.detour_policy;
        let spec = intercept_spec(new);
        self.own_tables = own_tables(new);
        if let Some(w) = self.watch.as_mut() {
            w.set_own(self.own_tables.clone());
        }
        let mut changed = None;
        if spec != self.spec {
            if spec.follow_firewall != self.spec.follow_firewall {
                self.watch = open_watch(&spec, &self.own_tables);
            }
            self.spec = spec;
            match self.intercept.as_mut() {
                Some(i) => i.update(&self.spec)?,
                None => self.intercept = Some(self.start_intercept(wan)?),
            }
            changed = Some("LAN interception rules".to_owned());
        }
        Ok(changed)
    }

    /// Intercepts only flows routed to `wan` from now on (see
    /// [`LanIntercept::set_wan`]); called when the routes change.
    pub(super) fn set_wan(&mut self, wan: &[String]) {
        if let Some(i) = self.intercept.as_mut() {
            if let Err(e) = set_wan(i, wan) {
                // The old WAN stays in force; the next change tries again.
                log::warn!("lan proxy: {e}");
            }
        }
    }

    /// The descriptors to poll.
    pub(super) fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        std::iter::once(self.relay.fd()).chain(self.watch.as_ref().map(RulesetWatch::fd))
    }

    /// When [`LanRole::step`] must run at the latest.
    pub(super) fn next_timeout(&self) -> Instant {
        let mut t = self.relay.next_timeout();
        if !self.pause.paused() {
            t = t.min(self.next_beat);
        }
        t
    }

    /// Everything that is due: firewall changes, the relay's work, the pause
    /// and the heartbeat. Returns the relay's events.
    pub(super) fn step(&mut self, now: Instant) -> Vec<RelayEvent> {
        if let Some(w) = self.watch.as_mut() {
            if w.changed() {
                self.firewall_changes = self.firewall_changes.wrapping_add(1);
                if let Some(i) = self.intercept.as_mut() {
                    match i.flush_permits() {
                        Ok(()) => log::debug!(
                            "lan proxy: the ruleset changed; the firewall's verdicts are asked again"
                        ),
                        Err(e) => log::warn!("lan proxy: forgetting the firewall's verdicts: {e}"),
                    }
                }
            }
        }
        let events = self.relay.step(now);
        let (active, cap) = (self.relay.active(), self.relay.capacity());
        let short = self.relay.fd_short(now);
        match self.pause.update(active, short, &cap) {
            Some(PauseChange::Paused) => {
                if let Some(i) = self.intercept.as_mut() {
                    if let Err(e) = i.pause() {
                        log::warn!(
                            "lan proxy: pausing interception: {e} (it lapses within {} s)",
                            lan::ALIVE_TTL.as_secs()
                        );
                    }
                }
                let why = if short {
                    "out of open files".to_owned()
                } else {
                    format!("the cap is {}", cap.max_conns)
                };
                log::warn!(
                    "lan proxy: {active} connections open ({why}): interception paused, new LAN connections go direct"
                );
            }
            Some(PauseChange::Resumed) => {
                log::info!("lan proxy: {active} connections open: interception resumed");
                self.next_beat = now;
            }
            None => {}
        }
        if !self.pause.paused() && now >= self.next_beat {
            self.next_beat = now + lan::HEARTBEAT;
            if let Some(i) = self.intercept.as_mut() {
                if let Err(e) = i.heartbeat() {
                    log::warn!("lan proxy heartbeat (interception lapses without it): {e}");
                }
            }
        }
        events
    }

    /// The `lan_proxy` part of `dcol status`.
    pub(super) fn status(&self) -> control::LanProxyStatus {
        control::LanProxyStatus {
            counters: self.relay.stats(),
            detour_policy: self.policy.name().to_owned(),
            max_conns: self.relay.capacity().max_conns,
            paused: self.pause.paused(),
            pauses: self.pause.episodes(),
            wan_interfaces: self
                .intercept
                .as_ref()
                .map(|i| i.wan().to_vec())
                .unwrap_or_default(),
            follow_firewall: self.spec.follow_firewall,
            firewall_changes: self.firewall_changes,
        }
    }

    /// Interception off first (new LAN connections go direct), then the
    /// proxied connections are reset.
    pub(super) fn stop(mut self) {
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
