//! The waypoint's NAT table in nf_tables.
//!
//! One table `inet <name>` holds:
//! - maps `nat4` and `nat6` from `client address . waypoint port` to
//!   `server address . server port`, each element with a timeout: the tunnels;
//! - sets `flows4` and `flows6`: the same tunnels as 4-tuples `client address
//!   . waypoint port . server address . server port`, with the same timeouts.
//!   Every change to a tunnel changes its map element and its set element in
//!   one nfnetlink batch, so the two never disagree;
//! - set `wan`: the names of the interfaces detours may leave by
//!   ([`NatTable::set_wan`]; the daemon gives it the interfaces of the
//!   default routes). It starts empty, and empty means every detour is
//!   dropped (fail closed).
//!
//! Its chains:
//! - `prerouting` (nat, priority dstnat): only packets addressed to this
//!   router (`fib daddr type local`) on a tunnel port are looked up,
//!   `dnat ip to ip saddr . tcp dport map @nat4` (and the ip6 twin). A packet
//!   the router forwards (the owner's LAN host connecting to a remote port in
//!   the range) is never looked up, marked, policed or counted.
//! - `translated` (filter, priority dstnat + 1, after every NAT chain): a new
//!   flow that was DNATed (`ct status dnat`) and whose `original source .
//!   original destination port . reply source . reply source port` is a
//!   tunnel of `flows4`/`flows6` gets the conntrack mark bits
//!   [`DETOUR_CT_MARK`]. Only flows our map translated are marked: a packet
//!   to a tunnel port that no element matched (no lease, someone else's
//!   lease, an ended one) stays unmarked, and so does a flow another table
//!   (fw4's port forwards) DNATed elsewhere. The mark outlives the element,
//!   as the flow does (see `sys::conntrack`).
//! - `local_in` (filter, hook input, priority filter - 1): drops marked flows.
//!   A marked flow reaching input was DNATed to one of the router's own
//!   addresses: whatever the policy let through, the router itself is never a
//!   detour's destination.
//! - `forward` (filter, priority filter - 3): a marked flow's packets in the
//!   original direction are dropped unless they leave by an interface of
//!   `wan` (a destination on the LAN, or anywhere else but the WAN); the rest
//!   get the packet mark bits [`DETOUR_PACKET_MARK`]. OpenWrt's fw4 accepts
//!   a forwarded packet only if its own chain does, whatever ours say; the
//!   feed's fw4 include accepts packets with that packet mark, and only
//!   toward fw4's zone `wan` (see `openwrt-feed/net/dcol/files/nftables.d/`).
//! - `caps` (filter, priority filter - 2): the donation caps on marked flows
//!   ([`NatTable::set_caps`]).
//! - `postrouting` (nat, priority srcnat): masquerades DNATed flows carrying
//!   our conntrack mark, and nothing else.
//!
//! No rule uses a map as a set (`ip saddr . tcp dport @nat4`): kernels before
//! 6.5 refuse that, found by booting Debian's 6.1 kernel in `cross/qemu-boot`.
//! The flow sets are plain sets, looked up with a concatenation of conntrack
//! keys, which 6.1 accepts.
//!
//! The table, maps, sets and chains are created once per daemon start by one
//! `nft -f -` process ([`NatTable::create`]); that also reconciles a crashed
//! run (it returns the elements the old table held so that their conntrack
//! entries can be deleted, and replaces the table). Every per-request change
//! (add, refresh, remove a tunnel; replace the WAN interfaces), the element
//! listing and the final deletion of the table are nf_tables netlink messages
//! (neli's messages and attributes, [`super::nfnl`]) sent in nfnetlink
//! batches; no process is spawned for them and `destroy` works without the
//! `nft` binary.
//!
//! Element timeouts stop only new connections: a running flow lives on in
//! conntrack (see `sys::conntrack`).

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use neli::consts::nl::NlmF;

use super::netlink::{attr, attr_str, be64, nest, nested, ty, Attr};
use super::nfnl::{msg_type, NfMsg, NfSocket, Nfgenmsg};
use super::SysError;

// include/uapi/linux/netfilter/nfnetlink.h
/// `NFNL_SUBSYS_NFTABLES`.
const NFNL_SUBSYS_NFTABLES: u8 = 0xa;
// include/uapi/linux/netfilter.h
/// `NFPROTO_INET`.
const NFPROTO_INET: u8 = 0x1;
// include/uapi/linux/netfilter/nf_tables.h, enum nf_tables_msg_types
/// `NFT_MSG_GETTABLE`.
const NFT_MSG_GETTABLE: u8 = 0x1;
/// `NFT_MSG_DELTABLE`.
const NFT_MSG_DELTABLE: u8 = 0x2;
/// `NFT_MSG_NEWSETELEM`.
const NFT_MSG_NEWSETELEM: u8 = 0xc;
/// `NFT_MSG_GETSETELEM`.
const NFT_MSG_GETSETELEM: u8 = 0xd;
/// `NFT_MSG_DELSETELEM`.
const NFT_MSG_DELSETELEM: u8 = 0xe;
/// `NFTA_TABLE_NAME` (string).
const NFTA_TABLE_NAME: u16 = 0x1;
/// `NFTA_SET_ELEM_LIST_TABLE` (string).
const NFTA_SET_ELEM_LIST_TABLE: u16 = 0x1;
/// `NFTA_SET_ELEM_LIST_SET` (string).
const NFTA_SET_ELEM_LIST_SET: u16 = 0x2;
/// `NFTA_SET_ELEM_LIST_ELEMENTS` (nest of `NFTA_LIST_ELEM`).
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 0x3;
/// `NFTA_LIST_ELEM` (nest).
const NFTA_LIST_ELEM: u16 = 0x1;
/// `NFTA_SET_ELEM_KEY` (nest: `NFTA_DATA_VALUE`).
const NFTA_SET_ELEM_KEY: u16 = 0x1;
/// `NFTA_SET_ELEM_DATA` (nest: `NFTA_DATA_VALUE`).
const NFTA_SET_ELEM_DATA: u16 = 0x2;
/// `NFTA_SET_ELEM_TIMEOUT` (be64, milliseconds).
const NFTA_SET_ELEM_TIMEOUT: u16 = 0x4;
/// `NFTA_SET_ELEM_EXPIRATION` (be64, milliseconds left).
const NFTA_SET_ELEM_EXPIRATION: u16 = 0x5;
/// `NFTA_DATA_VALUE` (binary).
const NFTA_DATA_VALUE: u16 = 0x1;
/// `NFT_MSG_NEWOBJ` (the answer to a GETOBJ).
const NFT_MSG_NEWOBJ: u8 = 0x12;
/// `NFT_MSG_GETOBJ`.
const NFT_MSG_GETOBJ: u8 = 0x13;
/// `NFTA_OBJ_TABLE` (string).
const NFTA_OBJ_TABLE: u16 = 0x1;
/// `NFTA_OBJ_NAME` (string).
const NFTA_OBJ_NAME: u16 = 0x2;
/// `NFTA_OBJ_TYPE` (be32).
const NFTA_OBJ_TYPE: u16 = 0x3;
/// `NFTA_OBJ_DATA` (nest: the object's own attributes).
const NFTA_OBJ_DATA: u16 = 0x4;
/// `NFT_OBJECT_QUOTA`.
const NFT_OBJECT_QUOTA: u32 = 0x2;
/// `NFTA_QUOTA_CONSUMED` (be64): the bytes counted (`used` in `nft list`).
const NFTA_QUOTA_CONSUMED: u16 = 0x4;
/// The monthly quota object's name.
const QUOTA: &str = "month";
/// `IFNAMSIZ` (include/uapi/linux/if.h): the key length of a set of type
/// `ifname` (the name, NUL-padded).
const IFNAMSIZ: usize = 16;

/// The IPv4 map's name.
pub const MAP4: &str = "nat4";
/// The IPv6 map's name.
pub const MAP6: &str = "nat6";
/// The IPv4 tunnels as 4-tuples (see the module docs).
pub const FLOWS4: &str = "flows4";
/// The IPv6 tunnels as 4-tuples.
pub const FLOWS6: &str = "flows6";
/// The set of WAN interface names, in this table and in `sys::vpnfw`'s.
pub const WAN_SET: &str = "wan";

/// `nfnetlink` message type for an nf_tables message.
const fn nft_type(msg: u8) -> u16 {
    msg_type(NFNL_SUBSYS_NFTABLES, msg)
}

/// nf_tables message `msg` about an `inet` table, with `attrs`.
fn nft_msg(msg: u8, flags: NlmF, attrs: Vec<Attr>) -> NfMsg {
    NfMsg::new(NFNL_SUBSYS_NFTABLES, msg, flags, NFPROTO_INET, attrs)
}

