use std::time::{Duration, Instant};

use neli::consts::nl::NlmF;

use super::*;
use crate::sys::genl::test_attr as a;
use crate::sys::netlink::testns::{is_root, NsThread};
use crate::sys::netlink::testsock;

fn event(cmd: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![cmd, 1, 0, 0];
    for x in attrs {
        v.extend_from_slice(x);
    }
    v
}

const EV_CREATED: u8 = 0x1;
const EV_ESTABLISHED: u8 = 0x2;
const EV_CLOSED: u8 = 0x3;
const EV_SUB_ESTABLISHED: u8 = 0xa;
const EV_SUB_CLOSED: u8 = 0xb;
const EV_SUB_PRIORITY: u8 = 0xd;
const ATTR_TOKEN: u16 = 0x1;
const ATTR_FAMILY: u16 = 0x2;
const ATTR_LOC_ID: u16 = 0x3;
const ATTR_REM_ID: u16 = 0x4;
const ATTR_SADDR4: u16 = 0x5;
const ATTR_SADDR6: u16 = 0x6;
const ATTR_DADDR4: u16 = 0x7;
const ATTR_DADDR6: u16 = 0x8;
const ATTR_SPORT: u16 = 0x9;
const ATTR_DPORT: u16 = 0xa;
const ATTR_BACKUP: u16 = 0xb;
const ATTR_ERROR: u16 = 0xc;
const ATTR_FLAGS: u16 = 0xd;
const ATTR_SERVER_SIDE: u16 = 0x12;

fn sub_attrs_v4() -> Vec<Vec<u8>> {
    vec![
        a(ATTR_TOKEN, &0xdead_beefu32.to_ne_bytes()),
        a(ATTR_FAMILY, &2u16.to_ne_bytes()),
        a(ATTR_LOC_ID, &[1]),
        a(ATTR_REM_ID, &[0]),
        a(ATTR_SADDR4, &[10, 0, 1, 1]),
        a(ATTR_DADDR4, &[203, 0, 113, 5]),
        a(ATTR_SPORT, &[0x9c, 0x40]), // 40000, network order
        a(ATTR_DPORT, &[0x01, 0xbb]), // 443
        a(ATTR_BACKUP, &[1]),
    ]
}

#[test]
fn decode_created_server_side_by_flag_and_attr() {
    let base = vec![
        a(ATTR_TOKEN, &0x0102_0304u32.to_ne_bytes()),
        a(ATTR_FAMILY, &2u16.to_ne_bytes()),
        a(ATTR_SADDR4, &[127, 0, 0, 1]),
        a(ATTR_DADDR4, &[127, 0, 0, 2]),
        a(ATTR_SPORT, &1234u16.to_be_bytes()),
        a(ATTR_DPORT, &80u16.to_be_bytes()),
    ];
    let ev = decode_event_bytes(&event(EV_CREATED, &base)).unwrap();
    assert_eq!(
        ev,
        PmEvent::Created {
            token: Token(0x0102_0304),
            local: "127.0.0.1:1234".parse().unwrap(),
            remote: "127.0.0.2:80".parse().unwrap(),
            server_side: false,
        }
    );
    let mut with_flag = base.clone();
    with_flag.push(a(ATTR_FLAGS, &2u16.to_ne_bytes()));
    assert!(matches!(
        decode_event_bytes(&event(EV_ESTABLISHED, &with_flag)).unwrap(),
        PmEvent::Established {
            server_side: true,
            ..
        }
    ));
    // DENY_JOIN_ID0 (bit 0) is not server side.
    let mut deny = base.clone();
    deny.push(a(ATTR_FLAGS, &1u16.to_ne_bytes()));
    assert!(matches!(
        decode_event_bytes(&event(EV_ESTABLISHED, &deny)).unwrap(),
        PmEvent::Established {
            server_side: false,
            ..
        }
    ));
    let mut with_attr = base;
    with_attr.push(a(ATTR_SERVER_SIDE, &[1]));
    assert!(matches!(
        decode_event_bytes(&event(EV_CREATED, &with_attr)).unwrap(),
        PmEvent::Created {
            server_side: true,
            ..
        }
    ));
}

