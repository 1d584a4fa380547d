//! A small blocking HTTP/1.1 client, and the server-side helpers the
//! directory uses. Plain `http://` only: everything DCol fetches (the signed
//! directory snapshot, a UPnP gateway's description and SOAP replies) is
//! either signed or on the LAN, so the router binary carries no TLS stack.
//!
//! Why not `ureq`: without TLS it still adds ~390 KB to the static MIPS
//! binary; the few hundred lines here cover what DCol sends and receives
//! (one request per connection, `Content-Length`/chunked/close-delimited
//! bodies, redirects for GET, hard size and time limits).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub mod wire;

pub use wire::{Head, Url, WireError};

use wire::{BodyKind, Dechunker};

/// Redirects a GET follows.
const MAX_REDIRECTS: usize = 3;

/// Errors of an HTTP exchange.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Malformed data from the peer, or a bad URL.
    #[error("{url}: {source}")]
    Wire {
        /// What we were talking to.
        url: String,
        /// What was wrong.
        #[source]
        source: WireError,
    },
    /// Name resolution, connect, read or write failed.
    #[error("{url}: {op}: {source}")]
    Io {
        /// What we were talking to.
        url: String,
        /// The step that failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The whole exchange took longer than the caller allowed.
    #[error("{0}: timed out")]
    Timeout(String),
    /// Too many redirects.
    #[error("{0}: more than {MAX_REDIRECTS} redirects")]
    Redirects(String),
}

/// A response: status, fields and the whole body.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The parsed head.
    pub head: Head,
    /// The body.
    pub body: Vec<u8>,
}

/// Limits of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For the whole exchange, redirects included.
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(10),
            max_body: 1 << 20,
        }
    }
}

/// `GET url`, following up to three redirects.
pub fn get(url: &Url, limits: Limits) -> Result<Response, HttpError> {
    get_with(url, &[], limits)
}

/// `GET url` with extra header `fields` (e.g. `If-None-Match`), following up
/// to three redirects.
pub fn get_with(url: &Url, fields: &[(&str, &str)], limits: Limits) -> Result<Response, HttpError> {
    let deadline = Instant::now() + limits.timeout;
    let mut url = url.clone();
    for _ in 0..=MAX_REDIRECTS {
        let r = exchange("GET", &url, fields, &[], deadline, limits.max_body)?;
        if matches!(r.status, 301 | 302 | 303 | 307 | 308) {
            if let Some(loc) = r.head.field("location") {
                url = url.join(loc).map_err(|source| HttpError::Wire {
                    url: url.to_string(),
                    source,
                })?;
                continue;
            }
        }
        return Ok(r);
    }
    Err(HttpError::Redirects(url.to_string()))
}

/// One request with a body (`POST`, SOAP); redirects are not followed.
pub fn request(
    method: &str,
    url: &Url,
    fields: &[(&str, &str)],
    body: &[u8],
    limits: Limits,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + limits.timeout;
    exchange(method, url, fields, body, deadline, limits.max_body)
}

fn exchange(
    method: &str,
    url: &Url,
    fields: &[(&str, &str)],
    body: &[u8],
    deadline: Instant,
    max_body: usize,
) -> Result<Response, HttpError> {
    let name = url.to_string();
    let io = |op| {
        let name = name.clone();
        move |source| HttpError::Io {
            url: name,
            op,
            source,
        }
    };
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| HttpError::Timeout(name.clone()))
    };
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(io("resolve"))?
        .collect();
    let mut stream = None;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut s = stream.ok_or_else(|| io("connect")(last))?;
    let mut msg = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: dcol/{}\r\n",
        url.path,
        url.authority(),
        env!("CARGO_PKG_VERSION")
    );
    for (n, v) in fields {
        msg.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        msg.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    msg.push_str("\r\n");
    s.set_write_timeout(Some(left()?)).map_err(io("write"))?;
    s.write_all(msg.as_bytes()).map_err(io("write"))?;
    s.write_all(body).map_err(io("write"))?;
    let wire = |source| HttpError::Wire {
        url: name.clone(),
        source,
    };
    let mut buf = Vec::new();
    loop {
        // Informational (1xx) responses precede the real one.
        let (head, n) = loop {
            if let Some(h) = wire::parse_head(&buf).map_err(wire)? {
                break h;
            }
            if read_some(&s, &mut buf, left()?).map_err(io("read"))? == 0 {
                return Err(io("read")(io::ErrorKind::UnexpectedEof.into()));
            }
        };
        buf.drain(..n);
        let status = head.status().map_err(wire)?;
        if (100..200).contains(&status) {
            continue;
        }
        let kind = if method == "HEAD" || status == 204 || status == 304 {
            BodyKind::Length(0)
        } else {
            head.body_kind().map_err(wire)?
        };
        let body = read_body(&s, buf, kind, max_body, &left).map_err(|e| match e {
            BodyError::Wire(w) => wire(w),
            BodyError::Io(e) => io("read")(e),
            BodyError::Http(h) => h,
        })?;
        return Ok(Response { status, head, body });
    }
}

