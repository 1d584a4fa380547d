use super::*;
use crate::testutil::{self, cert, cert_by, nat, request, request_from, T0};

const MS: u64 = T0 * 1000;

fn from() -> SocketAddr {
    "10.0.1.2:50000".parse().unwrap()
}

fn waypoint() -> Waypoint {
    waypoint_with(Limits::default())
}

fn waypoint_with(limits: Limits) -> Waypoint {
    let settings = Settings {
        ports: (40000, 40009),
        lease: Duration::from_secs(60),
        max_per_member: 3,
        destinations: policy::Rules {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny_ports: vec!["25".parse().unwrap()],
        },
        max_skew: Duration::from_secs(30),
        vpn: Some(VpnSettings {
            subnet: "10.200.7.0/24".parse().unwrap(),
            subnet6: None,
            port: 51820,
            wg_key: [5; 32],
        }),
        limits,
    };
    let own = vec!["10.0.6.2".parse().unwrap()];
    let me = cert("alice", 2, Roles::CLIENT | Roles::WAYPOINT);
    Waypoint::new(
        settings,
        me,
        testutil::key(2),
        testutil::root_pub(),
        Revocations::default(),
        Routes::all_wan(own),
    )
}

#[test]
fn vpn_grant_renew_release_and_refusals() {
    use crate::trust::wg;
    let mut w = waypoint();
    let t = Instant::now();
    let vpn = |c: &Certificate, seed: u8, nonce: u8, kind: RequestKind| {
        request(c, seed, "alice", nonce, MS, kind)
    };
    // bob's certificate carries no WireGuard key.
    let d = w.handle(t, MS, from(), &vpn(&bob(), 3, 1, RequestKind::Vpn));
    assert_eq!(refusal(&d), RefusalReason::NoWireGuardKey);
    let k = testutil::key(4);
    let carol = Certificate::issue(
        &testutil::root(),
        "carol",
        k.public(),
        Some(wg::public(&wg::secret(&k))),
        T0 - 86_400,
        T0 + 86_400,
        Roles::CLIENT,
    )
    .unwrap();
    let d = w.handle(t, MS, from(), &vpn(&carol, 4, 2, RequestKind::Vpn));
    let Decision::VpnInstall { lease, bytes, .. } = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        lease.address,
        "10.200.7.2".parse::<std::net::Ipv4Addr>().unwrap()
    );
    assert_eq!(Some(lease.wg_key), carol.wg_key);
    assert!(matches!(
        outcome(&bytes),
        Outcome::VpnGranted { port: 51820, wg_key, .. } if wg_key == [5; 32]
    ));
    let renew = |lease: u8| RequestKind::VpnRenew {
        lease: Nonce([lease; 16]),
    };
    let d = w.handle(t, MS, from(), &vpn(&carol, 4, 3, renew(2)));
    assert!(matches!(d, Decision::VpnRefresh { .. }), "{d:?}");
    let d = w.handle(t, MS, from(), &vpn(&carol, 4, 4, renew(9)));
    assert_eq!(refusal(&d), RefusalReason::UnknownLease);
    // Revocation ends the tunnel; the daemon learns it from expire_vpn.
    w.revoke(t, carol.member);
    let ended = w.expire_vpn(t);
    assert_eq!(ended.len(), 1);
    assert_eq!(w.vpn_leases().count(), 0);
    // Expiry too.
    let mut w = waypoint();
    let _ = w.handle(t, MS, from(), &vpn(&carol, 4, 5, RequestKind::Vpn));
    assert!(w.expire_vpn(t + Duration::from_secs(59)).is_empty());
    assert_eq!(w.expire_vpn(t + Duration::from_secs(60)).len(), 1);
}

fn bob() -> Certificate {
    cert("bob", 3, Roles::CLIENT)
}

fn outcome(bytes: &[u8]) -> Outcome {
    match proto::decode(bytes) {
        Ok(Message::Response(r)) => {
            r.verify(&testutil::root_pub(), &Revocations::default(), T0)
                .expect("signed by alice");
            r.body.outcome
        }
        other => panic!("not a response: {other:?}"),
    }
}

fn refusal(d: &Decision) -> RefusalReason {
    match d {
        Decision::Reply {
            bytes,
            refused: Some(_),
            ..
        } => match outcome(bytes) {
            Outcome::Refused { reason } => reason,
            o => panic!("{o:?}"),
        },
        d => panic!("expected a refusal, got {d:?}"),
    }
}

