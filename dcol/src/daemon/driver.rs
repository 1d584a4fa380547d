//! The interface every part of the daemon implements, and the messages
//! the parts pass each other through the loop.
//!
//! A [`Driver`] owns its descriptors and timers: it says which descriptors
//! to poll ([`Driver::fds`]) and when it next has work
//! ([`Driver::deadline`]), and does that work when the loop calls it
//! ([`Driver::on_ready`], [`Driver::on_timeout`]). It never reaches into
//! another driver: what one learns that another needs is an [`Event`] put
//! in the [`Outbox`], which the loop hands to every driver
//! ([`Driver::on_event`]); what only the daemon can do (reload, stop,
//! answer a status request) is a [`Command`].
//!
//! A [`Role`] is a driver the configuration turns on and off: the daemon
//! starts, reconfigures and stops it as a reload's plan says
//! ([`super::plan`]). A role that starts after an event was sent gets the
//! latest one of each kind that describes a state ([`Facts`]).

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Instant;

use super::identity::Identity;
use super::DaemonError;
use crate::client::PeerSpec;
use crate::config::Config;
use crate::control::Status;
use crate::routes::Routes;
use crate::sys::relay::RelayEvent;
use crate::sys::sysctl::SysctlGuard;
use crate::trust::MemberId;

/// One part of the daemon, called by the loop when it is ready.
pub(super) trait Driver {
    /// Appends the descriptors to poll for reading.
    fn fds<'a>(&'a self, out: &mut Vec<BorrowedFd<'a>>);

    /// When [`Driver::on_timeout`] is due (default `None`: only when a
    /// descriptor is ready); `now` or earlier for work due at once.
    fn deadline(&self, _now: Instant) -> Option<Instant> {
        None
    }

    /// `fd`, one of [`Driver::fds`] (its number), is readable (default: no
    /// descriptors).
    fn on_ready(&mut self, _fd: RawFd, _now: Instant, _out: &mut Outbox) {}

    /// The deadline passed (default: no deadline, nothing to do).
    fn on_timeout(&mut self, _now: Instant, _out: &mut Outbox) {}

    /// Another driver's news (default: none of this one's business).
    fn on_event(&mut self, _ev: &Event, _now: Instant, _out: &mut Outbox) {}

    /// Fills in this driver's part of `dcol status` (default: none).
    fn status(&self, _now: Instant, _doc: &mut Status) {}
}

/// What a role is started and reconfigured with.
pub(super) struct Ctx<'a> {
    /// The configuration (the new one, on reload).
    pub cfg: &'a Config,
    /// Its identity.
    pub id: &'a Identity,
    /// The routing snapshot in force.
    pub routes: &'a Routes,
    /// Sysctls a role changes, restored when the daemon exits.
    pub sysctls: &'a mut SysctlGuard,
}

/// A driver the configuration turns on and off.
pub(super) trait Role: Driver + Sized {
    /// What changed in its settings, from the reload's plan.
    type Change;

    /// The role's name, for the log.
    const NAME: &'static str;
    /// For the reload's log line: the role stopped ...
    const STOPPED: &'static str = "";
    /// ... started ...
    const STARTED: &'static str = "";
    /// ... or stopped and started again (empty: say nothing).
    const RESTARTED: &'static str = "";

    /// Starts the role; `None` where it cannot run and that is not fatal
    /// (logged).
    fn start(ctx: &mut Ctx<'_>, out: &mut Outbox) -> Result<Option<Self>, DaemonError>;

    /// Applies new settings in place; what changed, for the log line
    /// (default: nothing to apply).
    fn reconfigure(
        &mut self,
        _change: &Self::Change,
        _ctx: &mut Ctx<'_>,
        _out: &mut Outbox,
    ) -> Result<Vec<String>, DaemonError> {
        Ok(Vec::new())
    }

    /// Removes what the role made (on reload).
    fn stop(self, out: &mut Outbox);

    /// What the other drivers learn when the role is off after a reload
    /// (default: nothing).
    fn off(_out: &mut Outbox) {}
}

/// News from one driver for the others.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Event {
    /// The kernel's routes or addresses changed (for the waypoint's
    /// destination policy and WAN, and the LAN proxy's WAN).
    Routes(Routes),
    /// The waypoint refuses new detours because this month's donation is
    /// used up, or grants again (for the directory record).
    DonationUsedUp(bool),
    /// NAT traversal's public addresses (for the directory record).
    Reachable(Vec<SocketAddr>),
    /// The address waypoints probably see for this router (for the client).
    PublicAddress(Option<IpAddr>),
    /// The waypoints the directory's snapshot picked (for the client).
    DirectoryPeers(Vec<PeerSpec>),
    /// Members the directory's snapshot revokes (for both roles).
    DirectoryRevoked(BTreeSet<MemberId>),
    /// A LAN connection's news from the relay (for the client).
    Relay(RelayEvent),
}

