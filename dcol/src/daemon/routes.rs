//! The routing snapshot: the worker that follows the kernel's addresses
//! and routes ([`RouteWatch`]) wakes this driver, which tells the others
//! ([`Event::Routes`]: the waypoint's destination policy and WAN, the LAN
//! proxy's WAN) when something changed.

use std::os::fd::{BorrowedFd, RawFd};
use std::time::Instant;

use super::driver::{Driver, Event, Outbox};
use super::DaemonError;
use crate::routes::Routes;
use crate::sys::routewatch::RouteWatch;

/// Follows the kernel's routes.
pub(super) struct RouteDriver {
    watch: RouteWatch,
    routes: Routes,
}

impl RouteDriver {
    /// Starts the worker; returns it with the first snapshot.
    pub fn start() -> Result<(RouteDriver, Routes), DaemonError> {
        let (watch, routes) = RouteWatch::start()?;
        log::info!("routes: WAN {}", show_wan(&routes));
        let d = RouteDriver {
            watch,
            routes: routes.clone(),
        };
        Ok((d, routes))
    }
}

impl Driver for RouteDriver {
    fn fds<'a>(&'a self, out: &mut Vec<BorrowedFd<'a>>) {
        out.push(self.watch.fd());
    }

    fn on_ready(&mut self, _fd: RawFd, _now: Instant, out: &mut Outbox) {
        let Some(routes) = self.watch.latest() else {
            return;
        };
        if routes == self.routes {
            return;
        }
        if routes.wan() != self.routes.wan() {
            log::info!("routes: WAN now {}", show_wan(&routes));
        } else {
            log::debug!("routes: addresses or routes changed");
        }
        self.routes = routes.clone();
        out.event(Event::Routes(routes));
    }
}

/// The WAN interfaces for the log.
fn show_wan(routes: &Routes) -> String {
    let w = routes.wan();
    if w.is_empty() {
        "none (no default route: no destination is served)".into()
    } else {
        w.join(", ")
    }
}
