use std::collections::HashMap;

use super::*;
use crate::client::strategy::Scoreboard;
use crate::mptcp::Sample;
use crate::testutil::{self, cert, T0};
use crate::waypoint::{self, Decision, Waypoint};

const MS: u64 = T0 * 1000;
const WP: &str = "10.0.6.2:7447";
const CLIENT_IP: &str = "10.0.1.2";

mod refusals;

/// A client and a real (pure) waypoint on a virtual network with a clock.
struct Pair {
    c: Client,
    w: Waypoint,
    t0: Instant,
    now: Instant,
    /// Drop the next n client → waypoint datagrams.
    drop_next: usize,
    created: Vec<(Token, SocketAddr)>,
    destroyed: Vec<(Token, SocketAddr)>,
    /// VpnUp/VpnDown actions, as "up <address>" / "down".
    vpn: Vec<String>,
    /// Local addresses of created subflows.
    locals: Vec<IpAddr>,
    /// SetBackup actions: remote, flag.
    backups: Vec<(SocketAddr, bool)>,
    /// A NAT between client and waypoint: the address the waypoint sees.
    nat: Option<IpAddr>,
    /// Datagrams the client sent.
    sent: usize,
}

fn settings() -> Settings {
    Settings {
        max_detours: 2,
        request_timeout: Duration::from_millis(300),
        renew_interval: Duration::from_secs(1),
        liveness_misses: 3,
        holddown: Duration::from_secs(30),
        own_connections: Gate::Open,
        // Detours at once; `held_back_until_the_connection_ran_alone` has
        // the baseline wait.
        strategy: StrategySettings {
            baseline: Duration::ZERO,
            ..StrategySettings::default()
        },
    }
}

impl Pair {
    fn new(peers: Vec<PeerSpec>) -> Pair {
        Pair::with_limits(peers, waypoint::Limits::default())
    }

    fn with_limits(peers: Vec<PeerSpec>, limits: waypoint::Limits) -> Pair {
        Pair::with_waypoint(peers, |ws| ws.limits = limits)
    }

    /// With the waypoint's settings changed by `f`.
    fn with_waypoint(peers: Vec<PeerSpec>, f: impl FnOnce(&mut waypoint::Settings)) -> Pair {
        let k = testutil::key(3);
        let bob = Certificate::issue(
            &testutil::root(),
            "bob",
            k.public(),
            Some(crate::trust::wg::public(&crate::trust::wg::secret(&k))),
            testutil::T0 - 86_400,
            testutil::T0 + 86_400,
            Roles::CLIENT,
        )
        .unwrap();
        let c = Client::new(
            settings(),
            bob,
            testutil::key(3),
            testutil::root_pub(),
            Revocations::default(),
            peers,
            [7; 8],
        );
        let mut ws = waypoint::Settings {
            ports: (40000, 40099),
            lease: Duration::from_secs(60),
            max_per_member: 16,
            destinations: crate::waypoint::policy::Rules {
                allow: vec!["10.0.0.0/8".parse().unwrap()],
                deny_ports: vec!["25".parse().unwrap()],
            },
            max_skew: Duration::from_secs(30),
            vpn: Some(crate::waypoint::VpnSettings {
                subnet: "10.200.7.0/24".parse().unwrap(),
                subnet6: None,
                port: 51820,
                wg_key: [5; 32],
            }),
            limits: waypoint::Limits::default(),
        };
        f(&mut ws);
        let me = cert("alice", 2, Roles::CLIENT | Roles::WAYPOINT);
        let w = Waypoint::new(
            ws,
            me,
            testutil::key(2),
            testutil::root_pub(),
            Revocations::default(),
            crate::routes::Routes::all_wan(Vec::new()),
        );
        let t0 = Instant::now();
        Pair {
            c,
            w,
            t0,
            now: t0,
            drop_next: 0,
            created: vec![],
            destroyed: vec![],
            vpn: vec![],
            locals: vec![],
            backups: vec![],
            nat: None,
            sent: 0,
        }
    }

    fn vpn_alice() -> Vec<PeerSpec> {
        vec![PeerSpec {
            vpn: true,
            convert: false,
            ..Pair::alice().remove(0)
        }]
    }

    fn alice() -> Vec<PeerSpec> {
        vec![PeerSpec {
            name: "alice".into(),
            address: WP.parse().unwrap(),
            vpn: false,
            convert: false,
        }]
    }

    fn ms(&self) -> u64 {
        MS + self.now.duration_since(self.t0).as_millis() as u64
    }

