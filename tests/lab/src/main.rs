//! `dcol-lab`: reproduces the paper's emulated evaluation (Brennan &
//! Rabinovich 2018, Figures 4-9) in network namespaces with the real `dcol`
//! binary, real `iperf3` and the stock kernel MPTCP. Root only; not part of
//! `cargo test`.
//!
//! ```text
//! cargo run --release -p dcol-lab -- paper [--quick] [--trials N] [--out DIR]
//! cargo run --release -p dcol-lab -- waypoints [--quick] [--out DIR]   (part 2: the detour strategy, waypoints.rs)
//! ```
//!
//! `paper` builds the paper's Figure 3 topology (`dcol_tests::Topology`) once
//! per network configuration — symmetric (every link 10 Mbit/s) and
//! core-limited (core 10, access 20), each plain, with link 2 lossy (1 %
//! random loss, nftables `numgen random` in both routers at its ends) and with
//! link 2 delayed (100 ms more each way) — every link with the paper's 5 ms
//! one-way delay (user-space TUN relays in the routers, `delay.rs`: this
//! kernel has no netem) — and measures six scenarios with 10 s
//! iperf3 uploads (client → server, CUBIC), counting bytes between second 1
//! and the end as the paper did:
//!
//! | key        | what runs                                                         |
//! |------------|-------------------------------------------------------------------|
//! | `tcp`      | plain TCP over the direct path (link 2)                           |
//! | `tcp_nat`  | plain TCP to the waypoint's granted NAT port (signed request)     |
//! | `tcp_vpn`  | plain TCP bound to the client's WireGuard tunnel address          |
//! | `mptcp1`   | `mptcpize run iperf3`, no DCol client: one subflow                |
//! | `dcol_nat` | `mptcpize run iperf3` with the DCol client, one NAT peer          |
//! | `dcol_vpn` | `mptcpize run iperf3` with the DCol client, one VPN peer          |
//!
//! Output in DIR (default `target/lab`): `results.json` (every trial, medians,
//! the paper's reference medians beside them, link checks) and one SVG box plot
//! per configuration; a table of medians is printed at the end. Namespaces are
//! removed on exit, on Ctrl-C/SIGTERM and on panic (the release profile aborts
//! on panic, so a panic hook does it).
//!
//! The delay relay is this binary too (`dcol-lab relay --dev NAME --delay-us N`),
//! started inside the router's namespace.

#![deny(unsafe_code)]

mod begin;
mod converter;
mod delay;
mod grid;
mod lease;
mod load;
mod loadgen;
mod loadplot;
mod loadprobe;
mod paper;
mod plot;
mod procstat;
mod relay;
#[allow(unsafe_code)]
mod sys;
mod table;
mod waypoints;
mod wpload;
mod wpmember;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dcol_tests::lab::{need_root, Lab, IPERF_PORT, SIGNAL_PORT};
use dcol_tests::{iperf3_server_with, IperfResult, JoinCounter, LinkProfile, Netns, Node};
use delay::Delays;
use lexopt::prelude::ValueExt;
use serde_json::{json, Value};

/// Seconds per iperf3 run, as in the paper.
const SECS: u32 = 10;
/// The waypoint's VPN options (distinct interface names: wireguard-go's UAPI
/// socket path is shared by every namespace).
const WP_EXTRA: &str = "\toption vpn_subnet '10.200.7.0/24'\n\toption vpn_interface 'dlabwg0'\n\toption lease_s '3600'\n";
/// The client's interface prefix for VPN tunnels (same reason).
const CL_EXTRA: &str = "\toption vpn_interface_prefix 'dlabc'\n";

/// Set while the signal handler tears everything down.
static CLEANING: AtomicBool = AtomicBool::new(false);

fn usage() -> &'static str {
    "usage: dcol-lab paper [--quick] [--trials N] [--out DIR] [--config KEY]...\n       dcol-lab waypoints [--quick] [--out DIR]\n       dcol-lab converter [--quick] [--out DIR]\n       dcol-lab lan-load [--quick] [--out DIR] (load.rs)\n       dcol-lab waypoint-load [--quick] [--out DIR] (wpload.rs)\n       dcol-lab grid [--quick] [--trials N] [--config nat|vpn|mixed]... [--out DIR] (grid.rs)\n       dcol-lab table [--results DIR] [--readme FILE] [--check] (table.rs: the README's performance table)\n\nRoot only. Needs ip, tc, nft, ethtool, ping, iperf3, mptcpize, wireguard-go, wg.\nConfigurations (--config): symmetric, symmetric_lossy, symmetric_delayed,\ncore_limited, core_limited_lossy, core_limited_delayed (--quick: the two plain ones).\nUses $DCOL_BIN, else builds target/release/dcol with cargo."
}

