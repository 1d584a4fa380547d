//! LAN proxy benchmark (root; not part of `cargo test`):
//! `cargo build --release -p dcol && DCOL_BIN=$PWD/target/release/dcol cargo bench -p dcol --bench proxy`.
//!
//! ```text
//!  lan (10.9.1.2) ── veth ── router (dcol, LAN proxy) ── veth ── server (10.9.2.2)
//! ```
//! Full-speed veths, no shaping. Every figure is measured twice in the same
//! run — (a) plain routing through the router namespace (dcol not running),
//! (b) through the proxy — and reported as a ratio:
//! - throughput of one `iperf3` stream, upload and download, to an MPTCP
//!   server (the proxy's upstream is MPTCP) and to a plain TCP server;
//! - CPU seconds of the whole machine per GB moved (both ends included, so
//!   the difference is what the proxy costs), and the daemon's own;
//! - memory for 1,000 idle connections: the daemon's RSS and the kernel's slab;
//! - connection set-up: connect, and connect + first 16-byte echo, sequential.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use dcol_tests::dcol::{main_section, Collective, Daemon, Scratch};
use dcol_tests::lab::need_root;
use dcol_tests::{iperf3_client, iperf3_server, run, Netns};

const RUNS: usize = 3;
const SECS: u32 = 5;
const IDLE_CONNS: usize = 1000;

fn tool() -> String {
    format!("{}/../tests/tools/tcpcheck.py", env!("CARGO_MANIFEST_DIR"))
}

/// Machine-wide busy CPU time in seconds (all cores), from /proc/stat.
fn busy_cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let f: Vec<f64> = s
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
    busy / 100.0
}

/// A process's CPU time in seconds (utime + stime).
fn proc_cpu_s(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // After the name: state(0) ... utime(11) stime(12).
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn status_kb(pid: u32, key: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn meminfo_kb(key: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Bench {
    lan: Netns,
    router: Netns,
    server: Netns,
    scratch: Scratch,
    collective: Collective,
}

impl Bench {
    fn new() -> Bench {
        let (lan, router, server) = (Netns::new("lan"), Netns::new("router"), Netns::new("srv"));
        for (a, b, ns_b, net) in [("a1", "b1", &lan, 1), ("a2", "b2", &server, 2)] {
            run(&[
                "ip",
                "link",
                "add",
                a,
                "netns",
                router.name(),
                "type",
                "veth",
                "peer",
                "name",
                b,
                "netns",
                ns_b.name(),
            ]);
            router.exec(&["ip", "addr", "add", &format!("10.9.{net}.1/24"), "dev", a]);
            router.exec(&["ip", "link", "set", a, "up"]);
            ns_b.exec(&["ip", "addr", "add", &format!("10.9.{net}.2/24"), "dev", b]);
            ns_b.exec(&["ip", "link", "set", b, "up"]);
            ns_b.exec(&["ip", "link", "set", "lo", "up"]);
            ns_b.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.9.{net}.1"),
            ]);
        }
        router.exec(&["ip", "link", "set", "lo", "up"]);
        // The proxy intercepts only flows routed to the WAN (a2).
        router.exec(&["ip", "route", "add", "default", "via", "10.9.2.2"]);
        router.sysctl("net.ipv4.ip_forward", "1");
        let scratch = Scratch::new("proxybench");
        let collective = Collective::new(scratch.path(), "coop");
        Bench {
            lan,
            router,
            server,
            scratch,
            collective,
        }
    }

    fn start_proxy(&self) -> Daemon {
        let m = self.collective.admit("bob", "client", 30);
        let sock = self.scratch.path().join("cl.sock");
        let state = self.scratch.path().join("cl-state");
        let cfg = format!(
            "{}config client 'client'\n\toption enabled '1'\n\toption lan_proxy '1'\n\tlist lan_interface 'a1'\n\toption detour_policy 'none'\n\toption max_conns_per_host '2000'\n\tlist proxy_allow_destination '10.9.0.0/16'\n",
            main_section(&m, &self.collective, &sock, &state).replace("'debug'", "'info'")
        );
        Daemon::start(self.router.name(), self.scratch.path(), "cl", &cfg, &sock)
    }

    /// Median Mbit/s of RUNS iperf3 runs, machine CPU s/GB, daemon CPU s/GB.
    fn throughput(&self, port: u16, reverse: bool, daemon: Option<u32>) -> (f64, f64, f64) {
        let server: IpAddr = "10.9.2.2".parse().expect("address");
        let (mut mbps, mut cpu, mut dcpu) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let (c0, d0) = (busy_cpu_s(), daemon.map(proc_cpu_s).unwrap_or(0.0));
            let r = iperf3_client(&self.lan, server, port, SECS, false, reverse).expect("iperf3");
            let (c1, d1) = (busy_cpu_s(), daemon.map(proc_cpu_s).unwrap_or(0.0));
            let gb = r.bytes as f64 / 1e9;
            mbps.push(r.bytes as f64 * 8.0 / 1e6 / f64::from(SECS));
            cpu.push((c1 - c0) / gb);
            dcpu.push((d1 - d0) / gb);
        }
        (median(mbps), median(cpu), median(dcpu))
    }

    /// The eight throughput rows: full speed, then with a 1 Gbit/s WAN (tbf
    /// both ways between router and server), a home router's fastest uplink.
    fn rows(&self, daemon: Option<u32>) -> Vec<(f64, f64, f64)> {
        let mut out = Vec::new();
        for shaped in [false, true] {
            if shaped {
                for (ns, dev) in [(&self.router, "a2"), (&self.server, "b2")] {
                    ns.exec(&[
                        "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "1gbit", "burst",
                        "1mb", "latency", "20ms",
                    ]);
                }
            }
            for (port, rev) in [(5201, false), (5201, true), (5202, false), (5202, true)] {
                out.push(self.throughput(port, rev, daemon));
            }
            if shaped {
                for (ns, dev) in [(&self.router, "a2"), (&self.server, "b2")] {
                    ns.exec(&["tc", "qdisc", "del", "dev", dev, "root"]);
                }
            }
        }
        out
    }

    fn latency(&self, port: u16) -> (f64, f64) {
        let t = tool();
        let out = self.lan.output(&[
            "python3",
            &t,
            "latency",
            "10.9.2.2",
            &port.to_string(),
            "300",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("latency json");
        (
            v["connect_ms"][0].as_f64().expect("ms"),
            v["first_echo_ms"][0].as_f64().expect("ms"),
        )
    }

    /// Kernel slab and daemon RSS growth (KB) while IDLE_CONNS idle
    /// connections are open.
    fn idle_memory(&self, port: u16, daemon: Option<u32>) -> (f64, f64) {
        let t = tool();
        let (s0, r0) = (
            meminfo_kb("Slab:"),
            daemon.map(|p| status_kb(p, "VmRSS:")).unwrap_or(0.0),
        );
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.lan.name(),
                "python3",
                &t,
                "hold",
                "10.9.2.2",
            ])
            .arg(port.to_string())
            .arg(IDLE_CONNS.to_string())
            .arg("4")
            .stdout(Stdio::piped())
            .spawn()
            .expect("hold");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready");
        assert_eq!(line.trim(), "ready");
        std::thread::sleep(Duration::from_millis(500));
        let (s1, r1) = (
            meminfo_kb("Slab:"),
            daemon.map(|p| status_kb(p, "VmRSS:")).unwrap_or(0.0),
        );
        child.wait().expect("hold");
        (s1 - s0, r1 - r0)
    }
}

