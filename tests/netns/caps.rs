// Needs: root, network namespaces, nftables (NAT, quota, limit), conntrack,
// tbf; programs ip, tc, nft, ethtool, iperf3. tests/setup.sh installs them.
//
//! Donation caps: a waypoint owner's rate cap (`donate_kbit`) and monthly
//! volume cap (`donate_monthly_gb`) on everything detoured through the
//! router, enforced by the kernel; the month's count survives a restart; a
//! reload changes the caps in place.

#[path = "lease.rs"]
mod lease;

use std::net::{IpAddr, SocketAddr};

use dcol::proto::{Outcome, RefusalReason};
use dcol_tests::lab::{need_root, Lab, IPERF_PORT};
use dcol_tests::{iperf3_server_with, LinkProfile, Node};
use lease::{nat_lease, nat_request};

/// Bytes the server received in a `secs` upload through waypoint:`port`,
/// and its Mbit/s after the first second (the server's own intervals: the
/// sender's count what it wrote into its socket buffer).
fn through_detour(lab: &Lab, port: u16, secs: u32) -> (u64, f64) {
    // iperf3's server takes a moment to accept the next test after one ends.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let wp: IpAddr = lab.topo.addr4(Node::Waypoint).into();
    let out = lab.topo.ns(Node::Client).output(&[
        "iperf3",
        "-c",
        &wp.to_string(),
        "-p",
        &port.to_string(),
        "-t",
        &secs.to_string(),
        "-J",
        "--get-server-output",
        "--connect-timeout",
        "3000",
        // A run whose tunnel stops carrying (the quota ran out) ends 3 s
        // later instead of after TCP's retransmissions.
        "--snd-timeout",
        "3000",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let bytes = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    let iv = v["server_output_json"]["intervals"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sum = |key: &str| -> f64 {
        iv.iter()
            .skip(1)
            .map(|i| i["sum"][key].as_f64().unwrap_or(0.0))
            .sum()
    };
    let (b, s) = (sum("bytes"), sum("seconds"));
    (bytes, if s > 0.0 { b * 8.0 / 1e6 / s } else { 0.0 })
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn rate_cap_and_monthly_quota_are_enforced_and_remembered() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::symmetric());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let dest = SocketAddr::new(server, IPERF_PORT);
    let mut srv = iperf3_server_with(lab.topo.ns(Node::Server), IPERF_PORT, false, &["-J"]);
    lab.start_waypoint_with("\toption donate_kbit '3000'\n");
    let port = nat_lease(&lab, dest, 1);
    let secs = 6;
    let (bytes, capped) = through_detour(&lab, port, secs);
    let whole = bytes as f64 * 8.0 / 1e6 / f64::from(secs);
    eprintln!(
        "detour with donate_kbit 3000: {capped:.2} Mbit/s after the first second, {whole:.2} over the run"
    );
    // The cap counts IP packets, iperf3 its payload: within the cap + 5 %,
    // and not far below it (the link carries ~9.5).
    assert!(
        capped > 2.4 && capped < 3.15,
        "capped at 3 Mbit/s: {capped:.2}"
    );
    // The kernel's byte limit starts with a full bucket: one second's worth
    // at the cap may pass on top.
    let bound = 3.0 * (f64::from(secs) + 1.0) / f64::from(secs);
    assert!(
        whole < bound,
        "capped at 3 Mbit/s plus a 1 s bucket over the whole run: {whole:.2}"
    );
    let st = lab.wp().status();
    assert_eq!(st["waypoint"]["donate_kbit"], 3000, "{st}");
    assert!(st["waypoint"]["refusing"].is_null(), "{st}");

    // Reload without the rate cap, with a 4 MB monthly quota: in place.
    let line = lab
        .wp()
        .reload(&lab.waypoint_config("\toption donate_monthly_gb '0.004'\n"));
    assert!(line.contains("donation caps"), "{line}");
    let (_, free) = through_detour(&lab, port, 2);
    eprintln!("detour uncapped, quota not yet reached: {free:.2} Mbit/s");
    assert!(free > 6.0, "{free:.2}");
    // ~2.4 MB went through; this run uses up the rest (4 s at ~9 Mbit/s)
    // and stalls; then nothing more through the tunnel, and no new tunnel,
    // with the reason.
    through_detour(&lab, port, 4);
    let (bytes, _) = through_detour(&lab, port, 2);
    assert!(bytes < 200_000, "{bytes} bytes through after the quota");
    match nat_request(&lab, dest, 2) {
        Outcome::Refused {
            reason: RefusalReason::DonationUsedUp,
        } => {}
        o => panic!("granted after the quota: {o:?}"),
    }
    let st = lab.wp().status();
    let why = st["waypoint"]["refusing"].as_str().unwrap_or_default();
    assert!(why.contains("of 4000000 bytes donated"), "{st}");
    assert_eq!(st["waypoint"]["refused"]["DonationUsedUp"], 1, "{st}");
    assert!(lab
        .wp()
        .log_text()
        .contains("this month's donation is used up"));
    let text = lab.wp().status_text();
    assert!(text.contains("refusing new detours: "), "{text}");

    // A restart keeps the month's count (saved at SIGTERM, read at start),
    // also after a reboot, which empties state_dir (RAM on a router).
    lab.waypoint = None;
    let state = lab.scratch.path().join("wp-state/donated");
    std::fs::remove_file(&state).expect("the count in state_dir");
    lab.start_waypoint_with("\toption donate_monthly_gb '0.004'\n");
    let st = lab.wp().status();
    assert!(
        st["waypoint"]["donated_month_bytes"].as_u64().unwrap_or(0) >= 4_000_000,
        "{st}"
    );
    assert!(matches!(
        nat_request(&lab, dest, 3),
        Outcome::Refused {
            reason: RefusalReason::DonationUsedUp
        }
    ));

    // The owner raises the cap: grants and traffic resume at once.
    lab.wp()
        .reload(&lab.waypoint_config("\toption donate_monthly_gb '1'\n"));
    let port = nat_lease(&lab, dest, 4);
    // A new server: the one whose test stalled at the quota still waits on it.
    drop(srv);
    srv = iperf3_server_with(lab.topo.ns(Node::Server), IPERF_PORT, false, &["-J"]);
    let (bytes, _) = through_detour(&lab, port, 2);
    assert!(
        bytes > 1_000_000,
        "{bytes} bytes through after raising the cap"
    );
    let st = lab.wp().status();
    assert!(st["waypoint"]["refusing"].is_null(), "{st}");
    assert!(lab.wp().log_text().contains("waypoint: donating again"));
    drop(srv);
}
