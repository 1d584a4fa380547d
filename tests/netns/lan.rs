// Needs: root, network namespaces, kernel MPTCP (userspace path manager),
// nftables (NAT, REDIRECT, sets with timeouts), conntrack, tbf; programs ip, tc,
// nft, ethtool, iperf3, mptcpize (package mptcpize), curl, openssl, python3
// (tests/tools/tcpcheck.py, plain HTTP server). tests/setup.sh installs them.
//
//! Transparent for LAN devices: the client role runs on the client's router
//! (`rc`) and proxies the TCP of an unmodified host behind it (plain `iperf3`,
//! `curl`, Python sockets; no mptcpize) upstream as MPTCP, where the path
//! manager adds detours through the waypoint.
//!
//! ```text
//!  client ──l1── rc ──l2── rs ── server
//!  (LAN host)     │         │
//!                 └─l4─ rw ─l5┘
//!                       │
//!                    waypoint
//! ```
//!
//! `rc`'s default routes lead over l2 (its WAN: the proxy intercepts only
//! flows routed there), and the lab's private addresses are allowed as
//! destinations (see [`Lab::start_router_client`]). The proxy follows the
//! router's forwarding verdicts: the first connection from the LAN host to
//! a server port goes direct ([`warm`]), the next ones are proxied.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use dcol_tests::dcol::{has_table, in_ns};
use dcol_tests::lab::{need_root, Lab, IPERF_PORT};
use dcol_tests::{iperf3_client, iperf3_server, JoinCounter, LinkProfile, Node};
use serde_json::Value;

fn tool() -> String {
    format!("{}/../tests/tools/tcpcheck.py", env!("CARGO_MANIFEST_DIR"))
}

/// Runs tcpcheck.py in the client namespace; parses its JSON line.
fn client_check(lab: &Lab, args: &[&str]) -> Value {
    let t = tool();
    let mut a = vec!["python3", t.as_str()];
    a.extend_from_slice(args);
    let out = in_ns(&lab.ns(Node::Client), &a);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// Starts a tcpcheck.py server in the server namespace, as MPTCP.
fn server_check(lab: &Lab, args: &[&str]) {
    let t = tool();
    let mut a = vec!["mptcpize", "run", "python3", t.as_str()];
    a.extend_from_slice(args);
    lab.topo.ns(Node::Server).spawn(&a);
}

/// The waypoint's count of grants so far.
/// New NAT grants the waypoint logged for destination port `port`. The status
/// counter `granted` also counts renewals, and a lease from an earlier
/// connection may be renewed at any moment, so it cannot tell whether this
/// connection got a detour.
fn granted(lab: &Lab, port: u16) -> u64 {
    let dest = format!(" -> {}:{port} for ", lab.topo.addr4(Node::Server));
    lab.wp()
        .log_text()
        .lines()
        .filter(|l| l.contains("granted ") && l.contains(&dest))
        .count() as u64
}

fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys;print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(data)?;
            c.wait_with_output()
        })
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// curl in the client namespace; the SHA-256 of the body.
fn curl_sha256(lab: &Lab, url: &str) -> String {
    in_ns(
        &lab.ns(Node::Client),
        &[
            "sh",
            "-c",
            &format!("curl -sSf -m 20 -g '{url}' | sha256sum | cut -d' ' -f1"),
        ],
    )
    .trim()
    .to_owned()
}

/// One connection from the LAN host to `host` `port`, opened and closed:
/// the router forwards it (the proxy learns the firewall's verdict), so the
/// next connections to that port are proxied.
fn warm(lab: &Lab, host: &str, port: u16) {
    let code = format!(
        "import socket,time; socket.create_connection(('{host}', {port}), timeout=5).close(); time.sleep(0.1)"
    );
    in_ns(&lab.ns(Node::Client), &["python3", "-c", &code]);
}

