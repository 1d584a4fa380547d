//! The topology harness of DCol's root network-namespace tests, the demo and the
//! benchmarks: network namespaces that clean up after themselves (also when a
//! test panics), the paper's Figure 3 topology with rate-limited links, real
//! `iperf3` runs, and counters on the server that show which address data came
//! from. Shells out to `ip`, `tc`, `ethtool`, `nft` and `iperf3`.
//!
//! ```text
//!  client ──1── rc ──2 (direct, core)── rs ──3── server
//!               │                        │
//!               4 (core)                 5 (core)
//!               └────────── rw ──────────┘
//!                           │6
//!                        waypoint
//! ```
//! Link L joins its first node (`.1`, `fd00:0:0:L::1`) to its second (`.2`);
//! addresses are 10.0.L.0/24 and fd00:0:0:L::/64.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub mod convlab;
pub mod dcol;
pub mod lab;
pub mod openwrt;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command; panics with its stderr if it fails.
pub fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// A veth pair from `a` (`ia`, address `aa` with prefix) to `b` (`ib`,
/// `ab`), both ends up.
pub fn veth(a: &Netns, ia: &str, aa: &str, b: &Netns, ib: &str, ab: &str) {
    veth_pair(a, ia, b, ib);
    for (ns, i, addr) in [(a, ia, aa), (b, ib, ab)] {
        ns.exec(&["ip", "addr", "add", addr, "dev", i]);
    }
}

/// A veth pair from `a` (`ia`) to `b` (`ib`), both ends up, no addresses
/// (a bridge port, or addresses added by the caller).
pub fn veth_pair(a: &Netns, ia: &str, b: &Netns, ib: &str) {
    run(&[
        "ip",
        "link",
        "add",
        ia,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        ib,
        "netns",
        b.name(),
    ]);
    for (ns, i) in [(a, ia), (b, ib)] {
        ns.exec(&["ip", "link", "set", i, "up"]);
    }
}

/// A network namespace, deleted (with every process in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    children: Mutex<Vec<Child>>,
}

