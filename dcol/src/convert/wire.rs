//! The Convert message of the 0-RTT TCP Convert Protocol (RFC 8803): parsing
//! and encoding, pure, no I/O.
//!
//! A Convert message starts the byte stream in each direction (RFC 8803
//! §4): a 4-byte fixed header, then TLVs, all lengths counted in 32-bit
//! words:
//! ```text
//! 0        1             2            4
//! +--------+-------------+------------+
//! | Version| Total Length| Unassigned |   Version 1; Total Length in words,
//! +--------+-------------+------------+   the fixed header included
//! | Type   | Length      | Value ...  |   one TLV: Length in words, Type
//! +--------+-------------+------------+   and Length included
//! ```
//! TLVs (§5.2): Info (0x01), Connect (0x0a: port, 16-byte address, an IPv4
//! destination as `::ffff:a.b.c.d`, then TCP options), Extended TCP Header
//! (0x14), Supported TCP Extensions (0x15), Cookie (0x16), Error (0x1e).
//!
//! What [`parse`] guarantees on `Ok`: version 1, a total length that covers
//! the fixed header and exactly the TLVs in it, every TLV of a known type and
//! of the size its type needs, zero-filled fields where the RFC demands
//! zeros on the wire ignored (the RFC says ignore), and nothing read past
//! the message. Everything else is a [`WireError`] naming what and at which
//! byte, and the RFC error code the converter answers with
//! ([`WireError::code`]).
//!
//! ```
//! use dcol::convert::wire::{encode, parse, Message, Tlv};
//!
//! let m = Message(vec![Tlv::Connect { dest: "192.0.2.7:443".parse().unwrap(), options: vec![] }]);
//! let bytes = encode(&m);
//! assert_eq!(&bytes[..4], &[0x01, 0x06, 0x00, 0x00]); // 24 bytes = 6 words
//! assert_eq!(parse(&bytes), Ok((m, 24)));
//! assert!(parse(&bytes[..10]).is_err()); // truncated
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Convert protocol version (RFC 8803 §4).
pub const VERSION: u8 = 0x01;
/// Info TLV (RFC 8803 §5.2.1).
pub const TLV_INFO: u8 = 0x01;
/// Connect TLV (RFC 8803 §5.2.3).
pub const TLV_CONNECT: u8 = 0x0a;
/// Extended TCP Header TLV (RFC 8803 §5.2.4).
pub const TLV_EXTENDED_TCP_HEADER: u8 = 0x14;
/// Supported TCP Extensions TLV (RFC 8803 §5.2.2).
pub const TLV_SUPPORTED_EXTENSIONS: u8 = 0x15;
/// Cookie TLV (RFC 8803 §5.2.5).
pub const TLV_COOKIE: u8 = 0x16;
/// Error TLV (RFC 8803 §5.2.6).
pub const TLV_ERROR: u8 = 0x1e;
/// The longest Convert message: 255 words.
pub const MAX_LEN: usize = 255 * 4;
/// Fixed header length.
pub const HEADER_LEN: usize = 4;

/// An Error TLV's code (RFC 8803 §5.2.6, IANA "Convert Error Messages").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u8);

impl ErrorCode {
    /// 0: the version is not 1.
    pub const UNSUPPORTED_VERSION: ErrorCode = ErrorCode(0);
    /// 1: the message does not parse.
    pub const MALFORMED_MESSAGE: ErrorCode = ErrorCode(1);
    /// 2: a TLV of a type the converter does not support (value: the type).
    pub const UNSUPPORTED_MESSAGE: ErrorCode = ErrorCode(2);
    /// 3: a cookie is required and none was given.
    pub const MISSING_COOKIE: ErrorCode = ErrorCode(3);
    /// 32: the client may not use the converter (or not for that destination).
    pub const NOT_AUTHORIZED: ErrorCode = ErrorCode(32);
    /// 33: a TCP option in the Connect TLV is not supported.
    pub const UNSUPPORTED_TCP_OPTION: ErrorCode = ErrorCode(33);
    /// 64: the converter is out of resources (limits reached).
    pub const RESOURCE_EXCEEDED: ErrorCode = ErrorCode(64);
    /// 65: the converter's network failed.
    pub const NETWORK_FAILURE: ErrorCode = ErrorCode(65);
    /// 96: the destination reset or refused the connection.
    pub const CONNECTION_RESET: ErrorCode = ErrorCode(96);
    /// 97: the destination could not be reached.
    pub const DESTINATION_UNREACHABLE: ErrorCode = ErrorCode(97);

