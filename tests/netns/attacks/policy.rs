//! A member asks the waypoint for destinations behind it: its LAN (a public
//! IPv4 subnet and a global IPv6 prefix, which no address list catches) and
//! an address the router gained after the daemon started. The waypoint's
//! destination policy follows the routing table (sys::routewatch) and refuses
//! each with "destination not allowed" and a logged reason, even where the
//! owner's allow list covers the address; a public destination routed to the
//! WAN is still granted. The kernel's WAN set (the interfaces forwarded
//! detours may leave by) follows the default routes the same way.
//!
//! ```text
//!  client ── rc ── ... ── rw ── waypoint (dcol) ── lan0 ── LAN host
//!                                  81.2.3.1/24        81.2.3.5/24
//!                                  2a02:77::1/64      2a02:77::5/64
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dcol::proto::{
    self, Message, Nonce, Outcome, RefusalReason, Request, RequestBody, RequestKind,
};
use dcol::trust::{files, Certificate, SecretKey};
use dcol_tests::lab::{need_root, udp_exchange, Lab, SIGNAL_PORT};
use dcol_tests::{veth, LinkProfile, Netns, Node};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A signed NAT request of bob's for `dest` (nonce `n`, unique per run),
/// sent from `source` (bob's address as the waypoint sees it).
fn request(
    cert: &Certificate,
    key: &SecretKey,
    n: u8,
    dest: SocketAddr,
    source: IpAddr,
) -> Vec<u8> {
    let mut nonce = [0u8; 16];
    nonce[0] = n;
    nonce[1..9].copy_from_slice(&now_ms().to_be_bytes());
    let body = RequestBody {
        waypoint: "alice".into(),
        timestamp_ms: now_ms(),
        nonce: Nonce(nonce),
        source,
        kind: RequestKind::NatDetour { destination: dest },
    };
    proto::encode(&Message::Request(Request::sign(cert.clone(), key, body)))
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "{what}: not within 3 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn member_cannot_reach_the_lan_or_the_router_through_a_detour() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::symmetric());
    // The owner even allows all of 81/8: the route check still refuses the LAN.
    lab.start_waypoint_with("\tlist allow_destination '81.0.0.0/8'\n");
    let cns = lab.ns(Node::Client);
    let key = files::read_secret_key(&lab.client_member.key).expect("bob's key");
    let cert = files::read_certificate(&lab.client_member.cert).expect("bob's cert");
    let wp4 = SocketAddr::new(IpAddr::V4(lab.topo.addr4(Node::Waypoint)), SIGNAL_PORT);
    let wp6 = SocketAddr::new(IpAddr::V6(lab.topo.addr6(Node::Waypoint)), SIGNAL_PORT);
    let (bob4, bob6) = (lab.topo.addr4(Node::Client), lab.topo.addr6(Node::Client));
    let ask = |n: u8, dest: &str| -> Outcome {
        let dest: SocketAddr = dest.parse().expect("test address");
        let (to, source) = match dest {
            SocketAddr::V4(_) => (wp4, IpAddr::V4(bob4)),
            SocketAddr::V6(_) => (wp6, IpAddr::V6(bob6)),
        };
        // Retransmitted with a fresh nonce while the lab's IPv6 addresses
        // finish duplicate address detection (the first seconds).
        let reply = (0..4u8)
            .find_map(|i| {
                let n = n.wrapping_mul(4).wrapping_add(i);
                let bytes = request(&cert, &key, n, dest, source);
                udp_exchange(&cns, to, &bytes, Duration::from_secs(1))
            })
            .unwrap_or_else(|| panic!("no answer for {dest}"));
        match proto::decode(&reply).expect("reply decodes") {
            Message::Response(r) => r.body.outcome,
            m => panic!("unexpected reply {m:?}"),
        }
    };
    let refused = |o: &Outcome, what: &str| {
        assert!(
            matches!(
                o,
                Outcome::Refused {
                    reason: RefusalReason::DestinationNotAllowed
                }
            ),
            "{what}: {o:?}"
        );
    };

    // A public destination routed to the WAN: granted.
    assert!(
        matches!(ask(1, "81.2.4.5:80"), Outcome::Granted { .. }),
        "a WAN destination is served"
    );
    assert!(
        matches!(ask(2, "[2a00::5]:80"), Outcome::Granted { .. }),
        "a WAN destination is served over IPv6"
    );

    // The owner plugs in a LAN with a public IPv4 subnet and a global IPv6
    // prefix while the daemon runs.
    let wns = lab.topo.ns(Node::Waypoint);
    let lan = Netns::new("lanhost");
    veth(wns, "lan0", "81.2.3.1/24", &lan, "eth0", "81.2.3.5/24");
    wns.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2a02:77::1/64",
        "dev",
        "lan0",
        "nodad",
    ]);
    lan.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2a02:77::5/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let settle = Instant::now();
    let mut n = 10;
    loop {
        n += 1;
        match ask(n, "81.2.3.5:22") {
            Outcome::Refused { .. } => break,
            o => assert!(
                settle.elapsed() < Duration::from_secs(3),
                "the LAN route was not followed: {o:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    refused(&ask(30, "81.2.3.5:22"), "LAN IPv4 (public subnet)");
    refused(&ask(31, "[2a02:77::5]:22"), "LAN IPv6 (global prefix)");
    refused(&ask(32, "81.2.3.1:22"), "the router's LAN address");
    refused(&ask(33, "[2a02:77::1]:22"), "the router's LAN IPv6 address");

    // The router gains the address that was granted above: refused now.
    wns.exec(&["ip", "addr", "add", "81.2.4.5/32", "dev", "lan0"]);
    std::thread::sleep(Duration::from_millis(500));
    refused(&ask(34, "81.2.4.5:80"), "the router's new address");
    // Mail is never detoured (deny_port 25 by default).
    refused(&ask(35, "81.9.9.9:25"), "port 25");
    assert!(
        matches!(ask(36, "81.9.9.9:80"), Outcome::Granted { .. }),
        "still serving WAN destinations"
    );

    // The kernel's copy of the WAN (the `wan` set that forwarded detours
    // must leave by) follows the default routes too: none, then back.
    let wan_set = || wns.output(&["nft", "list", "set", "inet", "dcol", "wan"]);
    let has_wan = || String::from_utf8_lossy(&wan_set().stdout).contains("\"l6b\"");
    assert!(has_wan(), "{:?}", wan_set());
    wns.exec(&["ip", "route", "del", "default"]);
    wns.exec(&["ip", "-6", "route", "del", "default"]);
    wait_until("WAN set emptied", || !has_wan());
    let via4 = lab.topo.addr4(Node::Rw).to_string();
    let via6 = lab.topo.addr6(Node::Rw).to_string();
    wns.exec(&["ip", "route", "add", "default", "via", &via4]);
    wns.exec(&["ip", "-6", "route", "add", "default", "via", &via6]);
    wait_until("WAN set refilled", has_wan);

    let log = lab.wp().log_text();
    for why in [
        "81.2.3.5:22: routed to lan0, not the WAN",
        "[2a02:77::5]:22: routed to lan0, not the WAN",
        "81.2.4.5:80: the waypoint's own address",
        "81.9.9.9:25: a port the owner denies",
    ] {
        assert!(log.contains(why), "log lacks {why:?}:\n{log}");
    }
}
