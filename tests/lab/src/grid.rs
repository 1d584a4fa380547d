//! `dcol-lab grid`: the lab's rows with more than one detour per
//! connection (issue 18), and WireGuard's MTU measured.
//!
//! ```text
//!                  +-- x1 -- w1 -- y1 (10 Mbit/s) --+
//!  client -- rc ---+-- direct, d (10 Mbit/s) -------+--- rs -- server
//!                  +-- x2 -- w2 -- y2 (10 Mbit/s) --+
//! ```
//! Three paths with their own cores: direct, and through each of two
//! waypoints (DCol waypoint daemons; their WAN, the default route, is the
//! `y` link). Every path has 30 ms RTT (TUN relays in rc and rs hold what
//! they forward 7.5 ms, as in `dcol-lab waypoints`). Configurations: both
//! detours NAT (`nat`), both VPN (`vpn`, WireGuard), one of each (`mixed`).
//! In each, per trial (10 s iperf3 uploads, CUBIC, receiver's count from
//! second 1):
//! - the three paths alone, each a 1-subflow MPTCP connection: direct
//!   (`mptcpize iperf3`), through a NAT waypoint (to a port a signed request
//!   got), through a VPN waypoint (bound to the tunnel address, the DCol
//!   client running with `max_detours 0` to keep the tunnel up);
//! - DCol with both waypoints as peers, `max_detours 2`: one connection,
//!   three subflows. Target (issue 18): at least 97 % of the sum of the
//!   three paths' medians.
//!
//! In `vpn`, also the MTU: TCP through each tunnel with the MTU DCol sets
//! (1440 for an IPv4 endpoint) and with WireGuard's default 1420 (set on
//! both ends by the lab), alternating in the same run.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dcol_tests::dcol::{main_section, Collective, Daemon, Member, Scratch};
use dcol_tests::lab::{IPERF_PORT, SIGNAL_PORT};
use dcol_tests::{iperf3_server_with, Netns};
use lexopt::prelude::ValueExt;
use serde_json::{json, Value};

use crate::plot::{self, Series};
use crate::waypoints::{direct_path, start_base_relay, veth};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 3, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
/// Each configuration: key, title, the tunnel of waypoint 1 and 2.
const CONFIGS: [(&str, &str, [&str; 2]); 3] = [
    ("nat", "Three paths: two NAT detours", ["nat", "nat"]),
    ("vpn", "Three paths: two VPN detours", ["vpn", "vpn"]),
    (
        "mixed",
        "Three paths: a NAT and a VPN detour",
        ["nat", "vpn"],
    ),
];

/// Options of `dcol-lab grid`.
struct Args {
    quick: bool,
    trials: usize,
    out: PathBuf,
    only: Vec<String>,
}

fn parse(args: &mut lexopt::Parser) -> Result<Args, lexopt::Error> {
    let mut a = Args {
        quick: false,
        trials: 0,
        out: PathBuf::from("target/lab-grid"),
        only: Vec::new(),
    };
    while let Some(arg) = args.next()? {
        match arg {
            lexopt::Arg::Long("quick") => a.quick = true,
            lexopt::Arg::Long("trials") => a.trials = args.value()?.parse()?,
            lexopt::Arg::Long("out") => a.out = args.value()?.string()?.into(),
            lexopt::Arg::Long("config") => {
                let k = args.value()?.string()?;
                if !CONFIGS.iter().any(|c| c.0 == k) {
                    return Err(format!("unknown configuration '{k}' (nat, vpn, mixed)").into());
                }
                a.only.push(k);
            }
            other => return Err(other.unexpected()),
        }
    }
    if a.trials == 0 {
        a.trials = if a.quick { 1 } else { 3 };
    }
    Ok(a)
}

