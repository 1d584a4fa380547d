//! What values an option takes ([`Kind`]): how the daemon parses them, and
//! the OpenWrt datatype procd's `validate_data` and LuCI check them with.
//!
//! The datatypes are the closest OpenWrt has; where one is looser than the
//! daemon (`portrange` takes ports below 1024, `string` any path), `dcol
//! config check`, which the init script runs before every start and reload,
//! has the last word.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::error::ValueError;
use super::Draft;
use crate::http::Url;
use crate::types::{show, Cidr, ConvertMode, DetourPolicy, PortRange, TunnelKind};

/// Stores a parsed value where it belongs in the configuration being built.
pub struct Set<T>(pub(super) fn(&mut Draft, T));

/// The log levels `option log_level` takes.
pub const LOG_LEVELS: &[&str] = &["error", "warn", "warning", "info", "debug", "trace"];
const TUNNELS: &[&str] = &["nat", "vpn"];
const POLICIES: &[&str] = &["tls-after-handshake", "all", "none"];

/// What values an option takes, and where the parsed value goes.
pub enum Kind {
    /// `1/0`, `yes/no`, `on/off`, `true/false`, `enabled/disabled`.
    Bool(Set<bool>),
    /// A whole number `min..=max`.
    Number {
        /// Smallest.
        min: u32,
        /// Largest.
        max: u32,
        /// Where it goes.
        set: Set<u32>,
    },
    /// 0 (meaning `zero`) or a whole number `min..=max`.
    ZeroOr {
        /// What 0 means.
        zero: &'static str,
        /// Smallest other than 0.
        min: u32,
        /// Largest.
        max: u32,
        /// Where it goes.
        set: Set<u32>,
    },
    /// A port, 1-65535.
    Port(Set<u16>),
    /// `lo-hi`, `1024 <= lo <= hi`.
    NatPorts(Set<(u16, u16)>),
    /// A [`PortRange`], or `none` (nothing).
    DenyPort(Set<Option<PortRange>>),
    /// A file or directory path.
    Path(Set<PathBuf>),
    /// A [`Cidr`] (a bare address is a block of one).
    Cidr(Set<Cidr>),
    /// An IPv4 (`v4`) or IPv6 block of `/max_prefix` or larger.
    Subnet {
        /// IPv4, not IPv6.
        v4: bool,
        /// Longest prefix.
        max_prefix: u8,
        /// Where it goes.
        set: Set<Cidr>,
    },
    /// `address:port` (IPv6 in brackets).
    Socket(Set<SocketAddr>),
    /// `address:port` others can reach: unicast, not unspecified, port not 0.
    Advertise(Set<SocketAddr>),
    /// `host:port` of a server.
    HostPort(Set<String>),
    /// An `http://` URL.
    Url(Set<Url>),
    /// A network interface name of at most `max` characters.
    IfName {
        /// Longest.
        max: usize,
        /// Where it goes.
        set: Set<String>,
    },
    /// An nftables table name.
    Table(Set<String>),
    /// A member id, 16 hex digits.
    MemberId(Set<String>),
    /// A member name as certificates carry it.
    MemberName(Set<String>),
    /// Decimal gigabytes (fractions allowed), as bytes.
    Gigabytes(Set<u64>),
    /// One of [`LOG_LEVELS`].
    LogLevel(Set<log::LevelFilter>),
    /// A [`TunnelKind`] name.
    Tunnel(Set<TunnelKind>),
    /// A [`DetourPolicy`] name.
    Policy(Set<DetourPolicy>),
    /// A [`ConvertMode`] name.
    Convert(Set<ConvertMode>),
}

