//! fw4 on the waypoint router, with dcol's package installed: fw4 started by
//! its own init script at boot, the package's include under
//! `/usr/share/nftables.d/`, the waypoint's signaling port opened from the
//! procd service data the init script publishes, `fw4 check` and
//! `fw4 restart` with the waypoint role on; and the waypoint's security
//! property through that ruleset: no flow from the WAN to the LAN through
//! the NAT port range, while a member's detour through the router is
//! forwarded.
//!
//! ```text
//!  ISP segment 11.16.0.0/24, 2a0e:16:ff::/64 (a bridge in `isp`, gateway .1/::1)
//!
//!   attacker .3 ─┐
//!   member   .4 ─┼─ br0 ── wan ─ router .2 ─ lan ── LAN host 192.168.16.2
//!   server   .5 ─┘     (OpenWrt: procd, fw4,       2a0e:16:1::2
//!                        dcol waypoint)
//! ```
//! The ISP routes the LAN's IPv6 prefix to the router; the attacker, a
//! neighbour on the ISP's segment, routes the private LAN to it too. The
//! member runs a dcol client (another member's router, elsewhere) and an
//! MPTCP iperf3 client; the server an unmodified MPTCP iperf3 server.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use dcol_tests::dcol::{main_section, Daemon};
use dcol_tests::lab::{in_netns, need_root};
use dcol_tests::openwrt::{Image, Router, ZoneSetup};
use dcol_tests::{iperf3_client, iperf3_server, veth_pair, JoinCounter, Netns};

use crate::{install_offline, tail, wait_running, Admin};

const ROUTER_WAN4: Ipv4Addr = Ipv4Addr::new(11, 16, 0, 2);
const SERVER4: Ipv4Addr = Ipv4Addr::new(11, 16, 0, 5);
const LAN4: Ipv4Addr = Ipv4Addr::new(192, 168, 16, 2);
const LAN6: Ipv6Addr = Ipv6Addr::new(0x2a0e, 0x16, 1, 0, 0, 0, 0, 2);
const IPERF: u16 = 5201;
/// A port of the router's NAT range (40000-40099), where the LAN host listens.
const NAT_PORT: u16 = 40007;

/// The namespaces of the diagram (fields drop in order: the router's
/// services before the namespaces).
struct Net {
    client: Option<Daemon>,
    router: Option<Router>,
    router_ns: Netns,
    attacker: Netns,
    member: Netns,
    server: Netns,
    lan: Netns,
    _isp: Netns,
}

fn addrs(ns: &Netns, dev: &str, list: &[&str]) {
    for a in list {
        let mut args = vec!["ip", "addr", "add", *a, "dev", dev];
        if a.contains(':') {
            args.push("nodad");
        }
        ns.exec(&args);
    }
}

fn routes(ns: &Netns, list: &[(&str, &str)]) {
    for (dst, via) in list {
        ns.exec(&["ip", "route", "add", dst, "via", via]);
    }
}

fn net() -> Net {
    let isp = Netns::new("isp");
    let router_ns = Netns::new("router");
    let attacker = Netns::new("attacker");
    let member = Netns::new("member");
    let server = Netns::new("server");
    let lan = Netns::new("lanhost");
    for ns in [&isp, &router_ns, &attacker, &member, &server, &lan] {
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
    }
    isp.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
    isp.exec(&["ip", "link", "set", "br0", "up"]);
    addrs(&isp, "br0", &["11.16.0.1/24", "2a0e:16:ff::1/64"]);
    let segment = [
        (&router_ns, "wan", "11.16.0.2/24", "2a0e:16:ff::2/64"),
        (&attacker, "eth0", "11.16.0.3/24", "2a0e:16:ff::3/64"),
        (&member, "eth0", "11.16.0.4/24", "2a0e:16:ff::4/64"),
        (&server, "eth0", "11.16.0.5/24", "2a0e:16:ff::5/64"),
    ];
    for (i, (ns, dev, a4, a6)) in segment.into_iter().enumerate() {
        let port = format!("p{i}");
        veth_pair(ns, dev, &isp, &port);
        isp.exec(&["ip", "link", "set", &port, "master", "br0"]);
        addrs(ns, dev, &[a4, a6]);
        routes(
            ns,
            &[("default", "11.16.0.1"), ("default", "2a0e:16:ff::1")],
        );
    }
    veth_pair(&router_ns, "lan", &lan, "eth0");
    addrs(&router_ns, "lan", &["192.168.16.1/24", "2a0e:16:1::1/64"]);
    addrs(&lan, "eth0", &["192.168.16.2/24", "2a0e:16:1::2/64"]);
    routes(
        &lan,
        &[("default", "192.168.16.1"), ("default", "2a0e:16:1::1")],
    );
    routes(&isp, &[("2a0e:16:1::/64", "2a0e:16:ff::2")]);
    routes(&attacker, &[("192.168.16.0/24", "11.16.0.2")]);
    for ns in [&isp, &router_ns] {
        ns.sysctl("net.ipv4.ip_forward", "1");
        ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    }
    Net {
        client: None,
        router: None,
        router_ns,
        attacker,
        member,
        server,
        lan,
        _isp: isp,
    }
}

/// Whether a TCP connection from `ns` to `to` is accepted by `server`
/// (listening there) within 2 s.
fn reaches(ns: &Netns, server: &TcpListener, to: SocketAddr) -> bool {
    let ok = in_netns(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok()
    });
    if ok {
        server.accept().expect("accept a connection that connected");
    }
    ok
}