#[test]
fn decode_sub_events_v4() {
    let ev = decode_event_bytes(&event(EV_SUB_ESTABLISHED, &sub_attrs_v4())).unwrap();
    let want = SubflowInfo {
        local_id: AddrId(1),
        remote_id: AddrId(0),
        local: "10.0.1.1:40000".parse().unwrap(),
        remote: "203.0.113.5:443".parse().unwrap(),
        backup: true,
    };
    assert_eq!(
        ev,
        PmEvent::SubEstablished {
            token: Token(0xdead_beef),
            subflow: want
        }
    );
    let mut closed = sub_attrs_v4();
    closed.push(a(ATTR_ERROR, &[111]));
    assert_eq!(
        decode_event_bytes(&event(EV_SUB_CLOSED, &closed)).unwrap(),
        PmEvent::SubClosed {
            token: Token(0xdead_beef),
            subflow: want,
            error: Some(111)
        }
    );
    let mut closed32 = sub_attrs_v4();
    closed32.push(a(ATTR_ERROR, &104u32.to_ne_bytes()));
    assert!(matches!(
        decode_event_bytes(&event(EV_SUB_CLOSED, &closed32)).unwrap(),
        PmEvent::SubClosed {
            error: Some(104),
            ..
        }
    ));
    assert!(matches!(
        decode_event_bytes(&event(EV_SUB_PRIORITY, &sub_attrs_v4())).unwrap(),
        PmEvent::SubPriority { .. }
    ));
}

#[test]
fn decode_sub_established_v6() {
    let s: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let d: Ipv6Addr = "2001:db8::2".parse().unwrap();
    let attrs = vec![
        a(ATTR_TOKEN, &7u32.to_ne_bytes()),
        a(ATTR_FAMILY, &10u16.to_ne_bytes()),
        a(ATTR_LOC_ID, &[3]),
        a(ATTR_REM_ID, &[4]),
        a(ATTR_SADDR6, &s.octets()),
        a(ATTR_DADDR6, &d.octets()),
        a(ATTR_SPORT, &5000u16.to_be_bytes()),
        a(ATTR_DPORT, &6000u16.to_be_bytes()),
        a(ATTR_BACKUP, &[0]),
    ];
    let PmEvent::SubEstablished { token, subflow } =
        decode_event_bytes(&event(EV_SUB_ESTABLISHED, &attrs)).unwrap()
    else {
        panic!("wrong event");
    };
    assert_eq!(token, Token(7));
    assert_eq!(subflow.local, SocketAddr::new(s.into(), 5000));
    assert_eq!(subflow.remote, SocketAddr::new(d.into(), 6000));
    assert_eq!(
        (subflow.local_id, subflow.remote_id, subflow.backup),
        (AddrId(3), AddrId(4), false)
    );
}

#[test]
fn decode_other_and_odd_events() {
    assert_eq!(
        decode_event_bytes(&event(EV_CLOSED, &[a(ATTR_TOKEN, &9u32.to_ne_bytes())])).unwrap(),
        PmEvent::Closed { token: Token(9) }
    );
    // ANNOUNCED, LISTENER_CREATED: Other.
    assert_eq!(
        decode_event_bytes(&event(
            6,
            &[a(ATTR_TOKEN, &9u32.to_ne_bytes()), a(ATTR_REM_ID, &[2])]
        ))
        .unwrap(),
        PmEvent::Other {
            kind: 6,
            token: Some(Token(9))
        }
    );
    assert_eq!(
        decode_event_bytes(&event(15, &[a(ATTR_FAMILY, &2u16.to_ne_bytes())])).unwrap(),
        PmEvent::Other {
            kind: 15,
            token: None
        }
    );
    // CREATED without ports, CLOSED without token: Other, not an error.
    assert_eq!(
        decode_event_bytes(&event(EV_CREATED, &[a(ATTR_TOKEN, &9u32.to_ne_bytes())])).unwrap(),
        PmEvent::Other {
            kind: EV_CREATED,
            token: Some(Token(9))
        }
    );
    assert_eq!(
        decode_event_bytes(&event(EV_CLOSED, &[])).unwrap(),
        PmEvent::Other {
            kind: EV_CLOSED,
            token: None
        }
    );
    // A known attribute with a wrong width is skipped (logged), the rest decodes.
    let mut bad = sub_attrs_v4();
    bad.push(a(ATTR_SPORT, &[1, 2, 3]));
    bad.insert(0, a(ATTR_SPORT, &[1, 2, 3]));
    assert!(matches!(
        decode_event_bytes(&event(EV_SUB_ESTABLISHED, &bad)).unwrap(),
        PmEvent::SubEstablished { .. }
    ));
}

