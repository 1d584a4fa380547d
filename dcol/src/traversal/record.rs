//! The port mappings and IPv6 pinholes made on the gateway and not deleted
//! yet, kept in `state_dir/port-mappings` so that after a crash the next
//! start deletes them instead of leaving the ports open on the gateway until
//! their lease ends (never, with `upnp_lease_s '0'`).
//!
//! ```text
//! # dcol: port mappings to delete if dcol did not (written by dcol)
//! upnp urn:schemas-upnp-org:service:WANIPConnection:1 http://192.168.7.1:5000/ctl/IPConn
//! udp 7447
//! tcp 40000
//! pcp [fe80::1%2]:5351 2001:db8:7::2 0123456789abcdef01234567
//! udp 7447
//! ```
//! The ports after a gateway line are mapped there. The IPv4 gateway line is
//! `upnp SERVICE-TYPE CONTROL-URL` or `natpmp ADDRESS:PORT`; the PCP line
//! names the server, this router's address the pinholes are for and the
//! nonce of the mappings (PCP deletes a mapping only for the same nonce,
//! RFC 6887 §11.1).

use std::fmt::Write as _;
use std::io;
use std::net::{AddrParseError, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::{upnp, Gateway, PcpServer, Protocol};
use crate::http::{Url, WireError};

/// Ports on one gateway.
pub(super) type Ports = Vec<(Protocol, u16)>;

/// What is left to delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Record {
    /// IPv4 mappings (UPnP or NAT-PMP).
    pub mappings: Option<(Gateway, Ports)>,
    /// IPv6 pinholes (PCP).
    pub pinholes: Option<(PcpServer, Ports)>,
}

impl Record {
    /// Nothing to delete.
    pub fn is_empty(&self) -> bool {
        let none = |p: Option<&Ports>| p.is_none_or(|p| p.is_empty());
        none(self.mappings.as_ref().map(|m| &m.1)) && none(self.pinholes.as_ref().map(|p| &p.1))
    }
}

/// Largest record read back (34 ports take ~400 bytes).
const MAX_RECORD: u64 = 64 * 1024;

fn ports_text(s: &mut String, ports: &[(Protocol, u16)]) {
    for (proto, port) in ports {
        let _ = writeln!(s, "{} {port}", proto.as_str().to_ascii_lowercase());
    }
}

/// The record's text.
pub(super) fn render(r: &Record) -> String {
    let mut s = String::from("# dcol: port mappings to delete if dcol did not (written by dcol)\n");
    if let Some((gw, ports)) = r.mappings.as_ref().filter(|m| !m.1.is_empty()) {
        match gw {
            Gateway::Upnp { service, .. } => {
                let _ = writeln!(s, "upnp {} {}", service.kind, service.control);
            }
            Gateway::Pmp(a) => {
                let _ = writeln!(s, "natpmp {a}");
            }
        }
        ports_text(&mut s, ports);
    }
    if let Some(((server, me, nonce), ports)) = r.pinholes.as_ref().filter(|p| !p.1.is_empty()) {
        let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(s, "pcp {server} {me} {hex}");
        ports_text(&mut s, ports);
    }
    s
}

/// The 12-byte PCP nonce from 24 hex digits.
fn parse_nonce(hex: &str) -> Option<[u8; 12]> {
    if hex.len() != 24 || !hex.is_ascii() {
        return None;
    }
    let mut n = [0u8; 12];
    for (i, b) in n.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(n)
}

/// Why the record could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum RecordError {
    /// Reading the file at `path` failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The record's path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is larger than any record dcol writes.
    #[error("{}: {len} bytes, more than {MAX_RECORD}", path.display())]
    TooLarge {
        /// The record's path.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The file is not a record.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The record's path.
        path: PathBuf,
        /// What is wrong with it.
        source: ParseError,
    },
}

