//! Waypoint grant benchmark (root; not part of `cargo test`):
//! `cargo bench -p dcol --bench grant`; with `DCOL_BIN_BEFORE=/path/to/dcol`
//! (a build of an earlier version) the flood part runs against that binary
//! too, in the same run.
//!
//! A real `dcol run` waypoint in its own network namespace answers signed NAT
//! detour requests on loopback; every grant means one nftables map element was
//! installed over netlink before the reply left. Reported:
//! - grant latency (request sent → grant received), median and p99, one request
//!   at a time, next to a UDP echo round trip on the same loopback in the same run
//!   (the baseline, so the ratio says what the waypoint itself costs);
//! - grants per second with many requests in flight (the daemon is one thread,
//!   so this is one core);
//! - under a flood of forged requests (a member's real certificate, garbage
//!   signatures) sent by one thread as fast as it can from its own address:
//!   honest members' request latency (median, p99, lost) from another address,
//!   next to the same figures without the flood, and the waypoint's CPU time
//!   per forged datagram it read and per datagram sent (from /proc, over a
//!   flood-only phase; this build has the kernel drop a source over its
//!   rate, so it reads few of them);
//! - the pure protocol core alone (verify + policy + lease + sign, no kernel),
//!   in-process, per request, and per forged request.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dcol::proto::v1::{BodyV1, RequestV1};
use dcol::proto::{self, Message, Nonce, Outcome, Request, RequestBody, RequestKind};
use dcol::trust::{files, Certificate, SecretKey, Signature};
use dcol_tests::dcol::{in_ns, main_section, Collective, Daemon, Scratch};
use dcol_tests::lab::{enter_netns, need_root};

const LATENCY_N: usize = 2000;
const THROUGHPUT_N: usize = 10_000;
const WINDOW: usize = 64;
/// Honest requests per phase of the flood part, and their pace.
const HONEST_N: usize = 1000;
const HONEST_GAP: Duration = Duration::from_millis(4);
/// Members asking (round robin: each stays within its request rate).
const HONEST_MEMBERS: usize = 8;
/// Length of the flood-only phase that measures CPU per forged datagram.
const FLOOD_CPU_PHASE: Duration = Duration::from_secs(3);

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const HONEST_SRC: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const FLOOD_SRC: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The wire format a waypoint speaks: this version, or version 1 (for an
/// earlier binary under `DCOL_BIN_BEFORE`).
#[derive(Clone, Copy, PartialEq)]
enum Wire {
    V2,
    V1,
}

/// A request of `wire`'s version; `sig`: a garbage signature instead of the
/// member's (a forgery).
fn encode(
    wire: Wire,
    cert: &Certificate,
    key: &SecretKey,
    nonce: Nonce,
    kind: RequestKind,
    source: IpAddr,
    sig: Option<Signature>,
) -> Vec<u8> {
    match wire {
        Wire::V2 => {
            let body = RequestBody {
                waypoint: "alice".into(),
                timestamp_ms: now_ms(),
                nonce,
                source,
                kind,
            };
            let mut r = Request::sign(cert.clone(), key, body);
            if let Some(s) = sig {
                r.signature = s;
            }
            proto::encode(&Message::Request(r))
        }
        Wire::V1 => {
            let body = BodyV1 {
                waypoint: "alice".into(),
                timestamp_ms: now_ms(),
                nonce,
                kind,
            };
            let mut r = RequestV1::sign(cert.clone(), key, body);
            if let Some(s) = sig {
                r.signature = s;
            }
            r.encode()
        }
    }
}

fn requests(cert: &Certificate, key: &SecretKey, n: usize, salt: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let dest = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, salt, (i >> 8) as u8, i as u8)),
                443,
            );
            let kind = RequestKind::NatDetour { destination: dest };
            encode(
                Wire::V2,
                cert,
                key,
                nonce(salt, i as u64),
                kind,
                LOOPBACK,
                None,
            )
        })
        .collect()
}

