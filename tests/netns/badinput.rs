// Needs: root, network namespaces, nftables with NAT and maps; programs ip, nft.
//
//! Bad input at a real waypoint: forged signature, a certificate of another
//! collective, an expired certificate, a replayed request, a private destination,
//! garbage, a truncated, an oversized and an old-version datagram. Each is
//! refused (unsigned where the request was not authenticated) or ignored with a
//! logged reason, adds no nftables element, and the waypoint keeps serving the
//! next valid request.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dcol::proto::{
    self, Message, Nonce, Outcome, RefusalReason, Request, RequestBody, RequestKind,
};
use dcol::trust::{files, Certificate, Roles, SecretKey};
use dcol_tests::dcol::{map_elements, Collective};
use dcol_tests::lab::{need_root, udp_exchange, Lab, SIGNAL_PORT};
use dcol_tests::{LinkProfile, Node};

const WAIT: Duration = Duration::from_millis(500);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn nonce(n: u8) -> Nonce {
    let mut b = [0u8; 16];
    b[0] = n;
    b[1..9].copy_from_slice(&now_ms().to_be_bytes());
    Nonce(b)
}

/// The client's address: the source the waypoint sees (no NAT in the lab).
const CLIENT: &str = "10.0.1.2";

fn request(cert: &Certificate, key: &SecretKey, n: u8, dest: SocketAddr) -> Vec<u8> {
    let body = RequestBody {
        waypoint: "alice".into(),
        timestamp_ms: now_ms(),
        nonce: nonce(n),
        source: CLIENT.parse().expect("address"),
        kind: RequestKind::NatDetour { destination: dest },
    };
    proto::encode(&Message::Request(Request::sign(cert.clone(), key, body)))
}

fn outcome(reply: &[u8]) -> Outcome {
    match proto::decode(reply).expect("reply decodes") {
        Message::Response(r) => r.body.outcome,
        m => panic!("unexpected reply {m:?}"),
    }
}

