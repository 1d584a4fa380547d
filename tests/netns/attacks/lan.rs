//! A hostile LAN host against the transparent LAN proxy (issue 14, items 9
//! and 10), each run against the real daemon (`dcol run`, client role with
//! `option lan_proxy '1'`) on a router namespace with a LAN bridge, a guest
//! interface, a second LAN subnet and a WAN:
//!
//! ```text
//!   a (192.168.1.10, fd00:1::10) ─┐
//!   b (192.168.1.20, fd00:1::20) ─┼─ br-lan ─┐
//!   m0..m4 (flood tests)          ─┘         │              wan: 198.51.100.1
//!   g (guest: 192.168.3.2, fd00:3::2) ─ guest ─ r (dcol) ─ wan ─ w   2001:db8:1::1
//!   o (other subnet: 192.168.2.2)    ─ lan2 ─┘   default route via w
//! ```
//! `w` is "the Internet" (198.51.100.2, 2001:db8:1::2, which the tests allow
//! with `list proxy_allow_destination`: they are documentation blocks) and
//! also answers, behind the router's default route, on private, CGNAT,
//! link-local and ULA addresses (an ISP modem's 192.168.100.1, ...).
//!
//! Where a firewall is needed, the router runs OpenWrt's real firewall4
//! (tests/src/openwrt.rs) with its shipped config, the feed's nftables
//! includes, a guest zone that forwards only to wan, and the owner's rules
//! as LuCI writes them (a parental-control block by MAC, a blocked port).
//! The proxy never reads that config: it follows the kernel's verdicts.
//!
//! Whether a flow went through the proxy is seen from the destination: a
//! proxied flow arrives from the router's own address, a direct one from the
//! LAN host's; and from the proxy's status counters.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dcol_tests::dcol::{in_ns, main_section, Collective, Daemon, Member, Scratch};
use dcol_tests::lab::need_root;
use dcol_tests::openwrt::{Fw4, ZoneSetup};
use dcol_tests::{run, Netns};
use serde_json::Value;

/// The whoami server's port on every server namespace.
const WHOAMI: u16 = 7000;
/// The echo server's port on `w`.
const ECHO: u16 = 7001;
/// The router's WAN addresses: what a destination sees of a proxied flow.
const WAN4: &str = "198.51.100.1";
const WAN6: &str = "2001:db8:1::1";
/// "The Internet".
const NET4: &str = "198.51.100.2";
const NET6: &str = "2001:db8:1::2";
/// Addresses behind the WAN that are not the Internet (on `w`'s loopback).
const SPECIAL_BEHIND_WAN: [&str; 7] = [
    "10.64.0.2",      // private-use (RFC 1918)
    "172.16.0.2",     // private-use
    "192.168.100.1",  // private-use: the ISP modem's web page
    "100.64.0.2",     // shared address space (CGNAT, RFC 6598)
    "169.254.7.2",    // link local (RFC 3927)
    "fdff:1::2",      // unique local (RFC 4193)
    "64:ff9b::a40:2", // NAT64 form of 10.64.0.2
];

fn tool() -> String {
    format!("{}/../tests/tools/tcpcheck.py", env!("CARGO_MANIFEST_DIR"))
}