#[test]
fn decode_malformed_is_an_error_not_a_panic() {
    assert!(decode_event_bytes(&[]).is_err());
    assert!(decode_event_bytes(&[1, 1]).is_err());
    let good = event(EV_SUB_ESTABLISHED, &sub_attrs_v4());
    for cut in 0..good.len() {
        let _ = decode_event_bytes(&good[..cut]);
    }
    // A cut in the middle of an attribute is an error.
    assert!(matches!(
        decode_event_bytes(&good[..good.len() - 4]),
        Err(SysError::Decode { .. })
    ));
    // Flipped bytes anywhere: never a panic.
    for i in 0..good.len() {
        for v in [0u8, 0xff, 3] {
            let mut g = good.clone();
            g[i] = v;
            let _ = decode_event_bytes(&g);
        }
    }
}

/// Whole datagrams of the event group: messages of other types are
/// skipped, a broken header ends the datagram with an error.
#[test]
fn decode_datagram_of_events() {
    let body = event(EV_CLOSED, &[a(ATTR_TOKEN, &9u32.to_ne_bytes())]);
    let msg = |ty: u16| {
        let mut v = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&[0; 10]);
        v.extend_from_slice(&body);
        v
    };
    let mut d = msg(0x1d);
    d.extend(msg(0x99));
    d.extend(msg(0x1d));
    let evs: Vec<_> = decode_datagram(0x1d, &d)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(evs, vec![PmEvent::Closed { token: Token(9) }; 2]);
    let mut broken = msg(0x1d);
    broken.extend_from_slice(&[3, 0, 0, 0, 0x1d, 0]);
    let r = decode_datagram(0x1d, &broken);
    assert!(matches!(&r[..], [Ok(_), Err(SysError::Malformed { .. })]));
    for cut in 0..d.len() {
        let _ = decode_datagram(0x1d, &d[..cut]);
    }
}

/// Real datagrams of the `mptcp_pm_events` group and a real refusal,
/// captured on this kernel (6.18, x86_64, `mptcp_pm` family id 0x1c)
/// during `root_userspace_pm_over_loopback`: a client connection
/// 127.0.0.1:56410 -> 127.0.0.1:46325 (token 0x5add00bf; the server side's
/// token 0x28ca890f) and a subflow from 127.0.0.1:60077 (id 1) to
/// 127.0.0.2:46325. Little-endian captures: the tests built from
/// `to_ne_bytes` cover big-endian targets.
#[cfg(target_endian = "little")]
#[test]
fn decode_captured_events() {
    let one = |d: &[u8]| {
        let mut r = decode_datagram(0x1c, d);
        assert_eq!(r.len(), 1, "{r:?}");
        r.pop().unwrap().unwrap()
    };
    let (client, server): (SocketAddr, SocketAddr) = (
        "127.0.0.1:56410".parse().unwrap(),
        "127.0.0.1:46325".parse().unwrap(),
    );
    let (tok, srv_tok) = (Token(0x5add_00bf), Token(0x28ca_890f));
    assert_eq!(
        one(CAPTURED_LISTENER_CREATED),
        PmEvent::Other {
            kind: 15,
            token: None
        }
    );
    assert_eq!(
        one(CAPTURED_CREATED),
        PmEvent::Created {
            token: tok,
            local: client,
            remote: server,
            server_side: false
        }
    );
    assert_eq!(
        one(CAPTURED_CREATED_SERVER),
        PmEvent::Created {
            token: srv_tok,
            local: server,
            remote: client,
            server_side: true
        }
    );
    let sub = SubflowInfo {
        local_id: AddrId(1),
        remote_id: AddrId(1),
        local: "127.0.0.1:60077".parse().unwrap(),
        remote: "127.0.0.2:46325".parse().unwrap(),
        backup: false,
    };
    assert_eq!(
        one(CAPTURED_SUB_ESTABLISHED),
        PmEvent::SubEstablished {
            token: tok,
            subflow: sub
        }
    );
    assert_eq!(
        one(CAPTURED_SUB_PRIORITY),
        PmEvent::SubPriority {
            token: srv_tok,
            subflow: SubflowInfo {
                local: sub.remote,
                remote: sub.local,
                backup: true,
                ..sub
            },
        }
    );
    assert_eq!(
        one(CAPTURED_SUB_CLOSED),
        PmEvent::SubClosed {
            token: tok,
            subflow: sub,
            error: None
        }
    );
    assert_eq!(one(CAPTURED_CLOSED), PmEvent::Closed { token: tok });
    // The same datagrams with another family id are not ours.
    assert!(decode_datagram(0x1d, CAPTURED_CLOSED).is_empty());
    // All of them in one datagram, cut anywhere: never a panic.
    let all: Vec<u8> = [CAPTURED_CREATED, CAPTURED_SUB_ESTABLISHED, CAPTURED_CLOSED].concat();
    assert_eq!(decode_datagram(0x1c, &all).len(), 3);
    for cut in 0..all.len() {
        let _ = decode_datagram(0x1c, &all[..cut]);
    }
}

