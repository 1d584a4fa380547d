//! `dcol-lab lan-load`: the LAN proxy under load (issue 18).
//!
//! ```text
//!  client ──1── rc (dcol: LAN proxy + client) ──2── rs ──3── server (MPTCP :6001, TCP :6002)
//!  (1,000 conns)  │                                  │
//!                 4 ──────────── rw ──────────────── 5
//!                                │6
//!                             waypoint (dcol)
//! ```
//! The paper's topology (`dcol_tests::Topology`) with faster links (core
//! 50 Mbit/s, access 100) and no delay relays. The router's links are
//! shaped at their far ends (`Topology::shape_beyond`): the proxy's upstream
//! sockets are local senders, and on this kernel a local sender whose own
//! tbf drops at enqueue can be aborted (results
//! `local-qdisc-aborts-2026-12-06`). Unmodified programs: the
//! client host speaks plain TCP; the router's proxy makes it MPTCP, and
//! connections to the MPTCP server get a NAT detour through the waypoint.
//!
//! Each figure is measured twice in the same run, first routed (dcol not
//! running: the router only forwards) and then through the proxy, and given
//! as a ratio:
//! 1. the load: 1,000 connections opened over 5 s and held `--secs` (60; 15
//!    with `--quick`): 100 to the MPTCP server (50 bulk uploads, 50 echo), 900 to the
//!    TCP server (100 bulk, 800 echo: 32 bytes every 2-5 s). Counted: lost
//!    connections (error, reset or EOF before the end), stalled ones (an
//!    echo later than 10 s, or a bulk upload whose server saw no byte for
//!    10 s), echo round trips, machine CPU; through the proxy also the
//!    daemon's RSS (peak), CPU and its loop turns (`dcol status --json`
//!    `loop`, read before and after);
//! 2. detour setup (connection ESTABLISHED to the detour subflow
//!    established, from the daemon's log) of probe connections to the MPTCP
//!    server: one at a time with nothing else running, and spread over the
//!    load's steady state;
//! 3. short connections (connect, 16 bytes echoed, closed) to the TCP
//!    server, `--short` of them (10,000; 2,000 quick) with 64 at a time: the
//!    rate, their duration and failures. They start once the load's uploads
//!    have drained (nothing more reaches the servers for a second): before,
//!    they only timed the bottleneck's queue.
//!
//! `--upnp` leaves the waypoint's UPnP on (its default on routers): grants
//! then use only its first 32 ports; connections of the router to one server
//! share a tunnel, so they all get their detour.
//!
//! Output: `DIR/results.json`, `DIR/lan-load.svg`, a summary on stdout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use dcol_tests::dcol::{dcol_bin, Daemon};
use dcol_tests::lab::Lab;
use dcol_tests::{LinkProfile, Node};
use lexopt::prelude::ValueExt;
use serde_json::{json, Value};

use crate::loadgen::{self, quantile, ConnSpec, Kind, Servers, MPTCP_PORT, TCP_PORT};
use crate::procstat::{self, Sampler};

/// Options of `dcol-lab lan-load`.
#[derive(Debug, Clone)]
struct Args {
    quick: bool,
    out: PathBuf,
    conns: usize,
    mptcp: usize,
    secs: u64,
    short: usize,
    window: usize,
    probes: usize,
    upnp: bool,
}

