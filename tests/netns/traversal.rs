// Needs: root, network namespaces, kernel MPTCP (userspace path manager),
// nftables (NAT, maps), conntrack, wireguard-go + wireguard-tools; programs
// ip, nft, iperf3, mptcpize, miniupnpd (package miniupnpd-nftables) and
// turnserver (package coturn). tests/setup.sh installs them.
//
//! NAT traversal end to end, with the real programs: a waypoint behind a home
//! gateway running miniupnpd, two STUN servers (coturn) on the "Internet",
//! and a client elsewhere.
//!
//! ```text
//!  client 11.7.2.2 ── inet ── gw 11.7.1.1 (miniupnpd, masquerade) ── wp 192.168.7.2 (alice)
//!                      │  └── STUN 11.7.9.1:3478, 11.7.9.2:3478 (coturn),
//!                      │      directory 11.7.9.3:7450 (`dcol directory serve`)
//!                      └──── server 11.7.3.2 (mptcpize iperf3 -s)
//! ```
//! The addresses 11.7.0.0/16 are assigned inside these namespaces only, so
//! nothing leaves them; they are not from a reserved block because miniupnpd
//! refuses to map ports on a gateway whose external address is private.
//!
//! The waypoint learns its public address and mapping type with STUN, maps
//! its signaling, WireGuard and NAT tunnel ports on the gateway (10 s leases,
//! renewed past their end), publishes the public address in the membership
//! directory, and serves a NAT and a VPN detour to the client through them
//! (the server sees joins from the gateway's address). When the gateway
//! disappears the record is withdrawn; when it refuses a port, the waypoint
//! logs it and keeps serving. A gateway with NAT-PMP only gets the same
//! mappings. On reload (UPnP off) and on SIGTERM every mapping is deleted;
//! after SIGKILL the next start deletes what the crashed run left. Another
//! LAN host answering the SSDP search first (with its own description and
//! control URL) is ignored: only the default gateway's answer is taken.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcol::directory::Snapshot;
use dcol::http::{self, Url};
use dcol::trust::{files, PublicKey};
use dcol_tests::dcol::{dcol_bin, in_ns, main_section, Collective, Daemon, Scratch};
use dcol_tests::lab::{enter_netns, need_root, IPERF_PORT};
use dcol_tests::{iperf3_background, iperf3_server, run, veth, JoinCounter, Netns};

const GW_WAN: &str = "11.7.1.1";
const SERVER: &str = "11.7.3.2";
const STUN: [&str; 2] = ["11.7.9.1", "11.7.9.2"];
/// The membership directory, on the "Internet".
const DIRECTORY: &str = "11.7.9.3:7450";

/// The namespaces and the programs in them (dropped: everything killed and
/// deleted).
struct Net {
    inet: Netns,
    gw: Netns,
    wp: Netns,
    cl: Netns,
    srv: Netns,
}

fn build() -> Net {
    let n = Net {
        inet: Netns::new("inet"),
        gw: Netns::new("gw"),
        wp: Netns::new("wp"),
        cl: Netns::new("cl"),
        srv: Netns::new("srv"),
    };
    veth(&n.gw, "wan", "11.7.1.1/24", &n.inet, "i1", "11.7.1.2/24");
    veth(
        &n.gw,
        "lan",
        "192.168.7.1/24",
        &n.wp,
        "eth0",
        "192.168.7.2/24",
    );
    veth(&n.cl, "eth0", "11.7.2.2/24", &n.inet, "i2", "11.7.2.1/24");
    veth(&n.srv, "eth0", "11.7.3.2/24", &n.inet, "i3", "11.7.3.1/24");
    let directory_ip = DIRECTORY.split(':').next().unwrap_or_default();
    for s in STUN.into_iter().chain([directory_ip]) {
        n.inet
            .exec(&["ip", "addr", "add", &format!("{s}/32"), "dev", "lo"]);
    }
    n.inet.sysctl("net.ipv4.ip_forward", "1");
    n.gw.sysctl("net.ipv4.ip_forward", "1");
    n.gw.exec(&["ip", "route", "add", "default", "via", "11.7.1.2"]);
    n.wp.exec(&["ip", "route", "add", "default", "via", "192.168.7.1"]);
    n.cl.exec(&["ip", "route", "add", "default", "via", "11.7.2.1"]);
    n.srv
        .exec(&["ip", "route", "add", "default", "via", "11.7.3.1"]);
    for ns in [&n.cl, &n.srv, &n.wp] {
        ns.sysctl("net.mptcp.enabled", "1");
    }
    gateway_firewall(&n.gw, "policy accept;");
    n
}

/// The home gateway's nftables: masquerade, and the chains miniupnpd fills;
/// `forward` goes first in its forward chain.
fn gateway_firewall(gw: &Netns, forward: &str) {
    gw.exec(&[
        "nft",
        &format!(
            "table inet filter {{
          chain forward {{ type filter hook forward priority 0; {forward} jump miniupnpd; }}
          chain miniupnpd {{ }}
          chain prerouting {{ type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }}
          chain postrouting {{ type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; oifname \"wan\" masquerade; }}
          chain prerouting_miniupnpd {{ }}
          chain postrouting_miniupnpd {{ }}
        }}"
        ),
    ]);
}