impl Kind {
    /// Parses `v` and stores it in `d`.
    pub(super) fn apply(&self, d: &mut Draft, v: &str) -> Result<(), ValueError> {
        match self {
            Kind::Bool(s) => s.0(d, parse_bool(v)?),
            Kind::Number { min, max, set } => set.0(d, number(v, *min, *max)?),
            Kind::ZeroOr {
                zero,
                min,
                max,
                set,
            } => set.0(d, zero_or(v, zero, *min, *max)?),
            Kind::Port(s) => s.0(d, number(v, 1, 65535)? as u16),
            Kind::NatPorts(s) => s.0(d, nat_ports(v)?),
            Kind::DenyPort(s) => s.0(d, (v != "none").then(|| v.parse()).transpose()?),
            Kind::Path(s) => s.0(d, path(v)?),
            Kind::Cidr(s) => s.0(d, v.parse()?),
            Kind::Subnet {
                v4,
                max_prefix,
                set,
            } => set.0(d, subnet(v, *v4, *max_prefix)?),
            Kind::Socket(s) => s.0(d, socket(v)?),
            Kind::Advertise(s) => s.0(d, advertise(v)?),
            Kind::HostPort(s) => s.0(d, hostport(v)?),
            Kind::Url(s) => s.0(d, Url::parse(v)?),
            Kind::IfName { max, set } => set.0(d, ifname(v, *max)?),
            Kind::Table(s) => s.0(d, table(v)?),
            Kind::MemberId(s) => s.0(d, member_id(v)?),
            Kind::MemberName(s) => s.0(d, crate::trust::check_name(v).map(|_| v.to_owned())?),
            Kind::Gigabytes(s) => s.0(d, gigabytes(v)?),
            Kind::LogLevel(s) => s.0(d, level(v)?),
            Kind::Tunnel(s) => s.0(d, v.parse()?),
            Kind::Policy(s) => s.0(d, v.parse()?),
            Kind::Convert(s) => s.0(d, v.parse()?),
        }
        Ok(())
    }

    /// The words a choice takes (`None`: not a choice).
    pub fn words(&self) -> Option<&'static [&'static str]> {
        match self {
            Kind::LogLevel(_) => Some(LOG_LEVELS),
            Kind::Tunnel(_) => Some(TUNNELS),
            Kind::Policy(_) => Some(POLICIES),
            Kind::Convert(_) => Some(&ConvertMode::NAMES),
            _ => None,
        }
    }

    /// The datatype procd's `validate_data` checks a value with (for one
    /// element of a list).
    pub fn datatype(&self) -> String {
        match self {
            Kind::HostPort(_) | Kind::Socket(_) | Kind::Advertise(_) => "string".into(),
            Kind::Url(_) | Kind::Path(_) => "string".into(),
            _ => self.luci_datatype().unwrap_or_else(|| self.choice()),
        }
    }

    /// The datatype of the LuCI form field (`None` where the widget decides:
    /// a checkbox, a drop-down, or a URL checked by the field's own
    /// `validate`).
    pub fn luci_datatype(&self) -> Option<String> {
        Some(match self {
            Kind::Bool(_) => "bool".into(),
            Kind::Number { min, max, .. } => format!("range({min},{max})"),
            Kind::ZeroOr { min, max, .. } => format!("or(\"0\",range({min},{max}))"),
            Kind::Port(_) => "range(1,65535)".into(),
            Kind::NatPorts(_) => "portrange".into(),
            Kind::DenyPort(_) => "or(portrange,\"none\")".into(),
            Kind::Path(_) => "string".into(),
            Kind::Cidr(_) => "or(cidr,ipaddr)".into(),
            Kind::Subnet { v4: true, .. } => "cidr4".into(),
            Kind::Subnet { v4: false, .. } => "cidr6".into(),
            Kind::Socket(_) | Kind::Advertise(_) => "ipaddrport(1)".into(),
            Kind::HostPort(_) => "hostport".into(),
            Kind::IfName { max, .. } => format!("rangelength(1,{max})"),
            Kind::Table(_) => "rangelength(1,16)".into(),
            Kind::MemberId(_) => "and(hexstring,rangelength(16,16))".into(),
            Kind::MemberName(_) => format!("rangelength(1,{})", crate::trust::MAX_NAME),
            Kind::Gigabytes(_) => "ufloat".into(),
            Kind::Url(_)
            | Kind::LogLevel(_)
            | Kind::Tunnel(_)
            | Kind::Policy(_)
            | Kind::Convert(_) => return None,
        })
    }

    /// `or("a","b",...)` of [`Kind::words`].
    fn choice(&self) -> String {
        let words: Vec<String> = self
            .words()
            .unwrap_or_default()
            .iter()
            .map(|w| format!("\"{w}\""))
            .collect();
        format!("or({})", words.join(","))
    }
}