fn nonce(salt: u8, i: u64) -> Nonce {
    let mut n = [salt; 16];
    n[..8].copy_from_slice(&i.to_be_bytes());
    n[8..16].copy_from_slice(&now_ms().to_be_bytes());
    Nonce(n)
}

fn granted(reply: &[u8]) -> bool {
    matches!(proto::decode(reply), Ok(Message::Response(r)) if matches!(r.body.outcome, Outcome::Granted { .. }))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A namespace with loopback up, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("dcol-bench-{tag}-{}", std::process::id());
        let st = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success());
        in_ns(&name, &["ip", "link", "set", "lo", "up"]);
        // A WAN (one end of a veth pair with the default route): the
        // waypoint grants only destinations routed to it.
        in_ns(
            &name,
            &[
                "ip", "link", "add", "wan0", "type", "veth", "peer", "name", "wan1",
            ],
        );
        in_ns(&name, &["ip", "addr", "add", "192.0.2.1/24", "dev", "wan0"]);
        in_ns(&name, &["ip", "link", "set", "wan1", "up"]);
        in_ns(&name, &["ip", "link", "set", "wan0", "up"]);
        in_ns(
            &name,
            &["ip", "route", "add", "default", "via", "192.0.2.254"],
        );
        Ns(name)
    }

    /// Runs `f` on a thread inside.
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            enter_netns(&std::fs::File::open(&path).unwrap());
            f()
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// A waypoint config listening on loopback; `extra` goes into its section.
fn waypoint_uci(
    alice: &dcol_tests::dcol::Member,
    coop: &Collective,
    dir: &Path,
    extra: &str,
) -> String {
    format!(
        "{}config waypoint 'waypoint'\n\toption enabled '1'\n\toption listen '127.0.0.1:7447'\n\toption nat_ports '1024-65535'\n\tlist allow_destination '10.0.0.0/8'\n\toption upnp '0'\n{extra}",
        main_section(alice, coop, &dir.join("wp.sock"), &dir.join("state"))
    )
    .replace("option log_level 'debug'", "option log_level 'warn'")
}

fn main() {
    if !need_root() {
        return;
    }
    grants();
    let after = flood(None);
    let before = std::env::var_os("DCOL_BIN_BEFORE").map(|b| flood(Some(PathBuf::from(b))));
    println!("forged-request flood (one sender thread as fast as it goes, {HONEST_N} honest requests from {HONEST_MEMBERS} members per phase):");
    for (label, r) in [
        ("this build", Some(after)),
        ("before (DCOL_BIN_BEFORE)", before),
    ] {
        let Some(r) = r else {
            println!("  before: set DCOL_BIN_BEFORE=<dcol binary of the earlier version> to measure it in the same run");
            continue;
        };
        println!("  {label}:");
        println!(
            "    flood sent {:.0}/s; the waypoint read {:.0}/s; its CPU per forged datagram read {:.2} us, per datagram sent {:.3} us",
            r.sent_rate, r.read_rate, r.cpu_per_dgram_us, r.cpu_per_sent_us
        );
        println!(
            "    dropped by the kernel: {:.0}/s by the socket filter or at the full socket, {:.0}/s before it (backlog)",
            r.socket_drops, r.backlog_drops
        );
        println!(
            "    honest latency without flood: median {:.3} ms, p99 {:.3} ms, {} of {HONEST_N} unanswered",
            ms(r.quiet.0), ms(r.quiet.1), r.quiet.2
        );
        println!(
            "    honest latency under flood:   median {:.3} ms, p99 {:.3} ms, {} of {HONEST_N} unanswered (p99 {:.2}x without)",
            ms(r.flooded.0),
            ms(r.flooded.1),
            r.flooded.2,
            r.flooded.1.as_secs_f64() / r.quiet.1.as_secs_f64().max(1e-9)
        );
    }
    core_alone();
}