    /// Carries actions out: datagrams go to the waypoint (if it is up) and
    /// its replies come back; subflow commands are recorded.
    fn run(&mut self, actions: Vec<Action>, waypoint_up: bool) {
        let mut queue = actions;
        while let Some(a) = queue.pop() {
            match a {
                Action::Send { from, to, bytes } => {
                    assert_eq!(to, WP.parse().unwrap());
                    assert!(
                        from == CLIENT_IP.parse::<IpAddr>().unwrap() || from.is_unspecified(),
                        "{from}"
                    );
                    self.sent += 1;
                    if self.drop_next > 0 {
                        self.drop_next -= 1;
                        continue;
                    }
                    if !waypoint_up {
                        continue;
                    }
                    let seen = match self.nat {
                        // A NAT that picks another address every time.
                        Some(IpAddr::V4(a)) if a.is_unspecified() => {
                            IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, self.sent as u8))
                        }
                        Some(a) => a,
                        None => CLIENT_IP.parse().unwrap(),
                    };
                    let from = SocketAddr::new(seen, 50000);
                    let reply = match self.w.handle(self.now, self.ms(), from, &bytes) {
                        Decision::Reply { bytes, .. }
                        | Decision::Install { bytes, .. }
                        | Decision::Join { bytes, .. }
                        | Decision::Refresh { bytes, .. }
                        | Decision::Leave { bytes, .. }
                        | Decision::Remove { bytes, .. }
                        | Decision::VpnInstall { bytes, .. }
                        | Decision::VpnRefresh { bytes, .. }
                        | Decision::VpnRemove { bytes, .. } => bytes,
                        Decision::Ignore { reason } => panic!("waypoint ignored: {reason}"),
                        Decision::Drop { source } => panic!("waypoint dropped {source}"),
                    };
                    let more = self
                        .c
                        .on_datagram(self.now, self.ms(), to, &reply)
                        .expect("valid reply");
                    queue.extend(more);
                }
                Action::CreateSubflow {
                    token,
                    local,
                    local_id,
                    remote,
                } => {
                    if local == CLIENT_IP.parse::<IpAddr>().unwrap() {
                        assert_eq!(local_id, DETOUR_LOCAL_ID);
                    } else {
                        assert_ne!(local_id, DETOUR_LOCAL_ID, "one id per address");
                    }
                    self.locals.push(local);
                    self.created.push((token, remote));
                }
                Action::VpnUp { address, .. } => self.vpn.push(format!("up {address}")),
                Action::VpnDown { .. } => self.vpn.push("down".into()),
                Action::DestroySubflow { token, remote, .. } => {
                    self.destroyed.push((token, remote))
                }
                Action::SetBackup { remote, backup, .. } => self.backups.push((remote, backup)),
            }
        }
    }

    fn event(&mut self, ev: PmEvent) {
        let a = self.c.on_event(self.now, self.ms(), &ev);
        self.run(a, true);
    }

    fn advance(&mut self, d: Duration, waypoint_up: bool) {
        let end = self.now + d;
        while let Some(t) = self.c.next_timeout(self.now).filter(|t| *t <= end) {
            self.now = t.max(self.now);
            let a = self.c.poll(self.now, self.ms());
            self.run(a, waypoint_up);
        }
        self.now = end;
    }
}

fn established(token: u32) -> PmEvent {
    established_to(token, "10.0.3.2:5201")
}

fn established_to(token: u32, remote: &str) -> PmEvent {
    PmEvent::Established {
        token: Token(token),
        local: format!("{CLIENT_IP}:40404").parse().unwrap(),
        remote: remote.parse().unwrap(),
        server_side: false,
    }
}

fn sub(remote: SocketAddr, local_port: u16) -> SubflowInfo {
    SubflowInfo {
        local_id: DETOUR_LOCAL_ID,
        remote_id: AddrId::INITIAL,
        local: SocketAddr::new(CLIENT_IP.parse().unwrap(), local_port),
        remote,
        backup: false,
    }
}

fn detour_state(p: &Pair, token: u32) -> Vec<&'static str> {
    p.c.conns()
        .filter(|c| c.token == Token(token))
        .flat_map(|c| c.detours.iter().map(|d| d.state.name()))
        .collect()
}

