//! The `dcol status --json` document: the contract with LuCI.
//!
//! Shape (fields marked `?` are `null` when unknown; `client` is `null` when the
//! client role is off, `waypoint` likewise):
//!
//! ```json
//! {
//!   "version": "0.1.0",
//!   "uptime_s": 42,
//!   "member": { "name": "bob", "id": "3f2a9c0d11e4b7a0", "collective": "<64 hex>",
//!               "cert_not_after": 1795000000, "roles": "client,waypoint" },
//!   "client": {
//!     "connections": [
//!       { "token": "0x1a2b3c4d", "local": "10.0.1.1:51234", "remote": "10.0.3.2:5201",
//!         "state": "established", "lan_client": "192.168.1.20:40312",
//!         "detour_gate": "open",
//!         "subflows": [
//!           { "path": "direct", "waypoint": null, "tunnel": null,
//!             "local": "10.0.1.1:51234", "remote": "10.0.3.2:5201",
//!             "state": "established", "detail": null, "setup_ms": null,
//!             "role": null, "rate_kbit": 9120.5, "rtt_ms": 10.4, "loss_pct": 0.0,
//!             "bytes": 11400000 },
//!           { "path": "detour", "waypoint": "alice", "tunnel": "nat",
//!             "local": "10.0.1.1:40123", "remote": "10.0.6.2:40000",
//!             "state": "established", "detail": null, "setup_ms": 3,
//!             "role": "active", "rate_kbit": 8904.1, "rtt_ms": 11.0, "loss_pct": 0.1,
//!             "bytes": 10200000 } ] } ],
//!     "peers": [ { "name": "alice", "address": "10.0.6.2:7447", "tunnel": "nat",
//!                  "up": true, "rtt_ms": 1.2, "vpn_state": null, "vpn_address": null,
//!                  "vpn_error": null, "score": 0.93, "detours_scored": 14 } ],
//!     "scores": [ { "waypoint": "alice", "prefix": "10.0.3.0/24", "mean": 0.95,
//!                   "weight": 4.1, "count": 9 } ],
//!     "lan_proxy": { "active": 3, "accepted": 120, "refused_limit": 0, "refused_special": 0,
//!                    "refused_direct": 0, "connect_failed": 1, "plain_tcp": 4, "fell_back": 1,
//!                    "resets": 2, "bytes_up": 48213, "bytes_down": 90312744, "fallback_cached": 1,
//!                    "detour_policy": "tls-after-handshake", "max_conns": 2031,
//!                    "paused": false, "pauses": 0, "wan_interfaces": ["pppoe-wan"],
//!                    "follow_firewall": true, "firewall_changes": 2,
//!                    "converters": [ { "converter": "carol", "address": "10.0.5.2:7447",
//!                                      "converted": 5, "active": 1, "refused": 0,
//!                                      "failed": 0, "held_down": false } ] }
//!   },
//!   "waypoint": {
//!     "listen": ["0.0.0.0:7447"],
//!     "grants": [ { "member": "bob", "member_id": "3f2a9c0d11e4b7a0", "client": "10.0.1.1",
//!                   "port": 40000, "destination": "10.0.3.2:5201",
//!                   "age_s": 12, "expires_in_s": 288, "holders": 1 } ],
//!     "datagrams": 10, "granted": 9, "refused": { "Stale": 1 },
//!     "donate_kbit": 8000, "donate_monthly_bytes": 100000000000,
//!     "donated_month_bytes": 1234567, "refusing": null, "ending_tunnels": 0,
//!     "vpn_peers": [ { "member": "bob", "member_id": "3f2a9c0d11e4b7a0", "address": "10.200.7.2",
//!                      "client": "198.51.100.7", "wg_key": "<base64>", "age_s": 30,
//!                      "expires_in_s": 270 } ],
//!     "converter": { "port": 7447, "accepted": 12, "converted": 10,
//!                    "refused": { "Not Authorized": 2 }, "bytes_up": 1200,
//!                    "bytes_down": 9000000, "conversions": [] }
//!   },
//!   "directory": {
//!     "url": "http://dir.example:7450/snapshot", "serial": 1795000123,
//!     "issued": 1795000100, "members": 41, "revoked": 2, "peers": 8,
//!     "last_fetch": 1795000200, "last_result": "ok",
//!     "published": "published", "last_publish": 1795000000,
//!     "publish_result": "published record of 'alice' (3f2a9c0d11e4b7a0) accepted, sequence 1795000000123",
//!     "renewal": null
//!   },
//!   "traversal": {
//!     "public": "198.51.100.7:7447", "note": "ports mapped on the gateway",
//!     "mapping": "endpoint-independent", "gateway": "http://192.168.1.1:5000/ctl/IPConn",
//!     "external_ip": "198.51.100.7", "mapped": ["tcp/40000-40031", "udp/7447"],
//!     "mapped_ports": 33, "stun_seen": ["198.51.100.7:40211", "198.51.100.7:40211"],
//!     "errors": [], "last_pass": 1795000150
//!   },
//!   "loop": { "turns": 81234, "max_ms": 4.113, "max_at_s": 37, "max_driver": "lan",
//!             "le_ms": [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
//!             "counts": [80012, 911, 200, 80, 20, 11, 0, 0, 0, 0, 0, 0, 0, 0] }
//! }
//! ```
//!
//! `loop`: how long the daemon's poll-loop turns took since it started (the
//! work between two polls; see [`LoopStatus`]).
//!
//! `traversal` is `null` with the waypoint role off, or with `option upnp
//! '0'` and no `list stun_server`; see [`TraversalStatus`].
//!
//! `directory` is `null` without `option directory`. `serial`, `issued`
//! (Unix s) and `members` describe the snapshot in force (`null` until one
//! is); `revoked` counts its revocation list, `peers` the directory members
//! the client role uses as waypoints (each may give an IPv4 and an IPv6
//! peer in `client.peers`). `last_fetch` (Unix s) and `last_result` (`ok`,
//! `not modified`, `cached` or the error, e.g. a refused snapshot) tell how
//! the last fetch went. `published` is `published`, `withdrawn` or `null`
//! (never posted), `last_publish` (Unix s) and `publish_result` (the
//! server's answer or the error) tell how the last post went. `renewal`
//! is the outcome of the last certificate renewal asked of the directory
//! (see `directory/renew.rs`), `null` when none was asked.
//!
//! `lan_client` is the LAN device a proxied connection carries (`null` for
//! connections of programs on the router itself); `detour_gate` is `open`,
//! `waiting for the TLS handshake`, or why the connection gets no detours
//! (`plaintext`, `detour_policy 'none'`, ...). `lan_proxy` is `null` when the
//! transparent proxy is off; its counters count since the daemon started;
//! [`LanProxyStatus`] says what its limits and `paused` mean.
//! Subflow `state` is one of `requesting`, `connecting`, `established`, `failed`
//! (then `detail` says why).
//!
//! Measurements (the detour strategy, sampled from the kernel's `tcp_info`
//! every `sample_interval_ms`; all `null` before the first sample or with the
//! strategy off): `rate_kbit` is the subflow's smoothed throughput, both
//! directions; `rtt_ms` its smoothed RTT; `loss_pct` its retransmitted share
//! of sent segments, smoothed; `bytes` what it carried (acked + received)
//! since it was first measured. The direct subflow is measured only while the
//! connection has a detour (requested, held back or running). Detour
//! `role` is `probing` (new, on probation), `active` (kept) or `backup`
//! (marked backup with SET_FLAGS: neither the server nor we send on it;
//! `detail` says why: a fault, `adds nothing: …` when it was parked
//! because the connection ran no faster with it than alone before it, or
//! than without it in the park test; `testing the connection without it
//! (…)` during that test; `parked lately (…)` when it started parked);
//! `null` for the direct subflow and for detours not established.
//!
//! Scores: `peers[].score` is the waypoint's discounted mean reward over every
//! destination (0-1: a detour's share of its connection's bytes, doubled and
//! capped at 1; 0 for a waypoint that did not answer), `detours_scored` how
//! many detours it was scored on (both `null`/0 before any). `scores` lists
//! the per-destination-prefix entries (IPv4 /24, IPv6 /48) the waypoint choice
//! ranks by; `weight` is the discounted number of rewards behind `mean`.
//!
//! Addresses are strings in Rust's `SocketAddr` format
//! (`[v6]:port` for IPv6). New fields may be added; existing ones keep their meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole status document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// `dcol` version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// This router's membership.
    pub member: MemberStatus,
    /// Client role, when enabled.
    pub client: Option<ClientStatus>,
    /// Waypoint role, when enabled.
    pub waypoint: Option<WaypointStatus>,
    /// The membership directory, when configured.
    #[serde(default)]
    pub directory: Option<DirectoryStatus>,
    /// NAT traversal, when the waypoint role is on with UPnP or STUN.
    #[serde(default)]
    pub traversal: Option<TraversalStatus>,
    /// The poll loop's turns (`null` from a daemon that does not count them).
    #[serde(default, rename = "loop")]
    pub turns: Option<LoopStatus>,
}