fn main() {
    if !need_root() {
        return;
    }
    let b = Bench::new();
    let t = tool();
    // MPTCP servers (the proxy's upstream is MPTCP) and plain TCP ones.
    let _m = iperf3_server(&b.server, 5201, true);
    let _p = iperf3_server(&b.server, 5202, false);
    b.server
        .spawn(&["mptcpize", "run", "python3", &t, "echo-server", "9004"]);
    b.server.spawn(&["python3", &t, "echo-server", "9005"]);
    std::thread::sleep(Duration::from_millis(500));

    let routed = b.rows(None);
    let lat_routed = [b.latency(9004), b.latency(9005)];
    let mem_routed = b.idle_memory(9004, None);

    let d = b.start_proxy();
    let pid = d.pid().expect("daemon pid");
    let rss0 = status_kb(pid, "VmRSS:");
    // Teach the proxy the router's forwarding verdicts (the first connection
    // to each port goes direct) and that 5202 and 9005 are plain TCP (the
    // first proxied connection falls back).
    let _ = b.latency(9004);
    let _ = b.latency(9005);
    for port in [5201, 5202] {
        let _ = iperf3_client(
            &b.lan,
            "10.9.2.2".parse().expect("ip"),
            port,
            1,
            false,
            false,
        );
    }
    let proxied = b.rows(Some(pid));
    let lat_proxied = [b.latency(9004), b.latency(9005)];
    let mem_proxied = b.idle_memory(9004, Some(pid));
    let st = d.status();

    println!("LAN proxy benchmark: {RUNS} runs of {SECS} s per row, medians; veth at full speed");
    println!(
        "{:<34} {:>10} {:>10} {:>7} {:>12} {:>12} {:>10}",
        "iperf3, one stream",
        "routed",
        "proxied",
        "ratio",
        "CPU s/GB rt",
        "CPU s/GB px",
        "dcol s/GB"
    );
    for (i, name) in [
        "upload, MPTCP server",
        "download, MPTCP server",
        "upload, plain TCP server",
        "download, plain TCP server",
        "1G WAN: upload, MPTCP server",
        "1G WAN: download, MPTCP server",
        "1G WAN: upload, plain TCP server",
        "1G WAN: download, plain TCP server",
    ]
    .iter()
    .enumerate()
    {
        let (r, p) = (routed[i], proxied[i]);
        println!(
            "{:<34} {:>8.0} M {:>8.0} M {:>7.2} {:>12.2} {:>12.2} {:>10.2}",
            name,
            r.0,
            p.0,
            p.0 / r.0,
            r.1,
            p.1,
            p.2
        );
    }
    for (i, name) in ["echo, MPTCP server", "echo, plain TCP server"]
        .iter()
        .enumerate()
    {
        let (r, p) = (lat_routed[i], lat_proxied[i]);
        println!(
            "set-up {:<27} connect {:.3} -> {:.3} ms (+{:.3}), first echo {:.3} -> {:.3} ms (+{:.3})",
            name,
            r.0,
            p.0,
            p.0 - r.0,
            r.1,
            p.1,
            p.1 - r.1
        );
    }
    println!(
        "{IDLE_CONNS} idle connections: kernel slab +{:.0} KB routed, +{:.0} KB proxied ({:.1} KB/conn more); dcol RSS {:.0} KB idle, +{:.0} KB ({:.2} KB/conn)",
        mem_routed.0,
        mem_proxied.0,
        (mem_proxied.0 - mem_routed.0) / IDLE_CONNS as f64,
        rss0,
        mem_proxied.1,
        mem_proxied.1 / IDLE_CONNS as f64
    );
    println!("proxy counters: {}", st["client"]["lan_proxy"]);
}
