//! A NAT lease asked for by hand: one signed request from a namespace, as
//! the client daemon would send it, so the lab can measure a path through a
//! waypoint without the DCol client (`tcp_nat`, 1-subflow MPTCP per path).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dcol::proto::{self, Message, Nonce, Outcome, Request, RequestBody, RequestKind};
use dcol::trust::files;
use dcol_tests::dcol::Member;
use dcol_tests::lab::enter_netns;

/// Why no lease came.
#[derive(Debug)]
pub enum LeaseError {
    /// The member's key or certificate could not be read.
    Files(files::FileError),
    /// A socket or the namespace.
    Io(std::io::Error),
    /// The waypoint answered something else than a grant.
    NotGranted(String),
    /// Three requests, no answer.
    NoAnswer,
}

impl std::fmt::Display for LeaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseError::Files(e) => write!(f, "member files: {e}"),
            LeaseError::Io(e) => write!(f, "{e}"),
            LeaseError::NotGranted(o) => write!(f, "not granted: {o}"),
            LeaseError::NoAnswer => write!(f, "no answer from the waypoint"),
        }
    }
}

/// Asks waypoint `wp_name` at `wp` for a NAT tunnel to `dest`, as `member`
/// from namespace `ns` whose address the waypoint sees is `client`; the
/// granted port.
pub fn nat_lease(
    ns: &str,
    member: &Member,
    wp_name: &str,
    wp: SocketAddr,
    client: IpAddr,
    dest: SocketAddr,
) -> Result<u16, LeaseError> {
    let key = files::read_secret_key(&member.key).map_err(LeaseError::Files)?;
    let cert = files::read_certificate(&member.cert).map_err(LeaseError::Files)?;
    let (path, wp_name) = (format!("/var/run/netns/{ns}"), wp_name.to_owned());
    std::thread::spawn(move || -> Result<u16, LeaseError> {
        enter_netns(&std::fs::File::open(path).map_err(LeaseError::Io)?);
        let s = UdpSocket::bind("0.0.0.0:0").map_err(LeaseError::Io)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(LeaseError::Io)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let body = RequestBody {
            waypoint: wp_name,
            timestamp_ms: now.as_millis() as u64,
            nonce: Nonce(now.as_nanos().to_le_bytes()),
            source: client,
            kind: RequestKind::NatDetour { destination: dest },
        };
        let req = proto::encode(&Message::Request(Request::sign(cert, &key, body)));
        for _ in 0..3 {
            s.send_to(&req, wp).map_err(LeaseError::Io)?;
            let mut buf = [0u8; 2048];
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return match proto::decode(&buf[..n]) {
                    Ok(Message::Response(r)) => match r.body.outcome {
                        Outcome::Granted { port, .. } => Ok(port),
                        o => Err(LeaseError::NotGranted(format!("{o:?}"))),
                    },
                    o => Err(LeaseError::NotGranted(format!("{o:?}"))),
                };
            }
        }
        Err(LeaseError::NoAnswer)
    })
    .join()
    .unwrap_or(Err(LeaseError::NoAnswer))
}