/// `dcol-lab grid [--quick] [--trials N] [--config nat|vpn|mixed]... [--out DIR]`.
pub fn main(args: &mut lexopt::Parser) -> ExitCode {
    let a = match crate::begin::begin("grid", parse(args), |a| &a.out) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let started = Instant::now();
    let mut configs = Vec::new();
    for (key, title, tunnels) in CONFIGS {
        if !a.only.is_empty() && !a.only.iter().any(|k| k == key) {
            continue;
        }
        eprintln!("\n=== {title} ({key}) ===");
        let r = run_config(key, title, tunnels, a.trials);
        let _ = std::fs::write(a.out.join(format!("grid-{key}.svg")), config_svg(&r));
        configs.push(r);
        write(&a, &configs, started);
    }
    print_table(&configs);
    println!(
        "\nTotal {:.0} s. Results: {}",
        started.elapsed().as_secs_f64(),
        a.out.join("results.json").display()
    );
    ExitCode::SUCCESS
}

fn write(a: &Args, configs: &[Value], started: Instant) {
    let doc = json!({
        "command": "grid",
        "quick": a.quick,
        "trials_per_cell": a.trials,
        "iperf_seconds": crate::SECS,
        "measure": "iperf3 upload client -> server, CUBIC, receiver-side intervals from second 1",
        "topology": "three paths with their own 10 Mbit/s cores (direct, via w1, via w2), 30 ms RTT each (TUN relays in rc and rs)",
        "target": "DCol with two detours >= 97 % of the sum of the three 1-subflow MPTCP paths' medians",
        "elapsed_s": crate::round2(started.elapsed().as_secs_f64()),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).ok(),
        "configs": configs,
    });
    let _ = std::fs::write(
        a.out.join("results.json"),
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    );
}

/// The namespaces.
struct Net {
    c: Netns,
    rc: Netns,
    rs: Netns,
    s: Netns,
    w: [Netns; 2],
}

/// Waypoint `k`'s (0, 1) signaling address (x side) and its NAT source (y).
fn wp_addrs(k: usize) -> (Ipv4Addr, Ipv4Addr) {
    let n = 21 + k as u8;
    (Ipv4Addr::new(10, n, 1, 2), Ipv4Addr::new(10, n, 2, 1))
}

fn build() -> Net {
    let n = Net {
        c: Netns::new("gc"),
        rc: Netns::new("grc"),
        rs: Netns::new("grs"),
        s: Netns::new("gs"),
        w: [Netns::new("gw1"), Netns::new("gw2")],
    };
    direct_path(&n.c, &n.rc, &n.rs, &n.s);
    for (k, w) in n.w.iter().enumerate() {
        let m = 21 + k;
        let (x, y) = (format!("x{}", k + 1), format!("y{}", k + 1));
        veth(
            &n.rc,
            &format!("{x}r"),
            &format!("10.{m}.1.1/24"),
            w,
            &x,
            &format!("10.{m}.1.2/24"),
            None,
        );
        veth(
            w,
            &y,
            &format!("10.{m}.2.1/24"),
            &n.rs,
            &format!("{y}r"),
            &format!("10.{m}.2.2/24"),
            Some(10),
        );
        // The WAN (default route) is the y link; the client's side is x.
        w.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.{m}.2.2"),
        ]);
        w.exec(&[
            "ip",
            "route",
            "add",
            "10.1.0.0/24",
            "via",
            &format!("10.{m}.1.1"),
        ]);
        w.sysctl("net.ipv4.ip_forward", "1");
    }
    let rc_ifaces: Vec<String> = ["cb", "da", "x1r", "x2r"].map(String::from).to_vec();
    let rs_ifaces: Vec<String> = ["db", "sa", "y1r", "y2r"].map(String::from).to_vec();
    start_base_relay(&n.rc, &rc_ifaces);
    start_base_relay(&n.rs, &rs_ifaces);
    n
}

/// The collective and the daemons of one configuration.
struct Coop {
    scratch: Scratch,
    coll: Collective,
    bob: Member,
    wdaemons: Vec<Daemon>,
}

