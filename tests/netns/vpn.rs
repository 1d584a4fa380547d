// Needs: root, network namespaces, kernel MPTCP (userspace path manager),
// nftables (NAT, masquerade), tbf, wireguard-go + wireguard-tools (the kernel
// here has no WireGuard module; on OpenWrt the kernel backend is used);
// programs ip, tc, nft, ethtool, iperf3, mptcpize. tests/setup.sh installs them.
//
//! VPN tunnels through waypoints with WireGuard: a member gets one tunnel per
//! VPN waypoint through signed signaling, and every MPTCP connection gets a
//! detour subflow from the tunnel address to the server's own address.

use std::net::IpAddr;
use std::time::Duration;

use dcol_tests::dcol::{has_table, in_ns};
use dcol_tests::lab::{detours_in, need_root, Lab, IPERF_PORT};
use dcol_tests::{iperf3_client, iperf3_server, JoinCounter, LinkProfile, Node};

const VPN: &str = "\toption vpn_subnet '10.200.7.0/24'\n\toption vpn_interface 'wpwg0'\n";

fn wait_vpn_up(lab: &Lab) {
    let t0 = std::time::Instant::now();
    while !lab.cl().log_text().contains("VPN tunnel to alice up") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no VPN tunnel:\n{}\n---\n{}",
            lab.cl().log_text(),
            lab.wp().log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn links(ns: &str) -> String {
    in_ns(ns, &["ip", "-o", "link"])
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn aggregation_through_a_vpn_detour_and_clean_exit() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let waypoint: IpAddr = lab.topo.addr4(Node::Waypoint).into();
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    let counter = JoinCounter::install(lab.topo.ns(Node::Server), IPERF_PORT, &[waypoint]);
    std::thread::sleep(Duration::from_millis(300));
    let tcp = iperf3_client(
        lab.topo.ns(Node::Client),
        server,
        IPERF_PORT,
        6,
        false,
        false,
    )
    .expect("plain TCP");
    lab.start_waypoint_with(VPN);
    let cfg = lab.client_config_tunnels("", &["vpn"]);
    lab.start_client_with(Node::Client, &cfg);
    wait_vpn_up(&lab);
    let dcol = iperf3_client(
        lab.topo.ns(Node::Client),
        server,
        IPERF_PORT,
        6,
        true,
        false,
    )
    .expect("DCol over VPN");
    let (a, b) = (
        tcp.mbps_after_first_second(),
        dcol.mbps_after_first_second(),
    );
    eprintln!(
        "VPN detour: TCP {a:.2} Mbit/s, DCol {b:.2} Mbit/s, ratio {:.2}",
        b / a
    );
    let via = counter.bytes_from(waypoint);
    assert!(
        via > 1_000_000,
        "server got only {via} bytes from the waypoint"
    );
    assert!(b >= 1.8 * a, "{b:.2} is not 1.8x {a:.2}");
    let wlog = lab.wp().log_text();
    assert!(wlog.contains("granted VPN to bob"), "{wlog}");
    let ws = lab.wp().status();
    assert_eq!(ws["waypoint"]["vpn_peers"][0]["member"], "bob", "{ws}");
    assert_eq!(
        ws["waypoint"]["vpn_peers"][0]["address"], "10.200.7.2",
        "{ws}"
    );
    let cs = lab.cl().status();
    assert_eq!(cs["client"]["peers"][0]["vpn_state"], "up", "{cs}");
    assert_eq!(
        cs["client"]["peers"][0]["vpn_address"], "10.200.7.2",
        "{cs}"
    );

    // SIGTERM: no interface, rule, route or table left on either side.
    let (cns, wns) = (lab.ns(Node::Client), lab.ns(Node::Waypoint));
    assert!(links(&cns).contains("dcolc0"), "{}", links(&cns));
    assert!(lab.client.as_mut().expect("client").terminate().success());
    assert!(lab
        .waypoint
        .as_mut()
        .expect("waypoint")
        .terminate()
        .success());
    assert!(!links(&cns).contains("dcolc0"), "{}", links(&cns));
    assert!(!links(&wns).contains("wpwg0"), "{}", links(&wns));
    let rules = in_ns(&cns, &["ip", "rule"]);
    assert!(!rules.contains("10.200.7."), "{rules}");
    assert!(in_ns(&cns, &["ip", "route", "show", "table", "7400"])
        .trim()
        .is_empty());
    assert!(!has_table(&wns, "dcol_vpn") && !has_table(&wns, "dcol"));
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn ipv6_through_a_vpn_detour() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server: IpAddr = lab.topo.addr6(Node::Server).into();
    let waypoint: IpAddr = lab.topo.addr6(Node::Waypoint).into();
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    let counter = JoinCounter::install(lab.topo.ns(Node::Server), IPERF_PORT, &[waypoint]);
    std::thread::sleep(Duration::from_millis(300));
    let tcp = iperf3_client(
        lab.topo.ns(Node::Client),
        server,
        IPERF_PORT,
        6,
        false,
        false,
    )
    .expect("plain TCP over IPv6");
    lab.start_waypoint_with(&format!("{VPN}\toption vpn_subnet6 'fd77:0:0:7::/64'\n"));
    let cfg = lab.client_config_tunnels("", &["vpn"]);
    lab.start_client_with(Node::Client, &cfg);
    wait_vpn_up(&lab);
    let cs = lab.cl().status();
    assert_eq!(cs["client"]["peers"][0]["vpn_state"], "up", "{cs}");
    let dcol = iperf3_client(
        lab.topo.ns(Node::Client),
        server,
        IPERF_PORT,
        6,
        true,
        false,
    )
    .expect("DCol over VPN, IPv6");
    let (a, b) = (
        tcp.mbps_after_first_second(),
        dcol.mbps_after_first_second(),
    );
    eprintln!(
        "VPN detour, IPv6: TCP {a:.2} Mbit/s, DCol {b:.2} Mbit/s, ratio {:.2}",
        b / a
    );
    let via = counter.bytes_from(waypoint);
    assert!(
        via > 1_000_000,
        "server got only {via} bytes from the waypoint (IPv6)"
    );
    assert!(b >= 1.8 * a, "{b:.2} is not 1.8x {a:.2}");
    let rules = in_ns(&lab.ns(Node::Client), &["ip", "-6", "rule"]);
    assert!(rules.contains("fd77:0:0:7::2"), "{rules}");
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn mixed_nat_and_vpn_detours() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    std::thread::sleep(Duration::from_millis(300));
    lab.start_waypoint_with(VPN);
    let cfg = lab.client_config_tunnels("", &["nat", "vpn"]);
    lab.start_client_with(Node::Client, &cfg);
    wait_vpn_up(&lab);
    let h = dcol_tests::iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, 5);
    std::thread::sleep(Duration::from_millis(2500));
    let st = lab.cl().status();
    let tunnels: Vec<String> = st["client"]["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["subflows"].as_array().into_iter().flatten())
        .filter(|s| s["state"] == "established" && s["path"] == "detour")
        .map(|s| s["tunnel"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        tunnels.iter().any(|t| t == "nat") && tunnels.iter().any(|t| t == "vpn"),
        "{st}"
    );
    assert!(detours_in(&st, "established") >= 2, "{st}");
    assert!(h.join().expect("iperf"), "transfer failed");
}

/// Pings `dst` from source `src` in `ns`; true when any reply came.
fn ping(ns: &str, src: &str, dst: &str) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-q", "-c", "2", "-W", "1", "-I", src, dst,
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn tunnels_reach_only_allowed_destinations_and_need_membership() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    // The waypoint owner's LAN: 192.168.77.0/24 behind the waypoint.
    let wlan = dcol_tests::Netns::new("wlan");
    let wns = lab.ns(Node::Waypoint);
    dcol_tests::run(&[
        "ip",
        "link",
        "add",
        "wl0",
        "netns",
        &wns,
        "type",
        "veth",
        "peer",
        "name",
        "wl1",
        "netns",
        wlan.name(),
    ]);
    in_ns(
        &wns,
        &["ip", "addr", "add", "192.168.77.1/24", "dev", "wl0"],
    );
    in_ns(&wns, &["ip", "link", "set", "wl0", "up"]);
    wlan.exec(&["ip", "addr", "add", "192.168.77.2/24", "dev", "wl1"]);
    wlan.exec(&["ip", "link", "set", "wl1", "up"]);
    wlan.exec(&["ip", "route", "add", "default", "via", "192.168.77.1"]);
    // Only the server's network is allowed (not the lab-wide 10.0.0.0/8).
    let cfg = lab.waypoint_config(VPN).replace(
        "\tlist allow_destination '10.0.0.0/8'\n",
        "\tlist allow_destination '10.0.3.0/24'\n",
    );
    let d = dcol_tests::dcol::Daemon::start(&wns, lab.scratch.path(), "wp", &cfg, &lab.sock("wp"));
    lab.waypoint = Some(d);
    let cfg = lab.client_config_tunnels("", &["vpn"]);
    lab.start_client_with(Node::Client, &cfg);
    wait_vpn_up(&lab);
    let cns = lab.ns(Node::Client);
    let me = "10.200.7.2";
    // Allowed: the server. Not: the waypoint itself, its LAN, other private space.
    assert!(
        ping(&cns, me, "10.0.3.2"),
        "the tunnel does not carry allowed traffic"
    );
    for dst in [
        "10.200.7.1",
        "192.168.77.1",
        "192.168.77.2",
        "10.0.6.2",
        "10.0.1.1",
    ] {
        assert!(!ping(&cns, me, dst), "reached {dst} through the tunnel");
    }

    // A non-member with a made-up WireGuard key: no handshake, nothing through.
    let wlog = lab.wp().log_text();
    let wp_key = wlog
        .split("key ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .expect("waypoint key in its log")
        .to_owned();
    let key = lab.scratch.path().join("fake.key");
    let fake = in_ns(&cns, &["wg", "genkey"]);
    std::fs::write(&key, fake.trim()).expect("write key");
    std::process::Command::new("ip")
        .args(["netns", "exec", &cns, "wireguard-go", "fakewg0"])
        .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("wireguard-go");
    in_ns(
        &cns,
        &[
            "wg",
            "set",
            "fakewg0",
            "private-key",
            key.to_str().expect("utf-8"),
            "peer",
            &wp_key,
            "endpoint",
            "10.0.6.2:51820",
            "allowed-ips",
            "0.0.0.0/0",
        ],
    );
    in_ns(
        &cns,
        &["ip", "addr", "add", "10.200.7.99/32", "dev", "fakewg0"],
    );
    in_ns(&cns, &["ip", "link", "set", "fakewg0", "up"]);
    in_ns(
        &cns,
        &[
            "ip",
            "route",
            "add",
            "10.0.3.2/32",
            "dev",
            "fakewg0",
            "table",
            "99",
        ],
    );
    in_ns(
        &cns,
        &["ip", "rule", "add", "from", "10.200.7.99", "lookup", "99"],
    );
    assert!(
        !ping(&cns, "10.200.7.99", "10.0.3.2"),
        "a made-up key got through"
    );
    let hs = in_ns(&cns, &["wg", "show", "fakewg0", "latest-handshakes"]);
    assert!(
        hs.trim().ends_with("\t0"),
        "handshake with a made-up key: {hs}"
    );
    let _ = in_ns(&cns, &["ip", "link", "del", "fakewg0"]);
}
