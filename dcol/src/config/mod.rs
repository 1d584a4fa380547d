//! `/etc/config/dcol` (UCI syntax) parsed once, strictly, into a typed
//! [`Config`]. Pure apart from [`load`], which reads the file.
//!
//! Invalid values are errors that name the file, the line and the option;
//! unknown sections and options are warnings (kept in [`Config::warnings`]), so
//! a newer LuCI writing an option an older daemon does not know yet does not
//! stop the router's daemon. No libuci: the daemon reads the file itself.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// An invalid configuration: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0 when the file could not be read).
    pub line: usize,
    /// The option, when the error is about one.
    pub option: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(o) = &self.option {
            write!(f, ": option '{o}'")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// An address block, e.g. `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address (host bits cleared).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// The block of `prefix` bits around `addr` (host bits cleared); `None`
    /// when `prefix` is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let addr = match addr {
            IpAddr::V4(v4) if prefix <= 32 => IpAddr::V4(mask4(u32::from(v4), prefix).into()),
            IpAddr::V6(v6) if prefix <= 128 => IpAddr::V6(mask6(u128::from(v6), prefix).into()),
            _ => return None,
        };
        Some(Cidr { addr, prefix })
    }

    /// True when `ip` is inside the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(*ip),
            v4 => *v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => mask4(u32::from(a), self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => mask6(u128::from(a), self.prefix) == u128::from(n),
            _ => false,
        }
    }
}

/// `a` with all but the top `p` bits (at most 32) cleared.
pub(crate) fn mask4(a: u32, p: u8) -> u32 {
    if p == 0 {
        0
    } else {
        a & (u32::MAX << (32 - u32::from(p)))
    }
}

/// `a` with all but the top `p` bits (at most 128) cleared.
pub(crate) fn mask6(a: u128, p: u8) -> u128 {
    if p == 0 {
        0
    } else {
        a & (u128::MAX << (128 - u32::from(p)))
    }
}

/// A port or an inclusive range of ports, e.g. `25` or `6660-6669`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port (`lo` for a single port).
    pub hi: u16,
}

impl PortRange {
    /// `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "expected a port (1-65535) or a range like '6660-6669', got '{}'",
                show(s)
            )
        };
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(bad)
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if lo > hi {
            return Err(bad());
        }
        Ok(PortRange { lo, hi })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("'{a}' is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("bad prefix length '{p}' (0-{max})"))?,
        };
        Cidr::new(addr, prefix).ok_or_else(|| format!("bad prefix length {prefix}"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Tunnel type of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelKind {
    /// NAT tunnel: one map element per destination.
    Nat,
    /// WireGuard tunnel: one per waypoint, for every connection.
    Vpn,
}

/// Which proxied LAN connections may get detours (`option detour_policy`).
///
/// Waypoints must never see a TLS handshake in the clear (the paper's rule):
/// the default detours a TLS connection only once its handshake has passed
/// over the direct path, and never a plaintext one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetourPolicy {
    /// `tls-after-handshake` (default).
    TlsAfterHandshake,
    /// `all`: every proxied connection, from its first byte.
    All,
    /// `none`: no proxied connection gets a detour.
    None,
}

impl DetourPolicy {
    /// The UCI spelling.
    pub fn name(self) -> &'static str {
        match self {
            DetourPolicy::TlsAfterHandshake => "tls-after-handshake",
            DetourPolicy::All => "all",
            DetourPolicy::None => "none",
        }
    }
}

/// Whether proxied LAN connections to servers without MPTCP go through a
/// converter member (`option convert` in the client section, issue 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvertMode {
    /// `off` (default): a converter sees destinations and TLS server names,
    /// so using one is the owner's choice.
    Off,
    /// `auto`: servers known not to speak MPTCP are reached through a
    /// converter peer (`option convert '1'` in its peer section, or the
    /// directory's converters), falling back to plain TCP.
    Auto,
}

/// `config dcol 'main'`.
#[derive(Debug, Clone, PartialEq)]
pub struct MainConfig {
    /// Run at all.
    pub enabled: bool,
    /// Member secret key file.
    pub key: PathBuf,
    /// Member certificate file.
    pub cert: PathBuf,
    /// Collective root public key file.
    pub collective: PathBuf,
    /// Unix socket for `dcol status`.
    pub control_socket: PathBuf,
    /// Directory for crash-recovery state.
    pub state_dir: PathBuf,
    /// Log level.
    pub log_level: log::LevelFilter,
    /// Revoked member ids (16 hex digits each).
    pub revoked: Vec<String>,
    /// `option revocation_list`: the collective's root-signed revocation
    /// list (`dcol collective revoke`), watched for changes; a missing file
    /// revokes nobody.
    pub revocation_list: Option<PathBuf>,
}

/// `config client 'client'`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Client role on.
    pub enabled: bool,
    /// Detours per connection (0-8).
    pub max_detours: u8,
    /// First request retransmission timeout, ms.
    pub request_timeout_ms: u32,
    /// Lease renewal / liveness interval, s.
    pub renew_interval_s: u32,
    /// Missed renewals before a waypoint counts as gone.
    pub liveness_misses: u32,
    /// Transparent proxy for LAN devices on.
    pub lan_proxy: bool,
    /// LAN interfaces whose TCP is intercepted.
    pub lan_interfaces: Vec<String>,
    /// Destinations never intercepted.
    pub bypass: Vec<Cidr>,
    /// Destination ports never intercepted.
    pub bypass_ports: Vec<u16>,
    /// The proxy's listening port.
    pub proxy_port: u16,
    /// Concurrent proxied connections one LAN device (MAC address) and one
    /// LAN IPv4 address may have; more go direct.
    pub max_conns_per_host: u32,
    /// Concurrent proxied connections one LAN IPv6 /64 may have; more go
    /// direct.
    pub max_conns_per_prefix: u32,
    /// Cap on all proxied connections (0: from the open-file limit only);
    /// near it interception pauses and new LAN flows go direct.
    pub proxy_max_conns: u32,
    /// Special-purpose destinations (private, CGNAT, ULA, ...) the proxy may
    /// take all the same, when they are routed to the WAN.
    pub proxy_allow_destination: Vec<Cidr>,
    /// Intercept a flow only once the router's firewall has forwarded the
    /// same device's flow to the same destination and port.
    pub proxy_follow_firewall: bool,
    /// Which proxied connections may be detoured.
    pub detour_policy: DetourPolicy,
    /// A proxied connection with no bytes either way for this long is closed, s.
    pub proxy_idle_timeout_s: u32,
    /// VPN tunnel interfaces are named this plus the peer's index.
    pub vpn_interface_prefix: String,
    /// Routing tables (and rule priorities) of VPN tunnels start here.
    pub vpn_table: u32,
    /// Detour subflows are measured (sock_diag) this often, ms; 0 turns the
    /// measuring strategy off (detours then stay as created).
    pub sample_interval_ms: u32,
    /// A new detour's probation before it is kept, demoted or dropped, ms.
    pub probation_ms: u32,
    /// Converters for servers without MPTCP (`option convert`).
    pub convert: ConvertMode,
    /// TCP Fast Open on the connection to a converter, so the Convert
    /// message rides in the SYN (`option convert_fastopen`).
    pub convert_fastopen: bool,
}

