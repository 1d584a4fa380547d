use super::*;
use crate::testutil::{cert, key, root, root_pub, T0};

fn advert() -> Advert {
    Advert {
        endpoints: vec!["192.0.2.7:7447".parse().unwrap()],
        tunnels: Tunnels::NAT,
        donate_kbit: 8000,
        software: "0.1.0".into(),
    }
}

fn alice() -> Record {
    Record::sign(
        &key(2),
        cert("alice", 2, Roles::CLIENT | Roles::WAYPOINT),
        T0 * 1000,
        Statement::Publish(advert()),
    )
}

#[test]
fn record_fixture_round_trip_and_checks() {
    let r = alice();
    let b = r.encode();
    // Byte fixture: version, then the certificate (its own fixture in
    // trust), then seq as a varint, the statement tag, the advert.
    assert_eq!(b[0], RECORD_VERSION);
    let cert_len = postcard::to_allocvec(&r.cert).unwrap().len();
    let after = &b[1 + cert_len..];
    let seq = postcard::to_allocvec(&(T0 * 1000)).unwrap();
    assert_eq!(&after[..seq.len()], &seq[..]);
    let after = &after[seq.len()..];
    assert_eq!(
        &after[..12],
        &[
            0x00, // Publish
            0x01, // one endpoint
            0x00, 192, 0, 2, 7, // V4 192.0.2.7
            0x97, 0x3a, // port 7447 (varint)
            0x01, // tunnels NAT
            0xc0, 0x3e, // 8000 kbit (varint)
        ]
    );
    assert_eq!(&after[12..18], b"\x050.1.0");
    assert_eq!(after.len(), 18 + 64);
    assert_eq!(Record::decode(&b).unwrap(), r);
    // Ed25519 is deterministic: signing again gives the same bytes.
    assert_eq!(alice().encode(), b);
    r.verify(&root_pub(), &Revocations::default(), T0).unwrap();

    let mut t = b.clone();
    let n = t.len();
    t[n - 70] ^= 1; // inside the advert
    let e = Record::decode(&t).and_then(|r| r.verify(&root_pub(), &Revocations::default(), T0));
    assert!(e.is_err());
    let mut t = b.clone();
    t[n - 1] ^= 1; // the signature
    assert_eq!(
        Record::decode(&t)
            .unwrap()
            .verify(&root_pub(), &Revocations::default(), T0),
        Err(DirError::BadSignature)
    );
    assert_eq!(Record::decode(&b[..n - 1]), Err(DirError::Truncated));
    let mut long = b.clone();
    long.push(0);
    assert_eq!(Record::decode(&long), Err(DirError::TrailingBytes(1)));
    assert_eq!(Record::decode(&[]), Err(DirError::Truncated));
    assert_eq!(
        Record::decode(&[9, 1]),
        Err(DirError::UnsupportedVersion(9))
    );
    assert_eq!(
        Record::decode(&vec![1; MAX_RECORD + 1]),
        Err(DirError::TooLarge { max: MAX_RECORD })
    );
}