fn main() -> ExitCode {
    let mut args = lexopt::Parser::from_env();
    let cmd = match args.next() {
        Ok(Some(lexopt::Arg::Value(v))) => v.to_string_lossy().into_owned(),
        Ok(Some(lexopt::Arg::Long("help") | lexopt::Arg::Short('h'))) => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{}", usage());
            return ExitCode::from(2);
        }
    };
    match cmd.as_str() {
        "paper" => match PaperArgs::parse(&mut args) {
            Ok(a) => paper_main(a),
            Err(e) => {
                eprintln!("dcol-lab paper: {e}\n{}", usage());
                ExitCode::from(2)
            }
        },
        "waypoints" => waypoints::main(&mut args),
        "converter" => converter::main(&mut args),
        "lan-load" => load::main(&mut args),
        "waypoint-load" => wpload::main(&mut args),
        "grid" => grid::main(&mut args),
        "table" => table::main(&mut args),
        "relay" => relay_main(&mut args),
        _ => {
            eprintln!("dcol-lab: unknown command '{cmd}'\n{}", usage());
            ExitCode::from(2)
        }
    }
}

fn relay_main(args: &mut lexopt::Parser) -> ExitCode {
    let mut dev = "dly0".to_owned();
    let mut delay_us = 0u64;
    let parsed: Result<(), lexopt::Error> = (|| {
        while let Some(a) = args.next()? {
            match a {
                lexopt::Arg::Long("dev") => dev = args.value()?.string()?,
                lexopt::Arg::Long("delay-us") => delay_us = args.value()?.parse()?,
                other => return Err(other.unexpected()),
            }
        }
        Ok(())
    })();
    if let Err(e) = parsed {
        eprintln!("dcol-lab relay: {e}");
        return ExitCode::from(2);
    }
    match relay::run(&dev, Duration::from_micros(delay_us)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dcol-lab relay: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Options of `dcol-lab paper`.
#[derive(Debug)]
struct PaperArgs {
    quick: bool,
    /// Only these configurations (`--config KEY`, repeatable); all when empty.
    only: Vec<String>,
    trials: usize,
    out: PathBuf,
}

impl PaperArgs {
    fn parse(args: &mut lexopt::Parser) -> Result<PaperArgs, lexopt::Error> {
        let mut a = PaperArgs {
            quick: false,
            only: Vec::new(),
            trials: 5,
            out: PathBuf::from("target/lab"),
        };
        let mut trials = None;
        while let Some(arg) = args.next()? {
            match arg {
                lexopt::Arg::Long("quick") => a.quick = true,
                lexopt::Arg::Long("trials") => {
                    let n: usize = args.value()?.parse()?;
                    if n == 0 {
                        return Err("--trials must be at least 1".into());
                    }
                    trials = Some(n);
                }
                lexopt::Arg::Long("out") => a.out = args.value()?.into(),
                lexopt::Arg::Long("config") => {
                    let k = args.value()?.string()?;
                    if !configs(false).iter().any(|c| c.key == k) {
                        return Err(format!("unknown configuration '{k}'").into());
                    }
                    a.only.push(k);
                }
                other => return Err(other.unexpected()),
            }
        }
        a.trials = trials.unwrap_or(if a.quick { 1 } else { 5 });
        Ok(a)
    }
}

/// What is done to link 2.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Impairment {
    None,
    /// Random loss, per mille, both directions.
    Loss(u32),
    /// Added one-way delay, both directions.
    Delay(Duration),
}

/// A network configuration of the paper.
#[derive(Debug, Clone, Copy)]
struct NetConfig {
    key: &'static str,
    title: &'static str,
    profile: LinkProfile,
    link2: Impairment,
}

fn configs(quick: bool) -> Vec<NetConfig> {
    let loss = Impairment::Loss(10);
    let delay = Impairment::Delay(Duration::from_millis(100));
    let all = [
        (
            "symmetric",
            "Symmetric",
            LinkProfile::symmetric(),
            Impairment::None,
        ),
        (
            "symmetric_lossy",
            "Symmetric, link 2 with 1% loss",
            LinkProfile::symmetric(),
            loss,
        ),
        (
            "symmetric_delayed",
            "Symmetric, link 2 with 100 ms delay",
            LinkProfile::symmetric(),
            delay,
        ),
        (
            "core_limited",
            "Core-limited",
            LinkProfile::core_limited(),
            Impairment::None,
        ),
        (
            "core_limited_lossy",
            "Core-limited, link 2 with 1% loss",
            LinkProfile::core_limited(),
            loss,
        ),
        (
            "core_limited_delayed",
            "Core-limited, link 2 with 100 ms delay",
            LinkProfile::core_limited(),
            delay,
        ),
    ];
    all.into_iter()
        .filter(|(k, ..)| !quick || *k == "symmetric" || *k == "core_limited")
        .map(|(key, title, profile, link2)| NetConfig {
            key,
            title,
            profile,
            link2,
        })
        .collect()
}

fn paper_main(a: PaperArgs) -> ExitCode {
    if !need_root() {
        return ExitCode::from(1);
    }
    if let Err(e) = std::fs::create_dir_all(&a.out) {
        eprintln!("dcol-lab: cannot create {}: {e}", a.out.display());
        return ExitCode::from(1);
    }
    ensure_dcol_bin();
    install_cleanup();
    let started = Instant::now();
    let cfgs: Vec<NetConfig> = if a.only.is_empty() {
        configs(a.quick)
    } else {
        configs(false)
            .into_iter()
            .filter(|c| a.only.iter().any(|k| k == c.key))
            .collect()
    };
    let mut results: Vec<Value> = Vec::new();
    eprintln!(
        "dcol-lab paper: {} configurations x 6 scenarios x {} trial(s) x {SECS} s; output in {}",
        cfgs.len(),
        a.trials,
        a.out.display()
    );
    for c in &cfgs {
        let t0 = Instant::now();
        eprintln!("\n=== {} ({}) ===", c.title, c.key);
        let r = run_config(c, a.trials, a.quick);
        let mut r = r;
        r["wall_s"] = json!(round2(t0.elapsed().as_secs_f64()));
        let svg = config_svg(c, &r);
        let svg_path = a.out.join(format!("{}.svg", c.key));
        if let Err(e) = std::fs::write(&svg_path, svg) {
            eprintln!("cannot write {}: {e}", svg_path.display());
        }
        r["plot"] = json!(svg_path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned()));
        results.push(r);
        write_results(&a, &results, started.elapsed(), false);
        eprintln!("({} done in {:.0} s)", c.key, t0.elapsed().as_secs_f64());
    }
    write_results(&a, &results, started.elapsed(), true);
    print_table(&results);
    println!(
        "\nTotal {:.0} s. Results: {}; plots: {}/*.svg",
        started.elapsed().as_secs_f64(),
        a.out.join("results.json").display(),
        a.out.display()
    );
    ExitCode::SUCCESS
}