/// The reason of an unsigned refusal (a request refused before it was
/// authenticated).
fn unsigned(d: &Decision) -> RefusalReason {
    match d {
        Decision::Reply {
            bytes,
            refused: Some(_),
            ..
        } => match proto::decode(bytes) {
            Ok(Message::Refusal(r)) => r.reason,
            other => panic!("not an unsigned refusal: {other:?}"),
        },
        d => panic!("expected a refusal, got {d:?}"),
    }
}

#[test]
fn grants_once_and_repeats_the_same_grant() {
    let mut w = waypoint();
    let t = Instant::now();
    let req = request(&bob(), 3, "alice", 1, MS, nat("10.0.3.2:5201"));
    let d = w.handle(t, MS, from(), &req);
    let (lease, bytes) = match d {
        Decision::Install {
            lease,
            bytes,
            timeout,
            ..
        } => {
            assert_eq!(timeout, Duration::from_secs(60));
            (lease, bytes)
        }
        d => panic!("{d:?}"),
    };
    assert!(bytes.len() <= req.len(), "amplification");
    assert_eq!(lease.client, from().ip());
    assert_eq!(lease.destination, "10.0.3.2:5201".parse().unwrap());
    assert!(matches!(outcome(&bytes), Outcome::Granted { port, .. } if port == lease.port));
    // A retransmission gets the same bytes and no second port.
    match w.handle(t + Duration::from_millis(300), MS + 300, from(), &req) {
        Decision::Reply {
            bytes: again,
            refused: None,
            ..
        } => assert_eq!(again, bytes),
        d => panic!("{d:?}"),
    }
    assert_eq!(w.leases().count(), 1);
    // The same copy from another port of the same address (a second
    // router behind the same NAT racing the member): the same reply.
    let port2: SocketAddr = "10.0.1.2:50001".parse().unwrap();
    assert!(matches!(
        w.handle(t, MS, port2, &req),
        Decision::Reply { bytes: ref b, refused: None, to } if *b == bytes && to == port2
    ));
    // The same request from another address names the wrong source.
    let other: SocketAddr = "10.9.9.9:1".parse().unwrap();
    let d = w.handle(t, MS, other, &req);
    assert!(matches!(
        outcome(reply_bytes(&d)),
        Outcome::WrongSource { observed } if observed == other.ip()
    ));
    assert_eq!(w.leases().count(), 1);
    // Another nonce with the same body is a new request; the same nonce
    // with another body (signed again) is a replay.
    let again = request(&bob(), 3, "alice", 1, MS + 1, nat("10.0.3.2:5201"));
    assert_eq!(
        refusal(&w.handle(t, MS, from(), &again)),
        RefusalReason::Replay
    );
}

fn reply_bytes(d: &Decision) -> &[u8] {
    match d {
        Decision::Reply { bytes, .. } => bytes,
        d => panic!("no reply: {d:?}"),
    }
}