/// `config waypoint 'waypoint'`.
#[derive(Debug, Clone, PartialEq)]
pub struct WaypointConfig {
    /// Waypoint role on.
    pub enabled: bool,
    /// Signaling sockets.
    pub listen: Vec<SocketAddr>,
    /// NAT tunnel port range (inclusive).
    pub nat_ports: (u16, u16),
    /// Lease length, s.
    pub lease_s: u32,
    /// Live tunnels per member.
    pub max_tunnels_per_member: u32,
    /// Destinations allowed despite the built-in policy.
    pub allow_destination: Vec<Cidr>,
    /// Destination ports never detoured to (`list deny_port`, single ports
    /// or ranges; default 25; `'none'` denies nothing).
    pub deny_port: Vec<PortRange>,
    /// Allowed clock difference, s.
    pub max_clock_skew_s: u32,
    /// nftables table name (`inet <table>`).
    pub table: String,
    /// VPN tunnels: the IPv4 subnet (its first address is the waypoint's);
    /// `None`: no VPN tunnels.
    pub vpn_subnet: Option<Cidr>,
    /// Optional IPv6 subnet for VPN tunnels.
    pub vpn_subnet6: Option<Cidr>,
    /// WireGuard UDP port.
    pub vpn_port: u16,
    /// WireGuard interface name.
    pub vpn_interface: String,
    /// Rate cap on all detoured traffic, kbit/s (0: none).
    pub donate_kbit: u32,
    /// Monthly volume cap on all detoured traffic, bytes (0: none; UCI
    /// `donate_monthly_gb`, decimal GB, fractions allowed).
    pub donate_monthly_bytes: u64,
    /// `option donation_file`: where the month's donated bytes survive a
    /// reboot (default `/etc/dcol/donated`; written hourly and at exit, the
    /// 30-second count stays in `state_dir`).
    pub donation_file: PathBuf,
    /// `option evidence_dir`: where granted requests are kept (default
    /// `state_dir/evidence`; on OpenWrt point it at persistent storage).
    pub evidence_dir: Option<PathBuf>,
    /// `option evidence_max_kb`: the evidence log's size bound (0: no log).
    pub evidence_max_kb: u32,
    /// Signaling addresses published in the directory (`list advertise`);
    /// empty: the non-wildcard `listen` addresses.
    pub advertise: Vec<SocketAddr>,
    /// STUN servers, `host:port` (`list stun_server`).
    pub stun_servers: Vec<String>,
    /// Map the waypoint's ports on a UPnP IGD gateway (`option upnp`).
    pub upnp: bool,
    /// The gateway's description URL, skipping SSDP (`option upnp_url`).
    pub upnp_url: Option<crate::http::Url>,
    /// Lease of each UPnP mapping, s (`option upnp_lease_s`; 0: permanent).
    pub upnp_lease_s: u32,
    /// Convert MPTCP connections of members to plain TCP (RFC 8803;
    /// `option convert`).
    pub convert: bool,
    /// The converter's TCP port (`option convert_port`; default 7447, the
    /// signaling port's number, which the directory publishes).
    pub convert_port: u16,
    /// Conversions one member may hold at once (`option convert_max_per_member`).
    pub convert_max_per_member: u32,
    /// Connections to the converter one source (IPv4 address, IPv6 /64)
    /// may hold at once (`option convert_max_per_source`).
    pub convert_max_per_source: u32,
}

/// Most NAT tunnel ports mapped on a UPnP gateway (one mapping each).
pub const UPNP_MAX_PORTS: u16 = 32;

impl WaypointConfig {
    /// The NAT tunnel ports grants use: with UPnP on, the first
    /// [`UPNP_MAX_PORTS`] of `nat_ports` (the ones mapped on a gateway).
    pub fn grant_ports(&self) -> (u16, u16) {
        let (lo, hi) = self.nat_ports;
        if self.upnp {
            (lo, hi.min(lo.saturating_add(UPNP_MAX_PORTS - 1)))
        } else {
            (lo, hi)
        }
    }
}

/// The membership directory (options of `config dcol 'main'`).
#[derive(Debug, Clone, PartialEq)]
pub struct DirectoryConfig {
    /// Where the signed snapshot is (`option directory`); `None`: no directory.
    pub url: Option<crate::http::Url>,
    /// Where this member's record is posted (`option directory_publish`);
    /// default `/records` on the host of `url`.
    pub publish: Option<crate::http::Url>,
    /// Fetch interval, s (`option directory_interval_s`).
    pub interval_s: u32,
    /// The cached snapshot (`option directory_cache`).
    pub cache: PathBuf,
    /// Most directory members used as waypoints (`option directory_max_peers`).
    pub max_peers: u32,
    /// Tunnel type used with directory waypoints (`option directory_tunnel`).
    pub tunnel: TunnelKind,
}

impl DirectoryConfig {
    /// The URL records are posted to.
    pub fn publish_url(&self) -> Option<crate::http::Url> {
        match (&self.publish, &self.url) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(u)) => u.join("/records").ok(),
            (None, None) => None,
        }
    }
}