/// Starts miniupnpd in `gw`; `deny` is a permission rule placed before the
/// one that allows the LAN (a gateway that refuses some ports).
fn start_miniupnpd(gw: &Netns, scratch: &Scratch, deny: &str) -> u32 {
    start_gateway(gw, scratch, deny, "enable_natpmp=no\nenable_upnp=yes\n")
}

/// miniupnpd with `protocols` (`enable_upnp`, `enable_natpmp` lines).
fn start_gateway(gw: &Netns, scratch: &Scratch, deny: &str, protocols: &str) -> u32 {
    let conf = scratch.path().join("miniupnpd.conf");
    std::fs::write(
        &conf,
        format!(
            "ext_ifname=wan\nlistening_ip=lan\nport=5000\n{protocols}\
             secure_mode=yes\nsystem_uptime=yes\nuuid=3e9f1c6a-1111-4d2c-9b1a-0123456789ab\n\
             {deny}allow 1024-65535 192.168.7.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n"
        ),
    )
    .unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(scratch.path().join("miniupnpd.log"))
        .unwrap();
    let pid = scratch.path().join("miniupnpd.pid");
    let child = gw.spawn_logged(
        &[
            "miniupnpd",
            "-d",
            "-f",
            conf.to_str().unwrap(),
            "-P",
            pid.to_str().unwrap(),
        ],
        log,
    );
    // Ready once its sockets are open (under load that takes seconds; a
    // waypoint that searched before would wait for its 60 s retry).
    let mut sockets = Vec::new();
    if protocols.contains("enable_upnp=yes") {
        sockets.extend([("-Hlnt", "sport = :5000"), ("-Hlnu", "sport = :1900")]);
    }
    if protocols.contains("enable_natpmp=yes") {
        sockets.push(("-Hlnu", "sport = :5351"));
    }
    for (kind, filter) in sockets {
        wait_for(
            &format!("miniupnpd listening ({filter})"),
            Duration::from_secs(10),
            || !in_ns(gw.name(), &["ss", kind, filter]).trim().is_empty(),
        );
    }
    child
}

/// Stops miniupnpd `pid` and waits until it has exited: one started while
/// the old one still holds the pid file refuses to run.
fn stop_gateway(pid: u32) {
    run(&["kill", &pid.to_string()]);
    wait_for("miniupnpd to exit", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.split(' ').nth(2) == Some("Z"))
    });
}

/// The gateway's port forwards, as miniupnpd wrote them.
fn forwards(gw: &Netns) -> String {
    in_ns(
        gw.name(),
        &[
            "nft",
            "list",
            "chain",
            "inet",
            "filter",
            "prerouting_miniupnpd",
        ],
    )
}