#[test]
fn refuses_bad_members_and_requests() {
    let mut w = waypoint();
    let t = Instant::now();
    let dst = "10.0.3.2:5201";
    // Another collective.
    let evil_root = testutil::key(66);
    let mallory = cert_by(&evil_root, "mallory", 7, Roles::CLIENT, T0 - 10, T0 + 10);
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&mallory, 7, "alice", 1, MS, nat(dst)),
    );
    assert_eq!(unsigned(&d), RefusalReason::BadCertificate);
    // Expired.
    let old = cert_by(
        &testutil::root(),
        "bob",
        3,
        Roles::CLIENT,
        T0 - 100,
        T0 - 10,
    );
    let d = w.handle(t, MS, from(), &request(&old, 3, "alice", 2, MS, nat(dst)));
    assert_eq!(unsigned(&d), RefusalReason::BadCertificate);
    // Signed by a key that is not the certificate's.
    let d = w.handle(t, MS, from(), &request(&bob(), 9, "alice", 3, MS, nat(dst)));
    assert_eq!(unsigned(&d), RefusalReason::BadCertificate);
    // Stale and future timestamps.
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&bob(), 3, "alice", 4, MS - 31_000, nat(dst)),
    );
    assert_eq!(unsigned(&d), RefusalReason::Stale);
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&bob(), 3, "alice", 5, MS + 31_000, nat(dst)),
    );
    assert_eq!(unsigned(&d), RefusalReason::Stale);
    // A certificate whose fields were changed after the root signed it.
    let mut tampered = bob();
    tampered.roles = Roles::CLIENT | Roles::WAYPOINT;
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&tampered, 3, "alice", 11, MS, nat(dst)),
    );
    assert_eq!(unsigned(&d), RefusalReason::BadCertificate);
    // A member without the client role.
    let wp_only = cert("dave", 8, Roles::WAYPOINT);
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&wp_only, 8, "alice", 12, MS, nat(dst)),
    );
    assert_eq!(unsigned(&d), RefusalReason::NotAWaypoint);
    // Addressed to another waypoint.
    let d = w.handle(t, MS, from(), &request(&bob(), 3, "carol", 6, MS, nat(dst)));
    assert_eq!(unsigned(&d), RefusalReason::WrongWaypoint);
    // Private (not allowed), loopback and the waypoint's own address.
    for (n, bad) in [
        (7, "192.168.1.1:80"),
        (8, "127.0.0.1:22"),
        (9, "10.0.6.2:22"),
    ] {
        let d = w.handle(t, MS, from(), &request(&bob(), 3, "alice", n, MS, nat(bad)));
        assert_eq!(refusal(&d), RefusalReason::DestinationNotAllowed, "{bad}");
    }
    // Revoked at run time.
    let mut w2 = waypoint();
    w2.revoke(t, bob().member);
    let d = w2.handle(
        t,
        MS,
        from(),
        &request(&bob(), 3, "alice", 10, MS, nat(dst)),
    );
    assert_eq!(unsigned(&d), RefusalReason::Revoked);
    assert_eq!(w.leases().count(), 0);
    assert_eq!(w.stats().granted, 0);
}

#[test]
fn destinations_follow_the_routes_and_denied_ports() {
    use crate::routes::{Route, RouteKind};
    let mut w = waypoint();
    let t = Instant::now();
    let ask = |w: &mut Waypoint, n: u8, dst: &str| {
        w.handle(t, MS, from(), &request(&bob(), 3, "alice", n, MS, nat(dst)))
    };
    assert!(matches!(
        ask(&mut w, 1, "10.0.3.2:80"),
        Decision::Install { .. }
    ));
    assert_eq!(
        refusal(&ask(&mut w, 2, "10.0.3.2:25")),
        RefusalReason::DestinationNotAllowed,
        "denied port"
    );
    // The router gains an address and a LAN route (a public IPv4
    // subnet, a global IPv6 prefix): refused from the next request on,
    // although the allow list covers 10/8 and the rest is public.
    let cidr = |s: &str| s.parse().unwrap();
    w.set_routes(Routes::new(
        vec![
            Route::main(cidr("0.0.0.0/0"), RouteKind::Unicast, vec![1]),
            Route::main(cidr("::/0"), RouteKind::Unicast, vec![1]),
            Route::main(cidr("81.2.3.0/24"), RouteKind::Unicast, vec![2]),
            Route::main(cidr("2a02:9::/64"), RouteKind::Unicast, vec![2]),
        ],
        vec!["10.0.6.2".parse().unwrap(), "10.0.3.2".parse().unwrap()],
        vec![(1, "wan".into()), (2, "br-lan".into())],
    ));
    for (n, bad) in [
        (3, "10.0.3.2:80"),
        (4, "81.2.3.4:22"),
        (5, "[2a02:9::7]:22"),
    ] {
        assert_eq!(
            refusal(&ask(&mut w, n, bad)),
            RefusalReason::DestinationNotAllowed,
            "{bad}"
        );
    }
    assert!(matches!(
        ask(&mut w, 6, "81.2.4.4:80"),
        Decision::Install { .. }
    ));
    // No default route at all: nothing is served.
    w.set_routes(Routes::default());
    assert_eq!(
        refusal(&ask(&mut w, 7, "81.2.4.4:443")),
        RefusalReason::DestinationNotAllowed
    );
}