fn start_waypoints(net: &Net) -> Coop {
    let scratch = Scratch::new("lab");
    let coll = Collective::new(scratch.path(), "coop");
    let bob = coll.admit("bob", "client", 30);
    let wps: Vec<Member> = (1..=2)
        .map(|k| coll.admit(&format!("w{k}"), "client,waypoint", 30))
        .collect();
    let mut wdaemons = Vec::new();
    for (k, w) in net.w.iter().enumerate() {
        let sock = scratch.path().join(format!("w{k}.sock"));
        let state = scratch.path().join(format!("w{k}-state"));
        let uci = format!(
            "{}config waypoint 'waypoint'\n\toption enabled '1'\n\tlist listen '0.0.0.0:{SIGNAL_PORT}'\n\toption nat_ports '40000-40099'\n\toption lease_s '3600'\n\tlist allow_destination '10.0.0.0/8'\n\toption upnp '0'\n\toption vpn_subnet '10.20{}.7.0/24'\n\toption vpn_interface 'g3w{}'\n",
            main_section(&wps[k], &coll, &sock, &state).replace("'debug'", "'info'"),
            k + 1,
            k + 1
        );
        wdaemons.push(Daemon::start(
            w.name(),
            scratch.path(),
            &format!("w{k}"),
            &uci,
            &sock,
        ));
    }
    Coop {
        scratch,
        coll,
        bob,
        wdaemons,
    }
}

/// The client's UCI file: both waypoints as peers of the given tunnels.
fn client_uci(coop: &Coop, tunnels: [&str; 2], max_detours: u8) -> String {
    let sock = coop.scratch.path().join("cl.sock");
    let state = coop.scratch.path().join("cl-state");
    let mut s = main_section(&coop.bob, &coop.coll, &sock, &state).replace("'debug'", "'info'");
    s.push_str(&format!(
        "config client 'client'\n\toption enabled '1'\n\toption max_detours '{max_detours}'\n\toption vpn_interface_prefix 'g3c'\n\n"
    ));
    for (k, t) in tunnels.iter().enumerate() {
        s.push_str(&format!(
            "config peer\n\toption name 'w{}'\n\toption address '{}:{SIGNAL_PORT}'\n\toption tunnel '{t}'\n\n",
            k + 1,
            wp_addrs(k).0
        ));
    }
    s
}

fn start_client(net: &Net, coop: &Coop, tunnels: [&str; 2], max_detours: u8) -> Daemon {
    let uci = client_uci(coop, tunnels, max_detours);
    let sock = coop.scratch.path().join("cl.sock");
    Daemon::start(net.c.name(), coop.scratch.path(), "cl", &uci, &sock)
}

/// The VPN tunnel addresses of the client's peers (`None` for NAT peers),
/// once every VPN peer's tunnel is up (15 s at most).
fn vpn_addrs(cl: &Daemon, tunnels: [&str; 2]) -> [Option<String>; 2] {
    let t0 = Instant::now();
    loop {
        let st = cl.status();
        let addr = |k: usize| {
            st["client"]["peers"][k]["vpn_address"]
                .as_str()
                .map(str::to_owned)
        };
        let a = [addr(0), addr(1)];
        let ready = (0..2).all(|k| tunnels[k] != "vpn" || a[k].is_some());
        if ready || t0.elapsed() > Duration::from_secs(15) {
            return a;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One 10 s upload, receiver-side Mbit/s (`None` with the error logged).
fn upload(net: &Net, dst: IpAddr, port: u16, mptcp: bool, bind: Option<&str>) -> Option<f64> {
    let r = crate::iperf(&net.c, dst, port, mptcp, bind);
    std::thread::sleep(Duration::from_millis(800));
    match r {
        Ok(r) => Some(crate::round2(r.mbps_after_first_second())),
        Err(e) => {
            eprintln!("    upload failed: {e}");
            None
        }
    }
}

/// Trials of one scenario.
#[derive(Default)]
struct Cells(Vec<(String, Vec<Option<f64>>)>);

impl Cells {
    fn push(&mut self, key: &str, v: Option<f64>) {
        eprintln!(
            "  {key:14} {}",
            v.map_or("failed".into(), |x| format!("{x:6.2} Mbit/s"))
        );
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, l)) => l.push(v),
            None => self.0.push((key.to_owned(), vec![v])),
        }
    }

    fn values(&self, key: &str) -> Vec<f64> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, l)| l.iter().flatten().copied().collect())
            .unwrap_or_default()
    }

    fn median(&self, key: &str) -> Option<f64> {
        plot::median(&self.values(key)).map(crate::round2)
    }
}

