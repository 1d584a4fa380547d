//! The converter (issue 17), part of the waypoint role: the pure
//! [`Converter`] and its sockets ([`ConvertServer`]); the waypoint driver
//! feeds it the routes, revocations and whether the month's donation is
//! used up, and keeps its evidence.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::{union, WaypointDriver};
use crate::config::Config;
use crate::control;
use crate::convert::{self, Converter};
use crate::daemon::driver::Ctx;
use crate::daemon::identity::Identity;
use crate::daemon::{wall_ms, DaemonError};
use crate::loglimit::LogLimit;
use crate::routes::Routes;
use crate::sys::convert::{ConvertEvent, ConvertServer, ConvertSettings, Timeouts};
use crate::sys::sysctl::{self, SysctlGuard};
use crate::trust::{MemberId, Revocations};
use crate::waypoint::policy;

/// The converter's parts.
pub(super) struct ConvertRole {
    core: Converter,
    server: ConvertServer,
    port: u16,
    /// The identity's own revocations (the directory's come as events).
    local: Revocations,
    log: LogLimit,
    /// Bytes of finished conversions, client → server and back.
    bytes: [u64; 2],
}

fn core_settings(cfg: &Config) -> convert::Settings {
    let w = &cfg.waypoint;
    convert::Settings {
        destinations: policy::Rules {
            allow: w.allow_destination.clone(),
            deny_ports: w.deny_port.clone(),
        },
        max_skew: Duration::from_secs(u64::from(w.max_clock_skew_s)),
        max_per_member: w.convert_max_per_member,
        max_per_source: w.convert_max_per_source,
        source_rate: w.convert_max_per_source.clamp(8, 256),
    }
}

fn server_settings(cfg: &Config) -> ConvertSettings {
    let w = &cfg.waypoint;
    ConvertSettings {
        port: w.convert_port,
        max_conns: w.convert_max_per_source.saturating_mul(16).clamp(64, 8192),
        timeouts: Timeouts {
            header: Duration::from_secs(5),
            connect: Duration::from_secs(10),
            idle: Duration::from_secs(u64::from(cfg.client.proxy_idle_timeout_s)),
        },
    }
}

/// Turns the server side of TCP Fast Open on (`net.ipv4.tcp_fastopen`
/// bit 2, restored on exit): the Convert message rides in the SYN.
fn fastopen_sysctl(sysctls: &mut SysctlGuard) {
    let path = sysctl::TCP_FASTOPEN;
    match sysctl::read(path).map(|v| v.trim().parse::<u32>()) {
        Ok(Ok(v)) if v & 2 == 0 => {
            log::info!("converter: enabling {path} server side (restored on exit)");
            if let Err(e) = sysctls.set(path, &(v | 2).to_string()) {
                log::warn!("converter: {path}: {e}; conversions take one more round trip");
            }
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => log::warn!("converter: {path}: {e}"),
        Err(e) => log::warn!("converter: {path}: {e}"),
    }
}

impl ConvertRole {
    /// Listens on the converter port.
    pub(super) fn start(
        cfg: &Config,
        id: &Identity,
        revoked: &BTreeSet<MemberId>,
        routes: &Routes,
        sysctls: &mut SysctlGuard,
    ) -> Result<ConvertRole, DaemonError> {
        fastopen_sysctl(sysctls);
        let server = ConvertServer::open(server_settings(cfg))?;
        let core = Converter::new(
            core_settings(cfg),
            id.cert.name.clone(),
            id.root,
            union(&id.revocations, revoked),
            routes.clone(),
        );
        log::info!(
            "converter: MPTCP to plain TCP (RFC 8803) on TCP port {}",
            cfg.waypoint.convert_port
        );
        Ok(ConvertRole {
            core,
            server,
            port: cfg.waypoint.convert_port,
            local: id.revocations.clone(),
            log: LogLimit::new(20),
            bytes: [0, 0],
        })
    }

    /// Whether `cfg` needs a new listener (another port).
    pub(super) fn same_port(&self, cfg: &Config) -> bool {
        self.port == cfg.waypoint.convert_port
    }

    /// New settings and revocations; conversions of newly revoked members end.
    pub(super) fn reconfigure(
        &mut self,
        cfg: &Config,
        id: &Identity,
        revoked: &BTreeSet<MemberId>,
    ) {
        self.local = id.revocations.clone();
        let rev = union(&id.revocations, revoked);
        self.core
            .reconfigure(core_settings(cfg), id.cert.name.clone(), rev);
        self.server.set_settings(server_settings(cfg));
        self.end_revoked(revoked);
    }

    /// The directory's revocations changed.
    pub(super) fn set_revoked(&mut self, revoked: &BTreeSet<MemberId>) {
        self.core.set_revocations(union(&self.local, revoked));
        self.end_revoked(revoked);
    }

    /// Ends the running conversions of revoked members (`revoked` or the
    /// identity's list).
    fn end_revoked(&mut self, revoked: &BTreeSet<MemberId>) {
        for m in self.server.members() {
            if revoked.contains(&m) || self.core.is_revoked(&m) {
                self.server.end_member(&m, &mut self.core);
            }
        }
    }

    /// The routes changed.
    pub(super) fn set_routes(&mut self, routes: &Routes) {
        self.core.set_routes(routes.clone());
    }

    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.server.fd()
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.server.next_timeout()
    }

    /// The status part.
    pub(super) fn status(&self, now: Instant) -> control::ConverterStatus {
        let st = self.core.stats();
        control::ConverterStatus {
            port: self.port,
            accepted: st.accepted,
            converted: st.admitted,
            refused: st.refused.clone(),
            bytes_up: self.bytes[0],
            bytes_down: self.bytes[1],
            conversions: self
                .server
                .conversions()
                .into_iter()
                .map(|c| control::ConversionStatus {
                    member: c.member,
                    client: c.from.to_string(),
                    destination: c.destination.to_string(),
                    bytes_up: c.bytes[0],
                    bytes_down: c.bytes[1],
                    age_s: now.saturating_duration_since(c.since).as_secs(),
                })
                .collect(),
        }
    }

    /// Closes every connection (reload, stop).
    pub(super) fn close_all(&mut self) -> Vec<ConvertEvent> {
        self.server.close_all(&mut self.core)
    }
}