/// `config peer`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    /// Name in its certificate.
    pub name: String,
    /// Signaling address.
    pub address: SocketAddr,
    /// Tunnel type.
    pub tunnel: TunnelKind,
    /// The peer converts (`option convert '1'`): its converter listens on
    /// TCP at the signaling address's port.
    pub convert: bool,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `main` section.
    pub main: MainConfig,
    /// `client` section.
    pub client: ClientConfig,
    /// `waypoint` section.
    pub waypoint: WaypointConfig,
    /// `peer` sections.
    pub peers: Vec<PeerConfig>,
    /// The membership directory.
    pub directory: DirectoryConfig,
    /// Unknown sections/options, duplicates: `file:line: ...`.
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            main: MainConfig {
                enabled: true,
                key: "/etc/dcol/member.key".into(),
                cert: "/etc/dcol/member.cert".into(),
                collective: "/etc/dcol/collective.pub".into(),
                control_socket: "/var/run/dcol.sock".into(),
                state_dir: "/var/run/dcol".into(),
                log_level: log::LevelFilter::Info,
                revoked: Vec::new(),
                revocation_list: None,
            },
            client: ClientConfig {
                enabled: false,
                max_detours: 2,
                request_timeout_ms: 300,
                renew_interval_s: 5,
                liveness_misses: 3,
                lan_proxy: false,
                lan_interfaces: Vec::new(),
                bypass: Vec::new(),
                bypass_ports: Vec::new(),
                proxy_port: 7448,
                max_conns_per_host: 512,
                max_conns_per_prefix: 1024,
                proxy_max_conns: 0,
                proxy_allow_destination: Vec::new(),
                proxy_follow_firewall: true,
                detour_policy: DetourPolicy::TlsAfterHandshake,
                proxy_idle_timeout_s: 3600,
                vpn_interface_prefix: "dcolc".into(),
                vpn_table: 7400,
                sample_interval_ms: 250,
                probation_ms: 2000,
                convert: ConvertMode::Off,
                convert_fastopen: true,
            },
            waypoint: WaypointConfig {
                enabled: false,
                listen: vec!["0.0.0.0:7447".parse().expect("constant")],
                nat_ports: (40000, 40999),
                lease_s: 300,
                max_tunnels_per_member: 16,
                allow_destination: Vec::new(),
                deny_port: vec![PortRange { lo: 25, hi: 25 }],
                max_clock_skew_s: 30,
                table: "dcol".into(),
                vpn_subnet: None,
                vpn_subnet6: None,
                vpn_port: 51820,
                vpn_interface: "dcolwg".into(),
                donate_kbit: 0,
                donate_monthly_bytes: 0,
                donation_file: "/etc/dcol/donated".into(),
                evidence_dir: None,
                evidence_max_kb: 1024,
                advertise: Vec::new(),
                stun_servers: Vec::new(),
                upnp: true,
                upnp_url: None,
                upnp_lease_s: 3600,
                convert: false,
                convert_port: 7447,
                convert_max_per_member: 256,
                convert_max_per_source: 256,
            },
            peers: Vec::new(),
            directory: DirectoryConfig {
                url: None,
                publish: None,
                interval_s: 300,
                cache: "/etc/dcol/directory.snapshot".into(),
                max_peers: 8,
                tunnel: TunnelKind::Nat,
            },
            warnings: Vec::new(),
        }
    }
}

/// Reads and parses `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: 0,
        option: None,
        message: e.to_string(),
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        ConfigError {
            file: path.to_owned(),
            line,
            option: None,
            message: "not valid UTF-8".into(),
        }
    })?;
    parse(&text, path)
}

/// One `option`/`list` line.
struct Item {
    line: usize,
    name: String,
    value: String,
    list: bool,
}

struct Section {
    line: usize,
    kind: String,
    name: Option<String>,
    items: Vec<Item>,
}

/// Splits a UCI line into words, honouring quotes and `#` comments.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        if c == '#' {
            break;
        }
        let mut w = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            match c {
                '\'' => loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => w.push(x),
                        None => return Err("unterminated single quote".into()),
                    }
                },
                '"' => loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x) => w.push(x),
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(x) => w.push(x),
                        None => return Err("unterminated double quote".into()),
                    }
                },
                '\\' => match chars.next() {
                    Some(x) => w.push(x),
                    None => return Err("dangling backslash".into()),
                },
                x => w.push(x),
            }
        }
        out.push(w);
    }
    Ok(out)
}

fn sections(text: &str, file: &Path) -> Result<Vec<Section>, ConfigError> {
    let err = |line: usize, msg: String| ConfigError {
        file: file.to_owned(),
        line,
        option: None,
        message: msg,
    };
    let mut out: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let w = words(raw).map_err(|m| err(n, m))?;
        let Some(first) = w.first() else { continue };
        match first.as_str() {
            "config" => {
                let kind = w
                    .get(1)
                    .ok_or_else(|| err(n, "'config' needs a section type".into()))?;
                if w.len() > 3 {
                    return Err(err(n, "too many words after 'config'".into()));
                }
                out.push(Section {
                    line: n,
                    kind: kind.clone(),
                    name: w.get(2).cloned(),
                    items: Vec::new(),
                });
            }
            "option" | "list" => {
                let sec = out
                    .last_mut()
                    .ok_or_else(|| err(n, format!("'{first}' outside a 'config' section")))?;
                if w.len() != 3 {
                    return Err(ConfigError {
                        file: file.to_owned(),
                        line: n,
                        option: w.get(1).cloned(),
                        message: format!("expected '{first} <name> <value>'"),
                    });
                }
                sec.items.push(Item {
                    line: n,
                    name: w[1].clone(),
                    value: w[2].clone(),
                    list: first == "list",
                });
            }
            "package" => {}
            other => {
                return Err(err(
                    n,
                    format!("unknown keyword '{}'", other.escape_debug()),
                ))
            }
        }
    }
    Ok(out)
}

