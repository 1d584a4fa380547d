//! Attacks on the waypoint's signaling port (issue 14 items 5-8), each
//! against the real daemon in the lab's namespaces. An extra namespace,
//! `atk`, hangs off the waypoint's namespace on an unshaped veth
//! (10.0.66.2 → 10.0.66.1): the hostile member's or Internet host's machine,
//! fast enough to flood. Honest members ask from the client's namespace
//! (10.0.1.2) through the lab's rate-limited links.
//!
//! ```text
//!  client (10.0.1.2) ── rc ── rw ── waypoint (10.0.6.2) ── atk (10.0.66.2)
//! ```

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dcol::proto::{self, Message, Nonce, Outcome, Request, RequestBody, RequestKind};
use dcol::trust::{files, Certificate, SecretKey, Signature};
use dcol_tests::dcol::{dcol_bin, map_elements, Member};
use dcol_tests::lab::{enter_netns, need_root, Lab, SIGNAL_PORT};
use dcol_tests::{veth, LinkProfile, Netns, Node};

/// The attacker's address (its end of the unshaped veth).
const ATK: &str = "10.0.66.2";

/// The lab, its waypoint (evidence kept in the scratch directory), and the
/// attacker's namespace.
struct Arena {
    lab: Lab,
    atk: Netns,
    evidence: PathBuf,
    /// The waypoint's signaling address.
    wp: SocketAddr,
    /// The same, seen from `atk` (its end of the veth: the waypoint answers
    /// from the address nearest the asker).
    wp_atk: SocketAddr,
}

impl Arena {
    fn new(extra: &str) -> Arena {
        let mut lab = Lab::new(LinkProfile::core_limited());
        let evidence = lab.scratch.path().join("evidence");
        lab.start_waypoint_with(&format!(
            "\toption evidence_dir '{}'\n{extra}",
            evidence.display()
        ));
        let atk = Netns::new("atk");
        veth(
            lab.topo.ns(Node::Waypoint),
            "atk0",
            "10.0.66.1/24",
            &atk,
            "atk1",
            &format!("{ATK}/24"),
        );
        atk.exec(&["ip", "route", "add", "default", "via", "10.0.66.1"]);
        let wp = SocketAddr::new(IpAddr::V4(lab.topo.addr4(Node::Waypoint)), SIGNAL_PORT);
        Arena {
            lab,
            atk,
            evidence,
            wp,
            wp_atk: SocketAddr::new("10.0.66.1".parse().expect("ip"), SIGNAL_PORT),
        }
    }

    /// A member admitted now (bob, the lab's client, exists already).
    fn member(&self, name: &str) -> Signer {
        let m = if name == "bob" {
            self.lab.client_member.clone()
        } else {
            self.lab.collective.admit(name, "client", 30)
        };
        Signer::new(&m)
    }

    fn client_ns(&self) -> String {
        self.lab.ns(Node::Client)
    }

    fn atk_ns(&self) -> String {
        self.atk.name().to_owned()
    }

    fn elements(&self) -> usize {
        map_elements(&self.lab.ns(Node::Waypoint), "dcol", "nat4")
    }

    /// `dcol waypoint log --json --dir EVIDENCE`: the records.
    fn evidence(&self) -> Vec<serde_json::Value> {
        let out = Command::new(dcol_bin())
            .args(["waypoint", "log", "--json", "--dir"])
            .arg(&self.evidence)
            .output()
            .expect("dcol waypoint log");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "dcol waypoint log: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        v["records"].as_array().cloned().unwrap_or_default()
    }