fn parse(args: &mut lexopt::Parser) -> Result<Args, lexopt::Error> {
    let mut a = Args {
        quick: false,
        out: PathBuf::from("target/lab-lan-load"),
        conns: 1000,
        mptcp: 100,
        secs: 60,
        short: 10_000,
        window: 64,
        probes: 20,
        upnp: false,
    };
    let (mut secs, mut short) = (None, None);
    while let Some(arg) = args.next()? {
        match arg {
            lexopt::Arg::Long("quick") => a.quick = true,
            lexopt::Arg::Long("out") => a.out = args.value()?.string()?.into(),
            lexopt::Arg::Long("conns") => a.conns = args.value()?.parse()?,
            lexopt::Arg::Long("mptcp") => a.mptcp = args.value()?.parse()?,
            lexopt::Arg::Long("secs") => secs = Some(args.value()?.parse()?),
            lexopt::Arg::Long("short") => short = Some(args.value()?.parse()?),
            lexopt::Arg::Long("window") => a.window = args.value()?.parse()?,
            lexopt::Arg::Long("upnp") => a.upnp = true,
            other => return Err(other.unexpected()),
        }
    }
    if a.mptcp > a.conns || a.conns == 0 || a.window == 0 {
        return Err("need 0 < --mptcp <= --conns and --window > 0".into());
    }
    a.secs = secs.unwrap_or(if a.quick { 15 } else { 60 });
    a.short = short.unwrap_or(if a.quick { 2000 } else { 10_000 });
    if a.quick {
        a.probes = 8;
    }
    Ok(a)
}

/// `dcol-lab lan-load [--quick] [--out DIR] [--conns N] [--mptcp N] [--secs S] [--short N] [--window N]`.
pub fn main(args: &mut lexopt::Parser) -> ExitCode {
    let a = match crate::begin::begin("lan-load", parse(args), |a| &a.out) {
        Ok(a) => a,
        Err(code) => return code,
    };
    procstat::raise_nofile();
    let started = Instant::now();
    let doc = run(&a);
    let path = a.out.join("results.json");
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("cannot write {}: {e}", path.display());
    }
    let svg = crate::loadplot::lan_svg(&doc);
    let _ = std::fs::write(a.out.join("lan-load.svg"), svg);
    print_summary(&doc);
    println!(
        "\nTotal {:.0} s. Results: {}",
        started.elapsed().as_secs_f64(),
        path.display()
    );
    ExitCode::SUCCESS
}

/// The connections of the load: the MPTCP server's first, half of them
/// bulk; of the TCP server's, one in nine bulk.
fn conn_specs(a: &Args, server: Ipv4Addr) -> Vec<ConnSpec> {
    let tcp = a.conns - a.mptcp;
    (0..a.conns)
        .map(|id| {
            let (port, bulk) = if id < a.mptcp {
                (MPTCP_PORT, id < a.mptcp / 2)
            } else {
                (TCP_PORT, (id - a.mptcp) < tcp / 9)
            };
            ConnSpec {
                id,
                to: SocketAddr::new(IpAddr::V4(server), port),
                kind: if bulk { Kind::Bulk } else { Kind::Echo },
            }
        })
        .collect()
}