#[test]
fn established_connection_gets_a_detour_subflow() {
    let mut p = Pair::new(Pair::alice());
    p.event(established(1));
    assert_eq!(p.created.len(), 1);
    let (token, remote) = p.created[0];
    assert_eq!(token, Token(1));
    assert_eq!(remote.ip(), "10.0.6.2".parse::<IpAddr>().unwrap());
    assert!((40000..=40099).contains(&remote.port()));
    assert_eq!(detour_state(&p, 1), vec!["connecting"]);
    p.now += Duration::from_millis(20);
    p.event(PmEvent::SubEstablished {
        token: Token(1),
        subflow: sub(remote, 41000),
    });
    assert_eq!(detour_state(&p, 1), vec!["established"]);
    let setup = p.c.conns().next().unwrap().detours[0].setup;
    assert_eq!(setup, Some(Duration::from_millis(20)));
    // Renewals keep it alive for a long time.
    p.advance(Duration::from_secs(30), true);
    assert_eq!(detour_state(&p, 1), vec!["established"]);
    assert!(p.destroyed.is_empty());
}

#[test]
fn proxied_connection_waits_for_its_gate() {
    let mut p = Pair::new(Pair::alice());
    let local: SocketAddr = format!("{CLIENT_IP}:40404").parse().unwrap();
    let lan: SocketAddr = "192.168.1.20:50000".parse().unwrap();
    // The proxy announces the flow before the kernel's events arrive.
    p.c.proxy_opened(local, lan, Gate::Waiting);
    p.event(established(1));
    assert!(p.created.is_empty(), "detour before the gate opened");
    let conn = p.c.conns().next().unwrap();
    assert_eq!((conn.lan, conn.gate), (Some(lan), Gate::Waiting));
    // Still nothing after a while: no timer opens the gate.
    p.advance(Duration::from_secs(5), true);
    assert!(p.created.is_empty());
    // The TLS handshake passed: detours now.
    let a = p.c.proxy_gate(p.now, p.ms(), local, Gate::Open);
    p.run(a, true);
    assert_eq!(p.created.len(), 1);
    assert_eq!(p.c.token_of(local), Some(Token(1)));
    p.c.proxy_closed(local);

    // A shut gate (plaintext) never opens by itself; other connections are
    // unaffected.
    let local2: SocketAddr = format!("{CLIENT_IP}:40405").parse().unwrap();
    p.c.proxy_opened(local2, lan, Gate::Waiting);
    p.event(PmEvent::Established {
        token: Token(2),
        local: local2,
        remote: "10.0.3.2:443".parse().unwrap(),
        server_side: false,
    });
    let a =
        p.c.proxy_gate(p.now, p.ms(), local2, Gate::Shut("plaintext"));
    p.run(a, true);
    p.advance(Duration::from_secs(5), true);
    assert_eq!(p.created.len(), 1, "a shut connection got a detour");
    // The gate opening before ESTABLISHED: detours at ESTABLISHED.
    let local3: SocketAddr = format!("{CLIENT_IP}:40406").parse().unwrap();
    p.c.proxy_opened(local3, lan, Gate::Waiting);
    let a = p.c.proxy_gate(p.now, p.ms(), local3, Gate::Open);
    assert!(a.is_empty());
    p.event(PmEvent::Established {
        token: Token(3),
        local: local3,
        remote: "10.0.3.2:443".parse().unwrap(),
        server_side: false,
    });
    assert_eq!(p.created.len(), 2);
}

#[test]
fn vpn_tunnel_serves_every_connection_and_is_dropped_when_the_waypoint_dies() {
    let mut p = Pair::new(Pair::vpn_alice());
    // The tunnel is asked for at once (due now, on virtual time), not
    // per connection.
    assert_eq!(p.c.next_timeout(p.now), Some(p.now));
    p.advance(Duration::from_millis(10), true);
    assert_eq!(p.vpn, vec!["up 10.200.7.2"]);
    for token in [1, 2] {
        let mut ev = established(token);
        if let PmEvent::Established { local, .. } = &mut ev {
            local.set_port(40000 + token as u16);
        }
        p.event(ev);
    }
    // One VPN detour per connection: tunnel address -> the server itself.
    assert_eq!(p.created.len(), 2);
    assert!(p
        .created
        .iter()
        .all(|(_, r)| *r == "10.0.3.2:5201".parse().unwrap()));
    assert!(p
        .locals
        .iter()
        .all(|l| *l == "10.200.7.2".parse::<IpAddr>().unwrap()));
    for (token, remote) in p.created.clone() {
        let mut sf = sub(remote, 41000 + token.0 as u16);
        sf.local = SocketAddr::new("10.200.7.2".parse().unwrap(), sf.local.port());
        p.event(PmEvent::SubEstablished { token, subflow: sf });
    }
    assert_eq!(detour_state(&p, 1), vec!["established"]);
    // Renewals keep it; a silent waypoint takes it down with its subflows.
    p.advance(Duration::from_secs(20), true);
    assert_eq!(p.vpn.len(), 1);
    p.advance(Duration::from_secs(10), false);
    assert_eq!(p.vpn, vec!["up 10.200.7.2", "down"]);
    assert_eq!(p.destroyed.len(), 2);
    assert_eq!(detour_state(&p, 2), vec!["failed"]);
    // After the hold-down it comes back, and new connections use it.
    p.advance(Duration::from_secs(40), true);
    assert_eq!(p.vpn.last().map(String::as_str), Some("up 10.200.7.2"));
}

