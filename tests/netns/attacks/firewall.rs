//! Firewall attacks on a waypoint router (issue 14 items 1-3): hosts on the
//! Internet and members aiming at the LAN behind the waypoint, or at the
//! router itself, through its NAT tunnel ports; the owner's own traffic to
//! ports in that range. The router runs the real `dcol` waypoint and the real
//! firewall4 with OpenWrt's shipped zones (lan ACCEPT; wan input REJECT,
//! forward REJECT, masquerade) plus the feed's includes, and a port forward
//! (wan TCP 8080 -> LAN host:80) like many homes have: fw4 then accepts
//! every DNATed flow from the WAN (`ct status dnat accept`), which a tunnel
//! DNATed to the wrong place must not profit from.
//!
//! ```text
//!  ISP segment 11.14.0.0/24, 2a0e:14:ff::/64 (a bridge in `isp`, gateway .1/::1)
//!
//!   attacker .3 ─┐
//!   member   .4 ─┼─ br0 ── wan ─ router .2 ─ lan ── LAN host 192.168.14.2
//!   server   .5 ─┘         (dcol waypoint, fw4)      11.15.0.2 (public subnet)
//!                                                    2a0e:14:1::2 (global)
//! ```
//! The ISP routes the router's public LAN subnet and IPv6 prefix to it; the
//! attacker, a neighbour on the ISP's segment, also routes 192.168.14.0/24 to
//! it. Each refusal is checked against the same connection succeeding where
//! it should (without the firewall, or to the WAN), so these tests fail when
//! the topology is broken rather than pass.

#[path = "../lease.rs"]
mod lease;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dcol::proto::{Nonce, Outcome, RequestKind};
use dcol_tests::dcol::{in_ns, main_section, Collective, Daemon, Member, Scratch};
use dcol_tests::lab::{in_netns, need_root, SIGNAL_PORT};
use dcol_tests::openwrt::{Fw4, ZoneSetup};
use dcol_tests::{iperf3_client, iperf3_server, nft_counter, veth_pair, JoinCounter, Netns};

const ROUTER_WAN4: Ipv4Addr = Ipv4Addr::new(11, 14, 0, 2);
const ATTACKER4: Ipv4Addr = Ipv4Addr::new(11, 14, 0, 3);
const MEMBER4: Ipv4Addr = Ipv4Addr::new(11, 14, 0, 4);
const SERVER4: Ipv4Addr = Ipv4Addr::new(11, 14, 0, 5);
const ROUTER_LAN4: Ipv4Addr = Ipv4Addr::new(192, 168, 14, 1);
const LAN4: Ipv4Addr = Ipv4Addr::new(192, 168, 14, 2);
const LAN_PUBLIC4: Ipv4Addr = Ipv4Addr::new(11, 15, 0, 2);
const ROUTER_WAN6: Ipv6Addr = Ipv6Addr::new(0x2a0e, 0x14, 0xff, 0, 0, 0, 0, 2);
const MEMBER6: Ipv6Addr = Ipv6Addr::new(0x2a0e, 0x14, 0xff, 0, 0, 0, 0, 4);
const LAN6: Ipv6Addr = Ipv6Addr::new(0x2a0e, 0x14, 1, 0, 0, 0, 0, 2);

/// The LAN host's addresses an attacker aims at.
const LAN_TARGETS: [IpAddr; 3] = [IpAddr::V4(LAN4), IpAddr::V4(LAN_PUBLIC4), IpAddr::V6(LAN6)];

/// The topology of the diagram, the collective (alice runs the waypoint,
/// bob is a member) and the files of the run. Fields drop in order: daemons
/// before the namespaces, the scratch directory last.
struct Home {
    waypoint: Option<Daemon>,
    client: Option<Daemon>,
    router: Netns,
    attacker: Netns,
    member: Netns,
    server: Netns,
    lan: Netns,
    _isp: Netns,
    alice: Member,
    bob: Member,
    collective: Collective,
    scratch: Scratch,
}

