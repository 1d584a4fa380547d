//! The waypoint's firewall for VPN tunnels: table `inet <name>` that keeps
//! tunnel traffic away from the router and its LAN and masquerades the rest
//! to the Internet.
//!
//! - set `wan`: the names of the interfaces tunnel traffic may leave by
//!   ([`VpnFirewall::set_wan`]; the daemon gives it the interfaces of the
//!   default routes). It starts empty: nothing leaves the tunnel until set.
//! - `input` (filter): nothing arriving on the tunnel interface reaches the
//!   router itself (the WireGuard UDP packets arrive on the WAN interface).
//! - `forward` (filter): from the tunnel, packets that would leave by an
//!   interface not in `wan` are dropped (the owner's LAN, whatever its
//!   addresses: a route check, not an address list); then TCP and UDP to the
//!   owner's denied ports (set `deny_ports`, `list deny_port`) are dropped;
//!   then destinations in the owner's allow list (sets `allow4`, `allow6`)
//!   pass; local, private, loopback, link-local, multicast and reserved
//!   destinations are dropped (the special-purpose table of
//!   [`crate::special`], as for NAT tunnels in `waypoint::policy`). What
//!   passes gets the detour conntrack mark [`super::nft::DETOUR_CT_MARK`]
//!   (donation caps) and the packet mark [`super::nft::DETOUR_PACKET_MARK`],
//!   which the feed's fw4 include accepts toward fw4's zone `wan` only.
//! - `postrouting` (nat): traffic from the tunnel subnet leaving by another
//!   interface is masqueraded.

use super::nfnl::NfSocket;
use super::nft::{
    delete_table, run_nft, set_names_msgs, table_exists_on, DETOUR_CT_MARK, DETOUR_PACKET_MARK,
    SUBSYS, WAN_SET,
};
use super::SysError;
use crate::special;
use crate::types::{Cidr, PortRange};

/// Destinations no tunnel may reach (unless allowed): the special-purpose
/// table ([`crate::special::deny_blocks`]), as an nft set literal.
fn deny(v6: bool) -> String {
    let b: Vec<String> = special::deny_blocks(v6)
        .iter()
        .map(|c| c.to_string())
        .collect();
    b.join(", ")
}

/// The owner's destination rules for tunnel traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Special-purpose blocks allowed anyway (`list allow_destination`).
    pub allow: Vec<Cidr>,
    /// TCP and UDP destination ports dropped (`list deny_port`).
    pub deny_ports: Vec<PortRange>,
}

/// The `nft -f` lines that fill the policy sets of `table` with `p`
/// (after flushing them when `flush`).
fn policy_script(table: &str, p: &Policy, flush: bool) -> String {
    let mut s = String::new();
    for set in ["allow4", "allow6", "deny_ports"] {
        if flush {
            s.push_str(&format!("flush set inet {table} {set}\n"));
        }
    }
    for (set, v4) in [("allow4", true), ("allow6", false)] {
        let e: Vec<String> = p
            .allow
            .iter()
            .filter(|c| c.addr.is_ipv4() == v4)
            .map(|c| c.to_string())
            .collect();
        if !e.is_empty() {
            s.push_str(&format!(
                "add element inet {table} {set} {{ {} }}\n",
                e.join(", ")
            ));
        }
    }
    let ports: Vec<String> = p.deny_ports.iter().map(|r| r.to_string()).collect();
    if !ports.is_empty() {
        s.push_str(&format!(
            "add element inet {table} deny_ports {{ {} }}\n",
            ports.join(", ")
        ));
    }
    s
}