/// What is wrong with a record's text.
#[derive(Debug, thiserror::Error)]
pub(super) enum ParseError {
    /// Line `line` (from 1) cannot be read.
    #[error("line {line}: {source}")]
    Line {
        /// Its number, from 1.
        line: usize,
        /// What is wrong with it.
        source: LineError,
    },
    /// No gateway line: nothing says where the ports were mapped.
    #[error("no gateway line")]
    NoGateway,
}

/// What is wrong with one line of a record.
#[derive(Debug, thiserror::Error)]
pub(super) enum LineError {
    /// A second IPv4 gateway line, or a second PCP line.
    #[error("a second gateway")]
    SecondGateway,
    /// The UPnP service type is not a URN.
    #[error("service type '{0}' is not a urn")]
    NotUrn(String),
    /// The UPnP control URL cannot be read.
    #[error("{0}")]
    ControlUrl(#[source] WireError),
    /// The NAT-PMP gateway is not an address:port.
    #[error("'{text}' is not an address:port")]
    NotAddress {
        /// The word read.
        text: String,
        /// The cause.
        #[source]
        source: AddrParseError,
    },
    /// The PCP server is not an IPv6 address:port.
    #[error("'{0}' is not an IPv6 address:port")]
    NotIpv6Endpoint(String),
    /// The pinholes' address is not an IPv6 address.
    #[error("'{text}' is not an IPv6 address")]
    NotIpv6 {
        /// The word read.
        text: String,
        /// The cause.
        #[source]
        source: AddrParseError,
    },
    /// The PCP nonce is not 24 hex digits.
    #[error("'{0}' is not a 24-digit hex nonce")]
    NotNonce(String),
    /// A port is not 1-65535.
    #[error("port '{0}' is not 1-65535")]
    BadPort(String),
    /// A port line comes before any gateway line.
    #[error("a port before the gateway line")]
    PortFirst,
    /// None of the record's lines.
    #[error("cannot read '{0}'")]
    Unreadable(String),
}

/// Where the port lines go: the last gateway line's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    None,
    Mappings,
    Pinholes,
}

/// Parses a record; errors name the line.
pub(super) fn parse(text: &str) -> Result<Record, ParseError> {
    let mut r = Record::default();
    let mut section = Section::None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        parse_line(&mut r, &mut section, line).map_err(|source| ParseError::Line {
            line: i + 1,
            source,
        })?;
    }
    if r.mappings.is_none() && r.pinholes.is_none() {
        return Err(ParseError::NoGateway);
    }
    Ok(r)
}

/// Adds one line (not blank, not a comment) to `r`.
fn parse_line(r: &mut Record, section: &mut Section, line: &str) -> Result<(), LineError> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["upnp", kind, control] => {
            if r.mappings.is_some() {
                return Err(LineError::SecondGateway);
            }
            r.mappings = Some((upnp_gateway(kind, control)?, Vec::new()));
            *section = Section::Mappings;
        }
        ["natpmp", addr] => {
            if r.mappings.is_some() {
                return Err(LineError::SecondGateway);
            }
            let a: SocketAddr = addr.parse().map_err(|source| LineError::NotAddress {
                text: (*addr).to_owned(),
                source,
            })?;
            r.mappings = Some((Gateway::Pmp(a), Vec::new()));
            *section = Section::Mappings;
        }
        ["pcp", server, me, nonce] => {
            if r.pinholes.is_some() {
                return Err(LineError::SecondGateway);
            }
            r.pinholes = Some((pcp_server(server, me, nonce)?, Vec::new()));
            *section = Section::Pinholes;
        }
        [proto @ ("tcp" | "udp"), port] => {
            let entry = port_entry(proto, port)?;
            let ports = match section {
                Section::None => return Err(LineError::PortFirst),
                Section::Mappings => r.mappings.as_mut().map(|m| &mut m.1),
                Section::Pinholes => r.pinholes.as_mut().map(|p| &mut p.1),
            };
            let ports = ports.expect("the section's gateway line was read");
            if !ports.contains(&entry) {
                ports.push(entry);
            }
        }
        _ => return Err(LineError::Unreadable(line.to_owned())),
    }
    Ok(())
}

