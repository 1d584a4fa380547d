//! The DCol demo: a whole collective in network namespaces on this machine.
//!
//! ```text
//!  client ──1── rc ──2 (direct, core)── rs ──3── server (mptcpize iperf3 -s)
//!               │                        │
//!               4 (core)                 5 (core)
//!               │                        │
//!               └────────── rw ──────────┘
//!                           │6
//!                        waypoint (dcol, NAT tunnels)
//! ```
//! Prints plain TCP next to MPTCP with a DCol detour. Needs root.

use std::net::IpAddr;
use std::process::ExitCode;

use dcol_tests::lab::{need_root, Lab, IPERF_PORT};
use dcol_tests::{iperf3_client, iperf3_server, JoinCounter, LinkProfile, Node};

fn main() -> ExitCode {
    if !need_root() {
        return ExitCode::from(77);
    }
    let secs = 10;
    let profile = LinkProfile::core_limited();
    println!("DCol demo: the paper's Figure 3 topology in network namespaces");
    println!("  core links (direct path 2, detour 4+5): 10 Mbit/s; access links: 20 Mbit/s");
    let mut lab = Lab::new(profile);
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let waypoint: IpAddr = lab.topo.addr4(Node::Waypoint).into();
    let _srv = iperf3_server(lab.topo.ns(Node::Server), IPERF_PORT, true);
    let counter = JoinCounter::install(lab.topo.ns(Node::Server), IPERF_PORT, &[waypoint]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // The path's round trip on the idle network, for the detour setup time.
    let ping = lab.topo.ns(Node::Client).output(&[
        "ping",
        "-c",
        "5",
        "-i",
        "0.2",
        "-q",
        &server.to_string(),
    ]);
    let rtt = String::from_utf8_lossy(&ping.stdout)
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| {
            l.split('=')
                .nth(1)?
                .split('/')
                .nth(1)?
                .trim()
                .parse::<f64>()
                .ok()
        });

    let run = |lab: &Lab, mptcp: bool| {
        iperf3_client(
            lab.topo.ns(Node::Client),
            server,
            IPERF_PORT,
            secs,
            mptcp,
            false,
        )
        .map(|r| r.mbps_after_first_second())
    };
    let tcp = match run(&lab, false) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("plain TCP run failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("  plain TCP, direct path:                {tcp:6.2} Mbit/s");
    let mp1 = run(&lab, true).unwrap_or(f64::NAN);
    println!("  MPTCP, no DCol (1 subflow):            {mp1:6.2} Mbit/s");
    lab.start_waypoint();
    lab.start_client();
    let dcol = match run(&lab, true) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("DCol run failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "  MPTCP + DCol NAT detour via 'alice':   {dcol:6.2} Mbit/s   ({:.2}x plain TCP, {:.1}% of the two paths' sum)",
        dcol / tcp,
        100.0 * dcol / (2.0 * tcp)
    );
    // Detour setup: connection ESTABLISHED -> detour SUB_ESTABLISHED, from the
    // client's log, next to the path round trip (ping client -> server).
    let setups: Vec<f64> = lab
        .cl()
        .log_text()
        .lines()
        .filter_map(|l| {
            l.split(" established ")
                .nth(1)?
                .split(" ms")
                .next()?
                .parse()
                .ok()
        })
        .collect();
    if let (Some(rtt), false) = (rtt, setups.is_empty()) {
        let mut s = setups.clone();
        s.sort_by(f64::total_cmp);
        let med = s[s.len() / 2];
        println!("  detour setup (ESTABLISHED -> SUB_ESTABLISHED): median {med:.2} ms over {} detours = {:.1} RTTs (ping RTT {rtt:.3} ms)", s.len(), med / rtt);
    }
    let via = counter.bytes_from(waypoint);
    println!(
        "  the server received {:.1} MB through the waypoint {waypoint} (MP_JOIN from its address)",
        via as f64 / 1e6
    );
    ExitCode::SUCCESS
}
