//! Sysctls the daemon changes, restored on exit and after a crash.
//!
//! Before changing a value the daemon records the original in a state file
//! (`<state_dir>/sysctl.orig`, lines `path value`). A clean exit restores the
//! values and deletes the file; a daemon starting after a crash finds the file,
//! restores what it says first, and only then reads the "original" values anew.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::SysError;

/// `net.mptcp.pm_type`: 0 in-kernel, 1 userspace path manager.
pub const MPTCP_PM_TYPE: &str = "/proc/sys/net/mptcp/pm_type";
/// `net.mptcp.path_manager` (kernel ≥ 6.15): "kernel" or "userspace".
pub const MPTCP_PATH_MANAGER: &str = "/proc/sys/net/mptcp/path_manager";

/// `net.ipv4.ip_forward`.
pub const IPV4_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Per-flow byte counters in conntrack (the evidence log's bytes per lease).
pub const CONNTRACK_ACCT: &str = "/proc/sys/net/netfilter/nf_conntrack_acct";
/// `net.ipv4.tcp_fastopen` (bit 1 client, bit 2 server; IPv6 too).
pub const TCP_FASTOPEN: &str = "/proc/sys/net/ipv4/tcp_fastopen";
/// `net.ipv6.conf.all.forwarding`.
pub const IPV6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Reads a sysctl file, trimmed.
pub fn read(path: &str) -> Result<String, SysError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| {
            SysError::io(
                "read sysctl",
                io::Error::new(e.kind(), format!("{path}: {e}")),
            )
        })
}

/// Writes a sysctl file.
pub fn write(path: &str, value: &str) -> Result<(), SysError> {
    fs::write(path, value).map_err(|e| {
        SysError::io(
            "write sysctl",
            io::Error::new(e.kind(), format!("{path}={value}: {e}")),
        )
    })
}

/// Sysctls changed by this daemon, with their original values.
#[derive(Debug)]
pub struct SysctlGuard {
    state: PathBuf,
    saved: Vec<(String, String)>,
}

impl SysctlGuard {
    /// Restores whatever a crashed run left recorded in `state_dir`, then returns
    /// an empty guard recording into it.
    pub fn recover(state_dir: &Path) -> Result<Self, SysError> {
        let state = state_dir.join("sysctl.orig");
        if let Ok(text) = fs::read_to_string(&state) {
            for line in text.lines() {
                if let Some((path, value)) = line.split_once(' ') {
                    log::warn!("restoring {path}={value} left changed by a previous run");
                    if let Err(e) = write(path, value) {
                        log::warn!("{e}");
                    }
                }
            }
            let _ = fs::remove_file(&state);
        }
        Ok(SysctlGuard {
            state,
            saved: Vec::new(),
        })
    }

    /// Sets `path` to `value`, remembering the original (persisted before the change).
    pub fn set(&mut self, path: &str, value: &str) -> Result<(), SysError> {
        let orig = read(path)?;
        if orig == value {
            return Ok(());
        }
        self.saved.push((path.to_owned(), orig));
        self.persist()?;
        write(path, value)
    }

    fn persist(&self) -> Result<(), SysError> {
        if let Some(dir) = self.state.parent() {
            fs::create_dir_all(dir).map_err(|e| SysError::io("create state dir", e))?;
        }
        let mut f =
            fs::File::create(&self.state).map_err(|e| SysError::io("write sysctl state", e))?;
        for (p, v) in &self.saved {
            writeln!(f, "{p} {v}").map_err(|e| SysError::io("write sysctl state", e))?;
        }
        Ok(())
    }

    /// Restores every original value (newest change first) and deletes the state file.
    pub fn restore(&mut self) {
        while let Some((path, value)) = self.saved.pop() {
            if let Err(e) = write(&path, &value) {
                log::warn!("{e}");
            }
        }
        let _ = fs::remove_file(&self.state);
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        self.restore();
    }
}