#[test]
fn server_side_and_unknown_connections_are_left_alone() {
    let mut p = Pair::new(Pair::alice());
    let mut ev = established(2);
    if let PmEvent::Established { server_side, .. } = &mut ev {
        *server_side = true;
    }
    p.event(ev);
    p.event(PmEvent::SubClosed {
        token: Token(99),
        subflow: sub(WP.parse().unwrap(), 1),
        error: Some(111),
    });
    p.event(PmEvent::Closed { token: Token(98) });
    assert!(p.created.is_empty());
    assert_eq!(p.c.conns().count(), 0);
}

#[test]
fn lost_request_is_retransmitted_and_granted_once() {
    let mut p = Pair::new(Pair::alice());
    p.drop_next = 2;
    p.event(established(1));
    assert!(p.created.is_empty());
    p.advance(Duration::from_millis(299), true);
    assert!(p.created.is_empty(), "retransmitted too early");
    p.advance(Duration::from_secs(2), true);
    assert_eq!(p.created.len(), 1, "not granted after retransmission");
    assert_eq!(p.w.leases().count(), 1);
}

#[test]
fn refused_join_stops_further_detours() {
    let mut p = Pair::new(Pair::alice());
    p.event(established(1));
    let (_, remote) = p.created[0];
    p.event(PmEvent::SubEstablished {
        token: Token(1),
        subflow: sub(remote, 41000),
    });
    p.now += Duration::from_millis(5);
    p.event(PmEvent::SubClosed {
        token: Token(1),
        subflow: sub(remote, 41000),
        error: None,
    });
    let c = p.c.conns().next().unwrap();
    assert!(c.join_refused);
    assert_eq!(detour_state(&p, 1), vec!["failed"]);
    // The lease was released at the waypoint.
    assert_eq!(p.w.leases().count(), 0);
    assert_eq!(p.created.len(), 1);
}

#[test]
fn dead_waypoint_is_detected_and_its_subflow_destroyed() {
    let mut p = Pair::new(Pair::alice());
    p.event(established(1));
    let (_, remote) = p.created[0];
    p.event(PmEvent::SubEstablished {
        token: Token(1),
        subflow: sub(remote, 41000),
    });
    // The waypoint goes silent: 3 renewals at 1 s intervals go unanswered.
    p.advance(Duration::from_millis(2500), false);
    assert!(p.destroyed.is_empty(), "gave up too early");
    p.advance(Duration::from_secs(3), false);
    assert_eq!(p.destroyed, vec![(Token(1), remote)]);
    assert_eq!(detour_state(&p, 1), vec!["failed"]);
    // Held down: a new connection does not wait on it.
    p.event(established(2));
    assert_eq!(p.created.len(), 1);
}

#[test]
fn dead_waypoint_with_many_connections() {
    let mut p = Pair::new(Pair::alice());
    for t in 1..=3 {
        p.event(established(t));
    }
    for (i, (token, remote)) in p.created.clone().into_iter().enumerate() {
        p.event(PmEvent::SubEstablished {
            token,
            subflow: sub(remote, 41000 + i as u16),
        });
    }
    // All renewals of all connections go unanswered at once.
    p.advance(Duration::from_secs(6), false);
    assert_eq!(p.destroyed.len(), 3);
    for t in 1..=3 {
        assert_eq!(detour_state(&p, t), vec!["failed"]);
    }
}

