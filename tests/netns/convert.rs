// Needs: root, network namespaces, kernel MPTCP (userspace path manager, TCP
// Fast Open on MPTCP sockets: 6.2+), nftables (NAT, REDIRECT, sets with
// timeouts), conntrack, tbf; programs ip, tc, nft, ethtool, iperf3, python3.
// tests/setup.sh installs them.
//
//! Converter members (issue 17, RFC 8803): an unmodified LAN host talks to a
//! PLAIN TCP iperf3 server (no mptcpize) through DCol's LAN proxy, which
//! opens the connection as MPTCP to the converter 'carol' on the server's
//! router; the path manager adds a detour toward the converter through the
//! NAT waypoint 'alice'. Topology: [`dcol_tests::convlab`]. And every
//! refusal path against the real converter: each gets the RFC's Error TLV
//! and a log line, and the converter keeps serving.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dcol::convert::cookie::{self, Ask};
use dcol::convert::wire::{self, ErrorCode, Message, Tlv};
use dcol::proto::Nonce;
use dcol::trust::files::{read_certificate, read_secret_key};
use dcol_tests::convlab::ConvLab;
use dcol_tests::dcol::{in_ns, Member};
use dcol_tests::lab::{in_netns, need_root, IPERF_PORT};
use dcol_tests::{iperf3_client, iperf3_server, LinkProfile, Node};

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The converter's log and evidence name each conversion: member,
/// destination, and at its end the bytes.
fn check_evidence(cl: &ConvLab) {
    let server = cl.server();
    // Evidence: each conversion, its member, destination and bytes.
    let log = cl.cv().log_text();
    assert!(log.contains("converter: bob (10.0.2.1:"), "{log}");
    let ev = in_ns(
        &cl.lab.ns(Node::Rs),
        &[
            dcol_tests::dcol::dcol_bin().to_str().unwrap(),
            "waypoint",
            "log",
            "--dir",
            cl.lab
                .scratch
                .path()
                .join("cv-state/evidence")
                .to_str()
                .unwrap(),
        ],
    );
    assert!(
        ev.contains(&format!("convert -> {server}:{IPERF_PORT}")),
        "{ev}"
    );
    assert!(ev.contains("end convert"), "{ev}");
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, MPTCP path manager"
)]
fn plain_tcp_server_through_a_converter_and_one_detour() {
    if !need_root() {
        return;
    }
    let mut cl = ConvLab::new(LinkProfile::core_limited());
    let server = cl.server();
    let _srv = iperf3_server(cl.lab.topo.ns(Node::Server), IPERF_PORT, false);
    let host = cl.lab.topo.ns(Node::Client);
    let off = iperf3_client(host, server, IPERF_PORT, 6, false, false).expect("DCol off");
    let fastopen = in_ns(
        &cl.lab.ns(Node::Rs),
        &["sysctl", "-n", "net.ipv4.tcp_fastopen"],
    );
    cl.lab.start_waypoint();
    cl.start_converter("");
    cl.start_router_client(2, "");
    // The first data connection finds the server does not speak MPTCP
    // (the fallback cache); the ones after it are converted.
    let host = cl.lab.topo.ns(Node::Client);
    let _ = iperf3_client(host, server, IPERF_PORT, 2, false, false);
    let on = iperf3_client(host, server, IPERF_PORT, 6, false, false).expect("DCol on");
    let (a, b) = (off.mbps_after_first_second(), on.mbps_after_first_second());
    eprintln!(
        "plain TCP server, LAN host: DCol off {a:.2} Mbit/s, converter + detour {b:.2} Mbit/s, ratio {:.2}",
        b / a
    );
    let st = cl.lab.cl().status();
    let conv = &st["client"]["lan_proxy"]["converters"][0];
    assert_eq!(conv["converter"], "carol", "{st}");
    assert!(conv["converted"].as_u64().unwrap() >= 1, "{st}");
    let cst = cl.cv().status();
    let c = &cst["waypoint"]["converter"];
    assert!(c["converted"].as_u64().unwrap() >= 1, "{cst}");
    assert!(
        c["bytes_up"].as_u64().unwrap() > 5_000_000,
        "converted bytes: {cst}"
    );
    // The waypoint granted a NAT detour toward the converter.
    let to_conv = format!(" -> {} for ", ConvLab::converter_addr());
    assert!(
        cl.lab
            .wp()
            .log_text()
            .lines()
            .any(|l| l.contains("granted ") && l.contains(&to_conv)),
        "no detour toward the converter:\n{}",
        cl.lab.wp().log_text()
    );
    assert!(
        b >= 1.8 * a,
        "{b:.2} Mbit/s through converter + detour is not 1.8x {a:.2}"
    );
    check_evidence(&cl);
    // SIGTERM restores the Fast Open sysctl.
    assert!(cl.converter.as_mut().unwrap().terminate().success());
    let after = in_ns(
        &cl.lab.ns(Node::Rs),
        &["sysctl", "-n", "net.ipv4.tcp_fastopen"],
    );
    assert_eq!(after, fastopen, "net.ipv4.tcp_fastopen not restored");
}