/// One NAT tunnel: packets from `client` to this router's `port` go to
/// `destination`. `client` and `destination` have the same family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatElement {
    /// The member's address, as packets arrive from it.
    pub client: IpAddr,
    /// The waypoint port allocated to it.
    pub port: u16,
    /// The server the tunnel leads to.
    pub destination: SocketAddr,
    /// Time left before the kernel drops the element (listing only; ignored
    /// when adding).
    pub expires_in: Option<Duration>,
}

/// The waypoint's nf_tables table (see the module docs). Dropping it leaves the
/// table in place; call [`NatTable::destroy`].
#[derive(Debug)]
pub struct NatTable {
    sock: NfSocket,
    name: String,
    /// The `month` quota object exists.
    quota: bool,
    /// The tunnels this process installed, `client . port` → destination:
    /// a flow-set element's key includes the destination, so removing a
    /// tunnel needs it.
    live: HashMap<(IpAddr, u16), SocketAddr>,
}

/// The owner's donation caps on all detoured traffic (NAT and VPN flows,
/// both directions, recognized by [`DETOUR_CT_MARK`]), enforced by the
/// kernel in the table's `caps` chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    /// Rate cap in kbit/s (0: none): a policer (`limit rate over`), so TCP
    /// through it backs off to about this rate.
    pub kbit: u32,
    /// Monthly volume in bytes (0: none): a `quota` object; beyond it detour
    /// packets are dropped until the month turns.
    pub month_bytes: u64,
    /// Bytes already used this month (carried over a restart).
    pub used: u64,
}

/// The `nft -f` script that installs `caps` in table `name`.
pub fn caps_script(name: &str, caps: &Caps, had_quota: bool) -> String {
    let m = format!("ct mark & {DETOUR_CT_MARK:#010x} == {DETOUR_CT_MARK:#010x}");
    let mut s = format!("flush chain inet {name} caps\n");
    if had_quota {
        s.push_str(&format!("delete quota inet {name} month\n"));
    }
    if caps.month_bytes > 0 {
        // The kernel refuses a quota created with more used than allowed
        // (EINVAL): a count past the cap (a lowered cap, or bytes counted
        // after it ran out) starts at the cap, which is just as used up.
        s.push_str(&format!(
            "add quota inet {name} month {{ over {} bytes used {} bytes; }}\nadd rule inet {name} caps {m} quota name \"month\" drop\n",
            caps.month_bytes,
            caps.used.min(caps.month_bytes)
        ));
    }
    if caps.kbit > 0 {
        // kbit/s are 1000 bits (nft's kbytes are 1024 bytes). The kernel's
        // bucket holds one second at the rate plus the burst; below 16 KB/s
        // a burst lets full-size packets through at all.
        let bytes = u64::from(caps.kbit) * 125;
        let burst = if bytes < 16_384 {
            format!(" burst {} bytes", 16_384 - bytes)
        } else {
            String::new()
        };
        s.push_str(&format!(
            "add rule inet {name} caps {m} limit rate over {bytes} bytes/second{burst} drop\n"
        ));
    }
    s
}

impl NatTable {
    /// Installs (or replaces) the donation caps, in one transaction.
    pub fn set_caps(&mut self, caps: &Caps) -> Result<(), SysError> {
        run_nft(&caps_script(&self.name, caps, self.quota))?;
        self.quota = caps.month_bytes > 0;
        Ok(())
    }

    /// Bytes counted by the monthly quota so far (0 without one): one
    /// `NFT_MSG_GETOBJ` for the quota object.
    pub fn quota_used(&mut self) -> Result<u64, SysError> {
        if !self.quota {
            return Ok(0);
        }
        let op = "nft get quota";
        let m = nft_msg(
            NFT_MSG_GETOBJ,
            NlmF::empty(),
            vec![
                attr_str(op, NFTA_OBJ_TABLE, &self.name)?,
                attr_str(op, NFTA_OBJ_NAME, QUOTA)?,
                attr(op, NFTA_OBJ_TYPE, &NFT_OBJECT_QUOTA.to_be_bytes())?,
            ],
        );
        let mut used = None;
        self.sock.request(op, m, |ty, payload| {
            if ty == nft_type(NFT_MSG_NEWOBJ) {
                used = quota_consumed(payload)?;
            }
            Ok(())
        })?;
        used.ok_or_else(|| SysError::Malformed {
            op,
            what: "no quota counter in the answer".into(),
        })
    }

    /// Creates table `inet <name>` with its maps, sets and chains, replacing
    /// one left by a crashed run; only packets to this router's TCP ports
    /// `ports.0..=ports.1` (the waypoint's tunnel ports) are looked up in the
    /// maps. The WAN set starts empty: no detour leaves until
    /// [`NatTable::set_wan`]. Returns the table and the elements the old table
    /// held (their conntrack entries are the caller's to delete). Runs
    /// `nft -f -` once; the process inherits the calling thread's network
    /// namespace.
    pub fn create(name: &str, ports: (u16, u16)) -> Result<(NatTable, Vec<NatElement>), SysError> {
        check_name(name)?;
        if ports.0 > ports.1 {
            return Err(SysError::io(
                "nft port range",
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}-{} is empty", ports.0, ports.1),
                ),
            ));
        }
        let mut t = NatTable {
            sock: NfSocket::open()?,
            name: name.to_owned(),
            quota: false,
            live: HashMap::new(),
        };
        let mut leftovers = Vec::new();
        if table_exists_on(&mut t.sock, name)? {
            leftovers = t.elements()?;
            delete_table(&mut t.sock, name)?;
            log::info!(
                "nft: replaced table inet {name} of a previous run ({} elements)",
                leftovers.len()
            );
        }
        run_nft(&ruleset(name, ports))?;
        Ok((t, leftovers))
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Replaces the WAN interfaces (set `wan`) with `ifnames`, in one batch.
    /// Marked flows leaving by any other interface are dropped; an empty list
    /// drops every detour.
    pub fn set_wan(&mut self, ifnames: &[String]) -> Result<(), SysError> {
        let msgs = set_names_msgs(&self.name, WAN_SET, ifnames)?;
        self.sock.batch("nft set wan interfaces", SUBSYS, msgs)
    }

    /// Adds `el` with `timeout` (at least 1 ms): its map element and its flow
    /// element, in one batch. A tunnel with the same `client . port` is
    /// replaced (its old elements deleted in the same batch).
    pub fn add(&mut self, el: &NatElement, timeout: Duration) -> Result<(), SysError> {
        self.put("nft add element", el, timeout)
    }

    /// Restarts `el`'s timeout at `timeout`: delete + add of both elements in
    /// one atomic batch (a plain re-add does not update timeouts on every
    /// kernel). If the elements had already expired, they are added again.
    pub fn refresh(&mut self, el: &NatElement, timeout: Duration) -> Result<(), SysError> {
        self.put("nft refresh element", el, timeout)
    }

    fn put(
        &mut self,
        op: &'static str,
        el: &NatElement,
        timeout: Duration,
    ) -> Result<(), SysError> {
        let key = (el.client, el.port);
        let old = NatElement {
            destination: self.live.get(&key).copied().unwrap_or(el.destination),
            ..el.clone()
        };
        let mut msgs = tunnel_msgs(op, Op::Delete, &self.name, &old)?;
        msgs.extend(tunnel_msgs(op, Op::Add(timeout), &self.name, el)?);
        match self.sock.batch(op, SUBSYS, msgs) {
            // The map holds this key with a destination we did not install
            // (no flow element of ours goes with it): replace that element.
            Err(SysError::Netlink { errno, .. })
                if errno == libc::EBUSY || errno == libc::EEXIST =>
            {
                let mut msgs = vec![setelem_msg(op, NFT_MSG_DELSETELEM, &self.name, el, None)?];
                msgs.extend(tunnel_msgs(op, Op::Add(timeout), &self.name, el)?);
                self.sock.batch(op, SUBSYS, msgs)?;
            }
            r => r?,
        }
        self.live.insert(key, el.destination);
        Ok(())
    }

    /// Removes the tunnel keyed `client . port` (map and flow element, one
    /// batch); a missing or expired one is fine.
    pub fn remove(&mut self, client: IpAddr, port: u16) -> Result<(), SysError> {
        let op = "nft delete element";
        let el = NatElement {
            client,
            port,
            destination: match client {
                IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
                IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
            },
            expires_in: None,
        };
        if let Some(destination) = self.live.remove(&(client, port)) {
            let ours = NatElement {
                destination,
                ..el.clone()
            };
            let msgs = tunnel_msgs(op, Op::Delete, &self.name, &ours)?;
            match self.sock.batch(op, SUBSYS, msgs) {
                // The map element is not the one we installed: delete the key.
                Err(SysError::Netlink { errno, .. })
                    if errno == libc::EBUSY || errno == libc::EEXIST => {}
                r => return r,
            }
        }
        let del = setelem_msg(op, NFT_MSG_DELSETELEM, &self.name, &el, None)?;
        match self.sock.batch(op, SUBSYS, vec![del]) {
            Err(SysError::Netlink { errno, .. }) if errno == libc::ENOENT => Ok(()),
            r => r,
        }
    }

    /// Every element of both maps, with the time each has left.
    pub fn elements(&mut self) -> Result<Vec<NatElement>, SysError> {
        let mut out = Vec::new();
        for (map, v6) in [(MAP4, false), (MAP6, true)] {
            out.extend(list_map(&mut self.sock, &self.name, map, v6)?);
        }
        Ok(out)
    }

    /// Deletes the table (netlink `NFT_MSG_DELTABLE`; no `nft` binary needed).
    /// A table already gone is fine.
    pub fn destroy(mut self) -> Result<(), SysError> {
        delete_table(&mut self.sock, &self.name)
    }
}