#[test]
fn waypoint_restart_means_a_fresh_grant() {
    let mut p = Pair::new(Pair::alice());
    p.event(established(1));
    let (_, remote) = p.created[0];
    p.event(PmEvent::SubEstablished {
        token: Token(1),
        subflow: sub(remote, 41000),
    });
    // The waypoint restarts and forgets its leases.
    let fresh = Pair::new(Pair::alice()).w;
    p.w = fresh;
    p.advance(Duration::from_millis(1100), true);
    assert_eq!(p.destroyed, vec![(Token(1), remote)]);
    assert_eq!(p.created.len(), 2, "no fresh grant after the restart");
    assert_eq!(detour_state(&p, 1), vec!["failed", "connecting"]);
}

#[test]
fn closed_connection_releases_its_leases() {
    let mut p = Pair::new(Pair::alice());
    p.event(established(1));
    assert_eq!(p.w.leases().count(), 1);
    p.event(PmEvent::Closed { token: Token(1) });
    assert_eq!(p.w.leases().count(), 0);
    assert_eq!(p.c.conns().count(), 0);
    assert_eq!(p.c.next_timeout(p.now), None);
}

#[test]
fn forged_and_misaddressed_responses_are_rejected() {
    let mut p = Pair::new(Pair::alice());
    p.drop_next = 1;
    p.event(established(1));
    // A response signed by a non-member, with a nonce it could have sniffed.
    let nonce = *p.c.pending.keys().next().unwrap();
    let evil = crate::testutil::cert_by(
        &testutil::key(66),
        "alice",
        5,
        Roles::WAYPOINT,
        T0 - 9,
        T0 + 9,
    );
    let body = crate::proto::ResponseBody {
        nonce,
        timestamp_ms: MS,
        outcome: Outcome::Granted {
            port: 40050,
            lease_secs: 60,
            observed: CLIENT_IP.parse().unwrap(),
        },
    };
    let forged = proto::encode(&Message::Response(crate::proto::Response::sign(
        evil,
        &testutil::key(5),
        body.clone(),
    )));
    assert!(p
        .c
        .on_datagram(p.now, MS, WP.parse().unwrap(), &forged)
        .is_err());
    // A genuine member answering for the wrong peer name.
    let carol = cert("carol", 4, Roles::WAYPOINT);
    let wrong = proto::encode(&Message::Response(crate::proto::Response::sign(
        carol,
        &testutil::key(4),
        body.clone(),
    )));
    let e =
        p.c.on_datagram(p.now, MS, WP.parse().unwrap(), &wrong)
            .unwrap_err();
    assert!(
        matches!(&e, DatagramError::WrongName { name, .. } if name == "carol"),
        "{e}"
    );
    // From another address than the one asked.
    let other: SocketAddr = "10.0.9.9:7447".parse().unwrap();
    assert!(p.c.on_datagram(p.now, MS, other, &forged).is_err());
    assert!(p.created.is_empty());
    // The genuine answer still gets through afterwards.
    p.advance(Duration::from_secs(1), true);
    assert_eq!(p.created.len(), 1);
}

#[test]
fn max_detours_and_address_family() {
    let peers = vec![
        PeerSpec {
            name: "alice".into(),
            address: WP.parse().unwrap(),
            vpn: false,
            convert: false,
        },
        PeerSpec {
            name: "alice".into(),
            address: "[fd00:0:0:6::2]:7447".parse().unwrap(),
            vpn: false,
            convert: false,
        },
    ];
    let mut p = Pair::new(peers);
    p.event(established(1));
    // Only the IPv4 peer serves an IPv4 connection.
    assert_eq!(p.created.len(), 1);
    assert_eq!(p.c.conns().next().unwrap().detours.len(), 1);
}

