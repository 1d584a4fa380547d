//! The table of UCI options: every section type, option name, kind, range
//! and default of `/etc/config/dcol`, once. The parser ([`super::parse`])
//! reads the file through it and [`super::Config::default`] is its defaults;
//! the init script's validation, the shipped `dcol.config` and the LuCI
//! settings page are tested against it (`config/shipped_tests.rs`).
//!
//! Adding an option is one line here (plus its field in the typed struct):
//!
//! ```text
//! opt(WAYPOINT, "convert_port", Some("7449"), Kind::Port(Set(|d, v| d.cfg.waypoint.convert_port = v))),
//! ```
//!
//! then the same option in `dcol.init` (`'convert_port:range(1,65535):7449'`),
//! in `dcol.config` and on LuCI's settings page, which the tests then ask for.

use super::kind::{Kind, Set};

/// A section type of `/etc/config/dcol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `config dcol 'main'`: membership, logging, the directory.
    Main,
    /// `config client 'client'`: the client role and the LAN proxy.
    Client,
    /// `config waypoint 'waypoint'`: the waypoint role.
    Waypoint,
    /// `config peer` (anonymous, any number): a waypoint to use.
    Peer,
}

impl Section {
    /// Every section type.
    pub const ALL: [Section; 4] = [
        Section::Main,
        Section::Client,
        Section::Waypoint,
        Section::Peer,
    ];

    /// The UCI type.
    pub fn uci_type(self) -> &'static str {
        match self {
            Section::Main => "dcol",
            Section::Client => "client",
            Section::Waypoint => "waypoint",
            Section::Peer => "peer",
        }
    }

    /// The section's name in the shipped file (`None`: anonymous, many).
    pub fn uci_name(self) -> Option<&'static str> {
        match self {
            Section::Main => Some("main"),
            Section::Client => Some("client"),
            Section::Waypoint => Some("waypoint"),
            Section::Peer => None,
        }
    }

    /// The section type called `t`.
    pub fn of(t: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|s| s.uci_type() == t)
    }

    /// Its options.
    pub fn options(self) -> impl Iterator<Item = &'static UciOption> {
        OPTIONS.iter().filter(move |o| o.section == self)
    }
}

/// One option of the table.
pub struct UciOption {
    /// Its section type.
    pub section: Section,
    /// Its name.
    pub name: &'static str,
    /// A `list` (each value adds one; values given replace the default).
    pub list: bool,
    /// A section of its type is an error without it.
    pub required: bool,
    /// The value when it is not given, as UCI text (`None`: unset, which
    /// means off or a value derived from other options, see the field).
    /// A role's `enabled` takes its default only where its section exists.
    pub default: Option<&'static str>,
    /// What it takes, and where it goes.
    pub kind: Kind,
}

const MAIN: Section = Section::Main;
const CLIENT: Section = Section::Client;
const WAYPOINT: Section = Section::Waypoint;
const PEER: Section = Section::Peer;

const fn opt(
    section: Section,
    name: &'static str,
    default: Option<&'static str>,
    kind: Kind,
) -> UciOption {
    UciOption {
        section,
        name,
        list: false,
        required: false,
        default,
        kind,
    }
}

const fn list(
    section: Section,
    name: &'static str,
    default: Option<&'static str>,
    kind: Kind,
) -> UciOption {
    UciOption {
        list: true,
        ..opt(section, name, default, kind)
    }
}

const fn required(section: Section, name: &'static str, kind: Kind) -> UciOption {
    UciOption {
        required: true,
        ..opt(section, name, None, kind)
    }
}

const fn num(min: u32, max: u32, set: fn(&mut super::Draft, u32)) -> Kind {
    Kind::Number {
        min,
        max,
        set: Set(set),
    }
}