#[test]
fn ignores_garbage_and_never_amplifies() {
    let mut w = waypoint();
    let t = Instant::now();
    let req = request(&bob(), 3, "alice", 1, MS, nat("10.0.3.2:5201"));
    for bad in [
        &[][..],
        &[0x01][..],
        &req[..req.len() / 3],
        &[0xff; 700][..],
    ] {
        assert!(matches!(
            w.handle(t, MS, from(), bad),
            Decision::Ignore { .. }
        ));
    }
    // A request of another protocol version: a clear unsigned refusal.
    let mut v1 = req.clone();
    v1[0] = 1;
    let d = w.handle(t, MS, from(), &v1);
    assert_eq!(unsigned(&d), RefusalReason::UnsupportedVersion);
    match d {
        Decision::Reply {
            refused: Some(r),
            bytes,
            ..
        } => {
            assert!(r.contains("protocol version 1"), "{r}");
            assert!(bytes.len() < 24, "{} bytes", bytes.len());
        }
        d => panic!("{d:?}"),
    }
    // Garbage in another version's clothes (too short for a request): ignored.
    assert!(matches!(
        w.handle(t, MS, from(), &v1[..100]),
        Decision::Ignore { .. }
    ));
    let mut big = req.clone();
    big.resize(1500, 0);
    assert!(matches!(
        w.handle(t, MS, from(), &big),
        Decision::Ignore { .. }
    ));
    assert_eq!(w.leases().count(), 0);
    assert_eq!(w.stats().refused.get("garbage").copied(), Some(6));
    assert_eq!(
        w.stats().refused.get("UnsupportedVersion").copied(),
        Some(1)
    );
}

#[test]
fn quota_renew_release_and_expiry() {
    let mut w = waypoint();
    let t = Instant::now();
    let mut ports = Vec::new();
    for i in 0..3u8 {
        let dst = format!("10.0.3.2:{}", 5201 + u16::from(i));
        match w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", i + 1, MS, nat(&dst)),
        ) {
            Decision::Install { lease, .. } => ports.push(lease.port),
            d => panic!("{d:?}"),
        }
    }
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&bob(), 3, "alice", 9, MS, nat("10.0.3.2:6000")),
    );
    assert_eq!(refusal(&d), RefusalReason::QuotaExceeded);
    // Renew the first lease at t+50 s: it outlives the others.
    let t50 = t + Duration::from_secs(50);
    let renew = RequestKind::Renew {
        port: ports[0],
        destination: "10.0.3.2:5201".parse().unwrap(),
        lease: Nonce([1; 16]),
    };
    match w.handle(
        t50,
        MS + 50_000,
        from(),
        &request(&bob(), 3, "alice", 20, MS + 50_000, renew),
    ) {
        Decision::Refresh { lease, .. } => assert_eq!(lease.port, ports[0]),
        d => panic!("{d:?}"),
    }
    // Renewing a port one does not hold is refused.
    let bogus = RequestKind::Renew {
        port: 40009,
        destination: "10.0.3.2:5201".parse().unwrap(),
        lease: Nonce([1; 16]),
    };
    let d = w.handle(
        t50,
        MS + 50_000,
        from(),
        &request(&bob(), 3, "alice", 21, MS + 50_000, bogus),
    );
    assert_eq!(refusal(&d), RefusalReason::UnknownLease);
    // Release the second.
    // A renewal naming another lease's nonce (a restarted waypoint reused
    // the port) is refused.
    let alias = RequestKind::Renew {
        port: ports[1],
        destination: "10.0.3.2:5202".parse().unwrap(),
        lease: Nonce([9; 16]),
    };
    let d = w.handle(
        t50,
        MS + 50_000,
        from(),
        &request(&bob(), 3, "alice", 23, MS + 50_000, alias),
    );
    assert_eq!(refusal(&d), RefusalReason::UnknownLease);
    let rel = RequestKind::Release {
        port: ports[1],
        lease: Nonce([2; 16]),
    };
    assert!(matches!(
        w.handle(
            t50,
            MS + 50_000,
            from(),
            &request(&bob(), 3, "alice", 22, MS + 50_000, rel)
        ),
        Decision::Remove { .. }
    ));
    // At t+60 s the third expires; the renewed first lives until t+110 s.
    let gone = w.expire(t + Duration::from_secs(60));
    assert_eq!(
        gone.iter().map(|l| l.port).collect::<Vec<_>>(),
        vec![ports[2]]
    );
    assert_eq!(w.next_timeout(), Some(t50 + Duration::from_secs(60)));
    assert_eq!(w.leases().count(), 1);
}

