//! `dcol run`: wires the pure roles ([`crate::client`], [`crate::waypoint`])
//! to the kernel ([`crate::sys`]) in one single-threaded `poll(2)` loop.
//!
//! Each part of the daemon is a driver ([`driver::Driver`]) that owns its
//! descriptors and timers: signals and the control socket (`host`), the
//! routing snapshot (`routes`), the revocation list file (`identity`), the
//! waypoint role (`waypoint`), the client role (`client`), the LAN proxy
//! (`lan`), the membership directory (`membership`) and NAT traversal
//! (`traversal`). The loop only collects their descriptors and deadlines,
//! polls, and calls the driver whose descriptor is ready or whose deadline
//! passed; what one driver tells the others goes through the loop as an
//! event ([`driver::Event`]). A reload is planned without side effects
//! ([`plan`]) and carried out role by role (`reload`).
//!
//! Start-up order matters for "nothing left behind": signals are blocked first,
//! then every piece of kernel state is created through an owner whose `Drop` (or
//! explicit teardown) removes it, and crash leftovers are reconciled before new
//! state is made: the NAT table of a crashed run is listed, its conntrack flows
//! deleted and the table replaced (live tunnels of the crashed run are cleanly
//! revoked; their clients see the renewal refused and ask again), and sysctls
//! recorded in the state directory are restored.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::control::{self, ControlServer, Status};
use crate::sys::os::{self, Signals};
use crate::sys::sysctl::SysctlGuard;
use crate::sys::SysError;
use crate::trust;

mod client;
mod driver;
mod host;
mod identity;
mod lan;
mod membership;
mod plan;
mod reload;
mod routes;
mod traversal;
mod turns;
mod waypoint;

