// Needs: root, network namespaces, kernel MPTCP (userspace path manager), nftables
// with NAT and maps, conntrack, tbf; programs ip, tc, nft, conntrack, ethtool,
// iperf3, mptcpize (package mptcpize). tests/setup.sh installs them.
//
//! Faults: the waypoint vanishing mid-transfer, and `kill -9` of the waypoint
//! daemon followed by a restart (crash reconciliation).

use std::net::IpAddr;
use std::time::Duration;

use dcol_tests::dcol::{has_table, in_ns, map_elements};
use dcol_tests::lab::{detours_in, need_root, no_tunnel_flows, Lab, IPERF_PORT};
use dcol_tests::{iperf3_background, iperf3_client, iperf3_server, LinkProfile, Node};

/// The waypoint's links go down in the middle of a transfer: the transfer
/// completes over the direct path, and the client notices and drops the detour.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn waypoint_vanishes_mid_transfer() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    lab.start_waypoint();
    lab.start_client();
    let topo = &lab.topo;
    let cl = lab.client.as_ref().unwrap();
    let result = std::thread::scope(|s| {
        let h =
            s.spawn(|| iperf3_client(topo.ns(Node::Client), server, IPERF_PORT, 10, true, false));
        cl.wait_status(Duration::from_secs(3), |s| {
            detours_in(s, "established") >= 1
        })
        .unwrap_or_else(|s| panic!("no detour established: {s}"));
        std::thread::sleep(Duration::from_secs(2));
        topo.link_down(6);
        // renew_interval 1 s, 3 misses: the client must drop the detour well
        // before the transfer ends.
        let st = cl
            .wait_status(Duration::from_secs(7), |s| {
                detours_in(s, "established") == 0
            })
            .unwrap_or_else(|s| panic!("client kept the dead detour: {s}"));
        let det = st["client"]["connections"][0]["subflows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["path"] == "detour")
            .cloned()
            .unwrap();
        assert_eq!(det["state"], "failed", "{det}");
        h.join().expect("iperf thread")
    });
    let r = result.expect("the transfer must complete over the direct path");
    eprintln!(
        "transfer with a vanishing waypoint: {:.2} Mbit/s",
        r.mbps_after_first_second()
    );
    assert!(
        r.mbps_after_first_second() > 3.0,
        "transfer stalled: {:.2} Mbit/s",
        r.mbps_after_first_second()
    );
    let log = cl.log_text();
    assert!(
        log.contains("dropped detour subflow"),
        "client did not destroy the subflow:\n{log}"
    );
    topo.link_up(6);
}

/// `kill -9` of the waypoint daemon leaves its table; a restart replaces it
/// (old tunnels revoked: no duplicates, no stale elements) and the client gets
/// a fresh grant for its running connection.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn waypoint_crash_is_reconciled() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let wns = lab.ns(Node::Waypoint);
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    lab.start_waypoint();
    lab.start_client();
    // A transfer keeps running through the crash (its own thread); the checks
    // run meanwhile.
    let h = iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, 10);
    lab.cl()
        .wait_status(Duration::from_secs(3), |s| {
            detours_in(s, "established") >= 1
        })
        .unwrap_or_else(|s| panic!("no detour established: {s}"));
    lab.waypoint.as_mut().unwrap().kill9();
    assert!(
        has_table(&wns, "dcol"),
        "the crashed waypoint's table should still be there"
    );
    let before = map_elements(&wns, "dcol", "nat4");
    assert!(before >= 1, "no element before the crash");
    lab.waypoint = None;
    lab.start_waypoint();
    assert!(
        lab.wp().log_text().contains("previous run"),
        "no reconciliation logged:\n{}",
        lab.wp().log_text()
    );
    let tables = in_ns(&wns, &["nft", "list", "tables"]);
    assert_eq!(
        tables.lines().filter(|l| l.contains("dcol")).count(),
        1,
        "{tables}"
    );
    // The old elements are gone with the old table. The client's renewals are
    // refused (unknown lease) or its subflows reset; it asks again and gets one
    // fresh grant per live connection: as many elements as grants, no stale ones.
    let st = lab
        .wp()
        .wait_status(Duration::from_secs(6), |s| {
            s["waypoint"]["grants"]
                .as_array()
                .is_some_and(|g| g.len() == before)
        })
        .unwrap_or_else(|s| {
            panic!(
                "client did not get fresh grants: {s}\n{}",
                lab.cl().log_text()
            )
        });
    assert_eq!(map_elements(&wns, "dcol", "nat4"), before, "{st}");
    for g in st["waypoint"]["grants"].as_array().unwrap() {
        assert!(
            g["age_s"].as_u64().unwrap() <= 6,
            "a stale grant survived: {g}"
        );
    }
    assert!(
        h.join().expect("iperf thread"),
        "the transfer failed across the waypoint crash"
    );
}