/// The kernel's refusal, as it arrived: errno and extack text survive.
#[cfg(target_endian = "little")]
#[test]
fn captured_refusal_keeps_extack() {
    let m = Messages::new("t", CAPTURED_INVALID_TOKEN)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(*m.nl_seq(), 1);
    let NlPayload::Err(e) = m.nl_payload() else {
        panic!("not an error: {m:?}");
    };
    let err = genl::kernel_error("mptcp_pm SUBFLOW_CREATE", e.error(), e.ext_ack());
    assert_eq!(
        err.to_string(),
        "mptcp_pm SUBFLOW_CREATE: Invalid argument (os error 22) (invalid token)"
    );
    // The echoed request is ours: SUBFLOW_CREATE.
    let req = genl::genl_payload("t", e.nlmsg().nl_payload().as_ref()).unwrap();
    assert_eq!(PmCmd::from(*req.cmd()), PmCmd::SubflowCreate);
}

/// Encodes `m` as the kernel receives it (family 0x1d, sequence 1).
fn wire(m: GenlMsg) -> Vec<u8> {
    genl::encode("t", 0x1d, NlmF::REQUEST | NlmF::ACK, 1, m).unwrap()
}

/// The SUBFLOW_CREATE bytes, field by field: PORT is host order.
#[test]
fn subflow_create_encoding() {
    let m = subflow_create_msg(
        "t",
        Token(0xaabb_ccdd),
        "10.0.1.1".parse().unwrap(),
        AddrId(1),
        "203.0.113.5:40000".parse().unwrap(),
    )
    .unwrap();
    let b = wire(m);
    let mut want = Vec::new();
    want.extend_from_slice(&(b.len() as u32).to_ne_bytes());
    want.extend_from_slice(&0x1du16.to_ne_bytes());
    want.extend_from_slice(&5u16.to_ne_bytes()); // REQUEST | ACK
    want.extend_from_slice(&1u32.to_ne_bytes()); // seq
    want.extend_from_slice(&[0; 4]); // pid
    want.extend_from_slice(&[0xa, 1, 0, 0]);
    want.extend(a(4, &0xaabb_ccddu32.to_ne_bytes()));
    let mut local = a(1, &2u16.to_ne_bytes());
    local.extend(a(2, &[1]));
    local.extend(a(3, &[10, 0, 1, 1]));
    want.extend(a(1 | 0x8000, &local));
    let mut remote = a(1, &2u16.to_ne_bytes());
    remote.extend(a(3, &[203, 0, 113, 5]));
    remote.extend(a(5, &40000u16.to_ne_bytes()));
    want.extend(a(6 | 0x8000, &remote));
    assert_eq!(b, want);
    // On little-endian x86 the port bytes are 0x40 0x9c: host order, not network.
    if cfg!(target_endian = "little") {
        let port_at = b.len() - 4;
        assert_eq!(&b[port_at..port_at + 2], &[0x40, 0x9c]);
    }
    assert!(subflow_create_msg(
        "t",
        Token(1),
        "10.0.0.1".parse().unwrap(),
        AddrId::INITIAL,
        "10.0.0.2:1".parse().unwrap()
    )
    .is_err());
    assert!(subflow_create_msg(
        "t",
        Token(1),
        "::1".parse().unwrap(),
        AddrId(1),
        "10.0.0.2:1".parse().unwrap()
    )
    .is_err());
}