/// The `nft -f` script.
pub fn ruleset(
    table: &str,
    ifname: &str,
    subnet: &Cidr,
    subnet6: Option<&Cidr>,
    policy: &Policy,
) -> String {
    let masq6 = subnet6
        .map(|s6| format!("\t\tip6 saddr {s6} oifname != \"{ifname}\" masquerade\n"))
        .unwrap_or_default();
    format!(
        "table inet {table} {{
\tset allow4 {{ type ipv4_addr; flags interval; }}
\tset allow6 {{ type ipv6_addr; flags interval; }}
\tset deny_ports {{ type inet_service; flags interval; }}
\tset {WAN_SET} {{ type ifname; }}
\tchain input {{
\t\ttype filter hook input priority filter - 1; policy accept;
\t\tiifname \"{ifname}\" drop
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter - 1; policy accept;
\t\tiifname != \"{ifname}\" return
\t\tfib daddr type {{ local, broadcast, multicast }} drop
\t\toifname != @{WAN_SET} drop
\t\tmeta l4proto {{ tcp, udp }} th dport @deny_ports drop
\t\tip daddr @allow4 {marks} accept
\t\tip6 daddr @allow6 {marks} accept
\t\tip daddr {{ {deny4} }} drop
\t\tip6 daddr {{ {deny6} }} drop
\t\t{marks}
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr {subnet} oifname != \"{ifname}\" masquerade
{masq6}\t}}
}}
{policy}",
        policy = policy_script(table, policy, false),
        marks = format!(
            "ct mark set ct mark | {DETOUR_CT_MARK:#010x} meta mark set meta mark | {DETOUR_PACKET_MARK:#010x}"
        ),
        deny4 = deny(false),
        deny6 = deny(true),
    )
}

/// The live table; [`VpnFirewall::destroy`] removes it.
#[derive(Debug)]
pub struct VpnFirewall {
    table: String,
    sock: NfSocket,
}

impl VpnFirewall {
    /// Replaces a leftover table of that name and creates the rules.
    pub fn create(
        table: &str,
        ifname: &str,
        subnet: &Cidr,
        subnet6: Option<&Cidr>,
        policy: &Policy,
    ) -> Result<VpnFirewall, SysError> {
        let mut sock = NfSocket::open()?;
        if table_exists_on(&mut sock, table)? {
            delete_table(&mut sock, table)?;
        }
        run_nft(&ruleset(table, ifname, subnet, subnet6, policy))?;
        Ok(VpnFirewall {
            table: table.to_owned(),
            sock,
        })
    }

    /// Replaces the WAN interfaces (set `wan`) with `ifnames`, in one batch:
    /// tunnel traffic leaving by any other interface is dropped; an empty
    /// list drops all of it.
    pub fn set_wan(&mut self, ifnames: &[String]) -> Result<(), SysError> {
        let msgs = set_names_msgs(&self.table, WAN_SET, ifnames)?;
        self.sock.batch("nft set VPN wan interfaces", SUBSYS, msgs)
    }

    /// Replaces the allowed blocks and denied ports (a reload), in one
    /// transaction; running flows keep going, new packets meet the new rules.
    pub fn set_policy(&mut self, policy: &Policy) -> Result<(), SysError> {
        run_nft(&policy_script(&self.table, policy, true))
    }