enum BodyError {
    Wire(WireError),
    Io(io::Error),
    Http(HttpError),
}

fn read_body(
    s: &TcpStream,
    mut buf: Vec<u8>,
    kind: BodyKind,
    max: usize,
    left: &dyn Fn() -> Result<Duration, HttpError>,
) -> Result<Vec<u8>, BodyError> {
    let time = || left().map_err(BodyError::Http);
    match kind {
        BodyKind::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= max)
                .ok_or(BodyError::Wire(WireError::BodyTooLarge(max)))?;
            while buf.len() < n {
                if read_some(s, &mut buf, time()?).map_err(BodyError::Io)? == 0 {
                    return Err(BodyError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
            }
            buf.truncate(n);
            Ok(buf)
        }
        BodyKind::UntilClose => {
            while read_some(s, &mut buf, time()?).map_err(BodyError::Io)? > 0 {
                if buf.len() > max {
                    return Err(BodyError::Wire(WireError::BodyTooLarge(max)));
                }
            }
            Ok(buf)
        }
        BodyKind::Chunked => {
            let mut d = Dechunker::default();
            let mut out = Vec::new();
            loop {
                let n = d.feed(&buf, &mut out, max).map_err(BodyError::Wire)?;
                buf.drain(..n);
                if d.done() {
                    return Ok(out);
                }
                if read_some(s, &mut buf, time()?).map_err(BodyError::Io)? == 0 {
                    return Err(BodyError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
            }
        }
    }
}

/// Reads what is available (at most 64 KiB) within `timeout`; 0 at EOF.
fn read_some(mut s: &TcpStream, buf: &mut Vec<u8>, timeout: Duration) -> io::Result<usize> {
    s.set_read_timeout(Some(timeout))?;
    let mut chunk = [0u8; 16 * 1024];
    let n = loop {
        match s.read(&mut chunk) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
            }
            r => break r?,
        }
    };
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Reads one request (head and body) from a server-side connection, within
/// `timeout` in all; bodies need `Content-Length` (chunked is accepted too).
pub fn read_request(
    s: &mut TcpStream,
    max_body: usize,
    timeout: Duration,
) -> Result<(Head, Vec<u8>), ServerError> {
    let deadline = Instant::now() + timeout;
    let (head, rest) = read_request_head(s, deadline)?;
    let body = read_request_body(s, &head, rest, max_body, deadline)?;
    Ok((head, body))
}

/// Reads a request head from a server-side connection by `deadline` (a
/// client that sends it slowly, byte by byte, is cut off all the same).
/// Returns the head and the bytes read after it (the start of the body).
pub fn read_request_head(s: &TcpStream, deadline: Instant) -> Result<(Head, Vec<u8>), ServerError> {
    let mut buf = Vec::new();
    let (head, n) = loop {
        if let Some(h) = wire::parse_head(&buf)? {
            break h;
        }
        let t = left_until(deadline).ok_or(ServerError::Timeout)?;
        if read_some(s, &mut buf, t).map_err(ServerError::from_io)? == 0 {
            return Err(ServerError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
    };
    buf.drain(..n);
    Ok((head, buf))
}

/// Reads the body of a request whose head [`read_request_head`] read
/// (`rest`: the bytes it read after the head), at most `max_body` bytes, by
/// `deadline`. A `Content-Length` over `max_body` is refused before a byte
/// of the body is read; a chunked body as soon as it grows past it.
pub fn read_request_body(
    s: &TcpStream,
    head: &Head,
    rest: Vec<u8>,
    max_body: usize,
    deadline: Instant,
) -> Result<Vec<u8>, ServerError> {
    let kind = match head.body_kind()? {
        BodyKind::UntilClose => BodyKind::Length(0),
        k => k,
    };
    let left = || left_until(deadline).ok_or_else(|| HttpError::Timeout("request".into()));
    read_body(s, rest, kind, max_body, &left).map_err(|e| match e {
        BodyError::Wire(w) => ServerError::Wire(w),
        BodyError::Io(e) => ServerError::from_io(e),
        BodyError::Http(_) => ServerError::Timeout,
    })
}

/// The time left until `deadline` (`None`: none).
fn left_until(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// Errors reading a request on the server side.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The request is malformed or too large.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The connection failed.
    #[error("{0}")]
    Io(io::Error),
    /// The client was too slow.
    #[error("request timed out")]
    Timeout,
}

impl ServerError {
    /// A read that ran out of time is [`ServerError::Timeout`].
    fn from_io(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::TimedOut {
            ServerError::Timeout
        } else {
            ServerError::Io(e)
        }
    }
}

/// Writes a complete response and closes the exchange (`Connection: close`).
pub fn write_response(
    s: &mut impl Write,
    status: u16,
    reason: &str,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// Serves the given raw replies, one per connection, on loopback.
    fn serve(replies: Vec<Vec<u8>>) -> (Url, thread::JoinHandle<Vec<Vec<u8>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}/x", l.local_addr().unwrap())).unwrap();
        let t = thread::spawn(move || {
            let mut seen = Vec::new();
            for r in replies {
                let (mut c, _) = l.accept().unwrap();
                let (head, body) = read_request(&mut c, 1 << 20, Duration::from_secs(5)).unwrap();
                seen.push(format!("{} {} {}", head.first, head.second, body.len()).into_bytes());
                c.write_all(&r).unwrap();
            }
            seen
        });
        (url, t)
    }

    #[test]
    fn bodies_and_redirects() {
        let (url, t) = serve(vec![
            b"HTTP/1.1 302 Found\r\nLocation: /y\r\nContent-Length: 0\r\n\r\n".to_vec(),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                .to_vec(),
            b"HTTP/1.0 200 OK\r\n\r\nuntil close".to_vec(),
        ]);
        let r = get(&url, Limits::default()).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
        let r = request("POST", &url, &[("X", "1")], b"hello", Limits::default()).unwrap();
        assert_eq!(r.body, b"until close");
        let seen = t.join().unwrap();
        assert_eq!(
            seen,
            vec![
                b"GET /x 0".to_vec(),
                b"GET /y 0".to_vec(),
                b"POST /x 5".to_vec()
            ]
        );
    }

    #[test]
    fn limits_and_errors() {
        let (url, t) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab".to_vec(),
            b"garbage\r\n\r\n".to_vec(),
        ]);
        let small = Limits {
            max_body: 10,
            ..Limits::default()
        };
        let e = get(&url, small).unwrap_err().to_string();
        assert!(e.contains("body larger than 10"), "{e}");
        let e = get(&url, Limits::default()).unwrap_err().to_string();
        assert!(e.contains("read"), "{e}");
        let e = get(&url, Limits::default()).unwrap_err().to_string();
        assert!(e.contains("bad start line"), "{e}");
        t.join().unwrap();
    }

    #[test]
    fn silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}/", l.local_addr().unwrap())).unwrap();
        let lim = Limits {
            timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let t0 = Instant::now();
        let e = get(&url, lim).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(3), "{e}");
        drop(l);
    }
}