/// Runs tcpcheck.py in `ns`; its JSON line.
fn check(ns: &Netns, args: &[&str]) -> Value {
    let t = tool();
    let mut a = vec!["python3", t.as_str()];
    a.extend_from_slice(args);
    let out = in_ns(ns.name(), &a);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// The address `host`'s whoami server saw for a connection from `ns`, or the
/// connection's error.
fn whoami(ns: &Netns, host: &str) -> Result<String, String> {
    let v = check(ns, &["whoami", host, &WHOAMI.to_string()]);
    match v["seen"].as_str() {
        Some(s) if !s.is_empty() => Ok(s.to_owned()),
        _ => Err(v.to_string()),
    }
}

/// Waits until `port` listens in `ns`.
fn wait_listen(ns: &Netns, port: u16) {
    for _ in 0..200 {
        let out = ns.output(&["ss", "-Hltn", &format!("sport = :{port}")]);
        if !out.stdout.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {port} in {}", ns.name());
}

/// Adds address `cidr` (IPv4 or IPv6, no DAD) to `dev` in `ns`.
fn addr(ns: &Netns, dev: &str, cidr: &str) {
    let fam = if cidr.contains(':') { "-6" } else { "-4" };
    ns.exec(&["ip", fam, "addr", "add", cidr, "dev", dev, "nodad"]);
}

/// A host namespace whose `eth0` is the peer of `r`'s `port`, with
/// addresses `v4`/24 and `v6`/64 and default routes via `gw4` and `gw6`.
fn host(r: &Netns, tag: &str, port: &str, v4: &str, v6: &str, gw: (&str, &str)) -> Netns {
    let ns = Netns::new(tag);
    let peer = ["name", "eth0", "netns", ns.name()];
    let mut cmd = vec!["ip", "link", "add", port, "netns", r.name()];
    cmd.extend(["type", "veth", "peer"]);
    cmd.extend(peer);
    run(&cmd);
    addr(&ns, "eth0", &format!("{v4}/24"));
    addr(&ns, "eth0", &format!("{v6}/64"));
    ns.exec(&["ip", "link", "set", "eth0", "up"]);
    ns.exec(&["ip", "-4", "route", "add", "default", "via", gw.0]);
    ns.exec(&["ip", "-6", "route", "add", "default", "via", gw.1]);
    ns
}

/// A LAN host: a namespace whose `eth0` is a port of the router's `br-lan`.
fn lan_host(r: &Netns, tag: &str, v4: &str, v6: &str) -> Netns {
    let port = format!("p{tag}");
    let ns = host(r, tag, &port, v4, v6, ("192.168.1.1", "fd00:1::1"));
    r.exec(&["ip", "link", "set", &port, "master", "br-lan"]);
    r.exec(&["ip", "link", "set", &port, "up"]);
    ns
}

/// A host on its own routed link to the router (`r`'s `ifname`, with
/// addresses `gw`): `v4`/24 and `v6`/64.
fn routed_host(r: &Netns, tag: &str, ifname: &str, v: (&str, &str), gw: (&str, &str)) -> Netns {
    let ns = host(r, tag, ifname, v.0, v.1, gw);
    addr(r, ifname, &format!("{}/24", gw.0));
    addr(r, ifname, &format!("{}/64", gw.1));
    r.exec(&["ip", "link", "set", ifname, "up"]);
    ns
}

/// The home network; the daemon is dropped first (SIGTERM while the
/// namespaces exist), the scratch directory last.
struct Home {
    daemon: Option<Daemon>,
    fw: Option<Fw4>,
    r: Netns,
    a: Netns,
    b: Netns,
    g: Netns,
    _o: Netns,
    _w: Netns,
    member: Member,
    collective: Collective,
    scratch: Scratch,
}

impl Home {
    fn new() -> Home {
        let r = Netns::new("r");
        r.exec(&["ip", "link", "add", "br-lan", "type", "bridge"]);
        addr(&r, "br-lan", "192.168.1.1/24");
        addr(&r, "br-lan", "fd00:1::1/64");
        r.exec(&["ip", "link", "set", "br-lan", "up"]);
        let a = lan_host(&r, "a", "192.168.1.10", "fd00:1::10");
        let b = lan_host(&r, "b", "192.168.1.20", "fd00:1::20");
        let g = routed_host(
            &r,
            "g",
            "guest",
            ("192.168.3.2", "fd00:3::2"),
            ("192.168.3.1", "fd00:3::1"),
        );
        let o = routed_host(
            &r,
            "o",
            "lan2",
            ("192.168.2.2", "fd00:2::2"),
            ("192.168.2.1", "fd00:2::1"),
        );
        // The WAN: w answers for the Internet and, behind it, special space.
        let w = routed_host(&r, "w", "wan", (NET4, NET6), (WAN4, WAN6));
        for s in SPECIAL_BEHIND_WAN {
            let p = if s.contains(':') { "128" } else { "32" };
            addr(&w, "lo", &format!("{s}/{p}"));
        }
        r.exec(&["ip", "route", "add", "default", "via", NET4]);
        r.exec(&["ip", "-6", "route", "add", "default", "via", NET6]);
        r.sysctl("net.ipv4.ip_forward", "1");
        r.sysctl("net.ipv6.conf.all.forwarding", "1");
        // Servers: whoami everywhere a LAN host may try to go, echo on w.
        let t = tool();
        for ns in [&w, &o, &b] {
            ns.spawn(&["python3", &t, "whoami-server", &WHOAMI.to_string()]);
        }
        w.spawn(&["python3", &t, "echo-server", &ECHO.to_string()]);
        for ns in [&w, &o, &b] {
            wait_listen(ns, WHOAMI);
        }
        wait_listen(&w, ECHO);
        let scratch = Scratch::new("attack-lan");
        let collective = Collective::new(scratch.path(), "coop");
        let member = collective.admit("bob", "client", 30);
        Home {
            daemon: None,
            fw: None,
            r,
            a,
            b,
            g,
            _o: o,
            _w: w,
            member,
            collective,
            scratch,
        }
    }

    /// The UCI file: the LAN proxy on `br-lan` and `guest`, `extra` in the
    /// client section.
    fn config(&self, extra: &str) -> String {
        let sock = self.scratch.path().join("cl.sock");
        let state = self.scratch.path().join("cl-state");
        format!(
            "{}config client 'client'\n\toption enabled '1'\n\toption lan_proxy '1'\n\tlist lan_interface 'br-lan'\n\tlist lan_interface 'guest'\n\toption detour_policy 'none'\n\tlist proxy_allow_destination '198.51.100.0/24'\n\tlist proxy_allow_destination '2001:db8:1::/64'\n{extra}\n",
            main_section(&self.member, &self.collective, &sock, &state)
        )
    }

    /// Starts the daemon on the router; with `nofile`, under that open-file
    /// limit.
    fn start(&mut self, extra: &str, nofile: Option<u64>) {
        let cfg = self.config(extra);
        let sock = self.scratch.path().join("cl.sock");
        self.daemon = Some(Daemon::start_with_nofile(
            self.r.name(),
            self.scratch.path(),
            "cl",
            &cfg,
            &sock,
            nofile,
        ));
    }

    fn dcol(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon started")
    }

    fn lan_proxy(&self) -> Value {
        self.dcol().status()["client"]["lan_proxy"].clone()
    }

    fn accepted(&self) -> u64 {
        self.lan_proxy()["accepted"].as_u64().expect("accepted")
    }

    /// A LAN host's whoami to the Internet until one arrives through the
    /// proxy (the first flow to a destination meets the router's firewall
    /// directly; the proxy takes the next ones).
    fn until_proxied(&self, ns: &Netns, host: &str, wan: &str) {
        let t0 = Instant::now();
        let mut seen = Vec::new();
        while t0.elapsed() < Duration::from_secs(8) {
            let s = whoami(ns, host);
            if s.as_deref() == Ok(wan) {
                return;
            }
            seen.push(s);
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "{} -> {host}: never proxied: {seen:?}\n{}",
            ns.name(),
            self.dcol().log_text()
        );
    }

    /// Loads (or reloads) the router's firewall: OpenWrt's firewall4 with
    /// its shipped config (zone lan on `br-lan` and `lan2`, zone wan on
    /// `wan`), the feed's includes, IPv4 not masqueraded (the ISP routes the
    /// LAN's prefix: a destination then tells a direct flow from a proxied
    /// one), a guest zone on `guest` with input `guest_input` (`ACCEPT` or
    /// `REJECT`) and forwarding to wan only, then `sections` (`config rule`
    /// ... as the owner adds them in LuCI). A reload replaces fw4's table at
    /// once, as on a router.
    fn firewall(&mut self, guest_input: &str, sections: &str) {
        let setup = ZoneSetup::new(&["br-lan", "lan2"], &["wan"])
            .batch("set firewall.@zone[1].masq='0'")
            .sections(&format!(
                "config zone\n\toption name 'guest'\n\tlist device 'guest'\n\toption input '{guest_input}'\n\toption output 'ACCEPT'\n\toption forward 'REJECT'\n\nconfig forwarding\n\toption src 'guest'\n\toption dest 'wan'\n\n{sections}"
            ));
        match &self.fw {
            Some(fw) => fw.reconfigure(&setup),
            None => self.fw = Some(Fw4::load(&self.r, &setup)),
        }
    }
}

/// A flood of held connections from `ns` (tcpcheck.py `flood`); dropping
/// it closes them.
struct Flood {
    child: Child,
    /// Per source: connected, failed.
    counts: Value,
}

impl Flood {
    fn start(ns: &Netns, host: &str, port: u16, spec: &str) -> Flood {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                "python3",
                &tool(),
                "flood",
                host,
            ])
            .arg(port.to_string())
            .arg(spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("flood");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("flood output");
        let counts = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
        Flood { child, counts }
    }

    /// Closes the connections and waits for the process.
    fn end(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` connections from `ns` (source `src`) held at once, each echoing: how
/// many echoed.
fn echoed(ns: &Netns, host: &str, src: &str, n: u32) -> u64 {
    let v = check(
        ns,
        &[
            "many-client",
            host,
            &ECHO.to_string(),
            &format!("{src}:{n}"),
        ],
    );
    v[src]["echoed"].as_u64().unwrap_or(0)
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn lan_proxy_intercepts_only_flows_routed_to_the_internet() {
    if !need_root() {
        return;
    }
    let mut h = Home::new();
    h.start("", None);
    // The proxy works here: the Internet gets the router's address.
    h.until_proxied(&h.a, NET4, WAN4);
    h.until_proxied(&h.a, NET6, WAN6);
    let before = h.accepted();
    // Another LAN subnet, private, CGNAT, link-local and ULA space behind
    // the WAN: the destination sees the LAN host itself, every time.
    let mut dests = vec!["192.168.2.2", "fd00:2::2"];
    dests.extend(SPECIAL_BEHIND_WAN);
    for d in dests {
        let own = if d.contains(':') {
            "fd00:1::10"
        } else {
            "192.168.1.10"
        };
        for round in 0..3 {
            assert_eq!(
                whoami(&h.a, d).as_deref(),
                Ok(own),
                "{d}, connection {round}: not from the LAN host itself\n{}",
                h.dcol().log_text()
            );
        }
    }
    assert_eq!(h.accepted(), before, "the proxy accepted flows it must not");
    // The router's own services are not intercepted either.
    let lp = h.lan_proxy();
    assert_eq!(lp["refused_direct"], 0, "{lp}");
    assert_eq!(lp["wan_interfaces"], serde_json::json!(["wan"]), "{lp}");
    // Without default routes nothing is the WAN: the Internet's own subnet,
    // still reachable on the link, is no longer intercepted; with them back,
    // it is again.
    h.r.exec(&["ip", "-4", "route", "del", "default"]);
    h.r.exec(&["ip", "-6", "route", "del", "default"]);
    h.dcol()
        .wait_status(Duration::from_secs(5), |s| {
            s["client"]["lan_proxy"]["wan_interfaces"] == serde_json::json!([])
        })
        .unwrap_or_else(|s| panic!("WAN kept: {}", s["client"]["lan_proxy"]));
    assert_eq!(whoami(&h.a, NET4).as_deref(), Ok("192.168.1.10"));
    assert_eq!(whoami(&h.a, NET6).as_deref(), Ok("fd00:1::10"));
    h.r.exec(&["ip", "-4", "route", "add", "default", "via", NET4]);
    h.r.exec(&["ip", "-6", "route", "add", "default", "via", NET6]);
    h.until_proxied(&h.a, NET4, WAN4);
    h.until_proxied(&h.a, NET6, WAN6);
}

/// Guest to LAN, `rounds` tries to each LAN address: never reached.
fn guest_isolated(h: &Home, rounds: u32) {
    let before = h.accepted();
    for d in ["192.168.1.20", "fd00:1::20", "192.168.2.2", "fd00:2::2"] {
        for round in 0..rounds {
            let r = whoami(&h.g, d);
            assert!(
                r.is_err(),
                "guest reached {d} (connection {round}): {r:?}\n{}",
                h.dcol().log_text()
            );
        }
    }
    assert_eq!(
        h.accepted(),
        before,
        "the proxy took guest flows to the LAN"
    );
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn guest_cannot_reach_the_lan_through_the_proxy() {
    if !need_root() {
        return;
    }
    let mut h = Home::new();
    // A guest zone that may use the router's services (input accept) but
    // has no forwarding to lan.
    h.firewall("ACCEPT", "");
    h.start("", None);
    // The guest's Internet is proxied, and so is the LAN's.
    h.until_proxied(&h.g, NET4, WAN4);
    h.until_proxied(&h.g, NET6, WAN6);
    h.until_proxied(&h.b, NET4, WAN4);
    guest_isolated(&h, 3);
    // The usual guest zone: input rejected. The feed's include accepts the
    // flows redirected to the proxy (and only those): the guest's Internet
    // is still proxied, the LAN still out of reach.
    h.firewall("REJECT", "");
    h.until_proxied(&h.g, NET4, WAN4);
    h.until_proxied(&h.g, NET6, WAN6);
    guest_isolated(&h, 2);
    // The proxy's port itself stays closed to the guest.
    let v = check(&h.g, &["whoami", "192.168.3.1", "7448"]);
    assert!(v["error"].is_string(), "{v}");
    assert_eq!(
        h.lan_proxy()["refused_direct"],
        0,
        "the guest reached the proxy port"
    );
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn a_device_the_firewall_blocks_stays_blocked() {
    if !need_root() {
        return;
    }
    let mut h = Home::new();
    h.firewall("REJECT", "");
    h.start("", None);
    // Before the block: a's Internet goes through the proxy.
    h.until_proxied(&h.a, NET4, WAN4);
    h.until_proxied(&h.a, NET6, WAN6);
    // The owner blocks device a (a parental-control rule: src lan, dest
    // wan, src_mac, REJECT) while its flows are being proxied.
    let mac = in_ns(h.a.name(), &["cat", "/sys/class/net/eth0/address"]);
    h.firewall(
        "REJECT",
        &format!(
            "config rule\n\toption name 'Block-a'\n\toption src 'lan'\n\toption dest 'wan'\n\toption src_mac '{}'\n\toption target 'REJECT'\n",
            mac.trim()
        ),
    );
    let before = h.accepted();
    for d in [NET4, NET6] {
        for round in 0..4 {
            let r = whoami(&h.a, d);
            assert!(
                r.is_err(),
                "blocked device reached {d} (connection {round}): {r:?}\n{}",
                h.dcol().log_text()
            );
        }
    }
    assert_eq!(
        h.accepted(),
        before,
        "the proxy took a blocked device's flows"
    );
    // Another device is not affected.
    h.until_proxied(&h.b, NET4, WAN4);
    // A block by destination port for everyone.
    h.firewall(
        "REJECT",
        "config rule\n\toption name 'No-7000'\n\toption src 'lan'\n\toption dest 'wan'\n\toption proto 'tcp'\n\toption dest_port '7000'\n\toption target 'REJECT'\n",
    );
    let before = h.accepted();
    for ns in [&h.a, &h.b] {
        for round in 0..3 {
            let r = whoami(ns, NET4);
            assert!(r.is_err(), "port block passed (connection {round}): {r:?}");
        }
    }
    assert_eq!(h.accepted(), before, "the proxy took blocked flows");
    // Unblocked: the proxy takes a's flows again.
    h.firewall("REJECT", "");
    h.until_proxied(&h.a, NET4, WAN4);
}

/// The Internet in the family of address `s`.
fn internet_for(s: &str) -> &'static str {
    if s.contains(':') {
        NET6
    } else {
        NET4
    }
}

/// Extra LAN addresses of `a`: `n` IPv4 and `n` IPv6 (one /64).
fn many_addresses(h: &Home, n: u32) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let v4 = format!("192.168.1.{}", 100 + i);
        let v6 = format!("fd00:1::{:x}", 0x100 + i);
        h.a.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
        h.a.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        out.push(v4);
        out.push(v6);
    }
    out
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn one_device_with_many_addresses_cannot_exhaust_the_proxy() {
    if !need_root() {
        return;
    }
    let mut h = Home::new();
    // 2,048 descriptors: the proxy's cap is derived from them.
    h.start("\toption max_conns_per_host '100'\n", Some(2048));
    h.until_proxied(&h.b, NET4, WAN4);
    h.until_proxied(&h.b, NET6, WAN6);
    let addrs = many_addresses(&h, 10);
    // Teach the proxy every source first, so the flood is intercepted.
    for s in &addrs {
        let _ = check(
            &h.a,
            &[
                "many-client",
                internet_for(s),
                &ECHO.to_string(),
                &format!("{s}:1"),
            ],
        );
    }
    // 3,000 connections from one device: 150 from each of 20 addresses.
    let spec = addrs.iter().map(|s| format!("{s}:150")).collect::<Vec<_>>();
    let v4: Vec<_> = spec.iter().filter(|s| !s.contains("::")).cloned().collect();
    let v6: Vec<_> = spec.iter().filter(|s| s.contains("::")).cloned().collect();
    let t0 = Instant::now();
    let f4 = Flood::start(&h.a, NET4, ECHO, &v4.join(","));
    let f6 = Flood::start(&h.a, NET6, ECHO, &v6.join(","));
    eprintln!(
        "flood of 3,000 held in {:?}: {} {}",
        t0.elapsed(),
        f4.counts,
        f6.counts
    );
    // The other device's connections all work, over IPv4 and IPv6.
    for d in [NET4, NET6] {
        let r = whoami(&h.b, d);
        assert!(
            r.is_ok(),
            "b -> {d} during the flood: {r:?}\n{}",
            h.lan_proxy()
        );
    }
    assert_eq!(
        echoed(&h.b, NET4, "192.168.1.20", 40),
        40,
        "{}",
        h.lan_proxy()
    );
    assert_eq!(
        echoed(&h.b, NET6, "fd00:1::20", 40),
        40,
        "{}",
        h.lan_proxy()
    );
    let lp = h.lan_proxy();
    eprintln!("during the flood: {lp}");
    assert!(
        lp["active"].as_u64().unwrap() <= 100 + 80,
        "one device holds more than its 100: {lp}"
    );
    // And through the proxy, not only around it.
    h.until_proxied(&h.b, NET4, WAN4);
    f4.end();
    f6.end();
    // The flood's own connections all opened: the excess went direct.
    h.until_proxied(&h.a, NET4, WAN4);
    h.until_proxied(&h.b, NET6, WAN6);
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn one_ipv6_prefix_has_its_own_cap() {
    if !need_root() {
        return;
    }
    let mut h = Home::new();
    h.start("\toption max_conns_per_prefix '30'\n", None);
    h.until_proxied(&h.b, NET4, WAN4);
    h.until_proxied(&h.b, NET6, WAN6);
    let addrs: Vec<String> = many_addresses(&h, 8)
        .into_iter()
        .filter(|a| a.contains(':'))
        .collect();
    for s in &addrs {
        let _ = check(
            &h.a,
            &["many-client", NET6, &ECHO.to_string(), &format!("{s}:1")],
        );
    }
    // 80 connections from 8 addresses of the LAN's /64: 30 are proxied, the
    // rest go direct; all of them work.
    let before = h.accepted();
    let spec: Vec<String> = addrs.iter().map(|s| format!("{s}:10")).collect();
    let f = Flood::start(&h.a, NET6, ECHO, &spec.join(","));
    let connected: u64 = addrs
        .iter()
        .map(|s| f.counts[s]["connected"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(connected, 80, "{}", f.counts);
    assert_eq!(h.accepted() - before, 30, "{}", h.lan_proxy());
    // The prefix is full: b's IPv6 goes direct, its IPv4 is still proxied.
    assert_eq!(whoami(&h.b, NET6).as_deref(), Ok("fd00:1::20"));
    assert_eq!(whoami(&h.b, NET4).as_deref(), Ok(WAN4));
    f.end();
    h.until_proxied(&h.b, NET6, WAN6);
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn many_devices_pause_interception_and_it_resumes() {
    if !need_root() {
        return;
    }
    let mut h = Home::new();
    // Five more devices, each with its own MAC.
    let ms: Vec<Netns> = (0..5)
        .map(|i| {
            lan_host(
                &h.r,
                &format!("m{i}"),
                &format!("192.168.1.{}", 50 + i),
                &format!("fd00:1::{:x}", 0x50 + i),
            )
        })
        .collect();
    h.start("\toption max_conns_per_host '100'\n", Some(2048));
    h.until_proxied(&h.b, NET4, WAN4);
    for (i, m) in ms.iter().enumerate() {
        let src = format!("192.168.1.{}", 50 + i);
        let _ = check(
            m,
            &["many-client", NET4, &ECHO.to_string(), &format!("{src}:1")],
        );
    }
    // 5 x 100 held connections: more than the proxy holds.
    let floods: Vec<Flood> = ms
        .iter()
        .enumerate()
        .map(|(i, m)| Flood::start(m, NET4, ECHO, &format!("192.168.1.{}:100", 50 + i)))
        .collect();
    // b still works (proxied or around the proxy, never refused).
    let r = whoami(&h.b, NET4);
    assert!(r.is_ok(), "b during the flood: {r:?}\n{}", h.lan_proxy());
    assert_eq!(
        echoed(&h.b, NET4, "192.168.1.20", 40),
        40,
        "{}",
        h.lan_proxy()
    );
    let lp = h
        .dcol()
        .wait_status(Duration::from_secs(5), |s| {
            s["client"]["lan_proxy"]["paused"] == true
        })
        .unwrap_or_else(|s| panic!("not paused: {}", s["client"]["lan_proxy"]));
    eprintln!("paused: {}", lp["client"]["lan_proxy"]);
    let text = h.dcol().status_text();
    assert!(text.contains("interception paused"), "{text}");
    // Paused: b's new flows go around the proxy.
    assert_eq!(whoami(&h.b, NET4).as_deref(), Ok("192.168.1.20"));
    let lp = h.lan_proxy();
    let cap = lp["max_conns"].as_u64().unwrap_or(u64::MAX);
    assert!(
        cap < 2048 / 4,
        "cap {cap} not well below the open-file limit: {lp}"
    );
    let log = h.dcol().log_text();
    assert_eq!(
        log.matches("interception paused").count(),
        1,
        "one log line per episode:\n{log}"
    );
    for f in floods {
        f.end();
    }
    // The flood over: interception resumes.
    h.dcol()
        .wait_status(Duration::from_secs(10), |s| {
            s["client"]["lan_proxy"]["paused"] == false
        })
        .unwrap_or_else(|s| panic!("still paused: {}", s["client"]["lan_proxy"]));
    h.until_proxied(&h.b, NET4, WAN4);
    let lp = h.lan_proxy();
    assert_eq!(lp["pauses"], 1, "{lp}");
    assert!(h.dcol().log_text().contains("interception resumed"));
    drop(ms);
}