/// Every option, by section.
#[rustfmt::skip]
pub static OPTIONS: &[UciOption] = &[
    opt(MAIN, "enabled", Some("1"), Kind::Bool(Set(|d, v| d.cfg.main.enabled = v))),
    opt(MAIN, "key", Some("/etc/dcol/member.key"), Kind::Path(Set(|d, v| d.cfg.main.key = v))),
    opt(MAIN, "cert", Some("/etc/dcol/member.cert"), Kind::Path(Set(|d, v| d.cfg.main.cert = v))),
    opt(MAIN, "collective", Some("/etc/dcol/collective.pub"), Kind::Path(Set(|d, v| d.cfg.main.collective = v))),
    opt(MAIN, "control_socket", Some("/var/run/dcol.sock"), Kind::Path(Set(|d, v| d.cfg.main.control_socket = v))),
    opt(MAIN, "state_dir", Some("/var/run/dcol"), Kind::Path(Set(|d, v| d.cfg.main.state_dir = v))),
    opt(MAIN, "log_level", Some("info"), Kind::LogLevel(Set(|d, v| d.cfg.main.log_level = v))),
    list(MAIN, "revoked", None, Kind::MemberId(Set(|d, v| d.cfg.main.revoked.push(v)))),
    opt(MAIN, "revocation_list", None, Kind::Path(Set(|d, v| d.cfg.main.revocation_list = Some(v)))),
    opt(MAIN, "directory", None, Kind::Url(Set(|d, v| d.cfg.directory.url = Some(v)))),
    opt(MAIN, "directory_publish", None, Kind::Url(Set(|d, v| d.cfg.directory.publish = Some(v)))),
    opt(MAIN, "directory_interval_s", Some("300"), num(2, 86_400, |d, v| d.cfg.directory.interval_s = v)),
    opt(MAIN, "directory_cache", Some("/etc/dcol/directory.snapshot"), Kind::Path(Set(|d, v| d.cfg.directory.cache = v))),
    opt(MAIN, "directory_max_peers", Some("8"), num(0, 64, |d, v| d.cfg.directory.max_peers = v)),
    opt(MAIN, "directory_tunnel", Some("nat"), Kind::Tunnel(Set(|d, v| d.cfg.directory.tunnel = v))),

    opt(CLIENT, "enabled", Some("1"), Kind::Bool(Set(|d, v| d.cfg.client.enabled = v))),
    opt(CLIENT, "max_detours", Some("2"), num(0, 8, |d, v| d.cfg.client.max_detours = v as u8)),
    opt(CLIENT, "request_timeout_ms", Some("300"), num(10, 10_000, |d, v| d.cfg.client.request_timeout_ms = v)),
    opt(CLIENT, "renew_interval_s", Some("5"), num(1, 3600, |d, v| d.cfg.client.renew_interval_s = v)),
    opt(CLIENT, "liveness_misses", Some("3"), num(1, 100, |d, v| d.cfg.client.liveness_misses = v)),
    opt(CLIENT, "sample_interval_ms", Some("250"), Kind::ZeroOr { zero: "off", min: 50, max: 5000, set: Set(|d, v| d.cfg.client.sample_interval_ms = v) }),
    opt(CLIENT, "probation_ms", Some("2000"), num(200, 60_000, |d, v| d.cfg.client.probation_ms = v)),
    opt(CLIENT, "lan_proxy", Some("0"), Kind::Bool(Set(|d, v| d.cfg.client.lan_proxy = v))),
    list(CLIENT, "lan_interface", Some("br-lan"), Kind::IfName { max: 15, set: Set(|d, v| d.cfg.client.lan_interfaces.push(v)) }),
    list(CLIENT, "bypass", None, Kind::Cidr(Set(|d, v| d.cfg.client.bypass.push(v)))),
    list(CLIENT, "bypass_port", None, Kind::Port(Set(|d, v| d.cfg.client.bypass_ports.push(v)))),
    opt(CLIENT, "proxy_port", Some("7448"), Kind::Port(Set(|d, v| d.cfg.client.proxy_port = v))),
    opt(CLIENT, "max_conns_per_host", Some("512"), num(1, 65_536, |d, v| d.cfg.client.max_conns_per_host = v)),
    opt(CLIENT, "max_conns_per_prefix", Some("1024"), num(1, 65_536, |d, v| d.cfg.client.max_conns_per_prefix = v)),
    opt(CLIENT, "proxy_max_conns", Some("0"), num(0, 1_000_000, |d, v| d.cfg.client.proxy_max_conns = v)),
    list(CLIENT, "proxy_allow_destination", None, Kind::Cidr(Set(|d, v| d.cfg.client.proxy_allow_destination.push(v)))),
    opt(CLIENT, "proxy_follow_firewall", Some("1"), Kind::Bool(Set(|d, v| d.cfg.client.proxy_follow_firewall = v))),
    opt(CLIENT, "detour_policy", Some("tls-after-handshake"), Kind::Policy(Set(|d, v| d.cfg.client.detour_policy = v))),
    opt(CLIENT, "proxy_idle_timeout_s", Some("3600"), num(1, 604_800, |d, v| d.cfg.client.proxy_idle_timeout_s = v)),
    opt(CLIENT, "vpn_interface_prefix", Some("dcolc"), Kind::IfName { max: 12, set: Set(|d, v| d.cfg.client.vpn_interface_prefix = v) }),
    opt(CLIENT, "vpn_table", Some("7400"), num(1, 0x7fff_0000, |d, v| d.cfg.client.vpn_table = v)),
    opt(CLIENT, "convert", Some("off"), Kind::Convert(Set(|d, v| d.cfg.client.convert = v))),
    opt(CLIENT, "convert_fastopen", Some("1"), Kind::Bool(Set(|d, v| d.cfg.client.convert_fastopen = v))),

    opt(WAYPOINT, "enabled", Some("1"), Kind::Bool(Set(|d, v| d.cfg.waypoint.enabled = v))),
    list(WAYPOINT, "listen", Some("0.0.0.0:7447"), Kind::Socket(Set(|d, v| d.cfg.waypoint.listen.push(v)))),
    opt(WAYPOINT, "nat_ports", Some("40000-40999"), Kind::NatPorts(Set(|d, v| d.cfg.waypoint.nat_ports = v))),
    opt(WAYPOINT, "lease_s", Some("300"), num(10, 86_400, |d, v| d.cfg.waypoint.lease_s = v)),
    opt(WAYPOINT, "max_tunnels_per_member", Some("16"), num(1, 1_000_000, |d, v| d.cfg.waypoint.max_tunnels_per_member = v)),
    list(WAYPOINT, "allow_destination", None, Kind::Cidr(Set(|d, v| d.cfg.waypoint.allow_destination.push(v)))),
    list(WAYPOINT, "deny_port", Some("25"), Kind::DenyPort(Set(|d, v| d.cfg.waypoint.deny_port.extend(v)))),
    opt(WAYPOINT, "max_clock_skew_s", Some("30"), num(1, 3600, |d, v| d.cfg.waypoint.max_clock_skew_s = v)),
    opt(WAYPOINT, "table", Some("dcol"), Kind::Table(Set(|d, v| d.cfg.waypoint.table = v))),
    opt(WAYPOINT, "vpn_subnet", None, Kind::Subnet { v4: true, max_prefix: 30, set: Set(|d, v| d.cfg.waypoint.vpn_subnet = Some(v)) }),
    opt(WAYPOINT, "vpn_subnet6", None, Kind::Subnet { v4: false, max_prefix: 120, set: Set(|d, v| d.cfg.waypoint.vpn_subnet6 = Some(v)) }),
    opt(WAYPOINT, "vpn_port", Some("51820"), Kind::Port(Set(|d, v| d.cfg.waypoint.vpn_port = v))),
    opt(WAYPOINT, "vpn_interface", Some("dcolwg"), Kind::IfName { max: 15, set: Set(|d, v| d.cfg.waypoint.vpn_interface = v) }),
    opt(WAYPOINT, "donate_kbit", Some("0"), num(0, 100_000_000, |d, v| d.cfg.waypoint.donate_kbit = v)),
    opt(WAYPOINT, "donate_monthly_gb", Some("0"), Kind::Gigabytes(Set(|d, v| d.cfg.waypoint.donate_monthly_bytes = v))),
    opt(WAYPOINT, "donation_file", Some("/etc/dcol/donated"), Kind::Path(Set(|d, v| d.cfg.waypoint.donation_file = v))),
    opt(WAYPOINT, "evidence_dir", None, Kind::Path(Set(|d, v| d.cfg.waypoint.evidence_dir = Some(v)))),
    opt(WAYPOINT, "evidence_max_kb", Some("1024"), num(0, 1_048_576, |d, v| d.cfg.waypoint.evidence_max_kb = v)),
    list(WAYPOINT, "advertise", None, Kind::Advertise(Set(|d, v| d.cfg.waypoint.advertise.push(v)))),
    list(WAYPOINT, "stun_server", None, Kind::HostPort(Set(|d, v| d.cfg.waypoint.stun_servers.push(v)))),
    opt(WAYPOINT, "upnp", Some("1"), Kind::Bool(Set(|d, v| d.cfg.waypoint.upnp = v))),
    opt(WAYPOINT, "upnp_url", None, Kind::Url(Set(|d, v| d.cfg.waypoint.upnp_url = Some(v)))),
    opt(WAYPOINT, "convert", Some("0"), Kind::Bool(Set(|d, v| d.cfg.waypoint.convert = v))),
    opt(WAYPOINT, "convert_port", Some("7447"), Kind::Port(Set(|d, v| d.cfg.waypoint.convert_port = v))),
    opt(WAYPOINT, "convert_max_per_member", Some("256"), num(1, 65_536, |d, v| d.cfg.waypoint.convert_max_per_member = v)),
    opt(WAYPOINT, "convert_max_per_source", Some("256"), num(1, 65_536, |d, v| d.cfg.waypoint.convert_max_per_source = v)),
    opt(WAYPOINT, "upnp_lease_s", Some("3600"), Kind::ZeroOr { zero: "permanent", min: 10, max: 604_800, set: Set(|d, v| d.cfg.waypoint.upnp_lease_s = v) }),

    required(PEER, "name", Kind::MemberName(Set(|d, v| d.peer.name = v))),
    required(PEER, "address", Kind::Socket(Set(|d, v| d.peer.address = v))),
    opt(PEER, "tunnel", Some("nat"), Kind::Tunnel(Set(|d, v| d.peer.tunnel = v))),
    opt(PEER, "convert", Some("0"), Kind::Bool(Set(|d, v| d.peer.convert = v))),
];

/// The option `name` of section type `section`.
pub fn find(section: Section, name: &str) -> Option<&'static UciOption> {
    OPTIONS
        .iter()
        .find(|o| o.section == section && o.name == name)
}
