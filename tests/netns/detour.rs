// Needs: root, network namespaces, kernel MPTCP (userspace path manager), nftables
// with NAT and maps, conntrack, tbf; programs ip, tc, nft, ethtool, iperf3,
// mptcpize (package mptcpize). tests/setup.sh installs them.
//
//! The detour path end to end: a DCol waypoint (NAT tunnel) and a DCol client in
//! the paper's topology, an unmodified MPTCP server (`mptcpize run iperf3 -s`) and
//! an unmodified MPTCP client app (`mptcpize run iperf3 -c`).

use std::net::IpAddr;
use std::time::Duration;

use dcol_tests::dcol::{has_table, in_ns, map_elements};
use dcol_tests::lab::{detours_in, need_root, no_tunnel_flows, Lab, IPERF_PORT};
use dcol_tests::{iperf3_client, iperf3_server, JoinCounter, LinkProfile, Node};

fn aggregation(v6: bool) {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let (server, waypoint): (IpAddr, IpAddr) = if v6 {
        (
            lab.topo.addr6(Node::Server).into(),
            lab.topo.addr6(Node::Waypoint).into(),
        )
    } else {
        (
            lab.topo.addr4(Node::Server).into(),
            lab.topo.addr4(Node::Waypoint).into(),
        )
    };
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    let counter = JoinCounter::install(lab.topo.ns(Node::Server), IPERF_PORT, &[waypoint]);
    std::thread::sleep(Duration::from_millis(300));

    // Baseline: plain TCP, DCol not running.
    let tcp = iperf3_client(
        lab.topo.ns(Node::Client),
        server,
        IPERF_PORT,
        6,
        false,
        false,
    )
    .expect("plain TCP");

    lab.start_waypoint();
    lab.start_client();
    if let Some(s) = std::env::var_os("DCOL_DEBUG_PAUSE") {
        eprintln!(
            "pausing for inspection; namespaces: {:?}",
            lab.ns(Node::Waypoint)
        );
        std::thread::sleep(Duration::from_secs(s.to_str().unwrap().parse().unwrap()));
    }
    let dcol = iperf3_client(
        lab.topo.ns(Node::Client),
        server,
        IPERF_PORT,
        6,
        true,
        false,
    )
    .expect("DCol");
    let (t, d) = (
        tcp.mbps_after_first_second(),
        dcol.mbps_after_first_second(),
    );
    eprintln!(
        "plain TCP {t:.2} Mbit/s, MPTCP + DCol detour {d:.2} Mbit/s, ratio {:.2}",
        d / t
    );

    // The server saw data from the waypoint's address: a join through the detour.
    let via = counter.bytes_from(waypoint);
    eprintln!("server received {via} bytes from the waypoint {waypoint}");
    assert!(
        via > 1_000_000,
        "server got only {via} bytes from the waypoint"
    );
    assert!(
        d >= 1.8 * t,
        "DCol {d:.2} Mbit/s is not 1.8x plain TCP {t:.2} Mbit/s"
    );

    // The waypoint logged and reported the grant; the client its detour.
    let wl = lab.wp().log_text();
    assert!(
        wl.contains("granted bob"),
        "waypoint log lacks the grant:\n{wl}"
    );
    let wst = lab.wp().status();
    assert!(
        wst["waypoint"]["granted"].as_u64().unwrap_or(0) >= 1,
        "{wst}"
    );
    let cl = lab.cl().log_text();
    assert!(
        cl.contains("detour subflow for"),
        "client log lacks the subflow:\n{cl}"
    );
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn aggregation_ipv4_core_limited() {
    aggregation(false);
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn aggregation_ipv6_core_limited() {
    aggregation(true);
}

/// Status shows a live detour while a transfer runs, and SIGTERM of both
/// daemons removes the table, its elements and restores the path manager.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn status_and_clean_shutdown() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let cns = lab.ns(Node::Client);
    let wns = lab.ns(Node::Waypoint);
    let pm_before = in_ns(&cns, &["sysctl", "-n", "net.mptcp.path_manager"]);
    let fwd_before = in_ns(&wns, &["sysctl", "-n", "net.ipv4.ip_forward"]);
    assert_eq!(
        fwd_before.trim(),
        "0",
        "the waypoint host starts without forwarding"
    );
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    lab.start_waypoint();
    lab.start_client();
    assert_eq!(
        in_ns(&cns, &["sysctl", "-n", "net.mptcp.path_manager"]).trim(),
        "userspace"
    );
    assert!(has_table(&wns, "dcol"));

    let topo_client = lab.topo.ns(Node::Client);
    let handle = std::thread::scope(|s| {
        let h = s.spawn(|| iperf3_client(topo_client, server, IPERF_PORT, 4, true, false));
        let st = lab
            .cl()
            .wait_status(Duration::from_secs(3), |s| {
                detours_in(s, "established") >= 1
            })
            .unwrap_or_else(|s| panic!("no established detour in client status: {s}"));
        let conn = &st["client"]["connections"][0];
        assert_eq!(conn["remote"], format!("{server}:{IPERF_PORT}"));
        let det = conn["subflows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["path"] == "detour")
            .unwrap();
        assert_eq!(det["waypoint"], "alice");
        assert_eq!(det["tunnel"], "nat");
        // iperf3 opens two connections (control and data): each has its detour.
        let wst = lab.wp().status();
        let grants = wst["waypoint"]["grants"].as_array().unwrap();
        assert!(!grants.is_empty(), "{wst}");
        for g in grants {
            assert_eq!(g["member"], "bob");
            assert_eq!(g["destination"], format!("{server}:{IPERF_PORT}"));
        }
        assert_eq!(
            map_elements(&wns, "dcol", "nat4"),
            grants.len(),
            "one map element per grant"
        );
        h.join().expect("iperf thread")
    });
    handle.expect("transfer");

    let st = lab.client.as_mut().unwrap().terminate();
    assert!(st.success(), "client exit {st}");
    let st = lab.waypoint.as_mut().unwrap().terminate();
    assert!(st.success(), "waypoint exit {st}");
    assert!(
        !has_table(&wns, "dcol"),
        "waypoint left its nftables table behind"
    );
    assert_eq!(
        in_ns(&cns, &["sysctl", "-n", "net.mptcp.path_manager"]),
        pm_before
    );
    assert!(
        no_tunnel_flows(&wns),
        "conntrack flows of the tunnel survived SIGTERM"
    );
}
