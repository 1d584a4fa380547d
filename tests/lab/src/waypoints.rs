//! `dcol-lab waypoints`: the detour strategy among many waypoints (issue 6,
//! part 2), in its own topology:
//!
//! ```text
//!                  +-- x1 -- w1 "good"  -- y1 (10 Mbit/s) --+
//!                  +-- x2 -- w2 "slow"  -- y2 (2 Mbit/s)  --+
//!  client -- rc ---+-- x3 -- w3 "lossy" -- y3 (10, 3% loss)-+--- rs -- server
//!                  +-- x4 -- w4 "far"   -- y4 (10, +100 ms each way, TUN relay)
//!                  +-- x5 -- w5 "dead"  -- y5 (10; no daemon) -+
//!                  +------------ direct (10 Mbit/s) -----------+
//! ```
//!
//! Every path has a base delay of 15 ms one way (30 ms RTT, as the paper's
//! three 5 ms links): rc and rs each hold what they forward 7.5 ms (TUN
//! relays, `dcol-lab relay`); "far" adds 100 ms each way.
//!
//! Every waypoint runs the DCol waypoint (except "dead") and NATs detours out
//! of its `y` link, so the server sees each path's bytes from a distinct
//! source address (nftables counters in the server's namespace). The client
//! runs the DCol client with `max_detours 2` (the stock server's limit).
//!
//! (a) Baselines: each waypoint alone (the client configured with that one
//! peer), one upload each; then all five as peers over N consecutive uploads
//! with a fresh scoreboard: per connection, throughput and the share of
//! bytes per path; the bytes-weighted share of the good path and throughput
//! / best single detour, on the first connection and from the 5th on
//! (issue 6 target: ≥ 90 %).
//! (b) The busiest detour turns bad mid-transfer (10 % loss switched on at
//! t = 5 s of a 12 s upload): time until the client marks it backup and until the
//! server stops receiving on it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dcol_tests::dcol::{main_section, Collective, Daemon, Member, Scratch};
use dcol_tests::lab::{IPERF_PORT, SIGNAL_PORT};
use dcol_tests::{iperf3_background, iperf3_client, iperf3_server, JoinCounter, Netns};
use lexopt::prelude::ValueExt;
use serde_json::{json, Value};

use crate::plot::{self, Series};

/// The candidate waypoints: name, y-link rate (Mbit/s), loss (per mille),
/// added one-way delay (ms), daemon running.
const WAYPOINTS: [(&str, u32, u32, u64, bool); 5] = [
    ("good", 10, 0, 0, true),
    ("slow", 2, 0, 0, true),
    ("lossy", 10, 30, 0, true),
    ("far", 10, 0, 100, true),
    ("dead", 10, 0, 0, false),
];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 3, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);

/// Options of `dcol-lab waypoints`.
struct Args {
    quick: bool,
    out: PathBuf,
}

fn parse(args: &mut lexopt::Parser) -> Result<Args, lexopt::Error> {
    let mut a = Args {
        quick: false,
        out: PathBuf::from("target/lab-waypoints"),
    };
    while let Some(arg) = args.next()? {
        match arg {
            lexopt::Arg::Long("quick") => a.quick = true,
            lexopt::Arg::Long("out") => a.out = args.value()?.string()?.into(),
            other => return Err(other.unexpected()),
        }
    }
    Ok(a)
}

/// The waypoint's signaling address (its x side) and its NAT source (y side).
fn wp_addrs(i: usize) -> (Ipv4Addr, Ipv4Addr) {
    let n = 10 + i as u8;
    (Ipv4Addr::new(10, n, 1, 2), Ipv4Addr::new(10, n, 2, 1))
}

/// The namespaces and the processes in them.
struct Net {
    c: Netns,
    rc: Netns,
    rs: Netns,
    s: Netns,
    w: Vec<Netns>,
}

pub(crate) fn veth(
    a: &Netns,
    ia: &str,
    aa: &str,
    b: &Netns,
    ib: &str,
    ab: &str,
    mbit: Option<u32>,
) {
    dcol_tests::veth(a, ia, aa, b, ib, ab);
    for (ns, i) in [(a, ia), (b, ib)] {
        ns.exec(&["ethtool", "-K", i, "tso", "off", "gso", "off", "gro", "off"]);
        if let Some(r) = mbit {
            ns.exec(&[
                "tc",
                "qdisc",
                "replace",
                "dev",
                i,
                "root",
                "tbf",
                "rate",
                &format!("{r}mbit"),
                "burst",
                "15000",
                "latency",
                "50ms",
            ]);
        }
    }
}