#[test]
fn used_up_donation_refuses_grants_and_renewals_but_not_releases() {
    let mut w = waypoint();
    let t = Instant::now();
    let port = match w.handle(
        t,
        MS,
        from(),
        &request(&bob(), 3, "alice", 1, MS, nat("10.0.3.2:5201")),
    ) {
        Decision::Install { lease, .. } => lease.port,
        d => panic!("{d:?}"),
    };
    w.set_used_up(Some("100 of 100 bytes".into()));
    assert_eq!(w.used_up(), Some("100 of 100 bytes"));
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&bob(), 3, "alice", 2, MS, nat("10.0.3.2:5202")),
    );
    assert_eq!(refusal(&d), RefusalReason::DonationUsedUp);
    let renew = RequestKind::Renew {
        port,
        destination: "10.0.3.2:5201".parse().unwrap(),
        lease: Nonce([1; 16]),
    };
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&bob(), 3, "alice", 3, MS, renew.clone()),
    );
    assert_eq!(refusal(&d), RefusalReason::DonationUsedUp);
    assert_eq!(w.stats().refused.get("DonationUsedUp").copied(), Some(2));
    // A new month: grants again, and the lease is still there to renew.
    w.set_used_up(None);
    let d = w.handle(t, MS, from(), &request(&bob(), 3, "alice", 4, MS, renew));
    assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
    // Releases go through while used up (the member gives the port back).
    w.set_used_up(Some("used up".into()));
    let rel = RequestKind::Release {
        port,
        lease: Nonce([1; 16]),
    };
    let d = w.handle(t, MS, from(), &request(&bob(), 3, "alice", 5, MS, rel));
    assert!(matches!(d, Decision::Remove { .. }), "{d:?}");
    assert_eq!(w.leases().count(), 0);
}

#[test]
fn abort_undoes_a_failed_install_or_join() {
    let mut w = waypoint();
    let t = Instant::now();
    let req = request(&bob(), 3, "alice", 1, MS, nat("10.0.3.2:5201"));
    let Decision::Install {
        lease,
        to,
        nonce,
        bytes,
        ..
    } = w.handle(t, MS, from(), &req)
    else {
        panic!("no install")
    };
    let d = w.abort(t, MS, &lease, to, nonce, bytes.len(), "netlink said no");
    assert_eq!(refusal(&d), RefusalReason::Internal);
    assert_eq!(w.leases().count(), 0);
    // The client's retransmission is evaluated afresh and granted.
    let port = port_of(&w.handle(t, MS, from(), &req));
    // A join whose element refresh failed is taken back alone: the lease
    // and its first holder carry on, and the retransmission joins again.
    let join = request(&bob(), 3, "alice", 2, MS, nat("10.0.3.2:5201"));
    let Decision::Join {
        lease, to, nonce, ..
    } = w.handle(t, MS, from(), &join)
    else {
        panic!("no join")
    };
    let d = w.abort(t, MS, &lease, to, nonce, bytes.len(), "netlink said no");
    assert_eq!(refusal(&d), RefusalReason::Internal);
    let left: Vec<usize> = w.leases().map(|l| l.holders.len()).collect();
    assert_eq!(left, vec![1]);
    let renewal = request(&bob(), 3, "alice", 3, MS, renew(port, "10.0.3.2:5201", 1));
    assert!(matches!(
        w.handle(t, MS, from(), &renewal),
        Decision::Refresh { .. }
    ));
    assert!(matches!(
        w.handle(t, MS, from(), &join),
        Decision::Join { .. }
    ));
}

fn member(name: &str, seed: u8) -> Certificate {
    cert(name, seed, Roles::CLIENT)
}

fn renew(port: u16, dst: &str, lease: u8) -> RequestKind {
    RequestKind::Renew {
        port,
        destination: dst.parse().unwrap(),
        lease: Nonce([lease; 16]),
    }
}

fn port_of(d: &Decision) -> u16 {
    match d {
        Decision::Install { lease, .. } => lease.port,
        d => panic!("expected a grant, got {d:?}"),
    }
}

