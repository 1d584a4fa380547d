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

use dcol_tests::lab::{need_root, Lab, IPERF_PORT};
use dcol_tests::{iperf3_server, LinkProfile, Node};
use lease::nat_lease;

/// Bytes the server received in a `secs` upload through waypoint:`port`
/// (the iperf3 receiver's count), and the Mbit/s after the first second.
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
        "--connect-timeout",
        "3000",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let bytes = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    let iv = v["intervals"].as_array().cloned().unwrap_or_default();
    let b: f64 = iv
        .iter()
        .skip(1)
        .map(|i| i["sum"]["bytes"].as_f64().unwrap_or(0.0))
        .sum();
    let s: f64 = iv
        .iter()
        .skip(1)
        .map(|i| i["sum"]["seconds"].as_f64().unwrap_or(0.0))
        .sum();
    (bytes, if s > 0.0 { b * 8.0 / 1e6 / s } else { 0.0 })
}

#[test]
fn rate_cap_and_monthly_quota_are_enforced_and_remembered() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::symmetric());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let dest = SocketAddr::new(server, IPERF_PORT);
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, false);
    lab.start_waypoint_with("\toption donate_kbit '3000'\n");
    let port = nat_lease(&lab, dest, 1);
    let (_, capped) = through_detour(&lab, port, 5);
    eprintln!("detour with donate_kbit 3000: {capped:.2} Mbit/s");
    assert!(
        capped > 1.5 && capped < 3.4,
        "capped at 3 Mbit/s: {capped:.2}"
    );
    let st = lab.wp().status();
    assert_eq!(st["waypoint"]["donate_kbit"], 3000, "{st}");

    // Reload without the rate cap, with a 4 MB monthly quota: in place.
    let line = lab
        .wp()
        .reload(&lab.waypoint_config("\toption donate_monthly_gb '0.004'\n"));
    assert!(line.contains("donation caps"), "{line}");
    let (_, free) = through_detour(&lab, port, 3);
    eprintln!("detour uncapped, quota not yet reached: {free:.2} Mbit/s");
    assert!(free > 6.0, "{free:.2}");
    // The quota ran out during that run (3 s at ~9 Mbit/s > 4 MB): nothing more.
    let (bytes, _) = through_detour(&lab, port, 2);
    assert!(bytes < 200_000, "{bytes} bytes through after the quota");
    // A restart keeps the month's count (saved at SIGTERM, read at start):
    // still nothing through.
    lab.waypoint = None;
    lab.start_waypoint_with("\toption donate_monthly_gb '0.004'\n");
    let port = nat_lease(&lab, dest, 2);
    let (bytes, _) = through_detour(&lab, port, 2);
    assert!(bytes < 200_000, "{bytes} bytes through after a restart");
    let st = lab.wp().status();
    assert!(
        st["waypoint"]["donated_month_bytes"].as_u64().unwrap_or(0) >= 4_000_000,
        "{st}"
    );
}
