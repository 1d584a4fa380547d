//! The converter's admission decisions, one test per refusal path.

use super::*;
use crate::testutil::{self, cert, key, root_pub, T0};
use crate::trust::Certificate;
use crate::types::PortRange;

const MS: u64 = T0 * 1000;
const PEER: &str = "10.0.1.2";
const DEST: &str = "203.0.113.9:5201";

fn converter() -> Converter {
    converter_with(16, 4)
}

fn converter_with(per_member: u32, per_source: u32) -> Converter {
    let settings = Settings {
        destinations: policy::Rules {
            allow: vec!["203.0.113.0/24".parse().unwrap()],
            deny_ports: vec![PortRange { lo: 25, hi: 25 }],
        },
        max_skew: Duration::from_secs(30),
        max_per_member: per_member,
        max_per_source: per_source,
        source_rate: 100,
    };
    Converter::new(
        settings,
        "carol".into(),
        root_pub(),
        Revocations::default(),
        Routes::all_wan(vec!["192.0.2.1".parse().unwrap()]),
    )
}

fn bob() -> Certificate {
    cert("bob", 3, Roles::CLIENT)
}

fn ask(to: &str, dest: &str, source: &str, nonce: u8, ms: u64) -> cookie::Ask {
    cookie::Ask {
        converter: to.into(),
        destination: dest.parse().unwrap(),
        source: source.parse().unwrap(),
        timestamp_ms: ms,
        nonce: Nonce([nonce; 16]),
    }
}

fn header(c: &Certificate, seed: u8, a: &cookie::Ask) -> Message {
    Message(vec![
        Tlv::Connect {
            dest: a.destination,
            options: vec![],
        },
        Tlv::Cookie(cookie::make(c, &key(seed), a)),
    ])
}

fn admit(cv: &mut Converter, m: &Message) -> Result<Admitted, Refusal> {
    cv.admit(Instant::now(), MS, PEER.parse().unwrap(), Ok(m))
}

fn code(r: Result<Admitted, Refusal>) -> ErrorCode {
    r.expect_err("refused").code
}

#[test]
fn a_member_is_converted_once_per_cookie() {
    let mut cv = converter();
    let m = header(&bob(), 3, &ask("carol", DEST, PEER, 1, MS));
    let a = admit(&mut cv, &m).unwrap();
    assert_eq!(
        (a.name.as_str(), a.destination),
        ("bob", DEST.parse().unwrap())
    );
    assert!(
        crate::proto::decode(&a.request).is_ok(),
        "the evidence is the request"
    );
    // The same cookie again: a replay.
    let r = admit(&mut cv, &m).unwrap_err();
    assert_eq!(r.code, ErrorCode::NOT_AUTHORIZED);
    assert!(r.why.contains("replay"), "{}", r.why);
    assert_eq!(cv.stats().admitted, 1);
    assert_eq!(cv.stats().refused.get("Not Authorized"), Some(&1));
}

#[test]
fn malformed_headers_get_the_rfc_codes() {
    let mut cv = converter();
    let peer = PEER.parse().unwrap();
    let now = Instant::now();
    let e = wire::parse(&[2, 1, 0, 0]).unwrap_err();
    assert_eq!(
        cv.admit(now, MS, peer, Err(&e)).unwrap_err().code,
        ErrorCode(0)
    );
    let e = wire::parse(&[1, 2, 0, 0, 0x42, 1, 0, 0]).unwrap_err();
    let r = cv.admit(now, MS, peer, Err(&e)).unwrap_err();
    assert_eq!(
        (r.code, r.value),
        (ErrorCode::UNSUPPORTED_MESSAGE, Some(0x42))
    );
    assert_eq!(r.message().error(), Some(ErrorCode::UNSUPPORTED_MESSAGE));
    let e = wire::parse(&[1, 9, 0, 0, 0x0a]).unwrap_err();
    assert_eq!(
        cv.admit(now, MS, peer, Err(&e)).unwrap_err().code,
        ErrorCode(1)
    );
    // No Connect TLV; no cookie; two Connect TLVs.
    assert_eq!(
        code(admit(&mut cv, &Message(vec![Tlv::Info]))),
        ErrorCode(1)
    );
    let c = Tlv::Connect {
        dest: DEST.parse().unwrap(),
        options: vec![],
    };
    let m = Message(vec![c.clone()]);
    assert_eq!(code(admit(&mut cv, &m)), ErrorCode::MISSING_COOKIE);
    let m = Message(vec![c.clone(), c]);
    assert_eq!(code(admit(&mut cv, &m)), ErrorCode(1));
}