/// Parses UCI text (`file` is only used in messages).
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let mut cfg = Config::default();
    let mut seen_main = false;
    for sec in sections(text, file)? {
        let mut p = SectionParser {
            file,
            warnings: &mut cfg.warnings,
            seen: Vec::new(),
        };
        match sec.kind.as_str() {
            "dcol" => {
                seen_main = true;
                let m = &mut cfg.main;
                for it in &sec.items {
                    match it.name.as_str() {
                        "enabled" => m.enabled = p.value(it, parse_bool)?,
                        "key" => m.key = p.value(it, parse_path)?,
                        "cert" => m.cert = p.value(it, parse_path)?,
                        "collective" => m.collective = p.value(it, parse_path)?,
                        "revocation_list" => m.revocation_list = Some(p.value(it, parse_path)?),
                        "control_socket" => m.control_socket = p.value(it, parse_path)?,
                        "state_dir" => m.state_dir = p.value(it, parse_path)?,
                        "log_level" => m.log_level = p.value(it, parse_level)?,
                        "revoked" => m.revoked.push(p.list_value(it, parse_member_id)?),
                        "directory" => cfg.directory.url = Some(p.value(it, parse_url)?),
                        "directory_publish" => {
                            cfg.directory.publish = Some(p.value(it, parse_url)?)
                        }
                        "directory_interval_s" => {
                            cfg.directory.interval_s = p.value(it, |v| range(v, 2, 86_400))?
                        }
                        "directory_cache" => cfg.directory.cache = p.value(it, parse_path)?,
                        "directory_max_peers" => {
                            cfg.directory.max_peers = p.value(it, |v| range(v, 0, 64))?
                        }
                        "directory_tunnel" => cfg.directory.tunnel = p.value(it, parse_tunnel)?,
                        _ => p.unknown(it),
                    }
                }
            }
            "client" => {
                let c = &mut cfg.client;
                c.enabled = true;
                for it in &sec.items {
                    match it.name.as_str() {
                        "enabled" => c.enabled = p.value(it, parse_bool)?,
                        "max_detours" => {
                            c.max_detours = p.value(it, |v| range(v, 0, 8).map(|x| x as u8))?
                        }
                        "request_timeout_ms" => {
                            c.request_timeout_ms = p.value(it, |v| range(v, 10, 10_000))?
                        }
                        "renew_interval_s" => {
                            c.renew_interval_s = p.value(it, |v| range(v, 1, 3600))?
                        }
                        "liveness_misses" => {
                            c.liveness_misses = p.value(it, |v| range(v, 1, 100))?
                        }
                        "sample_interval_ms" => {
                            c.sample_interval_ms = p.value(it, |v| match range(v, 0, 5000)? {
                                x @ (0 | 50..) => Ok(x),
                                _ => Err(format!("expected 0 (off) or 50-5000, got '{}'", show(v))),
                            })?
                        }
                        "probation_ms" => {
                            c.probation_ms = p.value(it, |v| range(v, 200, 60_000))?
                        }
                        "lan_proxy" => c.lan_proxy = p.value(it, parse_bool)?,
                        "lan_interface" => c.lan_interfaces.push(p.list_value(it, parse_ifname)?),
                        "bypass" => c.bypass.push(p.list_value(it, |v| v.parse())?),
                        "bypass_port" => c
                            .bypass_ports
                            .push(p.list_value(it, |v| range(v, 1, 65535).map(|x| x as u16))?),
                        "proxy_port" => {
                            c.proxy_port = p.value(it, |v| range(v, 1, 65535).map(|x| x as u16))?
                        }
                        "max_conns_per_host" => {
                            c.max_conns_per_host = p.value(it, |v| range(v, 1, 65_536))?
                        }
                        "max_conns_per_prefix" => {
                            c.max_conns_per_prefix = p.value(it, |v| range(v, 1, 65_536))?
                        }
                        "proxy_max_conns" => {
                            c.proxy_max_conns = p.value(it, |v| range(v, 0, 1_000_000))?
                        }
                        "proxy_allow_destination" => c
                            .proxy_allow_destination
                            .push(p.list_value(it, |v| v.parse())?),
                        "proxy_follow_firewall" => {
                            c.proxy_follow_firewall = p.value(it, parse_bool)?
                        }
                        "detour_policy" => c.detour_policy = p.value(it, parse_policy)?,
                        "vpn_interface_prefix" => {
                            c.vpn_interface_prefix = p.value(it, |v| {
                                if v.len() > 12 {
                                    return Err(format!(
                                        "expected at most 12 characters, got '{}'",
                                        show(v)
                                    ));
                                }
                                parse_ifname(v)
                            })?
                        }
                        "vpn_table" => c.vpn_table = p.value(it, |v| range(v, 1, 0x7fff_0000))?,
                        "proxy_idle_timeout_s" => {
                            c.proxy_idle_timeout_s = p.value(it, |v| range(v, 1, 86_400 * 7))?
                        }
                        "convert" => c.convert = p.value(it, parse_convert)?,
                        "convert_fastopen" => c.convert_fastopen = p.value(it, parse_bool)?,
                        _ => p.unknown(it),
                    }
                }
            }
            "waypoint" => {
                let w = &mut cfg.waypoint;
                w.enabled = true;
                let mut listens = Vec::new();
                let mut deny_ports: Option<Vec<PortRange>> = None;
                for it in &sec.items {
                    match it.name.as_str() {
                        "enabled" => w.enabled = p.value(it, parse_bool)?,
                        "listen" => listens.push(p.list_value(it, parse_socket)?),
                        "nat_ports" => w.nat_ports = p.value(it, parse_ports)?,
                        "lease_s" => w.lease_s = p.value(it, |v| range(v, 10, 86_400))?,
                        "max_tunnels_per_member" => {
                            w.max_tunnels_per_member = p.value(it, |v| range(v, 1, 1_000_000))?
                        }
                        "allow_destination" => {
                            w.allow_destination.push(p.list_value(it, |v| v.parse())?)
                        }
                        "deny_port" => {
                            let d = deny_ports.get_or_insert_with(Vec::new);
                            if let Some(r) = p.list_value(it, |v| {
                                if v == "none" {
                                    Ok(None)
                                } else {
                                    v.parse().map(Some)
                                }
                            })? {
                                d.push(r);
                            }
                        }
                        "max_clock_skew_s" => {
                            w.max_clock_skew_s = p.value(it, |v| range(v, 1, 3600))?
                        }
                        "table" => w.table = p.value(it, parse_table)?,
                        "vpn_subnet" => {
                            w.vpn_subnet = Some(p.value(it, |v| {
                                let c: Cidr = v.parse()?;
                                if !c.addr.is_ipv4() || c.prefix > 30 {
                                    return Err(format!(
                                        "expected an IPv4 subnet of /30 or larger, got '{}'",
                                        show(v)
                                    ));
                                }
                                Ok(c)
                            })?)
                        }
                        "vpn_subnet6" => {
                            w.vpn_subnet6 = Some(p.value(it, |v| {
                                let c: Cidr = v.parse()?;
                                if c.addr.is_ipv4() || c.prefix > 120 {
                                    return Err(format!(
                                        "expected an IPv6 subnet of /120 or larger, got '{}'",
                                        show(v)
                                    ));
                                }
                                Ok(c)
                            })?)
                        }
                        "vpn_port" => {
                            w.vpn_port = p.value(it, |v| range(v, 1, 65535).map(|x| x as u16))?
                        }
                        "vpn_interface" => w.vpn_interface = p.value(it, parse_ifname)?,
                        "donate_kbit" => {
                            w.donate_kbit = p.value(it, |v| range(v, 0, 100_000_000))?
                        }
                        "donate_monthly_gb" => w.donate_monthly_bytes = p.value(it, parse_gb)?,
                        "donation_file" => w.donation_file = p.value(it, parse_path)?,
                        "evidence_dir" => w.evidence_dir = Some(p.value(it, parse_path)?),
                        "evidence_max_kb" => {
                            w.evidence_max_kb = p.value(it, |v| range(v, 0, 1_048_576))?
                        }
                        "advertise" => w.advertise.push(p.list_value(it, parse_advertise)?),
                        "stun_server" => w.stun_servers.push(p.list_value(it, parse_hostport)?),
                        "upnp" => w.upnp = p.value(it, parse_bool)?,
                        "convert" => w.convert = p.value(it, parse_bool)?,
                        "convert_port" => {
                            w.convert_port =
                                p.value(it, |v| range(v, 1, 65535).map(|x| x as u16))?
                        }
                        "convert_max_per_member" => {
                            w.convert_max_per_member = p.value(it, |v| range(v, 1, 65_536))?
                        }
                        "convert_max_per_source" => {
                            w.convert_max_per_source = p.value(it, |v| range(v, 1, 65_536))?
                        }
                        "upnp_url" => w.upnp_url = Some(p.value(it, parse_url)?),
                        "upnp_lease_s" => {
                            w.upnp_lease_s = p.value(it, |v| {
                                let s = range(v, 0, 604_800)?;
                                if s != 0 && s < 10 {
                                    return Err(format!(
                                        "expected 0 (permanent) or 10-604800 seconds, got '{}'",
                                        show(v)
                                    ));
                                }
                                Ok(s)
                            })?
                        }
                        _ => p.unknown(it),
                    }
                }
                if let Some(d) = deny_ports {
                    w.deny_port = d;
                }
                if !listens.is_empty() {
                    w.listen = listens;
                }
            }
            "peer" => {
                let (mut name, mut address, mut tunnel) = (None, None, TunnelKind::Nat);
                let mut convert = false;
                for it in &sec.items {
                    match it.name.as_str() {
                        "name" => name = Some(p.value(it, parse_name)?),
                        "address" => address = Some(p.value(it, parse_socket)?),
                        "tunnel" => tunnel = p.value(it, parse_tunnel)?,
                        "convert" => convert = p.value(it, parse_bool)?,
                        _ => p.unknown(it),
                    }
                }
                let missing = |o: &str| ConfigError {
                    file: file.to_owned(),
                    line: sec.line,
                    option: Some(o.to_owned()),
                    message: "required in a 'peer' section".into(),
                };
                cfg.peers.push(PeerConfig {
                    name: name.ok_or_else(|| missing("name"))?,
                    address: address.ok_or_else(|| missing("address"))?,
                    tunnel,
                    convert,
                });
            }
            other => cfg.warnings.push(format!(
                "{}:{}: unknown section type '{}' ignored",
                file.display(),
                sec.line,
                other.escape_debug()
            )),
        }
        let _ = &sec.name;
    }
    if cfg.client.lan_interfaces.is_empty() {
        cfg.client.lan_interfaces.push("br-lan".into());
    }
    let (c, w) = (&cfg.client, &cfg.waypoint);
    if c.enabled && c.lan_proxy && w.enabled && w.convert && c.proxy_port == w.convert_port {
        return Err(ConfigError {
            file: file.to_owned(),
            line: 0,
            option: Some("convert_port".into()),
            message: format!(
                "the converter and the LAN proxy (proxy_port) both want TCP port {}",
                w.convert_port
            ),
        });
    }
    if !seen_main {
        cfg.warnings.push(format!(
            "{}: no 'config dcol' section; using defaults",
            file.display()
        ));
    }
    Ok(cfg)
}

