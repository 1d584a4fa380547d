//! What a reload does to each role, decided from the configuration in
//! force, the new one, what changed in the identity and which roles run,
//! without touching anything ([`plan`]); the daemon then carries it out
//! (`super::reload`).
//!
//! In place, live tunnels and connections kept: log level; identity
//! (certificate, key) and revocations; client tunables and detour policy;
//! LAN interfaces and bypass lists; waypoint lease length, caps, allowed
//! destinations, listen addresses, evidence log. With a restart of the
//! role: a new collective root (both roles), a new key, NAT port range,
//! table or VPN settings (the waypoint: tunnels revoked), a new proxy port
//! (proxied connections reset), new NAT traversal settings. A changed peer
//! list rebuilds the client's core in place (detours of running
//! connections are released). Turning a role on or off starts or stops it;
//! a role that should run but does not (it failed to start) is started.

use super::traversal;
use crate::config::Config;

/// What changed in the identity files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct IdentityChange {
    /// Another collective root key.
    pub root: bool,
    /// Another member key.
    pub key: bool,
    /// Another certificate.
    pub cert: bool,
    /// Other revocations (UCI `list revoked`, the revocation list file).
    pub revocations: bool,
}

impl IdentityChange {
    /// Anything the roles are reconfigured for.
    pub fn any(&self) -> bool {
        self.root || self.cert || self.revocations
    }
}

/// Which roles run now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Running {
    /// The waypoint role.
    pub waypoint: bool,
    /// The client role.
    pub client: bool,
    /// The LAN proxy.
    pub lan: bool,
    /// The membership directory agent.
    pub membership: bool,
    /// NAT traversal.
    pub traversal: bool,
    /// The revocation list file's watch.
    pub revocation_watch: bool,
}

/// Why a role stops or restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// The configuration turns it off.
    Off,
    /// Another collective root key.
    Root,
    /// Another member key (the waypoint's VPN key derives from it).
    Key,
    /// Another NAT port range (or the part of it grants use).
    NatPorts,
    /// Another nftables table name.
    Table,
    /// Other VPN tunnel settings.
    Vpn,
    /// Another LAN proxy port.
    ProxyPort,
    /// The client role it belongs to restarts or stops.
    Client,
    /// Other settings that only a restart applies.
    Settings,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Why::Off => "turned off",
            Why::Root => "new collective root",
            Why::Key => "new member key",
            Why::NatPorts => "new NAT port range",
            Why::Table => "new table name",
            Why::Vpn => "new VPN settings",
            Why::ProxyPort => "new proxy port",
            Why::Client => "the client role restarts",
            Why::Settings => "new settings",
        })
    }
}

/// What a reload does to one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step<C = ()> {
    /// Nothing (off before and after, or nothing of it changed).
    Keep,
    /// Start it.
    Start,
    /// Stop it.
    Stop(Why),
    /// Stop it and start it with the new settings.
    Restart(Why),
    /// Apply the new settings in place.
    Reconfigure(C),
}

/// What changes in a waypoint reconfigured in place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WaypointChange {
    /// The evidence log's place or size: opened anew.
    pub evidence: bool,
    /// The donation caps.
    pub caps: bool,
    /// The signaling addresses: sockets bound anew.
    pub listen: bool,
    /// The allowed destinations or denied ports: the VPN firewall's sets
    /// replaced.
    pub vpn_policy: bool,
}

/// What changes in a client reconfigured in place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ClientChange {
    /// The static peer list: the core is rebuilt (detours released).
    pub peers: bool,
    /// The client section.
    pub settings: bool,
    /// Certificate, key or revocations.
    pub identity: bool,
}