/// Waits until `port` listens in the server namespace.
fn wait_listen(lab: &Lab, port: u16) {
    for _ in 0..100 {
        let out = lab
            .topo
            .ns(Node::Server)
            .output(&["ss", "-Hltn", &format!("sport = :{port}")]);
        if !out.stdout.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    panic!("nothing listens on {port} in the server namespace");
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn lan_host_gets_detours_without_running_anything() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let waypoint: IpAddr = lab.topo.addr4(Node::Waypoint).into();
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    let counter = JoinCounter::install(lab.topo.ns(Node::Server), IPERF_PORT, &[waypoint]);
    std::thread::sleep(Duration::from_millis(300));
    // DCol off: the LAN host's plain TCP.
    let off = iperf3_client(
        lab.topo.ns(Node::Client),
        server,
        IPERF_PORT,
        6,
        false,
        false,
    )
    .expect("DCol off");
    lab.start_waypoint();
    // iperf3 is plaintext: only policy 'all' detours it.
    lab.start_router_client("\toption detour_policy 'all'\n");
    let rns = lab.ns(Node::Rc);
    assert!(has_table(&rns, "dcol_lan"), "no interception table");
    // The same unmodified program with DCol on.
    let on = iperf3_client(
        lab.topo.ns(Node::Client),
        server,
        IPERF_PORT,
        6,
        false,
        false,
    )
    .expect("DCol on");
    let (a, b) = (off.mbps_after_first_second(), on.mbps_after_first_second());
    eprintln!(
        "LAN host, plain iperf3: DCol off {a:.2} Mbit/s, on {b:.2} Mbit/s, ratio {:.2}",
        b / a
    );
    let via = counter.bytes_from(waypoint);
    assert!(
        via > 1_000_000,
        "server got only {via} bytes through the waypoint"
    );
    assert!(
        b >= 1.8 * a,
        "LAN host: {b:.2} Mbit/s with DCol is not 1.8x {a:.2}"
    );
    // Status names the LAN host of the proxied connection (checked while one runs).
    let st = lab.cl().status();
    let lp = &st["client"]["lan_proxy"];
    // iperf3's data connection (its control connection met the router's
    // firewall directly: the first to that port).
    assert!(lp["accepted"].as_u64().unwrap() >= 1, "{st}");
    assert!(lp["bytes_up"].as_u64().unwrap() > 5_000_000, "{st}");
    assert_eq!(lp["detour_policy"], "all");

    // SIGTERM removes the interception table.
    let st = lab.client.as_mut().expect("client").terminate();
    assert!(st.success());
    assert!(
        !has_table(&rns, "dcol_lan"),
        "interception table left behind"
    );
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn plain_servers_work_byte_exact_and_are_remembered() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server4: IpAddr = lab.topo.addr4(Node::Server).into();
    let server6 = lab.topo.addr6(Node::Server);
    // A plain (non-MPTCP) HTTP server with a 3 MB file, on IPv4 and IPv6.
    let dir = lab.scratch.path().join("www");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(dir.join("blob"), &data).expect("write");
    lab.topo.ns(Node::Server).spawn(&[
        "python3",
        "-m",
        "http.server",
        "8080",
        "--bind",
        "::",
        "--directory",
        dir.to_str().expect("utf-8"),
    ]);
    // And a plain iperf3 server.
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, false);
    wait_listen(&lab, 8080);
    lab.start_waypoint();
    lab.start_router_client("");
    warm(&lab, &server4.to_string(), 8080);
    warm(&lab, &server6.to_string(), 8080);
    let want = sha256_hex(&data);
    for (round, url) in [
        format!("http://{server4}:8080/blob"),
        format!("http://{server4}:8080/blob"),
        format!("http://[{server6}]:8080/blob"),
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(
            curl_sha256(&lab, url),
            want,
            "round {round}: body differs through the proxy"
        );
    }
    let r = iperf3_client(
        lab.topo.ns(Node::Client),
        server4,
        IPERF_PORT,
        2,
        false,
        false,
    )
    .expect("plain iperf3 through the proxy");
    assert!(r.bytes > 1_000_000, "{r:?}");
    let log = lab.cl().log_text();
    assert!(
        log.contains("10.0.3.2:8080 does not speak MPTCP"),
        "fallback not noticed:\n{log}"
    );
    assert!(
        log.contains("-> 10.0.3.2:8080: plain TCP (cached"),
        "second connection did not skip MPTCP:\n{log}"
    );
    assert!(
        log.contains(&format!("-> [{server6}]:8080: proxied as MPTCP")),
        "IPv6 not intercepted:\n{log}"
    );
    let lp = &lab.cl().status()["client"]["lan_proxy"];
    assert!(lp["plain_tcp"].as_u64().unwrap() >= 1, "{lp}");
    assert!(lp["fallback_cached"].as_u64().unwrap() >= 2, "{lp}");
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn half_close_and_resets_travel_through_the_proxy() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server = lab.topo.addr4(Node::Server).to_string();
    let rst_log = lab.scratch.path().join("rst.log");
    server_check(&lab, &["halfclose-server", "9001"]);
    server_check(
        &lab,
        &[
            "rst-server",
            "9002",
            "expect-rst",
            rst_log.to_str().expect("utf-8"),
        ],
    );
    server_check(&lab, &["rst-server", "9003", "send-rst"]);
    for p in [9001, 9002, 9003] {
        wait_listen(&lab, p);
    }
    lab.start_waypoint();
    lab.start_router_client("\toption proxy_idle_timeout_s '2'\n");
    for p in [9001, 9002, 9003] {
        warm(&lab, &server, p);
    }
    // The warm-up's own ending on 9002, then a clean log.
    let t0 = Instant::now();
    while std::fs::read_to_string(&rst_log)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(t0.elapsed() < Duration::from_secs(15), "no warm-up on 9002");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&rst_log, "").expect("truncate");

    // Half-close: the client sends 2 MB, shuts down writing, reads the answer.
    let v = client_check(&lab, &["halfclose-client", &server, "9001", "2000000"]);
    assert_eq!(v["sent"], v["reply"], "half-close broke the exchange: {v}");

    // The LAN host resets: the server sees a reset, not a FIN.
    let v = client_check(&lab, &["rst-client", &server, "9002", "send-rst"]);
    assert_eq!(v["sent"], "rst");
    let t0 = Instant::now();
    let mut seen = String::new();
    while t0.elapsed() < Duration::from_secs(5) && seen.is_empty() {
        std::thread::sleep(Duration::from_millis(100));
        seen = std::fs::read_to_string(&rst_log).unwrap_or_default();
    }
    assert_eq!(seen.trim(), "rst", "server saw {seen:?}, not a reset");

    // The server resets: the LAN host sees a reset.
    let v = client_check(&lab, &["rst-client", &server, "9003", "expect-rst"]);
    assert_eq!(v["ended"], "rst", "{v}");
    // Idle: nothing moves for 2 s (the server never answers): reset.
    let t0 = Instant::now();
    let v = client_check(&lab, &["rst-client", &server, "9001", "expect-rst"]);
    let idle = t0.elapsed();
    assert_eq!(v["ended"], "rst", "{v}");
    assert!(
        idle >= Duration::from_millis(1900) && idle < Duration::from_secs(5),
        "idle reset after {idle:?}"
    );
    let lp = &lab.cl().status()["client"]["lan_proxy"];
    assert!(lp["resets"].as_u64().unwrap() >= 3, "{lp}");
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn thousand_connections_and_a_device_over_its_limit() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server = lab.topo.addr4(Node::Server).to_string();
    // A second address of the LAN host (the same device: the same MAC).
    in_ns(
        &lab.ns(Node::Client),
        &["ip", "addr", "add", "10.0.1.3/24", "dev", "l1b"],
    );
    server_check(&lab, &["echo-server", "9004"]);
    wait_listen(&lab, 9004);
    lab.start_waypoint();
    lab.start_router_client("\toption max_conns_per_host '1000'\n");
    warm(&lab, &server, 9004);
    let accepted = |lab: &Lab| {
        lab.cl().status()["client"]["lan_proxy"]["accepted"]
            .as_u64()
            .unwrap()
    };
    // 1,000 concurrent connections from one host, each echoing.
    let before = accepted(&lab);
    let v = client_check(&lab, &["many-client", &server, "9004", "10.0.1.2:1000"]);
    assert_eq!(v["10.0.1.2"]["echoed"], 1000, "{v}");
    let st = lab.cl().status();
    assert_eq!(accepted(&lab) - before, 1000, "{st}");
    assert_eq!(st["client"]["lan_proxy"]["refused_limit"], 0, "{st}");
    // Closed connections leave the proxy (FINs both ways) before the next round.
    let t0 = Instant::now();
    while lab.cl().status()["client"]["lan_proxy"]["active"] != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "connections linger in the proxy: {}",
            lab.cl().status()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "1,000 connections closed in the proxy within {:?}",
        t0.elapsed()
    );

    // Over the limit: 1,030 from one address, then 20 from the device's
    // other address, all held at once. The kernel proxies 1,000 and sends
    // the rest direct: every connection works, none is refused.
    let before = accepted(&lab);
    let v = client_check(
        &lab,
        &["many-client", &server, "9004", "10.0.1.2:1030,10.0.1.3:20"],
    );
    assert_eq!(v["10.0.1.2"]["echoed"], 1030, "{v}");
    assert_eq!(v["10.0.1.3"]["echoed"], 20, "{v}");
    let st = lab.cl().status();
    let proxied = accepted(&lab) - before;
    // Connections of the first round the kernel does not count as closed
    // yet (a final ACK in flight) may hold a few places.
    assert!((990..=1000).contains(&proxied), "{proxied} proxied: {st}");
    assert_eq!(st["client"]["lan_proxy"]["refused_limit"], 0, "{st}");
    // The daemon still serves.
    let before = accepted(&lab);
    let v = client_check(&lab, &["many-client", &server, "9004", "10.0.1.2:5"]);
    assert_eq!(v["10.0.1.2"]["echoed"], 5, "{v}");
    assert_eq!(accepted(&lab) - before, 5);
}

