//! The daemon's own descriptors: signals (SIGHUP reloads, SIGTERM and
//! SIGINT stop) and the control socket, whose clients are served by their
//! own threads while the loop only builds the status they wait for.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::time::Instant;

use super::driver::{Command, Driver, Outbox};
use super::DaemonError;
use crate::control::{ControlServer, Status};
use crate::sys::os::{Signal, Signals};

/// Signals and the control socket.
pub(super) struct Host {
    signals: Signals,
    control: ControlServer,
}

impl Host {
    /// Takes over the signalfd (opened before any thread starts) and the
    /// bound control socket.
    pub fn new(signals: Signals, control: ControlServer) -> Host {
        Host { signals, control }
    }

    /// Serves the control socket at `path` from now on.
    pub fn rebind(&mut self, path: &Path) -> Result<(), DaemonError> {
        self.control = ControlServer::bind(path)?;
        Ok(())
    }

    /// Hands `status` to the control clients waiting for it.
    pub fn answer(&mut self, status: &Status) {
        self.control.answer(status);
    }
}

impl Driver for Host {
    fn fds<'a>(&'a self, out: &mut Vec<BorrowedFd<'a>>) {
        out.extend([self.signals.fd(), self.control.fd()]);
    }

    fn on_ready(&mut self, fd: RawFd, _now: Instant, out: &mut Outbox) {
        if fd == self.control.fd().as_raw_fd() {
            if self.control.waiting() {
                out.command(Command::Status);
            }
            return;
        }
        while let Some(sig) = self.signals.read() {
            if sig == Signal::SIGHUP {
                out.command(Command::Reload);
            } else {
                log::info!("signal {}: shutting down", sig as i32);
                out.command(Command::Stop);
                return;
            }
        }
    }
}