#[test]
fn held_back_until_the_connection_ran_alone() {
    let mut p = Pair::new(Pair::alice());
    p.c.settings.strategy.baseline = Duration::from_millis(750);
    p.event(established(1));
    // Granted at once, created only 750 ms after ESTABLISHED; the direct
    // subflow is measured meanwhile.
    assert!(p.created.is_empty(), "{:?}", p.created);
    assert_eq!(detour_state(&p, 1), vec!["connecting"]);
    let conn = p.c.conns().next().unwrap();
    let direct = (conn.local, conn.remote);
    assert_eq!(p.c.measured(), vec![direct]);
    let mut acc = Sample::default();
    for _ in 0..3 {
        p.advance(Duration::from_millis(250), true);
        acc.bytes_acked += 300_000;
        acc.segs_out += 200;
        acc.min_rtt = Duration::from_millis(10);
        let a =
            p.c.on_samples(p.now, p.ms(), &HashMap::from([(direct, acc)]));
        p.run(a, true);
    }
    assert_eq!(p.created.len(), 1, "{:?}", p.created);
    let remote = p.created[0].1;
    p.event(PmEvent::SubEstablished {
        token: Token(1),
        subflow: sub(remote, 41000),
    });
    let conn = p.c.conns().next().unwrap();
    assert_eq!(conn.alone_bps, Some(9.6e6));
    // Its setup time counts from the end of the hold.
    assert_eq!(conn.held, Some(Duration::from_millis(750)));
    assert_eq!(conn.detours[0].setup, Some(Duration::ZERO));
    // Once an outcome is remembered for (alice, prefix), the next
    // connection's detour is created at once.
    p.c.parked.insert(
        (0, "10.0.3.0/24".into()),
        (p.now + Duration::from_secs(300), Tested::Adds),
    );
    p.event(PmEvent::Established {
        token: Token(2),
        local: format!("{CLIENT_IP}:40405").parse().unwrap(),
        remote: "10.0.3.2:5201".parse().unwrap(),
        server_side: false,
    });
    assert_eq!(p.created.len(), 2, "{:?}", p.created);
}

/// One 250 ms sampling round: the direct subflow moves 300 kB in 200
/// segments at 10 ms; the detour `tuple` moves (bytes, segments,
/// retransmissions, rtt ms).
fn sample_round(
    p: &mut Pair,
    conn: &Conn,
    tuple: (SocketAddr, SocketAddr),
    acc: &mut (Sample, Sample),
    (bytes, segs, retrans, rtt): (u64, u32, u32, u64),
) {
    p.now += Duration::from_millis(250);
    acc.0.bytes_acked += 300_000;
    acc.0.segs_out += 200;
    acc.0.rtt = Duration::from_millis(10);
    acc.0.min_rtt = Duration::from_millis(10);
    acc.1.bytes_acked += bytes;
    acc.1.segs_out += segs;
    acc.1.retrans += retrans;
    acc.1.rtt = Duration::from_millis(rtt);
    acc.1.min_rtt = Duration::from_millis(rtt);
    let samples = HashMap::from([((conn.local, conn.remote), acc.0), (tuple, acc.1)]);
    let a = p.c.on_samples(p.now, p.ms(), &samples);
    p.run(a, true);
}

/// A connection with one established detour via the first peer (after
/// `max_detours` requests), and that detour's remote.
fn established_pair_with(peers: Vec<PeerSpec>, max_detours: u8) -> (Pair, SocketAddr) {
    let mut p = Pair::new(peers);
    p.c.settings.max_detours = max_detours;
    p.event(established(1));
    let remote = p.created[0].1;
    p.now += Duration::from_millis(20);
    p.event(PmEvent::SubEstablished {
        token: Token(1),
        subflow: sub(remote, 41000),
    });
    (p, remote)
}

#[test]
fn slow_detour_is_demoted_then_scored_at_close() {
    let (mut p, remote) = established_pair_with(Pair::alice(), 2);
    let conn = p.c.conns().next().unwrap().clone();
    let detour_local = SocketAddr::new(conn.local.ip(), 41000);
    assert_eq!(p.c.measured().len(), 2);
    let mut acc = (Sample::default(), Sample::default());
    let mut backups_at = None;
    for step in 1..=16u64 {
        let step_sample = (20_000, 14, 0, 210);
        sample_round(&mut p, &conn, (detour_local, remote), &mut acc, step_sample);
        if backups_at.is_none() && !p.backups.is_empty() {
            backups_at = Some(step * 250);
        }
    }
    // Demoted at the end of its 2 s probation; no alternative waypoint,
    // so kept as backup rather than destroyed.
    assert_eq!(p.backups, vec![(remote, true)]);
    assert_eq!(backups_at, Some(2000));
    assert!(p.destroyed.is_empty());
    let c = p.c.conns().next().unwrap();
    let j = c.detours[0].judge.as_ref().unwrap();
    assert_eq!(j.role.name(), "backup");
    assert!(
        (c.direct.rate_bps - 9.6e6).abs() < 0.1e6,
        "{}",
        c.direct.rate_bps
    );
    // Closing the connection scores the detour by its byte share.
    p.event(PmEvent::Closed { token: Token(1) });
    let s = p.c.scoreboard().score("alice", "10.0.3.0/24").unwrap();
    let share = 2.0 * 15.0 * 20_000.0 / (15.0 * 320_000.0);
    assert!((s.mean().unwrap() - share).abs() < 1e-9, "{s:?}");
    assert!(p.c.scoreboard_dirty());
    assert!(!p.c.scoreboard_dirty());
    let (back, bad) = Scoreboard::from_file(&p.c.scoreboard().to_file()).unwrap();
    assert!(bad.is_empty());
    assert_eq!(&back, p.c.scoreboard());
}