/// Sends `bytes` to the converter from `rc` (10.0.2.1), half-closes when
/// `close`, and reads its answer until EOF (or 15 s); the answer's bytes.
fn exchange(cl: &ConvLab, bytes: Vec<u8>, close: bool) -> Vec<u8> {
    let to = ConvLab::converter_addr();
    in_netns(cl.lab.topo.ns(Node::Rc), move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(&bytes).expect("write");
        if close {
            s.shutdown(Shutdown::Write).expect("shutdown");
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if wire::parse(&out).is_ok() && !close {
                break;
            }
        }
        out
    })
}

fn header(m: &Member, to: &str, dest: SocketAddr, nonce: u8) -> Vec<u8> {
    let cert = read_certificate(&m.cert).expect("cert");
    let key = read_secret_key(&m.key).expect("key");
    let ask = Ask {
        converter: to.into(),
        destination: dest,
        source: "10.0.2.1".parse().unwrap(),
        timestamp_ms: wall_ms(),
        nonce: Nonce([nonce; 16]),
    };
    wire::encode(&Message(vec![
        Tlv::Connect {
            dest,
            options: vec![],
        },
        Tlv::Cookie(cookie::make(&cert, &key, &ask)),
    ]))
}

fn error_of(answer: &[u8]) -> Option<ErrorCode> {
    wire::parse(answer).ok().and_then(|(m, _)| m.error())
}

/// The malformed and unauthorized headers, each with the error it must get
/// (`close`: half-close after sending).
fn refusal_cases(
    cl: &ConvLab,
    mallory: &Member,
    outsider: &Member,
) -> Vec<(&'static str, Vec<u8>, bool, ErrorCode)> {
    let bob = cl.lab.client_member.clone();
    let good: SocketAddr = format!("{}:{IPERF_PORT}", cl.server()).parse().unwrap();
    vec![
        (
            "truncated",
            vec![1, 6, 0, 0, 0x0a],
            true,
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "TLV past the end",
            vec![1, 2, 0, 0, 0x0a, 5, 0, 0],
            false,
            ErrorCode::MALFORMED_MESSAGE,
        ),
        (
            "unknown TLV",
            vec![1, 2, 0, 0, 0x42, 1, 0, 0],
            false,
            ErrorCode::UNSUPPORTED_MESSAGE,
        ),
        (
            "version 2",
            vec![2, 1, 0, 0],
            false,
            ErrorCode::UNSUPPORTED_VERSION,
        ),
        (
            "no cookie",
            wire::encode(&Message(vec![Tlv::Connect {
                dest: good,
                options: vec![],
            }])),
            false,
            ErrorCode::MISSING_COOKIE,
        ),
        (
            "non-member",
            header(outsider, "carol", good, 1),
            false,
            ErrorCode::NOT_AUTHORIZED,
        ),
        (
            "revoked member",
            header(mallory, "carol", good, 2),
            false,
            ErrorCode::NOT_AUTHORIZED,
        ),
        (
            "forbidden destination",
            header(
                &bob,
                "carol",
                format!("{}:25", cl.server()).parse().unwrap(),
                3,
            ),
            false,
            ErrorCode::NOT_AUTHORIZED,
        ),
        (
            "unanswering destination",
            header(&bob, "carol", "10.0.3.99:5201".parse().unwrap(), 4),
            false,
            ErrorCode::DESTINATION_UNREACHABLE,
        ),
    ]
}

