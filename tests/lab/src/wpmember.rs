//! The members of `dcol-lab waypoint-load`: each one a task on one tokio
//! runtime in the members' namespace, with its own address and UDP socket,
//! speaking the real signed protocol to the waypoint. A member holds a few
//! NAT leases, renews each one every `renew`, and every `churn` releases its
//! oldest lease and asks for a new one; through every lease it holds a TCP
//! connection (member → waypoint:port, DNATed to the server), closed just
//! before the lease is released, so the waypoint's conntrack carries real
//! tunnel flows.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dcol::proto::{self, Message, Nonce, Outcome, Request, RequestBody, RequestKind};
use dcol::trust::{Certificate, SecretKey};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// How many server addresses the members' grants cycle through.
pub const DESTINATIONS: u8 = 8;

/// What a request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqKind {
    /// A new NAT tunnel.
    Grant,
    /// A lease renewed.
    Renew,
    /// A lease released.
    Release,
}

/// A member's identity and address.
#[derive(Clone)]
pub struct Member {
    /// Its certificate.
    pub cert: Certificate,
    /// Its key.
    pub key: SecretKey,
    /// The address it sends from.
    pub addr: Ipv4Addr,
}

/// The schedule every member follows.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// The waypoint's signaling address.
    pub waypoint: SocketAddr,
    /// Where the tunnels lead: this address and the next
    /// [`DESTINATIONS`]` - 1` (a member's grants go to them in turn, so the
    /// leases it holds at once are distinct tunnels: grants to one
    /// destination would share one).
    pub destination: SocketAddr,
    /// How many of those addresses (1 to [`DESTINATIONS`]).
    pub destinations: u8,
    /// Leases each member holds.
    pub leases: usize,
    /// Each member replaces one lease this often.
    pub churn: Duration,
    /// Each lease is renewed this often.
    pub renew: Duration,
    /// Members start (their first leases) spread over this.
    pub ramp: Duration,
    /// When the churn starts (after the ramp) and ends.
    pub start: Instant,
    /// When the churn ends; then every lease is released.
    pub end: Instant,
}

/// One request's outcome: when it was sent (s since `start`), what, how
/// long until the answer (`None`: no answer after four tries), and the
/// refusal if it was one.
#[derive(Debug, Clone)]
pub struct Record {
    /// Seconds since the schedule's start (negative: during the ramp).
    pub t: f64,
    /// What was asked.
    pub kind: ReqKind,
    /// Milliseconds until the answer.
    pub ms: Option<f64>,
    /// Why it was refused, if it was.
    pub refused: Option<String>,
}

/// What one member did.
#[derive(Debug, Default)]
pub struct MemberReport {
    /// Every request.
    pub records: Vec<Record>,
    /// Tunnel connections that did not connect.
    pub flows_failed: usize,
    /// Tunnel connections made.
    pub flows: usize,
}

struct Lease {
    port: u16,
    destination: SocketAddr,
    nonce: Nonce,
    next_renew: Instant,
    _flow: Option<TcpStream>,
}