    /// The registry's name.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "Unsupported Version",
            1 => "Malformed Message",
            2 => "Unsupported Message",
            3 => "Missing Cookie",
            32 => "Not Authorized",
            33 => "Unsupported TCP Option",
            64 => "Resource Exceeded",
            65 => "Network Failure",
            96 => "Connection Reset",
            97 => "Destination Unreachable",
            _ => "unassigned error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// One TLV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tlv {
    /// Info: the client asks which TCP extensions the converter supports.
    Info,
    /// Connect: open a TCP connection to `dest`, with these TCP options.
    Connect {
        /// The destination.
        dest: SocketAddr,
        /// TCP options to use (raw, as on the wire, padding included).
        options: Vec<u8>,
    },
    /// The TCP header of the destination's SYN+ACK, as the converter saw it.
    ExtendedTcpHeader(Vec<u8>),
    /// TCP option kinds the converter supports (zero padding dropped).
    SupportedExtensions(Vec<u8>),
    /// An opaque cookie (DCol: a member's signed request, see
    /// [`super::cookie`]), zero padding included.
    Cookie(Vec<u8>),
    /// An error, with its value (for Unsupported Message: the TLV type).
    Error {
        /// The code.
        code: ErrorCode,
        /// Its value, zero padding included.
        value: Vec<u8>,
    },
}

/// A Convert message: its TLVs in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message(pub Vec<Tlv>);

impl Message {
    /// The first Error TLV, if any.
    pub fn error(&self) -> Option<ErrorCode> {
        self.0.iter().find_map(|t| match t {
            Tlv::Error { code, .. } => Some(*code),
            _ => None,
        })
    }

    /// A message of one Error TLV (`value`: the unsupported TLV type for
    /// Unsupported Message, else none).
    pub fn refusal(code: ErrorCode, value: Option<u8>) -> Message {
        Message(vec![Tlv::Error {
            code,
            value: value.into_iter().collect(),
        }])
    }
}

/// Why bytes are not a Convert message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than the message needs (so far: a stream reader waits).
    #[error("truncated Convert message: {need} bytes needed, {have} present")]
    Truncated {
        /// Bytes the message needs.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The version byte is not 1.
    #[error("Convert version {0} at byte 0 (only version 1 is spoken)")]
    Version(u8),
    /// The fixed header's total length is below one word.
    #[error("Convert total length {0} words at byte 1 (at least 1)")]
    TotalLength(u8),
    /// A TLV's length is 0 or runs past the message.
    #[error("TLV of type {tlv:#04x} at byte {at}: length of {words} words {why}")]
    TlvLength {
        /// Offset of the TLV.
        at: usize,
        /// Its type.
        tlv: u8,
        /// Its length field.
        words: u8,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A TLV of a type this converter does not know.
    #[error("unsupported TLV type {tlv:#04x} at byte {at}")]
    UnknownTlv {
        /// Offset of the TLV.
        at: usize,
        /// Its type.
        tlv: u8,
    },
}

impl WireError {
    /// The RFC 8803 error a converter answers with, and the Error TLV's value.
    pub fn code(&self) -> (ErrorCode, Option<u8>) {
        match self {
            WireError::Version(_) => (ErrorCode::UNSUPPORTED_VERSION, None),
            WireError::UnknownTlv { tlv, .. } => (ErrorCode::UNSUPPORTED_MESSAGE, Some(*tlv)),
            _ => (ErrorCode::MALFORMED_MESSAGE, None),
        }
    }
}

/// The length of the message at the start of `b`, from its fixed header,
/// once two bytes are there (`None` before); checks the version and that
/// the length covers the header.
pub fn message_len(b: &[u8]) -> Result<Option<usize>, WireError> {
    let Some(&v) = b.first() else {
        return Ok(None);
    };
    if v != VERSION {
        return Err(WireError::Version(v));
    }
    match b.get(1) {
        None => Ok(None),
        Some(0) => Err(WireError::TotalLength(0)),
        Some(&w) => Ok(Some(usize::from(w) * 4)),
    }
}

/// Parses the message at the start of `b`; returns it and its length (the
/// bytes after it are the application's).
pub fn parse(b: &[u8]) -> Result<(Message, usize), WireError> {
    let have = b.len();
    let len = match message_len(b)? {
        Some(n) => n,
        None => return Err(WireError::Truncated { need: 2, have }),
    };
    if have < len {
        return Err(WireError::Truncated { need: len, have });
    }
    let mut tlvs = Vec::new();
    let mut at = HEADER_LEN;
    while at < len {
        let tlv = b[at];
        let Some(&words) = b.get(at + 1).filter(|_| at + 1 < len) else {
            return Err(WireError::TlvLength {
                at,
                tlv,
                words: 0,
                why: "missing",
            });
        };
        let size = usize::from(words) * 4;
        let bad = |why| WireError::TlvLength {
            at,
            tlv,
            words,
            why,
        };
        if size == 0 {
            return Err(bad("is zero"));
        }
        if at + size > len {
            return Err(bad("runs past the message's total length"));
        }
        tlvs.push(parse_tlv(&b[at..at + size], at).map_err(|e| match e {
            TlvError::Short => bad("is too short for its type"),
            TlvError::Unknown => WireError::UnknownTlv { at, tlv },
        })?);
        at += size;
    }
    Ok((Message(tlvs), len))
}

enum TlvError {
    Short,
    Unknown,
}

/// One TLV (`t`: its bytes, type and length included).
fn parse_tlv(t: &[u8], _at: usize) -> Result<Tlv, TlvError> {
    let value = &t[2..];
    match t[0] {
        TLV_INFO => Ok(Tlv::Info),
        TLV_CONNECT => {
            if t.len() < 20 {
                return Err(TlvError::Short);
            }
            let port = u16::from_be_bytes([value[0], value[1]]);
            let mut a = [0u8; 16];
            a.copy_from_slice(&value[2..18]);
            let ip = Ipv6Addr::from(a);
            let ip = match ip.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(ip),
            };
            Ok(Tlv::Connect {
                dest: SocketAddr::new(ip, port),
                options: value[18..].to_vec(),
            })
        }
        TLV_EXTENDED_TCP_HEADER => Ok(Tlv::ExtendedTcpHeader(value[2..].to_vec())),
        TLV_SUPPORTED_EXTENSIONS => {
            let mut kinds = value[2..].to_vec();
            while kinds.last() == Some(&0) {
                kinds.pop();
            }
            Ok(Tlv::SupportedExtensions(kinds))
        }
        TLV_COOKIE => Ok(Tlv::Cookie(value[2..].to_vec())),
        TLV_ERROR => Ok(Tlv::Error {
            code: ErrorCode(value[0]),
            value: value[1..].to_vec(),
        }),
        _ => Err(TlvError::Unknown),
    }
}