/// The gateway of a `upnp SERVICE-TYPE CONTROL-URL` line.
fn upnp_gateway(kind: &str, control: &str) -> Result<Gateway, LineError> {
    if !kind.starts_with("urn:") {
        return Err(LineError::NotUrn(kind.to_owned()));
    }
    let control = Url::parse(control).map_err(LineError::ControlUrl)?;
    Ok(Gateway::Upnp {
        service: upnp::Service {
            kind: kind.to_owned(),
            control,
        },
        // Deleting needs no internal client address.
        me: Ipv4Addr::UNSPECIFIED,
    })
}

/// The server of a `pcp SERVER ME NONCE` line.
fn pcp_server(server: &str, me: &str, nonce: &str) -> Result<PcpServer, LineError> {
    let server: SocketAddr = server
        .parse()
        .ok()
        .filter(SocketAddr::is_ipv6)
        .ok_or_else(|| LineError::NotIpv6Endpoint(server.to_owned()))?;
    let me: Ipv6Addr = me.parse().map_err(|source| LineError::NotIpv6 {
        text: me.to_owned(),
        source,
    })?;
    let nonce = parse_nonce(nonce).ok_or_else(|| LineError::NotNonce(nonce.to_owned()))?;
    Ok((server, me, nonce))
}

/// The entry of a `tcp PORT` or `udp PORT` line.
fn port_entry(proto: &str, port: &str) -> Result<(Protocol, u16), LineError> {
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| LineError::BadPort(port.to_owned()))?;
    let proto = if proto == "tcp" {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    Ok((proto, port))
}

