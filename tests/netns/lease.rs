//! A NAT tunnel asked for by hand with a real signed request (shared by the
//! benches and the netns tests that need a detour without the client daemon).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dcol::proto::{self, Message, Nonce, Outcome, Request, RequestBody, RequestKind};
use dcol::trust::files;
use dcol_tests::dcol::Member;
use dcol_tests::lab::{enter_netns, Lab, SIGNAL_PORT};
use dcol_tests::Node;

/// Asks the waypoint for a NAT tunnel to `dest` from the client's namespace.
#[allow(dead_code)] // not every test file that includes this module uses the lab
pub fn nat_lease(lab: &Lab, dest: SocketAddr, nonce: u8) -> u16 {
    match nat_request(lab, dest, nonce) {
        Outcome::Granted { port, .. } => port,
        o => panic!("not granted: {o:?}"),
    }
}

/// The waypoint's answer to a NAT tunnel request for `dest`.
#[allow(dead_code)] // not every test file that includes this module refuses
pub fn nat_request(lab: &Lab, dest: SocketAddr, nonce: u8) -> Outcome {
    let wp = SocketAddr::new(lab.topo.addr4(Node::Waypoint).into(), SIGNAL_PORT);
    let kind = RequestKind::NatDetour { destination: dest };
    signed_request(&lab.ns(Node::Client), &lab.client_member, wp, kind, nonce)
}

/// Sends `member`'s signed request `kind` (nonce `nonce` repeated) to the
/// waypoint named "alice" at `waypoint` from namespace `ns`; returns its
/// answer.
pub fn signed_request(
    ns: &str,
    member: &Member,
    waypoint: SocketAddr,
    kind: RequestKind,
    nonce: u8,
) -> Outcome {
    let ns = ns.to_owned();
    let key = files::read_secret_key(&member.key).expect("key");
    let cert = files::read_certificate(&member.cert).expect("cert");
    std::thread::spawn(move || {
        enter_netns(&std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns"));
        let any = if waypoint.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let s = UdpSocket::bind(any).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        // The request names the address the waypoint will see: the one
        // routing picks towards it (no NAT on the tests' paths).
        s.connect(waypoint).expect("connect");
        let source = s.local_addr().expect("local address").ip();
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let body = RequestBody {
            waypoint: "alice".into(),
            timestamp_ms: ms,
            nonce: Nonce([nonce; 16]),
            source,
            kind,
        };
        let req = proto::encode(&Message::Request(Request::sign(cert, &key, body)));
        s.send(&req).expect("send");
        let mut buf = [0u8; 2048];
        let (n, _) = s.recv_from(&mut buf).expect("an answer");
        match proto::decode(&buf[..n]) {
            Ok(Message::Response(r)) => r.body.outcome,
            o => panic!("{o:?}"),
        }
    })
    .join()
    .expect("request thread")
}