/// A reload's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The new log level, if it changed.
    pub log_level: Option<log::LevelFilter>,
    /// Certificate, root or revocations changed.
    pub identity: bool,
    /// The control socket moves.
    pub control_socket: bool,
    /// `state_dir` changed (applies at the next start).
    pub state_dir: bool,
    /// The revocation list file's watch.
    pub revocation_watch: Step,
    /// The waypoint role.
    pub waypoint: Step<WaypointChange>,
    /// The client role.
    pub client: Step<ClientChange>,
    /// The LAN proxy (runs only with the client).
    pub lan: Step,
    /// The membership directory.
    pub membership: Step,
    /// NAT traversal.
    pub traversal: Step,
}

/// The plan for going from `old` to `new` (both valid; `new` has `enabled
/// '1'`).
pub(crate) fn plan(old: &Config, new: &Config, id: IdentityChange, running: Running) -> Plan {
    let client = client_step(old, new, id, running.client);
    Plan {
        log_level: (new.main.log_level != old.main.log_level).then_some(new.main.log_level),
        identity: id.any(),
        control_socket: new.main.control_socket != old.main.control_socket,
        state_dir: new.main.state_dir != old.main.state_dir,
        revocation_watch: revocation_watch_step(old, new, running.revocation_watch),
        waypoint: waypoint_step(old, new, id, running.waypoint),
        lan: lan_step(old, new, &client, running.lan),
        client,
        membership: membership_step(new, running.membership),
        traversal: traversal_step(old, new, running.traversal),
    }
}

/// Why the waypoint must restart to apply `new`, if it must.
fn waypoint_restart(old: &Config, new: &Config, id: IdentityChange) -> Option<Why> {
    let (o, n) = (&old.waypoint, &new.waypoint);
    let vpn = |w: &crate::config::WaypointConfig| {
        (
            w.vpn_subnet,
            w.vpn_subnet6,
            w.vpn_port,
            w.vpn_interface.clone(),
        )
    };
    if id.root {
        Some(Why::Root)
    } else if vpn(o) != vpn(n) {
        Some(Why::Vpn)
    } else if id.key {
        Some(Why::Key)
    } else if o.nat_ports != n.nat_ports || o.grant_ports() != n.grant_ports() {
        Some(Why::NatPorts)
    } else if o.table != n.table {
        Some(Why::Table)
    } else {
        None
    }
}

fn waypoint_step(
    old: &Config,
    new: &Config,
    id: IdentityChange,
    running: bool,
) -> Step<WaypointChange> {
    let (o, n) = (&old.waypoint, &new.waypoint);
    match (running, n.enabled) {
        (false, false) => Step::Keep,
        (false, true) => Step::Start,
        (true, false) => Step::Stop(Why::Off),
        (true, true) => match waypoint_restart(old, new, id) {
            Some(why) => Step::Restart(why),
            None if o != n || id.any() => Step::Reconfigure(WaypointChange {
                evidence: (&o.evidence_dir, o.evidence_max_kb)
                    != (&n.evidence_dir, n.evidence_max_kb),
                caps: (o.donate_kbit, o.donate_monthly_bytes)
                    != (n.donate_kbit, n.donate_monthly_bytes),
                listen: o.listen != n.listen,
                vpn_policy: (&o.allow_destination, &o.deny_port)
                    != (&n.allow_destination, &n.deny_port),
            }),
            None => Step::Keep,
        },
    }
}

fn client_step(
    old: &Config,
    new: &Config,
    id: IdentityChange,
    running: bool,
) -> Step<ClientChange> {
    let change = ClientChange {
        peers: old.peers != new.peers,
        settings: old.client != new.client,
        identity: id.any(),
    };
    match (running, new.client.enabled) {
        (false, false) => Step::Keep,
        (false, true) => Step::Start,
        (true, false) => Step::Stop(Why::Off),
        (true, true) if id.root => Step::Restart(Why::Root),
        (true, true) if change != ClientChange::default() => Step::Reconfigure(change),
        (true, true) => Step::Keep,
    }
}