/// Reads the record at `path` (`Ok(None)`: there is none).
pub(super) fn load(path: &Path) -> Result<Option<Record>, RecordError> {
    let io = |source| RecordError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if meta.len() > MAX_RECORD {
        return Err(RecordError::TooLarge {
            path: path.to_owned(),
            len: meta.len(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse(&text).map(Some).map_err(|source| RecordError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Writes the record (removes it when there is nothing to delete).
pub(super) fn save(path: &Path, r: &Record) -> io::Result<()> {
    if r.is_empty() {
        return remove(path);
    }
    crate::directory::store::write_atomic(path, render(r).as_bytes(), 0o600)
}

/// Removes the record (none is fine).
pub(super) fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upnp_gw() -> Gateway {
        Gateway::Upnp {
            service: upnp::Service {
                kind: "urn:schemas-upnp-org:service:WANIPConnection:1".into(),
                control: Url::parse("http://192.168.7.1:5000/ctl/IPConn").unwrap(),
            },
            me: Ipv4Addr::new(192, 168, 7, 2),
        }
    }

    fn pcp() -> PcpServer {
        (
            "[fe80::1%2]:5351".parse().unwrap(),
            "2001:db8:7::2".parse().unwrap(),
            [
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 0xff, 0x10, 0x7f,
            ],
        )
    }

    fn mappings(gw: Gateway, ports: &[(Protocol, u16)]) -> Record {
        Record {
            mappings: Some((gw, ports.to_vec())),
            pinholes: None,
        }
    }

    #[test]
    fn round_trip() {
        let ports = [(Protocol::Udp, 7447), (Protocol::Tcp, 40000)];
        let r = parse(&render(&mappings(upnp_gw(), &ports))).unwrap();
        let (gw, back) = r.mappings.unwrap();
        assert_eq!(back, ports);
        assert_eq!(gw.name(), "http://192.168.7.1:5000/ctl/IPConn");
        assert!(r.pinholes.is_none());
        let pmp = Gateway::Pmp("192.168.7.1:5351".parse().unwrap());
        let (gw, back) = parse(&render(&mappings(pmp, &ports[..1])))
            .unwrap()
            .mappings
            .unwrap();
        assert_eq!(
            (gw.name().as_str(), back.len()),
            ("natpmp://192.168.7.1:5351", 1)
        );
        // Both kinds; the pinholes keep their server's scope and the nonce.
        let both = Record {
            mappings: Some((upnp_gw(), ports.to_vec())),
            pinholes: Some((pcp(), vec![(Protocol::Udp, 7447)])),
        };
        let text = render(&both);
        assert!(
            text.contains(
                "\npcp [fe80::1%2]:5351 2001:db8:7::2 0123456789abcdef00ff107f\nudp 7447\n"
            ),
            "{text}"
        );
        let back = parse(&text).unwrap();
        assert_eq!(back.mappings.unwrap().1, ports);
        assert_eq!(back.pinholes, Some((pcp(), vec![(Protocol::Udp, 7447)])));
        // Pinholes alone; empty lists are not written.
        let only = Record {
            mappings: Some((upnp_gw(), vec![])),
            pinholes: Some((pcp(), ports.to_vec())),
        };
        let back = parse(&render(&only)).unwrap();
        assert!(back.mappings.is_none());
        assert_eq!(back.pinholes.unwrap().1, ports);
        assert!(Record::default().is_empty() && !only.is_empty());
    }

    #[test]
    fn damaged_records_name_the_line() {
        for (text, want) in [
            ("", "no gateway line"),
            ("tcp 40000\n", "line 1: a port before the gateway line"),
            (
                "natpmp 192.168.7.1:5351\ntcp 0\n",
                "line 2: port '0' is not 1-65535",
            ),
            (
                "natpmp 192.168.7.1:5351\ntcp 70000\n",
                "line 2: port '70000'",
            ),
            (
                "natpmp 192.168.7.1\n",
                "line 1: '192.168.7.1' is not an address:port",
            ),
            (
                "upnp x http://a/\n",
                "line 1: service type 'x' is not a urn",
            ),
            ("upnp urn:x https://a/\n", "line 1: bad URL"),
            (
                "natpmp 1.2.3.4:1\nnatpmp 1.2.3.4:1\n",
                "line 2: a second gateway",
            ),
            ("natpmp 1.2.3.4:1\nsctp 9\n", "line 2: cannot read 'sctp 9'"),
            ("natpmp 1.2.3.4:1\n\u{0}\n", "line 2: cannot read"),
            (
                "pcp 1.2.3.4:5351 2001:db8::2 0123456789abcdef01234567\n",
                "line 1: '1.2.3.4:5351' is not an IPv6 address:port",
            ),
            (
                "pcp [fe80::1]:5351 10.0.0.1 0123456789abcdef01234567\n",
                "line 1: '10.0.0.1' is not an IPv6 address",
            ),
            (
                "pcp [fe80::1]:5351 2001:db8::2 0123\n",
                "line 1: '0123' is not a 24-digit hex nonce",
            ),
            (
                "pcp [fe80::1]:5351 2001:db8::2 0123456789abcdef0123456g\n",
                "is not a 24-digit hex nonce",
            ),
            (
                "pcp [fe80::1]:5351 2001:db8::2 0123456789abcdef012345\u{e9}\n",
                "is not a 24-digit hex nonce",
            ),
            (
                "pcp [fe80::1]:1 ::2 000000000000000000000000\npcp [fe80::1]:1 ::2 000000000000000000000000\n",
                "line 2: a second gateway",
            ),
            ("pcp [fe80::1]:1 ::2\n", "line 1: cannot read"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn save_load_remove() {
        let dir = std::env::temp_dir().join(format!("dcol-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("port-mappings");
        assert!(load(&path).unwrap().is_none());
        save(&path, &mappings(upnp_gw(), &[(Protocol::Tcp, 40001)])).unwrap();
        let back = load(&path).unwrap().unwrap().mappings.unwrap().1;
        assert_eq!(back, [(Protocol::Tcp, 40001)]);
        save(&path, &mappings(upnp_gw(), &[])).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, "upnp\n").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("port-mappings: line 1"), "{e}");
        std::fs::write(&path, vec![b'#'; 70_000]).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("more than"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