impl Netns {
    /// Creates `dcol-<pid>-<n>-<role>` with loopback up.
    pub fn new(role: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("dcol-{}-{n}-{role}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let ns = Netns {
            name,
            children: Mutex::new(Vec::new()),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Runs a command inside; panics with its stderr if it fails.
    pub fn exec(&self, args: &[&str]) -> Output {
        let out = self
            .cmd(args)
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(
            out.status.success(),
            "in {}: {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        out
    }

    /// Runs a command inside and returns its output, whatever the exit status.
    pub fn output(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Starts a background process inside; it is killed when the namespace is dropped.
    pub fn spawn(&self, args: &[&str]) -> u32 {
        let child = self
            .cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let pid = child.id();
        self.children.lock().expect("not poisoned").push(child);
        pid
    }

    /// Like [`Netns::spawn`], with stderr (and stdout) going to `log`.
    pub fn spawn_logged(&self, args: &[&str], log: std::fs::File) -> u32 {
        let out = log.try_clone().expect("dup log file");
        let child = self
            .cmd(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let pid = child.id();
        self.children.lock().expect("not poisoned").push(child);
        pid
    }

    /// Sets a sysctl inside.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Everything running inside, ours or not (daemons, iperf3).
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        if let Ok(mut ch) = self.children.lock() {
            for c in ch.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A node of the paper's topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// The client host.
    Client,
    /// The client's router.
    Rc,
    /// The server's router.
    Rs,
    /// The waypoint's router.
    Rw,
    /// The waypoint.
    Waypoint,
    /// The MPTCP server.
    Server,
}

const NODES: [Node; 6] = [
    Node::Client,
    Node::Rc,
    Node::Rs,
    Node::Rw,
    Node::Waypoint,
    Node::Server,
];

/// Links: (number, first node, second node, core?).
const LINKS: [(u8, Node, Node, bool); 6] = [
    (1, Node::Rc, Node::Client, false),
    (2, Node::Rc, Node::Rs, true),
    (3, Node::Rs, Node::Server, false),
    (4, Node::Rc, Node::Rw, true),
    (5, Node::Rw, Node::Rs, true),
    (6, Node::Rw, Node::Waypoint, false),
];

/// Rates of the links.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkProfile {
    /// Core links 2, 4, 5 (Mbit/s).
    pub core_mbit: u32,
    /// Access links 1, 3, 6 (Mbit/s).
    pub access_mbit: u32,
}

impl LinkProfile {
    /// Every link 10 Mbit/s.
    pub fn symmetric() -> Self {
        LinkProfile {
            core_mbit: 10,
            access_mbit: 10,
        }
    }

    /// Core 10 Mbit/s, access 20 Mbit/s: a detour adds a second bottleneck path.
    pub fn core_limited() -> Self {
        LinkProfile {
            core_mbit: 10,
            access_mbit: 20,
        }
    }
}

/// The paper's Figure 3 in namespaces.
#[derive(Debug)]
pub struct Topology {
    nodes: Vec<(Node, Netns)>,
    profile: LinkProfile,
}

fn ip4(link: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, link, host)
}

fn ip6(link: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, u16::from(link), 0, 0, 0, host)
}

impl Topology {
    /// Builds the topology with `profile`'s rates.
    pub fn paper(profile: LinkProfile) -> Topology {
        let nodes: Vec<(Node, Netns)> = NODES
            .iter()
            .map(|n| (*n, Netns::new(&format!("{n:?}").to_lowercase())))
            .collect();
        let t = Topology { nodes, profile };
        for (l, a, b, core) in LINKS {
            let (ia, ib) = (format!("l{l}a"), format!("l{l}b"));
            run(&[
                "ip",
                "link",
                "add",
                &ia,
                "netns",
                t.ns(a).name(),
                "type",
                "veth",
                "peer",
                "name",
                &ib,
                "netns",
                t.ns(b).name(),
            ]);
            let rate = t.rate(core);
            for (node, ifname, host) in [(a, &ia, 1u8), (b, &ib, 2u8)] {
                let ns = t.ns(node);
                ns.exec(&[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", ip4(l, host)),
                    "dev",
                    ifname,
                ]);
                ns.exec(&[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{}/64", ip6(l, u16::from(host))),
                    "dev",
                    ifname,
                    "nodad",
                ]);
                ns.exec(&["ip", "link", "set", ifname, "up"]);
                ns.exec(&[
                    "ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off",
                ]);
                tbf(ns, ifname, rate);
            }
        }
        for r in [Node::Rc, Node::Rs, Node::Rw] {
            t.ns(r).sysctl("net.ipv4.ip_forward", "1");
            t.ns(r).sysctl("net.ipv6.conf.all.forwarding", "1");
        }
        // Hosts: default routes over their access link.
        for (host, link) in [(Node::Client, 1u8), (Node::Server, 3), (Node::Waypoint, 6)] {
            let ns = t.ns(host);
            ns.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &ip4(link, 1).to_string(),
            ]);
            ns.exec(&[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                &ip6(link, 1).to_string(),
            ]);
        }
        // Routers: (router, destination link, via link, via host).
        let routes: [(Node, u8, u8, u8); 9] = [
            (Node::Rc, 3, 2, 2),
            (Node::Rc, 6, 4, 2),
            (Node::Rc, 5, 4, 2),
            (Node::Rs, 1, 2, 1),
            (Node::Rs, 6, 5, 1),
            (Node::Rs, 4, 5, 1),
            (Node::Rw, 1, 4, 1),
            (Node::Rw, 3, 5, 2),
            (Node::Rw, 2, 4, 1),
        ];
        for (r, dst, via_link, via_host) in routes {
            let ns = t.ns(r);
            ns.exec(&[
                "ip",
                "route",
                "add",
                &format!("10.0.{dst}.0/24"),
                "via",
                &ip4(via_link, via_host).to_string(),
            ]);
            ns.exec(&[
                "ip",
                "-6",
                "route",
                "add",
                &format!("fd00:0:0:{dst}::/64"),
                "via",
                &ip6(via_link, u16::from(via_host)).to_string(),
            ]);
        }
        t
    }

    /// A node's namespace.
    pub fn ns(&self, n: Node) -> &Netns {
        &self
            .nodes
            .iter()
            .find(|(m, _)| *m == n)
            .expect("every node exists")
            .1
    }

    /// A host's IPv4 address on its access link (routers: their first link).
    pub fn addr4(&self, n: Node) -> Ipv4Addr {
        let (l, h) = host_of(n);
        ip4(l, h)
    }

    /// A host's IPv6 address on its access link.
    pub fn addr6(&self, n: Node) -> Ipv6Addr {
        let (l, h) = host_of(n);
        ip6(l, u16::from(h))
    }

    fn link_ifaces(&self, link: u8) -> [(Node, String); 2] {
        let (l, a, b, _) = LINKS
            .iter()
            .find(|x| x.0 == link)
            .copied()
            .expect("links are 1-6");
        [(a, format!("l{l}a")), (b, format!("l{l}b"))]
    }

    /// Takes a link down (both ends).
    pub fn link_down(&self, link: u8) {
        for (n, i) in self.link_ifaces(link) {
            self.ns(n).exec(&["ip", "link", "set", &i, "down"]);
        }
    }

    /// Brings a link back up (both ends). Routes through it are restored.
    pub fn link_up(&self, link: u8) {
        for (n, i) in self.link_ifaces(link) {
            self.ns(n).exec(&["ip", "link", "set", &i, "up"]);
        }
    }

    /// Moves the shaping of `node`'s outgoing traffic off `node`: each of its
    /// links is then shaped at the far end's ingress (an `ifb` device behind
    /// a `mirred` redirect, same tbf), and `node`'s own interfaces keep only
    /// their default qdisc.
    ///
    /// Why: on this kernel a TCP socket whose *own* qdisc drops at enqueue
    /// can be aborted with ETIMEDOUT after bursts of failed retransmissions
    /// (`tests/lab/results/local-qdisc-aborts-2026-12-06`), while forwarded
    /// traffic meeting the same tbf is not. A router whose proxy terminates
    /// connections is such a local sender; with this, its bottleneck sits
    /// beyond its WAN port, as a modem's would.
    pub fn shape_beyond(&self, node: Node) {
        for (l, a, b, core) in LINKS {
            let (far, far_if, own_if) = if a == node {
                (b, format!("l{l}b"), format!("l{l}a"))
            } else if b == node {
                (a, format!("l{l}a"), format!("l{l}b"))
            } else {
                continue;
            };
            self.ns(node)
                .exec(&["tc", "qdisc", "del", "dev", &own_if, "root"]);
            let ns = self.ns(far);
            let ifb = format!("ifb{l}");
            ns.exec(&["ip", "link", "add", &ifb, "type", "ifb"]);
            ns.exec(&["ip", "link", "set", &ifb, "up"]);
            ns.exec(&[
                "tc", "qdisc", "add", "dev", &far_if, "handle", "ffff:", "ingress",
            ]);
            ns.exec(&[
                "tc", "filter", "add", "dev", &far_if, "parent", "ffff:", "protocol", "all", "u32",
                "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", &ifb,
            ]);
            tbf(ns, &ifb, self.rate(core));
        }
    }

    fn rate(&self, core: bool) -> u32 {
        if core {
            self.profile.core_mbit
        } else {
            self.profile.access_mbit
        }
    }
}

/// A tbf of `mbit` on `ifname`'s egress: 10 packets of burst, a queue of
/// ~50 ms at the link rate.
fn tbf(ns: &Netns, ifname: &str, mbit: u32) {
    ns.exec(&[
        "tc",
        "qdisc",
        "replace",
        "dev",
        ifname,
        "root",
        "tbf",
        "rate",
        &format!("{mbit}mbit"),
        "burst",
        "15000",
        "latency",
        "50ms",
    ]);
}

fn host_of(n: Node) -> (u8, u8) {
    match n {
        Node::Client => (1, 2),
        Node::Server => (3, 2),
        Node::Waypoint => (6, 2),
        Node::Rc => (1, 1),
        Node::Rs => (3, 1),
        Node::Rw => (6, 1),
    }
}

/// Counts bytes the server receives on a TCP port, per source address
/// (nftables counters in the server's namespace).
#[derive(Debug)]
pub struct JoinCounter {
    ns: String,
}

impl JoinCounter {
    /// Counts traffic to `port` from each of `sources`.
    pub fn install(ns: &Netns, port: u16, sources: &[IpAddr]) -> JoinCounter {
        let mut rules = String::from(
            "table inet dcoltest {\n chain input {\n  type filter hook input priority 0; policy accept;\n",
        );
        for s in sources {
            let fam = if s.is_ipv4() { "ip" } else { "ip6" };
            rules.push_str(&format!(
                "  {fam} saddr {s} tcp dport {port} counter comment \"{s}\"\n"
            ));
        }
        rules.push_str(" }\n}\n");
        ns.exec(&["nft", &rules]);
        JoinCounter {
            ns: ns.name().to_owned(),
        }
    }