/// The LAN proxy follows its client role: it stops and starts with it.
fn lan_step(old: &Config, new: &Config, client: &Step<ClientChange>, running: bool) -> Step {
    let on = new.client.enabled && new.client.lan_proxy;
    let stop = |why| if running { Step::Stop(why) } else { Step::Keep };
    match client {
        Step::Stop(_) => stop(Why::Client),
        Step::Start | Step::Restart(_) if !on => stop(Why::Off),
        Step::Restart(_) if running => Step::Restart(Why::Client),
        Step::Start | Step::Restart(_) => Step::Start,
        Step::Keep | Step::Reconfigure(_) => match (running, on) {
            (false, false) => Step::Keep,
            (false, true) => Step::Start,
            (true, false) => Step::Stop(Why::Off),
            (true, true) if old.client.proxy_port != new.client.proxy_port => {
                Step::Restart(Why::ProxyPort)
            }
            (true, true)
                if old.client != new.client
                    || old.waypoint.table != new.waypoint.table
                    || converters(old).ne(converters(new)) =>
            {
                Step::Reconfigure(())
            }
            (true, true) => Step::Keep,
        },
    }
}

/// The peers that convert (the LAN proxy's converters).
fn converters(c: &Config) -> impl Iterator<Item = &crate::config::PeerConfig> {
    c.peers.iter().filter(|p| p.convert)
}

/// The directory agent runs while `option directory` is set; a running one
/// is always told the new configuration (it decides what to publish).
fn membership_step(new: &Config, running: bool) -> Step {
    let on = new.directory.url.is_some() && new.directory.publish_url().is_some();
    match (running, on) {
        (false, false) => Step::Keep,
        (false, true) => Step::Start,
        (true, false) => Step::Stop(Why::Off),
        (true, true) => Step::Reconfigure(()),
    }
}

fn traversal_step(old: &Config, new: &Config, running: bool) -> Step {
    let new_settings = traversal::settings(new);
    match (running, new_settings.is_some()) {
        (false, false) => Step::Keep,
        (false, true) => Step::Start,
        (true, false) => Step::Stop(Why::Off),
        (true, true) if traversal::settings(old) != new_settings => Step::Restart(Why::Settings),
        (true, true) => Step::Keep,
    }
}