/// The LAN host's listeners on the NAT port (IPv4, IPv6).
fn lan_listeners(lan: &Netns) -> [(TcpListener, SocketAddr); 2] {
    [IpAddr::V4(LAN4), IpAddr::V6(LAN6)].map(|ip| {
        let addr = SocketAddr::new(ip, NAT_PORT);
        let l = in_netns(lan, move || {
            TcpListener::bind(addr).expect("listen on the LAN host")
        });
        (l, addr)
    })
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn fw4_with_the_waypoint_keeps_the_lan_closed_and_forwards_detours() {
    if !need_root() {
        return;
    }
    let mut net = net();
    let listeners = lan_listeners(&net.lan);

    // Without any firewall the router forwards the attacker's SYNs to the LAN
    // host: whatever refuses them below is fw4 with dcol.
    for (l, addr) in &listeners {
        assert!(
            reaches(&net.attacker, l, *addr),
            "topology: {addr} unreachable"
        );
    }

    // ---- the image: both packages, the firewall on, a waypoint member ----
    let img = Image::new("firewall");
    install_offline(&img);
    img.firewall(&ZoneSetup::new(&["lan"], &["wan"]));
    img.uci(
        "set dcol.main.enabled=1\nset dcol.client.enabled=0\nset dcol.waypoint.enabled=1\n\
         set dcol.waypoint.nat_ports=40000-40099\nset dcol.waypoint.upnp=0",
    );
    let router = img.boot(&net.router_ns);
    let admin = Admin::new();
    admin.join(&router, "alice", "client,waypoint");
    router.ok("service dcol reload");
    wait_running(&router, None, Duration::from_secs(10));

    // fw4 (started at boot) took the include and, once dcol's instance
    // published its data, the signaling rule (procd's data trigger).
    router.ok("fw4 -q check");
    let signaling = |r: &Router| {
        r.ok("nft list chain inet fw4 input").lines().any(|l| {
            l.contains("udp dport 7447")
                && l.contains("accept")
                && l.contains("ubus:dcol[instance1]")
        })
    };
    router
        .wait_for(Duration::from_secs(10), |r| signaling(r).then_some(()))
        .unwrap_or_else(|| {
            panic!(
                "fw4 never opened the signaling port from dcol's service data:\n{}",
                router.ok("nft list chain inet fw4 input")
            )
        });
    let forward = router.ok("nft list chain inet fw4 forward");
    assert!(forward.contains("dcol: accept detour flows"), "{forward}");

    // ---- WAN -> LAN through the NAT port range: refused ----
    attacks(&net, &listeners, "with fw4 as booted");

    // ---- a member's detour through the router is forwarded ----
    let bob = admin.collective.admit("bob", "client", 30);
    let dir = admin.scratch.path();
    let sock = dir.join("bob.sock");
    let cfg = format!(
        "{}config client 'client'\n\toption enabled '1'\n\toption max_detours '1'\n\
         \toption renew_interval_s '1'\n\nconfig peer\n\toption name 'alice'\n\
         \toption address '{ROUTER_WAN4}:7447'\n\toption tunnel 'nat'\n",
        main_section(&bob, &admin.collective, &sock, &dir.join("bob-state"))
    );
    net.client = Some(Daemon::start(net.member.name(), dir, "bob", &cfg, &sock));
    let _srv = iperf3_server(&net.server, IPERF, true);
    let counter = JoinCounter::install(&net.server, IPERF, &[IpAddr::V4(ROUTER_WAN4)]);
    let detoured = |label: &str| {
        let before = counter.bytes_from(IpAddr::V4(ROUTER_WAN4));
        let r = iperf3_client(&net.member, IpAddr::V4(SERVER4), IPERF, 4, true, false)
            .unwrap_or_else(|e| panic!("{label}: iperf3: {e}"));
        let through = counter.bytes_from(IpAddr::V4(ROUTER_WAN4)) - before;
        assert!(
            through > 100_000,
            "{label}: the server got {through} bytes through the waypoint of {} sent\n\
             router's log:\n{}\nbob's log:\n{}",
            r.bytes,
            tail(&crate::dcol_log(&router), 30),
            tail(&net.client.as_ref().expect("started").log_text(), 30)
        );
        through
    };
    let first = detoured("with fw4 as booted");
    eprintln!("detour carried {first} bytes through the router");

    // ---- fw4 restart with the waypoint role on: same verdicts ----
    router.ok("fw4 -q check && fw4 -q restart");
    assert!(signaling(&router), "after fw4 restart: no signaling rule");
    attacks(&net, &listeners, "after fw4 restart");
    detoured("after fw4 restart");

    // Nothing of it needs the owner's LAN open: the LAN host's listeners
    // saw no connection from the WAN (each accept above was the topology
    // check).
    net.router = Some(router);
}

/// The attacker's connections to the LAN host's NAT-range port, IPv4 and
/// IPv6: each must fail.
fn attacks(net: &Net, listeners: &[(TcpListener, SocketAddr); 2], when: &str) {
    for (l, addr) in listeners {
        assert!(
            !reaches(&net.attacker, l, *addr),
            "{when}: the attacker on the WAN reached the LAN host at {addr} through the NAT port range"
        );
    }
}