struct SectionParser<'a> {
    file: &'a Path,
    warnings: &'a mut Vec<String>,
    seen: Vec<String>,
}

impl SectionParser<'_> {
    fn value<T>(
        &mut self,
        it: &Item,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        if it.list {
            self.warnings.push(format!(
                "{}:{}: '{}' is a single option; 'list' used",
                self.file.display(),
                it.line,
                it.name
            ));
        }
        if self.seen.contains(&it.name) {
            self.warnings.push(format!(
                "{}:{}: option '{}' given twice; the last one wins",
                self.file.display(),
                it.line,
                it.name
            ));
        }
        self.seen.push(it.name.clone());
        self.parse(it, f)
    }

    fn list_value<T>(
        &mut self,
        it: &Item,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.parse(it, f)
    }

    fn parse<T>(
        &self,
        it: &Item,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        f(&it.value).map_err(|m| ConfigError {
            file: self.file.to_owned(),
            line: it.line,
            option: Some(it.name.clone()),
            message: m,
        })
    }

    fn unknown(&mut self, it: &Item) {
        self.warnings.push(format!(
            "{}:{}: unknown option '{}' ignored",
            self.file.display(),
            it.line,
            it.name.escape_debug()
        ));
    }
}

fn show(v: &str) -> String {
    v.chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "yes" | "on" | "true" | "enabled" => Ok(true),
        "0" | "no" | "off" | "false" | "disabled" => Ok(false),
        _ => Err(format!(
            "expected a boolean (1/0, yes/no, on/off, true/false), got '{}'",
            show(v)
        )),
    }
}

fn range(v: &str, lo: u32, hi: u32) -> Result<u32, String> {
    v.parse::<u32>()
        .ok()
        .filter(|x| (lo..=hi).contains(x))
        .ok_or_else(|| format!("expected a number {lo}-{hi}, got '{}'", show(v)))
}