/// Adds addresses (with prefix) to `dev` in `ns`; IPv6 without duplicate
/// address detection.
fn addrs(ns: &Netns, dev: &str, list: &[&str]) {
    for a in list {
        let mut args = vec!["ip", "addr", "add", *a, "dev", dev];
        if a.contains(':') {
            args.push("nodad");
        }
        ns.exec(&args);
    }
}

/// Adds routes `(destination, via)` in `ns`.
fn routes(ns: &Netns, list: &[(&str, &str)]) {
    for (dst, via) in list {
        ns.exec(&["ip", "route", "add", dst, "via", via]);
    }
}

fn home() -> Home {
    let isp = Netns::new("isp");
    let router = Netns::new("router");
    let attacker = Netns::new("attacker");
    let member = Netns::new("member");
    let server = Netns::new("server");
    let lan = Netns::new("lanhost");
    for ns in [&isp, &router, &attacker, &member, &server, &lan] {
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
    }
    isp.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
    isp.exec(&["ip", "link", "set", "br0", "up"]);
    addrs(&isp, "br0", &["11.14.0.1/24", "2a0e:14:ff::1/64"]);
    let segment = [
        (&router, "wan", "11.14.0.2/24", "2a0e:14:ff::2/64"),
        (&attacker, "eth0", "11.14.0.3/24", "2a0e:14:ff::3/64"),
        (&member, "eth0", "11.14.0.4/24", "2a0e:14:ff::4/64"),
        (&server, "eth0", "11.14.0.5/24", "2a0e:14:ff::5/64"),
    ];
    for (i, (ns, dev, a4, a6)) in segment.into_iter().enumerate() {
        let port = format!("p{i}");
        veth_pair(ns, dev, &isp, &port);
        isp.exec(&["ip", "link", "set", &port, "master", "br0"]);
        addrs(ns, dev, &[a4, a6]);
        routes(
            ns,
            &[("default", "11.14.0.1"), ("default", "2a0e:14:ff::1")],
        );
    }
    veth_pair(&router, "lan", &lan, "eth0");
    addrs(
        &router,
        "lan",
        &["192.168.14.1/24", "11.15.0.1/24", "2a0e:14:1::1/64"],
    );
    addrs(
        &lan,
        "eth0",
        &["192.168.14.2/24", "11.15.0.2/24", "2a0e:14:1::2/64"],
    );
    routes(
        &lan,
        &[("default", "192.168.14.1"), ("default", "2a0e:14:1::1")],
    );
    routes(
        &isp,
        &[
            ("11.15.0.0/24", "11.14.0.2"),
            ("2a0e:14:1::/64", "2a0e:14:ff::2"),
        ],
    );
    // Hostile neighbours on the ISP's segment aim at the private LAN too.
    for ns in [&attacker, &member] {
        routes(ns, &[("192.168.14.0/24", "11.14.0.2")]);
    }
    for ns in [&isp, &router] {
        ns.sysctl("net.ipv4.ip_forward", "1");
        ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    }
    let scratch = Scratch::new("attacks-fw");
    let collective = Collective::new(scratch.path(), "coop");
    let alice = collective.admit("alice", "client,waypoint", 30);
    let bob = collective.admit("bob", "client", 30);
    Home {
        waypoint: None,
        client: None,
        router,
        attacker,
        member,
        server,
        lan,
        _isp: isp,
        alice,
        bob,
        collective,
        scratch,
    }
}

/// OpenWrt's shipped firewall on the router's `lan` and `wan`, with the
/// rule `dcol.init` publishes for the signaling port.
fn shipped_firewall() -> ZoneSetup {
    ZoneSetup::new(&["lan"], &["wan"]).dcol_signaling(SIGNAL_PORT)
}

/// [`shipped_firewall`] and a port forward.
fn router_firewall() -> ZoneSetup {
    shipped_firewall().sections(
        "config redirect\n\toption name 'web'\n\toption src 'wan'\n\toption proto 'tcp'\n\
             \toption src_dport '8080'\n\toption dest 'lan'\n\toption dest_ip '192.168.14.2'\n\
             \toption dest_port '80'\n\toption target 'DNAT'\n\toption reflection '0'\n",
    )
}