#[test]
fn record_refusals() {
    let none = Revocations::default();
    let r = alice();
    let mut rev = Revocations::default();
    rev.insert(r.member());
    assert!(matches!(
        r.verify(&root_pub(), &rev, T0),
        Err(DirError::Certificate(TrustError::Revoked { .. }))
    ));
    assert!(matches!(
        r.verify(&root_pub(), &none, T0 + 31 * 86_400),
        Err(DirError::Certificate(TrustError::Expired { .. }))
    ));
    assert_eq!(
        r.verify(&key(9).public(), &none, T0),
        Err(DirError::WrongCollective)
    );
    let client_only = Record::sign(
        &key(3),
        cert("bob", 3, Roles::CLIENT),
        T0 * 1000,
        Statement::Publish(advert()),
    );
    assert_eq!(
        client_only.verify(&root_pub(), &none, T0),
        Err(DirError::NotAWaypoint)
    );
    let withdraw = Record::sign(
        &key(3),
        cert("bob", 3, Roles::CLIENT),
        T0 * 1000,
        Statement::Withdraw,
    );
    withdraw.verify(&root_pub(), &none, T0).unwrap();
    assert_eq!(withdraw.entry(), None);
    // Signed by a key that is not the certificate's.
    let forged = Record::sign(
        &key(4),
        cert("alice", 2, Roles::CLIENT | Roles::WAYPOINT),
        T0 * 1000,
        Statement::Publish(advert()),
    );
    assert_eq!(
        forged.verify(&root_pub(), &none, T0),
        Err(DirError::BadSignature)
    );
    for bad in [
        Advert {
            endpoints: vec![],
            ..advert()
        },
        Advert {
            endpoints: vec!["0.0.0.0:7447".parse().unwrap()],
            ..advert()
        },
        Advert {
            endpoints: vec!["192.0.2.1:0".parse().unwrap()],
            ..advert()
        },
        Advert {
            endpoints: vec!["192.0.2.1:1".parse().unwrap(); MAX_ENDPOINTS + 1],
            ..advert()
        },
        Advert {
            tunnels: Tunnels(0x04),
            ..advert()
        },
        Advert {
            tunnels: Tunnels(0x0d),
            ..advert()
        },
        Advert {
            software: "x y".into(),
            ..advert()
        },
        Advert {
            software: "v".repeat(MAX_SOFTWARE + 1),
            ..advert()
        },
    ] {
        assert!(bad.check().is_err(), "{bad:?}");
    }
}

fn entry(seed: u8, name: &str, eps: &[&str], tunnels: Tunnels) -> Entry {
    Entry {
        member: MemberId::of(&key(seed).public()),
        name: name.into(),
        endpoints: eps.iter().map(|e| e.parse().unwrap()).collect(),
        tunnels,
        donate_kbit: 0,
        software: "0.1.0".into(),
        not_after: T0 + 86_400,
    }
}

#[test]
fn snapshot_fixture_verify_and_tampering() {
    let entries = [
        entry(
            2,
            "alice",
            &["192.0.2.7:7447", "[2001:db8::7]:7447"],
            Tunnels::NAT,
        ),
        entry(4, "carol", &["198.51.100.9:7447"], Tunnels(0x03)),
    ];
    let revoked = vec![MemberId([9; 8])];
    let b = build_snapshot(&root(), 42, T0, revoked.clone(), entries.iter());
    assert!(b.starts_with(b"dcol/snapshot/v1\0"));
    let head = &b[17..];
    assert_eq!(&head[..32], &root_pub().0);
    assert_eq!(head[32], 42); // serial varint
    let issued = postcard::to_allocvec(&T0).unwrap();
    assert_eq!(&head[33..33 + issued.len()], &issued[..]);
    let head = &head[33 + issued.len()..];
    assert_eq!(&head[..10], &[1, 9, 9, 9, 9, 9, 9, 9, 9, 2]); // revoked, count
                                                              // Deterministic signature: the same inputs give the same document.
    assert_eq!(
        build_snapshot(&root(), 42, T0, revoked.clone(), entries.iter()),
        b
    );

    let s = Snapshot::verify(&b, &root_pub()).unwrap();
    assert_eq!(s.head.serial, 42);
    assert_eq!(s.head.revoked, revoked);
    let got: Vec<Entry> = s.entries().map(Result::unwrap).collect();
    assert_eq!(got, entries);

    // Every single flipped byte is caught, truncation too.
    for i in (0..b.len()).step_by(7) {
        let mut t = b.clone();
        t[i] ^= 0x20;
        assert!(Snapshot::verify(&t, &root_pub()).is_err(), "byte {i}");
    }
    for n in [0, 5, 17, 80, b.len() - 1] {
        assert!(Snapshot::verify(&b[..n], &root_pub()).is_err(), "len {n}");
    }
    assert_eq!(
        Snapshot::verify(b"<html>nope</html>", &root_pub()).unwrap_err(),
        DirError::NotASnapshot
    );
    assert_eq!(
        Snapshot::verify(&b, &key(9).public()).unwrap_err(),
        DirError::WrongCollective
    );
    let mut v2 = b.clone();
    v2[15] = b'2';
    assert_eq!(
        Snapshot::parse_unverified(&v2).unwrap_err(),
        DirError::UnsupportedVersion(2)
    );
    // A snapshot signed by another key that claims our collective.
    let mut forged = build_snapshot(&key(9), 43, T0, vec![], entries.iter());
    forged[17..49].copy_from_slice(&root_pub().0);
    assert_eq!(
        Snapshot::verify(&forged, &root_pub()).unwrap_err(),
        DirError::BadSignature
    );
}