/// Points the harness at a fresh release `dcol` unless `$DCOL_BIN` is set.
fn ensure_dcol_bin() {
    if std::env::var_os("DCOL_BIN").is_some() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building the dcol binary (cargo build --release -p dcol --bin dcol) ...");
    let ok = Command::new(cargo)
        .args(["build", "--release", "-p", "dcol", "--bin", "dcol"])
        .current_dir(&root)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release/dcol");
    if ok && bin.exists() {
        // Single-threaded still: no other thread reads the environment yet.
        std::env::set_var("DCOL_BIN", &bin);
    } else {
        eprintln!("warning: building dcol failed; using the newest target/{{debug,release}}/dcol");
    }
}

/// Ctrl-C/SIGTERM/SIGHUP and panics remove this process's namespaces.
fn install_cleanup() {
    let signals = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
    if let Err(e) = sys::block_signals(&signals) {
        eprintln!("warning: cannot block signals ({e}); Ctrl-C will leave namespaces behind");
        return;
    }
    std::thread::spawn(move || {
        if let Ok(sig) = sys::wait_signal(&signals) {
            CLEANING.store(true, Ordering::SeqCst);
            eprintln!("\ndcol-lab: signal {sig}: removing the lab's namespaces ...");
            cleanup_everything();
            std::process::exit(130);
        }
    });
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if CLEANING.load(Ordering::SeqCst) {
            // The signal handler is tearing the lab down under our feet.
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        default(info);
        eprintln!("dcol-lab: panic: removing the lab's namespaces ...");
        cleanup_everything();
    }));
}

