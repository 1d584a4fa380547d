// Needs: root, network namespaces, kernel MPTCP (userspace path manager),
// nftables, wireguard-go + wireguard-tools; tests/setup.sh installs them.
//
//! Budgets of the release binary (issue 15): the idle memory of `dcol run`
//! with every role on. The budget is for the binary a router runs, the
//! static musl build (a dynamic glibc build counts its shared libraries in
//! its RSS: 5.8 MB measured), so the test is ignored in the debug suite;
//! `.ci/run` runs it against `cross/build x86_64-unknown-linux-musl`:
//!
//! ```text
//! DCOL_BIN=target/x86_64-unknown-linux-musl/release/dcol \
//!   cargo test -p dcol --test netns_budget -- --ignored
//! ```

use std::time::{Duration, Instant};

use dcol_tests::dcol::{dcol_bin, main_section, Daemon};
use dcol_tests::lab::{need_root, Lab};
use dcol_tests::{LinkProfile, Node};

/// The issue's budget for the idle RSS of `dcol run`, in KiB.
const IDLE_RSS_KB: u64 = 4 * 1024;

/// `field` (`VmRSS:`, `VmHWM:` ...) of /proc/PID/status, in KiB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Threads of PID.
fn threads(pid: u32) -> u64 {
    status_kb(pid, "Threads:")
}

#[test]
#[ignore = "a budget of the static release binary: .ci/run runs it with DCOL_BIN=target/x86_64-unknown-linux-musl/release/dcol"]
fn idle_rss_with_every_role_on() {
    if !need_root() {
        return;
    }
    let bin = dcol_bin();
    assert!(
        bin.to_string_lossy().contains("release"),
        "the budget is for the release binary; DCOL_BIN is {}",
        bin.display()
    );
    let mut lab = Lab::new(LinkProfile::core_limited());
    let state = lab.scratch.path().join("all-state");
    let sock = lab.sock("all");
    // Every role in one daemon: the waypoint with NAT and VPN tunnels and
    // UPnP/NAT-PMP (no gateway answers: it keeps asking), the client with
    // the LAN proxy, a peer, and the membership directory (nothing listens
    // at its loopback address: it keeps retrying).
    let main = main_section(&lab.waypoint_member, &lab.collective, &sock, &state).replace(
        "\toption log_level 'debug'\n",
        "\toption log_level 'info'\n\toption directory 'http://127.0.0.1:7450/snapshot'\n\toption directory_interval_s '5'\n",
    );
    let cfg = format!(
        "{main}config waypoint 'waypoint'\n\toption enabled '1'\n\tlist listen '0.0.0.0:7447'\n\toption nat_ports '40000-40099'\n\toption vpn_subnet '10.200.7.0/24'\n\toption vpn_interface 'wpwg0'\n\toption upnp '1'\n\tlist allow_destination '10.0.0.0/8'\n\toption donation_file '{}'\n\n\
         config client 'client'\n\toption enabled '1'\n\toption max_detours '2'\n\toption lan_proxy '1'\n\tlist lan_interface 'lo'\n\n\
         config peer\n\toption name 'carol'\n\toption address '10.0.1.2:7447'\n\toption tunnel 'nat'\n",
        lab.scratch.path().join("all-donated").display()
    );
    let d = Daemon::start(
        &lab.ns(Node::Waypoint),
        lab.scratch.path(),
        "all",
        &cfg,
        &sock,
    );
    let st = d.status();
    for role in ["client", "waypoint", "traversal"] {
        assert!(st[role].is_object(), "role {role} is off: {st}");
    }
    assert!(st["client"]["lan_proxy"].is_object(), "LAN proxy off: {st}");
    let pid = d.pid().expect("daemon pid");
    // Idle: nothing asks it anything but the timers of its roles.
    let t0 = Instant::now();
    let mut worst = 0;
    while t0.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(500));
        worst = worst.max(status_kb(pid, "VmRSS:"));
    }
    let hwm = status_kb(pid, "VmHWM:");
    eprintln!(
        "idle RSS of dcol run with every role on ({}): {worst} KiB (peak {hwm} KiB, {} threads); budget {IDLE_RSS_KB} KiB",
        bin.display(),
        threads(pid)
    );
    assert!(
        worst <= IDLE_RSS_KB,
        "idle RSS {worst} KiB over the {IDLE_RSS_KB} KiB budget; log:\n{}",
        d.log_text()
    );
    drop(d);
    lab.waypoint = None;
}