/// A lease on waypoint `k` for the client to the iperf3 server.
fn lease(net: &Net, coop: &Coop, k: usize) -> Option<u16> {
    let wp = SocketAddr::new(IpAddr::V4(wp_addrs(k).0), SIGNAL_PORT);
    let dest = SocketAddr::new(IpAddr::V4(SERVER), IPERF_PORT);
    let name = format!("w{}", k + 1);
    match crate::lease::nat_lease(net.c.name(), &coop.bob, &name, wp, IpAddr::V4(CLIENT), dest) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("  lease on {name}: {e}");
            None
        }
    }
}

fn run_config(key: &str, title: &str, tunnels: [&str; 2], trials: usize) -> Value {
    let net = build();
    let _srv = iperf3_server_with(&net.s, IPERF_PORT, true, &["-J"]);
    let coop = start_waypoints(&net);
    let mut cells = Cells::default();
    let ports: Vec<Option<u16>> = (0..2).map(|k| lease(&net, &coop, k)).collect();
    // The paths alone: the client keeps its tunnels up but adds no detour.
    let mut cl = start_client(&net, &coop, tunnels, 0);
    let addrs = vpn_addrs(&cl, tunnels);
    for t in 1..=trials {
        eprintln!(" trial {t}: paths alone");
        cells.push(
            "path_direct",
            upload(&net, IpAddr::V4(SERVER), IPERF_PORT, true, None),
        );
        for k in 0..2 {
            let v = match (tunnels[k], &addrs[k], ports[k]) {
                ("vpn", Some(a), _) => upload(&net, IpAddr::V4(SERVER), IPERF_PORT, true, Some(a)),
                ("nat", _, Some(p)) => upload(&net, IpAddr::V4(wp_addrs(k).0), p, true, None),
                _ => None,
            };
            cells.push(&format!("path_w{}", k + 1), v);
        }
    }
    let mtu = if key == "vpn" {
        mtu_rows(&net, &addrs, trials)
    } else {
        Value::Null
    };
    let _ = cl.terminate();
    cl = start_client(&net, &coop, tunnels, 2);
    let _ = vpn_addrs(&cl, tunnels);
    for t in 1..=trials {
        eprintln!(" trial {t}: DCol, two detours");
        cells.push(
            "dcol",
            upload(&net, IpAddr::V4(SERVER), IPERF_PORT, true, None),
        );
    }
    let _ = cl.terminate();
    drop(coop.wdaemons);
    summarize(key, title, tunnels, &cells, mtu)
}

