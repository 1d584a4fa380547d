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
    let via = counter.bytes_from(waypoint);
    println!(
        "  the server received {:.1} MB through the waypoint {waypoint} (MP_JOIN from its address)",
        via as f64 / 1e6
    );
    ExitCode::SUCCESS
}
