//! SIGHUP (and a new revocation list, a renewed certificate): the UCI file
//! is read again, checked, and the reload's plan ([`super::plan`]) carried
//! out role by role, keeping established connections wherever the change
//! allows it. An unreadable or invalid file changes nothing; `enabled '0'`
//! stops the daemon. A role that fails to start is off until the next
//! reload (logged); the others go on.

use std::time::Instant;

use super::driver::{Ctx, Facts, Outbox, Role};
use super::identity::{load_identity, Identity};
use super::plan::{self, Plan, Running, Step};
use super::{Daemon, LanDriver};
use crate::config::{self, Config};

/// Stops a role the plan stops or restarts (first, so that a LAN proxy
/// stops before its client role).
fn stop_phase<R: Role, C>(slot: &mut Option<R>, step: &Step<C>, out: &mut Outbox) {
    if let Step::Stop(why) | Step::Restart(why) = step {
        if let Some(r) = slot.take() {
            log::debug!("{}: stops ({why})", R::NAME);
            r.stop(out);
        }
    }
}

/// Starts or reconfigures a role as the plan says; what changed goes to
/// `changes`, for the log line.
fn start_phase<R: Role>(
    slot: &mut Option<R>,
    step: &Step<R::Change>,
    ctx: &mut Ctx<'_>,
    facts: &Facts,
    out: &mut Outbox,
    changes: &mut Vec<String>,
) {
    let said = match step {
        Step::Keep => return,
        Step::Stop(_) => R::STOPPED,
        Step::Reconfigure(change) => {
            if let Some(r) = slot.as_mut() {
                match r.reconfigure(change, ctx, out) {
                    Ok(c) => changes.extend(c),
                    Err(e) => log::error!("reload: {e}; the role runs on with what applied"),
                }
            }
            return;
        }
        Step::Start | Step::Restart(_) => match R::start(ctx, out) {
            Ok(Some(mut r)) => {
                let now = Instant::now();
                for ev in facts.replay() {
                    r.on_event(&ev, now, out);
                }
                *slot = Some(r);
                match step {
                    Step::Restart(_) => R::RESTARTED,
                    _ => R::STARTED,
                }
            }
            Ok(None) => R::STOPPED,
            Err(e) => {
                log::error!("reload: {e}; the affected role is off until the next reload");
                match step {
                    Step::Restart(_) => R::STOPPED,
                    _ => "",
                }
            }
        },
    };
    if slot.is_none() {
        R::off(out);
    }
    if !said.is_empty() {
        changes.push(said.to_owned());
    }
}

/// What a reload read.
enum Read {
    /// A valid configuration, to apply.
    Apply(Box<Config>, Box<Identity>),
    /// Nothing usable: the running configuration stays.
    Keep,
    /// `enabled '0'`: the daemon stops.
    Stop,
}

impl Daemon {
    /// Which roles run.
    fn running(&self) -> Running {
        Running {
            waypoint: self.waypoint.is_some(),
            client: self.client.is_some(),
            lan: self.lan.is_some(),
            membership: self.membership.is_some(),
            traversal: self.traversal.is_some(),
            revocation_watch: self.rev_watch.is_some(),
        }
    }

    /// The new configuration and its identity, checked (what is wrong is
    /// logged).
    fn read_config(&self) -> Read {
        let new = match config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload: {e}; keeping the running configuration");
                return Read::Keep;
            }
        };
        for w in &new.warnings {
            log::warn!("{w}");
        }
        if !new.main.enabled {
            log::info!("reload: option enabled is now '0'; shutting down");
            return Read::Stop;
        }
        let id = match load_identity(&new) {
            Ok(id) => id,
            Err(e) => {
                log::error!("reload: {e}; keeping the running configuration");
                return Read::Keep;
            }
        };
        if id.root == self.id.root && id.rev_serial < self.id.rev_serial {
            log::error!(
                "reload: revocation list serial {} is older than the one in force ({}); keeping the running configuration",
                id.rev_serial,
                self.id.rev_serial
            );
            return Read::Keep;
        }
        Read::Apply(Box::new(new), Box::new(id))
    }

    /// Re-reads the UCI file and applies what changed. Returns false when
    /// the daemon should stop (`enabled '0'`).
    pub(super) fn reload(&mut self, out: &mut Outbox) -> bool {
        let (new, id) = match self.read_config() {
            Read::Apply(new, id) => (*new, *id),
            Read::Keep => return true,
            Read::Stop => return false,
        };
        let plan = plan::plan(&self.cfg, &new, self.id.change(&id), self.running());
        log::debug!("the plan: {plan:?}");
        let changes = self.apply(&plan, &new, &id, out);
        if changes.is_empty() {
            log::info!("reload: nothing changed");
        } else {
            log::info!("reloaded: {}", changes.join("; "));
        }
        let mut later = Vec::new();
        let mut ctx = Ctx {
            cfg: &new,
            id: &id,
            routes: &self.facts.routes,
            sysctls: &mut self.sysctls,
        };
        let f = &self.facts;
        stop_phase(&mut self.rev_watch, &plan.revocation_watch, out);
        start_phase(
            &mut self.rev_watch,
            &plan.revocation_watch,
            &mut ctx,
            f,
            out,
            &mut later,
        );
        stop_phase(&mut self.membership, &plan.membership, out);
        start_phase(
            &mut self.membership,
            &plan.membership,
            &mut ctx,
            f,
            out,
            &mut later,
        );
        stop_phase(&mut self.traversal, &plan.traversal, out);
        start_phase(
            &mut self.traversal,
            &plan.traversal,
            &mut ctx,
            f,
            out,
            &mut later,
        );
        for c in later {
            log::info!("reloaded: {c}");
        }
        self.cfg = new;
        self.id = id;
        self.generation = self.generation.wrapping_add(1);
        true
    }

    /// Carries out the plan for the daemon itself and both roles; what
    /// changed, for the log line.
    fn apply(&mut self, plan: &Plan, new: &Config, id: &Identity, out: &mut Outbox) -> Vec<String> {
        let mut changes = Vec::new();
        if let Some(level) = plan.log_level {
            log::set_max_level(level);
            changes.push(format!("log level {level}"));
        }
        if plan.identity {
            changes.push("identity or revocations".into());
        }
        if plan.control_socket {
            match self.host.rebind(&new.main.control_socket) {
                Ok(()) => changes.push(format!(
                    "control socket {}",
                    new.main.control_socket.display()
                )),
                Err(e) => log::error!("reload: {e}; the control socket stays where it was"),
            }
        }
        if plan.state_dir {
            log::warn!("reload: state_dir changes apply at the next start");
        }
        let mut ctx = Ctx {
            cfg: new,
            id,
            routes: &self.facts.routes,
            sysctls: &mut self.sysctls,
        };
        let (f, c) = (&self.facts, &mut changes);
        stop_phase(&mut self.waypoint, &plan.waypoint, out);
        start_phase(&mut self.waypoint, &plan.waypoint, &mut ctx, f, out, c);
        stop_phase(&mut self.lan, &plan.lan, out);
        stop_phase(&mut self.client, &plan.client, out);
        start_phase(&mut self.client, &plan.client, &mut ctx, f, out, c);
        if self.client.is_some() {
            start_phase(&mut self.lan, &plan.lan, &mut ctx, f, out, c);
        } else if let Some(l) = self.lan.take() {
            // The proxy runs only with its client role.
            l.stop(out);
            c.push(LanDriver::STOPPED.to_owned());
        }
        changes
    }
}