fn parse_bool(v: &str) -> Result<bool, ValueError> {
    match v {
        "1" | "yes" | "on" | "true" | "enabled" => Ok(true),
        "0" | "no" | "off" | "false" | "disabled" => Ok(false),
        _ => Err(ValueError::Bool(show(v))),
    }
}

fn number(v: &str, min: u32, max: u32) -> Result<u32, ValueError> {
    v.parse::<u32>()
        .ok()
        .filter(|x| (min..=max).contains(x))
        .ok_or_else(|| ValueError::Number {
            min,
            max,
            got: show(v),
        })
}

fn zero_or(v: &str, zero: &'static str, min: u32, max: u32) -> Result<u32, ValueError> {
    match v.parse::<u32>() {
        Ok(x) if x == 0 || (min..=max).contains(&x) => Ok(x),
        _ => Err(ValueError::ZeroOr {
            zero,
            min,
            max,
            got: show(v),
        }),
    }
}

fn path(v: &str) -> Result<PathBuf, ValueError> {
    if v.is_empty() || v.contains('\0') {
        return Err(ValueError::Path);
    }
    Ok(PathBuf::from(v))
}

fn level(v: &str) -> Result<log::LevelFilter, ValueError> {
    match v {
        "error" => Ok(log::LevelFilter::Error),
        "warn" | "warning" => Ok(log::LevelFilter::Warn),
        "info" => Ok(log::LevelFilter::Info),
        "debug" => Ok(log::LevelFilter::Debug),
        "trace" => Ok(log::LevelFilter::Trace),
        _ => Err(ValueError::Choice {
            words: LOG_LEVELS,
            got: show(v),
        }),
    }
}

fn member_id(v: &str) -> Result<String, ValueError> {
    if v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v.to_ascii_lowercase())
    } else {
        Err(ValueError::MemberId(show(v)))
    }
}

fn socket(v: &str) -> Result<SocketAddr, ValueError> {
    v.parse().map_err(|_| ValueError::Socket(show(v)))
}

fn advertise(v: &str) -> Result<SocketAddr, ValueError> {
    let a = socket(v)?;
    if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
        return Err(ValueError::Unreachable(show(v)));
    }
    Ok(a)
}

/// `host:port` of a server (names are resolved when used).
fn hostport(v: &str) -> Result<String, ValueError> {
    if v.parse::<SocketAddr>().is_ok() {
        return Ok(v.to_owned());
    }
    let bad = || ValueError::HostPort(show(v));
    let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(v.to_owned()),
        _ => Err(bad()),
    }
}

fn nat_ports(v: &str) -> Result<(u16, u16), ValueError> {
    let bad = || ValueError::NatPorts(show(v));
    let (a, b) = v.split_once('-').ok_or_else(bad)?;
    let lo: u16 = a.trim().parse().map_err(|_| bad())?;
    let hi: u16 = b.trim().parse().map_err(|_| bad())?;
    if lo < 1024 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

fn subnet(v: &str, v4: bool, max_prefix: u8) -> Result<Cidr, ValueError> {
    let c: Cidr = v.parse()?;
    if c.addr.is_ipv4() != v4 || c.prefix > max_prefix {
        return Err(ValueError::Subnet {
            family: if v4 { "IPv4" } else { "IPv6" },
            max_prefix,
            got: show(v),
        });
    }
    Ok(c)
}

fn table(v: &str) -> Result<String, ValueError> {
    let ok = !v.is_empty()
        && v.len() <= 16
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(v.to_owned())
    } else {
        Err(ValueError::Table(show(v)))
    }
}

fn ifname(v: &str, max: usize) -> Result<String, ValueError> {
    let ok = !v.is_empty()
        && v.len() <= max
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(ValueError::IfName { max, got: show(v) })
    }
}

/// Decimal gigabytes (`100`, `0.5`) to bytes, at most 9,999,999 GB.
pub(super) fn gigabytes(v: &str) -> Result<u64, ValueError> {
    let bad = || ValueError::Gigabytes(show(v));
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if int.is_empty() || int.len() > 7 || frac.len() > 9 {
        return Err(bad());
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let i: u64 = int.parse().map_err(|_| bad())?;
    let f: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    Ok(i * 1_000_000_000 + f)
}
