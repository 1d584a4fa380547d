//! Interception of LAN devices' TCP for the transparent proxy: an nftables
//! table `inet <name>_lan` whose prerouting chain REDIRECTs new TCP
//! connections arriving on the served LAN interfaces to the proxy's port —
//! only flows the router would have forwarded to the Internet anyway, and
//! only while the daemon is alive and has room.
//!
//! A new TCP flow from a LAN interface is redirected only when all of these
//! hold (otherwise it is routed as if dcol were not there, and meets the
//! router's firewall):
//! 1. the `alive` set holds its element: the daemon re-adds it with a short
//!    timeout (a heartbeat) and deletes it when the proxy is nearly full, so
//!    interception lapses within [`ALIVE_TTL`] of a `kill -9` and at once
//!    when the daemon pauses it;
//! 2. the destination's route leaves by a WAN interface (`fib daddr
//!    oifname @wan`; the set is filled by [`LanIntercept::set_wan`] with the
//!    default routes' interfaces, empty = nothing intercepted): traffic to
//!    other LAN subnets, guest networks, VPNs is never taken;
//! 3. the destination is not special-purpose space ([`crate::special`]:
//!    private, CGNAT, link-local, ULA, documentation, NAT64 and 6to4 forms
//!    of those ...) unless the owner allows it (`allow4`/`allow6`), and not
//!    in the owner's bypass lists;
//! 4. with [`InterceptSpec::follow_firewall`]: the router's firewall has
//!    forwarded a new TCP flow with the same interface, source MAC, source
//!    address, destination address and port to the WAN within
//!    [`PERMIT_TTL`]. A base chain of ours in the forward hook, after every
//!    filter (priority [`LEARN_PRIORITY`]), sees exactly the packets the
//!    firewall (fw4, iptables, anything) let through and records them in
//!    `permit4`/`permit6`. A redirected flow goes to the router's input path
//!    and would otherwise never meet the firewall's forward rules
//!    (parental-control blocks, zones without forwarding). The first flow of
//!    each such tuple therefore goes direct; [`LanIntercept::flush_permits`]
//!    forgets every verdict when another table changes ([`RulesetWatch`]);
//! 5. the source is under its caps, counted in the kernel over its open
//!    flows (`ct count`): per MAC and per IPv4 address `max_per_host`, per
//!    IPv6 /64 `max_per_prefix`. Over a cap (or when a counting set is full,
//!    or the interface has no Ethernet header) the flow goes direct.
//!
//! Redirected flows carry the conntrack mark bits [`LAN_CT_MARK`], which the
//! OpenWrt feed's fw4 input include accepts: a guest zone whose input is
//! rejected still reaches the proxy by redirection (and only so).
//!
//! REDIRECT (+ `SO_ORIGINAL_DST`) rather than TPROXY: it needs no policy route,
//! no `IP_TRANSPARENT` listener and no routing mark, so there is less kernel
//! state to leave behind, and connections already established when the daemon
//! starts are untouched (NAT applies to new connections only).

use std::os::fd::BorrowedFd;
use std::time::Duration;

use neli::nl::Nlmsghdr;
use neli::types::Buffer;

use super::netlink::{payload, string, ty, Messages};
use super::nfnl::{NfSocket, Nfgenmsg};
use super::nft::{
    delete_table, flush_set_msg, run_nft, set_key_msg, set_names_msgs, table_exists_on, SUBSYS,
};
use super::SysError;
use crate::special;
use crate::types::Cidr;