fn run(a: &Args) -> Value {
    let mut lab = Lab::new(LinkProfile {
        core_mbit: 50,
        access_mbit: 100,
    });
    // The router's proxy is a local sender: its bottleneck must lie beyond
    // its WAN ports, as a modem's would (see `Topology::shape_beyond`).
    lab.topo.shape_beyond(Node::Rc);
    for n in [Node::Client, Node::Rc] {
        lab.topo
            .ns(n)
            .sysctl("net.ipv4.ip_local_port_range", "1024 65000");
    }
    let server = lab.topo.addr4(Node::Server);
    let servers = Servers::start(lab.topo.ns(Node::Server), a.conns + a.probes + 16);
    // UPnP off unless `--upnp`: with it (the default on routers), grants
    // use only the first 32 ports, one gateway mapping each (there is no
    // gateway here; the cap holds all the same).
    lab.start_waypoint_with(&format!(
        "\toption nat_ports '40000-44999'\n\toption max_tunnels_per_member '5000'\n\toption lease_s '60'\n\toption upnp '{}'\n",
        u8::from(a.upnp)
    ));
    eprintln!("== routed (dcol not running on the router) ==");
    let routed = load_phase(a, &lab, &servers, None);
    let routed_short = short_phase(a, &lab, &servers, server);
    eprintln!("== through the LAN proxy ==");
    let daemon = start_proxy(&mut lab);
    warm_up(&lab, server);
    let idle_setup = crate::loadprobe::idle_setups(&lab, &daemon, server, a.probes);
    let proxied = load_phase(a, &lab, &servers, Some(&daemon));
    let wp_status = lab.wp().try_status();
    eprintln!(
        "  waypoint: granted {}, refused {}; connections with an established detour at the end: {}",
        wp_status
            .as_ref()
            .map_or(Value::Null, |s| s["waypoint"]["granted"].clone()),
        wp_status
            .as_ref()
            .map_or(Value::Null, |s| s["waypoint"]["refused"].clone()),
        proxied["detoured_at_end"]
    );
    let proxied_short = short_phase(a, &lab, &servers, server);
    let end_status = daemon.try_status();
    json!({
        "command": "lan-load",
        "quick": a.quick,
        "links_mbit": {"core": 50, "access": 100},
        "router_links_shaped": "at the far ends' ingress (ifb)",
        "conns": a.conns, "mptcp_conns": a.mptcp, "hold_s": a.secs, "waypoint_upnp": a.upnp,
        "short_conns": a.short, "short_window": a.window,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).ok(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "routed": {"load": routed, "short": routed_short},
        "proxied": {"load": proxied, "short": proxied_short, "detour_setup_idle_ms": idle_setup,
                    "lan_proxy": end_status.as_ref().map(|s| s["client"]["lan_proxy"].clone())},
        "ratios": ratios(&routed, &proxied, &routed_short, &proxied_short),
        "waypoint_after_load": wp_status.as_ref().map(|s| json!({
            "granted": s["waypoint"]["granted"], "refused": s["waypoint"]["refused"],
        })),
    })
}

/// The router's client daemon with the LAN proxy and one NAT peer, under
/// procd's open-file limit.
fn start_proxy(lab: &mut Lab) -> Daemon {
    let rc = lab.topo.ns(Node::Rc);
    rc.exec(&["ip", "-4", "route", "replace", "default", "via", "10.0.2.2"]);
    let extra = "\toption lan_proxy '1'\n\tlist lan_interface 'l1a'\n\tlist proxy_allow_destination '10.0.0.0/8'\n\toption detour_policy 'all'\n\toption max_conns_per_host '4000'\n\toption renew_interval_s '5'\n";
    let cfg = lab
        .client_config_tunnels(extra, &["nat"])
        .replace("option log_level 'debug'", "option log_level 'info'");
    Daemon::start_with_nofile(
        &lab.ns(Node::Rc),
        lab.scratch.path(),
        "cl",
        &cfg,
        &lab.sock("cl"),
        Some(16384),
    )
}