/// The direct path of the multi-path labs: client (10.1.0.2) – rc – 10
/// Mbit/s – rs – server (10.3.0.2), forwarding in the routers, routes.
pub(crate) fn direct_path(c: &Netns, rc: &Netns, rs: &Netns, s: &Netns) {
    veth(c, "ca", "10.1.0.2/24", rc, "cb", "10.1.0.1/24", None);
    veth(rc, "da", "10.2.0.1/24", rs, "db", "10.2.0.2/24", Some(10));
    veth(rs, "sa", "10.3.0.1/24", s, "sb", "10.3.0.2/24", None);
    for r in [rc, rs] {
        r.sysctl("net.ipv4.ip_forward", "1");
    }
    c.exec(&["ip", "route", "add", "default", "via", "10.1.0.1"]);
    s.exec(&["ip", "route", "add", "default", "via", "10.3.0.1"]);
    rc.exec(&["ip", "route", "add", "10.3.0.0/24", "via", "10.2.0.2"]);
    rs.exec(&["ip", "route", "add", "10.1.0.0/24", "via", "10.2.0.1"]);
}

pub(crate) fn nft_loss(ns: &Netns, table: &str, oif: &str, per_mille: u32) {
    ns.exec(&["nft", "add", "table", "inet", table]);
    ns.exec(&[
        "nft",
        &format!(
            "add chain inet {table} c {{ type filter hook forward priority 0; policy accept; }}"
        ),
    ]);
    ns.exec(&[
        "nft",
        &format!(
            "add rule inet {table} c oifname \"{oif}\" numgen random mod 1000 < {per_mille} drop"
        ),
    ]);
}

impl Net {
    fn build() -> Net {
        let n = Net {
            c: Netns::new("wc"),
            rc: Netns::new("wrc"),
            rs: Netns::new("wrs"),
            s: Netns::new("ws"),
            w: (1..=5).map(|i| Netns::new(&format!("w{i}"))).collect(),
        };
        direct_path(&n.c, &n.rc, &n.rs, &n.s);
        for (i, (_, rate, loss, delay_ms, _)) in WAYPOINTS.iter().enumerate() {
            let k = 10 + i as u8;
            let w = &n.w[i];
            let (x, y) = (format!("x{}", i + 1), format!("y{}", i + 1));
            veth(
                &n.rc,
                &format!("{x}r"),
                &format!("10.{k}.1.1/24"),
                w,
                &x,
                &format!("10.{k}.1.2/24"),
                None,
            );
            veth(
                w,
                &y,
                &format!("10.{k}.2.1/24"),
                &n.rs,
                &format!("{y}r"),
                &format!("10.{k}.2.2/24"),
                Some(*rate),
            );
            w.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.{k}.1.1"),
            ]);
            w.exec(&[
                "ip",
                "route",
                "add",
                "10.3.0.0/24",
                "via",
                &format!("10.{k}.2.2"),
            ]);
            w.sysctl("net.ipv4.ip_forward", "1");
            if *loss > 0 {
                nft_loss(w, "swloss", &y, *loss);
            }
            if *delay_ms > 0 {
                // In rs, not in the waypoint: the waypoint masquerades by
                // output device, and the relay's device has no address.
                start_relay(
                    &n.rs,
                    &format!("{y}r"),
                    &format!("10.{k}.2.0/24"),
                    Duration::from_millis(*delay_ms),
                );
            }
        }
        let xs = (1..=5).map(|i| format!("x{i}r"));
        let ys = (1..=5).map(|i| format!("y{i}r"));
        let rc_ifaces: Vec<String> = ["cb", "da"]
            .map(String::from)
            .into_iter()
            .chain(xs)
            .collect();
        let rs_ifaces: Vec<String> = ["db", "sa"]
            .map(String::from)
            .into_iter()
            .chain(ys)
            .collect();
        start_base_relay(&n.rc, &rc_ifaces);
        start_base_relay(&n.rs, &rs_ifaces);
        n
    }
}

/// One way, each of rc and rs holds every packet it forwards this long:
/// every path (direct or through a waypoint) crosses both, so each has
/// 15 ms one way (30 ms RTT), like the paper's three 5 ms links.
const ROUTER_DELAY: Duration = Duration::from_micros(7500);