    /// Bytes received from `src` so far.
    pub fn bytes_from(&self, src: IpAddr) -> u64 {
        nft_counter(&self.ns, "dcoltest", "input", &src.to_string(), "bytes")
    }
}

/// The sum of `field` (`bytes` or `packets`) of the counters of the rules
/// commented `comment` in chain `inet <table> <chain>` of namespace `ns`.
pub fn nft_counter(ns: &str, table: &str, chain: &str, comment: &str, field: &str) -> u64 {
    let out = run(&[
        "ip", "netns", "exec", ns, "nft", "-j", "list", "chain", "inet", table, chain,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft -j output");
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["comment"].as_str() == Some(comment))
        .flat_map(|r| r["expr"].as_array().into_iter().flatten())
        .filter_map(|e| e.get("counter").and_then(|c| c[field].as_u64()))
        .sum()
}

/// A running `iperf3 -s` (killed with its namespace, or on drop).
#[derive(Debug)]
pub struct IperfServer {
    pid: u32,
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }
}

/// Starts `iperf3 -s -p PORT` (under `mptcpize run` when `mptcp`).
pub fn iperf3_server(ns: &Netns, port: u16, mptcp: bool) -> IperfServer {
    iperf3_server_with(ns, port, mptcp, &[])
}

/// [`iperf3_server`] with more options (`-J` makes `--get-server-output`
/// hand clients the server's intervals as JSON).
pub fn iperf3_server_with(ns: &Netns, port: u16, mptcp: bool, extra: &[&str]) -> IperfServer {
    let p = port.to_string();
    let mut args = vec![];
    if mptcp {
        args.extend(["mptcpize", "run"]);
    }
    args.extend(["iperf3", "-s", "-p", &p]);
    args.extend(extra);
    let pid = ns.spawn(&args);
    // Wait until it listens.
    for _ in 0..100 {
        let out = ns.output(&["ss", "-Hltn", &format!("sport = :{port}")]);
        if !out.stdout.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    IperfServer { pid }
}

/// The result of one iperf3 client run.
#[derive(Debug, Clone)]
pub struct IperfResult {
    /// Per-interval (start s, end s, bytes).
    pub intervals: Vec<(f64, f64, u64)>,
    /// Bytes over the whole run (sender side).
    pub bytes: u64,
}

impl IperfResult {
    /// Throughput between second 1 and the end, in Mbit/s (as the paper counted).
    pub fn mbps_after_first_second(&self) -> f64 {
        let (bytes, secs) = self
            .intervals
            .iter()
            .filter(|(s, _, _)| *s >= 0.999)
            .fold((0u64, 0f64), |(b, t), (s, e, x)| (b + x, t + (e - s)));
        if secs <= 0.0 {
            return 0.0;
        }
        bytes as f64 * 8.0 / secs / 1e6
    }
}

/// Runs `iperf3 -c DST -p PORT -t SECS -J -C cubic` (under `mptcpize run` when `mptcp`;
/// `-R` when `reverse`).
pub fn iperf3_client(
    ns: &Netns,
    dst: IpAddr,
    port: u16,
    secs: u32,
    mptcp: bool,
    reverse: bool,
) -> Result<IperfResult, String> {
    let (d, p, t) = (dst.to_string(), port.to_string(), secs.to_string());
    let mut args = vec![];
    if mptcp {
        args.extend(["mptcpize", "run"]);
    }
    // CUBIC as in the paper (this machine's default is BBR; root may pick any
    // available algorithm per socket).
    args.extend([
        "iperf3", "-c", &d, "-p", &p, "-t", &t, "-J", "-O", "0", "-C", "cubic",
    ]);
    if reverse {
        args.push("-R");
    }
    let out = ns.output(&args);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "iperf3 output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(err) = v["error"].as_str() {
        return Err(format!("iperf3: {err}"));
    }
    let intervals = v["intervals"]
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

/// Runs `mptcpize run iperf3 -c DST -p PORT -t SECS` in namespace `ns` on its own
/// thread (for tests that change the network while a transfer runs); the
/// handle yields whether iperf3 succeeded.
pub fn iperf3_background(
    ns: &Netns,
    dst: IpAddr,
    port: u16,
    secs: u32,
) -> std::thread::JoinHandle<bool> {
    let ns = ns.name().to_owned();
    std::thread::spawn(move || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "mptcpize",
                "run",
                "iperf3",
                "-c",
                &dst.to_string(),
            ])
            .args([
                "-p",
                &port.to_string(),
                "-t",
                &secs.to_string(),
                "-C",
                "cubic",
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}
