//! Interception of LAN devices' TCP for the transparent proxy: an nftables
//! table `inet <name>_lan` whose prerouting rule REDIRECTs new TCP connections
//! arriving on the served LAN interfaces to the proxy's port — but only while
//! the daemon is alive.
//!
//! Fail-open by construction: the redirect rule matches only if the set `alive`
//! holds an element, which the daemon re-adds with a short timeout (a
//! heartbeat). If the daemon is stopped or killed (`kill -9`), the element
//! expires within [`ALIVE_TTL`] and new LAN connections are routed normally,
//! without the daemon. A restarted daemon replaces the table.
//!
//! REDIRECT (+ `SO_ORIGINAL_DST`) rather than TPROXY: it needs no policy route,
//! no `IP_TRANSPARENT` listener and no routing mark, so there is less kernel
//! state to leave behind, and connections already established when the daemon
//! starts are untouched (NAT applies to new connections only).

use std::time::Duration;

use super::netlink::{NlSocket, NETLINK_NETFILTER};
use super::nft::{delete_table, run_nft, set_key_msg, table_exists_on, SUBSYS};
use super::SysError;
use crate::config::Cidr;

/// How long interception outlives the daemon's last heartbeat.
pub const ALIVE_TTL: Duration = Duration::from_secs(2);
/// How often the daemon should call [`LanIntercept::heartbeat`].
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// `IPPROTO_TCP` as the key of the `alive` set (type `inet_proto`: one byte;
/// the kernel wants exactly the set's key length).
const ALIVE_KEY: [u8; 1] = [6];

/// What to intercept.
#[derive(Debug, Clone)]
pub struct InterceptSpec {
    /// LAN interfaces whose new TCP connections are redirected.
    pub interfaces: Vec<String>,
    /// The proxy's listening port (on every address of the router).
    pub port: u16,
    /// Destinations never intercepted.
    pub bypass: Vec<Cidr>,
    /// Destination ports never intercepted.
    pub bypass_ports: Vec<u16>,
}

fn check_ifname(n: &str) -> Result<(), SysError> {
    let ok = !n.is_empty()
        && n.len() < 16
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SysError::Unsupported(format!(
            "invalid interface name {n:?}"
        )))
    }
}

/// The `nft -f` script for `spec` in table `inet <table>`.
pub fn ruleset(table: &str, spec: &InterceptSpec) -> Result<String, SysError> {
    for i in &spec.interfaces {
        check_ifname(i)?;
    }
    let ifaces = spec
        .interfaces
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let cidrs = |v4: bool| {
        spec.bypass
            .iter()
            .filter(|c| c.addr.is_ipv4() == v4)
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
    };
    let set = |name: &str, ty: &str, elems: Vec<String>| {
        let e = if elems.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", elems.join(", "))
        };
        format!("\tset {name} {{ type {ty}; flags interval;{e} }}\n")
    };
    let ports = if spec.bypass_ports.is_empty() {
        String::new()
    } else {
        let p = spec
            .bypass_ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        format!("\t\ttcp dport {{ {p} }} return\n")
    };
    Ok(format!(
        "table inet {table} {{
\tset alive {{ type inet_proto; flags timeout; }}
{b4}{b6}\tchain prerouting {{
\t\ttype nat hook prerouting priority dstnat - 5; policy accept;
\t\tiifname != {{ {ifaces} }} return
\t\tmeta l4proto != tcp return
\t\tfib daddr type {{ local, broadcast, multicast }} return
\t\tip daddr @bypass4 return
\t\tip6 daddr @bypass6 return
{ports}\t\tmeta l4proto tcp meta l4proto @alive redirect to :{port}
\t}}
}}
",
        b4 = set("bypass4", "ipv4_addr", cidrs(true)),
        b6 = set("bypass6", "ipv6_addr", cidrs(false)),
        port = spec.port,
    ))
}

/// The live interception table; [`LanIntercept::destroy`] removes it.
#[derive(Debug)]
pub struct LanIntercept {
    table: String,
    sock: NlSocket,
}

impl LanIntercept {
    /// Replaces a leftover table of that name and creates the rules. The
    /// interception is off until the first [`LanIntercept::heartbeat`].
    pub fn create(table: &str, spec: &InterceptSpec) -> Result<LanIntercept, SysError> {
        let rules = ruleset(table, spec)?;
        let mut sock = NlSocket::open(NETLINK_NETFILTER)?;
        if table_exists_on(&mut sock, table)? {
            log::info!("lan proxy: replacing table inet {table}");
            delete_table(&mut sock, table)?;
        }
        run_nft(&rules)?;
        Ok(LanIntercept {
            table: table.to_owned(),
            sock,
        })
    }

    /// Changes interfaces, port or bypass lists in place, in one transaction:
    /// the table, its base chain and the `alive` set stay, so interception
    /// never lapses and connections already redirected keep their NAT
    /// bindings (deleting a NAT base chain makes the kernel drop the
    /// conntrack entries it translated).
    pub fn update(&mut self, spec: &InterceptSpec) -> Result<(), SysError> {
        let t = &self.table;
        let script = format!(
            "flush chain inet {t} prerouting\nflush set inet {t} bypass4\nflush set inet {t} bypass6\n{}",
            ruleset(t, spec)?
        );
        run_nft(&script)
    }

    /// Keeps interception on for [`ALIVE_TTL`] from now.
    pub fn heartbeat(&mut self) -> Result<(), SysError> {
        let op = "lan proxy heartbeat";
        let del = set_key_msg(false, &self.table, "alive", &ALIVE_KEY, None);
        let add = set_key_msg(true, &self.table, "alive", &ALIVE_KEY, Some(ALIVE_TTL));
        match self.sock.batch(op, SUBSYS, vec![del, add]) {
            // Not there (first beat, or it expired): just add it.
            Err(SysError::Netlink { errno, .. }) if errno == libc::ENOENT => {
                let add = set_key_msg(true, &self.table, "alive", &ALIVE_KEY, Some(ALIVE_TTL));
                self.sock.batch(op, SUBSYS, vec![add])
            }
            r => r,
        }
    }

    /// Removes the table (netlink; no `nft` binary needed).
    pub fn destroy(mut self) -> Result<(), SysError> {
        delete_table(&mut self.sock, &self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InterceptSpec {
        InterceptSpec {
            interfaces: vec!["br-lan".into(), "wlan0".into()],
            port: 7448,
            bypass: vec![
                "192.168.0.0/16".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            bypass_ports: vec![22, 53],
        }
    }

    #[test]
    fn ruleset_shape() {
        let r = ruleset("dcol_lan", &spec()).unwrap();
        assert!(
            r.contains("iifname != { \"br-lan\", \"wlan0\" } return"),
            "{r}"
        );
        assert!(
            r.contains(
                "set bypass4 { type ipv4_addr; flags interval; elements = { 192.168.0.0/16 }; }"
            ),
            "{r}"
        );
        assert!(r.contains("elements = { fd00::/8 }"), "{r}");
        assert!(r.contains("tcp dport { 22, 53 } return"), "{r}");
        assert!(
            r.contains("meta l4proto tcp meta l4proto @alive redirect to :7448"),
            "{r}"
        );
        let mut bad = spec();
        bad.interfaces = vec!["eth0\"; flush ruleset".into()];
        assert!(ruleset("dcol_lan", &bad).is_err());
    }
}