#[test]
fn bad_cookies_are_not_authorized() {
    let mut cv = converter();
    let dest = DEST.parse().unwrap();
    let cases: Vec<(Message, &str)> = vec![
        (
            Message(vec![
                Tlv::Connect {
                    dest,
                    options: vec![],
                },
                Tlv::Cookie(vec![1, 2, 3]),
            ]),
            "not a signed request",
        ),
        (
            header(&bob(), 3, &ask("dave", DEST, PEER, 2, MS)),
            "addressed to",
        ),
        (
            header(&bob(), 3, &ask("carol", DEST, PEER, 3, MS - 60_000)),
            "off our clock",
        ),
        (
            header(&bob(), 3, &ask("carol", DEST, "10.9.9.9", 4, MS)),
            "names source",
        ),
        // Signed by a key that is not the certificate's.
        (
            header(&bob(), 9, &ask("carol", DEST, PEER, 5, MS)),
            "signature",
        ),
        // A certificate of another collective.
        (
            header(
                &testutil::cert_by(&key(77), "bob", 3, Roles::CLIENT, T0 - 9, T0 + 9),
                3,
                &ask("carol", DEST, PEER, 6, MS),
            ),
            "collective",
        ),
        // A waypoint-only certificate.
        (
            header(
                &cert("wp", 4, Roles::WAYPOINT),
                4,
                &ask("carol", DEST, PEER, 7, MS),
            ),
            "client role",
        ),
    ];
    for (m, what) in cases {
        let r = admit(&mut cv, &m).unwrap_err();
        assert_eq!(r.code, ErrorCode::NOT_AUTHORIZED, "{what}");
        assert!(r.why.contains(what), "{what}: {}", r.why);
    }
    // The Connect TLV and the cookie disagree on the destination.
    let mut m = header(&bob(), 3, &ask("carol", DEST, PEER, 8, MS));
    m.0[0] = Tlv::Connect {
        dest: "203.0.113.10:5201".parse().unwrap(),
        options: vec![],
    };
    assert!(admit(&mut cv, &m)
        .unwrap_err()
        .why
        .contains("the cookie names"));
}

#[test]
fn revoked_members_and_forbidden_destinations_are_not_authorized() {
    let mut cv = converter();
    let mut revoked = Revocations::default();
    revoked.insert(bob().member);
    cv.set_revocations(revoked);
    assert!(cv.is_revoked(&bob().member));
    let r = admit(
        &mut cv,
        &header(&bob(), 3, &ask("carol", DEST, PEER, 1, MS)),
    )
    .unwrap_err();
    assert_eq!(r.code, ErrorCode::NOT_AUTHORIZED);
    assert!(r.why.contains("revoked"), "{}", r.why);
    cv.set_revocations(Revocations::default());
    for (dest, what) in [
        ("10.0.0.5:80", "private"),
        ("203.0.113.9:25", "denies"),
        ("192.0.2.1:80", "own address"),
        ("127.0.0.1:80", "loopback"),
    ] {
        let r = admit(
            &mut cv,
            &header(&bob(), 3, &ask("carol", dest, PEER, 2, MS)),
        )
        .unwrap_err();
        assert_eq!(r.code, ErrorCode::NOT_AUTHORIZED, "{dest}");
        assert!(r.why.contains(what), "{dest}: {}", r.why);
        assert_eq!(r.member.as_deref(), Some("bob"));
    }
}

#[test]
fn limits_are_per_member_and_per_source() {
    let mut cv = converter_with(2, 3);
    let peer: IpAddr = PEER.parse().unwrap();
    for _ in 0..3 {
        cv.open(peer).unwrap();
    }
    let r = cv.open(peer).unwrap_err();
    assert_eq!(r.code, ErrorCode::RESOURCE_EXCEEDED);
    assert!(r.why.contains("convert_max_per_source"), "{}", r.why);
    // Another source is not affected; the same /64 is one source.
    cv.open("10.0.1.3".parse().unwrap()).unwrap();
    cv.open("2001:db8::1".parse().unwrap()).unwrap();
    cv.open("2001:db8::2".parse().unwrap()).unwrap();
    cv.open("2001:db8::3".parse().unwrap()).unwrap();
    assert!(cv.open("2001:db8::4".parse().unwrap()).is_err());
    cv.close(peer, None);
    cv.open(peer).unwrap();
    // Two conversions per member, then Resource Exceeded; another member goes on.
    let a = admit(
        &mut cv,
        &header(&bob(), 3, &ask("carol", DEST, PEER, 1, MS)),
    )
    .unwrap();
    admit(
        &mut cv,
        &header(&bob(), 3, &ask("carol", DEST, PEER, 2, MS)),
    )
    .unwrap();
    let r = admit(
        &mut cv,
        &header(&bob(), 3, &ask("carol", DEST, PEER, 3, MS)),
    )
    .unwrap_err();
    assert_eq!(r.code, ErrorCode::RESOURCE_EXCEEDED);
    let dave = cert("dave", 5, Roles::CLIENT);
    admit(&mut cv, &header(&dave, 5, &ask("carol", DEST, PEER, 1, MS))).unwrap();
    cv.close(peer, Some(a.member));
    admit(
        &mut cv,
        &header(&bob(), 3, &ask("carol", DEST, PEER, 4, MS)),
    )
    .unwrap();
}

#[test]
fn a_used_up_donation_and_the_admission_rate_exceed_resources() {
    let mut cv = converter();
    // One instant for every call: the bucket refills with time, and a slow
    // machine (qemu-user) would otherwise see a token come back.
    let now = Instant::now();
    let peer = PEER.parse().unwrap();
    cv.set_used_up(Some("this month's donation is used up".into()));
    let first = header(&bob(), 3, &ask("carol", DEST, PEER, 1, MS));
    let r = cv.admit(now, MS, peer, Ok(&first)).unwrap_err();
    assert_eq!(r.code, ErrorCode::RESOURCE_EXCEEDED);
    cv.set_used_up(None);
    // 100 a second, 200 in a burst: then the source waits.
    let m = header(&bob(), 3, &ask("carol", DEST, PEER, 1, MS));
    let mut exceeded = 0;
    for _ in 0..250 {
        if let Err(r) = cv.admit(now, MS, peer, Ok(&m)) {
            exceeded += usize::from(r.code == ErrorCode::RESOURCE_EXCEEDED);
        }
    }
    assert_eq!(exceeded, 51);
}
