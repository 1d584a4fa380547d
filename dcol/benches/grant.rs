//! Waypoint grant benchmark (root; not part of `cargo test`):
//! `cargo bench -p dcol --bench grant`.
//!
//! A real `dcol run` waypoint in its own network namespace answers signed NAT
//! detour requests on loopback; every grant means one nftables map element was
//! installed over netlink before the reply left. Reported:
//! - grant latency (request sent → grant received), median and p99, one request
//!   at a time, next to a UDP echo round trip on the same loopback in the same run
//!   (the baseline, so the ratio says what the waypoint itself costs);
//! - grants per second with many requests in flight (the daemon is one thread,
//!   so this is one core);
//! - the pure protocol core alone (verify + policy + lease + sign, no kernel),
//!   in-process, per request.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dcol::proto::{self, Message, Nonce, Outcome, Request, RequestBody, RequestKind};
use dcol::trust::{files, Certificate, SecretKey};
use dcol_tests::dcol::{in_ns, main_section, Collective, Daemon, Scratch};
use dcol_tests::lab::{enter_netns, need_root};

const LATENCY_N: usize = 2000;
const THROUGHPUT_N: usize = 10_000;
const WINDOW: usize = 64;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn requests(cert: &Certificate, key: &SecretKey, n: usize, salt: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut nonce = [salt; 16];
            nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let dest = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, salt, (i >> 8) as u8, i as u8)),
                443,
            );
            let body = RequestBody {
                waypoint: "alice".into(),
                timestamp_ms: now_ms(),
                nonce: Nonce(nonce),
                kind: RequestKind::NatDetour { destination: dest },
            };
            proto::encode(&Message::Request(Request::sign(cert.clone(), key, body)))
        })
        .collect()
}

fn granted(reply: &[u8]) -> bool {
    matches!(proto::decode(reply), Ok(Message::Response(r)) if matches!(r.body.outcome, Outcome::Granted { .. }))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if !need_root() {
        return;
    }
    let ns = format!("dcol-bench-{}", std::process::id());
    in_ns_setup(&ns);
    let scratch = Scratch::new("bench");
    let coop = Collective::new(scratch.path(), "coop");
    let alice = coop.admit("alice", "client,waypoint", 30);
    let bob = coop.admit("bob", "client", 30);
    let sock = scratch.path().join("wp.sock");
    let uci = format!(
        "{}config waypoint 'waypoint'\n\toption enabled '1'\n\toption listen '127.0.0.1:7447'\n\toption nat_ports '1024-65535'\n\toption max_tunnels_per_member '100000'\n\tlist allow_destination '10.0.0.0/8'\n",
        main_section(&alice, &coop, &sock, &scratch.path().join("state"))
    )
    .replace("option log_level 'debug'", "option log_level 'warn'");
    let mut wp = Daemon::start(&ns, scratch.path(), "wp", &uci, &sock);
    let key = files::read_secret_key(&bob.key).unwrap();
    let cert = files::read_certificate(&bob.cert).unwrap();

    let lat_reqs = requests(&cert, &key, LATENCY_N, 1);
    let tput_reqs = requests(&cert, &key, THROUGHPUT_N, 2);
    let ns_path = format!("/var/run/netns/{ns}");
    let (echo, grant, tput) = std::thread::spawn(move || {
        enter_netns(&std::fs::File::open(&ns_path).unwrap());
        let wp: SocketAddr = "127.0.0.1:7447".parse().unwrap();
        // Baseline: UDP echo of a request-sized datagram on the same loopback.
        let echo_srv = UdpSocket::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo_srv.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 2048];
            while let Ok((n, from)) = echo_srv.recv_from(&mut b) {
                let _ = echo_srv.send_to(&b[..n], from);
            }
        });
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 2048];
        let mut echo = Vec::new();
        for r in &lat_reqs {
            let t = Instant::now();
            s.send_to(r, echo_addr).unwrap();
            s.recv_from(&mut buf).unwrap();
            echo.push(t.elapsed());
        }
        let mut grant = Vec::new();
        for r in &lat_reqs {
            let t = Instant::now();
            s.send_to(r, wp).unwrap();
            let (n, _) = s.recv_from(&mut buf).expect("grant");
            grant.push(t.elapsed());
            assert!(granted(&buf[..n]), "not granted");
        }
        // Throughput: keep WINDOW requests in flight.
        let t0 = Instant::now();
        let mut sent = 0;
        let mut got = 0;
        while got < tput_reqs.len() {
            while sent < tput_reqs.len() && sent - got < WINDOW {
                s.send_to(&tput_reqs[sent], wp).unwrap();
                sent += 1;
            }
            let (n, _) = s.recv_from(&mut buf).expect("grant (throughput)");
            assert!(granted(&buf[..n]));
            got += 1;
        }
        let tput = tput_reqs.len() as f64 / t0.elapsed().as_secs_f64();
        (echo, grant, tput)
    })
    .join()
    .unwrap();
    let mut echo = echo;
    let mut grant = grant;
    echo.sort();
    grant.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (em, ep) = (percentile(&echo, 0.5), percentile(&echo, 0.99));
    let (gm, gp) = (percentile(&grant, 0.5), percentile(&grant, 0.99));
    let st = wp.status();
    let grants = st["waypoint"]["grants"].as_array().map_or(0, |a| a.len());
    println!(
        "waypoint grant benchmark ({LATENCY_N} sequential, {THROUGHPUT_N} with {WINDOW} in flight)"
    );
    println!(
        "  UDP echo baseline RTT: median {:.1} us, p99 {:.1} us",
        us(em),
        us(ep)
    );
    println!(
        "  grant latency:         median {:.1} us, p99 {:.1} us  ({:.1}x / {:.1}x the echo baseline)",
        us(gm),
        us(gp),
        us(gm) / us(em),
        us(gp) / us(ep)
    );
    println!("  grants per second (one daemon thread): {tput:.0}");
    println!("  live grants (map elements) at the end: {grants}");
    wp.terminate();
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &ns])
        .status();

    // The protocol core alone, in-process: verify, policy, lease, sign.
    let settings = dcol::waypoint::Settings {
        ports: (1024, 65535),
        lease: Duration::from_secs(300),
        max_per_member: 100_000,
        destinations: dcol::waypoint::policy::Rules {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny_ports: Vec::new(),
        },
        max_skew: Duration::from_secs(30),
        vpn: None,
    };
    let mut core = dcol::waypoint::Waypoint::new(
        settings,
        files::read_certificate(&alice.cert).unwrap(),
        files::read_secret_key(&alice.key).unwrap(),
        files::read_public_key(&coop.root_pub).unwrap(),
        Default::default(),
        dcol::routes::Routes::all_wan(Vec::new()),
    );
    let reqs = requests(&cert, &key, THROUGHPUT_N, 3);
    let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let t0 = Instant::now();
    for r in &reqs {
        let d = core.handle(Instant::now(), now_ms(), from, r);
        assert!(
            matches!(d, dcol::waypoint::Decision::Install { .. }),
            "{d:?}"
        );
    }
    let per = t0.elapsed() / THROUGHPUT_N as u32;
    println!(
        "  protocol core alone (no kernel): {:.1} us per request, {:.0} requests/s",
        us(per),
        1.0 / per.as_secs_f64()
    );
}

fn in_ns_setup(ns: &str) {
    let st = std::process::Command::new("ip")
        .args(["netns", "add", ns])
        .status()
        .unwrap();
    assert!(st.success());
    in_ns(ns, &["ip", "link", "set", "lo", "up"]);
}