impl Home {
    fn sock(&self, tag: &str) -> PathBuf {
        self.scratch.path().join(format!("{tag}.sock"))
    }

    /// alice's waypoint on the router: tunnel ports 40000-40999, `extra` in
    /// its waypoint section.
    fn start_waypoint(&mut self, extra: &str) {
        let state = self.scratch.path().join("wp-state");
        let cfg = format!(
            "{}config waypoint 'waypoint'\n\toption enabled '1'\n\tlist listen '0.0.0.0:{SIGNAL_PORT}'\n\
             \tlist listen '[::]:{SIGNAL_PORT}'\n\toption nat_ports '40000-40999'\n\toption lease_s '60'\n\
             \toption donation_file '{}'\n{extra}\n",
            main_section(&self.alice, &self.collective, &self.sock("wp"), &state),
            self.scratch.path().join("wp-donated").display()
        );
        self.waypoint = Some(Daemon::start(
            self.router.name(),
            self.scratch.path(),
            "wp",
            &cfg,
            &self.sock("wp"),
        ));
    }

    /// bob's client daemon on the member host, with alice's waypoint as its
    /// one peer (`tunnel` nat or vpn) and `extra` in its client section.
    fn start_client(&mut self, tunnel: &str, extra: &str) {
        let state = self.scratch.path().join("cl-state");
        let cfg = format!(
            "{}config client 'client'\n\toption enabled '1'\n\toption max_detours '2'\n\
             \toption renew_interval_s '1'\n\toption liveness_misses '3'\n{extra}\n\
             config peer\n\toption name 'alice'\n\toption address '{ROUTER_WAN4}:{SIGNAL_PORT}'\n\
             \toption tunnel '{tunnel}'\n",
            main_section(&self.bob, &self.collective, &self.sock("cl"), &state),
        );
        self.client = Some(Daemon::start(
            self.member.name(),
            self.scratch.path(),
            "cl",
            &cfg,
            &self.sock("cl"),
        ));
    }

    /// bob asks alice's waypoint for a NAT tunnel to `dest` (nonce byte
    /// `nonce`); the granted port.
    fn lease(&self, dest: SocketAddr, nonce: u8) -> u16 {
        let kind = RequestKind::NatDetour { destination: dest };
        match self.request(kind, nonce) {
            Outcome::Granted { port, .. } => port,
            o => panic!("no tunnel to {dest}: {o:?}"),
        }
    }

    fn request(&self, kind: RequestKind, nonce: u8) -> Outcome {
        let wp = SocketAddr::new(ROUTER_WAN4.into(), SIGNAL_PORT);
        lease::signed_request(self.member.name(), &self.bob, wp, kind, nonce)
    }

    fn wp_log(&self) -> String {
        self.waypoint
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default()
    }
}

/// A TCP listener on `addr` inside `ns`, non-blocking (see [`arrivals`]).
fn listen(ns: &Netns, addr: SocketAddr) -> TcpListener {
    let l = in_netns(ns, move || {
        TcpListener::bind(addr).unwrap_or_else(|e| panic!("listen {addr}: {e}"))
    });
    l.set_nonblocking(true).expect("non-blocking");
    l
}

/// The peers of the connections `l` has accepted so far.
fn arrivals(l: &TcpListener) -> Vec<SocketAddr> {
    let mut v = vec![];
    while let Ok((_, peer)) = l.accept() {
        v.push(peer);
    }
    v
}

/// A TCP connection from `ns` to `to` (2 s to connect), or why it failed.
fn connect(ns: &Netns, to: SocketAddr) -> Result<TcpStream, ErrorKind> {
    in_netns(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(|e| e.kind())
    })
}