/// Grant latency and throughput of this build, then the core alone.
fn grants() {
    let ns = Ns::new("grant");
    let scratch = Scratch::new("bench");
    let coop = Collective::new(scratch.path(), "coop");
    let alice = coop.admit("alice", "client,waypoint", 30);
    let bob = coop.admit("bob", "client", 30);
    let sock = scratch.path().join("wp.sock");
    let uci = waypoint_uci(
        &alice,
        &coop,
        scratch.path(),
        // One member's 12,000 grants: room for them in its evidence share.
        "\toption max_tunnels_per_member '100000'\n\toption evidence_max_kb '65536'\n",
    );
    let mut wp = Daemon::start(&ns.0, scratch.path(), "wp", &uci, &sock);
    let key = files::read_secret_key(&bob.key).unwrap();
    let cert = files::read_certificate(&bob.cert).unwrap();

    let lat_reqs = requests(&cert, &key, LATENCY_N, 1);
    let tput_reqs = requests(&cert, &key, THROUGHPUT_N, 2);
    let (echo, grant, tput) = ns
        .spawn(move || {
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
}

/// What one flood run measured.
struct FloodReport {
    sent_rate: f64,
    read_rate: f64,
    cpu_per_dgram_us: f64,
    /// The waypoint's CPU per forged datagram sent (most never reach it
    /// when the kernel drops them).
    cpu_per_sent_us: f64,
    /// Dropped by the kernel at the socket, and before it, per second.
    socket_drops: f64,
    backlog_drops: f64,
    /// Honest latency without and with the flood: median, p99, unanswered.
    quiet: (Duration, Duration, usize),
    flooded: (Duration, Duration, usize),
}

/// CPU time (user + system) of process `pid`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .expect("CLK_TCK");
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

/// Datagrams the kernel dropped at the waypoint's socket (buffer full),
/// from `/proc/net/udp` in namespace `ns`.
fn socket_drops(ns: &str) -> u64 {
    let t = in_ns(ns, &["cat", "/proc/net/udp"]);
    t.lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(":1D17"))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// Packets the kernel dropped before any socket (the per-CPU backlog full),
/// from `/proc/net/softnet_stat`.
fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

/// Datagrams the waypoint read so far (its status counter).
fn datagrams_read(wp: &Daemon) -> u64 {
    wp.status()["waypoint"]["datagrams"].as_u64().unwrap_or(0)
}

/// The flood part against `bin` (this build when `None`; an earlier
/// version-1 build otherwise).
fn flood(bin: Option<PathBuf>) -> FloodReport {
    let wire = if bin.is_some() { Wire::V1 } else { Wire::V2 };
    let saved = std::env::var_os("DCOL_BIN");
    if let Some(b) = &bin {
        std::env::set_var("DCOL_BIN", b);
    }
    let ns = Ns::new(if bin.is_some() { "before" } else { "flood" });
    let scratch = Scratch::new("bench-flood");
    let coop = Collective::new(scratch.path(), "coop");
    let alice = coop.admit("alice", "client,waypoint", 30);
    let bob = coop.admit("bob", "client", 30);
    let honest: Vec<(Certificate, SecretKey)> = (0..HONEST_MEMBERS)
        .map(|i| {
            let m = coop.admit(&format!("carol{i}"), "client", 30);
            (
                files::read_certificate(&m.cert).unwrap(),
                files::read_secret_key(&m.key).unwrap(),
            )
        })
        .collect();
    // The defaults: 16 tunnels per member, and the limits that follow.
    let uci = waypoint_uci(&alice, &coop, scratch.path(), "");
    let sock = scratch.path().join("wp.sock");
    let mut wp = Daemon::start(&ns.0, scratch.path(), "wp", &uci, &sock);
    let pid = wp.pid().unwrap();
    let cert = files::read_certificate(&bob.cert).unwrap();
    let key = files::read_secret_key(&bob.key).unwrap();

    // Each honest member holds one lease; its renewals are the requests timed.
    let leases = {
        let honest = honest.clone();
        ns.spawn(move || {
            let s = bound(HONEST_SRC);
            honest
                .iter()
                .enumerate()
                .map(|(i, (c, k))| {
                    let n = nonce(0x40 + i as u8, 0);
                    let dest = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 9, i as u8)), 443);
                    let kind = RequestKind::NatDetour { destination: dest };
                    let r = encode(wire, c, k, n, kind, IpAddr::V4(HONEST_SRC), None);
                    let (reply, _) = ask(&s, &r).expect("lease");
                    let port = match proto::decode(&reply) {
                        Ok(Message::Response(r)) => match r.body.outcome {
                            Outcome::Granted { port, .. } => port,
                            o => panic!("{o:?}"),
                        },
                        // Version 1: the port is not needed to time renewals
                        // (a refusal is an answer too); take the lease nonce.
                        _ => 0,
                    };
                    (n, port, dest)
                })
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap()
    };
    let honest_phase = || {
        let honest = honest.clone();
        let leases = leases.clone();
        ns.spawn(move || {
            let s = bound(HONEST_SRC);
            let mut lat = Vec::new();
            let mut lost = 0;
            for i in 0..HONEST_N {
                let m = i % HONEST_MEMBERS;
                let (c, k) = &honest[m];
                let (lease, port, destination) = leases[m];
                let kind = RequestKind::Renew {
                    port,
                    destination,
                    lease,
                };
                let n = nonce(0x80 + m as u8, i as u64 + 1);
                let r = encode(wire, c, k, n, kind, IpAddr::V4(HONEST_SRC), None);
                match ask(&s, &r) {
                    Some((_, t)) => lat.push(t),
                    None => lost += 1,
                }
                std::thread::sleep(HONEST_GAP);
            }
            lat.sort();
            (percentile(&lat, 0.5), percentile(&lat, 0.99), lost)
        })
    };
    let quiet = honest_phase().join().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood_thread = {
        let (stop, sent) = (stop.clone(), sent.clone());
        ns.spawn(move || {
            let s = bound(FLOOD_SRC);
            let wp: SocketAddr = "127.0.0.1:7447".parse().unwrap();
            let mut junk = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Fresh timestamps: 1024 forgeries built every 200 ms.
                let pool: Vec<Vec<u8>> = (0..1024)
                    .map(|_| {
                        junk += 1;
                        let mut sig = [0u8; 64];
                        sig[..8].copy_from_slice(&junk.to_le_bytes());
                        let dest = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1)), 443);
                        let kind = RequestKind::NatDetour { destination: dest };
                        encode(
                            wire,
                            &cert,
                            &key,
                            nonce(0xee, junk),
                            kind,
                            IpAddr::V4(FLOOD_SRC),
                            Some(Signature(sig)),
                        )
                    })
                    .collect();
                let until = Instant::now() + Duration::from_millis(200);
                let mut n = 0;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    for d in &pool {
                        if s.send_to(d, wp).is_ok() {
                            n += 1;
                        }
                    }
                }
                sent.fetch_add(n, Ordering::Relaxed);
            }
        })
    };
    // Flood only: CPU per datagram read.
    std::thread::sleep(Duration::from_millis(300));
    let (read0, cpu0, sent0, t0) = (
        datagrams_read(&wp),
        cpu_time(pid),
        sent.load(Ordering::Relaxed),
        Instant::now(),
    );
    let drops0 = (socket_drops(&ns.0), backlog_drops());
    std::thread::sleep(FLOOD_CPU_PHASE);
    let (read1, cpu1, sent1, took) = (
        datagrams_read(&wp),
        cpu_time(pid),
        sent.load(Ordering::Relaxed),
        t0.elapsed(),
    );
    let drops1 = (socket_drops(&ns.0), backlog_drops());
    // Flood and honest requests together.
    let flooded = honest_phase().join().unwrap();
    stop.store(true, Ordering::Relaxed);
    flood_thread.join().unwrap();
    let read = read1.saturating_sub(read0).max(1);
    let report = FloodReport {
        sent_rate: sent1.saturating_sub(sent0) as f64 / took.as_secs_f64(),
        read_rate: read as f64 / took.as_secs_f64(),
        cpu_per_dgram_us: us(cpu1.saturating_sub(cpu0)) / read as f64,
        cpu_per_sent_us: us(cpu1.saturating_sub(cpu0)) / sent1.saturating_sub(sent0).max(1) as f64,
        socket_drops: drops1.0.saturating_sub(drops0.0) as f64 / took.as_secs_f64(),
        backlog_drops: drops1.1.saturating_sub(drops0.1) as f64 / took.as_secs_f64(),
        quiet,
        flooded,
    };
    wp.terminate();
    match saved {
        Some(v) => std::env::set_var("DCOL_BIN", v),
        None => std::env::remove_var("DCOL_BIN"),
    }
    report
}

