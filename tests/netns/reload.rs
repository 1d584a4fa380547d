// Needs: root, network namespaces, kernel MPTCP (userspace path manager),
// nftables (NAT, maps, REDIRECT), conntrack, tbf; programs ip, tc, nft,
// ethtool, iperf3, mptcpize (package mptcpize). tests/setup.sh installs them.
//
//! Configuration reload (SIGHUP, what `procd`'s reload trigger sends after
//! `uci commit dcol`): changes apply without dropping established connections
//! where the change allows it (a renewed certificate too); a bad file changes
//! nothing; revocations bite at once; `enabled '0'` stops the daemon cleanly.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use dcol_tests::dcol::{dcol_bin, has_table, in_ns, map_elements};
use dcol_tests::lab::{detours_in, need_root, Lab, IPERF_PORT};
use dcol_tests::{iperf3_background, iperf3_server, LinkProfile, Node};

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a `secs` upload from the client, waits until the waypoint maps a
/// NAT tunnel for it; returns the transfer, the waypoint's namespace and the
/// client member's id.
fn transfer_with_tunnel(
    lab: &Lab,
    server: IpAddr,
    secs: u32,
) -> (std::thread::JoinHandle<bool>, String, String) {
    let transfer = iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, secs);
    let wns = lab.ns(Node::Waypoint);
    wait_for("a NAT element", Duration::from_secs(5), || {
        map_elements(&wns, "dcol", "nat4") >= 1
    });
    let bob = lab.cl().status()["member"]["id"]
        .as_str()
        .expect("member id")
        .to_owned();
    (transfer, wns, bob)
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
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
    let transfer = iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, 10);
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

    // A renewed certificate (what the web page installs with `dcol member
    // install`, then reloads): taken on reload, the detour lives on.
    let bob = &lab.client_member;
    let renewed = lab.scratch.path().join("bob-renewed.cert");
    let admit = Command::new(dcol_bin())
        .args(["collective", "admit", "--collective-key"])
        .arg(&lab.collective.root_key)
        .arg("--member-pub")
        .arg(format!("{}.pub", bob.key.display()))
        .arg("--wg-pub")
        .arg(format!("{}.wgpub", bob.key.display()))
        .args([
            "--name", "bob", "--roles", "client", "--days", "400", "--out",
        ])
        .arg(&renewed)
        .output()
        .expect("dcol collective admit");
    assert!(admit.status.success(), "{admit:?}");
    let old_not_after = st["member"]["cert_not_after"].as_u64().expect("not_after");
    let install = Command::new(dcol_bin())
        .args(["member", "install", "--config"])
        .arg(&lab.cl().config)
        .arg("--cert")
        .arg(&renewed)
        .output()
        .expect("dcol member install");
    assert!(install.status.success(), "{install:?}");
    let line = lab.cl().reload(
        &lab.client_config("\toption max_detours '1'\n\toption request_timeout_ms '400'\n"),
    );
    assert!(line.contains("identity or revocations"), "{line}");
    let st = lab.cl().status();
    let new_not_after = st["member"]["cert_not_after"].as_u64().expect("not_after");
    eprintln!("certificate renewed on reload: not_after {old_not_after} -> {new_not_after}");
    assert!(new_not_after > old_not_after + 30 * 86_400, "{st}");
    std::thread::sleep(Duration::from_millis(1000));
    let st = lab.cl().status();
    assert_eq!(tokens(&st), before, "{st}");
    assert_eq!(
        detours_in(&st, "established"),
        detours,
        "detour lost on a certificate renewal: {st}"
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
    let (transfer, wns, bob) = transfer_with_tunnel(&lab, server, 4);
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
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
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
    let cfg = lab.router_client_config(extra);
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
    let cfg = lab.router_client_config(extra);
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

/// The collective's signed revocation list (`option revocation_list`,
/// written by `dcol collective revoke`): the waypoint notices the file
/// change by itself, ends the member's tunnels and refuses it; a tampered
/// or older list is refused and the one in force kept.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn revocation_list_file_bites_within_seconds() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    let list = lab.scratch.path().join("revoked.list");
    // No file yet: nobody is revoked.
    let cfg = lab.waypoint_config("").replacen(
        "\toption log_level",
        &format!(
            "\toption revocation_list '{}'\n\toption log_level",
            list.display()
        ),
        1,
    );
    lab.waypoint = Some(dcol_tests::dcol::Daemon::start(
        &lab.ns(Node::Waypoint),
        lab.scratch.path(),
        "wp",
        &cfg,
        &lab.sock("wp"),
    ));
    lab.start_client();
    let (transfer, wns, bob) = transfer_with_tunnel(&lab, server, 8);
    let key = lab.collective.root_key.to_string_lossy().into_owned();
    let l = list.to_string_lossy().into_owned();
    // A stale copy to replay later (serial 1).
    let out = dcol_tests::dcol::dcol(&[
        "collective",
        "revoke",
        "--collective-key",
        &key,
        "--member",
        "0102030405060708",
        "--list",
        &l,
    ]);
    assert!(out.contains("serial 1"), "{out}");
    let serial1 = std::fs::read(&list).expect("list");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        map_elements(&wns, "dcol", "nat4") >= 1,
        "bob lost his tunnel to someone else's revocation"
    );

    let t0 = Instant::now();
    let out = dcol_tests::dcol::dcol(&[
        "collective",
        "revoke",
        "--collective-key",
        &key,
        "--member",
        &bob,
        "--reason",
        "test",
        "--list",
        &l,
    ]);
    assert!(out.contains("serial 2"), "{out}");
    wait_for("bob's NAT element removed", Duration::from_secs(6), || {
        map_elements(&wns, "dcol", "nat4") == 0
    });
    let took = t0.elapsed();
    eprintln!("revocation list: bob's tunnel ended {took:?} after the file changed");
    assert!(lab.wp().log_text().contains("revoked: bob"));
    assert!(
        transfer.join().expect("iperf thread"),
        "direct path did not carry on"
    );
    // New requests from bob are refused as revoked.
    std::thread::sleep(Duration::from_millis(1500));
    let transfer = iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, 3);
    wait_for("a refusal as revoked", Duration::from_secs(6), || {
        lab.wp().status()["waypoint"]["refused"]
            .as_object()
            .is_some_and(|m| m.keys().any(|k| k.contains("evoked")))
    });
    assert_eq!(map_elements(&wns, "dcol", "nat4"), 0);
    assert!(transfer.join().expect("iperf thread"));

    // A tampered list and a replayed older one are refused; bob stays revoked.
    let good = std::fs::read(&list).expect("list");
    let mut bad = good.clone();
    let i = bad.len() - 10;
    bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
    std::fs::write(&list, &bad).expect("tamper");
    wait_for("the tampered list refused", Duration::from_secs(6), || {
        lab.wp().log_text().contains("bad signature")
    });
    std::fs::write(&list, &serial1).expect("replay");
    wait_for("the older list refused", Duration::from_secs(6), || {
        lab.wp().log_text().contains("older than the one in force")
    });
    let st = lab.wp().status();
    assert!(st["waypoint"].is_object(), "waypoint stopped serving: {st}");
    // Bob's client holds the waypoint down by now: its refusals as revoked
    // were unsigned (refused before the signature was checked), which a
    // client does not act on, so it saw no answer. A fresh start asks again.
    lab.client.as_mut().expect("client").terminate();
    lab.start_client();
    let refused_before: u64 = st["waypoint"]["refused"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    std::thread::sleep(Duration::from_millis(1500));
    let transfer = iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, 3);
    wait_for("bob refused again", Duration::from_secs(6), || {
        let r: u64 = lab.wp().status()["waypoint"]["refused"]
            .as_object()
            .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
            .unwrap_or(0);
        r > refused_before
    });
    assert_eq!(
        map_elements(&wns, "dcol", "nat4"),
        0,
        "a replayed list unrevoked bob"
    );
    assert!(transfer.join().expect("iperf thread"));
}