fn revocation_watch_step(old: &Config, new: &Config, running: bool) -> Step {
    let (o, n) = (&old.main.revocation_list, &new.main.revocation_list);
    match (running, n.is_some()) {
        (false, false) => Step::Keep,
        (false, true) => Step::Start,
        (true, false) => Step::Stop(Why::Off),
        (true, true) if o != n => Step::Restart(Why::Settings),
        (true, true) => Step::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both roles on, the LAN proxy too, with a directory and a peer.
    fn base() -> Config {
        let mut c = Config::default();
        c.client.enabled = true;
        c.client.lan_proxy = true;
        c.waypoint.enabled = true;
        c.waypoint.upnp = false;
        c.peers.push(crate::config::PeerConfig {
            name: "alice".into(),
            address: "203.0.113.5:7447".parse().unwrap(),
            tunnel: crate::types::TunnelKind::Nat,
            convert: false,
        });
        c
    }

    fn all() -> Running {
        Running {
            waypoint: true,
            client: true,
            lan: true,
            membership: false,
            traversal: false,
            revocation_watch: false,
        }
    }

    /// The client's step when only the identity changed.
    fn identity_only() -> Step<ClientChange> {
        Step::Reconfigure(ClientChange {
            identity: true,
            ..Default::default()
        })
    }

    fn after(f: impl FnOnce(&mut Config)) -> Plan {
        let old = base();
        let mut new = base();
        f(&mut new);
        plan(&old, &new, IdentityChange::default(), all())
    }

    #[test]
    fn nothing_changed_keeps_everything() {
        let p = after(|_| {});
        assert_eq!(p.log_level, None);
        assert!(!p.identity && !p.control_socket && !p.state_dir);
        assert_eq!(p.waypoint, Step::Keep);
        assert_eq!(p.client, Step::Keep);
        assert_eq!(p.lan, Step::Keep);
        assert_eq!(p.membership, Step::Keep);
        assert_eq!(p.traversal, Step::Keep);
        assert_eq!(p.revocation_watch, Step::Keep);
    }

    #[test]
    fn tunables_apply_in_place() {
        let p = after(|c| {
            c.main.log_level = log::LevelFilter::Debug;
            c.client.max_detours = 1;
            c.waypoint.lease_s = 60;
        });
        assert_eq!(p.log_level, Some(log::LevelFilter::Debug));
        assert_eq!(
            p.client,
            Step::Reconfigure(ClientChange {
                settings: true,
                ..Default::default()
            })
        );
        assert_eq!(p.waypoint, Step::Reconfigure(WaypointChange::default()));
        // The LAN proxy hears of every client change (its rules may differ).
        assert_eq!(p.lan, Step::Reconfigure(()));
        let p = after(|c| {
            c.waypoint.donate_kbit = 8000;
            c.waypoint.listen = vec!["0.0.0.0:7000".parse().unwrap()];
            c.waypoint.evidence_max_kb = 0;
        });
        assert_eq!(
            p.waypoint,
            Step::Reconfigure(WaypointChange {
                evidence: true,
                caps: true,
                listen: true,
                vpn_policy: false,
            })
        );
        assert_eq!(p.client, Step::Keep);
        assert_eq!(p.lan, Step::Keep);
        // A converter peer more: the LAN proxy takes it in place.
        let p = after(|c| c.peers[0].convert = true);
        assert_eq!(p.lan, Step::Reconfigure(()));
        // The destination rules go to the VPN firewall too.
        let p = after(|c| c.waypoint.deny_port.clear());
        assert_eq!(
            p.waypoint,
            Step::Reconfigure(WaypointChange {
                vpn_policy: true,
                ..Default::default()
            })
        );
    }

    #[test]
    fn new_peers_rebuild_the_client_in_place() {
        let p = after(|c| c.peers.clear());
        assert_eq!(
            p.client,
            Step::Reconfigure(ClientChange {
                peers: true,
                ..Default::default()
            })
        );
        assert_eq!(p.lan, Step::Keep);
        assert_eq!(p.waypoint, Step::Keep);
    }

    #[test]
    fn what_only_a_restart_applies() {
        for (f, why) in [
            (
                (|c: &mut Config| c.waypoint.nat_ports = (41000, 41999)) as fn(&mut Config),
                Why::NatPorts,
            ),
            (|c| c.waypoint.table = "other".into(), Why::Table),
            (|c| c.waypoint.vpn_port = 51821, Why::Vpn),
            // With UPnP on, grants use only the first 32 ports of the range.
            (|c| c.waypoint.upnp = true, Why::NatPorts),
        ] {
            assert_eq!(after(f).waypoint, Step::Restart(why));
        }
        // The table name is the LAN proxy's business too (its own tables'
        // changes say nothing about the firewall).
        assert_eq!(
            after(|c| c.waypoint.table = "x".into()).lan,
            Step::Reconfigure(())
        );
        let p = after(|c| c.client.proxy_port = 7449);
        assert_eq!(p.lan, Step::Restart(Why::ProxyPort));
        let old = base();
        let p = plan(
            &old,
            &old,
            IdentityChange {
                root: true,
                ..Default::default()
            },
            all(),
        );
        assert!(p.identity);
        assert_eq!(p.waypoint, Step::Restart(Why::Root));
        assert_eq!(p.client, Step::Restart(Why::Root));
        assert_eq!(p.lan, Step::Restart(Why::Client));
        let p = plan(
            &old,
            &old,
            IdentityChange {
                key: true,
                cert: true,
                ..Default::default()
            },
            all(),
        );
        assert_eq!(p.waypoint, Step::Restart(Why::Key));
        assert_eq!(p.client, identity_only());
    }

    #[test]
    fn revocations_reconfigure_both_roles() {
        let old = base();
        let id = IdentityChange {
            revocations: true,
            ..Default::default()
        };
        let p = plan(&old, &old, id, all());
        assert!(p.identity);
        assert_eq!(p.waypoint, Step::Reconfigure(WaypointChange::default()));
        assert_eq!(p.client, identity_only());
    }

    #[test]
    fn roles_turned_on_and_off() {
        let p = after(|c| {
            c.waypoint.enabled = false;
            c.client.enabled = false;
        });
        assert_eq!(p.waypoint, Step::Stop(Why::Off));
        assert_eq!(p.client, Step::Stop(Why::Off));
        assert_eq!(p.lan, Step::Stop(Why::Client));
        let p = after(|c| c.client.lan_proxy = false);
        assert_eq!(p.lan, Step::Stop(Why::Off));
        // Off before: started; a role that failed to start is tried again.
        let old = base();
        let none = Running::default();
        let p = plan(&old, &old, IdentityChange::default(), none);
        assert_eq!(p.waypoint, Step::Start);
        assert_eq!(p.client, Step::Start);
        assert_eq!(p.lan, Step::Start);
        let p = plan(
            &old,
            &old,
            IdentityChange::default(),
            Running {
                lan: false,
                ..all()
            },
        );
        assert_eq!(p.lan, Step::Start);
        // A client restarted without its LAN proxy leaves the proxy stopped.
        let mut new = base();
        new.client.lan_proxy = false;
        let root = IdentityChange {
            root: true,
            ..Default::default()
        };
        assert_eq!(plan(&old, &new, root, all()).lan, Step::Stop(Why::Off));
    }

    #[test]
    fn directory_traversal_and_revocation_list() {
        let p = after(|c| {
            c.directory.url =
                Some(crate::http::Url::parse("http://dir.example:7450/snapshot").unwrap());
            c.waypoint.stun_servers = vec!["stun.example:3478".into()];
            c.main.revocation_list = Some("/etc/dcol/revoked.list".into());
        });
        assert_eq!(p.membership, Step::Start);
        assert_eq!(p.traversal, Step::Start);
        assert_eq!(p.revocation_watch, Step::Start);
        let old = {
            let mut c = base();
            c.directory.url =
                Some(crate::http::Url::parse("http://dir.example:7450/snapshot").unwrap());
            c.waypoint.upnp = true;
            c.main.revocation_list = Some("/etc/dcol/revoked.list".into());
            c
        };
        let running = Running {
            membership: true,
            traversal: true,
            revocation_watch: true,
            ..all()
        };
        let p = plan(&old, &old, IdentityChange::default(), running);
        assert_eq!(p.membership, Step::Reconfigure(()));
        assert_eq!(p.traversal, Step::Keep);
        assert_eq!(p.revocation_watch, Step::Keep);
        let mut new = old.clone();
        new.waypoint.upnp_lease_s = 600;
        new.main.revocation_list = Some("/tmp/other.list".into());
        let p = plan(&old, &new, IdentityChange::default(), running);
        assert_eq!(p.traversal, Step::Restart(Why::Settings));
        assert_eq!(p.revocation_watch, Step::Restart(Why::Settings));
        new.directory.url = None;
        new.waypoint.enabled = false;
        new.main.revocation_list = None;
        let p = plan(&old, &new, IdentityChange::default(), running);
        assert_eq!(p.membership, Step::Stop(Why::Off));
        assert_eq!(p.traversal, Step::Stop(Why::Off));
        assert_eq!(p.revocation_watch, Step::Stop(Why::Off));
    }

    #[test]
    fn control_socket_and_state_dir() {
        let p = after(|c| {
            c.main.control_socket = "/tmp/other.sock".into();
            c.main.state_dir = "/tmp/state".into();
        });
        assert!(p.control_socket && p.state_dir);
        assert_eq!(p.waypoint, Step::Keep);
    }
}