/// A socket bound to `ip` (any port).
fn bound(ip: Ipv4Addr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(IpAddr::V4(ip), 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

/// Sends `r` to the waypoint and waits for an answer as a client does (300 ms,
/// four attempts): the reply and the time from the first send.
fn ask(s: &UdpSocket, r: &[u8]) -> Option<(Vec<u8>, Duration)> {
    let wp: SocketAddr = "127.0.0.1:7447".parse().unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 2048];
    for _ in 0..4 {
        s.send_to(r, wp).unwrap();
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            return Some((buf[..n].to_vec(), t.elapsed()));
        }
    }
    None
}

/// The protocol core alone, in-process: verify, policy, lease, sign; and
/// what a forged request costs it.
fn core_alone() {
    let scratch = Scratch::new("bench-core");
    let coop = Collective::new(scratch.path(), "coop");
    let alice = coop.admit("alice", "client,waypoint", 30);
    let bob = coop.admit("bob", "client", 30);
    let cert = files::read_certificate(&bob.cert).unwrap();
    let key = files::read_secret_key(&bob.key).unwrap();
    let core = |max: u32| {
        let settings = dcol::waypoint::Settings {
            ports: (1024, 65535),
            lease: Duration::from_secs(300),
            max_per_member: max,
            destinations: dcol::waypoint::policy::Rules {
                allow: vec!["10.0.0.0/8".parse().unwrap()],
                deny_ports: Vec::new(),
            },
            max_skew: Duration::from_secs(30),
            vpn: None,
            limits: dcol::waypoint::Limits::for_quota(max),
        };
        dcol::waypoint::Waypoint::new(
            settings,
            files::read_certificate(&alice.cert).unwrap(),
            files::read_secret_key(&alice.key).unwrap(),
            files::read_public_key(&coop.root_pub).unwrap(),
            Default::default(),
            dcol::routes::Routes::all_wan(Vec::new()),
        )
    };
    let mut w = core(100_000);
    let reqs = requests(&cert, &key, THROUGHPUT_N, 3);
    let from = SocketAddr::new(LOOPBACK, 5000);
    let t0 = Instant::now();
    for r in &reqs {
        let d = w.handle(Instant::now(), now_ms(), from, r);
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
    // Forged requests, each from its own address (so every one reaches the
    // signature check), then all from one address (dropped by its bucket).
    let forged: Vec<Vec<u8>> = (0..THROUGHPUT_N as u64)
        .map(|i| {
            let mut sig = [0u8; 64];
            sig[..8].copy_from_slice(&i.to_le_bytes());
            let kind = RequestKind::NatDetour {
                destination: "10.1.1.1:443".parse().unwrap(),
            };
            encode(
                Wire::V2,
                &cert,
                &key,
                nonce(9, i),
                kind,
                LOOPBACK,
                Some(Signature(sig)),
            )
        })
        .collect();
    let mut w = core(16);
    let t0 = Instant::now();
    for (i, r) in forged.iter().enumerate() {
        let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32)), 5000);
        w.handle(Instant::now(), now_ms(), src, r);
    }
    let checked = t0.elapsed() / THROUGHPUT_N as u32;
    let t0 = Instant::now();
    for r in &forged {
        w.handle(Instant::now(), now_ms(), from, r);
    }
    let dropped = t0.elapsed() / THROUGHPUT_N as u32;
    println!(
        "  protocol core, forged request: {:.1} us with its signature checked (certificate cached), {:.2} us dropped by its source's bucket",
        us(checked),
        us(dropped)
    );
}