#[test]
fn lossy_detour_is_destroyed_and_the_next_waypoint_asked() {
    let (mut p, remote) = established_pair_with(
        vec![
            PeerSpec {
                name: "alice".into(),
                address: WP.parse().unwrap(),
                vpn: false,
                convert: false,
            },
            PeerSpec {
                name: "alice".into(),
                address: WP.parse().unwrap(),
                vpn: false,
                convert: false,
            },
        ],
        1,
    );
    let conn = p.c.conns().next().unwrap().clone();
    let detour_local = SocketAddr::new(conn.local.ip(), 41000);
    let created_before = p.created.len();
    let mut acc = (Sample::default(), Sample::default());
    for _ in 0..12 {
        sample_round(
            &mut p,
            &conn,
            (detour_local, remote),
            &mut acc,
            (100_000, 70, 3, 12),
        );
    }
    assert_eq!(p.destroyed, vec![(Token(1), remote)]);
    assert!(p.backups.is_empty());
    let states = detour_state(&p, 1);
    assert!(states.contains(&"failed"), "{states:?}");
    // Scored at once, and the slot went to another candidate.
    assert!(p.c.scoreboard().score("alice", "*").is_some());
    assert!(p.created.len() > created_before, "{:?}", p.created);
}

#[test]
fn granted_detour_that_never_comes_up_scores_zero() {
    let mut p = Pair::new(Pair::alice());
    p.event(established(1));
    assert_eq!(detour_state(&p, 1), vec!["connecting"]);
    p.event(PmEvent::Closed { token: Token(1) });
    let s = p.c.scoreboard().score("alice", "10.0.3.0/24").unwrap();
    assert_eq!((s.count, s.mean()), (1, Some(0.0)));
}

fn wrong_sources(p: &Pair) -> u64 {
    p.w.stats().refused.get("WrongSource").copied().unwrap_or(0)
}

#[test]
fn behind_a_nat_the_first_request_learns_the_observed_address() {
    let mut p = Pair::new(Pair::alice());
    p.nat = Some("198.51.100.7".parse().unwrap());
    p.event(established(1));
    // One extra round trip: WrongSource, then granted at once.
    assert_eq!(p.created.len(), 1);
    assert_eq!((wrong_sources(&p), p.sent), (1, 2));
    let lease = p.w.leases().next().unwrap().clone();
    assert_eq!(lease.client, p.nat.unwrap());
    // Renewals and later connections name the learned address.
    p.advance(Duration::from_secs(3), true);
    let mut ev = established(2);
    if let PmEvent::Established { local, .. } = &mut ev {
        local.set_port(40002);
    }
    p.event(ev);
    assert_eq!(p.created.len(), 2);
    assert_eq!(wrong_sources(&p), 1);
    assert!(p.w.stats().granted >= 5, "{:?}", p.w.stats());
}

#[test]
fn a_nat_changing_address_every_time_fails_the_request_after_one_retry() {
    let mut p = Pair::new(Pair::alice());
    p.nat = Some("0.0.0.0".parse().unwrap());
    p.event(established(1));
    assert_eq!((wrong_sources(&p), p.sent), (2, 2));
    assert!(p.created.is_empty());
    let c = p.c.conns().next().unwrap();
    assert!(
        matches!(&c.detours[0].state, DetourState::Failed(w) if w.contains("changing addresses")),
        "{:?}",
        c.detours[0].state
    );
    assert!(p.c.pending.is_empty());
}

#[test]
fn a_public_address_from_stun_saves_the_extra_round_trip() {
    let mut p = Pair::new(Pair::alice());
    p.nat = Some("198.51.100.7".parse().unwrap());
    p.c.set_public_address(p.nat);
    p.event(established(1));
    assert_eq!(p.created.len(), 1);
    assert_eq!((wrong_sources(&p), p.sent), (0, 1));
    // An IPv6 hint is no IPv4 source.
    p.c.set_public_address(Some("2001:db8::1".parse().unwrap()));
    assert_eq!(p.c.public4, None);
}