    /// Removes the table.
    pub fn destroy(mut self) -> Result<(), SysError> {
        delete_table(&mut self.sock, &self.table)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    use super::*;
    use crate::sys::netlink::testns::{is_root, star, NsThread};

    #[test]
    fn ruleset_shape() {
        let policy = Policy {
            allow: vec!["10.0.3.0/24".parse().unwrap()],
            deny_ports: vec!["25".parse().unwrap(), "6660-6669".parse().unwrap()],
        };
        let r = ruleset(
            "dcol_vpn",
            "dcolwg",
            &"10.200.7.0/24".parse().unwrap(),
            None,
            &policy,
        );
        assert!(r.contains("iifname \"dcolwg\" drop"), "{r}");
        assert!(
            r.contains("add element inet dcol_vpn allow4 { 10.0.3.0/24 }"),
            "{r}"
        );
        assert!(
            r.contains("add element inet dcol_vpn deny_ports { 25, 6660-6669 }"),
            "{r}"
        );
        assert!(!r.contains("dcol_vpn allow6"), "no empty element list: {r}");
        assert!(
            r.find("@deny_ports drop").unwrap() < r.find("@allow4").unwrap(),
            "denied ports before the allow list"
        );
        assert!(
            r.contains("ip saddr 10.200.7.0/24 oifname != \"dcolwg\" masquerade"),
            "{r}"
        );
        assert!(
            r.find("@allow4").unwrap() < r.find("10.0.0.0/8").unwrap(),
            "allow before deny"
        );
        // The route check comes first: an allowed destination on the LAN is
        // still refused.
        assert!(
            r.find("oifname != @wan drop").unwrap() < r.find("@allow4").unwrap(),
            "{r}"
        );
        assert!(r.contains("set wan { type ifname; }"), "{r}");
        assert_eq!(
            r.matches("ct mark set ct mark | 0x00dc0000 meta mark set meta mark | 0x00dd0000")
                .count(),
            3,
            "every accepted path carries both marks: {r}"
        );
    }

    /// A TCP connection from `ns` to `to`, where `l` listens: the peer `l`
    /// saw, or the error after 2 s.
    fn reach(ns: &NsThread, l: &TcpListener, to: &str) -> std::io::Result<IpAddr> {
        let to: SocketAddr = to.parse().unwrap();
        let _c = ns.run(move || TcpStream::connect_timeout(&to, Duration::from_secs(2)))?;
        // The client's last ACK may still be on its way.
        for _ in 0..100 {
            if let Ok((_, peer)) = l.accept() {
                return Ok(peer.ip());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("connected to {to}, but nothing was accepted")
    }

    /// Root, a router with a stand-in tunnel interface (a veth `tw0` to the
    /// member), a WAN toward a server and a LAN with a public subnet. Tunnel
    /// traffic goes to the server, masqueraded and marked, only once `wan`
    /// is set, and never to the LAN (which no deny list names) nor to a
    /// denied port (changed in place, as on a reload); a crashed
    /// run's table is replaced; `destroy` leaves nothing.
    #[test]
    #[cfg_attr(
        not(dcol_root),
        ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
    )]
    fn root_tunnel_traffic_leaves_by_the_wan_only() {
        if !is_root() {
            eprintln!("SKIP: needs root");
            return;
        }
        let (w, hosts) = star(&[
            ("tw0", "10.200.9.1/24", "ct0", "10.200.9.2/24"),
            ("wan", "11.9.0.1/24", "eth0", "11.9.0.2/24"),
            ("lan", "11.10.0.1/24", "eth0", "11.10.0.2/24"),
        ]);
        let [member, server, lan] = <[NsThread; 3]>::try_from(hosts).ok().expect("three hosts");
        let subnet: Cidr = "10.200.9.0/24".parse().unwrap();
        let create =
            move || VpnFirewall::create("dcolvpntest", "tw0", &subnet, None, &Policy::default());
        let mut fw = w.run(create).expect("create");
        let srv = server.run(|| TcpListener::bind("11.9.0.2:5000")).unwrap();
        let home = lan.run(|| TcpListener::bind("11.10.0.2:5000")).unwrap();
        for l in [&srv, &home] {
            l.set_nonblocking(true).unwrap();
        }
        assert!(
            reach(&member, &srv, "11.9.0.2:5000").is_err(),
            "an empty WAN set lets nothing out"
        );
        fw.set_wan(&["wan".into()]).unwrap();
        assert_eq!(
            reach(&member, &srv, "11.9.0.2:5000").unwrap(),
            "11.9.0.1".parse::<IpAddr>().unwrap(),
            "masqueraded to the WAN"
        );
        let ct = w.out(&["conntrack", "-L", "-p", "tcp", "--orig-port-dst", "5000"]);
        assert!(ct.contains("mark=14417920"), "{ct}");
        assert!(
            reach(&member, &home, "11.10.0.2:5000").is_err(),
            "the tunnel reached the LAN"
        );
        // A reload denies the server's port, then allows it again.
        let deny = Policy {
            allow: Vec::new(),
            deny_ports: vec!["4990-5010".parse().unwrap()],
        };
        // (`nft -f` runs in the calling thread's namespace.)
        let set = |mut fw: VpnFirewall, p: Policy| {
            w.run(move || {
                fw.set_policy(&p).unwrap();
                fw
            })
        };
        let fw = set(fw, deny);
        assert!(
            reach(&member, &srv, "11.9.0.2:5000").is_err(),
            "a denied port was reached"
        );
        let fw = set(fw, Policy::default());
        assert!(reach(&member, &srv, "11.9.0.2:5000").is_ok(), "undenied");
        // Crash, restart: one table, closed again until set.
        drop(fw);
        let fw = w.run(create).expect("second create");
        let tables = w.out(&["nft", "list", "tables"]);
        assert_eq!(tables.matches("dcolvpntest").count(), 1, "{tables}");
        let wan = w.out(&["nft", "list", "set", "inet", "dcolvpntest", WAN_SET]);
        assert!(!wan.contains("elements"), "{wan}");
        fw.destroy().unwrap();
        assert_eq!(w.out(&["nft", "list", "ruleset"]), "", "nothing left");
    }
}