/// TCP through each VPN tunnel with the MTU DCol set and with 1420, both
/// ends, alternating.
fn mtu_rows(net: &Net, addrs: &[Option<String>; 2], trials: usize) -> Value {
    let set = |mtu: u32| {
        for (k, w) in net.w.iter().enumerate() {
            let _ = net.c.output(&[
                "ip",
                "link",
                "set",
                &format!("g3c{k}"),
                "mtu",
                &mtu.to_string(),
            ]);
            let _ = w.output(&[
                "ip",
                "link",
                "set",
                &format!("g3w{}", k + 1),
                "mtu",
                &mtu.to_string(),
            ]);
        }
    };
    let shown = |ns: &Netns, dev: &str| -> Option<u64> {
        let out = ns.output(&["cat", &format!("/sys/class/net/{dev}/mtu")]);
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    let dcol_mtu = (shown(&net.c, "g3c0"), shown(&net.w[0], "g3w1"));
    let mut cells = Cells::default();
    for t in 1..=trials.max(2) {
        eprintln!(" trial {t}: TCP through the tunnels, MTU 1440 and 1420");
        for mtu in [1440, 1420] {
            set(mtu);
            for (k, a) in addrs.iter().enumerate() {
                let v = a
                    .as_deref()
                    .and_then(|a| upload(net, IpAddr::V4(SERVER), IPERF_PORT, false, Some(a)));
                cells.push(&format!("tcp_vpn_w{}_mtu{mtu}", k + 1), v);
            }
        }
    }
    set(1440);
    let both = |m: u32| {
        let mut v = cells.values(&format!("tcp_vpn_w1_mtu{m}"));
        v.extend(cells.values(&format!("tcp_vpn_w2_mtu{m}")));
        plot::median(&v).map(crate::round2)
    };
    let (a, b) = (both(1440), both(1420));
    json!({
        "mtu_set_by_dcol": {"client": dcol_mtu.0, "waypoint": dcol_mtu.1},
        "cells": cells.0.iter().map(|(k, v)| json!({"key": k, "mbps": v})).collect::<Vec<_>>(),
        "tcp_vpn_median_mbps": {"mtu1440": a, "mtu1420": b},
        "gain_1440_over_1420": match (a, b) { (Some(a), Some(b)) if b > 0.0 => Some((a / b * 1e4).round() / 1e4), _ => None },
    })
}

fn summarize(key: &str, title: &str, tunnels: [&str; 2], cells: &Cells, mtu: Value) -> Value {
    let keys = ["path_direct", "path_w1", "path_w2", "dcol"];
    let med: Vec<Option<f64>> = keys.iter().map(|k| cells.median(k)).collect();
    let sum = med[..3].iter().try_fold(0.0, |s, m| m.map(|m| s + m));
    let ratio = match (med[3], sum) {
        (Some(d), Some(s)) if s > 0.0 => Some((d / s * 1e4).round() / 1e4),
        _ => None,
    };
    eprintln!(
        "{key}: paths {:?} (sum {sum:?}), DCol {:?}: {:?} of the sum (target 0.97)",
        &med[..3],
        med[3],
        ratio
    );
    json!({
        "key": key, "title": title, "tunnels": tunnels,
        "scenarios": keys.iter().zip(&med).map(|(k, m)| json!({
            "key": k, "median_mbps": m,
            "trials": cells.0.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone()).unwrap_or_default(),
        })).collect::<Vec<_>>(),
        "sum_of_paths_mbps": sum.map(crate::round2),
        "dcol_over_sum": ratio,
        "target": 0.97,
        "met": ratio.map(|r| r >= 0.97),
        "mtu": mtu,
    })
}

fn config_svg(r: &Value) -> String {
    let label = |k: &str| match k {
        "path_direct" => "direct path alone (MPTCP, 1 subflow)".to_owned(),
        "path_w1" => format!("via w1 alone ({})", r["tunnels"][0].as_str().unwrap_or("?")),
        "path_w2" => format!("via w2 alone ({})", r["tunnels"][1].as_str().unwrap_or("?")),
        _ => "DCol, two detours".to_owned(),
    };
    let series: Vec<Series> = r["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| Series {
            label: label(s["key"].as_str().unwrap_or("")),
            values: s["trials"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect(),
            reference: (s["key"] == "dcol")
                .then(|| r["sum_of_paths_mbps"].as_f64().map(|x| x * 0.97))
                .flatten(),
        })
        .collect();
    let sub =
        "three 10 Mbit/s paths, 30 ms RTT; diamond: 97 % of the sum of the paths' medians (target)";
    plot::box_plot_svg(r["title"].as_str().unwrap_or("?"), sub, &series)
}

fn print_table(configs: &[Value]) {
    println!("\nThree paths (medians, Mbit/s): direct, via w1, via w2 | sum | DCol | DCol/sum (target 0.97)");
    for c in configs {
        let m: Vec<String> = c["scenarios"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s["median_mbps"].to_string())
            .collect();
        println!(
            "  {:6} {} | {} | {} | {} {}",
            c["key"].as_str().unwrap_or("?"),
            m[..3.min(m.len())].join(", "),
            c["sum_of_paths_mbps"],
            m.get(3).cloned().unwrap_or_default(),
            c["dcol_over_sum"],
            if c["met"] == true { "met" } else { "NOT met" }
        );
        if c["mtu"].is_object() {
            println!(
                "         MTU: TCP through the tunnels {}",
                c["mtu"]["tcp_vpn_median_mbps"]
            );
        }
    }
}
