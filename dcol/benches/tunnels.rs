//! Tunnel overhead benchmark (root; not part of `cargo test`), the paper's
//! "no detour needed" comparison: `cargo bench -p dcol --bench tunnels`.
//!
//! On the symmetric topology (every link 10 Mbit/s), one plain TCP `iperf3`
//! stream three ways, interleaved, `TRIALS` times each, in one run:
//! - direct (client → rc → rs → server);
//! - through the NAT detour alone (to the waypoint's granted port; the map
//!   element DNATs it to the server) — a lease asked for with a real signed
//!   request;
//! - through the VPN detour alone (bound to the WireGuard tunnel address; the
//!   daemon's policy rule sends it through the tunnel).
//!
//! Reported: medians and overheads against direct, beside the paper's (NAT
//! ~1.5-2 %, VPN 2.8-4.5 % with OpenVPN) and WireGuard's header floor.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dcol_tests::lab::{need_root, Lab, IPERF_PORT};
use dcol_tests::{iperf3_client, iperf3_server, LinkProfile, Node};

#[path = "../../tests/netns/lease.rs"]
mod lease;
use lease::nat_lease;

const TRIALS: usize = 3;
const SECS: u32 = 10;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::symmetric());
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let waypoint: IpAddr = lab.topo.addr4(Node::Waypoint).into();
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, false);
    lab.start_waypoint_with(
        "\toption vpn_subnet '10.200.7.0/24'\n\toption vpn_interface 'bwg0'\n\toption lease_s '3600'\n",
    );
    let cfg = lab.client_config_tunnels("", &["vpn"]);
    lab.start_client_with(Node::Client, &cfg);
    let t0 = std::time::Instant::now();
    while !lab.cl().log_text().contains("VPN tunnel to alice up") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{}",
            lab.cl().log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let port = nat_lease(&lab, SocketAddr::new(server, IPERF_PORT), 0x5a);
    let cns = lab.topo.ns(Node::Client);
    let (mut direct, mut nat, mut vpn) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..TRIALS {
        let r = iperf3_client(cns, server, IPERF_PORT, SECS, false, false).expect("direct");
        direct.push(r.mbps_after_first_second());
        let r = iperf3_client(cns, waypoint, port, SECS, false, false).expect("NAT");
        nat.push(r.mbps_after_first_second());
        let out = cns.output(&[
            "iperf3",
            "-c",
            &server.to_string(),
            "-p",
            "5201",
            "-t",
            &SECS.to_string(),
            "-J",
            "-C",
            "cubic",
            "-B",
            "10.200.7.2",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 json");
        let iv = v["intervals"].as_array().expect("intervals");
        let bytes: f64 = iv
            .iter()
            .skip(1)
            .map(|i| i["sum"]["bytes"].as_f64().unwrap_or(0.0))
            .sum();
        let secs: f64 = iv
            .iter()
            .skip(1)
            .map(|i| i["sum"]["seconds"].as_f64().unwrap_or(0.0))
            .sum();
        vpn.push(bytes * 8.0 / 1e6 / secs);
    }
    let (d, n, v) = (median(direct), median(nat), median(vpn));
    let mtu = cns.output(&["cat", "/sys/class/net/dcolc0/mtu"]);
    let mtu = String::from_utf8_lossy(&mtu.stdout).trim().to_owned();
    println!(
        "Tunnel overhead, symmetric topology (10 Mbit/s links), {TRIALS} x {SECS} s, medians:"
    );
    println!("  TCP direct           {d:6.2} Mbit/s");
    println!(
        "  TCP via NAT detour   {n:6.2} Mbit/s  overhead {:5.2} %  (paper: ~1.5-2 %)",
        (1.0 - n / d) * 100.0
    );
    println!(
        "  TCP via VPN detour   {v:6.2} Mbit/s  overhead {:5.2} %  (paper, OpenVPN: 2.8-4.5 %)",
        (1.0 - v / d) * 100.0
    );
    let mtu_n: f64 = mtu.parse().unwrap_or(1420.0);
    println!(
        "  WireGuard floor: tunnel MTU {mtu}: TCP payload {:.0} of 1500 wire bytes vs 1460 direct = {:.2} % (60-byte header alone: 4.0 %)",
        mtu_n - 40.0,
        (1.0 - (mtu_n - 40.0) / 1460.0) * 100.0
    );
}