#[test]
fn set_backup_and_destroy_encoding() {
    let local: SocketAddr = "[2001:db8::1]:5555".parse().unwrap();
    let remote: SocketAddr = "[2001:db8::2]:443".parse().unwrap();
    let m = set_backup_msg("t", Token(5), local, remote, true).unwrap();
    assert_eq!(PmCmd::from(*m.cmd()), PmCmd::SetFlags);
    let attrs: Vec<_> = m.attrs().iter().collect();
    assert_eq!(genl::u32_ne("t", attrs[0]).unwrap(), 5);
    assert!(*attrs[1].nla_type().nla_nested());
    let l = genl::nested("t", attrs[1]).unwrap();
    assert_eq!(
        l.iter()
            .map(|x| AddrAttr::from(genl::ty(x)))
            .collect::<Vec<_>>(),
        [
            AddrAttr::Family,
            AddrAttr::Addr6,
            AddrAttr::Port,
            AddrAttr::Flags
        ]
    );
    let l: Vec<_> = l.iter().collect();
    assert_eq!(genl::u16_ne("t", l[0]).unwrap(), 10);
    assert_eq!(
        genl::array::<16>("t", l[1]).unwrap(),
        "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets()
    );
    assert_eq!(genl::u16_ne("t", l[2]).unwrap(), 5555);
    assert_eq!(genl::u32_ne("t", l[3]).unwrap(), 4);
    let m = set_backup_msg("t", Token(5), local, remote, false).unwrap();
    let off = genl::nested("t", m.attrs().iter().nth(1).unwrap()).unwrap();
    assert_eq!(genl::u32_ne("t", off.iter().last().unwrap()).unwrap(), 0);
    let m = subflow_destroy_msg("t", Token(5), local, remote).unwrap();
    assert_eq!(PmCmd::from(*m.cmd()), PmCmd::SubflowDestroy);
    let r = m.attrs().iter().nth(2).unwrap();
    assert_eq!(PmAttr::from(genl::ty(r)), PmAttr::AddrRemote);
    let r = genl::nested("t", r).unwrap();
    assert_eq!(genl::u16_ne("t", r.iter().nth(2).unwrap()).unwrap(), 443);
    // The encoded message decodes back to the same attributes.
    let b = wire(m.clone());
    let back = genl::genl_payload("t", &b[16..]).unwrap();
    assert_eq!(back, m);
}

fn wait_for(
    ev: &mut PmEvents,
    seen: &mut Vec<PmEvent>,
    what: &str,
    pred: impl Fn(&PmEvent) -> bool,
) -> PmEvent {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(e) = seen.iter().find(|e| pred(e)) {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; saw {seen:#?}"
        );
        let _ = crate::sys::os::poll_readable(&[ev.fd()], Some(Duration::from_millis(100)));
        seen.extend(ev.read().expect("read events"));
    }
}