fn parse_path(v: &str) -> Result<PathBuf, String> {
    if v.is_empty() || v.contains('\0') {
        return Err("expected a file path".into());
    }
    Ok(PathBuf::from(v))
}

fn parse_level(v: &str) -> Result<log::LevelFilter, String> {
    match v {
        "error" => Ok(log::LevelFilter::Error),
        "warn" | "warning" => Ok(log::LevelFilter::Warn),
        "info" => Ok(log::LevelFilter::Info),
        "debug" => Ok(log::LevelFilter::Debug),
        "trace" => Ok(log::LevelFilter::Trace),
        _ => Err(format!(
            "expected error, warn, info, debug or trace, got '{}'",
            show(v)
        )),
    }
}

fn parse_member_id(v: &str) -> Result<String, String> {
    if v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v.to_ascii_lowercase())
    } else {
        Err(format!(
            "expected a member id of 16 hex digits, got '{}'",
            show(v)
        ))
    }
}

fn parse_socket(v: &str) -> Result<SocketAddr, String> {
    v.parse().map_err(|_| {
        format!(
            "expected address:port ('203.0.113.5:7447' or '[2001:db8::1]:7447'), got '{}'",
            show(v)
        )
    })
}

fn parse_url(v: &str) -> Result<crate::http::Url, String> {
    crate::http::Url::parse(v).map_err(|e| e.to_string())
}

/// `host:port` of a server (names are resolved when used).
fn parse_hostport(v: &str) -> Result<String, String> {
    let bad = || format!("expected host:port, got '{}'", show(v));
    if v.parse::<SocketAddr>().is_ok() {
        return Ok(v.to_owned());
    }
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

fn parse_advertise(v: &str) -> Result<SocketAddr, String> {
    let a = parse_socket(v)?;
    if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
        return Err(format!(
            "expected a reachable unicast address and port, got '{}'",
            show(v)
        ));
    }
    Ok(a)
}

fn parse_ports(v: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!(
            "expected a port range like '40000-40999' (ports >= 1024), got '{}'",
            show(v)
        )
    };
    let (a, b) = v.split_once('-').ok_or_else(bad)?;
    let lo: u16 = a.trim().parse().map_err(|_| bad())?;
    let hi: u16 = b.trim().parse().map_err(|_| bad())?;
    if lo < 1024 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

fn parse_table(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 16
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(v.to_owned())
    } else {
        Err(format!("expected 1-16 of [a-z0-9_], got '{}'", show(v)))
    }
}

fn parse_name(v: &str) -> Result<String, String> {
    crate::trust::check_name(v)
        .map(|_| v.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_ifname(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() < 16
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "expected an interface name (1-15 of [A-Za-z0-9-_.@]), got '{}'",
            show(v)
        ))
    }
}

fn parse_tunnel(v: &str) -> Result<TunnelKind, String> {
    match v {
        "nat" => Ok(TunnelKind::Nat),
        "vpn" => Ok(TunnelKind::Vpn),
        _ => Err(format!("expected 'nat' or 'vpn', got '{}'", show(v))),
    }
}