/// How long interception outlives the daemon's last heartbeat.
pub const ALIVE_TTL: Duration = Duration::from_secs(2);
/// How often the daemon should call [`LanIntercept::heartbeat`].
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long a forward verdict of the firewall is followed.
pub const PERMIT_TTL: Duration = Duration::from_secs(300);
/// Most verdicts remembered per family; a full set means new tuples go
/// direct.
pub const PERMIT_SIZE: u32 = 8192;
/// New flows per second one MAC may have recorded as verdicts (burst 100).
pub const PERMIT_RATE: u32 = 20;
/// Sources counted at once per counting set (MACs, IPv4 addresses, IPv6
/// /64s); a source that finds the set full goes direct.
pub const COUNT_SIZE: u32 = 4096;
/// Priority of the forward chain that records the firewall's verdicts:
/// after every filter (fw4 and iptables sit at 0), before conntrack confirms.
pub const LEARN_PRIORITY: i32 = 1000;
/// Conntrack mark bits set on redirected flows (OR-ed in, other bits kept).
/// The feed's fw4 input include accepts them:
/// `ct mark & 0x00d10000 == 0x00d10000 accept`. Not a superset of the
/// waypoint's `DETOUR_CT_MARK` (0x00dc0000), nor it of this.
pub const LAN_CT_MARK: u32 = 0x00d1_0000;
/// `IPPROTO_TCP` as the key of the `alive` set (type `inet_proto`: one byte;
/// the kernel wants exactly the set's key length).
const ALIVE_KEY: [u8; 1] = [6];
/// `NFNLGRP_NFTABLES`: ruleset change notifications.
const NFNLGRP_NFTABLES: u32 = 7;
/// `NFT_MSG_NEWGEN`: the end of a committed transaction (no table).
const NFT_MSG_NEWGEN: u8 = 0x0f;
/// `NFPROTO_INET`.
const NFPROTO_INET: u8 = 1;
/// The table name attribute of every nf_tables object message
/// (`NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`,
/// `NFTA_SET_TABLE`, `NFTA_SET_ELEM_LIST_TABLE`, `NFTA_OBJ_TABLE`,
/// `NFTA_FLOWTABLE_TABLE` are all 1).
const NFTA_TABLE: u16 = 1;

/// What to intercept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptSpec {
    /// LAN interfaces whose new TCP connections are redirected.
    pub interfaces: Vec<String>,
    /// The proxy's listening port (on every address of the router).
    pub port: u16,
    /// Destinations never intercepted.
    pub bypass: Vec<Cidr>,
    /// Destination ports never intercepted.
    pub bypass_ports: Vec<u16>,
    /// Special-purpose destinations that may be intercepted all the same.
    pub allow: Vec<Cidr>,
    /// Intercept only what the firewall has forwarded (see the module docs).
    pub follow_firewall: bool,
    /// Open intercepted flows per MAC and per IPv4 address.
    pub max_per_host: u32,
    /// Open intercepted flows per IPv6 /64.
    pub max_per_prefix: u32,
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

/// `"a", "b"` for an nft set expression.
fn quoted(names: &[String]) -> Result<String, SysError> {
    for i in names {
        check_ifname(i)?;
    }
    Ok(names
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", "))
}

/// A named interval set of one family's blocks.
fn cidr_set(name: &str, v6: bool, blocks: &[Cidr]) -> String {
    let ty = if v6 { "ipv6_addr" } else { "ipv4_addr" };
    let elems: Vec<String> = blocks
        .iter()
        .filter(|c| c.addr.is_ipv6() == v6)
        .map(Cidr::to_string)
        .collect();
    let e = if elems.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", elems.join(", "))
    };
    format!("\tset {name} {{ type {ty}; flags interval; auto-merge;{e} }}\n")
}