/// Root, in a fresh network namespace: the userspace path manager end to end
/// over loopback — family and group resolved through neli, events,
/// SUBFLOW_CREATE to a second address, SET_FLAGS, SUBFLOW_DESTROY, and
/// kernel refusals whose errors carry the kernel's extack text.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn root_userspace_pm_over_loopback() {
    if !is_root() {
        eprintln!("SKIP: needs root");
        return;
    }
    let host_pm = std::fs::read_to_string("/proc/sys/net/mptcp/path_manager").ok();
    let ns = NsThread::new();
    ns.run(|| {
        // /proc/sys/net reflects the netns of the thread that opens the file.
        std::fs::write("/proc/sys/net/mptcp/path_manager", "userspace").expect("set path_manager");
        assert_eq!(std::fs::read_to_string("/proc/sys/net/mptcp/pm_type").unwrap().trim(), "1");
        let mut events = PmEvents::open().expect("subscribe");
        let mut pm = PmSocket::open().expect("pm socket");
        assert_eq!(events.family, pm.family, "one family id");
        assert!(events.read().unwrap().is_empty(), "no events yet");

        let listener = testsock::listen("0.0.0.0:0".parse().unwrap(), true).expect("mptcp listen");
        let port = listener.local_addr().unwrap().port();
        let server: SocketAddr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        let mut client = testsock::connect(None, server, true).expect("mptcp connect");
        let (mut accepted, _) = listener.accept().unwrap();
        let client_addr = client.local_addr().unwrap();
        use std::io::{Read, Write};
        client.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        accepted.read_exact(&mut buf).unwrap();

        let mut seen = Vec::new();
        let is_client = |e: &PmEvent| match e {
            PmEvent::Created { local, remote, server_side, .. } => *local == client_addr && *remote == server && !server_side,
            _ => false,
        };
        let PmEvent::Created { token, .. } = wait_for(&mut events, &mut seen, "client CREATED", is_client) else {
            unreachable!()
        };
        wait_for(&mut events, &mut seen, "client ESTABLISHED", |e| {
            matches!(e, PmEvent::Established { token: t, local, remote, server_side: false }
                if *t == token && *local == client_addr && *remote == server)
        });
        wait_for(&mut events, &mut seen, "server CREATED", |e| {
            matches!(e, PmEvent::Created { local, remote, server_side: true, .. }
                if *local == server && *remote == client_addr)
        });

        // A second path: from 127.0.0.1 (id 1) to 127.0.0.2, the listener's
        // other address.
        let remote2 = SocketAddr::new(Ipv4Addr::new(127, 0, 0, 2).into(), port);
        pm.subflow_create(token, Ipv4Addr::LOCALHOST.into(), AddrId(1), remote2).expect("SUBFLOW_CREATE");
        let PmEvent::SubEstablished { subflow, .. } = wait_for(&mut events, &mut seen, "SUB_ESTABLISHED", |e| {
            matches!(e, PmEvent::SubEstablished { token: t, subflow } if *t == token && subflow.remote == remote2)
        }) else {
            unreachable!()
        };
        assert_eq!(subflow.local.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(subflow.local_id, AddrId(1));

        // Refusals carry the kernel's reason. A second id for the same
        // local address:
        match pm.subflow_create(token, Ipv4Addr::LOCALHOST.into(), AddrId(7), remote2) {
            Err(SysError::Netlink { errno, extack, .. }) => {
                eprintln!("id mismatch: errno {errno}, extack {extack:?}");
                assert_ne!(errno, 0);
                let text = extack.expect("extack text kept");
                assert!(text.contains("match"), "{text}");
            }
            other => panic!("a second id for one address accepted: {other:?}"),
        }

        pm.set_backup(token, subflow.local, remote2, true).expect("SET_FLAGS backup");
        // The peer (our own server side here) learns it through MP_PRIO.
        wait_for(&mut events, &mut seen, "server SUB_PRIORITY backup", |e| {
            matches!(e, PmEvent::SubPriority { token: t, subflow: s }
                if *t != token && s.backup && s.local == remote2 && s.remote == subflow.local)
        });
        pm.set_backup(token, subflow.local, remote2, false).expect("SET_FLAGS normal");

        pm.subflow_destroy(token, subflow.local, remote2).expect("SUBFLOW_DESTROY");
        wait_for(&mut events, &mut seen, "SUB_CLOSED", |e| {
            matches!(e, PmEvent::SubClosed { token: t, subflow: s, .. } if *t == token && s.remote == remote2)
        });

        // A token that names no connection.
        let bad = Token(token.0 ^ 0x5a5a_5a5a);
        match pm.subflow_create(bad, Ipv4Addr::LOCALHOST.into(), AddrId(1), remote2) {
            Err(e @ SysError::Netlink { .. }) => {
                eprintln!("bad token: {e}");
                let SysError::Netlink { errno, extack, .. } = &e else { unreachable!() };
                assert_eq!(*errno, libc::EINVAL);
                assert_eq!(extack.as_deref(), Some("invalid token"));
                assert!(e.to_string().contains("invalid token"), "{e}");
            }
            other => panic!("bad token accepted: {other:?}"),
        }

        drop((client, accepted));
        wait_for(&mut events, &mut seen, "CLOSED", |e| matches!(e, PmEvent::Closed { token: t } if *t == token));
    });
    drop(ns);
    // The host's path manager was not touched.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/mptcp/path_manager").ok(),
        host_pm
    );
}