use client::ClientDriver;
use driver::{earliest, Command, Ctx, Driver, Facts, Outbox, Role};
use host::Host;
use identity::{load_identity, Identity, RevWatch};
use lan::LanDriver;
pub use lan::LAN_TABLE;
use membership::MembershipDriver;
use routes::RouteDriver;
use traversal::TraversalDriver;
use turns::{Turn, Turns};
use waypoint::WaypointDriver;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Keys, certificate or configuration are unusable (exit code 2).
    #[error("{0}")]
    Config(String),
    /// The kernel or the OS refused something (exit code 1).
    #[error("{0}")]
    Sys(#[from] SysError),
    /// Socket or file trouble (exit code 1).
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The control socket.
    #[error("{0}")]
    Control(#[from] control::ControlError),
}

impl DaemonError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_) => 2,
            _ => 1,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Unix time in milliseconds.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The drivers, in the order the loop calls them (and they fill in the
/// status: the LAN proxy's part goes inside the client's).
const DRIVERS: usize = 8;

/// The drivers' names, in that order (the status's `loop.max_driver`).
const DRIVER_NAMES: [&str; DRIVERS] = [
    "host",
    "routes",
    "revocations",
    "waypoint",
    "client",
    "lan",
    "membership",
    "traversal",
];

/// The running daemon.
pub struct Daemon {
    started: Instant,
    /// The UCI file, re-read on SIGHUP.
    path: PathBuf,
    /// The configuration in force.
    cfg: Config,
    /// Its identity.
    id: Identity,
    /// Sysctls changed by either role, restored at shutdown.
    sysctls: SysctlGuard,
    /// The latest of the drivers' events, for a role that starts later.
    facts: Facts,
    /// Changes of the driver set (reloads): descriptors polled before one
    /// may belong to a driver that is gone.
    generation: u64,
    /// How long the loop's turns take, and the turn under way.
    turns: Turns,
    turn: Turn,
    host: Host,
    routes: RouteDriver,
    rev_watch: Option<RevWatch>,
    waypoint: Option<WaypointDriver>,
    client: Option<ClientDriver>,
    lan: Option<LanDriver>,
    membership: Option<MembershipDriver>,
    traversal: Option<TraversalDriver>,
}

/// Starts a role at daemon start (any failure is fatal).
fn start_role<R: Role>(ctx: &mut Ctx<'_>, out: &mut Outbox) -> Result<Option<R>, DaemonError> {
    R::start(ctx, out)
}

impl Daemon {
    /// Sets everything up (see the module docs for the order).
    pub fn start(cfg: &Config, path: &Path) -> Result<Self, DaemonError> {
        let signals = Signals::new().map_err(io_err("signalfd"))?;
        let id = load_identity(cfg)?;
        let control = ControlServer::bind(&cfg.main.control_socket)?;
        let mut sysctls = SysctlGuard::recover(&cfg.main.state_dir)?;
        let (routes, snapshot) = RouteDriver::start()?;
        let mut out = Outbox::default();
        let mut ctx = Ctx {
            cfg,
            id: &id,
            routes: &snapshot,
            sysctls: &mut sysctls,
        };
        let waypoint = if cfg.waypoint.enabled {
            start_role::<WaypointDriver>(&mut ctx, &mut out)?
        } else {
            None
        };
        let client = if cfg.client.enabled {
            start_role::<ClientDriver>(&mut ctx, &mut out)?
        } else {
            None
        };
        let lan = if cfg.client.enabled && cfg.client.lan_proxy {
            start_role::<LanDriver>(&mut ctx, &mut out)?
        } else {
            None
        };
        let membership = start_role::<MembershipDriver>(&mut ctx, &mut out)?;
        traversal::delete_leftovers(cfg);
        let traversal = start_role::<TraversalDriver>(&mut ctx, &mut out)?;
        let rev_watch = start_role::<RevWatch>(&mut ctx, &mut out)?;
        log::info!(
            "dcol {} running as '{}' ({}): client {}, waypoint {}",
            env!("CARGO_PKG_VERSION"),
            id.cert.name,
            id.cert.member,
            if client.is_some() { "on" } else { "off" },
            if waypoint.is_some() { "on" } else { "off" },
        );
        let mut d = Daemon {
            started: Instant::now(),
            path: path.to_owned(),
            cfg: cfg.clone(),
            id,
            sysctls,
            facts: Facts::new(snapshot),
            generation: 0,
            turns: Turns::default(),
            turn: Turn::new(Instant::now()),
            host: Host::new(signals, control),
            routes,
            rev_watch,
            waypoint,
            client,
            lan,
            membership,
            traversal,
        };
        // What the roles said while starting is handed out now.
        match d.deliver(out) {
            Ok(Flow::Go) => Ok(d),
            Ok(Flow::Stop) => Err(DaemonError::Config("stopped while starting".into())),
            Err(e) => Err(e),
        }
    }

    /// Runs until SIGTERM or SIGINT, then tears down.
    pub fn run(mut self) -> Result<(), DaemonError> {
        let result = self.event_loop();
        self.shutdown();
        result
    }

    /// The drivers that run, in their order.
    fn drivers(&mut self) -> [Option<&mut dyn Driver>; DRIVERS] {
        fn dy<D: Driver>(d: &mut Option<D>) -> Option<&mut dyn Driver> {
            d.as_mut().map(|d| d as &mut dyn Driver)
        }
        [
            Some(&mut self.host),
            Some(&mut self.routes),
            dy(&mut self.rev_watch),
            dy(&mut self.waypoint),
            dy(&mut self.client),
            dy(&mut self.lan),
            dy(&mut self.membership),
            dy(&mut self.traversal),
        ]
    }

    /// Collects descriptors and deadlines, polls, and calls the drivers
    /// that are ready; returns at SIGTERM, SIGINT or `enabled '0'`.
    fn event_loop(&mut self) -> Result<(), DaemonError> {
        let mut fds: Vec<RawFd> = Vec::new();
        let mut owners: Vec<usize> = Vec::new();
        self.turn = Turn::new(Instant::now());
        loop {
            let now = Instant::now();
            fds.clear();
            owners.clear();
            let ready = {
                // Borrowed from the drivers while polling; then only their
                // numbers, to tell each driver which of its own are ready.
                let mut polled: Vec<BorrowedFd<'_>> = Vec::new();
                let mut deadline = None;
                for (i, d) in self.drivers().into_iter().enumerate() {
                    let Some(d) = d else { continue };
                    let d: &dyn Driver = d;
                    d.fds(&mut polled);
                    owners.resize(polled.len(), i);
                    deadline = earliest(deadline, d.deadline(now));
                }
                let timeout = deadline.map(|d| d.saturating_duration_since(now));
                // The turn ends where the poll begins (recorded below,
                // once the drivers' descriptors are no longer borrowed).
                let end = Instant::now();
                let ready = os::poll_readable(&polled, timeout).map_err(io_err("poll"))?;
                fds.extend(polled.iter().map(AsRawFd::as_raw_fd));
                (ready, end)
            };
            let (ready, end) = ready;
            self.turn.lap("collect", end);
            let (took, driver) = self.turn.end();
            self.turns
                .record(took, end.saturating_duration_since(self.started), driver);
            self.turn = Turn::new(Instant::now());
            let generation = self.generation;
            for (i, name) in DRIVER_NAMES.iter().enumerate() {
                let out = self.dispatch(i, &fds, &owners, &ready);
                self.turn.lap(name, Instant::now());
                let flow = self.deliver(out)?;
                self.turn.lap("deliver", Instant::now());
                if flow == Flow::Stop {
                    return Ok(());
                }
                if self.generation != generation {
                    // A reload replaced drivers: collect afresh.
                    break;
                }
            }
        }
    }

    /// Calls driver `i` for its ready descriptors and its passed deadline.
    fn dispatch(&mut self, i: usize, fds: &[RawFd], owners: &[usize], ready: &[bool]) -> Outbox {
        let mut out = Outbox::default();
        let now = Instant::now();
        let Some(d) = self.drivers().into_iter().nth(i).flatten() else {
            return out;
        };
        for (j, fd) in fds.iter().enumerate() {
            if ready[j] && owners[j] == i {
                d.on_ready(*fd, now, &mut out);
            }
        }
        if d.deadline(now).is_some_and(|t| t <= now) {
            d.on_timeout(now, &mut out);
        }
        out
    }

    /// Hands the drivers' events to every driver (and what those say in
    /// turn), then carries out the commands.
    fn deliver(&mut self, mut out: Outbox) -> Result<Flow, DaemonError> {
        loop {
            if let Some(ev) = out.next_event() {
                self.facts.record(&ev);
                let now = Instant::now();
                for d in self.drivers().into_iter().flatten() {
                    d.on_event(&ev, now, &mut out);
                }
                continue;
            }
            match out.next_command() {
                None => return Ok(Flow::Go),
                Some(Command::Stop) => return Ok(Flow::Stop),
                Some(Command::Reload) => {
                    if !self.reload(&mut out) {
                        return Ok(Flow::Stop);
                    }
                }
                Some(Command::Status) => {
                    self.turn.lap("deliver", Instant::now());
                    let status = self.status();
                    self.host.answer(&status);
                    self.turn.lap("status", Instant::now());
                }
            }
        }
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.traversal.take() {
            t.exit();
        }
        if let Some(m) = self.membership.take() {
            m.exit(&self.path);
        }
        // At exit nobody is left to hear the roles' last words.
        let mut out = Outbox::default();
        if let Some(l) = self.lan.take() {
            l.stop(&mut out);
        }
        if let Some(c) = self.client.take() {
            c.stop(&mut out);
        }
        // Dropping the waypoint role removes its table and revokes its tunnels.
        drop(self.waypoint.take());
        self.sysctls.restore();
        log::info!("stopped; kernel state removed");
    }

    /// The status document.
    fn status(&mut self) -> Status {
        let now = Instant::now();
        let cert = &self.id.cert;
        let mut doc = Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: now.saturating_duration_since(self.started).as_secs(),
            member: control::MemberStatus {
                name: cert.name.clone(),
                id: cert.member.to_string(),
                collective: trust::to_hex(&cert.collective.0),
                cert_not_after: cert.not_after,
                roles: cert.roles.to_string(),
            },
            client: None,
            waypoint: None,
            directory: None,
            traversal: None,
            turns: Some(self.turns.status()),
        };
        for d in self.drivers().into_iter().flatten() {
            d.status(now, &mut doc);
        }
        doc
    }
}

/// Whether the loop goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}