/// Whether table `inet <name>` exists (in the calling thread's network
/// namespace).
pub fn table_exists(name: &str) -> Result<bool, SysError> {
    let mut sock = NfSocket::open()?;
    table_exists_on(&mut sock, name)
}

pub(crate) fn table_exists_on(sock: &mut NfSocket, name: &str) -> Result<bool, SysError> {
    let op = "nft get table";
    let m = nft_msg(
        NFT_MSG_GETTABLE,
        NlmF::empty(),
        vec![attr_str(op, NFTA_TABLE_NAME, name)?],
    );
    match sock.request(op, m, |_, _| Ok(())) {
        Ok(()) => Ok(true),
        Err(SysError::Netlink { errno, .. }) if errno == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

pub(crate) fn delete_table(sock: &mut NfSocket, name: &str) -> Result<(), SysError> {
    let op = "nft delete table";
    let m = nft_msg(
        NFT_MSG_DELTABLE,
        NlmF::empty(),
        vec![attr_str(op, NFTA_TABLE_NAME, name)?],
    );
    match sock.batch(op, NFNL_SUBSYS_NFTABLES, vec![m]) {
        Err(SysError::Netlink { errno, .. }) if errno == libc::ENOENT => Ok(()),
        r => r,
    }
}

fn list_map(
    sock: &mut NfSocket,
    table: &str,
    map: &str,
    v6: bool,
) -> Result<Vec<NatElement>, SysError> {
    let op = "nft list map elements";
    let mut tries = 0;
    loop {
        let m = nft_msg(
            NFT_MSG_GETSETELEM,
            NlmF::empty(),
            vec![
                attr_str(op, NFTA_SET_ELEM_LIST_TABLE, table)?,
                attr_str(op, NFTA_SET_ELEM_LIST_SET, map)?,
            ],
        );
        let mut out = Vec::new();
        let r = sock.dump(op, m, |ty, payload| {
            if ty == nft_type(NFT_MSG_NEWSETELEM) {
                out.extend(decode_setelems(payload, v6)?);
            }
            Ok(())
        });
        match r {
            Ok(()) => return Ok(out),
            // No such table or map: nothing to list.
            Err(SysError::Netlink { errno, .. }) if errno == libc::ENOENT => return Ok(Vec::new()),
            Err(SysError::Netlink { errno, .. }) if errno == libc::EINTR && tries < 3 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Table names we accept: they go into an `nft` script unquoted.
fn check_name(name: &str) -> Result<(), SysError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(SysError::io(
            "nft table name",
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?}: use 1-64 letters, digits, '_' or '-'"),
            ),
        ))
    }
}

/// Conntrack mark bits set on every detour flow (OR-ed in, other bits kept):
/// NAT tunnels our map translated (this table) and VPN tunnel flows
/// (`sys::vpnfw`). The caps count and police them; masquerading and the
/// router's input drop recognize them.
pub const DETOUR_CT_MARK: u32 = 0x00dc_0000;

/// Packet mark bits (`meta mark`, OR-ed in) set by dcol's forward chains on
/// every original-direction packet of a detour flow that leaves by a WAN
/// interface. The OpenWrt feed's fw4 include accepts packets carrying them,
/// and only toward fw4's zone `wan`. They differ from [`DETOUR_CT_MARK`] in
/// bit 16, so a rule elsewhere that copies the conntrack mark into the packet
/// mark does not forge them.
pub const DETOUR_PACKET_MARK: u32 = 0x00dd_0000;

/// The `nft -f` script that creates the table (see the module docs).
pub fn ruleset(name: &str, ports: (u16, u16)) -> String {
    let (lo, hi) = ports;
    let ct = format!("ct mark & {DETOUR_CT_MARK:#010x}");
    let set_ct = format!("ct mark set ct mark | {DETOUR_CT_MARK:#010x}");
    let tuple = |ip: &str| {
        format!("ct original {ip} saddr . ct original proto-dst . ct reply {ip} saddr . ct reply proto-src")
    };
    format!(
        "table inet {name} {{
	map {MAP4} {{
		type ipv4_addr . inet_service : ipv4_addr . inet_service
		flags timeout
	}}
	map {MAP6} {{
		type ipv6_addr . inet_service : ipv6_addr . inet_service
		flags timeout
	}}
	set {FLOWS4} {{
		type ipv4_addr . inet_service . ipv4_addr . inet_service
		flags timeout
	}}
	set {FLOWS6} {{
		type ipv6_addr . inet_service . ipv6_addr . inet_service
		flags timeout
	}}
	set {WAN_SET} {{
		type ifname
	}}
	chain prerouting {{
		type nat hook prerouting priority dstnat; policy accept;
		meta nfproto ipv4 tcp dport {lo}-{hi} fib daddr type local dnat ip to ip saddr . tcp dport map @{MAP4}
		meta nfproto ipv6 tcp dport {lo}-{hi} fib daddr type local dnat ip6 to ip6 saddr . tcp dport map @{MAP6}
	}}
	chain translated {{
		type filter hook prerouting priority dstnat + 1; policy accept;
		meta l4proto tcp ct state new ct status dnat {t4} @{FLOWS4} {set_ct}
		meta l4proto tcp ct state new ct status dnat {t6} @{FLOWS6} {set_ct}
	}}
	chain local_in {{
		type filter hook input priority filter - 1; policy accept;
		{ct} == {DETOUR_CT_MARK:#010x} drop
	}}
	chain forward {{
		type filter hook forward priority filter - 3; policy accept;
		{ct} != {DETOUR_CT_MARK:#010x} return
		ct direction reply return
		oifname != @{WAN_SET} drop
		meta mark set meta mark | {DETOUR_PACKET_MARK:#010x}
	}}
	chain caps {{
		type filter hook forward priority filter - 2; policy accept;
	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat {ct} == {DETOUR_CT_MARK:#010x} masquerade
	}}
}}
",
        t4 = tuple("ip"),
        t6 = tuple("ip6"),
    )
}

pub(crate) fn run_nft(script: &str) -> Result<(), SysError> {
    let op = "nft -f -";
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SysError::io(op, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| SysError::io(op, e))?;
    }
    let out = child.wait_with_output().map_err(|e| SysError::io(op, e))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(SysError::io(
            op,
            io::Error::other(format!("{}: {msg}", out.status)),
        ));
    }
    Ok(())
}

/// A map key or value: address then port, each padded to 4-byte registers
/// (IPv4: 4 + 2 + 2 pad = 8 bytes; IPv6: 16 + 4 = 20). Port big-endian.
fn concat(ip: IpAddr, port: u16) -> Vec<u8> {
    let mut v = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v
}

fn parse_concat(b: &[u8], v6: bool) -> Option<(IpAddr, u16)> {
    let (ip, rest): (IpAddr, &[u8]) = if v6 {
        let a: [u8; 16] = b.get(..16)?.try_into().ok()?;
        (Ipv6Addr::from(a).into(), b.get(16..)?)
    } else {
        let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
        (Ipv4Addr::from(a).into(), b.get(4..)?)
    };
    if rest.len() != 4 {
        return None;
    }
    Some((ip, u16::from_be_bytes([rest[0], rest[1]])))
}

/// A flow set's key: the map's key followed by its value (IPv4 16 bytes,
/// IPv6 40), the order of the `translated` chain's lookup.
fn flow_key(el: &NatElement) -> Vec<u8> {
    let mut k = concat(el.client, el.port);
    k.extend(concat(el.destination.ip(), el.destination.port()));
    k
}

/// Builds a NEWSETELEM (key, then `timeout` if any, then `data` if any) or
/// DELSETELEM (key only) message for one element of `set` in table
/// `inet <table>`.
fn elem_msg(
    add: bool,
    table: &str,
    set: &str,
    key: &[u8],
    data: Option<&[u8]>,
    timeout: Option<Duration>,
) -> Result<NfMsg, SysError> {
    let op = "nft set element";
    let (msg, flags) = if add {
        (NFT_MSG_NEWSETELEM, NlmF::CREATE)
    } else {
        (NFT_MSG_DELSETELEM, NlmF::empty())
    };
    let mut fields = vec![nest(
        op,
        NFTA_SET_ELEM_KEY,
        &[attr(op, NFTA_DATA_VALUE, key)?],
    )?];
    if add {
        if let Some(t) = timeout {
            let ms = t.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
            fields.push(attr(op, NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes())?);
        }
        if let Some(d) = data {
            fields.push(nest(
                op,
                NFTA_SET_ELEM_DATA,
                &[attr(op, NFTA_DATA_VALUE, d)?],
            )?);
        }
    }
    let elems = nest(
        op,
        NFTA_SET_ELEM_LIST_ELEMENTS,
        &[nest(op, NFTA_LIST_ELEM, &fields)?],
    )?;
    Ok(nft_msg(
        msg,
        flags,
        set_elem_list(op, table, set, Some(elems))?,
    ))
}

/// The attributes of a set element message: table, set and, if any, the
/// element list.
fn set_elem_list(
    op: &'static str,
    table: &str,
    set: &str,
    elems: Option<Attr>,
) -> Result<Vec<Attr>, SysError> {
    let mut attrs = vec![
        attr_str(op, NFTA_SET_ELEM_LIST_TABLE, table)?,
        attr_str(op, NFTA_SET_ELEM_LIST_SET, set)?,
    ];
    attrs.extend(elems);
    Ok(attrs)
}

/// Builds a NEWSETELEM (with `timeout`) or DELSETELEM message for one key of a
/// plain set (no data) `set` in table `inet <table>`.
pub(crate) fn set_key_msg(
    msg_add: bool,
    table: &str,
    set: &str,
    key: &[u8],
    timeout: Option<Duration>,
) -> Result<NfMsg, SysError> {
    elem_msg(msg_add, table, set, key, None, timeout)
}

/// DELSETELEM without elements: flushes set `set` of table `inet <table>`.
pub(crate) fn flush_set_msg(table: &str, set: &str) -> Result<NfMsg, SysError> {
    let attrs = set_elem_list("nft flush set", table, set, None)?;
    Ok(nft_msg(NFT_MSG_DELSETELEM, NlmF::empty(), attrs))
}

/// The messages that replace the content of set `set` (type `ifname`) of
/// table `inet <table>` with `names`: a flush, then one NEWSETELEM with every
/// name (none for an empty list). Send them as one batch.
pub(crate) fn set_names_msgs(
    table: &str,
    set: &str,
    names: &[String],
) -> Result<Vec<NfMsg>, SysError> {
    let op = "nft interface name";
    for n in names {
        if n.is_empty() || n.len() >= IFNAMSIZ || n.contains('\0') {
            return Err(SysError::io(
                op,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{n:?}: an interface name has 1-15 bytes"),
                ),
            ));
        }
    }
    let mut msgs = vec![flush_set_msg(table, set)?];
    if !names.is_empty() {
        let mut list = Vec::with_capacity(names.len());
        for n in names {
            let mut key = [0u8; IFNAMSIZ];
            key[..n.len()].copy_from_slice(n.as_bytes());
            let k = nest(op, NFTA_SET_ELEM_KEY, &[attr(op, NFTA_DATA_VALUE, &key)?])?;
            list.push(nest(op, NFTA_LIST_ELEM, &[k])?);
        }
        let elems = nest(op, NFTA_SET_ELEM_LIST_ELEMENTS, &list)?;
        let attrs = set_elem_list(op, table, set, Some(elems))?;
        msgs.push(nft_msg(NFT_MSG_NEWSETELEM, NlmF::CREATE, attrs));
    }
    Ok(msgs)
}