/// Root: where neli 0.7.5 falls short. The same refusal (a SUBFLOW_CREATE
/// for a token that names no connection) through neli's `NlRouter` comes
/// back without the kernel's extack text, which `Nlmsgerr::to_typed`
/// drops; through [`PmSocket`] the text is kept.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn root_neli_router_drops_extack() {
    use neli::consts::socket::NlFamily;
    use neli::err::RouterError;
    use neli::router::synchronous::NlRouter;
    use neli::utils::Groups;

    if !is_root() {
        eprintln!("SKIP: needs root");
        return;
    }
    let ns = NsThread::new();
    ns.run(|| {
        let remote: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let msg = || {
            subflow_create_msg(
                "t",
                Token(0x5a5a_5a5a),
                Ipv4Addr::LOCALHOST.into(),
                AddrId(1),
                remote,
            )
            .unwrap()
        };
        let (router, _) =
            NlRouter::connect(NlFamily::Generic, None, Groups::empty()).expect("router");
        router.enable_ext_ack(true).expect("ext ack on");
        let family = router.resolve_genl_family(FAMILY_NAME).expect("mptcp_pm");
        let mut recv = router
            .send::<_, _, u16, GenlMsg>(family, NlmF::ACK, NlPayload::Payload(msg()))
            .expect("send");
        match recv.next() {
            Some(Err(RouterError::Nlmsgerr(e))) => {
                assert_eq!(*e.error(), -libc::EINVAL);
                assert!(
                    e.ext_ack().is_empty(),
                    "neli's router now keeps the extack text: GenlSocket may use it"
                );
            }
            other => panic!("expected the kernel's refusal, got {other:?}"),
        }
        let mut pm = PmSocket::open().expect("pm socket");
        match pm.subflow_create(
            Token(0x5a5a_5a5a),
            Ipv4Addr::LOCALHOST.into(),
            AddrId(1),
            remote,
        ) {
            Err(SysError::Netlink { errno, extack, .. }) => {
                assert_eq!(errno, libc::EINVAL);
                assert_eq!(extack.as_deref(), Some("invalid token"));
            }
            other => panic!("expected the kernel's refusal, got {other:?}"),
        }
    });
}