#[test]
fn a_flooding_source_is_dropped_unread_and_honest_requests_cost_it_nothing() {
    let mut w = waypoint_with(Limits {
        source_rate: 1,
        source_burst: 3,
        ..Limits::default()
    });
    let t = Instant::now();
    let dst = "10.0.3.2:5201";
    // Authenticated requests of their own member never spend the source's
    // tokens (their member's instead).
    let port = port_of(&w.handle(t, MS, from(), &request(&bob(), 3, "alice", 1, MS, nat(dst))));
    for n in 2..10 {
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", n, MS, renew(port, dst, 1)),
        );
        assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
    }
    // Garbage spends them: three, then the source is dropped unread.
    for _ in 0..3 {
        assert!(matches!(
            w.handle(t, MS, from(), &[0xff; 700]),
            Decision::Ignore { .. }
        ));
    }
    let next = request(&bob(), 3, "alice", 20, MS, renew(port, dst, 1));
    assert_eq!(
        w.handle(t, MS, from(), &next),
        Decision::Drop {
            source: from().ip()
        }
    );
    assert_eq!(w.stats().refused.get("RateLimited").copied(), Some(1));
    // ... and goes to the kernel's drop list for a while.
    assert_eq!(w.take_filter(t), Some(vec![from().ip()]));
    assert_eq!(w.take_filter(t), None);
    assert_eq!(w.next_timeout(), Some(t + limits::BLOCK_BASE));
    // Another source is not affected.
    let other: SocketAddr = "10.0.9.9:7000".parse().unwrap();
    let carol = request_from(&member("carol", 4), 4, "alice", 1, MS, nat(dst), other.ip());
    assert!(matches!(
        w.handle(t, MS, other, &carol),
        Decision::Install { .. }
    ));
    // A token comes back after a second.
    let d = w.handle(t + limits::token_time(1), MS + 1000, from(), &next);
    assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
    // The block ends.
    assert_eq!(w.take_filter(t + limits::BLOCK_BASE), Some(vec![]));
}

#[test]
fn a_member_over_its_rate_is_refused_and_forgers_cannot_spend_its_tokens() {
    let mut w = waypoint_with(Limits {
        member_rate: 1,
        member_burst: 2,
        ..Limits::default()
    });
    let t = Instant::now();
    let dst = |p: u16| format!("10.0.3.2:{p}");
    let ask = |w: &mut Waypoint, t: Instant, n: u8, kind: RequestKind| {
        w.handle(t, MS, from(), &request(&bob(), 3, "alice", n, MS, kind))
    };
    // Two new tunnels, then bob is over his rate for new ones: a signed
    // refusal (he is authenticated; he may act on it).
    let port = port_of(&ask(&mut w, t, 1, nat(&dst(5201))));
    port_of(&ask(&mut w, t, 2, nat(&dst(5202))));
    assert_eq!(
        refusal(&ask(&mut w, t, 3, nat(&dst(5203)))),
        RefusalReason::RateLimited
    );
    // His renewals have their own bucket: the burst did not starve them.
    for n in 4..6 {
        let d = ask(&mut w, t, n, renew(port, &dst(5201), 1));
        assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
    }
    let d = ask(&mut w, t, 6, renew(port, &dst(5201), 1));
    assert_eq!(refusal(&d), RefusalReason::RateLimited);
    // Another member is not affected.
    let carol = request(&member("carol", 4), 4, "alice", 1, MS, nat(&dst(5201)));
    assert!(matches!(
        w.handle(t, MS, from(), &carol),
        Decision::Install { .. }
    ));
    // A second later bob has a token of each; forged requests in his name
    // (his certificate, another key's signature) cannot spend them.
    let t1 = t + Duration::from_secs(1);
    for n in 30..40 {
        let forged = request(&bob(), 9, "alice", n, MS, renew(port, &dst(5201), 1));
        assert_eq!(
            unsigned(&w.handle(t1, MS, from(), &forged)),
            RefusalReason::BadCertificate
        );
    }
    let d = ask(&mut w, t1, 7, renew(port, &dst(5201), 1));
    assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
    assert!(matches!(
        ask(&mut w, t1, 8, nat(&dst(5203))),
        Decision::Install { .. }
    ));
    // Bob's certificate was checked once; the forged requests cost one
    // signature check each (the request's), none for the certificate.
    assert_eq!(w.certs.len(), 2);
}