/// The poll loop's turns since the daemon started: a turn is the work
/// between two `poll(2)` calls (the ready drivers, their events, status
/// answers). `counts[i]` is the number of turns that took at most
/// `le_ms[i]` and more than `le_ms[i - 1]`; the last count is the turns
/// above the last bound. `max_ms` is the slowest turn, `max_at_s` when it
/// ended (seconds since the start, as `uptime_s`), `max_driver` the driver
/// that took the longest part of it (`host`, `routes`, `revocations`,
/// `waypoint`, `client`, `lan`, `membership`, `traversal`; `deliver` for
/// handing events out, `status` for building and sending this document
/// to waiting control clients, `collect` for
/// gathering the next descriptors and deadlines; `null` before any turn).
/// A reader wanting the turns of an interval subtracts two readings' counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoopStatus {
    /// Turns so far.
    pub turns: u64,
    /// The slowest turn, in milliseconds.
    pub max_ms: f64,
    /// When it ended, in seconds since the daemon started.
    pub max_at_s: u64,
    /// Which part of the daemon took the longest share of it.
    pub max_driver: Option<String>,
    /// Upper bounds of the histogram's buckets, in milliseconds.
    pub le_ms: Vec<f64>,
    /// Turns per bucket; one more than `le_ms` (the last: above its last bound).
    pub counts: Vec<u64>,
}

