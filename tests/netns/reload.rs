// Needs: root, network namespaces, kernel MPTCP (userspace path manager),
// nftables (NAT, maps, REDIRECT), conntrack, tbf; programs ip, tc, nft,
// ethtool, iperf3, mptcpize (package mptcpize). tests/setup.sh installs them.
//
//! Configuration reload (SIGHUP, what `procd`'s reload trigger sends after
//! `uci commit dcol`): changes apply without dropping established connections
//! where the change allows it; a bad file changes nothing; revocations bite at
//! once; `enabled '0'` stops the daemon cleanly.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dcol_tests::dcol::{has_table, in_ns, map_elements};
use dcol_tests::lab::{detours_in, need_root, Lab, IPERF_PORT};
use dcol_tests::{iperf3_background, iperf3_server, LinkProfile, Node};

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn reload_keeps_connections_and_applies_changes() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    std::thread::sleep(Duration::from_millis(300));
    lab.start_waypoint();
    lab.start_client();
    let transfer = iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, 8);
    wait_for("a detour", Duration::from_secs(5), || {
        detours_in(&lab.cl().status(), "established") >= 1
    });
    let tokens = |st: &serde_json::Value| -> Vec<String> {
        let mut t: Vec<String> = st["client"]["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["token"].as_str().unwrap_or("").to_owned())
            .collect();
        t.sort();
        t
    };
    std::thread::sleep(Duration::from_millis(500));
    let st = lab.cl().status();
    let (before, detours) = (tokens(&st), detours_in(&st, "established"));

    // Soft changes on both daemons: same processes, the detour lives on.
    let line = lab.cl().reload(
        &lab.client_config("\toption max_detours '1'\n\toption request_timeout_ms '400'\n"),
    );
    assert!(
        line.contains("reloaded") && line.contains("client settings"),
        "{line}"
    );
    let line = lab
        .wp()
        .reload(&lab.waypoint_config("\toption lease_s '120'\n"));
    assert!(line.contains("waypoint settings"), "{line}");
    std::thread::sleep(Duration::from_millis(1500));
    let st = lab.cl().status();
    assert_eq!(tokens(&st), before, "{st}");
    assert_eq!(
        detours_in(&st, "established"),
        detours,
        "detour lost on reload: {st}"
    );

    // A broken file changes nothing; the daemon keeps serving.
    let line = lab
        .cl()
        .reload(&lab.client_config("\toption max_detours 'many'\n"));
    assert!(line.contains("keeping the running configuration"), "{line}");
    assert!(
        line.contains("max_detours"),
        "error does not name the option: {line}"
    );
    assert_eq!(detours_in(&lab.cl().status(), "established"), detours);
    assert!(
        transfer.join().expect("iperf thread"),
        "transfer failed across reloads"
    );

    // Revocation by reload: the member's tunnels end now. (iperf3's server
    // takes a moment to accept the next test after one ends.)
    std::thread::sleep(Duration::from_millis(1500));
    let transfer = iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, 4);
    let wns = lab.ns(Node::Waypoint);
    wait_for("a NAT element", Duration::from_secs(5), || {
        map_elements(&wns, "dcol", "nat4") >= 1
    });
    let bob = lab.cl().status()["member"]["id"]
        .as_str()
        .expect("member id")
        .to_owned();
    let main_revoked = lab.waypoint_config("").replacen(
        "\toption log_level",
        &format!("\tlist revoked '{bob}'\n\toption log_level"),
        1,
    );
    let line = lab.wp().reload(&main_revoked);
    assert!(line.contains("identity or revocations"), "{line}");
    wait_for("revoked element removed", Duration::from_secs(2), || {
        map_elements(&wns, "dcol", "nat4") == 0
    });
    assert!(lab.wp().log_text().contains("revoked: bob"));
    assert!(
        transfer.join().expect("iperf thread"),
        "direct path did not carry on"
    );

    // enabled '0': the waypoint stops and removes its table.
    let off = lab
        .waypoint_config("")
        .replacen("\toption enabled '1'", "\toption enabled '0'", 1);
    let wp = lab.waypoint.as_mut().expect("waypoint");
    let _ = wp.reload(&off);
    let t0 = Instant::now();
    while wp.running() {
        assert!(t0.elapsed() < Duration::from_secs(5), "still running");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!has_table(&wns, "dcol"), "table left behind");
}

#[test]
fn reload_of_lan_rules_keeps_proxied_connections() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    std::thread::sleep(Duration::from_millis(300));
    lab.start_waypoint();
    lab.start_router_client("\toption detour_policy 'all'\n");
    let rns = lab.ns(Node::Rc);
    let transfer = iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, 6);
    wait_for("a proxied detour", Duration::from_secs(5), || {
        detours_in(&lab.cl().status(), "established") >= 1
    });
    // New bypass list: the table is replaced, the proxied transfer lives on.
    let extra = "\toption detour_policy 'all'\n\tlist bypass '10.200.0.0/16'\n";
    let cfg = lab.client_config(&format!(
        "\toption lan_proxy '1'\n\tlist lan_interface 'l1a'\n{extra}"
    ));
    let line = lab.cl().reload(&cfg);
    assert!(line.contains("LAN interception rules"), "{line}");
    let rules = in_ns(&rns, &["nft", "list", "table", "inet", "dcol_lan"]);
    assert!(rules.contains("10.200.0.0/16"), "{rules}");
    assert!(
        transfer.join().expect("iperf thread"),
        "proxied transfer broke on reload"
    );

    // Bypass the server's network: new connections go direct.
    let accepted = lab.cl().status()["client"]["lan_proxy"]["accepted"].clone();
    let extra = "\toption detour_policy 'all'\n\tlist bypass '10.0.3.0/24'\n";
    let cfg = lab.client_config(&format!(
        "\toption lan_proxy '1'\n\tlist lan_interface 'l1a'\n{extra}"
    ));
    lab.cl().reload(&cfg);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, 1)
            .join()
            .expect("iperf thread")
    );
    assert_eq!(
        lab.cl().status()["client"]["lan_proxy"]["accepted"],
        accepted,
        "a bypassed destination was proxied"
    );
    assert!(lab.client.as_mut().expect("client").terminate().success());
    assert!(!has_table(&rns, "dcol_lan"));
}