#[test]
fn one_member_cannot_fill_the_replay_cache_for_another() {
    let mut w = waypoint_with(Limits {
        seen_cap: 4,
        ..Limits::default()
    });
    let t = Instant::now();
    let dst = "10.0.3.2:5201";
    let port = port_of(&w.handle(t, MS, from(), &request(&bob(), 3, "alice", 1, MS, nat(dst))));
    for n in 2..=4 {
        let d = w.handle(
            t,
            MS,
            from(),
            &request(&bob(), 3, "alice", n, MS, renew(port, dst, 1)),
        );
        assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
    }
    // The cache holds 4: bob has all of it and is refused ...
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&bob(), 3, "alice", 5, MS, renew(port, dst, 1)),
    );
    assert_eq!(refusal(&d), RefusalReason::RateLimited);
    // ... while carol, holding nothing, is served up to her fair share.
    let carol = member("carol", 4);
    let cport = port_of(&w.handle(t, MS, from(), &request(&carol, 4, "alice", 1, MS, nat(dst))));
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&carol, 4, "alice", 2, MS, renew(cport, dst, 1)),
    );
    assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&carol, 4, "alice", 3, MS, renew(cport, dst, 1)),
    );
    assert_eq!(refusal(&d), RefusalReason::RateLimited);
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&bob(), 3, "alice", 6, MS, renew(port, dst, 1)),
    );
    assert_eq!(refusal(&d), RefusalReason::RateLimited);
    // Entries age out after two freshness windows: bob is served again.
    let t60 = t + Duration::from_secs(60);
    let d = w.handle(
        t60,
        MS + 60_000,
        from(),
        &request(&bob(), 3, "alice", 7, MS + 60_000, renew(port, dst, 1)),
    );
    assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
    assert_eq!(w.seen.len(), 1);
    assert_eq!(w.seen_held.len(), 1);
}

#[test]
fn a_request_from_another_address_than_its_source_gets_only_the_observed_address() {
    let mut w = waypoint_with(Limits {
        member_rate: 1,
        member_burst: 1,
        ..Limits::default()
    });
    let t = Instant::now();
    let req = request(&bob(), 3, "alice", 1, MS, nat("10.0.3.2:5201"));
    // Sniffed and replayed from elsewhere, many times: refused, signed,
    // naming the replayer's own address; no lease, and bob's token is
    // not spent (the replayer's source pays).
    let nat_ip: SocketAddr = "198.51.100.7:4000".parse().unwrap();
    for _ in 0..10 {
        let d = w.handle(t, MS, nat_ip, &req);
        assert!(matches!(
            outcome(reply_bytes(&d)),
            Outcome::WrongSource { observed } if observed == nat_ip.ip()
        ));
    }
    assert_eq!(w.leases().count(), 0);
    assert_eq!(w.stats().granted, 0);
    assert_eq!(w.stats().refused.get("WrongSource").copied(), Some(10));
    // Bob's own copy is granted.
    assert!(matches!(
        w.handle(t, MS, from(), &req),
        Decision::Install { .. }
    ));
    // A member behind a NAT, told its address, asks again naming it.
    let t1 = t + Duration::from_secs(1);
    let again = request_from(&bob(), 3, "alice", 2, MS, nat("10.0.3.2:5202"), nat_ip.ip());
    match w.handle(t1, MS, nat_ip, &again) {
        Decision::Install { lease, .. } => assert_eq!(lease.client, nat_ip.ip()),
        d => panic!("{d:?}"),
    }
}