/// `from` connects to `to` where `l` listens: the peer `l` saw, or why the
/// connection failed (and then `l` saw nothing).
fn reach(from: &Netns, l: &TcpListener, to: SocketAddr) -> Result<IpAddr, ErrorKind> {
    match connect(from, to) {
        Ok(_c) => {
            // The handshake is done; the client's last ACK may still be on
            // its way to the listener.
            let t0 = Instant::now();
            let mut got = arrivals(l);
            while got.is_empty() && t0.elapsed() < Duration::from_secs(1) {
                std::thread::sleep(Duration::from_millis(10));
                got = arrivals(l);
            }
            assert_eq!(got.len(), 1, "{to}: connected, accepted {got:?}");
            Ok(got[0].ip())
        }
        Err(e) => {
            let got = arrivals(l);
            assert!(got.is_empty(), "{to}: failed ({e:?}) but {got:?} arrived");
            Err(e)
        }
    }
}

fn sock(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// Listeners on port `port` of each LAN target address.
fn lan_listeners(h: &Home, port: u16) -> Vec<(SocketAddr, TcpListener)> {
    LAN_TARGETS
        .iter()
        .map(|ip| {
            let a = sock(*ip, port);
            (a, listen(&h.lan, a))
        })
        .collect()
}

/// `from` connects to each LAN target on `port`; panics unless every attempt
/// fails (unless `open`: unless each succeeds).
fn lan_reachable(h: &Home, from: &Netns, port: u16, open: bool, what: &str) {
    for (to, l) in lan_listeners(h, port) {
        let got = reach(from, &l, to);
        assert_eq!(got.is_ok(), open, "{what}: {to}: {got:?}\n{}", h.wp_log());
    }
}

/// `conntrack -L` in the router for TCP flows (IPv4 and IPv6) to original
/// destination port `port`.
fn flows_to(h: &Home, port: u16) -> String {
    let p = port.to_string();
    ["ipv4", "ipv6"]
        .iter()
        .map(|f| {
            in_ns(
                h.router.name(),
                &[
                    "conntrack",
                    "-L",
                    "-f",
                    f,
                    "-p",
                    "tcp",
                    "--orig-port-dst",
                    &p,
                ],
            )
        })
        .collect()
}

/// dcol's conntrack mark bits (`sys::nft::DETOUR_CT_MARK`) in a
/// `conntrack -L` line.
fn detour_marked(line: &str) -> bool {
    line.split_whitespace()
        .filter_map(|w| w.strip_prefix("mark="))
        .filter_map(|m| m.parse::<u32>().ok())
        .any(|m| m & 0x00dc_0000 == 0x00dc_0000)
}

/// What a tunnel grant installs, written by hand: the map element and, where
/// the table has it, the flow-set element (`sys::nft::NatTable::add`). Stands
/// for a policy that wrongly granted `client:port` -> `dest`.
fn grant_by_hand(h: &Home, client: IpAddr, port: u16, dest: SocketAddr) {
    let (map, flows) = if client.is_ipv4() {
        ("nat4", "flows4")
    } else {
        ("nat6", "flows6")
    };
    let (d, dp) = (dest.ip(), dest.port());
    in_ns(
        h.router.name(),
        &[
            "nft",
            &format!(
                "add element inet dcol {map} {{ {client} . {port} timeout 60s : {d} . {dp} }}"
            ),
        ],
    );
    let has_flows = h
        .router
        .output(&["nft", "list", "set", "inet", "dcol", flows])
        .status
        .success();
    if has_flows {
        in_ns(
            h.router.name(),
            &[
                "nft",
                &format!(
                    "add element inet dcol {flows} {{ {client} . {port} . {d} . {dp} timeout 60s }}"
                ),
            ],
        );
    }
}

/// Item 1: an Internet host opens nothing on the LAN through the tunnel
/// ports, IPv4 (private and public LAN subnets) and IPv6, without a lease,
/// with someone else's, or after one ended.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn internet_hosts_do_not_reach_the_lan_through_the_tunnel_ports() {
    if !need_root() {
        return;
    }
    let mut h = home();
    // Without a firewall the router forwards: the attacks below would work.
    lan_reachable(&h, &h.attacker, 40022, true, "no firewall yet");
    let _fw = Fw4::load(&h.router, &router_firewall());
    lan_reachable(&h, &h.attacker, 40022, false, "fw4 alone");
    h.start_waypoint("");
    // No lease at all.
    lan_reachable(&h, &h.attacker, 40022, false, "no lease");

    // bob's tunnel to the server: it works for bob ...
    let server = listen(&h.server, sock(SERVER4, 7000));
    let port = h.lease(sock(SERVER4, 7000), 1);
    assert_eq!(
        reach(&h.member, &server, sock(ROUTER_WAN4, port)),
        Ok(ROUTER_WAN4.into()),
        "bob's tunnel, masqueraded\n{}",
        h.wp_log()
    );
    // ... and for nobody else: not to the server, not into the LAN.
    assert!(
        reach(&h.attacker, &server, sock(ROUTER_WAN4, port)).is_err(),
        "the attacker used bob's tunnel"
    );
    lan_reachable(&h, &h.attacker, port, false, "someone else's lease");
    lan_reachable(&h, &h.member, port, false, "the lease holder, to the LAN");
    let ct = flows_to(&h, port);
    assert!(
        ct.lines()
            .filter(|l| l.contains(&format!("src={ATTACKER4} ")))
            .all(|l| !detour_marked(l)),
        "the attacker's flows were marked as detours:\n{ct}"
    );

    // The lease ends (bob releases it): nothing is open any more.
    let released = h.request(
        RequestKind::Release {
            port,
            lease: Nonce([1; 16]),
        },
        2,
    );
    assert!(
        matches!(released, Outcome::Granted { lease_secs: 0, .. }),
        "release: {released:?}"
    );
    assert!(
        reach(&h.member, &server, sock(ROUTER_WAN4, port)).is_err(),
        "the ended tunnel still carries"
    );
    lan_reachable(&h, &h.member, port, false, "after the lease");
    lan_reachable(&h, &h.attacker, port, false, "after the lease");
}

