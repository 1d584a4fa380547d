//! `/etc/config/dcol` (UCI syntax) parsed once, strictly, into a typed
//! [`Config`]. Pure apart from [`load`], which reads the file.
//!
//! One table, [`options::OPTIONS`], names every section type and option with
//! its kind, range and default; the parser reads the file through it and
//! [`Config::default`] is its defaults. The init script's `validate_data`
//! rules (`openwrt-feed/net/dcol/files/dcol.init`), the shipped
//! `dcol.config` and LuCI's settings page are tested against it
//! (`shipped_tests.rs`): an option missing from one of them, or with another
//! datatype, range or default there, fails `cargo test`.
//!
//! **Adding an option**: a field in the typed struct below (for `peer` and
//! `main` also in `PeerConfig::empty` / `MainConfig::default`; the
//! compiler asks), one line in [`options::OPTIONS`], e.g.
//!
//! ```text
//! opt(PEER, "convert", Some("0"), Kind::Bool(Set(|d, v| d.peer.convert = v))),
//! ```
//!
//! (`list(..)` for a list, `required(..)` for a peer's must-have; the
//! [`Kind`] decides the parsing and the OpenWrt datatype), then the line the
//! tests ask for in `dcol.init`, `dcol.config` and `settings.js`.
//!
//! Invalid values are [`ConfigError`]s naming the file, the line, the
//! section and the option; unknown sections and options are
//! [`ConfigWarning`]s (kept in [`Config::warnings`]), so a newer LuCI writing
//! an option an older daemon does not know yet does not stop the router's
//! daemon. No libuci: the daemon reads the file itself. The value types
//! (addresses blocks, port ranges, tunnel kinds) live in [`crate::types`].
//!
//! ```
//! use std::path::Path;
//! let c = dcol::config::parse("config client\n\toption max_detours '3'\n", Path::new("f")).unwrap();
//! assert_eq!((c.client.enabled, c.client.max_detours, c.client.proxy_port), (true, 3, 7448));
//! let e = dcol::config::parse("config client\n\toption max_detours '9'\n", Path::new("f")).unwrap_err();
//! assert_eq!(e.to_string(), "f:2: option 'max_detours': expected a number 0-8, got '9'");
//! ```

mod error;
mod kind;
pub mod options;
#[cfg(test)]
mod shipped_tests;
#[cfg(test)]
mod tests;
mod uci;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigWarning, SyntaxError, ValueError};
pub use kind::{Kind, Set, LOG_LEVELS};
pub use options::{Section, UciOption, OPTIONS};

pub use crate::types::ConvertMode;
use crate::types::{Cidr, DetourPolicy, PortRange, TunnelKind};

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
#[derive(Debug, Clone, Default, PartialEq)]
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
#[derive(Debug, Clone, Default, PartialEq)]
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
#[derive(Debug, Clone, Default, PartialEq)]
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
    /// Unknown sections and options, duplicates.
    pub warnings: Vec<ConfigWarning>,
}

impl Default for MainConfig {
    /// Empty: no paths, `log_level` info ([`Config::default`] has the
    /// table's defaults).
    fn default() -> Self {
        MainConfig {
            enabled: false,
            key: PathBuf::new(),
            cert: PathBuf::new(),
            collective: PathBuf::new(),
            control_socket: PathBuf::new(),
            state_dir: PathBuf::new(),
            log_level: log::LevelFilter::Info,
            revoked: Vec::new(),
            revocation_list: None,
        }
    }
}

impl Default for Config {
    /// Every option at its default in [`OPTIONS`]; the roles off (no
    /// `client` or `waypoint` section), no peers.
    fn default() -> Self {
        Draft::new(Path::new("")).finish(&[], &[])
    }
}

/// Reads and parses `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        file: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        ConfigError::Utf8 {
            file: path.to_owned(),
            line: 1 + valid.iter().filter(|&&b| b == b'\n').count(),
        }
    })?;
    parse(&text, path)
}

