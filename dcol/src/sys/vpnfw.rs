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
//!   addresses: a route check, not an address list); then destinations in the
//!   owner's allow list pass; local, private, loopback, link-local, multicast
//!   and reserved destinations are dropped (the special-purpose table of
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
use crate::config::Cidr;
use crate::special;

/// Destinations no tunnel may reach (unless allowed): the special-purpose
/// table ([`crate::special::deny_blocks`]), as an nft set literal.
fn deny(v6: bool) -> String {
    let b: Vec<String> = special::deny_blocks(v6)
        .iter()
        .map(|c| c.to_string())
        .collect();
    b.join(", ")
}

/// The `nft -f` script.
pub fn ruleset(
    table: &str,
    ifname: &str,
    subnet: &Cidr,
    subnet6: Option<&Cidr>,
    allow: &[Cidr],
) -> String {
    let set = |v4: bool| {
        let e: Vec<String> = allow
            .iter()
            .filter(|c| c.addr.is_ipv4() == v4)
            .map(|c| c.to_string())
            .collect();
        if e.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", e.join(", "))
        }
    };
    let masq6 = subnet6
        .map(|s6| format!("\t\tip6 saddr {s6} oifname != \"{ifname}\" masquerade\n"))
        .unwrap_or_default();
    format!(
        "table inet {table} {{
\tset allow4 {{ type ipv4_addr; flags interval;{a4} }}
\tset allow6 {{ type ipv6_addr; flags interval;{a6} }}
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
",
        a4 = set(true),
        a6 = set(false),
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
        allow: &[Cidr],
    ) -> Result<VpnFirewall, SysError> {
        let mut sock = NfSocket::open()?;
        if table_exists_on(&mut sock, table)? {
            delete_table(&mut sock, table)?;
        }
        run_nft(&ruleset(table, ifname, subnet, subnet6, allow))?;
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
        let r = ruleset(
            "dcol_vpn",
            "dcolwg",
            &"10.200.7.0/24".parse().unwrap(),
            None,
            &["10.0.3.0/24".parse().unwrap()],
        );
        assert!(r.contains("iifname \"dcolwg\" drop"), "{r}");
        assert!(r.contains("elements = { 10.0.3.0/24 }"), "{r}");
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
    /// is set, and never to the LAN (which no deny list names); a crashed
    /// run's table is replaced; `destroy` leaves nothing.
    #[test]
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
        let create = move || VpnFirewall::create("dcolvpntest", "tw0", &subnet, None, &[]);
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