/// A server that accepts no extra subflows (its MPTCP limit is 0): the join
/// through the waypoint is refused, the client notices, stops asking for that
/// connection, and the transfer runs on the direct path.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn server_refusing_joins_is_noticed() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    lab.topo
        .ns(Node::Server)
        .exec(&["ip", "mptcp", "limits", "set", "subflows", "0"]);
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    lab.start_waypoint();
    lab.start_client();
    let topo = &lab.topo;
    let cl = lab.client.as_ref().unwrap();
    let r = std::thread::scope(|s| {
        let h =
            s.spawn(|| iperf3_client(topo.ns(Node::Client), server, IPERF_PORT, 4, true, false));
        let st = cl
            .wait_status(Duration::from_secs(3), |s| {
                s["client"]["connections"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c["subflows"].as_array().into_iter().flatten().any(|f| {
                            f["detail"]
                                .as_str()
                                .is_some_and(|d| d.contains("refused the join"))
                        })
                    })
            })
            .unwrap_or_else(|s| panic!("refused join not noticed: {s}\n{}", cl.log_text()));
        assert_eq!(detours_in(&st, "established"), 0, "{st}");
        h.join().expect("iperf thread")
    });
    let r = r.expect("transfer on the direct path");
    assert!(
        r.mbps_after_first_second() > 5.0,
        "{:.2} Mbit/s",
        r.mbps_after_first_second()
    );
    // One try per connection, no retry storm: at most one grant per connection.
    let granted = lab.wp().status()["waypoint"]["granted"]
        .as_u64()
        .unwrap_or(0);
    let log = lab.wp().log_text();
    let grants = log.lines().filter(|l| l.contains("granted bob")).count();
    assert!(grants <= 2, "{grants} grants for 2 connections:\n{log}");
    assert!(granted >= grants as u64);
}

/// A client that vanishes without releasing (kill -9): its lease expires in
/// the kernel and in the daemon, and the daemon deletes the tunnel's conntrack
/// flow.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn abandoned_lease_expires_and_its_flow_is_deleted() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let wns = lab.ns(Node::Waypoint);
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    // Lease 10 s (the minimum).
    let cfg = lab
        .waypoint_config("")
        .replace("option lease_s '60'", "option lease_s '10'");
    let sock = lab.sock("wp");
    lab.waypoint = Some(dcol_tests::dcol::Daemon::start(
        &wns,
        lab.scratch.path(),
        "wp",
        &cfg,
        &sock,
    ));
    lab.start_client();
    let h = iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, 16);
    lab.cl()
        .wait_status(Duration::from_secs(3), |s| {
            detours_in(s, "established") >= 1
        })
        .unwrap_or_else(|s| panic!("no detour: {s}"));
    assert!(
        !no_tunnel_flows(&wns),
        "the tunnel should have a conntrack flow"
    );
    lab.client.as_mut().unwrap().kill9();
    let st = lab
        .wp()
        .wait_status(Duration::from_secs(14), |s| {
            // Its flows are deleted on the waypoint's conntrack thread:
            // `ending_tunnels` counts those not deleted yet.
            s["waypoint"]["grants"]
                .as_array()
                .is_some_and(|g| g.is_empty())
                && s["waypoint"]["ending_tunnels"] == 0
        })
        .unwrap_or_else(|s| panic!("lease did not expire: {s}"));
    let _ = st;
    assert_eq!(map_elements(&wns, "dcol", "nat4"), 0);
    assert!(
        no_tunnel_flows(&wns),
        "expired tunnel kept its conntrack flow"
    );
    assert!(lab.wp().log_text().contains("lease expired"));
    assert!(
        h.join().expect("iperf thread"),
        "the transfer must survive on the direct path"
    );
}