/// The `nft -f` script for `spec` in table `inet <table>`.
pub fn ruleset(table: &str, spec: &InterceptSpec) -> Result<String, SysError> {
    let ifaces = quoted(&spec.interfaces)?;
    let ports = bypass_ports_rule(&spec.bypass_ports);
    let sets = cidr_sets(spec);
    let (permit, learn) = follow_firewall_rules(spec, &ifaces);
    let ttl = PERMIT_TTL.as_secs();
    Ok(format!(
        "table inet {table} {{
\tset alive {{ type inet_proto; flags timeout; }}
\tset wan {{ typeof fib daddr oifname; }}
\tset wan_out {{ type ifname; }}
{sets}\tset permit4 {{ type ifname . ether_addr . ipv4_addr . ipv4_addr . inet_service; flags dynamic, timeout; timeout {ttl}s; size {PERMIT_SIZE}; }}
\tset permit6 {{ type ifname . ether_addr . ipv6_addr . ipv6_addr . inet_service; flags dynamic, timeout; timeout {ttl}s; size {PERMIT_SIZE}; }}
\tset permit_rate {{ type ether_addr; flags dynamic, timeout; timeout 60s; size {COUNT_SIZE}; }}
\tset per_mac {{ type ether_addr; flags dynamic; size {COUNT_SIZE}; }}
\tset per_host4 {{ type ipv4_addr; flags dynamic; size {COUNT_SIZE}; }}
\tset per_prefix6 {{ type ipv6_addr; flags dynamic; size {COUNT_SIZE}; }}
\tchain prerouting {{
\t\ttype nat hook prerouting priority dstnat - 5; policy accept;
\t\tiifname != {{ {ifaces} }} return
\t\tmeta l4proto tcp meta l4proto @alive goto intercept
\t}}
\tchain intercept {{
\t\tfib daddr type {{ local, broadcast, multicast }} return
\t\tfib daddr oifname != @wan return
\t\tip daddr @bypass4 return
\t\tip6 daddr @bypass6 return
{ports}\t\tip daddr @deny4 ip daddr != @allow4 return
\t\tip6 daddr @deny6 ip6 daddr != @allow6 return
{permit}\t\tadd @per_mac {{ ether saddr ct count {host} }} goto per_address
\t}}
\tchain per_address {{
\t\tmeta nfproto ipv4 add @per_host4 {{ ip saddr ct count {host} }} goto to_proxy
\t\tmeta nfproto ipv6 add @per_prefix6 {{ ip6 saddr & ffff:ffff:ffff:ffff:: ct count {prefix} }} goto to_proxy
\t}}
\tchain to_proxy {{
\t\tmeta l4proto tcp ct mark set ct mark | {LAN_CT_MARK:#010x} redirect to :{port}
\t}}
\tchain learn {{
\t\ttype filter hook forward priority {LEARN_PRIORITY}; policy accept;
{learn}\t}}
}}
",
        host = spec.max_per_host,
        prefix = spec.max_per_prefix,
        port = spec.port,
    ))
}

/// The rule that lets TCP to `ports` pass uncaught (empty: none).
fn bypass_ports_rule(ports: &[u16]) -> String {
    if ports.is_empty() {
        String::new()
    } else {
        let p = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        format!("\t\ttcp dport {{ {p} }} return\n")
    }
}

/// The bypass, deny and allow address sets of both families.
fn cidr_sets(spec: &InterceptSpec) -> String {
    let mut sets = String::new();
    for v6 in [false, true] {
        let f = if v6 { '6' } else { '4' };
        sets.push_str(&cidr_set(&format!("bypass{f}"), v6, &spec.bypass));
        sets.push_str(&cidr_set(
            &format!("deny{f}"),
            v6,
            &special::deny_blocks(v6),
        ));
        sets.push_str(&cidr_set(&format!("allow{f}"), v6, &spec.allow));
    }
    sets
}

/// With `follow_firewall`: the intercept chain's check against the learnt
/// permits, and the forward chain's rules that learn them.
fn follow_firewall_rules(spec: &InterceptSpec, ifaces: &str) -> (String, String) {
    let key4 = "iifname . ether saddr . ip saddr . ip daddr . tcp dport";
    let key6 = "iifname . ether saddr . ip6 saddr . ip6 daddr . tcp dport";
    if spec.follow_firewall {
        (
            format!("\t\t{key4} != @permit4 return\n\t\t{key6} != @permit6 return\n"),
            format!(
                "\t\tiifname != {{ {ifaces} }} return
\t\tmeta l4proto != tcp return
\t\tct state != new return
\t\toifname != @wan_out return
\t\tupdate @permit_rate {{ ether saddr limit rate over {PERMIT_RATE}/second burst 100 packets }} return
\t\tupdate @permit4 {{ {key4} }}
\t\tupdate @permit6 {{ {key6} }}
"
            ),
        )
    } else {
        (String::new(), String::new())
    }
}