/// Items 2 and 3, kernel half: a policy mistake (a tunnel granted to a LAN
/// host, written here by hand as dcol writes grants) is dropped by dcol's
/// forward chain and by the fw4 include, although fw4 accepts DNATed flows
/// (the port forward); a tunnel to one of the router's own addresses is
/// dropped in input. A tunnel written the same way to the server works.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn tunnels_to_the_lan_or_the_router_itself_are_dropped() {
    if !need_root() {
        return;
    }
    let mut h = home();
    let _fw = Fw4::load(&h.router, &router_firewall());
    h.start_waypoint("");
    let server = listen(&h.server, sock(SERVER4, 7000));
    grant_by_hand(&h, MEMBER4.into(), 40500, sock(SERVER4, 7000));
    assert_eq!(
        reach(&h.member, &server, sock(ROUTER_WAN4, 40500)),
        Ok(ROUTER_WAN4.into()),
        "a tunnel written by hand to the WAN works"
    );
    let mistakes: [(IpAddr, IpAddr, u16, SocketAddr, &Netns); 4] = [
        (
            MEMBER4.into(),
            ROUTER_WAN4.into(),
            40501,
            sock(LAN4, 22),
            &h.lan,
        ),
        (
            MEMBER4.into(),
            ROUTER_WAN4.into(),
            40502,
            sock(LAN_PUBLIC4, 22),
            &h.lan,
        ),
        (
            MEMBER6.into(),
            ROUTER_WAN6.into(),
            40503,
            sock(LAN6, 22),
            &h.lan,
        ),
        (
            MEMBER4.into(),
            ROUTER_WAN4.into(),
            40504,
            sock(ROUTER_LAN4, 22),
            &h.router,
        ),
    ];
    // A probe that counts, before any of dcol's and fw4's filter chains,
    // the packets DNATed from each tunnel port: shows that each mistake
    // really was translated (else the refusal below would prove nothing).
    let mut probe = String::from("table inet probe {\n");
    for hook in ["forward", "input"] {
        probe.push_str(&format!(
            " chain {hook} {{\n  type filter hook {hook} priority -300; policy accept;\n"
        ));
        for (_, _, port, _, _) in &mistakes {
            probe.push_str(&format!(
                "  meta l4proto tcp ct status dnat ct original proto-dst {port} counter comment \"{port}\"\n"
            ));
        }
        probe.push_str(" }\n");
    }
    probe.push_str("}\n");
    h.router.exec(&["nft", &probe]);
    for (client, wan, port, dest, at) in mistakes {
        let l = listen(at, dest);
        grant_by_hand(&h, client, port, dest);
        let got = reach(&h.member, &l, sock(wan, port));
        assert!(got.is_err(), "a tunnel reached {dest}: {got:?}");
        let hook = if std::ptr::eq(at, &h.router) {
            "input"
        } else {
            "forward"
        };
        assert!(
            probe_count(&h, hook, port) > 0,
            "no packet of the tunnel to {dest} was translated"
        );
    }
    let fwd = in_ns(
        h.router.name(),
        &["nft", "list", "chain", "inet", "fw4", "forward_wan"],
    );
    assert!(
        fwd.contains("ct status dnat accept"),
        "fw4 accepts DNATed flows:\n{fwd}"
    );
}