/// alice's endpoints in the directory's snapshot, fetched from `ns`
/// (`None`: she is not listed).
fn listed(ns: &Netns, root: &PublicKey) -> Option<Vec<SocketAddr>> {
    let path = format!("/var/run/netns/{}", ns.name());
    let root = *root;
    std::thread::spawn(move || {
        enter_netns(&std::fs::File::open(&path).expect("open netns"));
        let url = Url::parse(&format!("http://{DIRECTORY}/snapshot")).unwrap();
        let r = http::get(&url, &[], http::Limits::default()).ok()?;
        let snap = Snapshot::verify(&r.body, &root).expect("a signed snapshot");
        let alice = snap
            .entries()
            .map(|e| e.unwrap())
            .find(|e| e.name == "alice");
        alice.map(|e| e.endpoints)
    })
    .join()
    .expect("fetch thread")
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn waypoint_behind_a_upnp_gateway_serves_nat_and_vpn_detours() {
    if !need_root() {
        return;
    }
    let net = build();
    let scratch = Scratch::new("trav");
    let coop = Collective::new(scratch.path(), "coop");
    let alice = coop.admit("alice", "client,waypoint", 30);
    let bob = coop.admit("bob", "client", 30);
    // coturn as a STUN server on two addresses.
    let turn_log = std::fs::File::create(scratch.path().join("turnserver.log")).unwrap();
    let db = scratch.path().join("turndb");
    net.inet.spawn_logged(
        &[
            "turnserver",
            "--stun-only",
            "--listening-ip",
            STUN[0],
            "--listening-ip",
            STUN[1],
            "--listening-port",
            "3478",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "-n",
            "--log-file",
            "stdout",
            "--db",
            db.to_str().unwrap(),
            "--pidfile",
            scratch.path().join("turn.pid").to_str().unwrap(),
        ],
        turn_log,
    );
    let serve_log = std::fs::File::create(scratch.path().join("serve.log")).unwrap();
    net.inet.spawn_logged(
        &[
            dcol_bin().to_str().unwrap(),
            "directory",
            "serve",
            "--collective-key",
            coop.root_key.to_str().unwrap(),
            "--store",
            scratch.path().join("store").to_str().unwrap(),
            "--listen",
            DIRECTORY,
            "--snapshot-interval",
            "1",
        ],
        serve_log,
    );
    let root = files::read_public_key(&coop.root_pub).unwrap();
    let mini = start_miniupnpd(&net.gw, &scratch, "");
    let _srv = iperf3_server(&net.srv, IPERF_PORT, true);
    let gw_ip: IpAddr = GW_WAN.parse().unwrap();
    let counter = JoinCounter::install(&net.srv, IPERF_PORT, &[gw_ip]);
    std::thread::sleep(Duration::from_millis(500));

    let wp_cfg = format!(
        "{}config waypoint 'waypoint'\n\toption enabled '1'\n\tlist listen '0.0.0.0:7447'\n\
         \toption nat_ports '40000-40999'\n\toption lease_s '60'\n\toption vpn_subnet '10.201.7.0/24'\n\
         \toption vpn_interface 'trwg0'\n\tlist stun_server '{}:3478'\n\tlist stun_server '{}:3478'\n\
         \toption upnp_lease_s '20'\n",
        main_section(&alice, &coop, &scratch.path().join("wp.sock"), &scratch.path().join("wp-state"))
            .trim_end()
            .to_owned()
            + &format!(
                "\n\toption directory 'http://{DIRECTORY}/snapshot'\n\toption directory_interval_s '2'\n\toption directory_cache '{}'\n\n",
                scratch.path().join("wp.snapshot").display()
            ),
        STUN[0],
        STUN[1]
    );
    let mut wp = Daemon::start(
        net.wp.name(),
        scratch.path(),
        "wp",
        &wp_cfg,
        &scratch.path().join("wp.sock"),
    );
    let t0 = Instant::now();
    let st = wp
        .wait_status(Duration::from_secs(15), |s| {
            !s["traversal"]["last_pass"].is_null()
        })
        .unwrap_or_else(|s| panic!("no traversal pass: {s}\n{}", wp.log_text()));
    eprintln!(
        "first traversal pass after {:?}: {}",
        t0.elapsed(),
        st["traversal"]
    );
    let first_pass = st["traversal"]["last_pass"].as_u64().unwrap();
    let t_first = Instant::now();
    let t = &st["traversal"];
    assert_eq!(
        t["public"],
        format!("{GW_WAN}:7447"),
        "{t}\n{}",
        wp.log_text()
    );
    assert_eq!(t["mapping"], "endpoint-independent", "{t}");
    assert_eq!(t["external_ip"], GW_WAN, "{t}");
    assert_eq!(t["gateway"], "http://192.168.7.1:5000/ctl/IPConn", "{t}");
    // Signaling and WireGuard (UDP) and the 32 grant ports (TCP).
    assert_eq!(
        t["mapped"],
        serde_json::json!(["tcp/40000-40031", "udp/7447", "udp/51820"]),
        "{t}"
    );
    assert_eq!(t["mapped_ports"], 34, "{t}");
    assert_eq!(t["errors"], serde_json::json!([]), "{t}");
    let fw = forwards(&net.gw);
    for want in [
        "dport 7447 dnat ip to 192.168.7.2:7447",
        "dport 51820",
        "dport 40031",
    ] {
        assert!(fw.contains(want), "gateway lacks '{want}':\n{fw}");
    }
    assert!(!fw.contains("dport 40032"), "{fw}");
    // The learned address is what the directory lists for alice.
    wait_for("alice in the directory", Duration::from_secs(10), || {
        listed(&net.cl, &root).is_some()
    });
    assert_eq!(
        listed(&net.cl, &root),
        Some(vec![format!("{GW_WAN}:7447").parse().unwrap()])
    );

    // A client elsewhere uses alice at the gateway's public address, with a
    // NAT and a VPN tunnel; an MPTCP transfer gets detours through both.
    let cl_cfg = format!(
        "{}config client 'client'\n\toption enabled '1'\n\toption max_detours '2'\n\
         \toption renew_interval_s '1'\n\toption liveness_misses '3'\n\
         config peer\n\toption name 'alice'\n\toption address '{GW_WAN}:7447'\n\toption tunnel 'nat'\n\n\
         config peer\n\toption name 'alice'\n\toption address '{GW_WAN}:7447'\n\toption tunnel 'vpn'\n",
        main_section(&bob, &coop, &scratch.path().join("cl.sock"), &scratch.path().join("cl-state")),
    );
    let cl = Daemon::start(
        net.cl.name(),
        scratch.path(),
        "cl",
        &cl_cfg,
        &scratch.path().join("cl.sock"),
    );
    wait_for("the VPN tunnel to alice", Duration::from_secs(15), || {
        cl.log_text().contains("VPN tunnel to alice up")
    });
    let server: IpAddr = SERVER.parse().unwrap();
    let bg = iperf3_background(&net.cl, server, IPERF_PORT, 6);
    let st = cl
        .wait_status(Duration::from_secs(6), |s| {
            let subs = s["client"]["connections"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["subflows"].as_array().into_iter().flatten());
            let tunnels: Vec<&str> = subs
                .filter(|f| f["path"] == "detour" && f["state"] == "established")
                .filter_map(|f| f["tunnel"].as_str())
                .collect();
            tunnels.contains(&"nat") && tunnels.contains(&"vpn")
        })
        .unwrap_or_else(|s| {
            panic!(
                "no NAT and VPN detours: {s}\n{}\n---\n{}",
                cl.log_text(),
                wp.log_text()
            )
        });
    eprintln!("detours: {}", st["client"]["connections"][0]["subflows"]);
    assert!(
        bg.join().expect("iperf3 thread"),
        "the MPTCP transfer failed"
    );
    let via = counter.bytes_from(gw_ip);
    eprintln!("the server got {via} bytes from the gateway's address (both detours)");
    assert!(via > 1_000_000, "only {via} bytes through the waypoint");
    let ws = wp.status();
    assert_eq!(ws["waypoint"]["vpn_peers"][0]["member"], "bob", "{ws}");

    // The leases are 20 s: renewed every 10 s, the mappings outlive them
    // (miniupnpd removes a mapping whose lease ran out). A pass of 34 SOAP
    // calls takes seconds on a loaded machine: wait for the renewal to end
    // rather than a fixed time.
    std::thread::sleep(Duration::from_secs(12).saturating_sub(t_first.elapsed()));
    let st = wp
        .wait_status(Duration::from_secs(20), |s| {
            s["traversal"]["last_pass"].as_u64().unwrap_or(0) >= first_pass + 10
        })
        .unwrap_or_else(|s| panic!("no renewal pass: {}", s["traversal"]));
    let renewed = st["traversal"]["last_pass"].as_u64().unwrap();
    eprintln!(
        "{:?} after the first pass: last pass {} s later",
        t_first.elapsed(),
        renewed - first_pass
    );
    assert_eq!(st["traversal"]["mapped_ports"], 34, "{}", st["traversal"]);
    assert!(
        forwards(&net.gw).contains("dport 7447"),
        "the mappings expired"
    );

    // The gateway disappears: the next pass fails, is logged, and the
    // waypoint keeps running and answering.
    stop_gateway(mini);
    std::thread::sleep(Duration::from_millis(300));
    let reload = wp.reload(&wp_cfg.replace("upnp_lease_s '20'", "upnp_lease_s '300'"));
    eprintln!("reload with the gateway gone: {reload}");
    let st = wp
        .wait_status(Duration::from_secs(15), |s| {
            s["traversal"]["errors"]
                .as_array()
                .is_some_and(|e| !e.is_empty())
        })
        .unwrap_or_else(|s| panic!("no error about the gateway: {s}\n{}", wp.log_text()));
    eprintln!("gateway gone: {}", st["traversal"]);
    assert!(st["traversal"]["public"].is_null(), "{}", st["traversal"]);
    assert!(wp.log_text().contains("traversal: "), "{}", wp.log_text());
    assert!(wp.running(), "the waypoint died with its gateway");
    // Not reachable any more: the record is withdrawn.
    wait_for("alice withdrawn", Duration::from_secs(10), || {
        listed(&net.cl, &root).is_none()
    });

    // The gateway is back but refuses one port: that port is reported,
    // the others are mapped and the address is published.
    // (A gateway that restarts has lost its mappings; miniupnpd killed
    // leaves its rules, so clear them as a reboot would.)
    for chain in ["miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd"] {
        net.gw
            .exec(&["nft", "flush", "chain", "inet", "filter", chain]);
    }
    let refusing = start_miniupnpd(&net.gw, &scratch, "deny 40031 192.168.7.0/24 40031\n");
    wp.reload(&wp_cfg);
    let st = wp
        .wait_status(Duration::from_secs(20), |s| {
            s["traversal"]["mapped_ports"] == 33
                && s["traversal"]["public"] == format!("{GW_WAN}:7447")
        })
        .unwrap_or_else(|s| panic!("not mapped again: {s}\n{}", wp.log_text()));
    eprintln!("gateway refusing a port: {}", st["traversal"]);
    let errors = st["traversal"]["errors"].to_string();
    assert!(
        errors.contains("TCP 40031: refused by the gateway: The client is not authorized"),
        "{errors}"
    );
    assert!(!forwards(&net.gw).contains("dport 40031"));
    wait_for("alice listed again", Duration::from_secs(10), || {
        listed(&net.cl, &root).is_some()
    });

    // UPnP turned off on reload: the mappings are deleted at once.
    wp.reload(&format!("{wp_cfg}\toption upnp '0'\n"));
    wait_for(
        "mappings deleted on reload",
        Duration::from_secs(10),
        || !forwards(&net.gw).contains("dnat"),
    );
    // A gateway with NAT-PMP only (no UPnP): the same mappings through it.
    stop_gateway(refusing);
    start_gateway(&net.gw, &scratch, "", "enable_natpmp=yes\nenable_upnp=no\n");
    wp.reload(&wp_cfg);
    let st = wp
        .wait_status(Duration::from_secs(20), |s| {
            s["traversal"]["mapped_ports"] == 34
                && s["traversal"]["gateway"] == "natpmp://192.168.7.1:5351"
                && s["traversal"]["public"] == format!("{GW_WAN}:7447")
        })
        .unwrap_or_else(|s| panic!("not mapped with NAT-PMP: {s}\n{}", wp.log_text()));
    eprintln!("NAT-PMP gateway: {}", st["traversal"]);
    assert!(forwards(&net.gw).contains("dport 7447"));
    drop(cl);
    let t_stop = Instant::now();
    assert!(wp.terminate().success());
    eprintln!("stopped (mappings deleted) in {:?}", t_stop.elapsed());
    let fw = forwards(&net.gw);
    assert!(!fw.contains("dnat"), "mappings left on the gateway:\n{fw}");
    assert!(
        wp.log_text()
            .contains("deleted 34 port mapping(s) on natpmp://192.168.7.1:5351"),
        "{}",
        wp.log_text()
    );
    drop(net);
}

/// Port forwards to the waypoint on the gateway.
fn forwards_to_wp(gw: &Netns) -> usize {
    forwards(gw).matches("dnat ip to 192.168.7.2:").count()
}

/// A waypoint that crashed (SIGKILL) leaves its mappings on the gateway
/// (permanent leases here: they would never end). Its next start deletes
/// them, whether traversal is now off or on; a damaged record is reported
/// and ignored.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn mappings_left_by_a_crash_are_deleted_at_the_next_start() {
    if !need_root() {
        return;
    }
    let net = build();
    let scratch = Scratch::new("trav-crash");
    let coop = Collective::new(scratch.path(), "coop");
    let alice = coop.admit("alice", "client,waypoint", 30);
    start_miniupnpd(&net.gw, &scratch, "");
    std::thread::sleep(Duration::from_millis(500));
    let sock = scratch.path().join("wp.sock");
    let state = scratch.path().join("wp-state");
    let record = state.join("port-mappings");
    let cfg = format!(
        "{}config waypoint 'waypoint'\n\toption enabled '1'\n\tlist listen '0.0.0.0:7447'\n\
         \toption nat_ports '40000-40003'\n\toption upnp_lease_s '0'\n",
        main_section(&alice, &coop, &sock, &state)
    );
    let start =
        |tag: &str, cfg: &str| Daemon::start(net.wp.name(), scratch.path(), tag, cfg, &sock);
    let mapped = |wp: &Daemon| {
        wp.wait_status(Duration::from_secs(20), |s| {
            s["traversal"]["mapped_ports"] == 5
        })
        .unwrap_or_else(|s| panic!("not mapped: {s}\n{}", wp.log_text()));
    };

    let mut wp = start("wp1", &cfg);
    mapped(&wp);
    let text = std::fs::read_to_string(&record).expect("the record of the mappings");
    assert!(
        text.contains("upnp urn:schemas-upnp-org:service:WANIPConnection:"),
        "{text}"
    );
    for p in ["udp 7447", "tcp 40000", "tcp 40003"] {
        assert!(text.lines().any(|l| l == p), "{p} not in {text}");
    }
    wp.kill9();
    assert_eq!(forwards_to_wp(&net.gw), 5, "{}", forwards(&net.gw));

    // Started again with UPnP off: the left-overs are deleted all the same.
    let mut wp = start("wp2", &format!("{cfg}\toption upnp '0'\n"));
    wait_for("the left-overs deleted", Duration::from_secs(10), || {
        forwards_to_wp(&net.gw) == 0 && !record.exists()
    });
    let log = wp.log_text();
    assert!(
        log.contains(
            "deleting 5 port mapping(s) left on http://192.168.7.1:5000/ctl/IPConn by an earlier run"
        ),
        "{log}"
    );
    assert!(log.contains("deleted 5 port mapping(s)"), "{log}");
    assert!(wp.terminate().success());

    // A damaged record: reported, ignored, and mapping goes on.
    std::fs::write(&record, "upnp\n").unwrap();
    let mut wp = start("wp3", &cfg);
    mapped(&wp);
    let log = wp.log_text();
    assert!(
        log.contains("port-mappings: line 1: cannot read 'upnp'; ignored"),
        "{log}"
    );
    wp.kill9();
    assert_eq!(forwards_to_wp(&net.gw), 5);

    // Started again with UPnP on: deleted, mapped anew, deleted on SIGTERM.
    let mut wp = start("wp4", &cfg);
    mapped(&wp);
    assert!(
        wp.log_text().contains("by an earlier run"),
        "{}",
        wp.log_text()
    );
    assert_eq!(forwards_to_wp(&net.gw), 5, "{}", forwards(&net.gw));
    assert!(wp.terminate().success());
    assert_eq!(forwards_to_wp(&net.gw), 0, "{}", forwards(&net.gw));
    assert!(!record.exists(), "the record outlived the mappings");
    drop(net);
}