/// The script that changes a live table from `old` to `new` in one
/// transaction (see [`LanIntercept::update`]).
fn update_script(
    table: &str,
    old: &InterceptSpec,
    new: &InterceptSpec,
) -> Result<String, SysError> {
    let t = table;
    let mut s = String::new();
    for c in [
        "prerouting",
        "intercept",
        "per_address",
        "to_proxy",
        "learn",
    ] {
        s.push_str(&format!("flush chain inet {t} {c}\n"));
    }
    let mut flush = vec![
        "bypass4", "bypass6", "deny4", "deny6", "allow4", "allow6", "permit4", "permit6",
    ];
    // The counting elements carry the limit they were made with.
    if (old.max_per_host, old.max_per_prefix) != (new.max_per_host, new.max_per_prefix) {
        flush.extend(["per_mac", "per_host4", "per_prefix6"]);
    }
    for set in flush {
        s.push_str(&format!("flush set inet {t} {set}\n"));
    }
    s.push_str(&ruleset(t, new)?);
    Ok(s)
}

/// The live interception table; [`LanIntercept::destroy`] removes it.
#[derive(Debug)]
pub struct LanIntercept {
    table: String,
    sock: NfSocket,
    spec: InterceptSpec,
    wan: Vec<String>,
}

impl LanIntercept {
    /// Replaces a leftover table of that name and creates the rules. The
    /// interception is off until the first [`LanIntercept::heartbeat`], and
    /// intercepts nothing until [`LanIntercept::set_wan`] names the WAN.
    pub fn create(table: &str, spec: &InterceptSpec) -> Result<LanIntercept, SysError> {
        let rules = ruleset(table, spec)?;
        let mut sock = NfSocket::open()?;
        if table_exists_on(&mut sock, table)? {
            log::info!("lan proxy: replacing table inet {table}");
            delete_table(&mut sock, table)?;
        }
        run_nft(&rules)?;
        Ok(LanIntercept {
            table: table.to_owned(),
            sock,
            spec: spec.clone(),
            wan: Vec::new(),
        })
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Changes interfaces, port, lists, limits in place, in one transaction:
    /// the table, its base chains, the `alive` and `wan` sets stay, so
    /// interception never lapses and connections already redirected keep
    /// their NAT bindings (deleting a NAT base chain makes the kernel drop
    /// the conntrack entries it translated). The firewall's verdicts are
    /// forgotten; the per-source counts too when a limit changed.
    pub fn update(&mut self, spec: &InterceptSpec) -> Result<(), SysError> {
        run_nft(&update_script(&self.table, &self.spec, spec)?)?;
        self.spec = spec.clone();
        Ok(())
    }

    /// Intercepts only flows whose destination's route leaves by one of
    /// `ifnames` (the WAN: the default routes' interfaces). Empty: nothing
    /// is intercepted. A changed WAN also forgets the firewall's verdicts.
    pub fn set_wan(&mut self, ifnames: &[String]) -> Result<(), SysError> {
        let mut names = ifnames.to_vec();
        names.sort();
        names.dedup();
        if names == self.wan {
            return Ok(());
        }
        for n in &names {
            check_ifname(n)?;
        }
        // One batch: both WAN sets replaced, the verdicts forgotten.
        let t = &self.table;
        let mut msgs = set_names_msgs(t, "wan", &names)?;
        msgs.extend(set_names_msgs(t, "wan_out", &names)?);
        msgs.push(flush_set_msg(t, "permit4")?);
        msgs.push(flush_set_msg(t, "permit6")?);
        self.sock.batch("lan proxy: WAN interfaces", SUBSYS, msgs)?;
        self.wan = names;
        Ok(())
    }

    /// The WAN interfaces in force.
    pub fn wan(&self) -> &[String] {
        &self.wan
    }

    /// Forgets every forward verdict of the firewall (netlink; no process):
    /// the next flow of each device and destination meets the firewall again.
    pub fn flush_permits(&mut self) -> Result<(), SysError> {
        let msgs = vec![
            flush_set_msg(&self.table, "permit4")?,
            flush_set_msg(&self.table, "permit6")?,
        ];
        self.sock.batch("lan proxy: flush verdicts", SUBSYS, msgs)
    }

    /// Keeps interception on for [`ALIVE_TTL`] from now.
    pub fn heartbeat(&mut self) -> Result<(), SysError> {
        let op = "lan proxy heartbeat";
        let del = set_key_msg(false, &self.table, "alive", &ALIVE_KEY, None)?;
        let add = set_key_msg(true, &self.table, "alive", &ALIVE_KEY, Some(ALIVE_TTL))?;
        match self.sock.batch(op, SUBSYS, vec![del, add.clone()]) {
            // Not there (first beat, or it expired): just add it.
            Err(SysError::Netlink { errno, .. }) if errno == libc::ENOENT => {
                self.sock.batch(op, SUBSYS, vec![add])
            }
            r => r,
        }
    }

    /// Stops interception now (new LAN flows go direct) until the next
    /// [`LanIntercept::heartbeat`].
    pub fn pause(&mut self) -> Result<(), SysError> {
        let del = set_key_msg(false, &self.table, "alive", &ALIVE_KEY, None)?;
        match self.sock.batch("lan proxy pause", SUBSYS, vec![del]) {
            Err(SysError::Netlink { errno, .. }) if errno == libc::ENOENT => Ok(()),
            r => r,
        }
    }

    /// Removes the table (netlink; no `nft` binary needed).
    pub fn destroy(mut self) -> Result<(), SysError> {
        delete_table(&mut self.sock, &self.table)
    }
}

/// Watches the nf_tables ruleset for changes made by others (another
/// table's rule, chain, set or element added or removed: fw4 reloading, a
/// parental-control script adding a MAC to a set, `nft` by hand), so that
/// the firewall's remembered verdicts can be forgotten at once.
#[derive(Debug)]
pub struct RulesetWatch {
    sock: NfSocket,
    own: Vec<String>,
}

impl RulesetWatch {
    /// Subscribes to ruleset notifications; changes to the `inet` tables
    /// named in `own` (the daemon's) are not reported.
    pub fn open(own: Vec<String>) -> Result<RulesetWatch, SysError> {
        // fw4's reload is one burst of many messages.
        let sock = NfSocket::subscribe(NFNLGRP_NFTABLES, 1 << 20)?;
        Ok(RulesetWatch { sock, own })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.fd()
    }