/// Packets the probe table of the test below counted in chain `hook` for
/// tunnel port `port`.
fn probe_count(h: &Home, hook: &str, port: u16) -> u64 {
    nft_counter(h.router.name(), "probe", hook, &port.to_string(), "packets")
}

/// Item 1, the owner's side: the LAN host's own connection to a remote
/// server on a port in the tunnel range is not touched by dcol: not
/// translated, not marked, not policed by the donation caps, not counted in
/// the month's quota.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn owner_flows_to_ports_in_the_range_are_not_detours() {
    if !need_root() {
        return;
    }
    let mut h = home();
    let _fw = Fw4::load(&h.router, &router_firewall());
    // 200 kbit/s and 1 MB a month: 2 MB would take over a minute, or stop.
    h.start_waypoint("\toption donate_kbit '200'\n\toption donate_monthly_gb '0.001'\n");
    let caps = in_ns(
        h.router.name(),
        &["nft", "list", "chain", "inet", "dcol", "caps"],
    );
    assert!(
        caps.contains("limit rate over 25000 bytes/second"),
        "{caps}"
    );
    let srv = listen(&h.server, sock(SERVER4, 40600));
    // Bounded everywhere: a policed or dropped flow must fail the test, not
    // hang it.
    let reader = std::thread::spawn(move || {
        let t0 = Instant::now();
        let (mut c, peer) = loop {
            match srv.accept() {
                Ok(a) => break a,
                Err(_) if t0.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("no connection from the LAN host: {e}"),
            }
        };
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut n = 0usize;
        let mut buf = [0u8; 65536];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        (n, peer)
    });
    let t0 = Instant::now();
    let sent = in_netns(&h.lan, || {
        let mut c = TcpStream::connect_timeout(&sock(SERVER4, 40600), Duration::from_secs(2))
            .expect("LAN host to the server");
        c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let chunk = vec![7u8; 65536];
        let mut sent = 0usize;
        while sent < 2 << 20 {
            match c.write(&chunk) {
                Ok(k) => sent += k,
                Err(_) => break,
            }
        }
        sent
    });
    let ct = flows_to(&h, 40600);
    let (got, peer) = reader.join().expect("reader");
    let took = t0.elapsed();
    assert_eq!(sent, 2 << 20, "the upload stalled after {sent} bytes\n{ct}");
    assert_eq!(got, sent);
    assert_eq!(
        peer.ip(),
        IpAddr::from(ROUTER_WAN4),
        "fw4 masquerades LAN -> WAN"
    );
    assert!(
        took < Duration::from_secs(5),
        "policed: 2 MB took {took:?}\n{ct}"
    );
    assert!(ct.contains("dport=40600"), "{ct}");
    assert!(!ct.lines().any(detour_marked), "marked as a detour:\n{ct}");
    // Not translated: the reply comes from the server's own port.
    assert!(
        ct.contains("src=11.14.0.5 dst=11.14.0.2 sport=40600 "),
        "{ct}"
    );
    let quota = in_ns(
        h.router.name(),
        &["nft", "-j", "list", "quota", "inet", "dcol", "month"],
    );
    let v: serde_json::Value = serde_json::from_str(&quota).expect("nft -j");
    let q = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|o| o.get("quota"))
        .unwrap_or_else(|| panic!("no quota: {quota}"));
    assert_eq!(q["used"].as_u64(), Some(0), "counted as donated: {quota}");
}

