//! HTTP for DCol: the client calls go through `ureq` (plain `http://`, no
//! TLS feature: everything DCol fetches, the signed directory snapshot and a
//! UPnP gateway's description, is either signed or on the LAN, so the router
//! binary carries no TLS stack); the directory *server* keeps its own small
//! request reader and response writer here (`ureq` is a client only), on the
//! pure parsers of [`wire`] (fuzz target `http_wire`).
//!
//! What the client wrapper adds to `ureq`: every call has a deadline for the
//! whole exchange (redirects and body included) and a largest body; GETs
//! follow at most [`MAX_REDIRECTS`] redirects, or none ([`get_only`]: a 3xx
//! comes back as it is, with its `Location`); POSTs follow none; 4xx and 5xx
//! are answers, not errors (the directory's refusals carry a reason); proxies
//! from the environment are not used.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub mod wire;

pub use wire::{Head, Url, WireError};

use wire::{BodyKind, Dechunker};

/// Redirects a GET follows.
pub const MAX_REDIRECTS: u32 = 3;

/// Errors of an HTTP exchange.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The exchange failed: name resolution, connect, I/O, a malformed
    /// answer, too many redirects (`ureq`'s error, as it says it).
    #[error("{url}: {source}")]
    Client {
        /// What we were talking to.
        url: String,
        /// What went wrong.
        #[source]
        source: ureq::Error,
    },
    /// The whole exchange took longer than the caller allowed.
    #[error("{0}: timed out")]
    Timeout(String),
    /// The body is larger than the caller allowed.
    #[error("{url}: body larger than {max} bytes")]
    TooLarge {
        /// What we were talking to.
        url: String,
        /// The limit.
        max: usize,
    },
}

/// A response: status, where a redirect points, and the whole body.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The `Location` field (a 3xx that [`get_only`] did not follow).
    pub location: Option<String>,
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

/// `GET url` with extra header `fields` (e.g. `If-None-Match`), following up
/// to [`MAX_REDIRECTS`] redirects.
pub fn get(url: &Url, fields: &[(&str, &str)], limits: Limits) -> Result<Response, HttpError> {
    call(url, fields, None, limits, MAX_REDIRECTS)
}

/// `GET url` without following redirects: a 3xx is the answer.
pub fn get_only(url: &Url, fields: &[(&str, &str)], limits: Limits) -> Result<Response, HttpError> {
    call(url, fields, None, limits, 0)
}

/// `POST url` with `body`; redirects are not followed.
pub fn post(
    url: &Url,
    fields: &[(&str, &str)],
    body: &[u8],
    limits: Limits,
) -> Result<Response, HttpError> {
    call(url, fields, Some(body), limits, 0)
}