#[test]
fn freshness_rules() {
    let b = build_snapshot(&root(), 5, T0, vec![], [].iter());
    let h = Snapshot::verify(&b, &root_pub()).unwrap().head;
    let b6 = build_snapshot(&root(), 6, T0, vec![], [].iter());
    let h6 = Snapshot::verify(&b6, &root_pub()).unwrap().head;
    assert_eq!(freshness(&h, &b, None, T0), Ok(Freshness::Newer));
    assert_eq!(
        freshness(&h6, &b6, Some((&h, &b)), T0),
        Ok(Freshness::Newer)
    );
    assert_eq!(freshness(&h, &b, Some((&h, &b)), T0), Ok(Freshness::Same));
    assert_eq!(
        freshness(&h, &b, Some((&h6, &b6)), T0),
        Err(StaleSnapshot::Older { got: 5, have: 6 })
    );
    let other = build_snapshot(&root(), 5, T0 + 1, vec![], [].iter());
    let ho = Snapshot::verify(&other, &root_pub()).unwrap().head;
    assert_eq!(
        freshness(&ho, &other, Some((&h, &b)), T0),
        Err(StaleSnapshot::Conflicting(5))
    );
    assert_eq!(
        freshness(&h, &b, None, T0 + MAX_SNAPSHOT_AGE_S + 1),
        Err(StaleSnapshot::TooOld { issued: T0 })
    );
}

#[test]
fn converters_are_marked_and_old_readers_ignore_the_bit() {
    let conv = Tunnels(Tunnels::NAT.0 | Tunnels::CONVERT.0);
    let entries = [entry(20, "carol", &["192.0.2.20:7447"], conv)];
    let b = build_snapshot(&root(), 1, T0, vec![], entries.iter());
    let s = Snapshot::verify(&b, &root_pub()).unwrap();
    let sel = Selection {
        own: MemberId::of(&key(10).public()),
        max_peers: 4,
        vpn: false,
    };
    let c = choose(&s, &sel, &Revocations::default(), T0);
    assert_eq!(c.peers.len(), 1);
    assert!(c.peers[0].convert, "{:?}", c.peers);
    assert_eq!(format!("{conv:?}"), "Tunnels(nat,convert)");
    // The bit is in the byte version 1 readers decode: the entry's bytes
    // differ from a NAT-only one's in that byte alone.
    let plain = postcard::to_allocvec(&entry(20, "carol", &["192.0.2.20:7447"], Tunnels::NAT));
    let marked = postcard::to_allocvec(&entries[0]);
    let diff: Vec<usize> = (0..plain.as_ref().unwrap().len())
        .filter(|&i| plain.as_ref().unwrap()[i] != marked.as_ref().unwrap()[i])
        .collect();
    assert_eq!(diff.len(), 1);
    let a = Advert {
        tunnels: conv,
        ..advert()
    };
    assert_eq!(a.check(), Ok(()));
}