/// Honest detours still work through fw4: bob's MPTCP connection gets a
/// subflow through alice's waypoint, which the server sees from the router's
/// WAN address. Then nothing is left behind: a crash (`kill -9`) leaves
/// dcol's table, the restart replaces it, SIGTERM removes it.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn honest_detours_pass_fw4_and_nothing_is_left_behind() {
    if !need_root() {
        return;
    }
    let mut h = home();
    let _fw = Fw4::load(&h.router, &router_firewall());
    let _srv = iperf3_server(&h.server, 5201, true);
    let counter = JoinCounter::install(&h.server, 5201, &[ROUTER_WAN4.into()]);
    h.start_waypoint("");
    h.start_client("nat", "");
    let r = iperf3_client(&h.member, SERVER4.into(), 5201, 4, true, false).expect("MPTCP upload");
    let via = counter.bytes_from(ROUTER_WAN4.into());
    assert!(
        via > 100_000,
        "the server got {via} bytes through the waypoint ({} in all)\n{}",
        r.bytes,
        h.wp_log()
    );
    let tables = |h: &Home| -> Vec<String> {
        in_ns(h.router.name(), &["nft", "list", "tables"])
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| l.contains("dcol"))
            .collect()
    };
    let wan = in_ns(
        h.router.name(),
        &["nft", "list", "set", "inet", "dcol", "wan"],
    );
    assert!(
        wan.contains("\"wan\""),
        "the WAN set holds the default route's interface:\n{wan}"
    );

    h.waypoint.as_mut().expect("waypoint").kill9();
    assert_eq!(tables(&h), ["table inet dcol"], "a crash leaves the table");
    h.waypoint = None;
    h.start_waypoint("");
    assert!(h.wp_log().contains("previous run"), "{}", h.wp_log());
    assert_eq!(tables(&h), ["table inet dcol"], "replaced, not doubled");
    let wan = in_ns(
        h.router.name(),
        &["nft", "list", "set", "inet", "dcol", "wan"],
    );
    assert!(wan.contains("\"wan\""), "{wan}");
    assert!(h.client.as_mut().expect("client").terminate().success());
    assert!(h.waypoint.as_mut().expect("waypoint").terminate().success());
    assert!(tables(&h).is_empty(), "left behind: {:?}", tables(&h));
    let fw4 = in_ns(h.router.name(), &["nft", "list", "tables"]);
    assert!(
        fw4.contains("table inet fw4"),
        "fw4's own table stays: {fw4}"
    );
}