/// The nf_tables netlink subsystem, for batches.
pub(crate) const SUBSYS: u8 = NFNL_SUBSYS_NFTABLES;

/// What [`tunnel_msgs`] does to a tunnel's two elements.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Add both with this timeout.
    Add(Duration),
    /// Delete both, whether or not they exist (or have expired).
    Delete,
}

/// The messages that add or delete a tunnel's map element and flow element.
/// A deletion is add-then-delete of each, so that it succeeds whether the
/// kernel still holds the element or it has expired (`ENOENT` would abort
/// the whole batch): the add is a no-op for an element already there with
/// the same data, and carries no timeout, so that no kernel takes it for a
/// timeout update. Fails for mixed address families.
fn tunnel_msgs(
    op: &'static str,
    kind: Op,
    table: &str,
    el: &NatElement,
) -> Result<Vec<NfMsg>, SysError> {
    check_family(op, el)?;
    let (map, flows) = if el.client.is_ipv4() {
        (MAP4, FLOWS4)
    } else {
        (MAP6, FLOWS6)
    };
    let key = concat(el.client, el.port);
    let data = concat(el.destination.ip(), el.destination.port());
    let fkey = flow_key(el);
    Ok(match kind {
        Op::Add(t) => vec![
            elem_msg(true, table, map, &key, Some(&data), Some(t))?,
            elem_msg(true, table, flows, &fkey, None, Some(t))?,
        ],
        Op::Delete => vec![
            elem_msg(true, table, map, &key, Some(&data), None)?,
            elem_msg(false, table, map, &key, None, None)?,
            elem_msg(true, table, flows, &fkey, None, None)?,
            elem_msg(false, table, flows, &fkey, None, None)?,
        ],
    })
}

fn check_family(op: &'static str, el: &NatElement) -> Result<(), SysError> {
    if el.client.is_ipv4() == el.destination.is_ipv4() {
        Ok(())
    } else {
        Err(SysError::io(
            op,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "client {} and destination {} differ in address family",
                    el.client, el.destination
                ),
            ),
        ))
    }
}

/// Builds a NEWSETELEM or DELSETELEM message for `el` in its family's map.
/// Deletion carries only the key; `timeout` only matters for NEWSETELEM
/// (none: 1 ms).
fn setelem_msg(
    op: &'static str,
    msg: u8,
    table: &str,
    el: &NatElement,
    timeout: Option<Duration>,
) -> Result<NfMsg, SysError> {
    check_family(op, el)?;
    let map = if el.client.is_ipv4() { MAP4 } else { MAP6 };
    let data = concat(el.destination.ip(), el.destination.port());
    elem_msg(
        msg == NFT_MSG_NEWSETELEM,
        table,
        map,
        &concat(el.client, el.port),
        Some(&data),
        Some(timeout.unwrap_or_default()),
    )
}

/// Decodes one GETSETELEM reply (nfgenmsg + attributes). Elements whose key or
/// data do not have our layout are logged and skipped.
pub fn decode_setelems(payload: &[u8], v6: bool) -> Result<Vec<NatElement>, SysError> {
    let op = "nft decode set elements";
    let mut out = Vec::new();
    for a in Nfgenmsg::decode(op, payload)?.attrs().iter() {
        if ty(a) != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for e in nested(op, a)?.iter() {
            if ty(e) != NFTA_LIST_ELEM {
                continue;
            }
            let (mut key, mut data, mut expires) = (None, None, None);
            for f in nested(op, e)?.iter() {
                match ty(f) {
                    NFTA_SET_ELEM_KEY | NFTA_SET_ELEM_DATA => {
                        for v in nested(op, f)?.iter() {
                            if ty(v) == NFTA_DATA_VALUE {
                                let p = parse_concat(v.nla_payload().as_ref(), v6);
                                if ty(f) == NFTA_SET_ELEM_KEY {
                                    key = p;
                                } else {
                                    data = p;
                                }
                            }
                        }
                    }
                    NFTA_SET_ELEM_EXPIRATION => expires = Some(Duration::from_millis(be64(op, f)?)),
                    _ => {}
                }
            }
            match (key, data) {
                (Some((client, port)), Some((dip, dport))) => out.push(NatElement {
                    client,
                    port,
                    destination: SocketAddr::new(dip, dport),
                    expires_in: expires,
                }),
                _ => log::warn!(
                    "nft: skipped a map element that is not address . port : address . port"
                ),
            }
        }
    }
    Ok(out)
}

/// The bytes a quota object has counted: `NFTA_QUOTA_CONSUMED` in the
/// `NFTA_OBJ_DATA` of a NEWOBJ body (`None` without it).
pub fn quota_consumed(payload: &[u8]) -> Result<Option<u64>, SysError> {
    let op = "nft decode quota";
    let mut used = None;
    for a in Nfgenmsg::decode(op, payload)?.attrs().iter() {
        if ty(a) == NFTA_OBJ_DATA {
            for q in nested(op, a)?.iter() {
                if ty(q) == NFTA_QUOTA_CONSUMED {
                    used = Some(be64(op, q)?);
                }
            }
        }
    }
    Ok(used)
}