#[test]
fn a_vpn_request_learns_its_source_on_first_contact() {
    let mut p = Pair::new(Pair::vpn_alice());
    p.advance(Duration::from_millis(10), true);
    assert_eq!(p.vpn, vec!["up 10.200.7.2"]);
    assert_eq!((wrong_sources(&p), p.sent), (1, 2));
    // Renewals name the learned address: no more WrongSource.
    p.advance(Duration::from_secs(3), true);
    assert_eq!(wrong_sources(&p), 1);
    assert_eq!(p.vpn, vec!["up 10.200.7.2"]);
}

#[test]
fn an_unsigned_refusal_is_only_logged() {
    let mut p = Pair::new(Pair::alice());
    p.drop_next = 1;
    p.event(established(1));
    let nonce = *p.c.pending.keys().next().unwrap();
    // Anyone can send one, naming the pending request's nonce.
    for reason in [
        RefusalReason::BadCertificate,
        RefusalReason::RateLimited,
        RefusalReason::DonationUsedUp,
    ] {
        let forged = proto::encode(&Message::Refusal(proto::UnsignedRefusal {
            reason,
            nonce: Some(nonce),
        }));
        let e =
            p.c.on_datagram(p.now, MS, WP.parse().unwrap(), &forged)
                .unwrap_err();
        assert!(
            matches!(e, DatagramError::UnsignedRefusal { reason: r, .. } if r == reason),
            "{e}"
        );
        assert!(e.to_string().contains("not acted on"), "{e}");
    }
    // Nothing changed: the request is still pending, the peer is up, the
    // retransmission gets the grant.
    assert_eq!(detour_state(&p, 1), vec!["requesting"]);
    assert!(p.c.peers(p.now).iter().all(|s| s.up));
    p.advance(Duration::from_secs(1), true);
    assert_eq!(p.created.len(), 1);
    // Nor does one end a granted lease.
    let forged = proto::encode(&Message::Refusal(proto::UnsignedRefusal {
        reason: RefusalReason::UnknownLease,
        nonce: None,
    }));
    assert!(p
        .c
        .on_datagram(p.now, MS, WP.parse().unwrap(), &forged)
        .is_err());
    assert_eq!(detour_state(&p, 1), vec!["connecting"]);
    assert!(p.destroyed.is_empty());
}

#[test]
fn a_renewal_refused_for_its_rate_keeps_the_detour_and_is_asked_again() {
    for vpn in [false, true] {
        let limits = waypoint::Limits {
            member_rate: 1,
            member_burst: 1,
            ..waypoint::Limits::default()
        };
        let peers = if vpn {
            Pair::vpn_alice()
        } else {
            Pair::alice()
        };
        let mut p = Pair::with_limits(peers, limits);
        p.event(established(1));
        if !vpn {
            let remote = p.created[0].1;
            p.event(PmEvent::SubEstablished {
                token: Token(1),
                subflow: sub(remote, 50001),
            });
        }
        // Just before the first renewal, someone (bob's own second
        // router, say) spends bob's renewal token.
        p.advance(Duration::from_millis(10), true);
        let due = p.c.next_timeout(p.now).expect("a renewal is due");
        let ms = Duration::from_millis(1);
        p.advance(due.saturating_duration_since(p.now) - ms, true);
        let stray = testutil::request_from(
            &p.c.cert,
            3,
            "alice",
            0xaa,
            p.ms(),
            RequestKind::Release {
                port: 1,
                lease: Nonce([0; 16]),
            },
            CLIENT_IP.parse().unwrap(),
        );
        let from = SocketAddr::new(CLIENT_IP.parse().unwrap(), 50000);
        let d = p.w.handle(p.now, p.ms(), from, &stray);
        assert!(
            matches!(
                d,
                Decision::Reply {
                    refused: Some(_),
                    ..
                }
            ),
            "{d:?}"
        );
        // The renewal is refused for the rate: nothing is torn down ...
        p.advance(Duration::from_millis(1), true);
        let limited = p.w.stats().refused.get("RateLimited").copied();
        assert_eq!(limited, Some(1), "vpn {vpn}: {:?}", p.w.stats());
        let granted = p.w.stats().granted;
        // ... and it is asked again a second later, and renewed.
        p.advance(Duration::from_millis(1000), true);
        assert!(p.w.stats().granted > granted, "vpn {vpn}");
        assert!(p.destroyed.is_empty());
        if vpn {
            assert_eq!(p.vpn, vec!["up 10.200.7.2"]);
        } else {
            assert_eq!(detour_state(&p, 1), vec!["established"]);
        }
    }
}