/// Parses UCI text (`file` is only used in messages).
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let mut d = Draft::new(file);
    let mut given: Vec<&'static UciOption> = Vec::new();
    let mut present: Vec<Section> = Vec::new();
    for sec in uci::sections(text, file)? {
        let Some(section) = Section::of(&sec.kind) else {
            d.cfg.warnings.push(ConfigWarning::UnknownSection {
                file: file.to_owned(),
                line: sec.line,
                kind: sec.kind.escape_debug().to_string(),
            });
            continue;
        };
        present.push(section);
        d.peer = PeerConfig::empty();
        let mut seen = Vec::new();
        for it in &sec.items {
            d.item(section, it, &mut seen)?;
        }
        if section == Section::Peer {
            d.finish_peer(sec.line, &seen)?;
        } else {
            given.extend(seen);
        }
    }
    let mut cfg = d.finish(&given, &present);
    let (c, w) = (&cfg.client, &cfg.waypoint);
    if c.enabled && c.lan_proxy && w.enabled && w.convert && c.proxy_port == w.convert_port {
        return Err(ConfigError::Value {
            file: file.to_owned(),
            line: 0,
            section: Section::Waypoint,
            option: "convert_port",
            what: ValueError::PortTaken {
                port: w.convert_port,
                by: "proxy_port",
            },
        });
    }
    if !present.contains(&Section::Main) {
        let file = file.to_owned();
        cfg.warnings.push(ConfigWarning::NoMain { file });
    }
    Ok(cfg)
}

/// The configuration being built from the file.
struct Draft {
    file: PathBuf,
    cfg: Config,
    /// The current `peer` section (its required options checked at its end).
    peer: PeerConfig,
}

impl PeerConfig {
    /// No name, no address ([`parse`] requires both), default-less fields
    /// empty: what a `peer` section starts from.
    fn empty() -> PeerConfig {
        PeerConfig {
            name: String::new(),
            address: SocketAddr::from(([0, 0, 0, 0], 0)),
            tunnel: TunnelKind::Nat,
            convert: false,
        }
    }
}

impl Draft {
    /// Empty: no option set, no list entries (see [`Draft::finish`]).
    fn new(file: &Path) -> Draft {
        Draft {
            file: file.to_owned(),
            cfg: Config {
                main: MainConfig::default(),
                client: ClientConfig::default(),
                waypoint: WaypointConfig::default(),
                peers: Vec::new(),
                directory: DirectoryConfig::default(),
                warnings: Vec::new(),
            },
            peer: PeerConfig::empty(),
        }
    }

    /// One `option`/`list` line of a `section` (`seen`: this section's
    /// options so far).
    fn item(
        &mut self,
        section: Section,
        it: &uci::Item,
        seen: &mut Vec<&'static UciOption>,
    ) -> Result<(), ConfigError> {
        let (file, line) = (self.file.clone(), it.line);
        let Some(o) = options::find(section, &it.name) else {
            let option = it.name.escape_debug().to_string();
            self.warn(ConfigWarning::UnknownOption { file, line, option });
            return Ok(());
        };
        if !o.list && it.list {
            let option = o.name;
            self.warn(ConfigWarning::ListForOption { file, line, option });
        }
        if !o.list && seen.iter().any(|s| std::ptr::eq(*s, o)) {
            let (file, option) = (self.file.clone(), o.name);
            self.warn(ConfigWarning::Twice { file, line, option });
        }
        seen.push(o);
        o.kind
            .apply(self, &it.value)
            .map_err(|what| ConfigError::Value {
                file: self.file.clone(),
                line,
                section,
                option: o.name,
                what,
            })
    }

    /// The `peer` section of line `line` is complete.
    fn finish_peer(&mut self, line: usize, seen: &[&'static UciOption]) -> Result<(), ConfigError> {
        for o in Section::Peer.options() {
            if seen.iter().any(|s| std::ptr::eq(*s, o)) {
                continue;
            }
            if o.required {
                return Err(ConfigError::Missing {
                    file: self.file.clone(),
                    line,
                    section: Section::Peer,
                    option: o.name,
                });
            }
            self.default(o);
        }
        let p = std::mem::replace(&mut self.peer, PeerConfig::empty());
        self.cfg.peers.push(p);
        Ok(())
    }

    /// The configuration: the defaults of the options not `given` in the
    /// sections `present`; a role is off without its section.
    fn finish(mut self, given: &[&'static UciOption], present: &[Section]) -> Config {
        for o in OPTIONS.iter().filter(|o| o.section != Section::Peer) {
            if !given.iter().any(|g| std::ptr::eq(*g, o)) {
                self.default(o);
            }
        }
        if !present.contains(&Section::Client) {
            self.cfg.client.enabled = false;
        }
        if !present.contains(&Section::Waypoint) {
            self.cfg.waypoint.enabled = false;
        }
        self.cfg
    }

    /// Sets `o` to its default, if it has one.
    fn default(&mut self, o: &'static UciOption) {
        if let Some(v) = o.default {
            if let Err(e) = o.kind.apply(self, v) {
                // The table's own defaults parse (tests::table_defaults_parse).
                unreachable!("the default of option '{}' does not parse: {e}", o.name);
            }
        }
    }

    fn warn(&mut self, w: ConfigWarning) {
        self.cfg.warnings.push(w);
    }
}