/// Removes every namespace and scratch directory this process made: daemons
/// get SIGTERM first (they undo their kernel state), then everything SIGKILL.
fn cleanup_everything() {
    let prefix = format!("dcol-{}-", std::process::id());
    let out = Command::new("ip").args(["netns", "list"]).output();
    let names: Vec<String> = out
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(&prefix))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let pids = |n: &str| -> Vec<String> {
        Command::new("ip")
            .args(["netns", "pids", n])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    for n in &names {
        for p in pids(n) {
            let _ = Command::new("kill").args(["-TERM", &p]).status();
        }
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) && names.iter().any(|n| !pids(n).is_empty()) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for n in &names {
        for p in pids(n) {
            let _ = Command::new("kill").args(["-KILL", &p]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", n]).status();
    }
    let tmp = dcol_tests::dcol::scratch_base();
    let scratch = format!("dcol-lab-{}-", std::process::id());
    if let Ok(rd) = std::fs::read_dir(&tmp) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&scratch) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    eprintln!("dcol-lab: removed {} namespace(s)", names.len());
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One iperf3 upload from `ns` to `dst:port`; `mptcp` runs it under
/// `mptcpize`, `bind` binds the client to a local address.
fn iperf(
    ns: &Netns,
    dst: IpAddr,
    port: u16,
    mptcp: bool,
    bind: Option<&str>,
) -> Result<IperfResult, String> {
    let (d, p, t) = (dst.to_string(), port.to_string(), SECS.to_string());
    let mut args = vec!["timeout", "45"];
    if mptcp {
        args.extend(["mptcpize", "run"]);
    }
    args.extend([
        "iperf3",
        "-c",
        &d,
        "-p",
        &p,
        "-t",
        &t,
        "-J",
        "-O",
        "0",
        "-C",
        "cubic",
        "--get-server-output",
    ]);
    if let Some(b) = bind {
        args.extend(["-B", b]);
    }
    let out = ns.output(&args);
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "iperf3 output is not JSON ({e}; exit {}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(err) = v["error"].as_str() {
        return Err(format!("iperf3: {err}"));
    }
    // The receiver's intervals, as the paper counted (its JSON is the
    // server's): the sender's count bytes written into a socket buffer, which
    // overstates throughput when the bandwidth-delay product is large.
    let iv = &v["server_output_json"]["intervals"];
    if iv.as_array().is_none_or(|a| a.is_empty()) {
        return Err("iperf3 gave no server-side intervals (is the server running with -J?)".into());
    }
    let intervals = iv
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let s = &i["sum"];
            (
                s["start"].as_f64().unwrap_or(0.0),
                s["end"].as_f64().unwrap_or(0.0),
                s["bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let bytes = v["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0);
    Ok(IperfResult { intervals, bytes })
}

/// Asks the waypoint for a NAT tunnel to `dest` with a signed request from
/// the client's namespace; returns the granted port.
fn nat_lease(lab: &Lab, dest: SocketAddr) -> Result<u16, String> {
    let wp = SocketAddr::new(lab.topo.addr4(Node::Waypoint).into(), SIGNAL_PORT);
    // The address the waypoint sees the request come from (no NAT in the lab).
    let client = lab.topo.addr4(Node::Client).into();
    let ns = lab.ns(Node::Client);
    lease::nat_lease(&ns, &lab.client_member, "alice", wp, client, dest).map_err(|e| e.to_string())
}

/// Which waypoint traffic the server saw during a run.
fn via_waypoint(counter: &JoinCounter, wp: IpAddr) -> u64 {
    counter.bytes_from(wp)
}

/// Random loss on link 2 with counters, in both routers at its ends.
fn install_loss(lab: &Lab, per_mille: u32) {
    for (n, dev) in [(Node::Rc, "l2a"), (Node::Rs, "l2b")] {
        let rules = format!(
            "table inet dcollab_loss {{ chain loss {{ type filter hook forward priority 0; policy accept; oifname \"{dev}\" counter comment \"seen\"; oifname \"{dev}\" numgen random mod 1000 < {per_mille} counter drop comment \"dropped\"; }}; }}"
        );
        lab.topo.ns(n).exec(&["nft", &rules]);
    }
}

/// (packets seen, packets dropped) per direction: client→server at rc, server→client at rs.
fn loss_counters(lab: &Lab) -> Vec<(&'static str, u64, u64)> {
    [(Node::Rc, "client->server"), (Node::Rs, "server->client")]
        .into_iter()
        .map(|(n, dir)| {
            let out = lab.topo.ns(n).exec(&[
                "nft",
                "-j",
                "list",
                "chain",
                "inet",
                "dcollab_loss",
                "loss",
            ]);
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let count = |c: &str| -> u64 {
                v["nftables"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o.get("rule"))
                    .filter(|r| r["comment"].as_str() == Some(c))
                    .flat_map(|r| r["expr"].as_array().into_iter().flatten())
                    .filter_map(|e| e.get("counter").and_then(|c| c["packets"].as_u64()))
                    .sum()
            };
            (dir, count("seen"), count("dropped"))
        })
        .collect()
}

/// `ping` from the client to `to`: (avg, min, max, mdev) RTT in ms.
fn ping_rtt(lab: &Lab, to: Node, count: u32) -> Option<(f64, f64, f64, f64)> {
    let dst = lab.topo.addr4(to).to_string();
    let c = count.to_string();
    let out = lab
        .topo
        .ns(Node::Client)
        .output(&["ping", "-n", "-q", "-c", &c, "-i", "0.05", "-W", "2", &dst]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("min/avg/max"))?;
    // "rtt min/avg/max/mdev = 0.1/0.2/0.3/0.04 ms" (", pipe N" may follow).
    let nums: Vec<f64> = line
        .split('=')
        .nth(1)?
        .split_whitespace()
        .next()?
        .split('/')
        .filter_map(|x| x.parse().ok())
        .collect();
    (nums.len() == 4).then(|| (nums[1], nums[0], nums[2], nums[3]))
}

/// The relays' checks: precision (ping RTT added vs configured, to the
/// server over link 2 and to the waypoint over links 4 and 6) and that they
/// are not a bottleneck (TCP through them at zero delay vs without them).
/// Leaves the relays running with the configuration's delays. Without
/// `tcp_check` (`--quick`), only the RTTs are checked.
fn relay_checks(lab: &Lab, relays: &mut Delays, link2_extra: Duration, tcp_check: bool) -> Value {
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let cns = lab.topo.ns(Node::Client);
    let tcp = || {
        if !tcp_check {
            return None;
        }
        let r = iperf(cns, server, IPERF_PORT, false, None)
            .map(|r| r.mbps_after_first_second())
            .ok();
        // iperf3's server needs a moment between two tests.
        std::thread::sleep(Duration::from_millis(1500));
        r
    };
    let pings = |lab: &Lab| {
        [
            ping_rtt(lab, Node::Server, 40),
            ping_rtt(lab, Node::Waypoint, 40),
        ]
    };
    let base = pings(lab);
    let tcp_plain = tcp();
    let zero = relays.start(lab, Duration::ZERO, Duration::ZERO).map(|_| {
        let rtt = pings(lab);
        (rtt, tcp())
    });
    let delayed = relays
        .start(lab, delay::per_router(), link2_extra)
        .map(|_| pings(lab));
    let one_way = delay::per_router() * 2;
    let configured_ms = [
        2.0 * (one_way + link2_extra).as_secs_f64() * 1e3,
        2.0 * one_way.as_secs_f64() * 1e3,
    ];
    let (zero_rtt, zero_tcp) = zero.clone().unwrap_or(([None, None], None));
    let delayed_rtt = delayed.clone().unwrap_or([None, None]);
    let j = |r: Option<(f64, f64, f64, f64)>| {
        r.map(|r| json!({"avg": r.0, "min": r.1, "max": r.2, "mdev": r.3}))
    };
    let mut paths = Vec::new();
    for (i, to) in ["server (links 1, 2, 3)", "waypoint (links 1, 4, 6)"]
        .iter()
        .enumerate()
    {
        let added = match (delayed_rtt[i], base[i]) {
            (Some(d), Some(b)) => Some(d.0 - b.0),
            _ => None,
        };
        eprintln!(
            "delay relays, client -> {to}: RTT without relays {:.3} ms, relays at 0 ms {:.3} ms, with delays {:.3} ms -> added {:.3} ms vs configured {:.1} ms (error {:+.3} ms, mdev {:.3} ms)",
            base[i].map(|r| r.0).unwrap_or(f64::NAN),
            zero_rtt[i].map(|r| r.0).unwrap_or(f64::NAN),
            delayed_rtt[i].map(|r| r.0).unwrap_or(f64::NAN),
            added.unwrap_or(f64::NAN),
            configured_ms[i],
            added.map(|a| a - configured_ms[i]).unwrap_or(f64::NAN),
            delayed_rtt[i].map(|r| r.3).unwrap_or(f64::NAN),
        );
        paths.push(json!({
            "to": to,
            "configured_added_rtt_ms": configured_ms[i],
            "ping_rtt_ms_without_relay": j(base[i]),
            "ping_rtt_ms_relay_zero_delay": j(zero_rtt[i]),
            "ping_rtt_ms_relay_delayed": j(delayed_rtt[i]),
            "measured_added_rtt_ms": added.map(|a| (a * 1000.0).round() / 1000.0),
            "error_ms": added.map(|a| ((a - configured_ms[i]) * 1000.0).round() / 1000.0),
        }));
    }
    eprintln!(
        "delay relays: TCP without relays {:.2} Mbit/s, through the relays at 0 ms {:.2} Mbit/s (not the bottleneck if equal)",
        tcp_plain.unwrap_or(f64::NAN),
        zero_tcp.unwrap_or(f64::NAN)
    );
    json!({
        "per_router_ms": delay::per_router().as_secs_f64() * 1e3,
        "link2_extra_one_way_ms": link2_extra.as_secs_f64() * 1e3,
        "paths": paths,
        "tcp_mbps_without_relay": tcp_plain.map(round2),
        "tcp_mbps_through_relay_zero_delay": zero_tcp.map(round2),
        "errors": [zero.err(), delayed.err()],
    })
}

fn wait_vpn_up(lab: &Lab) -> Result<String, String> {
    let t0 = Instant::now();
    loop {
        if lab.cl().log_text().contains("VPN tunnel to alice up") {
            let st = lab.cl().status();
            if let Some(a) = st["client"]["peers"][0]["vpn_address"].as_str() {
                return Ok(a.to_owned());
            }
        }
        if t0.elapsed() > Duration::from_secs(15) {
            return Err(format!(
                "no VPN tunnel after 15 s; client log tail:\n{}",
                tail(&lab.cl().log_text(), 15)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn stop_client(lab: &mut Lab) {
    if let Some(mut d) = lab.client.take() {
        if !d.terminate().success() {
            eprintln!("warning: the client daemon did not exit cleanly");
        }
    }
}

/// Trials of one configuration: scenario key → list of trial records.
struct Trials {
    by_scenario: Vec<(&'static str, Vec<Value>)>,
}

impl Trials {
    fn new() -> Trials {
        Trials {
            by_scenario: paper::SCENARIOS
                .iter()
                .map(|(k, _)| (*k, Vec::new()))
                .collect(),
        }
    }

    fn push(&mut self, key: &str, v: Value) {
        if let Some((_, list)) = self.by_scenario.iter_mut().find(|(k, _)| *k == key) {
            list.push(v);
        }
    }

    fn values(&self, key: &str) -> Vec<f64> {
        self.by_scenario
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, l)| l.iter().filter_map(|t| t["mbps"].as_f64()).collect())
            .unwrap_or_default()
    }
}

/// Runs one scenario once and records it.
#[allow(clippy::too_many_arguments)]
fn trial(
    trials: &mut Trials,
    key: &'static str,
    n: usize,
    lab: &Lab,
    counter: &JoinCounter,
    dst: IpAddr,
    port: u16,
    mptcp: bool,
    bind: Option<&str>,
) {
    let wp: IpAddr = lab.topo.addr4(Node::Waypoint).into();
    let before = via_waypoint(counter, wp);
    let r = iperf(lab.topo.ns(Node::Client), dst, port, mptcp, bind);
    let via = via_waypoint(counter, wp).saturating_sub(before);
    let rec = match &r {
        Ok(r) => {
            let m = r.mbps_after_first_second();
            let share = if r.bytes > 0 {
                via as f64 / r.bytes as f64
            } else {
                0.0
            };
            eprintln!(
                "  {key:9} trial {n}: {m:6.2} Mbit/s  (server saw {:.0} % of the sent bytes, headers included, from the waypoint)",
                share * 100.0
            );
            json!({"trial": n, "mbps": round2(m), "sent_bytes": r.bytes, "bytes_via_waypoint": via,
                   "intervals": r.intervals.iter().map(|(s, e, b)| json!([round2(*s), round2(*e), b])).collect::<Vec<_>>()})
        }
        Err(e) => {
            eprintln!("  {key:9} trial {n}: FAILED: {e}");
            json!({"trial": n, "mbps": null, "error": e})
        }
    };
    trials.push(key, rec);
    // Let queues drain and lingering subflows close before the next run.
    std::thread::sleep(Duration::from_millis(500));
}

fn run_config(c: &NetConfig, n_trials: usize, quick: bool) -> Value {
    let mut lab = Lab::new(c.profile);
    let server: IpAddr = lab.topo.addr4(Node::Server).into();
    let waypoint: IpAddr = lab.topo.addr4(Node::Waypoint).into();
    let _srv = iperf3_server_with(lab.topo.ns(Node::Server), IPERF_PORT, true, &["-J"]);
    let counter = JoinCounter::install(lab.topo.ns(Node::Server), IPERF_PORT, &[waypoint]);
    let mut link2 = json!({"impairment": "none"});
    let mut relays = Delays::rules(&lab);
    let extra = match c.link2 {
        Impairment::Delay(d) => d,
        _ => Duration::ZERO,
    };
    let relay_checks = relay_checks(&lab, &mut relays, extra, !quick);
    match c.link2 {
        Impairment::None => {}
        Impairment::Loss(pm) => {
            install_loss(&lab, pm);
            link2 = json!({"impairment": "loss", "configured_loss_pct": f64::from(pm) / 10.0,
                           "method": "nftables forward chain in rc (oifname l2a) and rs (oifname l2b): numgen random mod 1000 < 10 drop"});
        }
        Impairment::Delay(d) => {
            link2 = json!({"impairment": "delay", "configured_one_way_ms": d.as_secs_f64() * 1e3,
                           "method": "a second user-space TUN relay in rc (dcol-lab relay) holds what crosses link 2 for 7.5 ms + this (policy routing by iif and destination)"});
        }
    }
    let mut trials = Trials::new();
    let mut errors: Vec<String> = Vec::new();
    lab.start_waypoint_with(WP_EXTRA);
    let lease = nat_lease(&lab, SocketAddr::new(server, IPERF_PORT));
    if let Err(e) = &lease {
        errors.push(format!("NAT lease: {e}"));
        eprintln!("NAT lease failed: {e}");
    }
    std::thread::sleep(Duration::from_millis(300));
    // Phase A: no DCol client.
    for t in 1..=n_trials {
        trial(
            &mut trials,
            "tcp",
            t,
            &lab,
            &counter,
            server,
            IPERF_PORT,
            false,
            None,
        );
        trial(
            &mut trials,
            "mptcp1",
            t,
            &lab,
            &counter,
            server,
            IPERF_PORT,
            true,
            None,
        );
        if let Ok(port) = lease {
            trial(
                &mut trials,
                "tcp_nat",
                t,
                &lab,
                &counter,
                waypoint,
                port,
                false,
                None,
            );
        }
    }
    // Phase B: the DCol client with one VPN peer.
    let cfg = lab.client_config_tunnels(CL_EXTRA, &["vpn"]);
    lab.start_client_with(Node::Client, &cfg);
    match wait_vpn_up(&lab) {
        Ok(addr) => {
            for t in 1..=n_trials {
                trial(
                    &mut trials,
                    "tcp_vpn",
                    t,
                    &lab,
                    &counter,
                    server,
                    IPERF_PORT,
                    false,
                    Some(&addr),
                );
                trial(
                    &mut trials,
                    "dcol_vpn",
                    t,
                    &lab,
                    &counter,
                    server,
                    IPERF_PORT,
                    true,
                    None,
                );
            }
        }
        Err(e) => {
            eprintln!("VPN scenarios skipped: {e}");
            errors.push(format!("VPN: {e}"));
        }
    }
    stop_client(&mut lab);
    // Phase C: the DCol client with one NAT peer.
    let cfg = lab.client_config_tunnels(CL_EXTRA, &["nat"]);
    lab.start_client_with(Node::Client, &cfg);
    for t in 1..=n_trials {
        trial(
            &mut trials,
            "dcol_nat",
            t,
            &lab,
            &counter,
            server,
            IPERF_PORT,
            true,
            None,
        );
    }
    stop_client(&mut lab);
    if let Impairment::Loss(_) = c.link2 {
        let counters = loss_counters(&lab);
        let (seen, dropped) = counters.iter().fold((0, 0), |(s, d), c| (s + c.1, d + c.2));
        let rate = if seen > 0 {
            dropped as f64 / seen as f64
        } else {
            0.0
        };
        eprintln!(
            "link 2 loss measured: {dropped} of {seen} packets = {:.3} % ({})",
            rate * 100.0,
            counters
                .iter()
                .map(|(d, s, x)| format!(
                    "{d}: {x}/{s} = {:.3} %",
                    if *s > 0 {
                        *x as f64 / *s as f64 * 100.0
                    } else {
                        0.0
                    }
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        link2["measured_loss_pct"] = json!((rate * 1e5).round() / 1e3);
        link2["packets"] = json!(counters
            .iter()
            .map(|(d, s, x)| json!({"direction": d, "seen": s, "dropped": x}))
            .collect::<Vec<_>>());
    }
    relays.stop(&lab);
    drop(_srv);
    drop(lab);
    let scenarios: Vec<Value> = paper::SCENARIOS
        .iter()
        .map(|(k, label)| {
            let vals = trials.values(k);
            let med = plot::median(&vals);
            let reference = paper::median(c.key, k);
            json!({
                "key": k,
                "label": label,
                "trials": trials.by_scenario.iter().find(|(x, _)| x == k).map(|(_, l)| l.clone()).unwrap_or_default(),
                "median_mbps": med.map(round2),
                "paper_median_mbps": reference.map(|r| r.1),
                "paper_figure": reference.map(|r| r.0),
            })
        })
        .collect();
    let medians: Vec<(String, Option<f64>)> = paper::SCENARIOS
        .iter()
        .map(|(k, _)| (k.to_string(), plot::median(&trials.values(k))))
        .collect();
    let paper_medians: Vec<(String, Option<f64>)> = paper::SCENARIOS
        .iter()
        .map(|(k, _)| (k.to_string(), paper::median(c.key, k).map(|r| r.1)))
        .collect();
    json!({
        "key": c.key,
        "title": c.title,
        "core_mbit": c.profile.core_mbit,
        "access_mbit": c.profile.access_mbit,
        "link2": link2,
        "delay": relay_checks,
        "scenarios": scenarios,
        "ratios": ratios(&medians),
        "paper_ratios": ratios(&paper_medians),
        "errors": errors,
    })
}

/// Derived figures of the paper's claims from a set of medians.
fn ratios(m: &[(String, Option<f64>)]) -> Value {
    let g = |k: &str| m.iter().find(|(x, _)| x == k).and_then(|(_, v)| *v);
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some((a / b * 1e4).round() / 1e4),
        _ => None,
    };
    let sum = |a: Option<f64>, b: Option<f64>| Some(a? + b?);
    let loss_pct = |x: Option<f64>| div(x, g("tcp")).map(|r| ((1.0 - r) * 1e4).round() / 1e2);
    json!({
        "dcol_nat_over_tcp": div(g("dcol_nat"), g("tcp")),
        "dcol_vpn_over_tcp": div(g("dcol_vpn"), g("tcp")),
        "aggregation_nat_vs_tcp_sum": div(g("dcol_nat"), sum(g("tcp"), g("tcp_nat"))),
        "aggregation_vpn_vs_tcp_sum": div(g("dcol_vpn"), sum(g("tcp"), g("tcp_vpn"))),
        "aggregation_nat_vs_2x_mptcp1": div(g("dcol_nat"), g("mptcp1").map(|x| 2.0 * x)),
        "loss_vs_tcp_pct": {
            "mptcp1": loss_pct(g("mptcp1")),
            "dcol_nat": loss_pct(g("dcol_nat")),
            "dcol_vpn": loss_pct(g("dcol_vpn")),
            "tcp_nat": loss_pct(g("tcp_nat")),
            "tcp_vpn": loss_pct(g("tcp_vpn")),
        },
    })
}

fn config_svg(c: &NetConfig, r: &Value) -> String {
    let series: Vec<plot::Series> = r["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| plot::Series {
            label: s["label"].as_str().unwrap_or("?").to_owned(),
            values: s["trials"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["mbps"].as_f64())
                .collect(),
            reference: s["paper_median_mbps"].as_f64(),
        })
        .collect();
    let fig = paper::median(c.key, "tcp").map(|x| x.0).unwrap_or("-");
    let sub = format!(
        "core {} / access {} Mbit/s; 10 s iperf3 uploads, bytes from second 1; paper: {fig}",
        c.profile.core_mbit, c.profile.access_mbit
    );
    plot::box_plot_svg(c.title, &sub, &series)
}

fn write_results(a: &PaperArgs, results: &[Value], elapsed: Duration, complete: bool) {
    let doc = json!({
        "command": "paper",
        "quick": a.quick,
        "trials_per_cell": a.trials,
        "iperf_seconds": SECS,
        "measure": "iperf3 upload client -> server, CUBIC (-C cubic), receiver-side (server) intervals via --get-server-output: bytes of the intervals from second 1 to the end divided by their duration",
        "complete": complete,
        "elapsed_s": round2(elapsed.as_secs_f64()),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).ok(),
        "paper_reference": {
            "source": paper::SOURCE,
            "medians_mbps": paper::MEDIANS.iter().map(|(k, fig, v)| json!({
                "config": k, "figure": fig,
                "values": paper::SCENARIOS.iter().zip(v.iter()).map(|((s, _), x)| (s.to_string(), json!(x))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
        },
        "deviations_from_paper": [
            "5 ms per link is emulated by a user-space TUN relay in each router holding forwarded packets 7.5 ms (every host-to-host path crosses 3 links and 2 routers); tbf queues of ~50 ms",
            "VPN detour is WireGuard (wireguard-go) instead of OpenVPN",
            "MPTCP is upstream Linux MPTCP with the userspace path manager driven by dcol, not the 2017 out-of-tree kernel",
            "100 ms delay on link 2: a second relay in the client's router, 100 ms more each way (Mininet's netem on both link ends)",
        ],
        "configs": results,
    });
    let path = a.out.join("results.json");
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:6.2}"))
        .unwrap_or_else(|| "     -".into())
}

fn print_table(results: &[Value]) {
    println!("\nMedians, Mbit/s (this lab vs the paper's, Brennan & Rabinovich 2018; see results.json for the source)");
    for r in results {
        let fig = paper::median(r["key"].as_str().unwrap_or(""), "tcp")
            .map(|x| x.0)
            .unwrap_or("-");
        println!(
            "\n{} [{}; paper {fig}]",
            r["title"].as_str().unwrap_or("?"),
            r["key"].as_str().unwrap_or("?")
        );
        if let Some(l) = r["link2"]["measured_loss_pct"].as_f64() {
            println!("  link 2 loss measured {l:.3} % (configured 1 %)");
        }
        let c = &r["delay"];
        for p in c["paths"].as_array().into_iter().flatten() {
            println!(
                "  delay relays, to the {}: added RTT {} ms (configured {})",
                p["to"].as_str().unwrap_or("?"),
                p["measured_added_rtt_ms"],
                p["configured_added_rtt_ms"]
            );
        }
        if c["tcp_mbps_without_relay"].is_number() {
            println!(
                "  delay relays: TCP without relays {} / through relays at 0 ms {} Mbit/s",
                c["tcp_mbps_without_relay"], c["tcp_mbps_through_relay_zero_delay"]
            );
        }
        println!(
            "  {:18} {:>7} {:>7} {:>8} {:>3}",
            "scenario", "lab", "paper", "lab/pap", "n"
        );
        for s in r["scenarios"].as_array().into_iter().flatten() {
            let lab = s["median_mbps"].as_f64();
            let pap = s["paper_median_mbps"].as_f64();
            let ratio = match (lab, pap) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:7.1}%", a / b * 100.0),
                _ => "       -".into(),
            };
            let n = s["trials"]
                .as_array()
                .map_or(0, |t| t.iter().filter(|x| x["mbps"].is_number()).count());
            println!(
                "  {:18} {} {} {} {:>3}",
                s["label"].as_str().unwrap_or("?"),
                fmt(lab),
                fmt(pap),
                ratio,
                n
            );
        }
        let (x, p) = (&r["ratios"], &r["paper_ratios"]);
        let f = |v: &Value| {
            v.as_f64()
                .map(|x| format!("{x:.3}"))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "  DCol NAT / TCP {} (paper {}), DCol VPN / TCP {} (paper {})",
            f(&x["dcol_nat_over_tcp"]),
            f(&p["dcol_nat_over_tcp"]),
            f(&x["dcol_vpn_over_tcp"]),
            f(&p["dcol_vpn_over_tcp"])
        );
        println!(
            "  aggregation NAT vs TCP+TCP(NAT) {} (paper {}), VPN vs TCP+TCP(VPN) {} (paper {}), NAT vs 2x MPTCP-1 {} (paper {})",
            f(&x["aggregation_nat_vs_tcp_sum"]), f(&p["aggregation_nat_vs_tcp_sum"]),
            f(&x["aggregation_vpn_vs_tcp_sum"]), f(&p["aggregation_vpn_vs_tcp_sum"]),
            f(&x["aggregation_nat_vs_2x_mptcp1"]), f(&p["aggregation_nat_vs_2x_mptcp1"])
        );
        let l = &x["loss_vs_tcp_pct"];
        let lp = &p["loss_vs_tcp_pct"];
        println!(
            "  loss vs TCP, %: MPTCP-1 {} (paper {}), DCol NAT {} (paper {}), DCol VPN {} (paper {})",
            f(&l["mptcp1"]), f(&lp["mptcp1"]), f(&l["dcol_nat"]), f(&lp["dcol_nat"]), f(&l["dcol_vpn"]), f(&lp["dcol_vpn"])
        );
        for e in r["errors"].as_array().into_iter().flatten() {
            println!("  error: {}", e.as_str().unwrap_or("?"));
        }
    }
}