/// Item 2, VPN tunnels: the tunnel carries a member's traffic to the
/// Internet but not into the LAN, whose public IPv4 subnet and global IPv6
/// prefix no address list names.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn vpn_tunnels_leave_by_the_wan_only() {
    if !need_root() {
        return;
    }
    let mut h = home();
    let _fw = Fw4::load(
        &h.router,
        &router_firewall().dcol_udp_rule("wireguard", 51820),
    );
    // Interface names of their own: wireguard-go's sockets are shared by
    // every namespace of the machine.
    h.start_waypoint(
        "\toption vpn_subnet '10.214.0.0/24'\n\toption vpn_subnet6 'fd14:214::/64'\n\
         \toption vpn_interface 'atkwg0'\n",
    );
    h.start_client("vpn", "\toption vpn_interface_prefix 'atkc'\n");
    let t0 = Instant::now();
    while !h
        .client
        .as_ref()
        .expect("client")
        .log_text()
        .contains("VPN tunnel to alice up")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no VPN tunnel:\n{}",
            h.wp_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = h.client.as_ref().expect("client").status();
    let me4 = st["client"]["peers"][0]["vpn_address"]
        .as_str()
        .expect("tunnel address")
        .to_owned();
    let me6 = in_ns(
        h.member.name(),
        &["ip", "-6", "-o", "addr", "show", "dev", "atkc0"],
    )
    .split_whitespace()
    .find(|w| w.starts_with("fd14:214:"))
    .map(|w| w.split('/').next().unwrap_or_default().to_owned())
    .expect("tunnel IPv6 address");
    let ping = |src: &str, dst: &str| -> bool {
        h.member
            .output(&["ping", "-n", "-q", "-c", "2", "-W", "1", "-I", src, dst])
            .status
            .success()
    };
    assert!(
        ping(&me4, &SERVER4.to_string()),
        "the tunnel carries nothing\n{}",
        h.wp_log()
    );
    assert!(ping(&me6, "2a0e:14:ff::5"), "the tunnel carries no IPv6");
    for dst in [LAN_PUBLIC4.to_string(), LAN6.to_string()] {
        let src = if dst.contains(':') { &me6 } else { &me4 };
        assert!(
            !ping(src, &dst),
            "reached the LAN's {dst} through the tunnel"
        );
    }
}

/// The include never breaks fw4 and never opens more than zone wan: with
/// zone wan renamed, with no forwarding to it (fw4 then writes no
/// `accept_to_wan`), with no device in it, and with automatic includes off,
/// `fw4 check` and `fw4 reload` pass (Fw4 panics otherwise) and a detour is
/// not accepted where zone wan does not accept it.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn the_include_survives_other_firewall_configs() {
    if !need_root() {
        return;
    }
    let mut h = home();
    let fw = Fw4::load(&h.router, &shipped_firewall());
    h.start_waypoint("");
    let server = listen(&h.server, sock(SERVER4, 7000));
    let port = h.lease(sock(SERVER4, 7000), 1);
    let detour = |h: &Home| reach(&h.member, &server, sock(ROUTER_WAN4, port));
    assert_eq!(detour(&h), Ok(ROUTER_WAN4.into()), "{}", h.wp_log());
    // The shipped config's second zone is wan.
    let variants: [(&str, &str, bool); 5] = [
        (
            // The router's WAN device in a zone of another name (zone wan
            // kept, empty, so the shipped rules still name a zone).
            "the WAN in zone upstream",
            "set firewall.@zone[1].device=unused0\n\
             add firewall zone\n\
             set firewall.@zone[-1].name=upstream\n\
             set firewall.@zone[-1].device=wan\n\
             set firewall.@zone[-1].input=REJECT\n\
             set firewall.@zone[-1].output=ACCEPT\n\
             set firewall.@zone[-1].forward=REJECT\n\
             set firewall.@zone[-1].masq=1\n\
             set firewall.@forwarding[0].dest=upstream\n",
            false,
        ),
        // Zone wan still accepts what leaves by it (its output policy).
        (
            "no forwarding to wan",
            "delete firewall.@forwarding[0]\n",
            true,
        ),
        (
            // fw4 then writes no `accept_to_wan`: the include's own, empty.
            "nothing accepted toward wan",
            "delete firewall.@forwarding[0]\nset firewall.@zone[1].output=REJECT\n",
            false,
        ),
        (
            "zone wan without devices",
            "delete firewall.@zone[1].device\n",
            false,
        ),
        (
            "automatic includes off",
            "set firewall.@defaults[0].auto_includes=0\n",
            false,
        ),
    ];
    for (what, batch, open) in variants {
        fw.reconfigure(&shipped_firewall().batch(batch));
        let got = detour(&h);
        assert_eq!(
            got.is_ok(),
            open,
            "{what}: {got:?}\n{}",
            fw.chain("forward")
        );
        fw.check().unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    fw.reconfigure(&shipped_firewall());
    assert_eq!(
        detour(&h),
        Ok(ROUTER_WAN4.into()),
        "back to the shipped config"
    );
}