/// What NAT traversal found in its last pass (all `null`/empty before the
/// first pass ends).
///
/// ```json
/// "traversal": { "public": "11.7.1.1:7447", "note": "ports mapped on the gateway",
///                "mapping": "endpoint-independent", "gateway": "http://192.168.7.1:5000/ctl/IPConn",
///                "external_ip": "11.7.1.1", "mapped": ["tcp/40000-40031", "udp/7447"],
///                "mapped_ports": 33, "stun_seen": ["11.7.1.1:35007", "11.7.1.1:35007"],
///                "errors": [], "last_pass": 1795592575,
///                "public6": "[2001:db8:7::2]:7447", "pinholes": ["tcp/40000-40031", "udp/7447"] }
/// ```
/// `public6` and `pinholes`: IPv6, where the waypoint listens on IPv6 and
/// the gateway opened pinholes in its firewall with PCP.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TraversalStatus {
    /// The address published for this waypoint, `null` when not reachable.
    pub public: Option<String>,
    /// Why `public` is what it is.
    pub note: String,
    /// `none`, `endpoint-independent`, `endpoint-dependent` or `unknown`.
    pub mapping: Option<String>,
    /// The UPnP gateway's control URL.
    pub gateway: Option<String>,
    /// The gateway's external address.
    pub external_ip: Option<String>,
    /// Ports mapped on the gateway, as `proto/lo-hi` ranges.
    pub mapped: Vec<String>,
    /// How many ports are mapped.
    pub mapped_ports: usize,
    /// The addresses the STUN servers saw.
    pub stun_seen: Vec<String>,
    /// Problems of the last pass.
    pub errors: Vec<String>,
    /// When the last pass ended (Unix seconds).
    pub last_pass: Option<u64>,
    /// This router's IPv6 signaling address, when its pinhole is open.
    #[serde(default)]
    pub public6: Option<String>,
    /// IPv6 pinholes open in the gateway's firewall, as `proto/lo-hi` ranges.
    #[serde(default)]
    pub pinholes: Vec<String>,
}