/// Per source: 4 connections, the fifth is refused at once; then every
/// refusal so far is a log line.
fn per_source_cap_and_log_lines(cl: &ConvLab) {
    // Per source: 4 connections, the fifth is refused at once.
    let to = ConvLab::converter_addr();
    let fifth = in_netns(cl.lab.topo.ns(Node::Rc), move || {
        let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(to).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut s = TcpStream::connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = vec![0u8; 64];
        let n = s.read(&mut b).unwrap_or(0);
        drop(held);
        b.truncate(n);
        b
    });
    assert_eq!(
        error_of(&fifth),
        Some(ErrorCode::RESOURCE_EXCEEDED),
        "{fifth:?}"
    );
    // Every refusal is a log line; the converter still converts.
    // (The daemon logs right after it answered: give it a moment.)
    let t0 = Instant::now();
    let mut log = cl.cv().log_text();
    while !log.contains("Resource Exceeded") && t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
        log = cl.cv().log_text();
    }
    let refused = log
        .lines()
        .filter(|l| l.contains("converter: refused"))
        .count();
    assert!(refused >= 12, "{refused} refusal lines:\n{log}");
    for name in [
        "Unsupported Version",
        "Missing Cookie",
        "Not Authorized",
        "Destination Unreachable",
        "Resource Exceeded",
    ] {
        assert!(log.contains(name), "no '{name}' in the log:\n{log}");
    }
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, MPTCP path manager"
)]
fn bad_input_gets_the_rfc_errors_and_the_converter_keeps_serving() {
    if !need_root() {
        return;
    }
    let mut cl = ConvLab::new(LinkProfile::core_limited());
    let _srv = iperf3_server(cl.lab.topo.ns(Node::Server), IPERF_PORT, false);
    let mallory = cl.lab.collective.admit("mallory", "client", 30);
    let id = read_certificate(&mallory.cert)
        .expect("cert")
        .member
        .to_string();
    let other = dcol_tests::dcol::Collective::new(cl.lab.scratch.path(), "other");
    let outsider = other.admit("bob", "client", 30);
    cl.start_converter("\toption convert_max_per_source '4'\n");
    // The revocation is the converter's own list (main section).
    let cfg = cl
        .converter_config("\toption convert_max_per_source '4'\n")
        .replacen(
            "\toption log_level 'debug'\n",
            &format!("\toption log_level 'debug'\n\tlist revoked '{id}'\n"),
            1,
        );
    cl.cv().reload(&cfg);
    let bob = cl.lab.client_member.clone();
    let good: SocketAddr = format!("{}:{IPERF_PORT}", cl.server()).parse().unwrap();
    for (what, bytes, close, want) in refusal_cases(&cl, &mallory, &outsider) {
        let t0 = Instant::now();
        let answer = exchange(&cl, bytes, close);
        eprintln!("{what}: {answer:?} after {:?}", t0.elapsed());
        assert_eq!(error_of(&answer), Some(want), "{what}: answer {answer:?}");
    }
    // A replayed cookie.
    let once = header(&bob, "carol", good, 5);
    assert_eq!(
        exchange(&cl, once.clone(), false),
        [1, 1, 0, 0],
        "first use"
    );
    assert_eq!(
        error_of(&exchange(&cl, once, false)),
        Some(ErrorCode::NOT_AUTHORIZED),
        "replay"
    );
    // A header that never completes: refused after 5 s.
    let slow = exchange(&cl, vec![1, 6, 0, 0], false);
    assert_eq!(
        error_of(&slow),
        Some(ErrorCode::MALFORMED_MESSAGE),
        "slow header"
    );
    per_source_cap_and_log_lines(&cl);
    assert_eq!(
        exchange(&cl, header(&bob, "carol", good, 6), false),
        [1, 1, 0, 0]
    );
    let st = cl.cv().status();
    assert!(
        st["waypoint"]["converter"]["converted"].as_u64().unwrap() >= 2,
        "{st}"
    );
}

/// One HTTP GET from the LAN host; the body.
fn curl(cl: &ConvLab, url: &str) -> String {
    in_ns(&cl.lab.ns(Node::Client), &["curl", "-sSf", "-m", "20", url])
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, MPTCP path manager"
)]
fn a_refusing_or_dead_converter_fails_open() {
    if !need_root() {
        return;
    }
    let mut cl = ConvLab::new(LinkProfile::core_limited());
    cl.start_http_server("hello", "hello through whatever works\n");
    // carol refuses this port (Not Authorized); 'dave' is a converter that
    // is not there (nothing listens: the connection is refused).
    cl.start_converter("\tlist deny_port '8080'\n");
    let dead = "config peer\n\toption name 'dave'\n\toption address '10.0.3.1:7999'\n\toption convert '1'\n";
    cl.start_router_client(0, "");
    let cfg = format!(
        "{}{dead}",
        std::fs::read_to_string(&cl.lab.cl().config).unwrap()
    );
    cl.lab.cl().reload(&cfg);
    let url = format!("http://{}:8080/hello", cl.server());
    // The firewall's verdict, then the fallback cache: then converters.
    for round in 0..5 {
        let body = curl(&cl, &url);
        assert_eq!(body, "hello through whatever works\n", "round {round}");
    }
    let st = cl.lab.cl().status();
    let convs = st["client"]["lan_proxy"]["converters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(convs.len(), 2, "{st}");
    let by = |n: &str| convs.iter().find(|c| c["converter"] == n).cloned().unwrap();
    let (carol, dave) = (by("carol"), by("dave"));
    assert_eq!(carol["refused"], 1, "{st}");
    assert_eq!(dave["failed"], 1, "{st}");
    assert!(
        carol["held_down"] == true && dave["held_down"] == true,
        "{st}"
    );
    let log = cl.lab.cl().log_text();
    assert!(
        log.contains("through converter carol: refused: Not Authorized (32); going direct"),
        "{log}"
    );
    assert!(log.contains("through converter dave:"), "{log}");
}