/// The lab's TUN delay relay in router `w` (rs) for the "far" waypoint:
/// everything arriving on link `iif`, and everything from the server's link
/// (`sa`) to `to`, goes through device `swd0` (policy routing), delayed
/// `delay` (in place of the base relay's [`ROUTER_DELAY`]).
fn start_relay(w: &Netns, iif: &str, to: &str, delay: Duration) {
    w.exec(&[
        "ip", "rule", "add", "pref", "100", "iif", iif, "lookup", "100",
    ]);
    w.exec(&[
        "ip", "rule", "add", "pref", "101", "iif", "sa", "to", to, "lookup", "100",
    ]);
    relay_dev(w, "swd0", "100", delay + ROUTER_DELAY);
}

/// The base delay relay in router `w`: everything arriving on `ifaces` goes
/// through device `swb0`, delayed [`ROUTER_DELAY`].
pub(crate) fn start_base_relay(w: &Netns, ifaces: &[String]) {
    for i in ifaces {
        w.exec(&[
            "ip", "rule", "add", "pref", "110", "iif", i, "lookup", "101",
        ]);
    }
    relay_dev(w, "swb0", "101", ROUTER_DELAY);
}

/// Starts `dcol-lab relay` on TUN `dev` in `w` and routes table `table` into it.
fn relay_dev(w: &Netns, dev: &str, table: &str, delay: Duration) {
    for k in ["all", "default"] {
        w.sysctl(&format!("net.ipv4.conf.{k}.rp_filter"), "0");
    }
    let exe = std::env::current_exe().expect("own path");
    let exe = exe.to_string_lossy().into_owned();
    w.spawn(&[
        &exe,
        "relay",
        "--dev",
        dev,
        "--delay-us",
        &delay.as_micros().to_string(),
    ]);
    let t0 = Instant::now();
    while !w.output(&["ip", "link", "show", dev]).status.success() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "relay device {dev} did not appear"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    w.sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), "0");
    w.sysctl(&format!("net.ipv4.conf.{dev}.forwarding"), "1");
    w.exec(&["ip", "link", "set", dev, "up", "txqueuelen", "10000"]);
    w.exec(&[
        "ip", "route", "replace", "default", "dev", dev, "table", table,
    ]);
}