/// The membership directory as this member sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DirectoryStatus {
    /// The snapshot URL.
    pub url: String,
    /// Serial of the snapshot in force.
    pub serial: Option<u64>,
    /// Its issue time (Unix seconds).
    pub issued: Option<u64>,
    /// Members it lists.
    pub members: Option<usize>,
    /// Members on its revocation list.
    pub revoked: usize,
    /// Directory members in use as waypoints.
    pub peers: usize,
    /// Last fetch (Unix seconds).
    pub last_fetch: Option<u64>,
    /// `ok`, `not modified`, `cached`, or the error.
    pub last_result: Option<String>,
    /// `published`, `withdrawn`, or `null` before the first post.
    pub published: Option<String>,
    /// Last post of this member's record (Unix seconds).
    pub last_publish: Option<u64>,
    /// The server's answer to it, or the error.
    pub publish_result: Option<String>,
    /// The last certificate renewal asked of the directory: its outcome
    /// (`null`: none asked since the start).
    #[serde(default)]
    pub renewal: Option<String>,
}

/// This router's identity in the collective.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberStatus {
    /// Certificate name.
    pub name: String,
    /// Member id (16 hex digits).
    pub id: String,
    /// Collective root public key (hex).
    pub collective: String,
    /// Certificate end of validity (Unix seconds).
    pub cert_not_after: u64,
    /// Roles in the certificate, comma separated.
    pub roles: String,
}

/// The client role.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientStatus {
    /// MPTCP connections this host opened.
    pub connections: Vec<ConnectionStatus>,
    /// Configured waypoints.
    pub peers: Vec<PeerStatus>,
    /// The transparent LAN proxy, when on.
    #[serde(default)]
    pub lan_proxy: Option<LanProxyStatus>,
    /// The waypoint scoreboard per destination prefix.
    #[serde(default)]
    pub scores: Vec<ScoreStatus>,
}

/// The transparent LAN proxy: its counters, policy and limits.
///
/// ```json
/// { "active": 3, "accepted": 120, "refused_limit": 0, "refused_special": 0,
///   "refused_direct": 0, "connect_failed": 1, "plain_tcp": 4, "fell_back": 1,
///   "resets": 2, "bytes_up": 48213, "bytes_down": 90312744, "fallback_cached": 1,
///   "detour_policy": "tls-after-handshake", "max_conns": 2031, "paused": false,
///   "pauses": 0, "wan_interfaces": ["pppoe-wan"], "follow_firewall": true,
///   "firewall_changes": 2 }
/// ```
///
/// `paused` is true while the proxy holds `max_conns` connections (or ran
/// out of open files): interception is off and new LAN connections go
/// direct until it is back under 90% of the cap; `pauses` counts such
/// episodes since start (each is logged once). `max_conns` is derived from
/// the open-file limit read at start (a quarter of what it fits is kept for
/// connections queued before the pause), lowered by `proxy_max_conns`.
/// `wan_interfaces` are the default routes' interfaces: only flows routed
/// to them are intercepted (empty: nothing is). `follow_firewall` says
/// whether only flows the router's firewall has forwarded are intercepted;
/// `firewall_changes` counts the ruleset changes that made the proxy forget
/// the firewall's verdicts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LanProxyStatus {
    /// Counters since start (flattened into this object).
    #[serde(flatten)]
    pub counters: crate::proxy::Counters,
    /// `tls-after-handshake`, `all` or `none`.
    pub detour_policy: String,
    /// Interception pauses at this many open connections.
    #[serde(default)]
    pub max_conns: u32,
    /// Interception paused: the proxy is full; new LAN flows go direct.
    #[serde(default)]
    pub paused: bool,
    /// Pauses since start.
    #[serde(default)]
    pub pauses: u64,
    /// Only flows routed to these interfaces are intercepted.
    #[serde(default)]
    pub wan_interfaces: Vec<String>,
    /// Only flows the firewall has forwarded are intercepted.
    #[serde(default)]
    pub follow_firewall: bool,
    /// Ruleset changes that made the proxy ask the firewall again.
    #[serde(default)]
    pub firewall_changes: u64,
    /// Converted connections per converter (`option convert 'auto'`).
    #[serde(default)]
    pub converters: Vec<ConverterUse>,
}

