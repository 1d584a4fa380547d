//! The port mappings made on the gateway and not deleted yet, kept in
//! `state_dir/port-mappings` so that after a crash (or a power cut) the next
//! start deletes them instead of leaving the ports open on the gateway until
//! their lease ends (never, with `upnp_lease_s '0'`).
//!
//! ```text
//! # dcol: port mappings to delete if dcol did not (written by dcol)
//! upnp urn:schemas-upnp-org:service:WANIPConnection:1 http://192.168.7.1:5000/ctl/IPConn
//! udp 7447
//! tcp 40000
//! ```
//! The second form of the gateway line is `natpmp 192.168.7.1:5351`.

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use super::{upnp, Gateway, Protocol};
use crate::http::Url;

/// A gateway and the ports mapped on it.
pub(super) type Record = (Gateway, Vec<(Protocol, u16)>);

/// Largest record read back (34 ports take ~400 bytes).
const MAX_RECORD: u64 = 64 * 1024;

/// The record's text.
pub(super) fn render(gw: &Gateway, ports: &[(Protocol, u16)]) -> String {
    let mut s = String::from("# dcol: port mappings to delete if dcol did not (written by dcol)\n");
    match gw {
        Gateway::Upnp { service, .. } => {
            let _ = writeln!(s, "upnp {} {}", service.kind, service.control);
        }
        Gateway::Pmp(a) => {
            let _ = writeln!(s, "natpmp {a}");
        }
    }
    for (proto, port) in ports {
        let _ = writeln!(s, "{} {port}", proto.as_str().to_ascii_lowercase());
    }
    s
}

/// Parses a record; errors name the line.
pub(super) fn parse(text: &str) -> Result<Record, String> {
    let mut gateway = None;
    let mut ports = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        match (words.as_slice(), &gateway) {
            (["upnp", kind, control], None) => {
                if !kind.starts_with("urn:") {
                    return Err(format!("line {n}: service type '{kind}' is not a urn"));
                }
                let control = Url::parse(control).map_err(|e| format!("line {n}: {e}"))?;
                gateway = Some(Gateway::Upnp {
                    service: upnp::Service {
                        kind: (*kind).to_owned(),
                        control,
                    },
                    // Deleting needs no internal client address.
                    me: Ipv4Addr::UNSPECIFIED,
                });
            }
            (["natpmp", addr], None) => {
                let a: SocketAddr = addr
                    .parse()
                    .map_err(|_| format!("line {n}: '{addr}' is not an address:port"))?;
                gateway = Some(Gateway::Pmp(a));
            }
            ([proto @ ("tcp" | "udp"), port], Some(_)) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| format!("line {n}: port '{port}' is not 1-65535"))?;
                let proto = if *proto == "tcp" {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                };
                if !ports.contains(&(proto, port)) {
                    ports.push((proto, port));
                }
            }
            (["upnp" | "natpmp", ..], Some(_)) => {
                return Err(format!("line {n}: a second gateway"))
            }
            (["tcp" | "udp", ..], None) => {
                return Err(format!("line {n}: a port before the gateway line"))
            }
            _ => return Err(format!("line {n}: cannot read '{line}'")),
        }
    }
    match gateway {
        Some(g) => Ok((g, ports)),
        None => Err("no gateway line".into()),
    }
}

/// Reads the record at `path` (`Ok(None)`: there is none).
pub(super) fn load(path: &Path) -> Result<Option<Record>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if meta.len() > MAX_RECORD {
        return Err(format!(
            "{}: {} bytes, more than {MAX_RECORD}",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes the record (removes it when `ports` is empty).
pub(super) fn save(path: &Path, gw: &Gateway, ports: &[(Protocol, u16)]) -> io::Result<()> {
    if ports.is_empty() {
        return remove(path);
    }
    crate::directory::store::write_atomic(path, render(gw, ports).as_bytes(), 0o600)
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

    #[test]
    fn round_trip() {
        let ports = [(Protocol::Udp, 7447), (Protocol::Tcp, 40000)];
        let text = render(&upnp_gw(), &ports);
        let (gw, back) = parse(&text).unwrap();
        assert_eq!(back, ports);
        assert_eq!(gw.name(), "http://192.168.7.1:5000/ctl/IPConn");
        let pmp = Gateway::Pmp("192.168.7.1:5351".parse().unwrap());
        let (gw, back) = parse(&render(&pmp, &ports[..1])).unwrap();
        assert_eq!(
            (gw.name().as_str(), back.len()),
            ("natpmp://192.168.7.1:5351", 1)
        );
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
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn save_load_remove() {
        let dir = std::env::temp_dir().join(format!("dcol-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("port-mappings");
        assert_eq!(load(&path).unwrap().map(|r| r.1), None);
        save(&path, &upnp_gw(), &[(Protocol::Tcp, 40001)]).unwrap();
        assert_eq!(load(&path).unwrap().unwrap().1, [(Protocol::Tcp, 40001)]);
        save(&path, &upnp_gw(), &[]).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, "upnp\n").unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.contains("port-mappings: line 1"), "{e}");
        std::fs::write(&path, vec![b'#'; 70_000]).unwrap();
        assert!(load(&path).unwrap_err().contains("more than"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