    /// The daemon's tables are now `own`.
    pub fn set_own(&mut self, own: Vec<String>) {
        self.own = own;
    }

    /// Reads what arrived; true when another table changed (or
    /// notifications were lost: then something may have).
    pub fn changed(&mut self) -> bool {
        let mut changed = false;
        loop {
            match self.sock.recv_nowait() {
                Ok(data) => {
                    for m in Messages::new("ruleset notification", data) {
                        changed |= m.map_or(true, |m| foreign_change(&m, &self.own));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return changed,
                Err(e) => {
                    // ENOBUFS: notifications were dropped.
                    log::debug!("lan proxy: ruleset notifications: {e}");
                    changed = true;
                    if e.raw_os_error() != Some(libc::ENOBUFS) {
                        return changed;
                    }
                }
            }
        }
    }
}

/// Whether notification `m` reports a change to a table other than the
/// `inet` tables in `own`. Unreadable messages count as changes.
pub fn foreign_change(m: &Nlmsghdr<u16, Buffer>, own: &[String]) -> bool {
    let [subsys, msg] = m.nl_type().to_be_bytes();
    if subsys != SUBSYS || msg == NFT_MSG_NEWGEN {
        return false;
    }
    let Some(Ok(body)) = payload(m).map(|p| Nfgenmsg::decode("ruleset notification", p)) else {
        return true;
    };
    match body.attrs().iter().find(|a| ty(a) == NFTA_TABLE) {
        Some(a) => {
            let name = string(a);
            !(body.family() == NFPROTO_INET && own.contains(&name))
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::testns::{is_root, NsThread};

    fn spec() -> InterceptSpec {
        InterceptSpec {
            interfaces: vec!["br-lan".into(), "wlan0".into()],
            port: 7448,
            bypass: vec![
                "192.168.0.0/16".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            bypass_ports: vec![22, 53],
            allow: vec!["100.64.0.0/10".parse().unwrap()],
            follow_firewall: true,
            max_per_host: 512,
            max_per_prefix: 1024,
        }
    }

    fn line_of<'a>(r: &'a str, start: &str) -> &'a str {
        r.lines()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no line {start:?} in\n{r}"))
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
                "set bypass4 { type ipv4_addr; flags interval; auto-merge; elements = { 192.168.0.0/16 }; }"
            ),
            "{r}"
        );
        assert!(r.contains("elements = { fd00::/8 }"), "{r}");
        assert!(r.contains("tcp dport { 22, 53 } return"), "{r}");
        assert!(r.contains("meta l4proto tcp meta l4proto @alive goto intercept"));
        assert!(
            r.contains("meta l4proto tcp ct mark set ct mark | 0x00d10000 redirect to :7448"),
            "{r}"
        );
        // Only flows routed to the WAN, and never to special space unless allowed.
        assert!(r.contains("fib daddr oifname != @wan return"), "{r}");
        assert!(r.contains("ip daddr @deny4 ip daddr != @allow4 return"));
        assert!(r.contains("ip6 daddr @deny6 ip6 daddr != @allow6 return"));
        assert!(line_of(&r, "set allow4").contains("elements = { 100.64.0.0/10 }"));
        assert!(!line_of(&r, "set allow6").contains("elements"));
        // Per-source caps, failing open: the goto is the only way on.
        assert!(r.contains("add @per_mac { ether saddr ct count 512 } goto per_address"));
        assert!(r.contains("add @per_host4 { ip saddr ct count 512 } goto to_proxy"));
        assert!(r.contains(
            "add @per_prefix6 { ip6 saddr & ffff:ffff:ffff:ffff:: ct count 1024 } goto to_proxy"
        ));
        // The firewall's verdicts, followed and recorded.
        assert!(r.contains(
            "iifname . ether saddr . ip saddr . ip daddr . tcp dport != @permit4 return"
        ));
        assert!(r.contains(
            "update @permit6 { iifname . ether saddr . ip6 saddr . ip6 daddr . tcp dport }"
        ));
        assert!(r.contains("type filter hook forward priority 1000; policy accept;"));
        let mut bad = spec();
        bad.interfaces = vec!["eth0\"; flush ruleset".into()];
        assert!(ruleset("dcol_lan", &bad).is_err());
    }

    /// The blocks of set `name` in ruleset `r`.
    fn elements(r: &str, name: &str) -> Vec<Cidr> {
        let l = line_of(r, &format!("set {name} "));
        let Some((_, e)) = l.split_once("elements = { ") else {
            return Vec::new();
        };
        let e = e.split(" }").next().unwrap();
        e.split(", ").map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn deny_sets_hold_the_special_table() {
        let r = ruleset("dcol_lan", &spec()).unwrap();
        let (d4, d6) = (elements(&r, "deny4"), elements(&r, "deny6"));
        assert_eq!(d4, special::deny_blocks(false));
        assert_eq!(d6, special::deny_blocks(true));
        let denied = |a: &str| {
            let ip: std::net::IpAddr = a.parse().unwrap();
            d4.iter().chain(&d6).any(|c| c.contains(&ip))
        };
        for a in [
            "10.1.2.3",
            "100.64.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "192.168.100.1",
            "fd00::1",
            "fe80::1",
            "64:ff9b::a00:1",
            "2002:c0a8:101::1",
            "2001:db8::1",
        ] {
            assert!(denied(a), "{a} not denied");
        }
        for a in ["93.184.216.34", "2a00:1450::1", "64:ff9b::5db8:d822"] {
            assert!(!denied(a), "{a} denied");
        }
    }

    #[test]
    fn without_following_the_firewall_nothing_is_learned() {
        let mut s = spec();
        s.follow_firewall = false;
        let r = ruleset("dcol_lan", &s).unwrap();
        assert!(!r.contains("@permit4 return"), "{r}");
        assert!(!r.contains("update @permit4"), "{r}");
        // The base chain is there all the same, so a reload can fill it.
        assert!(r.contains("chain learn {"));
    }

    #[test]
    fn updates_flush_verdicts_and_counts_only_when_limits_change() {
        let old = spec();
        let mut new = spec();
        new.bypass_ports = vec![25];
        let u = update_script("dcol_lan", &old, &new).unwrap();
        assert!(
            u.starts_with("flush chain inet dcol_lan prerouting\n"),
            "{u}"
        );
        assert!(u.contains("flush set inet dcol_lan permit4\n"));
        assert!(!u.contains("per_mac\n"), "{u}");
        assert!(!u.contains("flush set inet dcol_lan wan"), "{u}");
        assert!(!u.contains("flush set inet dcol_lan alive"), "{u}");
        new.max_per_prefix = 10;
        let u = update_script("dcol_lan", &old, &new).unwrap();
        assert!(u.contains("flush set inet dcol_lan per_mac\n"));
        assert!(u.contains("flush set inet dcol_lan per_prefix6\n"));
    }

    /// A notification as the kernel sends it: `type` = subsystem << 8 | msg,
    /// nfgenmsg, then the table attribute.
    fn note(msg: u8, family: u8, table: Option<&str>) -> Vec<u8> {
        let mut payload = vec![family, 0, 0, 0];
        if let Some(t) = table {
            let mut v = t.as_bytes().to_vec();
            v.push(0);
            let len = 4 + v.len();
            payload.extend((len as u16).to_ne_bytes());
            payload.extend(1u16.to_ne_bytes());
            payload.extend(&v);
            while payload.len() % 4 != 0 {
                payload.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend(((16 + payload.len()) as u32).to_ne_bytes());
        m.extend((u16::from(SUBSYS) << 8 | u16::from(msg)).to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend(payload);
        m
    }

    #[test]
    fn foreign_changes_are_told_from_ours() {
        let own = vec!["dcol_lan".to_string(), "dcol".to_string()];
        let check = |bytes: Vec<u8>| {
            let m = Messages::new("test", &bytes).next().unwrap().unwrap();
            foreign_change(&m, &own)
        };
        // fw4 replacing its table, adding a rule, an element to its set.
        assert!(check(note(0, 1, Some("fw4"))));
        assert!(check(note(6, 1, Some("fw4"))));
        assert!(check(note(0x0c, 1, Some("fw4"))));
        // Our heartbeat and the waypoint's grants.
        assert!(!check(note(0x0c, 1, Some("dcol_lan"))));
        assert!(!check(note(0x0e, 1, Some("dcol"))));
        // The same name in another family is someone else's.
        assert!(check(note(6, 2, Some("dcol_lan"))));
        // End of a transaction: says nothing by itself.
        assert!(!check(note(NFT_MSG_NEWGEN, 0, None)));
        // No table: cannot tell, so it counts.
        assert!(check(note(6, 1, None)));
    }

    /// The elements of set `set` of table `inet <t>` in `ns`, as `nft`
    /// lists them, on one line (empty: none).
    fn listed(ns: &NsThread, t: &str, set: &str) -> String {
        let out = ns.out(&["nft", "list", "set", "inet", t, set]);
        let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
        out.split_once("elements = { ")
            .map(|(_, e)| e.split(" }").next().unwrap_or_default().to_owned())
            .unwrap_or_default()
    }

    /// Root, in a fresh namespace: the netlink side of the table (WAN sets,
    /// verdict flushes, heartbeat, pause, ruleset notifications, removal)
    /// against the real kernel, checked with `nft`.
    #[test]
    #[cfg_attr(
        not(dcol_root),
        ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
    )]
    fn root_sets_and_notifications() {
        if !is_root() {
            eprintln!("SKIP: needs root");
            return;
        }
        let ns = NsThread::new();
        let t = "dcoltest_lan";
        let mut l = ns.run(move || LanIntercept::create(t, &spec())).unwrap();
        let mut w = ns
            .run(move || RulesetWatch::open(vec![t.to_owned()]))
            .unwrap();
        assert!(!w.changed(), "creating our own table is no news");
        for set in ["alive", "wan", "wan_out", "permit4"] {
            assert_eq!(listed(&ns, t, set), "", "{set} starts empty");
        }
        let verdict = "\"br-lan\" . 02:00:00:00:00:01 . 192.168.1.2 . 93.184.216.34 . 443";
        let remember = || {
            ns.cmd(&[
                "nft",
                "add",
                "element",
                "inet",
                t,
                "permit4",
                &format!("{{ {verdict} }}"),
            ]);
            assert!(listed(&ns, t, "permit4").contains("93.184.216.34"));
        };
        remember();
        l.set_wan(&["pppoe-wan".into(), "eth1".into()]).unwrap();
        assert_eq!(listed(&ns, t, "wan"), "\"eth1\", \"pppoe-wan\"");
        assert_eq!(listed(&ns, t, "wan_out"), "\"eth1\", \"pppoe-wan\"");
        assert_eq!(listed(&ns, t, "permit4"), "", "a new WAN forgets verdicts");
        assert_eq!(l.wan(), ["eth1", "pppoe-wan"]);
        remember();
        l.set_wan(&["eth1".into(), "pppoe-wan".into()]).unwrap();
        assert!(
            listed(&ns, t, "permit4").contains("93.184.216.34"),
            "the same WAN keeps them"
        );
        l.flush_permits().unwrap();
        assert_eq!(listed(&ns, t, "permit4"), "");
        l.set_wan(&[]).unwrap();
        assert_eq!(listed(&ns, t, "wan"), "");
        assert_eq!(listed(&ns, t, "wan_out"), "");
        assert!(l.set_wan(&["bad name".into()]).is_err());
        // Heartbeats restart the alive element's timeout; pause removes it.
        l.heartbeat().unwrap();
        l.heartbeat().unwrap();
        let alive = ns.out(&["nft", "list", "set", "inet", t, "alive"]);
        assert!(alive.contains("tcp timeout 2s expires"), "{alive}");
        l.pause().unwrap();
        l.pause().unwrap();
        assert_eq!(listed(&ns, t, "alive"), "");
        assert!(!w.changed(), "our own changes are no news");
        ns.cmd(&["nft", "add", "table", "inet", "fw4"]);
        assert!(w.changed(), "another table is");
        assert!(!w.changed(), "read once");
        ns.cmd(&["nft", "delete", "table", "inet", "fw4"]);
        l.destroy().unwrap();
        assert!(w.changed());
        assert_eq!(ns.out(&["nft", "list", "ruleset"]), "", "nothing left");
    }
}
