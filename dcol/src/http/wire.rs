//! HTTP/1.1 message heads and bodies (RFC 9112), parsed from bytes. Pure: no
//! I/O. Just what DCol needs: `http://` URLs, request and response heads,
//! `Content-Length`, `chunked` and close-delimited bodies, with size limits.
//!
//! The directory server reads requests with these functions (client calls
//! are `ureq`'s), the UPnP search reads SSDP answers (HTTP-shaped, over UDP)
//! with [`parse_head`], and [`Url`] is the type URLs from the configuration
//! are checked into (plain `http://` only); the fuzz target `http_wire` runs
//! them on arbitrary bytes.

use std::fmt;

/// Longest message head (start line + header fields) accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// Most header fields accepted in one head.
pub const MAX_HEADERS: usize = 64;

/// Errors in HTTP data. Each says what was wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The URL is not `http://host[:port][/path]`.
    #[error("bad URL '{url}': {why}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The head is longer than [`MAX_HEAD`] or has more than [`MAX_HEADERS`] fields.
    #[error("message head too large (over {MAX_HEAD} bytes or {MAX_HEADERS} fields)")]
    HeadTooLarge,
    /// The start line is malformed.
    #[error("bad start line {0:?}")]
    BadStartLine(String),
    /// A header field line is malformed (line number within the head, 1-based).
    #[error("bad header field on head line {line}")]
    BadHeader {
        /// Line within the head.
        line: usize,
    },
    /// `Content-Length` is not a number, or given twice with different values.
    #[error("bad Content-Length {0:?}")]
    BadLength(String),
    /// A transfer coding other than `chunked`.
    #[error("unsupported Transfer-Encoding {0:?}")]
    BadCoding(String),
    /// A chunk-size line or chunk framing is malformed, at this body offset.
    #[error("bad chunked body at byte {0}")]
    BadChunk(usize),
    /// The body is longer than the caller's limit.
    #[error("body larger than {0} bytes")]
    BodyTooLarge(usize),
}

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or address as written (IPv6 without brackets).
    pub host: String,
    /// Port (80 when not given).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses `http://host[:port][/path]`. `https://` is refused: DCol's
    /// documents are signed, so the router binary carries no TLS stack.
    pub fn parse(s: &str) -> Result<Url, WireError> {
        let bad = |why| WireError::BadUrl {
            url: s.to_owned(),
            why,
        };
        if s.len() > 2048 {
            return Err(bad("longer than 2048 bytes"));
        }
        if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("contains spaces or control characters"));
        }
        let rest = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err(bad(
                    "https is not supported (documents are signed; use http)",
                ))
            }
            _ => return Err(bad("must start with http://")),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = match path.split_once('#') {
            Some((p, _)) => p,
            None => path,
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        if authority.contains('@') {
            return Err(bad("user information is not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("bad IPv6 address"));
            }
            match after {
                "" => (h, None),
                p => (
                    h,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
                ),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("port is not 1-65535"))?,
        };
        Ok(Url {
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// `host:port` for the `Host` header (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolves a `Location` value against this URL: absolute `http://`
    /// URLs and absolute paths are supported.
    pub fn join(&self, location: &str) -> Result<Url, WireError> {
        if location.starts_with('/') && !location.starts_with("//") {
            return Ok(Url {
                path: location.to_owned(),
                ..self.clone()
            });
        }
        Url::parse(location)
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

/// A parsed message head: the start line split in three, and the fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Request: method. Response: the HTTP version.
    pub first: String,
    /// Request: target. Response: status code (three digits).
    pub second: String,
    /// Request: the HTTP version. Response: reason phrase (may be empty).
    pub third: String,
    /// Header fields in order; names lower-cased, values trimmed.
    pub fields: Vec<(String, String)>,
}

impl Head {
    /// The first field named `name` (lower case).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// How the body is framed.
    pub fn body_kind(&self) -> Result<BodyKind, WireError> {
        if let Some(te) = self.field("transfer-encoding") {
            if te.eq_ignore_ascii_case("chunked") {
                return Ok(BodyKind::Chunked);
            }
            return Err(WireError::BadCoding(te.to_owned()));
        }
        let mut len = None;
        for (n, v) in &self.fields {
            if n == "content-length" {
                let l: u64 = v
                    .parse()
                    .ok()
                    .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| WireError::BadLength(v.clone()))?;
                if len.is_some_and(|p| p != l) {
                    return Err(WireError::BadLength(v.clone()));
                }
                len = Some(l);
            }
        }
        Ok(match len {
            Some(l) => BodyKind::Length(l),
            None => BodyKind::UntilClose,
        })
    }
}

/// Body framing (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Parses a message head at the start of `buf`. `Ok(None)`: not complete yet
/// (and not over the limit). `Ok(Some((head, n)))`: the head took `n` bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, WireError> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(WireError::HeadTooLarge);
        }
        return Ok(None);
    };
    if end + 4 > MAX_HEAD {
        return Err(WireError::HeadTooLarge);
    }
    let text = std::str::from_utf8(&buf[..end]).map_err(|e| {
        let line = buf[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        if line == 0 {
            WireError::BadStartLine(String::from_utf8_lossy(&buf[..end.min(80)]).into_owned())
        } else {
            WireError::BadHeader { line }
        }
    })?;
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or_default();
    let mut parts = start.splitn(3, ' ');
    let (first, second) = match (parts.next(), parts.next()) {
        (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => (a, b),
        _ => return Err(WireError::BadStartLine(start.chars().take(80).collect())),
    };
    let third = parts.next().unwrap_or_default();
    let mut fields = Vec::new();
    for (i, line) in lines.enumerate() {
        let bad = WireError::BadHeader { line: i + 1 };
        let (name, value) = line.split_once(':').ok_or(bad.clone())?;
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(bad);
        }
        if fields.len() == MAX_HEADERS {
            return Err(WireError::HeadTooLarge);
        }
        fields.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let head = Head {
        first: first.to_owned(),
        second: second.to_owned(),
        third: third.to_owned(),
        fields,
    };
    Ok(Some((head, end + 4)))
}

/// Incremental decoder of a `chunked` body.
#[derive(Debug, Default)]
pub struct Dechunker {
    state: ChunkState,
    /// Body bytes consumed so far (for error offsets).
    pos: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    #[default]
    Size,
    /// Reading this many data bytes.
    Data(u64),
    /// Expecting the CRLF after data.
    DataEnd,
    /// Reading trailer lines after the last chunk.
    Trailer,
    /// Finished.
    Done,
}

impl Dechunker {
    /// Decodes what it can from `input` into `out`; returns how many input
    /// bytes it consumed. Stops early only at an incomplete line.
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<usize, WireError> {
        let mut i = 0;
        while i < input.len() {
            let rest = &input[i..];
            match self.state {
                ChunkState::Done => break,
                ChunkState::Size | ChunkState::Trailer => {
                    let Some(eol) = find(rest, b"\r\n") else {
                        if rest.len() > 1024 {
                            return Err(WireError::BadChunk(self.pos));
                        }
                        break;
                    };
                    let line = &rest[..eol];
                    if self.state == ChunkState::Trailer {
                        if line.is_empty() {
                            self.state = ChunkState::Done;
                        }
                    } else {
                        let digits = line.split(|&b| b == b';').next().unwrap_or_default();
                        let digits = std::str::from_utf8(digits)
                            .ok()
                            .map(str::trim)
                            .filter(|d| !d.is_empty() && d.len() <= 15)
                            .and_then(|d| u64::from_str_radix(d, 16).ok())
                            .ok_or(WireError::BadChunk(self.pos))?;
                        self.state = if digits == 0 {
                            ChunkState::Trailer
                        } else {
                            ChunkState::Data(digits)
                        };
                    }
                    i += eol + 2;
                    self.pos = self.pos.saturating_add(eol + 2);
                }
                ChunkState::Data(left) => {
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    if out.len().saturating_add(n) > max {
                        return Err(WireError::BodyTooLarge(max));
                    }
                    out.extend_from_slice(&rest[..n]);
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    i += n;
                    self.pos = self.pos.saturating_add(n);
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        break;
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(WireError::BadChunk(self.pos));
                    }
                    self.state = ChunkState::Size;
                    i += 2;
                    self.pos = self.pos.saturating_add(2);
                }
            }
        }
        Ok(i)
    }

    /// Whether the last chunk and the trailer have been read.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://dir.example.org:8080/snap/v1?x=1#frag").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("dir.example.org", 8080, "/snap/v1?x=1")
        );
        assert_eq!(u.to_string(), "http://dir.example.org:8080/snap/v1?x=1");
        let u = Url::parse("HTTP://[fd00::1]").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("fd00::1", 80, "/")
        );
        assert_eq!(u.authority(), "[fd00::1]:80");
        assert_eq!(Url::parse("http://h?q").unwrap().path, "/?q");
        for bad in [
            "https://x/",
            "ftp://x",
            "x/y",
            "http://",
            "http://:80/",
            "http://h:0/",
            "http://h:99999/",
            "http://[zz]/",
            "http://[::1]x/",
            "http://u@h/",
            "http://h /",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        let e = Url::parse("https://x/").unwrap_err().to_string();
        assert!(e.contains("https is not supported"), "{e}");
        let base = Url::parse("http://h:81/a").unwrap();
        assert_eq!(base.join("/b").unwrap().to_string(), "http://h:81/b");
        assert_eq!(
            base.join("http://g/c").unwrap().to_string(),
            "http://g:80/c"
        );
    }

    #[test]
    fn heads() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  b \r\n\r\nhello";
        let (h, n) = parse_head(raw).unwrap().unwrap();
        assert_eq!(n, raw.len() - 5);
        assert_eq!((h.first.as_str(), h.second.as_str()), ("HTTP/1.1", "200"));
        assert_eq!(h.field("x-a"), Some("b"));
        assert_eq!(h.body_kind().unwrap(), BodyKind::Length(5));
        assert_eq!(parse_head(&raw[..20]).unwrap(), None);
        let (h, _) = parse_head(b"POST /records HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.first.as_str(), h.second.as_str()), ("POST", "/records"));
        assert_eq!(h.body_kind().unwrap(), BodyKind::UntilClose);
        let (h, _) = parse_head(b"HTTP/1.1 204\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.second.as_str(), h.third.as_str()), ("204", ""));
    }

    #[test]
    fn bad_heads() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"),
            Err(WireError::BadHeader { line: 1 })
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nA: 1\r\nbad name: 2\r\n\r\n"),
            Err(WireError::BadHeader { line: 2 })
        );
        assert!(matches!(
            parse_head(b"\r\n\r\n"),
            Err(WireError::BadStartLine(_))
        ));
        assert_eq!(
            parse_head(&vec![b'a'; MAX_HEAD + 1]),
            Err(WireError::HeadTooLarge)
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        let raw = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(parse_head(raw.as_bytes()), Err(WireError::HeadTooLarge));
        for (fields, ok) in [
            ("Content-Length: 12\r\nContent-Length: 12", true),
            ("Content-Length: 12\r\nContent-Length: 13", false),
            ("Content-Length: -1", false),
            ("Content-Length: +1", false),
            ("Transfer-Encoding: gzip", false),
        ] {
            let raw = format!("HTTP/1.1 200 OK\r\n{fields}\r\n\r\n");
            let (h, _) = parse_head(raw.as_bytes()).unwrap().unwrap();
            assert_eq!(h.body_kind().is_ok(), ok, "{fields}");
        }
    }

    #[test]
    fn chunked_any_split() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nT: x\r\n\r\n";
        for cut in 1..body.len() {
            let mut d = Dechunker::default();
            let mut out = Vec::new();
            let mut buf = Vec::new();
            for piece in body.chunks(cut) {
                buf.extend_from_slice(piece);
                let n = d.feed(&buf, &mut out, 1000).unwrap();
                buf.drain(..n);
            }
            assert!(d.done(), "cut {cut}");
            assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");
        }
    }

    #[test]
    fn chunked_errors() {
        let mut out = Vec::new();
        assert_eq!(
            Dechunker::default().feed(b"zz\r\n", &mut out, 10),
            Err(WireError::BadChunk(0))
        );
        assert_eq!(
            Dechunker::default().feed(b"2\r\nabX\r\n", &mut out, 10),
            Err(WireError::BadChunk(5))
        );
        assert_eq!(
            Dechunker::default().feed(b"b\r\nhello world\r\n", &mut out, 10),
            Err(WireError::BodyTooLarge(10))
        );
        assert_eq!(
            Dechunker::default().feed(b"ffffffffffffffffff\r\n", &mut out, 10),
            Err(WireError::BadChunk(0))
        );
    }
}