#[test]
fn evidence_share_refuses_new_tunnels_of_a_member_whose_share_is_full() {
    let dst = |p: u16| format!("10.0.3.2:{p}");
    let first = request(&bob(), 3, "alice", 1, MS, nat(&dst(5201)));
    let cost = evidence::lease_cost(proto::unpadded(&first).unwrap().len());
    let mut w = waypoint_with(Limits {
        evidence_share: Some(2 * cost + cost / 2),
        ..Limits::default()
    });
    let t = Instant::now();
    let p1 = port_of(&w.handle(t, MS, from(), &first));
    let p2 = port_of(&w.handle(
        t,
        MS,
        from(),
        &request(&bob(), 3, "alice", 2, MS, nat(&dst(5202))),
    ));
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&bob(), 3, "alice", 3, MS, nat(&dst(5203))),
    );
    assert_eq!(refusal(&d), RefusalReason::EvidenceFull);
    // Renewals and releases go on.
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&bob(), 3, "alice", 4, MS, renew(p1, &dst(5201), 1)),
    );
    assert!(matches!(d, Decision::Refresh { .. }), "{d:?}");
    let rel = RequestKind::Release {
        port: p2,
        lease: Nonce([2; 16]),
    };
    assert!(matches!(
        w.handle(t, MS, from(), &request(&bob(), 3, "alice", 5, MS, rel)),
        Decision::Remove { .. }
    ));
    // Another member has its own share.
    let carol = request(&member("carol", 4), 4, "alice", 1, MS, nat(&dst(5201)));
    assert!(matches!(
        w.handle(t, MS, from(), &carol),
        Decision::Install { .. }
    ));
    // A day later bob's records no longer count.
    let day = evidence::WINDOW + Duration::from_secs(60);
    let ms = MS + day.as_millis() as u64;
    let d = w.handle(
        t + day,
        ms,
        from(),
        &request(&bob(), 3, "alice", 6, ms, nat(&dst(5203))),
    );
    assert!(matches!(d, Decision::Install { .. }), "{d:?}");
    // A restart does not give bob a fresh share: the log's records count.
    let mut w = waypoint_with(Limits {
        evidence_share: Some(cost),
        ..Limits::default()
    });
    let kept = evidence::Record {
        at_ms: MS,
        from: from(),
        member_id: bob().member.to_string(),
        member: "bob".into(),
        grant: format!("nat {p1} -> {}", dst(5201)),
        bytes: None,
        request: proto::unpadded(&first).unwrap().to_vec(),
    };
    w.seed_evidence(&[kept]);
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&bob(), 3, "alice", 7, MS, nat(&dst(5204))),
    );
    assert_eq!(refusal(&d), RefusalReason::EvidenceFull);
}

#[test]
fn port_range_and_vpn_subnet_exhaustion_and_no_vpn() {
    let mut w = waypoint();
    let t = Instant::now();
    // Ten ports for one client address; four members of three tunnels.
    let mut granted = 0;
    for (name, seed) in [("bob", 3), ("carol", 4), ("dave", 5), ("erin", 6)] {
        for n in 1..=3u8 {
            let d = w.handle(
                t,
                MS,
                from(),
                &request(
                    &member(name, seed),
                    seed,
                    "alice",
                    n,
                    MS,
                    nat(&format!("10.0.3.2:{}", 5200 + u16::from(n))),
                ),
            );
            match d {
                Decision::Install { .. } => granted += 1,
                d => assert_eq!(refusal(&d), RefusalReason::NoPortsLeft),
            }
        }
    }
    assert_eq!(granted, 10);
    assert_eq!(w.stats().refused.get("NoPortsLeft").copied(), Some(2));
    // A waypoint without VPN tunnels; one with a /30 (one member address).
    let k = |seed: u8| testutil::key(seed);
    let wg_member = |name: &str, seed: u8| {
        let wg = crate::trust::wg::public(&crate::trust::wg::secret(&k(seed)));
        Certificate::issue(
            &testutil::root(),
            name,
            k(seed).public(),
            Some(wg),
            T0 - 10,
            T0 + 10,
            Roles::CLIENT,
        )
        .unwrap()
    };
    let mut w = waypoint();
    w.vpn = None;
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&wg_member("carol", 4), 4, "alice", 1, MS, RequestKind::Vpn),
    );
    assert_eq!(refusal(&d), RefusalReason::NoVpn);
    let mut w = waypoint();
    w.vpn = Some(VpnTable::new(VpnSettings {
        subnet: "10.200.7.0/30".parse().unwrap(),
        subnet6: None,
        port: 51820,
        wg_key: [5; 32],
    }));
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&wg_member("carol", 4), 4, "alice", 1, MS, RequestKind::Vpn),
    );
    assert!(matches!(d, Decision::VpnInstall { .. }), "{d:?}");
    let d = w.handle(
        t,
        MS,
        from(),
        &request(&wg_member("dave", 5), 5, "alice", 1, MS, RequestKind::Vpn),
    );
    assert_eq!(refusal(&d), RefusalReason::NoAddressesLeft);
}

mod shared;
