// Needs: root, network namespaces, kernel MPTCP (userspace path manager),
// nftables (NAT, maps), conntrack, tbf; programs ip, tc, nft, ethtool,
// iperf3, mptcpize. tests/setup.sh installs them.
//
//! Attribution evidence: a waypoint keeps the signed request of every grant
//! it made; `dcol waypoint log` shows who asked for which destination and
//! re-checks the signatures against the collective's key; a torn record
//! (crash mid-write) is reported and the records before it kept. Grants to
//! one destination share a tunnel; each holder's grant and end is recorded.

mod lease;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dcol::proto::{Nonce, Outcome, RefusalReason, RequestKind};
use dcol_tests::lab::{enter_netns, SIGNAL_PORT};
use lease::{nat_lease, signed_request};

use dcol_tests::dcol::{dcol_bin, map_elements};
use dcol_tests::lab::{need_root, Lab, IPERF_PORT};
use dcol_tests::{iperf3_background, iperf3_server, IperfServer, LinkProfile, Node};

/// The lab with an iperf3 server and a waypoint keeping its evidence in the
/// scratch directory (`extra` goes into its waypoint section).
fn lab_with_evidence(extra: &str) -> (Lab, IpAddr, IperfServer, PathBuf) {
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    let ev = lab.scratch.path().join("evidence");
    lab.start_waypoint_with(&format!(
        "\toption evidence_dir '{}'\n{extra}",
        ev.display()
    ));
    (lab, server, srv, ev)
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn granted_requests_are_kept_and_verify() {
    if !need_root() {
        return;
    }
    let (mut lab, server, _srv, ev) = lab_with_evidence("\toption evidence_max_kb '64'\n");
    lab.start_client();
    let transfer = iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, 4);
    let wns = lab.ns(Node::Waypoint);
    let t0 = Instant::now();
    while map_elements(&wns, "dcol", "nat4") == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "no NAT grant");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(transfer.join().expect("iperf thread"));
    let bob = lab.cl().status()["member"]["id"]
        .as_str()
        .expect("member id")
        .to_owned();
    let root = lab.collective.root_pub.to_string_lossy().into_owned();
    let log = |extra: &[&str]| {
        let mut args = vec!["waypoint", "log", "--dir"];
        let d = ev.to_string_lossy().into_owned();
        args.push(&d);
        args.extend(extra);
        let out = std::process::Command::new(dcol_bin())
            .args(&args)
            .output()
            .expect("dcol waypoint log");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = log(&["--json", "--verify", &root, "--member", "bob"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let recs = v["records"].as_array().expect("records");
    let grants: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["grant"].as_str().unwrap_or("").starts_with("nat "))
        .collect();
    assert!(!grants.is_empty(), "no evidence: {out}");
    for r in &grants {
        assert_eq!(r["member_id"], bob.as_str(), "{r}");
        assert_eq!(r["verified"], true, "{r}");
        let g = r["grant"].as_str().unwrap_or("");
        assert!(g.ends_with("-> 10.0.3.2:5201"), "{r}");
    }
    // The leases end (the client releases them when it stops; a closed
    // MPTCP connection may keep its lease until its subflows are gone): the
    // bytes their flows carried are recorded.
    lab.client.as_mut().expect("client").terminate();
    let t0 = Instant::now();
    let ended = loop {
        let (_, out, _) = log(&["--json", "--member", &bob]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let b: u64 = v["records"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["grant"].as_str().unwrap_or("").starts_with("end nat "))
            .filter_map(|r| r["bytes"].as_u64())
            .sum();
        if b > 1_000_000 || t0.elapsed() > Duration::from_secs(10) {
            break b;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!(
        "evidence: the detour's leases carried {ended} bytes (recorded {:?} after the client stopped)",
        t0.elapsed()
    );
    // 4 s at ~9 Mbit/s, about half of it through the detour.
    let (_, all, _) = log(&[]);
    assert!(
        ended > 1_000_000,
        "bytes of the ended leases: {ended}\n{all}"
    );
    // Another member's filter finds nothing; the text form names bob.
    let (_, out, _) = log(&["--json", "--member", "carol"]);
    assert!(out.contains("\"records\":[]"), "{out}");
    let (_, out, _) = log(&[]);
    assert!(
        out.contains(" bob (") && out.contains("-> 10.0.3.2:5201"),
        "{out}"
    );

    // A crash mid-write: a torn record is reported, the rest kept.
    let cur = ev.join("evidence.0");
    let (_, out, _) = log(&["--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let n = v["records"].as_array().map(Vec::len).unwrap_or(0);
    let mut b = std::fs::read(&cur).expect("evidence.0");
    b.extend_from_slice(&[0, 0, 1, 0, 1, 2, 3]);
    std::fs::write(&cur, &b).expect("tear");
    let (code, out, err) = log(&["--json", "--verify", &root]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("torn or corrupted record"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["records"].as_array().map(Vec::len), Some(n));
    // Verification against another collective's key fails loudly.
    let other = lab.scratch.path().join("other");
    dcol_tests::dcol::dcol(&["collective", "init", "--out-dir", &other.to_string_lossy()]);
    let (code, out, err) = log(&["--verify", &other.join("collective.pub").to_string_lossy()]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("NOT VERIFIED") && err.contains("failed verification"),
        "{out}{err}"
    );

    // The conntrack accounting the waypoint turned on is off again after exit.
    let acct = || {
        dcol_tests::dcol::in_ns(&wns, &["sysctl", "-n", "net.netfilter.nf_conntrack_acct"])
            .trim()
            .to_owned()
    };
    assert_eq!(acct(), "1");
    lab.waypoint.as_mut().expect("waypoint").terminate();
    assert_eq!(acct(), "0", "nf_conntrack_acct left on");
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn vpn_lease_end_records_its_bytes() {
    if !need_root() {
        return;
    }
    let (mut lab, server, _srv, ev) =
        lab_with_evidence("\toption vpn_subnet '10.202.7.0/24'\n\toption vpn_interface 'evwg0'\n");
    let cfg = lab.client_config_tunnels("", &["vpn"]);
    lab.start_client_with(Node::Client, &cfg);
    let t0 = Instant::now();
    while !lab.cl().log_text().contains("VPN tunnel to alice up") {
        assert!(t0.elapsed() < Duration::from_secs(10), "no VPN tunnel");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        iperf3_background(lab.topo.ns(Node::Client), server, IPERF_PORT, 3)
            .join()
            .expect("iperf thread")
    );
    // The client releases its tunnel when it stops: the end record carries
    // the WireGuard peer's counters.
    lab.client.as_mut().expect("client").terminate();
    let t0 = Instant::now();
    let (bytes, out) = loop {
        let out = std::process::Command::new(dcol_bin())
            .args(["waypoint", "log", "--json", "--dir"])
            .arg(&ev)
            .output()
            .expect("dcol waypoint log");
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let b = v["records"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["grant"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("end vpn 10.202.7.")
            })
            .find_map(|r| r["bytes"].as_u64());
        if b.is_some() || t0.elapsed() > Duration::from_secs(10) {
            break (b, out);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("evidence: the VPN lease carried {bytes:?} bytes");
    // 3 s at ~9 Mbit/s, about half of it through the tunnel.
    assert!(bytes.is_some_and(|b| b > 1_000_000), "{out}");
    assert!(out.contains("\"grant\":\"vpn 10.202.7."), "{out}");
}

/// Opens a TCP socket in namespace `ns` (the socket stays in it).
fn connect_in(ns: &str, to: SocketAddr) -> TcpStream {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter_netns(&std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns"));
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        s
    })
    .join()
    .expect("connect thread")
}

/// An echo server on `port` in namespace `ns`, one thread per connection.
fn echo_server_in(ns: &str, port: u16) {
    let ns = ns.to_owned();
    let l = std::thread::spawn(move || {
        enter_netns(&std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns"));
        TcpListener::bind(("0.0.0.0", port)).expect("bind")
    })
    .join()
    .expect("listen thread");
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut b = [0u8; 64];
                while let Ok(n) = c.read(&mut b) {
                    if n == 0 || c.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Whether `s` still carries an echo.
fn echoes(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"ping"
}

/// `dcol waypoint log --json` records whose grant starts with `prefix`.
fn records(ev: &Path, prefix: &str) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(dcol_bin())
        .args(["waypoint", "log", "--json", "--dir"])
        .arg(ev)
        .output()
        .expect("dcol waypoint log");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["grant"].as_str().unwrap_or("").starts_with(prefix))
        .cloned()
        .collect()
}

/// Two grants to one destination share one port and one map element; each
/// holder renews and releases on its own: the first release leaves the
/// tunnel (and the other connection's flow) up, the last ends it, its
/// flows included. Each grant has its end record.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn grants_to_one_destination_share_a_tunnel() {
    if !need_root() {
        return;
    }
    let (lab, server, _srv, ev) = lab_with_evidence("");
    let echo_port = 6107;
    echo_server_in(&lab.ns(Node::Server), echo_port);
    let dest = SocketAddr::new(server, echo_port);
    let wp_ip: IpAddr = lab.topo.addr4(Node::Waypoint).into();
    let wp = SocketAddr::new(wp_ip, SIGNAL_PORT);
    let wns = lab.ns(Node::Waypoint);
    let cns = lab.ns(Node::Client);
    let port = nat_lease(&lab, dest, 1);
    assert_eq!(nat_lease(&lab, dest, 2), port, "the second grant shares");
    assert_eq!(map_elements(&wns, "dcol", "nat4"), 1);
    let st = lab.wp().status();
    assert_eq!(st["waypoint"]["granted"], 2, "{st}");
    assert_eq!(st["waypoint"]["grants"][0]["holders"], 2, "{st}");
    let mut a = connect_in(&cns, SocketAddr::new(wp_ip, port));
    let mut b = connect_in(&cns, SocketAddr::new(wp_ip, port));
    assert!(echoes(&mut a) && echoes(&mut b));
    let ask =
        |kind: RequestKind, nonce: u8| signed_request(&cns, &lab.client_member, wp, kind, nonce);
    let renew = |lease: u8, nonce: u8| {
        ask(
            RequestKind::Renew {
                port,
                destination: dest,
                lease: Nonce([lease; 16]),
            },
            nonce,
        )
    };
    let release = |lease: u8, nonce: u8| {
        ask(
            RequestKind::Release {
                port,
                lease: Nonce([lease; 16]),
            },
            nonce,
        )
    };
    // Each holder renews by its own grant's nonce; a nonce that holds
    // nothing is refused.
    assert!(matches!(renew(1, 3), Outcome::Granted { .. }));
    assert!(matches!(renew(2, 4), Outcome::Granted { .. }));
    assert!(matches!(
        release(9, 5),
        Outcome::Refused {
            reason: RefusalReason::UnknownLease
        }
    ));
    // The first holder leaves: the tunnel stays, the other flow carries on.
    assert!(matches!(
        release(1, 6),
        Outcome::Granted { lease_secs: 0, .. }
    ));
    assert_eq!(map_elements(&wns, "dcol", "nat4"), 1);
    assert!(echoes(&mut b), "the remaining holder's flow stopped");
    assert!(matches!(
        renew(1, 7),
        Outcome::Refused {
            reason: RefusalReason::UnknownLease
        }
    ));
    assert_eq!(records(&ev, "end nat ").len(), 1);
    // The last one leaves: element and flows are gone.
    assert!(matches!(
        release(2, 8),
        Outcome::Granted { lease_secs: 0, .. }
    ));
    assert_eq!(map_elements(&wns, "dcol", "nat4"), 0);
    let t0 = Instant::now();
    while echoes(&mut b) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "a flow of the ended tunnel still carries"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Evidence: two grants, two ends; the tunnel's bytes on the last.
    let t0 = Instant::now();
    let ends = loop {
        let e = records(&ev, "end nat ");
        if e.len() >= 2 || t0.elapsed() > Duration::from_secs(5) {
            break e;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let grants = records(&ev, &format!("nat {port} -> {dest}"));
    assert_eq!(grants.len(), 2, "{grants:?}");
    assert_eq!(ends.len(), 2, "{ends:?}");
    assert!(
        ends[0]["grant"]
            .as_str()
            .unwrap_or("")
            .ends_with("released (shared)"),
        "{ends:?}"
    );
    assert!(ends[1]["bytes"].as_u64().is_some_and(|b| b > 0), "{ends:?}");
    drop(a);
}