struct Ctx {
    m: Member,
    s: Schedule,
    sock: UdpSocket,
    seq: u64,
    /// Grants asked for so far (picks the destination).
    grants: u64,
    idx: u16,
    report: MemberReport,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Ctx {
    fn nonce(&mut self) -> Nonce {
        self.seq += 1;
        let mut n = [0u8; 16];
        n[..2].copy_from_slice(&self.idx.to_be_bytes());
        n[2..10].copy_from_slice(&self.seq.to_be_bytes());
        n[10..16].copy_from_slice(&wall_ms().to_be_bytes()[2..]);
        Nonce(n)
    }

    /// Sends a signed request and waits for its answer as the client does
    /// (300 ms, four tries); records it.
    async fn ask(&mut self, kind: RequestKind, what: ReqKind, nonce: Nonce) -> Option<Outcome> {
        let body = RequestBody {
            waypoint: "alice".into(),
            timestamp_ms: wall_ms(),
            nonce,
            source: IpAddr::V4(self.m.addr),
            kind,
        };
        let req = proto::encode(&Message::Request(Request::sign(
            self.m.cert.clone(),
            &self.m.key,
            body,
        )));
        let t0 = Instant::now();
        let t = t0.saturating_duration_since(self.s.start).as_secs_f64()
            - self.s.start.saturating_duration_since(t0).as_secs_f64();
        let mut buf = [0u8; 2048];
        for _ in 0..4 {
            let _ = self.sock.send_to(&req, self.s.waypoint).await;
            let until = tokio::time::Instant::now() + Duration::from_millis(300);
            while let Ok(Ok(n)) = tokio::time::timeout_at(until, self.sock.recv(&mut buf)).await {
                let outcome = match proto::decode(&buf[..n]) {
                    Ok(Message::Response(r)) if r.body.nonce == nonce => r.body.outcome,
                    Ok(Message::Refusal(r)) => Outcome::Refused { reason: r.reason },
                    _ => continue,
                };
                let refused = match &outcome {
                    Outcome::Granted { .. } => None,
                    o => Some(format!("{o:?}")),
                };
                let ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                self.report.records.push(Record {
                    t,
                    kind: what,
                    ms,
                    refused,
                });
                return Some(outcome);
            }
        }
        self.report.records.push(Record {
            t,
            kind: what,
            ms: None,
            refused: None,
        });
        None
    }

    async fn grant(&mut self) -> Option<Lease> {
        let nonce = self.nonce();
        let destination = match self.s.destination {
            SocketAddr::V4(d) => {
                let k = (self.grants % u64::from(self.s.destinations.max(1))) as u8;
                self.grants += 1;
                let o = d.ip().octets();
                SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3].wrapping_add(k))),
                    d.port(),
                )
            }
            v6 => v6,
        };
        let kind = RequestKind::NatDetour { destination };
        let Some(Outcome::Granted { port, .. }) = self.ask(kind, ReqKind::Grant, nonce).await
        else {
            return None;
        };
        let flow = self.flow(port).await;
        Some(Lease {
            port,
            destination,
            nonce,
            next_renew: Instant::now() + self.s.renew,
            _flow: flow,
        })
    }

    /// A TCP connection through the tunnel on `port`.
    async fn flow(&mut self, port: u16) -> Option<TcpStream> {
        let to = SocketAddr::new(self.s.waypoint.ip(), port);
        let sock = TcpSocket::new_v4().ok()?;
        sock.bind(SocketAddr::new(IpAddr::V4(self.m.addr), 0))
            .ok()?;
        match tokio::time::timeout(Duration::from_secs(3), sock.connect(to)).await {
            Ok(Ok(s)) => {
                self.report.flows += 1;
                Some(s)
            }
            _ => {
                self.report.flows_failed += 1;
                None
            }
        }
    }

    async fn renew(&mut self, l: &mut Lease) {
        let kind = RequestKind::Renew {
            port: l.port,
            destination: l.destination,
            lease: l.nonce,
        };
        let n = self.nonce();
        self.ask(kind, ReqKind::Renew, n).await;
        l.next_renew = Instant::now() + self.s.renew;
    }

    async fn release(&mut self, l: Lease) {
        let kind = RequestKind::Release {
            port: l.port,
            lease: l.nonce,
        };
        drop(l._flow);
        let n = self.nonce();
        self.ask(kind, ReqKind::Release, n).await;
    }
}

/// Member number `idx` (of `of`): takes its leases during the ramp, churns
/// and renews until the end, then releases everything.
pub async fn run(idx: usize, of: usize, m: Member, s: Schedule) -> MemberReport {
    let sock = match UdpSocket::bind(SocketAddr::new(IpAddr::V4(m.addr), 0)).await {
        Ok(s) => s,
        Err(_) => return MemberReport::default(),
    };
    let mut c = Ctx {
        m,
        s,
        sock,
        seq: 0,
        grants: 0,
        idx: idx as u16,
        report: MemberReport::default(),
    };
    let first = s.start - s.ramp + s.ramp * idx as u32 / of.max(1) as u32;
    tokio::time::sleep_until(first.into()).await;
    let mut leases: VecDeque<Lease> = VecDeque::new();
    for _ in 0..s.leases {
        leases.extend(c.grant().await);
    }
    // Churn phases are spread like the ramp, so the waypoint sees an even rate.
    let mut next_churn = s.start + s.churn * idx as u32 / of.max(1) as u32;
    while Instant::now() < s.end {
        let renew_at = leases.iter().map(|l| l.next_renew).min();
        let at = renew_at
            .map_or(next_churn, |r| r.min(next_churn))
            .min(s.end);
        tokio::time::sleep_until(at.into()).await;
        let now = Instant::now();
        if now >= s.end {
            break;
        }
        if now >= next_churn {
            next_churn += s.churn;
            if let Some(old) = leases.pop_front() {
                c.release(old).await;
            }
            leases.extend(c.grant().await);
            continue;
        }
        if let Some(i) = leases.iter().position(|l| l.next_renew <= now) {
            if let Some(mut lease) = leases.remove(i) {
                c.renew(&mut lease).await;
                leases.insert(i, lease);
            }
        }
    }
    while let Some(l) = leases.pop_front() {
        c.release(l).await;
    }
    c.report
}

/// `n` grants one after another from `m` alone, each released at once,
/// `gap` apart: the quiet baseline of the grant latency.
pub async fn quiet(m: Member, s: Schedule, n: usize, gap: Duration) -> MemberReport {
    let sock = match UdpSocket::bind(SocketAddr::new(IpAddr::V4(m.addr), 0)).await {
        Ok(s) => s,
        Err(_) => return MemberReport::default(),
    };
    let mut c = Ctx {
        m,
        s,
        sock,
        seq: 1 << 40,
        grants: 0,
        idx: u16::MAX,
        report: MemberReport::default(),
    };
    for _ in 0..n {
        if let Some(l) = c.grant().await {
            c.release(l).await;
        }
        tokio::time::sleep(gap).await;
    }
    c.report
}