/// LISTENER_CREATED (15): the listener on 0.0.0.0.
#[cfg(target_endian = "little")]
const CAPTURED_LISTENER_CREATED: &[u8] = &[
    0x2c, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x0f, 0x01, 0x00, 0x00, 0x06, 0x00, 0x02, 0x00, 0x02, 0x00, 0x00, 0x00, 0x06, 0x00, 0x09, 0x00,
    0xb4, 0xf5, 0x00, 0x00, 0x08, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00,
];
/// CREATED on the client side.
#[cfg(target_endian = "little")]
const CAPTURED_CREATED: &[u8] = &[
    0x54, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x01, 0x00, 0x00, 0x08, 0x00, 0x01, 0x00, 0xbf, 0x00, 0xdd, 0x5a, 0x06, 0x00, 0x02, 0x00,
    0x02, 0x00, 0x00, 0x00, 0x08, 0x00, 0x05, 0x00, 0x7f, 0x00, 0x00, 0x01, 0x08, 0x00, 0x07, 0x00,
    0x7f, 0x00, 0x00, 0x01, 0x06, 0x00, 0x09, 0x00, 0xdc, 0x5a, 0x00, 0x00, 0x06, 0x00, 0x0a, 0x00,
    0xb4, 0xf5, 0x00, 0x00, 0x05, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x04, 0x00,
    0x00, 0x00, 0x00, 0x00,
];
/// CREATED on the server side (SERVER_SIDE and FLAGS).
#[cfg(target_endian = "little")]
const CAPTURED_CREATED_SERVER: &[u8] = &[
    0x64, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x01, 0x00, 0x00, 0x08, 0x00, 0x01, 0x00, 0x0f, 0x89, 0xca, 0x28, 0x05, 0x00, 0x12, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x06, 0x00, 0x0d, 0x00, 0x02, 0x00, 0x00, 0x00, 0x06, 0x00, 0x02, 0x00,
    0x02, 0x00, 0x00, 0x00, 0x08, 0x00, 0x05, 0x00, 0x7f, 0x00, 0x00, 0x01, 0x08, 0x00, 0x07, 0x00,
    0x7f, 0x00, 0x00, 0x01, 0x06, 0x00, 0x09, 0x00, 0xb4, 0xf5, 0x00, 0x00, 0x06, 0x00, 0x0a, 0x00,
    0xdc, 0x5a, 0x00, 0x00, 0x05, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x04, 0x00,
    0x00, 0x00, 0x00, 0x00,
];
/// SUB_ESTABLISHED of the client's subflow 127.0.0.1 (id 1) to 127.0.0.2.
#[cfg(target_endian = "little")]
const CAPTURED_SUB_ESTABLISHED: &[u8] = &[
    0x5c, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x0a, 0x01, 0x00, 0x00, 0x08, 0x00, 0x01, 0x00, 0xbf, 0x00, 0xdd, 0x5a, 0x06, 0x00, 0x02, 0x00,
    0x02, 0x00, 0x00, 0x00, 0x08, 0x00, 0x05, 0x00, 0x7f, 0x00, 0x00, 0x01, 0x08, 0x00, 0x07, 0x00,
    0x7f, 0x00, 0x00, 0x02, 0x06, 0x00, 0x09, 0x00, 0xea, 0xad, 0x00, 0x00, 0x06, 0x00, 0x0a, 0x00,
    0xb4, 0xf5, 0x00, 0x00, 0x05, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x04, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x00, 0x00,
];
/// SUB_PRIORITY on the server side after SET_FLAGS backup.
#[cfg(target_endian = "little")]
const CAPTURED_SUB_PRIORITY: &[u8] = &[
    0x5c, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x0d, 0x01, 0x00, 0x00, 0x08, 0x00, 0x01, 0x00, 0x0f, 0x89, 0xca, 0x28, 0x06, 0x00, 0x02, 0x00,
    0x02, 0x00, 0x00, 0x00, 0x08, 0x00, 0x05, 0x00, 0x7f, 0x00, 0x00, 0x02, 0x08, 0x00, 0x07, 0x00,
    0x7f, 0x00, 0x00, 0x01, 0x06, 0x00, 0x09, 0x00, 0xb4, 0xf5, 0x00, 0x00, 0x06, 0x00, 0x0a, 0x00,
    0xea, 0xad, 0x00, 0x00, 0x05, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x04, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x0b, 0x00, 0x01, 0x00, 0x00, 0x00,
];
/// SUB_CLOSED after SUBFLOW_DESTROY.
#[cfg(target_endian = "little")]
const CAPTURED_SUB_CLOSED: &[u8] = &[
    0x5c, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x0b, 0x01, 0x00, 0x00, 0x08, 0x00, 0x01, 0x00, 0xbf, 0x00, 0xdd, 0x5a, 0x06, 0x00, 0x02, 0x00,
    0x02, 0x00, 0x00, 0x00, 0x08, 0x00, 0x05, 0x00, 0x7f, 0x00, 0x00, 0x01, 0x08, 0x00, 0x07, 0x00,
    0x7f, 0x00, 0x00, 0x02, 0x06, 0x00, 0x09, 0x00, 0xea, 0xad, 0x00, 0x00, 0x06, 0x00, 0x0a, 0x00,
    0xb4, 0xf5, 0x00, 0x00, 0x05, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x04, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x00, 0x00,
];
/// CLOSED.
#[cfg(target_endian = "little")]
const CAPTURED_CLOSED: &[u8] = &[
    0x1c, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x03, 0x01, 0x00, 0x00, 0x08, 0x00, 0x01, 0x00, 0xbf, 0x00, 0xdd, 0x5a,
];
/// The refusal of a SUBFLOW_CREATE naming no connection.
#[cfg(target_endian = "little")]
const CAPTURED_INVALID_TOKEN: &[u8] = &[
    0x84, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x02, 0x01, 0x00, 0x00, 0x00, 0xa2, 0x7e, 0x19, 0xab,
    0xea, 0xff, 0xff, 0xff, 0x54, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x0a, 0x01, 0x00, 0x00, 0x08, 0x00, 0x04, 0x00, 0xe5, 0x5a, 0x87, 0x00,
    0x1c, 0x00, 0x01, 0x80, 0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x05, 0x00, 0x02, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x08, 0x00, 0x03, 0x00, 0x7f, 0x00, 0x00, 0x01, 0x1c, 0x00, 0x06, 0x80,
    0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x08, 0x00, 0x03, 0x00, 0x7f, 0x00, 0x00, 0x02,
    0x06, 0x00, 0x05, 0x00, 0xf5, 0xb4, 0x00, 0x00, 0x12, 0x00, 0x01, 0x00, 0x69, 0x6e, 0x76, 0x61,
    0x6c, 0x69, 0x64, 0x20, 0x74, 0x6f, 0x6b, 0x65, 0x6e, 0x00, 0x00, 0x00, 0x08, 0x00, 0x02, 0x00,
    0x14, 0x00, 0x00, 0x00,
];