/// One MPTCP connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectionStatus {
    /// Kernel token, `0x` and 8 hex digits.
    pub token: String,
    /// Local address of the initial subflow.
    pub local: String,
    /// The server.
    pub remote: String,
    /// `connecting` until MPTCP ESTABLISHED, then `established`.
    pub state: String,
    /// The LAN device this connection carries (proxied connections only).
    #[serde(default)]
    pub lan_client: Option<String>,
    /// `open`, or why detours wait or are never added.
    #[serde(default)]
    pub detour_gate: String,
    /// The direct subflow first, then detours.
    pub subflows: Vec<SubflowStatus>,
}

/// One subflow (or a detour not yet a subflow).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubflowStatus {
    /// `direct` or `detour`.
    pub path: String,
    /// Waypoint name for detours.
    pub waypoint: Option<String>,
    /// `nat` or `vpn` for detours.
    pub tunnel: Option<String>,
    /// Local address, once known.
    pub local: Option<String>,
    /// Remote address (waypoint and granted port for NAT detours), once known.
    pub remote: Option<String>,
    /// `requesting`, `connecting`, `established` or `failed`.
    pub state: String,
    /// Why it failed.
    pub detail: Option<String>,
    /// Connection ESTABLISHED (or the end of the hold of a detour created
    /// late, for the connection's rate alone) → this subflow's
    /// SUB_ESTABLISHED, in ms.
    pub setup_ms: Option<u64>,
    /// Detours: `probing`, `active` or `backup`.
    #[serde(default)]
    pub role: Option<String>,
    /// Smoothed throughput, kbit/s.
    #[serde(default)]
    pub rate_kbit: Option<f64>,
    /// Smoothed RTT, ms.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// Smoothed retransmitted share of sent segments, percent.
    #[serde(default)]
    pub loss_pct: Option<f64>,
    /// Bytes carried since first measured.
    #[serde(default)]
    pub bytes: Option<u64>,
}

/// One scoreboard entry: a waypoint's record for a destination prefix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScoreStatus {
    /// Waypoint name.
    pub waypoint: String,
    /// Destination prefix (`a.b.c.0/24`, `x:y:z::/48`).
    pub prefix: String,
    /// Discounted mean reward, 0-1.
    pub mean: f64,
    /// Discounted number of rewards.
    pub weight: f64,
    /// Rewards ever recorded.
    pub count: u64,
}

/// A configured waypoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    /// Name.
    pub name: String,
    /// Signaling address.
    pub address: String,
    /// `nat` or `vpn`.
    pub tunnel: String,
    /// False while held down after it stopped answering.
    pub up: bool,
    /// Last signaling round trip in ms.
    pub rtt_ms: Option<f64>,
    /// VPN peers: `up`, `requesting` or `idle`.
    #[serde(default)]
    pub vpn_state: Option<String>,
    /// VPN peers: our tunnel address while up.
    #[serde(default)]
    pub vpn_address: Option<String>,
    /// VPN peers: why the last attempt failed.
    #[serde(default)]
    pub vpn_error: Option<String>,
    /// Discounted mean reward over every destination, 0-1.
    #[serde(default)]
    pub score: Option<f64>,
    /// Detours it was scored on.
    #[serde(default)]
    pub detours_scored: u64,
}