/// Datagrams the waypoint's signaling sockets received.
fn datagrams(wp: &Daemon) -> u64 {
    wp.status()["waypoint"]["datagrams"]
        .as_u64()
        .expect("datagrams")
}

/// One UDP datagram from `ns` to `to` (`[addr]:port`).
fn send_datagram(ns: &Netns, to: &str) {
    let (addr, port) = to.rsplit_once(':').unwrap();
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    ns.exec(&[
        "python3",
        "-c",
        &format!(
            "import socket;s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);s.sendto(b'hello',('{addr}',{port}))"
        ),
    ]);
}

/// IPv6 behind a home gateway: no NAT, but its firewall drops what comes in
/// unasked. The waypoint (listening on `[::]`) opens pinholes for its
/// signaling and tunnel ports with PCP at its IPv6 default router (a
/// link-local address), publishes its global address, renews, and closes
/// them on SIGTERM. Before, a datagram from the Internet does not arrive;
/// through the pinhole it does.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn ipv6_pinholes_opened_with_pcp() {
    if !need_root() {
        return;
    }
    let gw = Netns::new("gw6");
    let wp_ns = Netns::new("wp6");
    let inet = Netns::new("inet6");
    veth(&gw, "wan", "11.7.1.1/24", &inet, "i1", "11.7.1.2/24");
    veth(
        &gw,
        "lan",
        "192.168.7.1/24",
        &wp_ns,
        "eth0",
        "192.168.7.2/24",
    );
    for (ns, dev, addr) in [
        (&gw, "wan", "2001:db8:1::1/64"),
        (&gw, "lan", "2001:db8:7::1/64"),
        (&inet, "i1", "2001:db8:1::2/64"),
        (&wp_ns, "eth0", "2001:db8:7::2/64"),
    ] {
        ns.exec(&["ip", "-6", "addr", "add", addr, "dev", dev, "nodad"]);
    }
    gw.sysctl("net.ipv4.ip_forward", "1");
    gw.sysctl("net.ipv6.conf.all.forwarding", "1");
    wp_ns.exec(&["ip", "route", "add", "default", "via", "192.168.7.1"]);
    inet.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "2001:db8:7::/64",
        "via",
        "2001:db8:1::1",
    ]);
    // The waypoint's IPv6 default route is the gateway's link-local address,
    // as router advertisements set it up at home.
    let ll = {
        let t0 = Instant::now();
        loop {
            let out = String::from_utf8_lossy(
                &gw.output(&["ip", "-6", "addr", "show", "dev", "lan", "scope", "link"])
                    .stdout,
            )
            .into_owned();
            if let Some(a) = out
                .lines()
                .find(|l| l.contains("inet6") && !l.contains("tentative"))
                .and_then(|l| l.split_whitespace().nth(1))
            {
                break a.split('/').next().unwrap().to_owned();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no link-local address: {out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wp_ns.exec(&[
        "ip", "-6", "route", "add", "default", "via", &ll, "dev", "eth0",
    ]);
    // The gateway: IPv6 from outside only through miniupnpd's pinholes.
    gateway_firewall(
        &gw,
        "policy drop; ct state established,related accept; iifname \"lan\" accept;",
    );
    let scratch = Scratch::new("trav6");
    start_gateway(
        &gw,
        &scratch,
        "",
        "enable_natpmp=yes\nenable_upnp=no\next_ifname6=wan\n",
    );
    let coop = Collective::new(scratch.path(), "coop");
    let alice = coop.admit("alice", "client,waypoint", 30);
    let sock = scratch.path().join("wp.sock");
    let cfg = format!(
        "{}config waypoint 'waypoint'\n\toption enabled '1'\n\tlist listen '0.0.0.0:7447'\n\
         \tlist listen '[::]:7447'\n\toption nat_ports '40000-40003'\n\toption upnp_lease_s '10'\n",
        main_section(&alice, &coop, &sock, &scratch.path().join("wp-state"))
    );
    let wp = Daemon::start(
        wp_ns.name(),
        scratch.path(),
        "wp",
        &format!("{cfg}\toption upnp '0'\n"),
        &sock,
    );
    let public6 = "[2001:db8:7::2]:7447";
    // No pinhole: the gateway drops it.
    send_datagram(&inet, public6);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        datagrams(&wp),
        0,
        "a datagram passed the gateway's firewall"
    );

    wp.reload(&cfg);
    let st = wp
        .wait_status(Duration::from_secs(20), |s| {
            s["traversal"]["public6"] == public6
        })
        .unwrap_or_else(|s| panic!("no IPv6 pinholes: {s}\n{}", wp.log_text()));
    let t = &st["traversal"];
    eprintln!("IPv6 pinholes: {t}");
    assert_eq!(
        t["pinholes"],
        serde_json::json!(["tcp/40000-40003", "udp/7447"]),
        "{t}"
    );
    // The IPv4 side works as before (NAT-PMP).
    assert_eq!(t["public"], format!("{GW_WAN}:7447"), "{t}");
    let rules = forwards_v6(&gw);
    assert_eq!(
        rules.matches("0x20010db8000700000000000000000002").count(),
        5,
        "{rules}"
    );
    send_datagram(&inet, public6);
    wait_for(
        "the datagram through the pinhole",
        Duration::from_secs(5),
        || datagrams(&wp) >= 1,
    );
    // A crash leaves the pinholes; the next start closes them (with UPnP
    // now off) with the nonce the record kept.
    let record = scratch.path().join("wp-state/port-mappings");
    let text = std::fs::read_to_string(&record).expect("the record");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("pcp [{ll}%")) && l.contains(" 2001:db8:7::2 ")),
        "{text}"
    );
    let mut wp = wp;
    wp.kill9();
    let pinholes = |gw: &Netns| {
        forwards_v6(gw)
            .matches("0x20010db8000700000000000000000002")
            .count()
    };
    assert_eq!(pinholes(&gw), 5, "{}", forwards_v6(&gw));
    let mut wp = Daemon::start(
        wp_ns.name(),
        scratch.path(),
        "wp-after-crash",
        &format!("{cfg}\toption upnp '0'\n"),
        &sock,
    );
    wait_for(
        "the left-over pinholes closed",
        Duration::from_secs(10),
        || pinholes(&gw) == 0 && !record.exists(),
    );
    let log = wp.log_text();
    assert!(
        log.contains("closing 5 IPv6 pinhole(s) left at [fe80::")
            && log.contains("closed 5 IPv6 pinhole(s)"),
        "{log}"
    );
    assert!(wp.terminate().success());
    // Open again; SIGTERM closes them.
    let mut wp = Daemon::start(wp_ns.name(), scratch.path(), "wp-again", &cfg, &sock);
    wp.wait_status(Duration::from_secs(20), |s| {
        s["traversal"]["public6"] == public6
    })
    .unwrap_or_else(|s| panic!("no IPv6 pinholes: {s}\n{}", wp.log_text()));
    assert_eq!(pinholes(&gw), 5, "{}", forwards_v6(&gw));
    assert!(wp.terminate().success());
    let rules = forwards_v6(&gw);
    assert!(
        !rules.contains("0x20010db8000700000000000000000002"),
        "pinholes left:\n{rules}"
    );
    assert!(
        wp.log_text().contains("closed 5 IPv6 pinhole(s)"),
        "{}",
        wp.log_text()
    );
}