/// The bytes of a message's payload after the netlink header (for tests).
#[cfg(test)]
fn payload(b: &[u8]) -> &[u8] {
    &b[super::netlink::NLMSG_HDRLEN..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::testns::{is_root, star, NsThread};
    use crate::sys::netlink::testsock;
    use crate::sys::netlink::{string, test_attr as a};
    const NLA_F_NESTED: u16 = 0x8000;

    #[test]
    fn caps_script_counts_kbit_as_1000_bits() {
        let caps = Caps {
            kbit: 3000,
            month_bytes: 4_000_000,
            used: 123,
        };
        let s = caps_script("dcol", &caps, true);
        assert!(
            s.starts_with("flush chain inet dcol caps\ndelete quota inet dcol month\n"),
            "{s}"
        );
        assert!(
            s.contains("add quota inet dcol month { over 4000000 bytes used 123 bytes; }"),
            "{s}"
        );
        assert!(
            s.contains("limit rate over 375000 bytes/second drop"),
            "{s}"
        );
        let over = Caps {
            used: 5_000_000,
            ..caps
        };
        assert!(
            caps_script("dcol", &over, false)
                .contains("{ over 4000000 bytes used 4000000 bytes; }"),
            "a count past the cap starts at the cap"
        );
        // A small cap still lets a TCP burst through; no caps, no rules.
        let small = Caps {
            kbit: 8,
            ..Caps::default()
        };
        assert!(caps_script("t", &small, false)
            .contains("over 1000 bytes/second burst 15384 bytes drop"));
        assert_eq!(
            caps_script("t", &Caps::default(), false),
            "flush chain inet t caps\n"
        );
    }

    fn el(client: &str, port: u16, dest: &str) -> NatElement {
        NatElement {
            client: client.parse().unwrap(),
            port,
            destination: dest.parse().unwrap(),
            expires_in: None,
        }
    }

    #[test]
    fn key_layout_pads_each_field_to_four_bytes() {
        assert_eq!(
            concat("10.0.0.1".parse().unwrap(), 40000),
            [10, 0, 0, 1, 0x9c, 0x40, 0, 0]
        );
        let v6 = concat("2001:db8::1".parse().unwrap(), 443);
        assert_eq!(v6.len(), 20);
        assert_eq!(&v6[16..], &[0x01, 0xbb, 0, 0]);
        assert_eq!(
            parse_concat(&[10, 0, 0, 1, 0x9c, 0x40, 0, 0], false),
            Some(("10.0.0.1".parse().unwrap(), 40000))
        );
        assert_eq!(parse_concat(&[10, 0, 0, 1, 0x9c], false), None);
        assert_eq!(parse_concat(&v6, false), None);
        assert_eq!(
            parse_concat(&v6, true),
            Some(("2001:db8::1".parse().unwrap(), 443))
        );
    }

    /// The whole NEWSETELEM message, byte for byte.
    #[test]
    fn newsetelem_encoding() {
        let e = el("10.0.0.1", 40000, "10.0.0.9:443");
        let b = setelem_msg(
            "t",
            NFT_MSG_NEWSETELEM,
            "dcol",
            &e,
            Some(Duration::from_secs(30)),
        )
        .unwrap()
        .encode("t", 0, NlmF::empty())
        .unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(&(b.len() as u32).to_ne_bytes());
        want.extend_from_slice(&0x0a0cu16.to_ne_bytes());
        want.extend_from_slice(&0x400u16.to_ne_bytes());
        want.extend_from_slice(&[0; 8]);
        want.extend_from_slice(&[NFPROTO_INET, 0, 0, 0]);
        want.extend(a(NFTA_SET_ELEM_LIST_TABLE, b"dcol\0"));
        want.extend(a(NFTA_SET_ELEM_LIST_SET, b"nat4\0"));
        let mut elem = a(
            NFTA_SET_ELEM_KEY | NLA_F_NESTED,
            &a(NFTA_DATA_VALUE, &[10, 0, 0, 1, 0x9c, 0x40, 0, 0]),
        );
        elem.extend(a(NFTA_SET_ELEM_TIMEOUT, &30_000u64.to_be_bytes()));
        elem.extend(a(
            NFTA_SET_ELEM_DATA | NLA_F_NESTED,
            &a(NFTA_DATA_VALUE, &[10, 0, 0, 9, 0x01, 0xbb, 0, 0]),
        ));
        let list = a(NFTA_LIST_ELEM | NLA_F_NESTED, &elem);
        want.extend(a(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list));
        assert_eq!(b, want);

        // Deletion: key only, in nat6 for IPv6.
        let e6 = el("2001:db8::1", 40001, "[2001:db8::9]:443");
        let b = setelem_msg("t", NFT_MSG_DELSETELEM, "dcol", &e6, None)
            .unwrap()
            .encode("t", 0, NlmF::empty())
            .unwrap();
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x0a0e);
        let body = Nfgenmsg::decode("t", payload(&b)).unwrap();
        let decoded: Vec<_> = body.attrs().iter().collect();
        assert_eq!(string(decoded[1]), "nat6");
        let list = nested("t", decoded[2]).unwrap();
        let inner = nested("t", list.iter().next().unwrap()).unwrap();
        assert_eq!(inner.len(), 1);
        assert_eq!(ty(inner.iter().next().unwrap()), NFTA_SET_ELEM_KEY);
        // Mixed families are refused before reaching the kernel.
        assert!(setelem_msg(
            "t",
            NFT_MSG_NEWSETELEM,
            "dcol",
            &el("10.0.0.1", 1, "[::1]:1"),
            None
        )
        .is_err());
    }

    #[test]
    fn decode_listing() {
        let mut elem = a(
            NFTA_SET_ELEM_KEY | NLA_F_NESTED,
            &a(NFTA_DATA_VALUE, &[10, 0, 0, 1, 0x9c, 0x40, 0, 0]),
        );
        elem.extend(a(NFTA_SET_ELEM_TIMEOUT, &30_000u64.to_be_bytes()));
        elem.extend(a(NFTA_SET_ELEM_EXPIRATION, &29_500u64.to_be_bytes()));
        elem.extend(a(
            NFTA_SET_ELEM_DATA | NLA_F_NESTED,
            &a(NFTA_DATA_VALUE, &[10, 0, 0, 9, 0x01, 0xbb, 0, 0]),
        ));
        let mut bad = a(
            NFTA_SET_ELEM_KEY | NLA_F_NESTED,
            &a(NFTA_DATA_VALUE, &[10, 0, 0]),
        );
        bad.extend(a(
            NFTA_SET_ELEM_DATA | NLA_F_NESTED,
            &a(NFTA_DATA_VALUE, &[10, 0, 0, 9, 0x01, 0xbb, 0, 0]),
        ));
        let mut list = a(NFTA_LIST_ELEM | NLA_F_NESTED, &elem);
        list.extend(a(NFTA_LIST_ELEM | NLA_F_NESTED, &bad));
        let mut p = vec![NFPROTO_INET, 0, 0, 0];
        p.extend(a(NFTA_SET_ELEM_LIST_TABLE, b"dcol\0"));
        p.extend(a(NFTA_SET_ELEM_LIST_SET, b"nat4\0"));
        p.extend(a(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list));
        let got = decode_setelems(&p, false).unwrap();
        assert_eq!(
            got,
            vec![NatElement {
                client: "10.0.0.1".parse().unwrap(),
                port: 40000,
                destination: "10.0.0.9:443".parse().unwrap(),
                expires_in: Some(Duration::from_millis(29_500)),
            }]
        );
        for cut in 0..p.len() {
            let _ = decode_setelems(&p[..cut], false);
        }
        assert!(decode_setelems(&p[..p.len() - 3], false).is_err());
    }

    #[test]
    fn names_and_ruleset() {
        assert!(check_name("dcol").is_ok());
        assert!(check_name("dcol_test-1").is_ok());
        for bad in ["", "1x", "a b", "x;flush ruleset", "a}", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let r = ruleset("dcol", (40000, 40999));
        assert!(r.starts_with("table inet dcol {"));
        // Only packets to the router itself are looked up, and the lookup
        // marks nothing: a packet no element matches leaves unmarked.
        assert!(r.contains("meta nfproto ipv4 tcp dport 40000-40999 fib daddr type local dnat ip to ip saddr . tcp dport map @nat4\n"), "{r}");
        assert!(r.contains("meta nfproto ipv6 tcp dport 40000-40999 fib daddr type local dnat ip6 to ip6 saddr . tcp dport map @nat6\n"), "{r}");
        let pre = chain(&r, "prerouting");
        assert!(!pre.contains("mark"), "{pre}");
        // After NAT: a DNATed flow is marked only when its 4-tuple is ours.
        let tr = chain(&r, "translated");
        assert!(
            tr.contains("type filter hook prerouting priority dstnat + 1;"),
            "{tr}"
        );
        assert!(tr.contains("meta l4proto tcp ct state new ct status dnat ct original ip saddr . ct original proto-dst . ct reply ip saddr . ct reply proto-src @flows4 ct mark set ct mark | 0x00dc0000"), "{tr}");
        assert!(tr.contains("ct original ip6 saddr . ct original proto-dst . ct reply ip6 saddr . ct reply proto-src @flows6 ct mark set ct mark | 0x00dc0000"), "{tr}");
        assert!(r.contains("set flows4 {\n\t\ttype ipv4_addr . inet_service . ipv4_addr . inet_service\n\t\tflags timeout"), "{r}");
        assert!(r.contains("set wan {\n\t\ttype ifname\n\t}"), "{r}");
        // The router itself is never a detour's destination.
        let inp = chain(&r, "local_in");
        assert!(inp.contains("type filter hook input"), "{inp}");
        assert!(
            inp.contains("ct mark & 0x00dc0000 == 0x00dc0000 drop"),
            "{inp}"
        );
        // Marked flows leave by the WAN or not at all; the packet mark for
        // fw4 comes after that check, before fw4's own chain (priority 0) and
        // before the caps count anything.
        let fwd = chain(&r, "forward");
        assert!(fwd.contains("priority filter - 3;"), "{fwd}");
        let drop = fwd.find("oifname != @wan drop").expect("WAN check");
        let mark = fwd
            .find("meta mark set meta mark | 0x00dd0000")
            .expect("packet mark");
        assert!(drop < mark, "{fwd}");
        assert!(
            fwd.find("ct direction reply return")
                .expect("original only")
                < drop
        );
        assert!(chain(&r, "caps").contains("priority filter - 2;"));
        assert!(chain(&r, "postrouting")
            .contains("ct status dnat ct mark & 0x00dc0000 == 0x00dc0000 masquerade"));
        // Kernels before 6.5 refuse a map used as a set (`... @nat4` without
        // `map`): OpenWrt 23.05 runs 5.15. No rule may do that.
        assert!(!r.contains("dport @"), "{r}");
        assert_eq!(
            r.matches("@nat").count(),
            r.matches("map @nat").count(),
            "{r}"
        );
        assert!(
            r.contains("priority dstnat")
                && r.contains("priority srcnat")
                && r.contains("priority filter")
        );
    }

    /// The text of chain `name` in a ruleset.
    fn chain<'a>(r: &'a str, name: &str) -> &'a str {
        let start = r
            .find(&format!("chain {name} {{"))
            .unwrap_or_else(|| panic!("no chain {name}: {r}"));
        let len = r[start..].find("\n\t}").expect("chain end");
        &r[start..start + len]
    }

    /// Decodes a NEWSETELEM/DELSETELEM message: (type, set, [(key, has
    /// timeout, data)]) of its elements, or no list at all (`None`).
    #[allow(clippy::type_complexity)]
    fn elems(m: &NfMsg) -> (u16, String, Option<Vec<(Vec<u8>, bool, Option<Vec<u8>>)>>) {
        let mut set = String::new();
        let mut list = None;
        for a in m.body().attrs().iter() {
            match ty(a) {
                NFTA_SET_ELEM_LIST_SET => set = string(a),
                NFTA_SET_ELEM_LIST_ELEMENTS => {
                    let mut v = Vec::new();
                    for e in nested("t", a).unwrap().iter() {
                        let (mut key, mut timeout, mut data) = (Vec::new(), false, None);
                        for f in nested("t", e).unwrap().iter() {
                            let value = || {
                                let vs = nested("t", f).unwrap();
                                let v = vs.iter().next().expect("a value");
                                v.nla_payload().as_ref().to_vec()
                            };
                            match ty(f) {
                                NFTA_SET_ELEM_KEY => key = value(),
                                NFTA_SET_ELEM_DATA => data = Some(value()),
                                NFTA_SET_ELEM_TIMEOUT => timeout = true,
                                t => panic!("unexpected attribute {t}"),
                            }
                        }
                        v.push((key, timeout, data));
                    }
                    list = Some(v);
                }
                _ => {}
            }
        }
        (m.ty(), set, list)
    }

    /// A tunnel is two elements, changed together: the map's and the flow
    /// set's (key = the map's key and value, in the `translated` chain's
    /// order). Deleting is add-then-delete of each, without a timeout.
    #[test]
    fn tunnel_batches_keep_map_and_flows_in_step() {
        let e = el("10.0.0.1", 40000, "10.0.0.9:443");
        let key = vec![10, 0, 0, 1, 0x9c, 0x40, 0, 0];
        let data = vec![10, 0, 0, 9, 0x01, 0xbb, 0, 0];
        let flow: Vec<u8> = [key.clone(), data.clone()].concat();
        assert_eq!(flow_key(&e), flow);
        let done = |msgs: Vec<NfMsg>| -> Vec<_> { msgs.iter().map(elems).collect() };
        let (new, del) = (0x0a0c, 0x0a0e);
        let add = done(tunnel_msgs("t", Op::Add(Duration::from_secs(30)), "dcol", &e).unwrap());
        assert_eq!(
            add,
            vec![
                (
                    new,
                    "nat4".into(),
                    Some(vec![(key.clone(), true, Some(data.clone()))])
                ),
                (new, "flows4".into(), Some(vec![(flow.clone(), true, None)])),
            ]
        );
        let rm = done(tunnel_msgs("t", Op::Delete, "dcol", &e).unwrap());
        assert_eq!(
            rm,
            vec![
                (
                    new,
                    "nat4".into(),
                    Some(vec![(key.clone(), false, Some(data))])
                ),
                (del, "nat4".into(), Some(vec![(key, false, None)])),
                (
                    new,
                    "flows4".into(),
                    Some(vec![(flow.clone(), false, None)])
                ),
                (del, "flows4".into(), Some(vec![(flow, false, None)])),
            ]
        );
        // IPv6: 20 + 20 bytes in flows6.
        let e6 = el("2001:db8::1", 40001, "[2001:db8::9]:443");
        let add6 = done(tunnel_msgs("t", Op::Add(Duration::from_secs(1)), "dcol", &e6).unwrap());
        assert_eq!(add6[1].1, "flows6");
        assert_eq!(add6[1].2.as_ref().unwrap()[0].0.len(), 40);
        assert!(tunnel_msgs("t", Op::Delete, "dcol", &el("10.0.0.1", 1, "[::1]:1")).is_err());
    }

    /// Replacing the WAN interfaces: a flush (DELSETELEM without a list),
    /// then every name NUL-padded to IFNAMSIZ in one NEWSETELEM.
    #[test]
    fn wan_set_batch() {
        let names = vec!["eth1".to_owned(), "pppoe-wan".to_owned()];
        let msgs: Vec<_> = set_names_msgs("dcol", "wan", &names)
            .unwrap()
            .iter()
            .map(elems)
            .collect();
        let pad = |n: &str| {
            let mut k = n.as_bytes().to_vec();
            k.resize(16, 0);
            (k, false, None)
        };
        assert_eq!(
            msgs,
            vec![
                (0x0a0e, "wan".into(), None),
                (
                    0x0a0c,
                    "wan".into(),
                    Some(vec![pad("eth1"), pad("pppoe-wan")])
                ),
            ]
        );
        let none = set_names_msgs("dcol", "wan", &[]).unwrap();
        assert_eq!(none.len(), 1, "an empty list only flushes");
        for bad in ["", "sixteen-chars-xx", "a\0b"] {
            assert!(
                set_names_msgs("dcol", "wan", &[bad.to_owned()]).is_err(),
                "{bad:?}"
            );
        }
        assert!(set_names_msgs("dcol", "wan", &["fifteen-chars-x".to_owned()]).is_ok());
    }

    const PORTS: (u16, u16) = (40000, 40099);

    fn root() -> bool {
        if !is_root() {
            eprintln!("SKIP: needs root");
        }
        is_root()
    }

    /// A NEWOBJ answer for a quota: the counter is NFTA_QUOTA_CONSUMED in
    /// the object's data; other attributes are passed over.
    #[test]
    fn quota_answer() {
        let mut data = a(1, &4_000_000u64.to_be_bytes());
        data.extend(a(2, &0u32.to_be_bytes()));
        data.extend(a(NFTA_QUOTA_CONSUMED, &12_345u64.to_be_bytes()));
        let mut p = vec![NFPROTO_INET, 0, 0, 0];
        p.extend(a(NFTA_OBJ_TABLE, b"dcol\0"));
        p.extend(a(NFTA_OBJ_NAME, b"month\0"));
        p.extend(a(NFTA_OBJ_TYPE, &NFT_OBJECT_QUOTA.to_be_bytes()));
        p.extend(a(NFTA_OBJ_DATA | NLA_F_NESTED, &data));
        assert_eq!(quota_consumed(&p).unwrap(), Some(12_345));
        assert_eq!(
            quota_consumed(&p[..p.len() - data.len() - 4]).unwrap(),
            None
        );
        for cut in 0..p.len() {
            let _ = quota_consumed(&p[..cut]);
        }
        assert!(quota_consumed(&p[..p.len() - 2]).is_err());
    }

    /// Root, in a fresh namespace: the monthly quota's counter read over
    /// netlink is the one `nft` shows, carried over from the caps; without
    /// a quota it is 0.
    #[test]
    #[cfg_attr(
        not(dcol_root),
        ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
    )]
    fn root_quota_counter() {
        if !root() {
            return;
        }
        let ns = NsThread::new();
        let (t, _) = ns.run(|| NatTable::create("dcolq", PORTS)).unwrap();
        let caps = Caps {
            kbit: 0,
            month_bytes: 1_000_000,
            used: 12_345,
        };
        let mut t = ns
            .run(move || {
                let mut t = t;
                t.set_caps(&caps).map(|()| t)
            })
            .unwrap();
        assert_eq!(t.quota_used().unwrap(), 12_345);
        let json = ns.out(&["nft", "-j", "list", "quota", "inet", "dcolq", "month"]);
        assert!(json.contains(r#""used": 12345"#), "{json}");
        let mut t = ns
            .run(move || {
                let mut t = t;
                t.set_caps(&Caps::default()).map(|()| t)
            })
            .unwrap();
        assert_eq!(t.quota_used().unwrap(), 0);
        t.destroy().unwrap();
        assert_eq!(ns.out(&["nft", "list", "ruleset"]), "", "nothing left");
    }

    /// Root: a child process spawned by a thread that unshared its network
    /// namespace lives in that namespace (what `NatTable::create` relies on).
    #[test]
    #[cfg_attr(
        not(dcol_root),
        ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
    )]
    fn root_child_inherits_thread_netns() {
        if !root() {
            return;
        }
        let ns = NsThread::new();
        ns.cmd(&["nft", "add", "table", "inet", "dcol_probe_inherit"]);
        assert!(ns.run(|| table_exists("dcol_probe_inherit")).unwrap());
        assert!(
            !table_exists("dcol_probe_inherit").unwrap(),
            "the host must not see the namespace's table"
        );
    }

    /// The elements of set `set` of table `inet <table>` in `ns`, as
    /// `nft -j` prints each (a `concat` of values, or a plain value).
    fn set_elements(ns: &NsThread, table: &str, set: &str) -> Vec<String> {
        let j = ns.out(&["nft", "-j", "list", "set", "inet", table, set]);
        let v: serde_json::Value = serde_json::from_str(&j).expect("nft -j");
        let mut out: Vec<String> = v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["set"]["elem"].as_array())
            .flatten()
            .map(|e| {
                let val = e.get("elem").map_or(e, |x| &x["val"]);
                match val.get("concat").and_then(|c| c.as_array()) {
                    Some(parts) => parts
                        .iter()
                        .map(|p| p.to_string().trim_matches('"').to_owned())
                        .collect::<Vec<_>>()
                        .join(" . "),
                    None => val.to_string().trim_matches('"').to_owned(),
                }
            })
            .collect();
        out.sort();
        out
    }

    /// Root, in a fresh namespace: create, add (v4 and v6), list via netlink
    /// and via `nft`, refresh (the timeout really restarts), remove, crash
    /// reconciliation, destroy. Every step keeps the flow sets in step with
    /// the maps.
    #[test]
    #[cfg_attr(
        not(dcol_root),
        ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
    )]
    fn root_nat_table_lifecycle() {
        if !root() {
            return;
        }
        let ns = NsThread::new();
        let name = "dcoltest";
        let (mut t, left) = ns
            .run(move || NatTable::create(name, PORTS))
            .expect("create");
        assert!(left.is_empty());
        assert!(
            set_elements(&ns, name, WAN_SET).is_empty(),
            "WAN starts empty"
        );
        let e4 = el("10.99.0.1", 40000, "10.98.0.2:443");
        let e6 = el("fd00:99::1", 40001, "[fd00:98::2]:8443");
        t.add(&e4, Duration::from_secs(30)).expect("add v4");
        t.add(&e6, Duration::from_secs(30)).expect("add v6");
        // The flow elements of e4 and e6, as listed.
        let (f4, f6) = (
            "10.99.0.1 . 40000 . 10.98.0.2 . 443",
            "fd00:99::1 . 40001 . fd00:98::2 . 8443",
        );
        // Deletes an element behind the table's back, as an expiry does.
        let forget = |set: &str, e: &str| {
            ns.cmd(&[
                "nft",
                "delete",
                "element",
                "inet",
                name,
                set,
                &format!("{{ {e} }}"),
            ]);
        };
        let in_step = |ns: &NsThread, f4: &[&str], f6: &[&str]| {
            assert_eq!(set_elements(ns, name, FLOWS4), f4, "flows4");
            assert_eq!(set_elements(ns, name, FLOWS6), f6, "flows6");
        };
        in_step(&ns, &[f4], &[f6]);

        let text = ns.out(&["nft", "list", "map", "inet", name, "nat4"]);
        assert!(
            text.contains("10.99.0.1 . 40000 timeout 30s expires"),
            "{text}"
        );
        assert!(text.contains(": 10.98.0.2 . 443"), "{text}");
        let json = ns.out(&["nft", "-j", "list", "map", "inet", name, "nat4"]);
        assert!(json.contains(r#""timeout": 30"#), "{json}");
        assert!(
            json.contains(r#"{"concat": ["10.99.0.1", 40000]}"#),
            "{json}"
        );
        assert!(json.contains(r#"{"concat": ["10.98.0.2", 443]}"#), "{json}");
        let text6 = ns.out(&["nft", "list", "map", "inet", name, "nat6"]);
        assert!(
            text6.contains("fd00:99::1 . 40001 timeout 30s expires"),
            "{text6}"
        );
        assert!(text6.contains(": fd00:98::2 . 8443"), "{text6}");
        let flows = ns.out(&["nft", "list", "set", "inet", name, FLOWS4]);
        assert!(flows.contains("timeout 30s expires"), "{flows}");

        let mut got = t.elements().unwrap();
        got.sort_by_key(|e| e.port);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].client, got[0].port, got[0].destination),
            (e4.client, e4.port, e4.destination)
        );
        assert_eq!(
            (got[1].client, got[1].port, got[1].destination),
            (e6.client, e6.port, e6.destination)
        );
        let left4 = got[0].expires_in.unwrap();
        assert!(
            left4 <= Duration::from_secs(30) && left4 > Duration::from_secs(25),
            "{left4:?}"
        );

        // Adding the same key again replaces it (no EEXIST), flow included.
        t.add(
            &el("10.99.0.1", 40000, "10.98.0.3:443"),
            Duration::from_secs(30),
        )
        .expect("re-add");
        in_step(&ns, &["10.99.0.1 . 40000 . 10.98.0.3 . 443"], &[f6]);
        // Refresh restarts the timeout at the new value.
        t.refresh(&e4, Duration::from_secs(300)).expect("refresh");
        let got = t.elements().unwrap();
        let r = got.iter().find(|e| e.port == 40000).unwrap();
        assert_eq!(r.destination, e4.destination);
        assert!(r.expires_in.unwrap() > Duration::from_secs(290), "{r:?}");
        let text = ns.out(&["nft", "list", "map", "inet", name, "nat4"]);
        assert!(
            text.contains("10.99.0.1 . 40000 timeout 5m expires"),
            "{text}"
        );
        let flows = ns.out(&["nft", "list", "set", "inet", name, FLOWS4]);
        assert!(flows.contains("timeout 5m expires"), "{flows}");
        in_step(&ns, &[f4], &[f6]);
        // Refresh and remove of an element the kernel no longer holds (here
        // deleted behind our back, as an expiry does) succeed.
        forget("nat4", "10.99.0.1 . 40000");
        forget(FLOWS4, f4);
        t.refresh(&e4, Duration::from_secs(10))
            .expect("refresh after expiry");
        assert_eq!(t.elements().unwrap().len(), 2);
        in_step(&ns, &[f4], &[f6]);
        forget("nat4", "10.99.0.1 . 40000");
        t.remove(e4.client, e4.port)
            .expect("remove a half-expired tunnel");
        in_step(&ns, &[], &[f6]);
        t.add(&e4, Duration::from_secs(10)).unwrap();

        t.remove(e4.client, e4.port).expect("remove");
        t.remove(e4.client, e4.port).expect("remove twice is fine");
        let got = t.elements().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].port, 40001);
        in_step(&ns, &[], &[f6]);
        // A map element we did not install (someone else's data under our
        // key) is replaced, and removed, all the same.
        ns.cmd(&[
            "nft",
            "add",
            "element",
            "inet",
            name,
            "nat4",
            "{ 10.99.0.7 . 40007 : 10.98.0.7 . 7 }",
        ]);
        t.add(
            &el("10.99.0.7", 40007, "10.98.0.8:8"),
            Duration::from_secs(10),
        )
        .expect("replace a foreign element");
        assert_eq!(
            set_elements(&ns, name, FLOWS4),
            ["10.99.0.7 . 40007 . 10.98.0.8 . 8"]
        );
        t.remove("10.99.0.7".parse().unwrap(), 40007).unwrap();
        assert!(set_elements(&ns, name, FLOWS4).is_empty());
        assert_eq!(t.elements().unwrap().len(), 1);

        // The WAN set: replaced as a whole, emptied.
        t.set_wan(&["eth1".into(), "pppoe-wan".into()]).unwrap();
        assert_eq!(set_elements(&ns, name, WAN_SET), ["eth1", "pppoe-wan"]);
        t.set_wan(&["wwan0".into()]).unwrap();
        assert_eq!(set_elements(&ns, name, WAN_SET), ["wwan0"]);
        t.set_wan(&[]).unwrap();
        assert!(set_elements(&ns, name, WAN_SET).is_empty());
        assert!(t.set_wan(&["x".repeat(16)]).is_err());
        t.set_wan(&["wwan0".into()]).unwrap();

        // Crash: the table is left behind; the next create lists and replaces it.
        drop(t);
        let (t2, left) = ns
            .run(move || NatTable::create(name, PORTS))
            .expect("second create");
        assert_eq!(left.len(), 1);
        assert_eq!(
            (left[0].client, left[0].port, left[0].destination),
            (e6.client, e6.port, e6.destination)
        );
        let tables = ns.out(&["nft", "list", "tables"]);
        assert_eq!(
            tables.matches(&format!("table inet {name}")).count(),
            1,
            "{tables}"
        );
        let mut t2 = t2;
        assert!(t2.elements().unwrap().is_empty());
        in_step(&ns, &[], &[]);
        assert!(
            set_elements(&ns, name, WAN_SET).is_empty(),
            "a new table starts closed"
        );

        t2.destroy().expect("destroy");
        assert!(!ns.run(move || table_exists(name)).unwrap());
        assert_eq!(ns.out(&["nft", "list", "ruleset"]), "", "nothing left");
        // Destroying what is already gone is fine.
        let (mut t3, _) = ns.run(move || NatTable::create(name, PORTS)).unwrap();
        ns.cmd(&["nft", "delete", "table", "inet", name]);
        assert!(t3.elements().expect("listing a vanished table").is_empty());
        t3.destroy().expect("destroy of a vanished table");
        assert!(matches!(
            ns.run(|| NatTable::create("bad name", PORTS)),
            Err(SysError::Io { .. })
        ));
    }

    /// A TCP connection from the calling thread's namespace, or the error
    /// after `secs` (a dropped SYN times out; a refused one fails at once).
    fn try_connect(to: &str, secs: u64) -> std::io::Result<std::net::TcpStream> {
        std::net::TcpStream::connect_timeout(&to.parse().unwrap(), Duration::from_secs(secs))
    }

    /// `conntrack -L` lines in `ns` whose original destination port is `port`.
    fn ct_flows(ns: &NsThread, port: u16) -> String {
        let p = port.to_string();
        ns.out(&["conntrack", "-L", "-p", "tcp", "--orig-port-dst", &p])
    }

    /// A connection from `from` to `to`, served in `at`, that arrives from
    /// `peer` and is unmarked in the waypoint `w`'s conntrack. Returns the
    /// flow as `conntrack -L` shows it.
    fn unmarked_flow(w: &NsThread, from: &NsThread, at: &NsThread, to: &str, peer: &str) -> String {
        let addr: SocketAddr = to.parse().unwrap();
        let l = at.run(move || testsock::listen(addr, false)).unwrap();
        let to = to.to_owned();
        let _c = from.run(move || try_connect(&to, 5)).expect("connect");
        let (_s, got) = l.accept().unwrap();
        assert_eq!(got.ip(), peer.parse::<IpAddr>().unwrap());
        let ct = ct_flows(w, addr.port());
        assert!(ct.contains("mark=0 ") && !ct.contains("mark=144"), "{ct}");
        ct
    }

    /// A tunnel on `port` from the client to `dest`, served in `at`: the
    /// client's SYN times out and `dest` sees nothing.
    fn dropped_tunnel(t: &mut NatTable, c: &NsThread, at: &NsThread, port: u16, dest: &str) {
        let d: SocketAddr = dest.parse().unwrap();
        let l = at.run(move || testsock::listen(d, false)).unwrap();
        l.set_nonblocking(true).unwrap();
        t.add(&el("10.99.0.1", port, dest), Duration::from_secs(60))
            .unwrap();
        let r = c.run(move || try_connect(&format!("10.99.0.2:{port}"), 2));
        assert_eq!(
            r.map(|_| ()).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::TimedOut),
            "a tunnel to {dest} must be dropped"
        );
        assert!(l.accept().is_err(), "{dest} was reached through a tunnel");
    }

    /// Root, four namespaces:
    /// ```text
    ///  client (10.99.0.1) ──wc── waypoint ──ws── server (10.98.0.2)
    ///                               └──wl── lan (10.97.0.2)
    /// ```
    /// `wc` and `ws` are the waypoint's WAN (a router's one WAN interface
    /// split in two so the test can tell directions apart), `wl` its LAN.
    /// A tunnel is DNATed to the server, marked and masqueraded, and leaves
    /// only by the WAN; nothing else is marked or translated: a packet to a
    /// tunnel port no element matches, a flow forwarded from the LAN to a
    /// remote port in the range. A tunnel DNATed to the LAN is dropped in
    /// forward, one DNATed to the router's own address in input.
    #[test]
    #[cfg_attr(
        not(dcol_root),
        ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
    )]
    fn root_nat_forwarding_and_masquerade() {
        if !root() {
            return;
        }
        let (w, hosts) = star(&[
            ("wc", "10.99.0.2/24", "cw", "10.99.0.1/24"),
            ("ws", "10.98.0.1/24", "sw", "10.98.0.2/24"),
            ("wl", "10.97.0.1/24", "lw", "10.97.0.2/24"),
        ]);
        let [c, s, l] = <[NsThread; 3]>::try_from(hosts).ok().expect("three hosts");
        let (mut t, _) = w.run(|| NatTable::create("dcolfw", PORTS)).expect("create");
        t.add(
            &el("10.99.0.1", 40000, "10.98.0.2:5000"),
            Duration::from_secs(60),
        )
        .unwrap();
        let listener = s
            .run(|| testsock::listen("10.98.0.2:5000".parse().unwrap(), false))
            .unwrap();
        listener.set_nonblocking(true).unwrap();

        // No WAN interface known yet: the tunnel is dropped, not forwarded.
        let r = c.run(|| try_connect("10.99.0.2:40000", 2));
        assert_eq!(
            r.map(|_| ()).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::TimedOut),
            "an empty WAN set must drop the tunnel"
        );
        assert!(
            listener.accept().is_err(),
            "the server saw the dropped tunnel"
        );

        t.set_wan(&["wc".into(), "ws".into()]).unwrap();
        let tunnel = c.run(|| try_connect("10.99.0.2:40000", 5)).expect("tunnel");
        listener.set_nonblocking(false).unwrap();
        let (_srv1, peer1) = listener.accept().unwrap();
        assert_eq!(
            peer1.ip(),
            "10.98.0.1".parse::<IpAddr>().unwrap(),
            "tunnel flows are masqueraded"
        );
        let direct = c.run(|| try_connect("10.98.0.2:5000", 5)).expect("direct");
        let (_srv2, peer2) = listener.accept().unwrap();
        assert_eq!(
            peer2.ip(),
            "10.99.0.1".parse::<IpAddr>().unwrap(),
            "unrelated forwarded flows are not"
        );
        let ct = ct_flows(&w, 40000);
        assert!(ct.contains("dport=40000"), "{ct}");
        assert!(ct.contains("mark=14417920"), "detour flow not marked: {ct}");
        let ct = ct_flows(&w, 5000);
        assert!(ct.contains("mark=0 "), "unrelated flow marked: {ct}");

        // A tunnel port no element matches (another client, no lease): not
        // translated, not marked; here a service of the router's own
        // answers it.
        let ct = unmarked_flow(&w, &c, &w, "10.99.0.2:40001", "10.99.0.1");
        assert!(
            ct.contains("src=10.99.0.2 dst=10.99.0.1 sport=40001"),
            "{ct}"
        );
        // The owner's LAN host connects to a remote server on a port in the
        // range: forwarded untouched (not translated, not marked).
        let ct = unmarked_flow(&w, &l, &s, "10.98.0.2:40002", "10.97.0.2");
        assert!(
            ct.contains("src=10.98.0.2 dst=10.97.0.2 sport=40002"),
            "{ct}"
        );

        // The policy's mistakes: a tunnel to the LAN is dropped in forward,
        // one to the router's own address in input.
        dropped_tunnel(&mut t, &c, &l, 40003, "10.97.0.2:22");
        dropped_tunnel(&mut t, &c, &w, 40004, "10.97.0.1:22");

        // Revocation deletes the flow (sys::conntrack).
        let n = w
            .run(|| crate::sys::conntrack::delete_flows("10.99.0.1".parse().unwrap(), 40000))
            .expect("delete_flows");
        assert_eq!(n, 1);
        let ct = w.out(&["conntrack", "-L", "-p", "tcp"]);
        assert!(!ct.contains("dport=40000"), "{ct}");
        assert!(ct.contains("dport=5000"), "the direct flow survives: {ct}");
        assert_eq!(
            w.run(|| crate::sys::conntrack::delete_flows("10.99.0.1".parse().unwrap(), 40000))
                .unwrap(),
            0
        );
        drop((tunnel, direct));
        t.destroy().unwrap();
        assert_eq!(w.out(&["nft", "list", "ruleset"]), "", "nothing left");
    }
}