/// The waypoint role.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WaypointStatus {
    /// Signaling sockets.
    pub listen: Vec<String>,
    /// Live NAT tunnels.
    pub grants: Vec<GrantStatus>,
    /// Datagrams received.
    pub datagrams: u64,
    /// Grants sent (new, renewed, repeated).
    pub granted: u64,
    /// Refusals by reason: the names of `proto::RefusalReason`, plus
    /// `WrongSource` (a request from another address than it names) and
    /// `garbage` (undecodable); `RateLimited` also counts datagrams dropped
    /// unread because their sender was over its rate.
    pub refused: BTreeMap<String, u64>,
    /// Donation rate cap, kbit/s (0: none).
    #[serde(default)]
    pub donate_kbit: u32,
    /// Monthly donation cap, bytes (0: none).
    #[serde(default)]
    pub donate_monthly_bytes: u64,
    /// Detoured and converted bytes this month (counted only with a
    /// monthly cap; saved
    /// every 30 s and across restarts).
    #[serde(default)]
    pub donated_month_bytes: u64,
    /// Why new tunnels are refused for now ("this month's donation is used
    /// up: ..."), or `null` while the waypoint grants.
    #[serde(default)]
    pub refusing: Option<String>,
    /// Live VPN tunnels (empty without `vpn_subnet`).
    #[serde(default)]
    pub vpn_peers: Vec<VpnPeerStatus>,
    /// The converter (`option convert '1'`), or `null`.
    #[serde(default)]
    pub converter: Option<ConverterStatus>,
    /// Ended NAT tunnels whose conntrack flows are still being deleted
    /// (by the daemon's conntrack thread; usually 0 within milliseconds).
    #[serde(default)]
    pub ending_tunnels: usize,
}

/// The converter role (issue 17): `{ "port": 7447, "accepted": 12,
/// "converted": 10, "refused": { "Not Authorized": 2 }, "bytes_up": 1200,
/// "bytes_down": 9000000, "conversions": [ { "member": "bob", "client":
/// "10.0.1.1:40312", "destination": "10.0.3.2:5201", "bytes_up": 100,
/// "bytes_down": 8000, "age_s": 3 } ] }`. `refused` counts refusals by their
/// RFC 8803 error name; bytes count finished conversions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConverterStatus {
    /// The MPTCP listening port.
    pub port: u16,
    /// Connections accepted.
    pub accepted: u64,
    /// Conversions admitted.
    pub converted: u64,
    /// Refusals by RFC 8803 error name.
    pub refused: BTreeMap<String, u64>,
    /// Bytes client → server of finished conversions.
    pub bytes_up: u64,
    /// Bytes server → client of finished conversions.
    pub bytes_down: u64,
    /// Running conversions.
    pub conversions: Vec<ConversionStatus>,
}

/// One running conversion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConversionStatus {
    /// Member name.
    pub member: String,
    /// Where the MPTCP connection comes from.
    pub client: String,
    /// The plain TCP server.
    pub destination: String,
    /// Bytes client → server so far.
    pub bytes_up: u64,
    /// Bytes server → client so far.
    pub bytes_down: u64,
    /// Seconds since the server answered.
    pub age_s: u64,
}

/// Per converter, in `client.lan_proxy.converters` (defined with the
/// LAN proxy's converters, [`crate::proxy::convert`]).
pub use crate::proxy::convert::ConverterUse;

/// One member's live VPN tunnel on this waypoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VpnPeerStatus {
    /// Member name.
    pub member: String,
    /// Member id.
    pub member_id: String,
    /// Its tunnel address.
    pub address: String,
    /// Where its request came from.
    pub client: String,
    /// Its WireGuard public key (base64).
    pub wg_key: String,
    /// Seconds since granted.
    pub age_s: u64,
    /// Seconds until it ends unless renewed.
    pub expires_in_s: u64,
}

/// One live NAT tunnel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GrantStatus {
    /// Member name.
    pub member: String,
    /// Member id.
    pub member_id: String,
    /// Client address as seen by the waypoint.
    pub client: String,
    /// Allocated port.
    pub port: u16,
    /// Destination.
    pub destination: String,
    /// Seconds since granted.
    pub age_s: u64,
    /// Seconds left unless renewed.
    pub expires_in_s: u64,
    /// Grants holding it: connections of the member from that client to
    /// that destination share one tunnel.
    #[serde(default)]
    pub holders: usize,
}