/// Decimal gigabytes (`100`, `0.5`) to bytes, at most 1,000,000 GB.
fn parse_gb(v: &str) -> Result<u64, String> {
    let bad = || format!("expected gigabytes like '100' or '0.5', got '{}'", show(v));
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

fn parse_convert(v: &str) -> Result<ConvertMode, String> {
    match v {
        "off" | "0" => Ok(ConvertMode::Off),
        "auto" => Ok(ConvertMode::Auto),
        _ => Err(format!("expected 'off' or 'auto', got '{}'", show(v))),
    }
}

fn parse_policy(v: &str) -> Result<DetourPolicy, String> {
    match v {
        "tls-after-handshake" => Ok(DetourPolicy::TlsAfterHandshake),
        "all" => Ok(DetourPolicy::All),
        "none" => Ok(DetourPolicy::None),
        _ => Err(format!(
            "expected 'tls-after-handshake', 'all' or 'none', got '{}'",
            show(v)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("/etc/config/dcol"))
    }

    const SAMPLE: &str = "
config dcol 'main'
	option enabled '1'
	option key '/etc/dcol/member.key'
	option cert '/etc/dcol/member.cert'
	option collective '/etc/dcol/collective.pub'
	option control_socket '/var/run/dcol.sock'

config client 'client'
	option enabled '1'
	option max_detours '2'

config waypoint 'waypoint'
	option enabled '1'
	option listen '0.0.0.0:7447'          # UDP signaling
	option nat_ports '40000-40999'
	list allow_destination '10.0.0.0/8'    # only where private destinations must be reachable (tests)

config peer
	option name 'alice'
	option address '203.0.113.5:7447'
	option tunnel 'nat'                    # nat | vpn
";

    #[test]
    fn deny_ports() {
        let c = p("config waypoint\n").unwrap();
        assert_eq!(c.waypoint.deny_port, [PortRange { lo: 25, hi: 25 }]);
        let c =
            p("config waypoint\n\tlist deny_port '22'\n\tlist deny_port '6660-6669'\n").unwrap();
        assert_eq!(
            c.waypoint.deny_port,
            [
                PortRange { lo: 22, hi: 22 },
                PortRange { lo: 6660, hi: 6669 }
            ]
        );
        assert!(c.waypoint.deny_port[1].contains(6665));
        assert!(!c.waypoint.deny_port[1].contains(6670));
        let c = p("config waypoint\n\tlist deny_port 'none'\n").unwrap();
        assert!(c.waypoint.deny_port.is_empty());
        for bad in ["0", "70000", "30-20", "smtp", "25-"] {
            let e = p(&format!("config waypoint\n\tlist deny_port '{bad}'\n")).unwrap_err();
            assert_eq!(
                (e.line, e.option.as_deref()),
                (2, Some("deny_port")),
                "{bad}"
            );
            assert!(e.message.contains(bad), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn traversal_options() {
        let c = p("config waypoint\n\tlist stun_server 'stun.example.org:3478'\n\tlist stun_server '11.7.9.1:3478'\n\toption upnp_url 'http://192.168.1.1:5000/rootDesc.xml'\n\toption upnp_lease_s '0'\n").unwrap();
        let w = &c.waypoint;
        assert_eq!(w.stun_servers, ["stun.example.org:3478", "11.7.9.1:3478"]);
        assert!(w.upnp && w.upnp_lease_s == 0 && w.upnp_url.is_some());
        assert_eq!(w.grant_ports(), (40000, 40031));
        let c = p("config waypoint\n\toption upnp '0'\n").unwrap();
        assert_eq!(c.waypoint.grant_ports(), (40000, 40999));
        for bad in [
            "config waypoint\n\tlist stun_server 'stun.example.org'\n",
            "config waypoint\n\tlist stun_server 'bad host:3478'\n",
            "config waypoint\n\tlist stun_server 'h:0'\n",
            "config waypoint\n\toption upnp_lease_s '5'\n",
            "config waypoint\n\toption upnp 'maybe'\n",
            "config waypoint\n\toption upnp_url 'https://gw/'\n",
        ] {
            let e = p(bad).unwrap_err().to_string();
            assert!(e.contains("dcol:2: option"), "{bad}: {e}");
        }
    }

    #[test]
    fn design_sample_parses() {
        let c = p(SAMPLE).unwrap();
        assert!(c.main.enabled && c.client.enabled && c.waypoint.enabled);
        assert_eq!(c.client.max_detours, 2);
        assert_eq!(c.waypoint.listen, vec!["0.0.0.0:7447".parse().unwrap()]);
        assert_eq!(c.waypoint.nat_ports, (40000, 40999));
        assert_eq!(
            c.waypoint.allow_destination,
            vec!["10.0.0.0/8".parse().unwrap()]
        );
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.peers[0].address, "203.0.113.5:7447".parse().unwrap());
        assert_eq!(c.peers[0].tunnel, TunnelKind::Nat);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn convert_options() {
        let c = p("config dcol 'main'\nconfig client 'client'\n\toption convert 'auto'\n\toption convert_fastopen '0'\nconfig waypoint 'waypoint'\n\toption convert '1'\n\toption convert_port '7448'\n\toption convert_max_per_source '8'\nconfig peer\n\toption name 'carol'\n\toption address '203.0.113.5:7447'\n\toption convert '1'\n").unwrap();
        assert_eq!(c.client.convert, ConvertMode::Auto);
        assert!(!c.client.convert_fastopen);
        assert!(c.waypoint.convert);
        assert_eq!(c.waypoint.convert_port, 7448);
        assert_eq!(c.waypoint.convert_max_per_source, 8);
        assert!(c.peers[0].convert);
        let d = Config::default();
        assert_eq!(d.client.convert, ConvertMode::Off);
        assert_eq!(d.waypoint.convert_port, 7447);
        let e = p("config client\n\toption convert 'always'\n").unwrap_err();
        assert!(e.to_string().contains("expected 'off' or 'auto'"), "{e}");
        let e = p("config client\n\toption lan_proxy '1'\nconfig waypoint\n\toption convert '1'\n\toption convert_port '7448'\n").unwrap_err();
        assert_eq!(e.option.as_deref(), Some("convert_port"));
    }

    #[test]
    fn directory_options() {
        let c = p("config dcol 'main'\n\toption directory 'http://dir.example:7450/snapshot'\n\toption directory_interval_s '60'\n\toption directory_max_peers '4'\n\toption directory_tunnel 'vpn'\n\toption directory_cache '/tmp/x'\nconfig waypoint\n\tlist advertise '203.0.113.5:7447'\n\tlist advertise '[2001:db8::5]:7447'\n").unwrap();
        let d = &c.directory;
        assert_eq!(
            d.url.as_ref().unwrap().to_string(),
            "http://dir.example:7450/snapshot"
        );
        assert_eq!(
            d.publish_url().unwrap().to_string(),
            "http://dir.example:7450/records"
        );
        assert_eq!(
            (d.interval_s, d.max_peers, d.tunnel),
            (60, 4, TunnelKind::Vpn)
        );
        assert_eq!(d.cache, PathBuf::from("/tmp/x"));
        assert_eq!(c.waypoint.advertise.len(), 2);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = p("config dcol\n\toption directory 'http://cdn.example/s'\n\toption directory_publish 'http://dir.example/records'\n").unwrap();
        assert_eq!(
            c.directory.publish_url().unwrap().to_string(),
            "http://dir.example:80/records"
        );
        assert_eq!(Config::default().directory.publish_url(), None);
        let e = p("config dcol\n\toption directory 'https://x/'\n").unwrap_err();
        assert_eq!((e.line, e.option.as_deref()), (2, Some("directory")));
        assert!(e.message.contains("https"), "{e}");
        for bad in [
            "config dcol\n\toption directory 'ftp://x/'\n",
            "config dcol\n\toption directory_interval_s '1'\n",
            "config dcol\n\toption directory_max_peers '65'\n",
            "config dcol\n\toption directory_tunnel 'gre'\n",
            "config waypoint\n\tlist advertise '0.0.0.0:7447'\n",
            "config waypoint\n\tlist advertise '203.0.113.5'\n",
        ] {
            assert!(p(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn donation_caps() {
        let c =
            p("config waypoint\n\toption donate_kbit '8000'\n\toption donate_monthly_gb '0.25'\n")
                .unwrap();
        assert_eq!(c.waypoint.donation_file, Path::new("/etc/dcol/donated"));
        let c = p("config waypoint\n\toption donation_file '/srv/donated'\n").unwrap();
        assert_eq!(c.waypoint.donation_file, Path::new("/srv/donated"));
        let c =
            p("config waypoint\n\toption donate_kbit '8000'\n\toption donate_monthly_gb '0.25'\n")
                .unwrap();
        assert_eq!(c.waypoint.donate_kbit, 8000);
        assert_eq!(c.waypoint.donate_monthly_bytes, 250_000_000);
        assert_eq!(parse_gb("100").unwrap(), 100_000_000_000);
        assert_eq!(parse_gb("0.000000001").unwrap(), 1);
    }

    #[test]
    fn strategy_options() {
        let c = p("config client 'client'\n\toption sample_interval_ms '0'\n\toption probation_ms '500'\n")
            .unwrap();
        assert_eq!(
            (c.client.sample_interval_ms, c.client.probation_ms),
            (0, 500)
        );
        let e = p("config client 'client'\n\toption sample_interval_ms '10'\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/config/dcol:2: option 'sample_interval_ms': expected 0 (off) or 50-5000, got '10'"
        );
        let e = p("config client 'client'\n\toption probation_ms '100'\n").unwrap_err();
        assert_eq!((e.line, e.option.as_deref()), (2, Some("probation_ms")));
    }

    #[test]
    fn errors_name_line_and_option() {
        let e = p("config client 'client'\n\toption max_detours 'x'\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/config/dcol:2: option 'max_detours': expected a number 0-8, got 'x'"
        );
        let e = p("config waypoint 'w'\n\n\toption nat_ports '50-10'\n").unwrap_err();
        assert_eq!((e.line, e.option.as_deref()), (3, Some("nat_ports")));
        let e = p("config peer\n\toption name 'bob'\n").unwrap_err();
        assert_eq!((e.line, e.option.as_deref()), (1, Some("address")));
        let e = p("config dcol 'main'\n\toption enabled 'maybe'\n").unwrap_err();
        assert!(e.message.contains("boolean"));
        let e = p("option x 'y'\n").unwrap_err();
        assert!(e.message.contains("outside"));
        let e = p("config dcol 'main'\n\toption key 'unterminated\n").unwrap_err();
        assert!(e.message.contains("unterminated"));
        for bad in [
            "config peer\n\toption name 'a b'\n\toption address '1.2.3.4:1'\n",
            "config peer\n\toption name 'a'\n\toption address '1.2.3.4'\n",
            "config peer\n\toption name 'a'\n\toption address '1.2.3.4:1'\n\toption tunnel 'gre'\n",
            "config waypoint\n\tlist allow_destination '10.0.0.0/33'\n",
            "config waypoint\n\toption table 'Bad-Name'\n",
            "config client\n\tlist lan_interface 'br lan'\n",
            "config client\n\tlist bypass_port '0'\n",
            "config client\n\toption proxy_port '70000'\n",
            "config client\n\toption detour_policy 'some'\n",
            "config waypoint\n\toption donate_monthly_gb '1.2.3'\n",
            "config waypoint\n\toption donate_monthly_gb '-1'\n",
            "config waypoint\n\toption donate_kbit 'fast'\n",
            "config client\n\toption proxy_idle_timeout_s '0'\n",
            "config client\n\tlist proxy_allow_destination '10.0.0.0/40'\n",
            "config client\n\tlist proxy_allow_destination 'lan'\n",
            "config client\n\toption proxy_follow_firewall 'perhaps'\n",
            "config client\n\toption max_conns_per_prefix '0'\n",
            "config client\n\toption proxy_max_conns '-1'\n",
            "config dcol\n\tlist revoked 'xyz'\n",
            "config dcol\n\toption log_level 'loud'\n",
            "config client\n\toption renew_interval_s '0'\n",
            "bogus line\n",
        ] {
            assert!(p(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn warnings_defaults_and_quoting() {
        let c = p("config dcol 'main'\n\toption frobnicate '1'\n\toption enabled \"0\"\n\toption enabled 1\nconfig other\n").unwrap();
        assert!(c.main.enabled, "the last of two 'enabled' wins");
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        assert!(c.warnings[0].contains(":2: unknown option 'frobnicate'"));
        assert!(!c.client.enabled && !c.waypoint.enabled);
        let c = p("config waypoint\n\tlist listen '0.0.0.0:1'\n\tlist listen '[::]:1'\n").unwrap();
        assert_eq!(c.waypoint.listen.len(), 2);
        assert_eq!(
            c.client.lan_interfaces,
            vec!["br-lan".to_string()],
            "default LAN interface"
        );
        let c = p("config client\n\toption lan_proxy '1'\n\tlist lan_interface 'l1a'\n\tlist bypass '10.9.0.0/16'\n\tlist bypass_port '22'\n").unwrap();
        assert!(c.client.lan_proxy);
        assert_eq!(c.client.lan_interfaces, vec!["l1a".to_string()]);
        assert_eq!(c.client.bypass_ports, vec![22]);
        assert_eq!(c.client.bypass[0].to_string(), "10.9.0.0/16");
        assert!(c.client.proxy_follow_firewall);
        assert_eq!(
            (c.client.max_conns_per_prefix, c.client.proxy_max_conns),
            (1024, 0)
        );
        let c = p("config client\n\tlist proxy_allow_destination '100.64.0.0/10'\n\tlist proxy_allow_destination 'fd00::/8'\n\toption proxy_follow_firewall '0'\n\toption max_conns_per_prefix '64'\n\toption proxy_max_conns '300'\n").unwrap();
        let allow: Vec<String> = c
            .client
            .proxy_allow_destination
            .iter()
            .map(Cidr::to_string)
            .collect();
        assert_eq!(allow, ["100.64.0.0/10", "fd00::/8"]);
        assert!(!c.client.proxy_follow_firewall);
        assert_eq!(
            (c.client.max_conns_per_prefix, c.client.proxy_max_conns),
            (64, 300)
        );
        let e = p("config client\n\n\tlist proxy_allow_destination '10.0.0.0/40'\n").unwrap_err();
        assert_eq!(
            (e.line, e.option.as_deref()),
            (3, Some("proxy_allow_destination"))
        );
        assert_eq!(
            words(r#"option a "x \"y\" z" # c"#).unwrap(),
            vec!["option", "a", "x \"y\" z"]
        );
    }

    #[test]
    fn cidr() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(&"10.200.0.1".parse().unwrap()));
        assert!(c.contains(&"::ffff:10.0.0.1".parse().unwrap()));
        assert!(!c.contains(&"11.0.0.1".parse().unwrap()));
        let c6: Cidr = "fd00::/8".parse().unwrap();
        assert!(c6.contains(&"fd00:0:0:3::2".parse().unwrap()));
        assert!(!c6.contains(&"10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(&"1.2.3.4".parse().unwrap()));
        assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().prefix, 32);
    }

    const ALPHABET: &[u8] = b"config option list 'x\"\\# \n\tabc0-9:/[]";

    #[test]
    fn garbage_never_panics() {
        let mut s = 1u32;
        for n in 0..500 {
            let text: String = (0..n % 97)
                .map(|_| {
                    s = s.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    ALPHABET[(s >> 16) as usize % ALPHABET.len()] as char
                })
                .collect();
            let _ = p(&text);
        }
    }
}