/// The reason of a refusal, and whether it was signed.
fn reason(reply: &[u8]) -> (RefusalReason, bool) {
    match proto::decode(reply).expect("reply decodes") {
        Message::Response(r) => match r.body.outcome {
            Outcome::Refused { reason } => (reason, true),
            o => panic!("expected a refusal, got {o:?}"),
        },
        Message::Refusal(r) => (r.reason, false),
        m => panic!("unexpected reply {m:?}"),
    }
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn waypoint_refuses_bad_input_and_keeps_serving() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new(LinkProfile::core_limited());
    lab.start_waypoint();
    let cns = lab.ns(Node::Client);
    let wns = lab.ns(Node::Waypoint);
    let wp = SocketAddr::new(IpAddr::V4(lab.topo.addr4(Node::Waypoint)), SIGNAL_PORT);
    let server = SocketAddr::new(IpAddr::V4(lab.topo.addr4(Node::Server)), 5201);
    let key = files::read_secret_key(&lab.client_member.key).unwrap();
    let cert = files::read_certificate(&lab.client_member.cert).unwrap();
    let elements = || map_elements(&wns, "dcol", "nat4");
    // `signed`: a refusal of an authenticated request is signed; one of a
    // request that failed its checks before that is not.
    let refused = |bytes: &[u8], want: RefusalReason, signed: bool, log: &str| {
        let reply = udp_exchange(&cns, wp, bytes, WAIT).expect("a refusal reply");
        assert!(
            reply.len() <= bytes.len(),
            "reply {} > request {}",
            reply.len(),
            bytes.len()
        );
        assert_eq!(reason(&reply), (want, signed));
        assert_eq!(elements(), 0, "a refused request added an element");
        let l = lab.wp().log_text();
        assert!(l.contains(log), "waypoint log lacks '{log}':\n{l}");
    };
    let ignored = |bytes: &[u8], log: &str| {
        assert!(
            udp_exchange(&cns, wp, bytes, WAIT).is_none(),
            "answered undecodable input"
        );
        assert_eq!(elements(), 0);
        let l = lab.wp().log_text();
        assert!(l.contains(log), "waypoint log lacks '{log}':\n{l}");
    };

    // Forged signature.
    let mut forged = request(&cert, &key, 1, server);
    let n = forged.len();
    // The signature sits right before the zero padding; flip a byte inside the
    // postcard message instead of the padding: decode, tamper, re-encode.
    if let Ok(Message::Request(mut r)) = proto::decode(&forged) {
        r.signature.0[0] ^= 0x55;
        forged = proto::encode(&Message::Request(r));
    }
    assert_eq!(forged.len(), n);
    refused(
        &forged,
        RefusalReason::BadCertificate,
        false,
        "bad signature",
    );

    // A certificate of another collective.
    let other = Collective::new(lab.scratch.path(), "other");
    let mallory = other.admit("mallory", "client", 30);
    let mkey = files::read_secret_key(&mallory.key).unwrap();
    let mcert = files::read_certificate(&mallory.cert).unwrap();
    refused(
        &request(&mcert, &mkey, 2, server),
        RefusalReason::BadCertificate,
        false,
        "certificate of another collective",
    );

    // An expired certificate, properly signed by our collective's root.
    let root = files::read_secret_key(&lab.collective.root_key).unwrap();
    let now = now_ms() / 1000;
    let old = Certificate::issue(
        &root,
        "bob",
        key.public(),
        None,
        now - 10 * 86400,
        now - 86400,
        Roles::CLIENT,
    )
    .unwrap();
    refused(
        &request(&old, &key, 3, server),
        RefusalReason::BadCertificate,
        false,
        "expired",
    );

    // A private destination the owner did not allow.
    let lan = "192.168.1.1:80".parse().unwrap();
    refused(
        &request(&cert, &key, 4, lan),
        RefusalReason::DestinationNotAllowed,
        true,
        "private address",
    );

    // Garbage, truncated, oversized: not even answered.
    let garbage: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    ignored(&garbage, "ignored datagram");
    let valid = request(&cert, &key, 5, server);
    ignored(&valid[..100], "ignored datagram");
    let mut big = valid.clone();
    big.resize(1500, 0);
    ignored(&big, "ignored datagram");
    // A request of the previous protocol version: a short unsigned refusal
    // (the old client logs "protocol version 2").
    let mut v1 = valid.clone();
    v1[0] = 1;
    refused(
        &v1,
        RefusalReason::UnsupportedVersion,
        false,
        "protocol version 1 (this router speaks version 2)",
    );

    // A valid request is granted; a copy of it from another socket of the
    // same address (a retransmission from a new port, or a second router
    // behind the same NAT) gets the same grant and no second element.
    let reply = udp_exchange(&cns, wp, &valid, WAIT).expect("grant");
    let port = match outcome(&reply) {
        Outcome::Granted { port, .. } => port,
        o => panic!("expected a grant, got {o:?}"),
    };
    assert_eq!(elements(), 1);
    // (udp_exchange uses a fresh socket, i.e. a new source port.)
    let again = udp_exchange(&cns, wp, &valid, WAIT).expect("the same grant");
    assert_eq!(again, reply, "another reply to the same request");
    assert_eq!(elements(), 1, "a copy added an element");
    // The same nonce signed over another body is a replay.
    let mut other = proto::decode(&valid).expect("decodes");
    if let Message::Request(r) = &mut other {
        r.body.kind = RequestKind::NatDetour {
            destination: SocketAddr::new(server.ip(), 5299),
        };
        *r = Request::sign(cert.clone(), &key, r.body.clone());
    }
    let replay = udp_exchange(&cns, wp, &proto::encode(&other), WAIT).expect("refusal");
    assert_eq!(reason(&replay), (RefusalReason::Replay, true));
    assert_eq!(elements(), 1, "a replay added an element");

    // Still serving: another valid request, another port.
    let reply = udp_exchange(
        &cns,
        wp,
        &request(&cert, &key, 6, SocketAddr::new(server.ip(), 5202)),
        WAIT,
    )
    .expect("grant");
    match outcome(&reply) {
        Outcome::Granted { port: p2, .. } => assert_ne!(p2, port),
        o => panic!("expected a grant, got {o:?}"),
    }
    assert_eq!(elements(), 2);
    let st = lab.wp().status();
    assert!(
        st["waypoint"]["refused"].as_object().map_or(0, |m| m.len()) >= 4,
        "{st}"
    );
}