fn call(
    url: &Url,
    fields: &[(&str, &str)],
    body: Option<&[u8]>,
    limits: Limits,
    redirects: u32,
) -> Result<Response, HttpError> {
    let name = url.to_string();
    let err = |source| match source {
        ureq::Error::Timeout(_) => HttpError::Timeout(name.clone()),
        ureq::Error::BodyExceedsLimit(_) => HttpError::TooLarge {
            url: name.clone(),
            max: limits.max_body,
        },
        source => HttpError::Client {
            url: name.clone(),
            source,
        },
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(limits.timeout))
        .max_redirects(redirects)
        .http_status_as_error(false)
        .proxy(None)
        .user_agent(concat!("dcol/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let r = match body {
        None => {
            let mut rq = agent.get(&name);
            for (n, v) in fields {
                rq = rq.header(*n, *v);
            }
            rq.call()
        }
        Some(body) => {
            let mut rq = agent.post(&name);
            for (n, v) in fields {
                rq = rq.header(*n, *v);
            }
            rq.send(body)
        }
    };
    let mut r = r.map_err(err)?;
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // A declared length over the limit is refused before reading the body.
    if r.body().content_length().unwrap_or(0) > limits.max_body as u64 {
        return Err(err(ureq::Error::BodyExceedsLimit(limits.max_body as u64)));
    }
    let body = r
        .body_mut()
        .with_config()
        .limit(limits.max_body as u64)
        .read_to_vec()
        .map_err(err)?;
    Ok(Response {
        status,
        location,
        body,
    })
}

/// Reads what is available (at most 16 KiB) within `timeout`; 0 at EOF.
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
    let mut buf = rest;
    let more = |buf: &mut Vec<u8>| {
        let t = left_until(deadline).ok_or(ServerError::Timeout)?;
        match read_some(s, buf, t).map_err(ServerError::from_io)? {
            0 => Err(ServerError::Io(io::ErrorKind::UnexpectedEof.into())),
            n => Ok(n),
        }
    };
    match head.body_kind()? {
        // A request without a length has no body (RFC 9112 §6.3).
        BodyKind::UntilClose => Ok(Vec::new()),
        BodyKind::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= max_body)
                .ok_or(WireError::BodyTooLarge(max_body))?;
            while buf.len() < n {
                more(&mut buf)?;
            }
            buf.truncate(n);
            Ok(buf)
        }
        BodyKind::Chunked => {
            let mut d = Dechunker::default();
            let mut out = Vec::new();
            loop {
                let n = d.feed(&buf, &mut out, max_body)?;
                buf.drain(..n);
                if d.done() {
                    return Ok(out);
                }
                more(&mut buf)?;
            }
        }
    }
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
                let tag = head.field("if-none-match").unwrap_or("-");
                seen.push(
                    format!("{} {} {} {tag}", head.first, head.second, body.len()).into_bytes(),
                );
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
            b"HTTP/1.1 301 Moved\r\nLocation: http://127.0.0.1:9/z\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
            b"HTTP/1.1 307 Moved\r\nLocation: /z\r\nContent-Length: 0\r\n\r\n".to_vec(),
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\n\r\nrevoked".to_vec(),
        ]);
        let r = get(&url, &[("If-None-Match", "\"7\"")], Limits::default()).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
        let r = post(&url, &[("X", "1")], b"hello", Limits::default()).unwrap();
        assert_eq!(r.body, b"until close");
        // Not followed: a GET asked not to, and any POST.
        let r = get_only(&url, &[], Limits::default()).unwrap();
        assert_eq!(
            (r.status, r.location.as_deref()),
            (301, Some("http://127.0.0.1:9/z"))
        );
        let r = post(&url, &[], b"x", Limits::default()).unwrap();
        assert_eq!((r.status, r.location.as_deref()), (307, Some("/z")));
        // A refusal is an answer, with its reason.
        let r = post(&url, &[], b"", Limits::default()).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (403, &b"revoked"[..]));
        let seen = t.join().unwrap();
        let seen: Vec<String> = seen
            .into_iter()
            .map(|s| String::from_utf8(s).unwrap())
            .collect();
        assert_eq!(
            seen,
            [
                "GET /x 0 \"7\"",
                "GET /y 0 \"7\"",
                "POST /x 5 -",
                "GET /x 0 -",
                "POST /x 1 -",
                "POST /x 0 -"
            ]
        );
    }

    #[test]
    fn redirects_are_limited() {
        let hop = b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n".to_vec();
        let n = MAX_REDIRECTS as usize + 1;
        let (url, t) = serve(vec![hop; n]);
        let e = get(&url, &[], Limits::default()).unwrap_err().to_string();
        assert!(e.contains("too many redirects"), "{e}");
        assert_eq!(t.join().unwrap().len(), n);
    }

    #[test]
    fn limits_and_errors() {
        let big = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
            "4\r\nabcd\r\n".repeat(3)
        );
        let (url, t) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec(),
            big.into_bytes(),
            b"HTTP/1.0 200 OK\r\n\r\n0123456789abc".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab".to_vec(),
            b"garbage\r\n\r\n".to_vec(),
        ]);
        let small = Limits {
            max_body: 10,
            ..Limits::default()
        };
        // Over the limit, whatever the framing.
        for _ in 0..3 {
            let e = get(&url, &[], small).unwrap_err();
            assert!(matches!(e, HttpError::TooLarge { max: 10, .. }), "{e}");
            assert!(e.to_string().contains("body larger than 10 bytes"), "{e}");
        }
        // Cut short, or not HTTP at all.
        let e = get(&url, &[], Limits::default()).unwrap_err();
        assert!(matches!(e, HttpError::Client { .. }), "{e}");
        let e = get(&url, &[], Limits::default()).unwrap_err();
        assert!(matches!(e, HttpError::Client { .. }), "{e}");
        assert!(e.to_string().starts_with(&url.to_string()), "{e}");
        t.join().unwrap();
    }

    /// The time limit is for the whole exchange: a server that never
    /// answers and one that sends its body a byte at a time (each read well
    /// within the limit) are both cut off.
    #[test]
    fn deadlines_cover_the_whole_exchange() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}/", l.local_addr().unwrap())).unwrap();
        let t = thread::spawn(move || {
            let (silent, _) = l.accept().unwrap();
            let (mut c, _) = l.accept().unwrap();
            drop(silent);
            let _ = read_request(&mut c, 0, Duration::from_secs(5));
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
            for _ in 0..40 {
                if c.write_all(b"x").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        let lim = Limits {
            timeout: Duration::from_millis(500),
            ..Limits::default()
        };
        for _ in 0..2 {
            let t0 = Instant::now();
            let e = get(&url, &[], lim).unwrap_err();
            assert!(matches!(e, HttpError::Timeout(_)), "{e}");
            // Room for qemu-user; the trickle alone would take 2 s.
            assert!(t0.elapsed() < Duration::from_millis(1900), "{e}");
        }
        t.join().unwrap();
    }
}