/// What only the daemon can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Command {
    /// Re-read the configuration file (SIGHUP, a new revocation list, a
    /// renewed certificate).
    Reload,
    /// Shut down (SIGTERM, SIGINT).
    Stop,
    /// Control clients wait for a status.
    Status,
}

/// Events and commands a driver hands the loop, in order.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    events: VecDeque<Event>,
    commands: VecDeque<Command>,
}

impl Outbox {
    /// Sends `ev` to every driver.
    pub fn event(&mut self, ev: Event) {
        self.events.push_back(ev);
    }

    /// Asks the daemon for `c`.
    pub fn command(&mut self, c: Command) {
        self.commands.push_back(c);
    }

    /// The oldest event not handed out yet.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The oldest command not carried out yet.
    pub fn next_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }
}

/// The latest event of each kind that describes a state, for a role that
/// starts after it was sent (the routing snapshot is in [`Ctx`] instead).
#[derive(Debug, Clone)]
pub(super) struct Facts {
    /// The routing snapshot in force.
    pub routes: Routes,
    used_up: Option<bool>,
    reachable: Option<Vec<SocketAddr>>,
    public: Option<Option<IpAddr>>,
    peers: Option<Vec<PeerSpec>>,
    revoked: Option<BTreeSet<MemberId>>,
}

impl Facts {
    /// Nothing known yet but the routes.
    pub fn new(routes: Routes) -> Facts {
        Facts {
            routes,
            used_up: None,
            reachable: None,
            public: None,
            peers: None,
            revoked: None,
        }
    }

    /// Keeps `ev` if it describes a state.
    pub fn record(&mut self, ev: &Event) {
        match ev {
            Event::Routes(r) => self.routes = r.clone(),
            Event::DonationUsedUp(u) => self.used_up = Some(*u),
            Event::Reachable(a) => self.reachable = Some(a.clone()),
            Event::PublicAddress(a) => self.public = Some(*a),
            Event::DirectoryPeers(p) => self.peers = Some(p.clone()),
            Event::DirectoryRevoked(r) => self.revoked = Some(r.clone()),
            Event::Relay(_) => {}
        }
    }

    /// What a role that starts now must hear.
    pub fn replay(&self) -> Vec<Event> {
        let mut v = Vec::new();
        v.extend(self.used_up.map(Event::DonationUsedUp));
        v.extend(self.reachable.clone().map(Event::Reachable));
        v.extend(self.public.map(Event::PublicAddress));
        v.extend(self.peers.clone().map(Event::DirectoryPeers));
        v.extend(self.revoked.clone().map(Event::DirectoryRevoked));
        v
    }
}

/// The earlier of two deadlines.
pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_keep_the_latest_state_of_each_kind() {
        let mut f = Facts::new(Routes::all_wan(Vec::new()));
        assert!(f.replay().is_empty());
        f.record(&Event::DonationUsedUp(true));
        f.record(&Event::Reachable(vec!["11.0.0.1:7447".parse().unwrap()]));
        f.record(&Event::DonationUsedUp(false));
        f.record(&Event::Relay(RelayEvent::Closed {
            local: "10.0.0.1:1".parse().unwrap(),
        }));
        assert_eq!(
            f.replay(),
            vec![
                Event::DonationUsedUp(false),
                Event::Reachable(vec!["11.0.0.1:7447".parse().unwrap()]),
            ]
        );
        let t = Instant::now();
        assert_eq!(earliest(None, Some(t)), Some(t));
        assert_eq!(earliest(Some(t), None), Some(t));
        assert_eq!(earliest(None, None), None);
    }
}