/// The gateway's forward rules miniupnpd added (pinholes).
fn forwards_v6(gw: &Netns) -> String {
    in_ns(
        gw.name(),
        &["nft", "list", "chain", "inet", "filter", "miniupnpd"],
    )
}

/// A hostile LAN host: answers every SSDP search at once with a description
/// of its own (LOCATION on itself), and serves that description, its
/// service's SCPD and SOAP on port 5000. Counts the searches it heard and
/// the HTTP requests it got.
struct Rogue {
    searches: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Rogue {
    fn start(ns: &Netns, ip: Ipv4Addr) -> Rogue {
        let (searches, requests, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let path = format!("/var/run/netns/{}", ns.name());
        let (n, st, p) = (searches.clone(), stop.clone(), path.clone());
        let ssdp = std::thread::spawn(move || {
            enter_netns(&std::fs::File::open(&p).expect("open netns"));
            let s = UdpSocket::bind("0.0.0.0:1900").expect("bind 1900");
            s.join_multicast_v4(&Ipv4Addr::new(239, 255, 255, 250), &ip)
                .expect("join the SSDP group");
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::SeqCst) {
                let Ok((len, from)) = s.recv_from(&mut buf) else {
                    continue;
                };
                if !buf[..len].starts_with(b"M-SEARCH") {
                    continue;
                }
                n.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n\
                     ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
                     USN: uuid:rogue::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
                     EXT:\r\nSERVER: rogue\r\nLOCATION: http://{ip}:5000/rootDesc.xml\r\n\r\n"
                );
                let _ = s.send_to(answer.as_bytes(), from);
            }
        });
        let (n, st) = (requests.clone(), stop.clone());
        let web = std::thread::spawn(move || {
            enter_netns(&std::fs::File::open(&path).expect("open netns"));
            let l = TcpListener::bind((ip, 5000)).expect("bind 5000");
            l.set_nonblocking(true).unwrap();
            let desc = format!(
                "<?xml version=\"1.0\"?><root><URLBase>http://{ip}:5000/</URLBase><device><serviceList><service>\
                 <serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>\
                 <SCPDURL>/scpd.xml</SCPDURL><controlURL>/ctl</controlURL></service></serviceList></device></root>"
            );
            let scpd = "<?xml version=\"1.0\"?><scpd><actionList><action><name>AddPortMapping</name>\
                 <argumentList><argument><name>NewExternalPort</name><direction>in</direction></argument>\
                 </argumentList></action></actionList></scpd>";
            while !st.load(Ordering::SeqCst) {
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                n.fetch_add(1, Ordering::SeqCst);
                let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                let mut b = [0u8; 4096];
                let n = c.read(&mut b).unwrap_or(0);
                let body = if b[..n].starts_with(b"GET /scpd.xml ") {
                    scpd
                } else {
                    desc.as_str()
                };
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Rogue {
            searches,
            requests,
            stop,
            threads: vec![ssdp, web],
        }
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The gateway's LAN becomes a bridge (still named `lan`, 192.168.7.1)
/// with the waypoint and a second host, `rogue` (192.168.7.66), on it.
fn add_lan_host(net: &Net) -> Netns {
    let rogue = Netns::new("rogue");
    for cmd in [
        "ip addr flush dev lan",
        "ip link set lan down",
        "ip link set lan name lanp",
        "ip link add lan type bridge mcast_snooping 0",
        "ip link set lanp master lan",
        "ip addr add 192.168.7.1/24 dev lan",
        "ip link set lan up",
        "ip link set lanp up",
    ] {
        net.gw.exec(&cmd.split(' ').collect::<Vec<_>>());
    }
    run(&[
        "ip",
        "link",
        "add",
        "lanr",
        "netns",
        net.gw.name(),
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        rogue.name(),
    ]);
    net.gw.exec(&["ip", "link", "set", "lanr", "master", "lan"]);
    net.gw.exec(&["ip", "link", "set", "lanr", "up"]);
    rogue.exec(&["ip", "addr", "add", "192.168.7.66/24", "dev", "eth0"]);
    rogue.exec(&["ip", "link", "set", "eth0", "up"]);
    rogue.exec(&["ip", "route", "add", "default", "via", "192.168.7.1"]);
    net.wp.exec(&["ip", "neigh", "flush", "all"]);
    rogue
}

/// A LAN host that answers the SSDP search at once, naming a gateway of its
/// own (description and control URL on itself), is ignored: the waypoint
/// takes only its default gateway's answer, maps its ports there and never
/// talks HTTP to the other host.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn ssdp_answers_from_other_lan_hosts_are_ignored() {
    if !need_root() {
        return;
    }
    let net = build();
    let rogue_ns = add_lan_host(&net);
    let scratch = Scratch::new("trav-rogue");
    let coop = Collective::new(scratch.path(), "coop");
    let alice = coop.admit("alice", "client,waypoint", 30);
    start_miniupnpd(&net.gw, &scratch, "");
    let rogue = Rogue::start(&rogue_ns, Ipv4Addr::new(192, 168, 7, 66));
    std::thread::sleep(Duration::from_millis(500));
    let sock = scratch.path().join("wp.sock");
    let cfg = format!(
        "{}config waypoint 'waypoint'\n\toption enabled '1'\n\tlist listen '0.0.0.0:7447'\n\
         \toption nat_ports '40000-40003'\n\toption upnp_lease_s '60'\n",
        main_section(&alice, &coop, &sock, &scratch.path().join("wp-state"))
    );
    let mut wp = Daemon::start(net.wp.name(), scratch.path(), "wp", &cfg, &sock);
    let st = wp
        .wait_status(Duration::from_secs(20), |s| {
            !s["traversal"]["last_pass"].is_null()
        })
        .unwrap_or_else(|s| panic!("no traversal pass: {s}\n{}", wp.log_text()));
    let t = &st["traversal"];
    eprintln!(
        "with a rogue SSDP answerer ({} search(es) heard, {} HTTP request(s) to it): {t}",
        rogue.searches.load(Ordering::SeqCst),
        rogue.requests.load(Ordering::SeqCst)
    );
    assert!(
        rogue.searches.load(Ordering::SeqCst) > 0,
        "the rogue host never heard the search: the test proves nothing"
    );
    assert_eq!(
        rogue.requests.load(Ordering::SeqCst),
        0,
        "the waypoint fetched the rogue's description\n{}",
        wp.log_text()
    );
    assert_eq!(t["gateway"], "http://192.168.7.1:5000/ctl/IPConn", "{t}");
    assert_eq!(t["mapped_ports"], 5, "{t}");
    assert_eq!(t["public"], format!("{GW_WAN}:7447"), "{t}");
    assert!(forwards(&net.gw).contains("dport 7447 dnat ip to 192.168.7.2:7447"));
    let log = wp.log_text();
    assert!(
        log.contains(
            "traversal: ignored an SSDP answer from 192.168.7.66:1900: not the default gateway 192.168.7.1"
        ),
        "{log}"
    );
    assert!(wp.terminate().success());

    // The same LAN searched with igd-next's own `search_gateway`: it takes
    // the first answer whose LOCATION is on the host that sent it, from any
    // host: the rogue's (miniupnpd delays its answer by a random share of
    // the search's MX, 3 s; the rogue answers at once). This is why DCol
    // keeps its own SSDP search and hands igd-next only a checked gateway.
    let before = rogue.requests.load(Ordering::SeqCst);
    let path = format!("/var/run/netns/{}", net.wp.name());
    let found = std::thread::spawn(move || {
        enter_netns(&std::fs::File::open(&path).expect("open netns"));
        let mut o = igd_next::SearchOptions::default();
        o.timeout = Some(Duration::from_secs(5));
        igd_next::search_gateway(o).map(|g| g.addr)
    })
    .join()
    .expect("search thread");
    let found = found.unwrap_or_else(|e| panic!("igd-next found no gateway: {e}"));
    assert_eq!(
        found,
        SocketAddr::from(([192, 168, 7, 66], 5000)),
        "igd-next took {found}: the rogue no longer wins its search (if igd-next now filters \
         answers, DCol's own SSDP search can go)"
    );
    assert!(rogue.requests.load(Ordering::SeqCst) > before);
    drop(rogue);
}