/// Appends one TLV: type, length in words, `body`, zeros to a word.
fn put(out: &mut Vec<u8>, tlv: u8, body: &[u8]) {
    let size = (2 + body.len()).div_ceil(4) * 4;
    out.push(tlv);
    out.push(u8::try_from(size / 4).unwrap_or(u8::MAX));
    out.extend_from_slice(body);
    out.resize(out.len() + size - 2 - body.len(), 0);
}

/// Encodes `m`. The caller keeps it within [`MAX_LEN`] (a cookie of at most
/// [`super::cookie::MAX_COOKIE`] bytes does); a longer one is cut off at
/// the length field's limit and will not parse.
pub fn encode(m: &Message) -> Vec<u8> {
    let mut out = vec![VERSION, 0, 0, 0];
    for t in &m.0 {
        match t {
            Tlv::Info => put(&mut out, TLV_INFO, &[0, 0]),
            Tlv::Connect { dest, options } => {
                let ip = match dest.ip() {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                let mut body = dest.port().to_be_bytes().to_vec();
                body.extend_from_slice(&ip.octets());
                body.extend_from_slice(options);
                put(&mut out, TLV_CONNECT, &body);
            }
            Tlv::ExtendedTcpHeader(h) => put(&mut out, TLV_EXTENDED_TCP_HEADER, &zero2(h)),
            Tlv::SupportedExtensions(k) => put(&mut out, TLV_SUPPORTED_EXTENSIONS, &zero2(k)),
            Tlv::Cookie(c) => put(&mut out, TLV_COOKIE, &zero2(c)),
            Tlv::Error { code, value } => {
                let mut body = vec![code.0];
                body.extend_from_slice(value);
                put(&mut out, TLV_ERROR, &body);
            }
        }
    }
    out[1] = u8::try_from(out.len() / 4).unwrap_or(u8::MAX);
    out
}

/// Two zero bytes (a TLV's unassigned field), then `b`.
fn zero2(b: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0];
    v.extend_from_slice(b);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_fixture_round_trips() {
        // RFC 8803 §5.2.3: port 443, ::ffff:192.0.2.7, no options.
        let bytes = [
            0x01, 0x06, 0x00, 0x00, // version 1, 6 words
            0x0a, 0x05, 0x01, 0xbb, // Connect, 5 words, port 443
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7,
        ];
        let m = Message(vec![Tlv::Connect {
            dest: "192.0.2.7:443".parse().unwrap(),
            options: vec![],
        }]);
        assert_eq!(encode(&m), bytes);
        // Application bytes after the message are not the parser's.
        let mut with_data = bytes.to_vec();
        with_data.extend_from_slice(b"GET /");
        assert_eq!(parse(&with_data), Ok((m, 24)));
    }

    #[test]
    fn every_tlv_round_trips() {
        let m = Message(vec![
            Tlv::Info,
            Tlv::Connect {
                dest: "[2001:db8::5]:8080".parse().unwrap(),
                options: vec![1, 1, 1, 0],
            },
            Tlv::ExtendedTcpHeader(vec![0xaa; 20]),
            Tlv::SupportedExtensions(vec![2, 30]),
            // Values a whole number of words long: padding reads back as value.
            Tlv::Cookie(vec![9; 8]),
            Tlv::Error {
                code: ErrorCode::UNSUPPORTED_MESSAGE,
                value: vec![0x42],
            },
        ]);
        let b = encode(&m);
        assert_eq!(b.len() % 4, 0);
        assert_eq!(usize::from(b[1]) * 4, b.len());
        assert_eq!(parse(&b), Ok((m, b.len())));
    }

    #[test]
    fn refusal_fixture() {
        let m = Message::refusal(ErrorCode::UNSUPPORTED_MESSAGE, Some(0x42));
        let b = encode(&m);
        assert_eq!(b, [0x01, 0x02, 0, 0, 0x1e, 0x01, 0x02, 0x42]);
        let (p, _) = parse(&b).unwrap();
        assert_eq!(p.error(), Some(ErrorCode::UNSUPPORTED_MESSAGE));
    }

    #[test]
    fn malformed_input_names_what_and_where() {
        let ok = encode(&Message(vec![Tlv::Connect {
            dest: "192.0.2.7:443".parse().unwrap(),
            options: vec![],
        }]));
        assert_eq!(message_len(&[]), Ok(None));
        assert_eq!(message_len(&[1]), Ok(None));
        assert_eq!(message_len(&[2, 6]), Err(WireError::Version(2)));
        assert_eq!(parse(&[2, 6]).unwrap_err().code().0, ErrorCode(0));
        assert_eq!(parse(&[1, 0, 0, 0]), Err(WireError::TotalLength(0)));
        assert_eq!(
            parse(&ok[..23]),
            Err(WireError::Truncated { need: 24, have: 23 })
        );
        // A TLV longer than the message.
        let mut long = ok.clone();
        long[5] = 6;
        let e = parse(&long).unwrap_err();
        assert!(e.to_string().contains("byte 4"), "{e}");
        assert_eq!(e.code().0, ErrorCode::MALFORMED_MESSAGE);
        // A zero-length TLV.
        let mut zero = ok.clone();
        zero[5] = 0;
        assert!(matches!(
            parse(&zero),
            Err(WireError::TlvLength { at: 4, .. })
        ));
        // A Connect TLV too short for an address.
        let short = [1, 3, 0, 0, 0x0a, 2, 0, 80, 0, 0, 0, 0];
        let e = parse(&short).unwrap_err();
        assert!(e.to_string().contains("too short"), "{e}");
        // An unknown TLV: Unsupported Message naming the type.
        let unknown = [1, 2, 0, 0, 0x42, 1, 0, 0];
        let e = parse(&unknown).unwrap_err();
        assert_eq!(e, WireError::UnknownTlv { at: 4, tlv: 0x42 });
        assert_eq!(e.code(), (ErrorCode::UNSUPPORTED_MESSAGE, Some(0x42)));
        // A total length that ends inside a TLV's header.
        let cut = [1, 2, 0, 0, 0x0a, 5, 0, 0];
        assert!(parse(&cut).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u32 = 7;
        for len in 0..300 {
            let mut b = Vec::with_capacity(len);
            for _ in 0..len {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                b.push((x >> 16) as u8);
            }
            if !b.is_empty() {
                b[0] = 1;
            }
            if let Ok((m, n)) = parse(&b) {
                assert!(n <= b.len());
                let _ = encode(&m);
            }
        }
    }
}