#[test]
fn choosing_waypoints() {
    let mut entries: Vec<Entry> = (10..40u8)
        .map(|i| {
            entry(
                i,
                &format!("m{i}"),
                &[
                    &format!("192.0.2.{i}:7447"),
                    &format!("[2001:db8::{i}]:7447"),
                ],
                Tunnels::NAT,
            )
        })
        .collect();
    entries.push(entry(50, "vpnonly", &["192.0.2.50:7447"], Tunnels::VPN));
    let mut expired = entry(51, "old", &["192.0.2.51:7447"], Tunnels::NAT);
    expired.not_after = T0 - 1;
    entries.push(expired);
    let own = MemberId::of(&key(10).public());
    let gone = MemberId::of(&key(11).public());
    let b = build_snapshot(&root(), 7, T0, vec![gone], entries.iter());
    let s = Snapshot::verify(&b, &root_pub()).unwrap();
    let sel = Selection {
        own,
        max_peers: 4,
        vpn: false,
    };
    let c = choose(&s, &sel, &Revocations::default(), T0);
    assert_eq!((c.serial, c.members, c.error.clone()), (7, 32, None));
    assert_eq!(c.peers.len(), 8, "4 members x (IPv4 + IPv6)");
    let names: std::collections::BTreeSet<&str> = c.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names.len(), 4);
    for bad in ["m10", "m11", "vpnonly", "old"] {
        assert!(!names.contains(bad), "{bad} chosen");
    }
    // Stable: the same input gives the same choice; one more member
    // changes at most one pick.
    assert_eq!(choose(&s, &sel, &Revocations::default(), T0), c);
    entries.push(entry(60, "newcomer", &["192.0.2.60:7447"], Tunnels::NAT));
    let b2 = build_snapshot(&root(), 8, T0, vec![gone], entries.iter());
    let s2 = Snapshot::verify(&b2, &root_pub()).unwrap();
    let c2 = choose(&s2, &sel, &Revocations::default(), T0);
    let names2: std::collections::BTreeSet<&str> =
        c2.peers.iter().map(|p| p.name.as_str()).collect();
    assert!(names.intersection(&names2).count() >= 3);
    // Another member ranks differently.
    let sel_b = Selection {
        own: MemberId([0xee; 8]),
        ..sel.clone()
    };
    let cb = choose(&s, &sel_b, &Revocations::default(), T0);
    assert_ne!(cb.peers, c.peers);
    // Local revocations apply too; VPN selection picks VPN offers only.
    let mut extra = Revocations::default();
    for p in &c.peers {
        let m = entries.iter().find(|e| e.name == p.name).unwrap().member;
        extra.insert(m);
    }
    let c3 = choose(&s, &sel, &extra, T0);
    assert!(c3.peers.iter().all(|p| !names.contains(p.name.as_str())));
    let v = choose(
        &s,
        &Selection {
            vpn: true,
            ..sel.clone()
        },
        &Revocations::default(),
        T0,
    );
    assert_eq!(v.peers.len(), 1);
    assert_eq!(
        (v.peers[0].name.as_str(), v.peers[0].vpn),
        ("vpnonly", true)
    );
    let none = choose(
        &s,
        &Selection {
            max_peers: 0,
            ..sel
        },
        &Revocations::default(),
        T0,
    );
    assert!(none.peers.is_empty());
}

#[test]
fn published_endpoints() {
    let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
    let listen = [a("0.0.0.0:7447"), a("[::]:7447"), a("10.0.6.2:7447")];
    assert_eq!(endpoints(&[], &[], &listen), vec![a("10.0.6.2:7447")]);
    assert_eq!(
        endpoints(&[], &[a("203.0.113.5:7447")], &listen),
        vec![a("203.0.113.5:7447"), a("10.0.6.2:7447")]
    );
    let adv = [a("198.51.100.1:7447"), a("198.51.100.1:7447")];
    assert_eq!(
        endpoints(&adv, &[a("203.0.113.5:7447")], &listen),
        vec![a("198.51.100.1:7447")]
    );
    assert!(endpoints(&[], &[], &listen[..2]).is_empty());
}

#[test]
fn garbage_entries_end_the_iteration() {
    let e = entry(2, "alice", &["192.0.2.7:7447"], Tunnels::NAT);
    let mut b = build_snapshot(&root(), 1, T0, vec![], [e.clone(), e].iter());
    // Claim three entries where two are (the signature now fails, but
    // the unverified parse must still not panic or loop).
    let count_at = 17 + 32 + 1 + postcard::to_allocvec(&T0).unwrap().len() + 1;
    b[count_at] = 3;
    let s = Snapshot::parse_unverified(&b).unwrap();
    let r: Vec<_> = s.entries().collect();
    assert_eq!(r.len(), 3);
    assert!(r[2].is_err());
}