    /// How long `dcol status` takes to answer, or `None` after `limit`.
    fn status_time(&self, limit: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        let mut c = Command::new(dcol_bin())
            .args(["status", "--json", "--socket"])
            .arg(&self.lab.wp().socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dcol status");
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success().then(|| t0.elapsed());
            }
            if t0.elapsed() > limit {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A member that signs requests (as the test's own client).
#[derive(Clone)]
struct Signer {
    cert: Certificate,
    key: SecretKey,
    /// Distinguishes this member's nonces.
    salt: u8,
    next: Arc<AtomicU64>,
}

impl Signer {
    fn new(m: &Member) -> Signer {
        Signer {
            cert: files::read_certificate(&m.cert).expect("certificate"),
            key: files::read_secret_key(&m.key).expect("key"),
            salt: m.name.as_bytes()[0],
            next: Arc::new(AtomicU64::new(1)),
        }
    }

    fn nonce(&self) -> Nonce {
        let mut n = [self.salt; 16];
        n[..8].copy_from_slice(&now_ms().to_be_bytes());
        n[8..15].copy_from_slice(&self.next.fetch_add(1, Ordering::Relaxed).to_be_bytes()[1..]);
        Nonce(n)
    }

    fn body(&self, kind: RequestKind, source: IpAddr) -> RequestBody {
        RequestBody {
            waypoint: "alice".into(),
            timestamp_ms: now_ms(),
            nonce: self.nonce(),
            source,
            kind,
        }
    }

    /// A signed request, bound to `source` (the address the waypoint will see).
    fn request(&self, kind: RequestKind, source: IpAddr) -> (Nonce, Vec<u8>) {
        let body = self.body(kind, source);
        let nonce = body.nonce;
        let r = Request::sign(self.cert.clone(), &self.key, body);
        (nonce, proto::encode(&Message::Request(r)))
    }

    /// A request with this member's (public) certificate and a garbage signature.
    fn forged(&self, kind: RequestKind, source: IpAddr, junk: u64) -> Vec<u8> {
        let mut sig = [0u8; 64];
        for (i, b) in sig.iter_mut().enumerate() {
            *b = (junk.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (i % 8 * 8)) as u8 ^ i as u8;
        }
        let r = Request {
            cert: self.cert.clone(),
            body: self.body(kind, source),
            signature: Signature(sig),
        };
        proto::encode(&Message::Request(r))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn nat(port: u16) -> RequestKind {
    RequestKind::NatDetour {
        destination: SocketAddr::new("10.0.3.2".parse().expect("ip"), port),
    }
}

/// What a reply said.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Granted(u16),
    /// A signed refusal (or any other signed outcome), by its debug text.
    Signed(String),
    /// An unsigned refusal, by its reason.
    Unsigned(String),
    Undecodable(String),
}

fn reply(bytes: &[u8]) -> Reply {
    match proto::decode(bytes) {
        Ok(Message::Response(r)) => match r.body.outcome {
            Outcome::Granted { port, .. } => Reply::Granted(port),
            o => Reply::Signed(format!("{o:?}")),
        },
        Ok(Message::Refusal(r)) => Reply::Unsigned(format!("{:?}", r.reason)),
        Ok(m) => Reply::Undecodable(format!("not a reply: {m:?}")),
        Err(e) => Reply::Undecodable(e.to_string()),
    }
}

/// Runs `f` on a thread inside namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_netns(&std::fs::File::open(&path).expect("open netns"));
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Like [`in_ns`], running in the background.
fn spawn_in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_netns(&std::fs::File::open(&path).expect("open netns"));
        f()
    })
}

fn socket(wait: Duration) -> UdpSocket {
    let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
    s.set_read_timeout(Some(wait)).expect("timeout");
    s
}

/// Sends `bytes` and waits for the reply to it, resending as a client does
/// (every 300 ms, four times in all); the reply and how long it took.
fn ask(s: &UdpSocket, to: SocketAddr, bytes: &[u8]) -> Option<(Reply, Duration)> {
    let t0 = Instant::now();
    let mut buf = [0u8; 2048];
    for _ in 0..4 {
        s.send_to(bytes, to).expect("send");
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            s.set_read_timeout(Some(
                until
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .expect("timeout");
            match s.recv_from(&mut buf) {
                Ok((n, from)) if from == to => {
                    // Another request's late reply carries another nonce: skip it.
                    if nonce_of(&buf[..n]).is_none_or(|x| Some(x) == request_nonce(bytes)) {
                        return Some((reply(&buf[..n]), t0.elapsed()));
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    None
}

fn request_nonce(bytes: &[u8]) -> Option<Nonce> {
    match proto::decode(bytes) {
        Ok(Message::Request(r)) => Some(r.body.nonce),
        _ => None,
    }
}

fn nonce_of(bytes: &[u8]) -> Option<Nonce> {
    match proto::decode(bytes) {
        Ok(Message::Response(r)) => Some(r.body.nonce),
        _ => None,
    }
}

/// Item 5: one member's renewals fill the replay cache; another member's
/// requests must still be granted.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn replay_cache_flood_by_one_member_does_not_refuse_another() {
    if !need_root() {
        return;
    }
    let a = Arena::new("");
    let (bob, carol) = (a.member("bob"), a.member("carol"));
    let (wp, wp_atk) = (a.wp, a.wp_atk);
    let atk: IpAddr = ATK.parse().expect("ip");
    // Bob, from the attacker's machine: one lease, then renewals of it as
    // fast as the waypoint answers (16 in flight), until it stops granting.
    let b = bob.clone();
    let (granted, stopped_by) = in_ns(&a.atk_ns(), move || {
        let s = socket(Duration::from_millis(500));
        let (lease, first) = b.request(nat(5201), atk);
        let Some((Reply::Granted(port), _)) = ask(&s, wp_atk, &first) else {
            panic!("bob's first request was not granted");
        };
        let renew = || {
            b.request(
                RequestKind::Renew {
                    port,
                    destination: "10.0.3.2:5201".parse().expect("addr"),
                    lease,
                },
                atk,
            )
            .1
        };
        let mut buf = [0u8; 2048];
        let (mut sent, mut granted, mut in_flight) = (0u32, 0u32, 0u32);
        let stopped_by = loop {
            while in_flight < 16 && sent < 20_000 {
                s.send_to(&renew(), wp_atk).expect("send");
                sent += 1;
                in_flight += 1;
            }
            match s.recv_from(&mut buf) {
                Ok((n, _)) => {
                    in_flight -= 1;
                    match reply(&buf[..n]) {
                        Reply::Granted(_) => granted += 1,
                        other => break format!("{other:?}"),
                    }
                }
                Err(_) => break "silence".to_owned(),
            }
            if sent >= 20_000 && in_flight == 0 {
                break "20000 renewals granted".to_owned();
            }
        };
        (granted, stopped_by)
    });
    eprintln!("bob: {granted} renewals granted, then {stopped_by}");
    // Bob goes on flooding while carol asks.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (stop, b) = (stop.clone(), bob.clone());
        spawn_in_ns(&a.atk_ns(), move || {
            let s = socket(Duration::from_millis(1));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (_, r) = b.request(nat(6000 + (n % 1000) as u16), atk);
                let _ = s.send_to(&r, wp_atk);
                n += 1;
                std::thread::sleep(Duration::from_micros(50));
            }
            n
        })
    };
    let client: IpAddr = a.lab.topo.addr4(Node::Client).into();
    let c = carol.clone();
    let answers = in_ns(&a.client_ns(), move || {
        let s = socket(Duration::from_millis(300));
        (0..3)
            .map(|i| ask(&s, wp, &c.request(nat(5201 + i), client).1))
            .collect::<Vec<_>>()
    });
    stop.store(true, Ordering::Relaxed);
    let flooded = flood.join().expect("flood thread");
    eprintln!("bob sent {flooded} more requests while carol asked: {answers:?}");
    for a in &answers {
        assert!(
            matches!(a, Some((Reply::Granted(_), _))),
            "carol refused while bob floods: {answers:?}"
        );
    }
}

/// Item 6: a flood of forged requests (bob's public certificate, garbage
/// signatures) at the highest rate one sender reaches; an honest member
/// still gets grants promptly and the daemon still answers `dcol status`.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn forged_signature_flood_does_not_starve_honest_members() {
    if !need_root() {
        return;
    }
    let a = Arena::new("");
    let (bob, carol) = (a.member("bob"), a.member("carol"));
    let (wp, wp_atk) = (a.wp, a.wp_atk);
    let atk: IpAddr = ATK.parse().expect("ip");
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        spawn_in_ns(&a.atk_ns(), move || {
            // Fresh timestamps all along: 512 datagrams built per 100 ms.
            let s = socket(Duration::from_millis(1));
            let mut sent = 0u64;
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let pool: Vec<Vec<u8>> = (0..512)
                    .map(|i| bob.forged(nat(5201), atk, sent + i))
                    .collect();
                let until = Instant::now() + Duration::from_millis(100);
                while Instant::now() < until {
                    for d in &pool {
                        if s.send_to(d, wp_atk).is_ok() {
                            sent += 1;
                        }
                    }
                }
            }
            (sent, t0.elapsed())
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let client: IpAddr = a.lab.topo.addr4(Node::Client).into();
    let c = carol.clone();
    // Ten grant and release cycles (the member's quota is 16 tunnels).
    let honest = spawn_in_ns(&a.client_ns(), move || {
        let s = socket(Duration::from_millis(300));
        let mut answers = Vec::new();
        for i in 0..10 {
            let (lease, r) = c.request(nat(5201 + i), client);
            let a = ask(&s, wp, &r);
            if let Some((Reply::Granted(port), _)) = a {
                let (_, rel) = c.request(RequestKind::Release { port, lease }, client);
                answers.push(a);
                answers.push(ask(&s, wp, &rel));
            } else {
                answers.push(a);
            }
        }
        answers
    });
    let mut status = Vec::new();
    for _ in 0..3 {
        status.push(a.status_time(Duration::from_secs(2)));
        std::thread::sleep(Duration::from_millis(300));
    }
    let honest = honest.join().expect("honest thread");
    stop.store(true, Ordering::Relaxed);
    let (sent, took) = flood.join().expect("flood thread");
    let rate = sent as f64 / took.as_secs_f64();
    let seen = a.lab.wp().status()["waypoint"]["datagrams"]
        .as_u64()
        .unwrap_or(0);
    let lat: Vec<Option<Duration>> = honest
        .iter()
        .map(|r| match r {
            Some((Reply::Granted(_), t)) => Some(*t),
            _ => None,
        })
        .collect();
    eprintln!(
        "flood: {sent} forged datagrams in {took:.1?} ({rate:.0}/s), the waypoint read {seen}; honest grant latencies {lat:?}; status answered in {status:?}"
    );
    assert!(
        status
            .iter()
            .all(|s| s.is_some_and(|t| t < Duration::from_secs(1))),
        "dcol status starved by the flood: {status:?}"
    );
    for (i, l) in lat.iter().enumerate() {
        assert!(
            l.is_some_and(|t| t < Duration::from_secs(1)),
            "honest request {i} not granted within 1 s under the flood: {honest:?}"
        );
    }
    // The flood was real, and the waypoint found its source over its rate
    // and had the kernel drop the rest.
    assert!(sent > 100_000, "only {sent} forged datagrams sent");
    let log = a.lab.wp().log_text();
    assert!(
        log.contains("over their rate dropped in the kernel"),
        "no kernel drop logged:\n{log}"
    );
}

/// Item 7: bob's request, sniffed and replayed from another address before
/// bob's own copy arrives: the replay is refused, bob's copy is granted, the
/// evidence names no lease for the replayer.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn request_replayed_from_another_address_is_refused() {
    if !need_root() {
        return;
    }
    let a = Arena::new("");
    let bob = a.member("bob");
    let (wp, wp_atk) = (a.wp, a.wp_atk);
    let client: IpAddr = a.lab.topo.addr4(Node::Client).into();
    let (_, sniffed) = bob.request(nat(5201), client);
    let copy = sniffed.clone();
    let replay = in_ns(&a.atk_ns(), move || {
        ask(&socket(Duration::from_millis(300)), wp_atk, &copy)
    });
    eprintln!("the replay from {ATK} got {replay:?}");
    assert!(
        !matches!(replay, Some((Reply::Granted(_), _))),
        "a replay from another address was granted"
    );
    assert_eq!(a.elements(), 0, "the replay added a NAT element");
    let own = in_ns(&a.client_ns(), move || {
        ask(&socket(Duration::from_millis(300)), wp, &sniffed)
    });
    assert!(
        matches!(own, Some((Reply::Granted(_), _))),
        "bob's own copy after the replay: {own:?}"
    );
    assert_eq!(a.elements(), 1);
    let records = a.evidence();
    let from_atk: Vec<_> = records
        .iter()
        .filter(|r| r["from"].as_str().is_some_and(|f| f.starts_with(ATK)))
        .collect();
    assert!(from_atk.is_empty(), "evidence of the replay: {from_atk:?}");
    let bobs: Vec<_> = records
        .iter()
        .filter(|r| r["grant"].as_str().is_some_and(|g| g.starts_with("nat ")))
        .collect();
    assert_eq!(bobs.len(), 1, "{records:?}");
    assert!(
        bobs[0]["from"]
            .as_str()
            .is_some_and(|f| f.starts_with("10.0.1.2:")),
        "{bobs:?}"
    );
}

/// Item 8: bob's grant and release cycles must not rotate bob's own earlier
/// records out of the (small) evidence log.
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn member_churn_cannot_wash_out_its_own_evidence() {
    if !need_root() {
        return;
    }
    let a = Arena::new("\toption evidence_max_kb '16'\n");
    let bob = a.member("bob");
    let wp = a.wp;
    let client: IpAddr = a.lab.topo.addr4(Node::Client).into();
    let b = bob.clone();
    let (first, cycles, stopped_by) = in_ns(&a.client_ns(), move || {
        let s = socket(Duration::from_millis(300));
        let Some((Reply::Granted(first), _)) = ask(&s, wp, &b.request(nat(6666), client).1) else {
            panic!("bob's first request was not granted");
        };
        let mut cycles = 0;
        let mut stopped_by = "100 cycles".to_owned();
        while cycles < 100 {
            let (lease, r) = b.request(nat(5201), client);
            match ask(&s, wp, &r) {
                Some((Reply::Granted(port), _)) => {
                    let (_, rel) = b.request(RequestKind::Release { port, lease }, client);
                    let _ = ask(&s, wp, &rel);
                    cycles += 1;
                }
                Some((r, _)) if format!("{r:?}").contains("RateLimited") => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => {
                    stopped_by = format!("{other:?}");
                    break;
                }
            }
        }
        (first, cycles, stopped_by)
    });
    eprintln!("bob churned {cycles} grant/release cycles, then: {stopped_by}");
    assert!(
        stopped_by.contains("EvidenceFull"),
        "bob's churn was not stopped by his evidence share: {stopped_by}"
    );
    let records = a.evidence();
    let want = format!("nat {first} -> 10.0.3.2:6666");
    assert!(
        records
            .iter()
            .any(|r| r["grant"].as_str() == Some(want.as_str())),
        "bob's first grant ({want}) was washed out by bob's own churn; {} records left",
        records.len()
    );
}