/// The proxy follows the router's forwarding verdicts (the first connection
/// to a destination port goes direct) and learns that the TCP server does
/// not speak MPTCP (the first proxied connection falls back): two
/// connections to each port first.
fn warm_up(lab: &Lab, server: Ipv4Addr) {
    for port in [MPTCP_PORT, TCP_PORT, MPTCP_PORT, TCP_PORT] {
        let to = SocketAddr::new(IpAddr::V4(server), port);
        let r = loadgen::run_short(lab.topo.ns(Node::Client), to, 1, 1);
        if r.done != 1 {
            eprintln!("warm-up connection to port {port} failed: {:?}", r.errors);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
}

/// One load run: opens the connections over 5 s, holds them, samples the
/// machine (and the daemon) every second, probes detour setup meanwhile.
fn load_phase(a: &Args, lab: &Lab, servers: &Servers, daemon: Option<&Daemon>) -> Value {
    let ramp = Duration::from_secs(5);
    let server = lab.topo.addr4(Node::Server);
    let specs = conn_specs(a, server);
    let bulk: Vec<usize> = specs
        .iter()
        .filter(|c| c.kind == Kind::Bulk)
        .map(|c| c.id)
        .collect();
    let rx0: Vec<u64> = (0..a.conns).map(|i| servers.received(i)).collect();
    let end = Instant::now() + ramp + Duration::from_secs(a.secs);
    let steady = Instant::now() + ramp + Duration::from_secs(1);
    let loop0 = daemon
        .and_then(|d| status_at(&d.socket))
        .map(|s| s.0["loop"].clone());
    let log0 = daemon.map(|d| d.log_text().len()).unwrap_or(0);
    let handle = loadgen::run_load(lab.topo.ns(Node::Client), specs, ramp, end);
    let mut sampler = Sampler::new(daemon.and_then(Daemon::pid));
    let probes =
        daemon.map(|d| crate::loadprobe::probes_under_load(lab, d, server, a.probes, steady, end));
    let gaps = sampler.watch(servers, &bulk, steady, end - Duration::from_millis(1500));
    // Read while the connections are still open: the status of 1,000
    // connections, and how long `dcol status --json` took for it.
    let at_end = daemon.and_then(|d| status_at(&d.socket));
    let report = handle.join().expect("load thread");
    let loop1 = at_end.as_ref().map(|s| s.0["loop"].clone());
    let status_ms = at_end.as_ref().map(|s| round3(s.1.as_secs_f64() * 1e3));
    let status_conns = at_end
        .as_ref()
        .and_then(|s| s.0["client"]["connections"].as_array().map(Vec::len));
    // Connections with an established detour subflow, near the load's end.
    let detoured = at_end.as_ref().and_then(|s| {
        s.0["client"]["connections"].as_array().map(|cs| {
            cs.iter()
                .filter(|c| {
                    c["subflows"].as_array().is_some_and(|fs| {
                        fs.iter()
                            .any(|f| f["path"] == "detour" && f["state"] == "established")
                    })
                })
                .count()
        })
    });
    let under_load_setups = probes.map(|p| p.join().unwrap_or_default());
    let log_setups = daemon
        .map(|d| crate::loadprobe::setups_in_log(&d.log_text()[log0..]))
        .unwrap_or_default();
    let bytes: u64 = bulk
        .iter()
        .map(|&i| servers.received(i).saturating_sub(rx0[i]))
        .sum();
    let stalled_bulk = gaps.iter().filter(|g| **g >= loadgen::STALL).count();
    // Bulk ids below `a.mptcp` upload to the MPTCP server (see `conn_specs`).
    let stalled_mptcp = bulk
        .iter()
        .zip(&gaps)
        .filter(|(&i, g)| i < a.mptcp && **g >= loadgen::STALL)
        .count();
    let max_gap = gaps.iter().max().copied().unwrap_or_default();
    eprintln!(
        "  {} connected, {} failed to connect, {} lost, {} echo stalled, {stalled_bulk} bulk stalled (longest gap {:.1} s); echo p50 {:.2} ms p99 {:.2} ms; bulk {:.1} Mbit/s",
        report.connected,
        report.connect_failed,
        report.lost,
        report.stalled,
        max_gap.as_secs_f64(),
        quantile(&report.echo_ms, 0.5).unwrap_or(f64::NAN),
        quantile(&report.echo_ms, 0.99).unwrap_or(f64::NAN),
        bytes as f64 * 8.0 / 1e6 / (a.secs as f64 + 5.0)
    );
    json!({
        "connected": report.connected,
        "connect_failed": report.connect_failed,
        "lost": report.lost,
        "echo_stalled": report.stalled,
        "bulk_conns": bulk.len(),
        "bulk_stalled": stalled_bulk,
        "bulk_stalled_to": {"mptcp_server": stalled_mptcp, "tcp_server": stalled_bulk - stalled_mptcp},
        "bulk_longest_gap_s": round3(max_gap.as_secs_f64()),
        "bulk_mbps": round3(bytes as f64 * 8.0 / 1e6 / (a.secs as f64 + 5.0)),
        "echo_ms": stats(&report.echo_ms),
        "echoes": report.echo_ms.len(),
        "errors": report.errors,
        "machine": sampler.summary(),
        "loop": loop_delta(loop0.as_ref(), loop1.as_ref()),
        "status_json_ms": status_ms,
        "status_connections": status_conns,
        "detoured_at_end": detoured,
        "detour_setup_under_load_ms": under_load_setups,
        "detour_setups_logged_ms": stats(&log_setups),
    })
}

/// Short connections to the TCP server, `a.short` of them, `a.window` at once.
///
/// They start once the load's uploads have drained: what the closed
/// connections left in send buffers (the proxy's upstream sockets hold
/// megabytes) still crosses the bottleneck after the load ends, and short
/// connections measured behind that queue would time the queue.
fn short_phase(a: &Args, lab: &Lab, servers: &Servers, server: Ipv4Addr) -> Value {
    let drain = wait_quiet(servers, a.conns, Duration::from_secs(90));
    eprintln!(
        "  the load's uploads drained {:.1} s after it ended",
        drain.as_secs_f64()
    );
    let to = SocketAddr::new(IpAddr::V4(server), TCP_PORT);
    let cpu0 = procstat::busy_cpu_s();
    let r = loadgen::run_short(lab.topo.ns(Node::Client), to, a.short, a.window);
    let cpu = procstat::busy_cpu_s() - cpu0;
    let rate = r.done as f64 / r.elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "  short connections: {} done, {} failed in {:.2} s = {rate:.0}/s; p50 {:.2} ms, p99 {:.2} ms",
        r.done,
        r.failed,
        r.elapsed.as_secs_f64(),
        quantile(&r.ms, 0.5).unwrap_or(f64::NAN),
        quantile(&r.ms, 0.99).unwrap_or(f64::NAN)
    );
    // TIME_WAIT and conntrack entries of this phase settle before the next.
    std::thread::sleep(Duration::from_secs(2));
    json!({
        "drained_after_load_s": round3(drain.as_secs_f64()),
        "done": r.done, "failed": r.failed, "elapsed_s": round3(r.elapsed.as_secs_f64()),
        "per_s": round3(rate), "ms": stats(&r.ms), "errors": r.errors,
        "machine_cpu_s": round3(cpu),
    })
}

/// Median, p99, max and count of `v`.
/// Waits until the servers have received nothing more for a second (at
/// most `limit`); returns how long that took.
fn wait_quiet(servers: &Servers, slots: usize, limit: Duration) -> Duration {
    let t0 = Instant::now();
    let total = || (0..slots).map(|i| servers.received(i)).sum::<u64>();
    let mut last = total();
    while t0.elapsed() < limit {
        std::thread::sleep(Duration::from_secs(1));
        let now = total();
        if now == last {
            return t0.elapsed().saturating_sub(Duration::from_secs(1));
        }
        last = now;
    }
    t0.elapsed()
}

pub fn stats(v: &[f64]) -> Value {
    json!({
        "n": v.len(),
        "median": quantile(v, 0.5).map(round3),
        "p99": quantile(v, 0.99).map(round3),
        "max": quantile(v, 1.0).map(round3),
    })
}

pub fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// The loop turns between two readings of the status's `loop` object: how
/// many, the histogram's difference, the slowest bucket reached and the
/// slowest turn if it happened in between.
pub fn loop_delta(a: Option<&Value>, b: Option<&Value>) -> Value {
    let (Some(a), Some(b)) = (a, b) else {
        return Value::Null;
    };
    let counts = |v: &Value| -> Vec<u64> {
        v["counts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect()
    };
    let (ca, cb) = (counts(a), counts(b));
    let diff: Vec<u64> = cb
        .iter()
        .enumerate()
        .map(|(i, x)| x.saturating_sub(ca.get(i).copied().unwrap_or(0)))
        .collect();
    let bounds: Vec<f64> = b["le_ms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect();
    let top = diff.iter().rposition(|c| *c > 0);
    let max_in_window = b["max_ms"] != a["max_ms"];
    json!({
        "turns": diff.iter().sum::<u64>(),
        "le_ms": bounds,
        "counts": diff,
        "slowest_bucket_le_ms": top.map(|i| bounds.get(i).copied()),
        "over_50ms": diff.iter().enumerate().filter(|(i, _)| bounds.get(i.wrapping_sub(1)).is_some_and(|b| *b >= 50.0)).map(|(_, c)| c).sum::<u64>(),
        "max_ms": if max_in_window { b["max_ms"].clone() } else { Value::Null },
        "max_driver": if max_in_window { b["max_driver"].clone() } else { Value::Null },
        "max_ms_since_start": b["max_ms"].clone(),
    })
}

fn ratios(routed: &Value, proxied: &Value, rs: &Value, ps: &Value) -> Value {
    let div = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => Some(round3(a / b)),
        _ => None,
    };
    json!({
        "echo_p50": div(&proxied["echo_ms"]["median"], &routed["echo_ms"]["median"]),
        "echo_p99": div(&proxied["echo_ms"]["p99"], &routed["echo_ms"]["p99"]),
        "bulk_mbps": div(&proxied["bulk_mbps"], &routed["bulk_mbps"]),
        "machine_cpu": div(&proxied["machine"]["busy_cpu_s"], &routed["machine"]["busy_cpu_s"]),
        "short_rate": div(&ps["per_s"], &rs["per_s"]),
        "short_p99": div(&ps["ms"]["p99"], &rs["ms"]["p99"]),
    })
}

/// `dcol status --json` from the control socket `sock`, timed.
pub fn status_at(sock: &std::path::Path) -> Option<(Value, Duration)> {
    let t = Instant::now();
    let out = Command::new(dcol_bin())
        .args(["status", "--json", "--socket"])
        .arg(sock)
        .output()
        .ok()?;
    let took = t.elapsed();
    out.status.success().then_some(())?;
    Some((serde_json::from_slice(&out.stdout).ok()?, took))
}

fn print_summary(doc: &Value) {
    println!(
        "\nLAN load ({} connections, {} to the MPTCP server, {} s held)",
        doc["conns"], doc["mptcp_conns"], doc["hold_s"]
    );
    for phase in ["routed", "proxied"] {
        let l = &doc[phase]["load"];
        println!(
            "  {phase:8} lost {} stalled {}+{} (echo+bulk) of {} connected ({} failed to connect); echo p50 {} p99 {} ms; bulk {} Mbit/s; machine CPU {} s",
            l["lost"], l["echo_stalled"], l["bulk_stalled"], l["connected"], l["connect_failed"],
            l["echo_ms"]["median"], l["echo_ms"]["p99"], l["bulk_mbps"], l["machine"]["busy_cpu_s"]
        );
        let s = &doc[phase]["short"];
        println!(
            "           short: {} done {} failed, {}/s, p99 {} ms",
            s["done"], s["failed"], s["per_s"], s["ms"]["p99"]
        );
    }
    let p = &doc["proxied"];
    let m = &p["load"]["machine"];
    println!(
        "  dcol: RSS peak {} KB (start {} KB), CPU {} % of a core; loop: {} turns, slowest bucket <= {} ms, {} over 50 ms, max {} ms ({})",
        m["daemon_rss_peak_kb"], m["daemon_rss_start_kb"], m["daemon_cpu_pct"],
        p["load"]["loop"]["turns"], p["load"]["loop"]["slowest_bucket_le_ms"], p["load"]["loop"]["over_50ms"],
        p["load"]["loop"]["max_ms"], p["load"]["loop"]["max_driver"]
    );
    println!(
        "  detour setup: idle {} / under load {} (median ms); p99 {} / {}",
        p["detour_setup_idle_ms"]["median"],
        p["load"]["detour_setup_under_load_ms"]["median"],
        p["detour_setup_idle_ms"]["p99"],
        p["load"]["detour_setup_under_load_ms"]["p99"]
    );
    println!("  ratios proxied/routed: {}", doc["ratios"]);
}