/// One TLS connection through the proxy to a server that waits 2 s before its
/// side of the handshake; returns the waypoint's new grants seen 1 s in (the
/// handshake not done yet) and at the end.
fn tls_run(lab: &mut Lab, policy: &str, port: u16) -> (u64, u64) {
    let server = lab.topo.addr4(Node::Server).to_string();
    lab.client = None;
    lab.start_router_client(&format!("\toption detour_policy '{policy}'\n"));
    warm(lab, &server, port);
    let before = granted(lab, port);
    let cns = lab.ns(Node::Client);
    let t = tool();
    let p = port.to_string();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &cns,
            "python3",
            &t,
            "tls-client",
            &server,
            &p,
            "3",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tls-client");
    std::thread::sleep(Duration::from_millis(1000));
    let during = granted(lab, port) - before;
    let out = child.wait_with_output().expect("tls-client");
    let v: Value = serde_json::from_slice(&out.stdout).expect("tls-client output");
    assert!(v["handshake_s"].as_f64().unwrap() >= 1.9, "{v}");
    assert!(v["echoed"].as_u64().unwrap() > 100_000, "{v}");
    let after = granted(lab, port) - before;
    eprintln!(
        "policy {policy}: grants during the handshake {during}, after {after} ({})",
        v["version"]
    );
    (during, after)
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn detour_policies_seen_from_the_waypoint() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let (cert, key) = (
        lab.scratch.path().join("tls.crt"),
        lab.scratch.path().join("tls.key"),
    );
    let (c, k) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    in_ns(
        &lab.ns(Node::Server),
        &[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=server",
            "-days",
            "1",
            "-keyout",
            k,
            "-out",
            c,
        ],
    );
    server_check(&lab, &["tls-server", "8443", c, k, "2"]);
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    wait_listen(&lab, 8443);
    lab.start_waypoint();

    // Default: no grant while the handshake is under way, detours after it.
    let (during, after) = tls_run(&mut lab, "tls-after-handshake", 8443);
    assert_eq!(
        during, 0,
        "a detour was granted before the TLS handshake passed"
    );
    assert!(after >= 1, "no detour after the handshake");
    // ... and never for plaintext.
    let before = granted(&lab, IPERF_PORT);
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    iperf3_client(
        lab.topo.ns(Node::Client),
        server,
        IPERF_PORT,
        2,
        false,
        false,
    )
    .expect("plaintext iperf3");
    assert_eq!(granted(&lab, IPERF_PORT), before, "plaintext got a detour");
    assert!(lab.cl().log_text().contains("detour gate plaintext"));

    // 'all': detours from the start.
    let (during, _) = tls_run(&mut lab, "all", 8443);
    assert!(during >= 1, "policy all: no detour during the handshake");

    // 'none': never.
    let (during, after) = tls_run(&mut lab, "none", 8443);
    assert_eq!((during, after), (0, 0), "policy none: detours granted");
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn fail_open_after_kill_and_interception_resumes() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    lab.topo
        .ns(Node::Server)
        .spawn(&["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0"]);
    wait_listen(&lab, 8080);
    lab.start_waypoint();
    lab.start_router_client("");
    let rns = lab.ns(Node::Rc);
    let url = format!("http://{server}:8080/");
    let fetch = |lab: &Lab| {
        let out = lab.topo.ns(Node::Client).output(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "1",
            "-w",
            "%{http_code}",
            &url,
        ]);
        String::from_utf8_lossy(&out.stdout) == "200"
    };
    // The first meets the firewall, the second is proxied.
    assert!(fetch(&lab), "no HTTP");
    assert!(fetch(&lab), "no HTTP through the proxy");
    assert!(lab.cl().log_text().contains("proxied as MPTCP"));
    lab.client.as_mut().expect("client").kill9();
    // New LAN connections work again within 3 s, without the daemon.
    let t0 = Instant::now();
    let mut took = None;
    while t0.elapsed() < Duration::from_secs(6) {
        if fetch(&lab) {
            took = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = took.expect("LAN connections still broken 6 s after kill -9");
    eprintln!("fail-open: LAN connections work {took:?} after kill -9");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // Restart: the leftover table is replaced and interception resumes.
    lab.client = None;
    lab.start_router_client("");
    assert!(has_table(&rns, "dcol_lan"));
    assert!(fetch(&lab), "no HTTP after the restart");
    assert!(fetch(&lab), "no HTTP through the proxy after the restart");
    assert!(
        lab.cl().log_text().contains("proxied as MPTCP"),
        "{}",
        lab.cl().log_text()
    );
    // SIGTERM: no interception rules left.
    assert!(lab.client.as_mut().expect("client").terminate().success());
    assert!(!has_table(&rns, "dcol_lan"));
    assert!(fetch(&lab), "no HTTP after SIGTERM");
}