/// The client's average ping RTT to the server over the direct path, ms.
fn base_rtt(net: &Net) -> Option<f64> {
    let out = net.c.output(&[
        "ping", "-n", "-q", "-c", "20", "-i", "0.05", "-W", "2", "10.3.0.2",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    // "rtt min/avg/max/mdev = 30.1/30.2/30.3/0.04 ms"
    let line = text.lines().find(|l| l.contains("min/avg/max"))?;
    line.split('=')
        .nth(1)?
        .trim()
        .split('/')
        .nth(1)?
        .parse()
        .ok()
}

/// The collective: client 'bob', one member per waypoint.
struct Coop {
    scratch: Scratch,
    coll: Collective,
    bob: Member,
    wps: Vec<Member>,
}

fn client_uci(coop: &Coop, state: &Path, peers: &[usize]) -> String {
    let sock = coop.scratch.path().join("cl.sock");
    let mut s = main_section(&coop.bob, &coop.coll, &sock, state);
    s.push_str("config client 'client'\n\toption enabled '1'\n\toption max_detours '2'\n\toption renew_interval_s '1'\n\toption liveness_misses '3'\n\n");
    for &i in peers {
        let (sig, _) = wp_addrs(i);
        s.push_str(&format!(
            "config peer\n\toption name '{}'\n\toption address '{sig}:{SIGNAL_PORT}'\n\toption tunnel 'nat'\n\n",
            WAYPOINTS[i].0
        ));
    }
    s
}

fn start_client(net: &Net, coop: &Coop, state: &str, peers: &[usize]) -> Daemon {
    let state = coop.scratch.path().join(state);
    let uci = client_uci(coop, &state, peers);
    Daemon::start(
        net.c.name(),
        coop.scratch.path(),
        "cl",
        &uci,
        &coop.scratch.path().join("cl.sock"),
    )
}

/// Bytes the server received per source: client (direct) then each waypoint.
fn counts(counter: &JoinCounter) -> Vec<u64> {
    std::iter::once(counter.bytes_from(IpAddr::V4(CLIENT)))
        .chain((0..5).map(|i| counter.bytes_from(IpAddr::V4(wp_addrs(i).1))))
        .collect()
}

/// One upload of `secs`: (Mbit/s after second 1, bytes per source).
fn upload(net: &Net, counter: &JoinCounter, secs: u32) -> (f64, Vec<u64>) {
    let before = counts(counter);
    let r = iperf3_client(&net.c, IpAddr::V4(SERVER), IPERF_PORT, secs, true, false);
    let after = counts(counter);
    // iperf3 refuses a new test while the server still tears down the last.
    std::thread::sleep(Duration::from_millis(500));
    let d = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    match r {
        Ok(r) => (r.mbps_after_first_second(), d),
        Err(e) => {
            eprintln!("  upload failed: {e}");
            (0.0, d)
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn main(args: &mut lexopt::Parser) -> ExitCode {
    let a = match crate::begin::begin("waypoints", parse(args), |a| &a.out) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let started = Instant::now();
    let (secs, conns) = if a.quick { (4, 12) } else { (10, 20) };
    let net = Net::build();
    let rtt = base_rtt(&net);
    eprintln!(
        "base RTT client -> server {:.3} ms (configured 30: relays in rc and rs, 7.5 ms each way each)",
        rtt.unwrap_or(f64::NAN)
    );
    let scratch = Scratch::new("lab");
    let coll = Collective::new(scratch.path(), "coop");
    let bob = coll.admit("bob", "client", 30);
    let wps: Vec<Member> = WAYPOINTS
        .iter()
        .map(|w| coll.admit(w.0, "client,waypoint", 30))
        .collect();
    let coop = Coop {
        scratch,
        coll,
        bob,
        wps,
    };
    let mut wdaemons = Vec::new();
    for (i, w) in WAYPOINTS.iter().enumerate() {
        if !w.4 {
            continue;
        }
        let sock = coop.scratch.path().join(format!("w{i}.sock"));
        let state = coop.scratch.path().join(format!("w{i}-state"));
        let uci = format!(
            "{}config waypoint 'waypoint'\n\toption enabled '1'\n\tlist listen '0.0.0.0:{SIGNAL_PORT}'\n\toption nat_ports '40000-40099'\n\toption lease_s '60'\n\tlist allow_destination '10.0.0.0/8'\n",
            main_section(&coop.wps[i], &coop.coll, &sock, &state)
        );
        wdaemons.push(Daemon::start(
            net.w[i].name(),
            coop.scratch.path(),
            &format!("w{i}"),
            &uci,
            &sock,
        ));
    }
    let _srv = iperf3_server(&net.s, IPERF_PORT, true);
    let sources: Vec<IpAddr> = std::iter::once(IpAddr::V4(CLIENT))
        .chain((0..5).map(|i| IpAddr::V4(wp_addrs(i).1)))
        .collect();
    let counter = JoinCounter::install(&net.s, IPERF_PORT, &sources);
    std::thread::sleep(Duration::from_millis(300));

    // (a) Baselines: direct alone (MPTCP, no DCol), then each waypoint alone.
    eprintln!(
        "dcol-lab waypoints: {secs} s uploads; output in {}",
        a.out.display()
    );
    let (direct, _) = upload(&net, &counter, secs);
    eprintln!("direct path alone (1-subflow MPTCP): {direct:.2} Mbit/s");
    let mut single = Vec::new();
    for (i, w) in WAYPOINTS.iter().enumerate() {
        let mut d = start_client(&net, &coop, &format!("single{i}"), &[i]);
        std::thread::sleep(Duration::from_millis(300));
        let (mbps, by) = upload(&net, &counter, secs);
        d.terminate();
        eprintln!(
            "direct + {} alone: {mbps:.2} Mbit/s (via it: {} bytes)",
            w.0,
            by[i + 1]
        );
        single.push(mbps);
    }
    let best_single = single.iter().copied().fold(0.0, f64::max);

    // All five as candidates, a fresh scoreboard, consecutive connections.
    let cl = start_client(&net, &coop, "multi", &[0, 1, 2, 3, 4]);
    std::thread::sleep(Duration::from_millis(300));
    let mut rows = Vec::new();
    for k in 1..=conns {
        let (mbps, by) = upload(&net, &counter, secs);
        let total: u64 = by.iter().sum();
        let share = |j: usize| by[j] as f64 / total.max(1) as f64;
        eprintln!(
            "connection {k:2}: {mbps:5.2} Mbit/s ({:3.0}% of best single); shares direct {:.2} good {:.2} slow {:.2} lossy {:.2} far {:.2} dead {:.2}",
            100.0 * mbps / best_single.max(1e-9),
            share(0), share(1), share(2), share(3), share(4), share(5)
        );
        rows.push((k, mbps, by));
    }
    let status = cl.try_status().unwrap_or(Value::Null);

    // (b) The busiest detour turns bad at t = 5 s of a 12 s upload.
    let h = iperf3_background(&net.c, IpAddr::V4(SERVER), IPERF_PORT, 12);
    let t0 = Instant::now();
    // (t, bytes from each waypoint)
    let mut all: Vec<(f64, Vec<u64>)> = Vec::new();
    let mut loss_on = None;
    let mut victim = 0usize;
    let mut backup_at = None;
    while !h.is_finished() {
        let t = t0.elapsed().as_secs_f64();
        all.push((t, counts(&counter)[1..].to_vec()));
        if loss_on.is_none() && t >= 5.0 {
            let then = all.iter().find(|(x, _)| *x >= t - 2.0).map(|s| s.1.clone());
            let now = all.last().map(|s| s.1.clone()).unwrap_or_default();
            if let Some(then) = then {
                victim = (0..5)
                    .max_by_key(|&i| now[i].saturating_sub(then[i]))
                    .unwrap_or(0);
            }
            nft_loss(&net.w[victim], "swturn", &format!("y{}", victim + 1), 100);
            loss_on = Some(t0.elapsed().as_secs_f64());
            eprintln!("(b) 10% loss on {}'s path at {t:.1} s", WAYPOINTS[victim].0);
        }
        if loss_on.is_some() && backup_at.is_none() {
            let s = cl.try_status().unwrap_or(Value::Null);
            let demoted = s["client"]["connections"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["subflows"].as_array().into_iter().flatten())
                .any(|f| {
                    f["waypoint"] == WAYPOINTS[victim].0
                        && (f["role"] == "backup" || f["state"] == "failed")
                        && f["bytes"].as_u64().unwrap_or(0) > 100_000
                });
            if demoted {
                backup_at = Some(t0.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let samples: Vec<(f64, u64)> = all.iter().map(|(t, v)| (*t, v[victim])).collect();
    let _ = h.join();
    let loss_on = loss_on.unwrap_or(5.0);
    // Rate via the good path before the loss, and when it fell under 10 % of
    // it for good (500 ms windows).
    let rate = |a: f64, b: f64| -> f64 {
        let at = |t: f64| {
            samples
                .iter()
                .rev()
                .find(|(x, _)| *x <= t)
                .map_or(0, |s| s.1)
        };
        (at(b) - at(a)) as f64 / (b - a)
    };
    let pre = rate(loss_on - 2.0, loss_on);
    let mut quiet_at = None;
    let mut t = loss_on;
    while t + 0.5 <= samples.last().map_or(0.0, |s| s.0) {
        let mut quiet = true;
        let mut u = t;
        while u + 0.5 <= samples.last().map_or(0.0, |s| s.0) {
            if rate(u, u + 0.5) > 0.1 * pre {
                quiet = false;
                break;
            }
            u += 0.5;
        }
        if quiet {
            quiet_at = Some(t);
            break;
        }
        t += 0.1;
    }
    eprintln!(
        "(b) loss on {}'s path at {loss_on:.1} s; client marked it backup after {}; server quiet on it after {} (it carried {:.2} Mbit/s before)",
        WAYPOINTS[victim].0,
        backup_at.map_or("never".into(), |b| format!("{:.1} s", b - loss_on)),
        quiet_at.map_or("never".into(), |q| format!("{:.1} s", q - loss_on)),
        pre * 8.0 / 1e6
    );

    // Summaries.
    let weighted = |from: usize| -> (f64, f64) {
        let sel: Vec<&(usize, f64, Vec<u64>)> = rows.iter().filter(|r| r.0 >= from).collect();
        let good: u64 = sel.iter().map(|r| r.2[1]).sum();
        let detour: u64 = sel.iter().map(|r| r.2[1..].iter().sum::<u64>()).sum();
        let all: u64 = sel.iter().map(|r| r.2.iter().sum::<u64>()).sum();
        (
            good as f64 / all.max(1) as f64,
            good as f64 / detour.max(1) as f64,
        )
    };
    let (first_good, first_good_detour) = {
        let r = &rows[0];
        let all: u64 = r.2.iter().sum();
        let det: u64 = r.2[1..].iter().sum();
        (
            r.2[1] as f64 / all.max(1) as f64,
            r.2[1] as f64 / det.max(1) as f64,
        )
    };
    let (late_good, late_good_detour) = weighted(5);
    let late: Vec<f64> = rows.iter().filter(|r| r.0 >= 5).map(|r| r.1).collect();
    let late_sorted = {
        let mut v = late.clone();
        v.sort_by(f64::total_cmp);
        v
    };
    let late_median = plot::median(&late_sorted).unwrap_or(0.0);
    let late_min = late_sorted.first().copied().unwrap_or(0.0);
    let ratio_first = rows[0].1 / best_single.max(1e-9);
    let ratio_late = late_median / best_single.max(1e-9);
    let results = json!({
        "what": "dcol-lab waypoints: 5 candidate waypoints (good, slow 2 Mbit/s, 3% lossy, +100 ms, dead), max_detours 2",
        "upload_s": secs,
        "base_rtt_ms": rtt,
        "direct_alone_mbps": round2(direct),
        "single_detour_mbps": WAYPOINTS.iter().zip(&single).map(|(w, m)| (w.0.to_owned(), json!(round2(*m)))).collect::<serde_json::Map<_, _>>(),
        "best_single_mbps": round2(best_single),
        "connections": rows.iter().map(|(k, m, by)| json!({
            "n": k, "mbps": round2(*m), "ratio_vs_best_single": round2(m / best_single.max(1e-9)),
            "bytes": { "direct": by[0], "good": by[1], "slow": by[2], "lossy": by[3], "far": by[4], "dead": by[5] },
        })).collect::<Vec<_>>(),
        "first_connection": { "ratio_vs_best_single": round2(ratio_first),
            "good_share_of_all_bytes": round2(first_good), "good_share_of_detour_bytes": round2(first_good_detour) },
        "from_5th_connection": { "median_mbps": round2(late_median), "min_mbps": round2(late_min),
            "median_ratio_vs_best_single": round2(ratio_late), "min_ratio_vs_best_single": round2(late_min / best_single.max(1e-9)),
            "good_share_of_all_bytes": round2(late_good), "good_share_of_detour_bytes": round2(late_good_detour),
            "target_ratio": 0.9, "target_met_median": ratio_late >= 0.9 },
        "turns_bad": { "loss_per_mille": 100, "waypoint": WAYPOINTS[victim].0, "loss_on_s": round2(loss_on),
            "client_backup_after_s": backup_at.map(|b| round2(b - loss_on)),
            "server_quiet_after_s": quiet_at.map(|q| round2(q - loss_on)),
            "good_path_mbps_before": round2(pre * 8.0 / 1e6) },
        "client_scores": status["client"]["scores"].clone(),
        "client_peers": status["client"]["peers"].clone(),
        "wall_s": round2(started.elapsed().as_secs_f64()),
    });
    let _ = std::fs::write(
        a.out.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap_or_default(),
    );
    let mut series: Vec<Series> = WAYPOINTS
        .iter()
        .zip(&single)
        .map(|(w, m)| Series {
            label: format!("{} alone", w.0),
            values: vec![*m],
            reference: None,
        })
        .collect();
    series.push(Series {
        label: "all, conn 1-4".into(),
        values: rows.iter().filter(|r| r.0 < 5).map(|r| r.1).collect(),
        reference: None,
    });
    series.push(Series {
        label: "all, conn 5+".into(),
        values: late,
        reference: Some(0.9 * best_single),
    });
    let svg = plot::box_plot_svg(
        "DCol: 5 candidate waypoints",
        "throughput per upload, Mbit/s; marker on 'conn 5+': 90% of the best single detour",
        &series,
    );
    let _ = std::fs::write(a.out.join("waypoints.svg"), svg);
    println!(
        "best single detour {best_single:.2} Mbit/s; first connection {:.0}%, from the 5th: median {:.0}% (min {:.0}%) — target 90%; good path share of detour bytes {:.0}% -> {:.0}%; turned-bad path: backup after {}, quiet after {}\nResults: {}",
        100.0 * ratio_first,
        100.0 * ratio_late,
        100.0 * late_min / best_single.max(1e-9),
        100.0 * first_good_detour,
        100.0 * late_good_detour,
        backup_at.map_or("never".into(), |b| format!("{:.1} s", b - loss_on)),
        quiet_at.map_or("never".into(), |q| format!("{:.1} s", q - loss_on)),
        a.out.join("results.json").display()
    );
    drop(cl);
    drop(wdaemons);
    ExitCode::SUCCESS
}