impl WaypointDriver {
    /// Starts, stops, restarts (another port) or reconfigures the converter.
    pub(super) fn reconfigure_convert(
        &mut self,
        ctx: &mut Ctx<'_>,
        changes: &mut Vec<String>,
    ) -> Result<(), DaemonError> {
        let (cfg, id) = (ctx.cfg, ctx.id);
        let keep = cfg.waypoint.convert && self.convert.as_ref().is_some_and(|c| c.same_port(cfg));
        if keep {
            if let Some(cv) = self.convert.as_mut() {
                cv.reconfigure(cfg, id, &self.dir_revoked);
            }
            return Ok(());
        }
        if let Some(mut cv) = self.convert.take() {
            let ended = cv.close_all();
            self.convert_events(Instant::now(), ended);
            changes.push("converter stopped".to_owned());
        }
        if cfg.waypoint.convert {
            let cv = ConvertRole::start(cfg, id, &self.dir_revoked, ctx.routes, ctx.sysctls)?;
            self.convert = Some(cv);
            changes.push("converter started".to_owned());
        }
        Ok(())
    }

    /// The converter's turn: what is ready and due, then the log and the
    /// evidence of what happened.
    pub(super) fn convert_turn(&mut self, now: Instant) {
        let used_up = self.core.used_up().map(str::to_owned);
        let Some(cv) = self.convert.as_mut() else {
            return;
        };
        cv.core.set_used_up(used_up);
        let events = cv.server.step(now, wall_ms(), &mut cv.core);
        self.convert_events(now, events);
    }

    /// Logs and keeps evidence of converter events.
    pub(super) fn convert_events(&mut self, now: Instant, events: Vec<ConvertEvent>) {
        let wall = wall_ms();
        for ev in events {
            match ev {
                ConvertEvent::Started { from, admitted: a } => {
                    log::info!("converter: {} ({from}) -> {}", a.name, a.destination);
                    let grant = format!("convert -> {}", a.destination);
                    self.keep_evidence(wall, from, (a.member, &a.name), grant, None, &a.request);
                }
                ConvertEvent::Refused { from, refusal: r } => {
                    let Some(cv) = self.convert.as_mut() else {
                        continue;
                    };
                    if cv.log.allow(now) {
                        let who = r.member.as_deref().unwrap_or("?");
                        log::warn!("converter: refused {from} ({who}): {}: {}", r.code, r.why);
                    }
                }
                ConvertEvent::Ended {
                    from,
                    admitted: a,
                    up,
                    down,
                    why,
                } => {
                    log::info!(
                        "converter: {} ({from}) -> {} ended ({why}): {up} bytes up, {down} down",
                        a.name,
                        a.destination
                    );
                    if let Some(cv) = self.convert.as_mut() {
                        cv.bytes[0] = cv.bytes[0].wrapping_add(up);
                        cv.bytes[1] = cv.bytes[1].wrapping_add(down);
                    }
                    let grant = format!("end convert -> {}: {why}", a.destination);
                    let bytes = Some(up.wrapping_add(down));
                    self.keep_evidence(wall, from, (a.member, &a.name), grant, bytes, &[]);
                }
            }
        }
    }
}
