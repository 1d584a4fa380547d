//! The waypoint's NAT table in nf_tables.
//!
//! One table `inet <name>` holds two maps, `nat4` and `nat6`, from
//! `client address . waypoint port` to `server address . server port`, each
//! element with a timeout. Its chains:
//! - `prerouting` (nat, priority dstnat): `dnat ip to ip saddr . tcp dport map @nat4`
//!   (and the ip6 twin): a client's packets to its allocated port go to the server;
//!   such flows also get the conntrack mark bits [`DETOUR_CT_MARK`], so that a
//!   firewall we do not own (OpenWrt's fw4) can accept them by a static rule;
//! - `postrouting` (nat, priority srcnat): masquerades DNATed flows carrying
//!   our conntrack mark (set by the DNAT rule), and nothing else. (Not a
//!   lookup of the original tuple in the maps: kernels before 6.5 refuse a map
//!   used as a set, found by booting Debian's 6.1 kernel in `cross/qemu-boot`.)
//! - `forward` (filter, priority filter, policy accept): accepts `ct status dnat`
//!   flows. It changes nothing by itself (an accept in one base chain does not
//!   override a drop in another): on OpenWrt fw4's forward chain must accept them
//!   too, which the feed's nftables include does.
//!
//! The table, maps and chains are created once per daemon start by one
//! `nft -f -` process ([`NatTable::create`]); that also reconciles a crashed run
//! (it returns the elements the old table held so that their conntrack entries
//! can be deleted, and replaces the table). Every per-request change (add,
//! refresh, remove an element), the element listing and the final deletion of the
//! table are nf_tables netlink messages sent in nfnetlink batches; no process is
//! spawned for them and `destroy` works without the `nft` binary.
//!
//! Element timeouts stop only new connections: a running flow lives on in
//! conntrack (see `sys::conntrack`).

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::netlink::{nfgenmsg, Attrs, Msg, MsgBuilder, NlSocket, NETLINK_NETFILTER, NLM_F_CREATE};
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

/// The IPv4 map's name.
pub const MAP4: &str = "nat4";
/// The IPv6 map's name.
pub const MAP6: &str = "nat6";

/// `nfnetlink` message type for an nf_tables message.
const fn nft_type(msg: u8) -> u16 {
    ((NFNL_SUBSYS_NFTABLES as u16) << 8) | msg as u16
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
    sock: NlSocket,
    name: String,
    /// The `month` quota object exists.
    quota: bool,
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

    /// Bytes counted by the monthly quota so far (0 without one).
    pub fn quota_used(&self) -> Result<u64, SysError> {
        if !self.quota {
            return Ok(0);
        }
        let op = "nft list quota";
        let out = Command::new("nft")
            .args(["-j", "list", "quota", "inet", &self.name, "month"])
            .output()
            .map_err(|e| SysError::io(op, e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // `"used": N` in the quota object (the only "used" in the listing).
        text.split("\"used\":")
            .nth(1)
            .and_then(|r| {
                r.trim_start()
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .ok_or_else(|| SysError::Malformed {
                op,
                what: format!("no used bytes in {text:?}"),
            })
    }

    /// Creates table `inet <name>` with its maps and chains, replacing one left
    /// by a crashed run; only packets to TCP ports `ports.0..=ports.1` (the
    /// waypoint's tunnel ports) are looked up in the maps. Returns the table and
    /// the elements the old table held (their conntrack entries are the
    /// caller's to delete). Runs `nft -f -` once; the process inherits the
    /// calling thread's network namespace.
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
            sock: NlSocket::open(NETLINK_NETFILTER)?,
            name: name.to_owned(),
            quota: false,
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

    /// Adds `el` with `timeout` (at least 1 ms). An element with the same
    /// `client . port` is replaced (delete + add in one batch).
    pub fn add(&mut self, el: &NatElement, timeout: Duration) -> Result<(), SysError> {
        let op = "nft add element";
        let new = setelem_msg(NFT_MSG_NEWSETELEM, &self.name, el, Some(timeout))
            .map_err(|e| SysError::io(op, e))?;
        match self.sock.batch(op, NFNL_SUBSYS_NFTABLES, vec![new]) {
            Err(SysError::Netlink { errno, .. })
                if errno == libc::EEXIST || errno == libc::EBUSY =>
            {
                self.replace(op, el, timeout)
            }
            r => r,
        }
    }

    /// Restarts `el`'s timeout at `timeout`: delete + add in one atomic batch
    /// (a plain re-add does not update timeouts on every kernel). If the element
    /// had already expired, it is added again.
    pub fn refresh(&mut self, el: &NatElement, timeout: Duration) -> Result<(), SysError> {
        let op = "nft refresh element";
        match self.replace(op, el, timeout) {
            Err(SysError::Netlink { errno, .. }) if errno == libc::ENOENT => {
                let new = setelem_msg(NFT_MSG_NEWSETELEM, &self.name, el, Some(timeout))
                    .map_err(|e| SysError::io(op, e))?;
                self.sock.batch(op, NFNL_SUBSYS_NFTABLES, vec![new])
            }
            r => r,
        }
    }

    fn replace(
        &mut self,
        op: &'static str,
        el: &NatElement,
        timeout: Duration,
    ) -> Result<(), SysError> {
        let del = setelem_msg(NFT_MSG_DELSETELEM, &self.name, el, None)
            .map_err(|e| SysError::io(op, e))?;
        let new = setelem_msg(NFT_MSG_NEWSETELEM, &self.name, el, Some(timeout))
            .map_err(|e| SysError::io(op, e))?;
        self.sock.batch(op, NFNL_SUBSYS_NFTABLES, vec![del, new])
    }

    /// Removes the element keyed `client . port`; a missing one is fine.
    pub fn remove(&mut self, client: IpAddr, port: u16) -> Result<(), SysError> {
        let op = "nft delete element";
        let dest = match client {
            IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
        };
        let el = NatElement {
            client,
            port,
            destination: dest,
            expires_in: None,
        };
        let del = setelem_msg(NFT_MSG_DELSETELEM, &self.name, &el, None)
            .map_err(|e| SysError::io(op, e))?;
        match self.sock.batch(op, NFNL_SUBSYS_NFTABLES, vec![del]) {
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
    let mut sock = NlSocket::open(NETLINK_NETFILTER)?;
    table_exists_on(&mut sock, name)
}

pub(crate) fn table_exists_on(sock: &mut NlSocket, name: &str) -> Result<bool, SysError> {
    let op = "nft get table";
    let mut m = MsgBuilder::new(nft_type(NFT_MSG_GETTABLE), 0);
    m.push_header(&nfgenmsg(NFPROTO_INET, 0));
    m.attr_str(NFTA_TABLE_NAME, name);
    match sock.request(op, m, |_| Ok(())) {
        Ok(()) => Ok(true),
        Err(SysError::Netlink { errno, .. }) if errno == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

pub(crate) fn delete_table(sock: &mut NlSocket, name: &str) -> Result<(), SysError> {
    let op = "nft delete table";
    let mut m = MsgBuilder::new(nft_type(NFT_MSG_DELTABLE), 0);
    m.push_header(&nfgenmsg(NFPROTO_INET, 0));
    m.attr_str(NFTA_TABLE_NAME, name);
    match sock.batch(op, NFNL_SUBSYS_NFTABLES, vec![m]) {
        Err(SysError::Netlink { errno, .. }) if errno == libc::ENOENT => Ok(()),
        r => r,
    }
}

fn list_map(
    sock: &mut NlSocket,
    table: &str,
    map: &str,
    v6: bool,
) -> Result<Vec<NatElement>, SysError> {
    let op = "nft list map elements";
    let mut tries = 0;
    loop {
        let mut m = MsgBuilder::new(nft_type(NFT_MSG_GETSETELEM), 0);
        m.push_header(&nfgenmsg(NFPROTO_INET, 0));
        m.attr_str(NFTA_SET_ELEM_LIST_TABLE, table)
            .attr_str(NFTA_SET_ELEM_LIST_SET, map);
        let mut out = Vec::new();
        let r = sock.dump(op, m, |reply: &Msg<'_>| {
            if reply.ty == nft_type(NFT_MSG_NEWSETELEM) {
                out.extend(decode_setelems(reply.payload, v6)?);
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

/// Conntrack mark bits set on every detour flow (OR-ed in, other bits kept).
/// The OpenWrt feed's fw4 include accepts forwarded flows carrying them:
/// `ct mark & 0x00dc0000 == 0x00dc0000 accept`.
pub const DETOUR_CT_MARK: u32 = 0x00dc_0000;

/// The `nft -f` script that creates the table (see the module docs).
pub fn ruleset(name: &str, ports: (u16, u16)) -> String {
    let (lo, hi) = ports;
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
	chain prerouting {{
		type nat hook prerouting priority dstnat; policy accept;
		meta nfproto ipv4 tcp dport {lo}-{hi} ct mark set ct mark | {DETOUR_CT_MARK:#010x} dnat ip to ip saddr . tcp dport map @{MAP4}
		meta nfproto ipv6 tcp dport {lo}-{hi} ct mark set ct mark | {DETOUR_CT_MARK:#010x} dnat ip6 to ip6 saddr . tcp dport map @{MAP6}
	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat ct mark & {DETOUR_CT_MARK:#010x} == {DETOUR_CT_MARK:#010x} masquerade
	}}
	chain caps {{
		type filter hook forward priority filter - 2; policy accept;
	}}
	chain forward {{
		type filter hook forward priority filter; policy accept;
		ct status dnat accept
	}}
}}
"
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

/// Builds a NEWSETELEM (with `timeout`) or DELSETELEM message for one key of a
/// plain set (no data) `set` in table `inet <table>`.
pub(crate) fn set_key_msg(
    msg_add: bool,
    table: &str,
    set: &str,
    key: &[u8],
    timeout: Option<Duration>,
) -> MsgBuilder {
    let (msg, flags) = if msg_add {
        (NFT_MSG_NEWSETELEM, NLM_F_CREATE)
    } else {
        (NFT_MSG_DELSETELEM, 0)
    };
    let mut m = MsgBuilder::new(nft_type(msg), flags);
    m.push_header(&nfgenmsg(NFPROTO_INET, 0));
    m.attr_str(NFTA_SET_ELEM_LIST_TABLE, table)
        .attr_str(NFTA_SET_ELEM_LIST_SET, set);
    let list = m.begin_nested(NFTA_SET_ELEM_LIST_ELEMENTS);
    let e = m.begin_nested(NFTA_LIST_ELEM);
    let k = m.begin_nested(NFTA_SET_ELEM_KEY);
    m.attr(NFTA_DATA_VALUE, key);
    m.end_nested(k);
    if let Some(t) = timeout.filter(|_| msg_add) {
        m.attr_be64(
            NFTA_SET_ELEM_TIMEOUT,
            t.as_millis().clamp(1, u128::from(u64::MAX)) as u64,
        );
    }
    m.end_nested(e);
    m.end_nested(list);
    m
}

/// The nf_tables netlink subsystem, for batches.
pub(crate) const SUBSYS: u8 = NFNL_SUBSYS_NFTABLES;

/// Builds a NEWSETELEM or DELSETELEM message for `el` in its family's map.
/// Deletion carries only the key; `timeout` only matters for NEWSETELEM.
fn setelem_msg(
    msg: u8,
    table: &str,
    el: &NatElement,
    timeout: Option<Duration>,
) -> io::Result<MsgBuilder> {
    if el.client.is_ipv4() != el.destination.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "client {} and destination {} differ in address family",
                el.client, el.destination
            ),
        ));
    }
    let map = if el.client.is_ipv4() { MAP4 } else { MAP6 };
    let flags = if msg == NFT_MSG_NEWSETELEM {
        NLM_F_CREATE
    } else {
        0
    };
    let mut m = MsgBuilder::new(nft_type(msg), flags);
    m.push_header(&nfgenmsg(NFPROTO_INET, 0));
    m.attr_str(NFTA_SET_ELEM_LIST_TABLE, table)
        .attr_str(NFTA_SET_ELEM_LIST_SET, map);
    let list = m.begin_nested(NFTA_SET_ELEM_LIST_ELEMENTS);
    let e = m.begin_nested(NFTA_LIST_ELEM);
    let k = m.begin_nested(NFTA_SET_ELEM_KEY);
    m.attr(NFTA_DATA_VALUE, &concat(el.client, el.port));
    m.end_nested(k);
    if msg == NFT_MSG_NEWSETELEM {
        let ms = timeout
            .unwrap_or_default()
            .as_millis()
            .clamp(1, u128::from(u64::MAX)) as u64;
        m.attr_be64(NFTA_SET_ELEM_TIMEOUT, ms);
        let d = m.begin_nested(NFTA_SET_ELEM_DATA);
        m.attr(
            NFTA_DATA_VALUE,
            &concat(el.destination.ip(), el.destination.port()),
        );
        m.end_nested(d);
    }
    m.end_nested(e);
    m.end_nested(list);
    Ok(m)
}

/// Decodes one GETSETELEM reply (nfgenmsg + attributes). Elements whose key or
/// data do not have our layout are logged and skipped.
fn decode_setelems(payload: &[u8], v6: bool) -> Result<Vec<NatElement>, SysError> {
    let op = "nft decode set elements";
    let attrs = payload.get(4..).ok_or_else(|| SysError::Malformed {
        op,
        what: "short nfgenmsg".into(),
    })?;
    let mut out = Vec::new();
    for a in Attrs::new(op, attrs) {
        let a = a?;
        if a.ty != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for e in a.nested() {
            let e = e?;
            if e.ty != NFTA_LIST_ELEM {
                continue;
            }
            let (mut key, mut data, mut expires) = (None, None, None);
            for f in e.nested() {
                let f = f?;
                match f.ty {
                    NFTA_SET_ELEM_KEY | NFTA_SET_ELEM_DATA => {
                        for v in f.nested() {
                            let v = v?;
                            if v.ty == NFTA_DATA_VALUE {
                                let p = parse_concat(v.payload, v6);
                                if f.ty == NFTA_SET_ELEM_KEY {
                                    key = p;
                                } else {
                                    data = p;
                                }
                            }
                        }
                    }
                    NFTA_SET_ELEM_EXPIRATION => expires = Some(Duration::from_millis(f.u64_be()?)),
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

/// The bytes of a message's payload after the netlink header (for tests).
#[cfg(test)]
fn payload(b: &[u8]) -> &[u8] {
    &b[super::netlink::NLMSG_HDRLEN..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::testns::{is_root, NsThread};
    use crate::sys::netlink::{testsock, NLA_F_NESTED};

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

    fn a(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut v = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
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
            NFT_MSG_NEWSETELEM,
            "dcol",
            &e,
            Some(Duration::from_secs(30)),
        )
        .unwrap()
        .finish("t")
        .unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(&(b.len() as u32).to_ne_bytes());
        want.extend_from_slice(&0x0a0cu16.to_ne_bytes());
        want.extend_from_slice(&NLM_F_CREATE.to_ne_bytes());
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
        let b = setelem_msg(NFT_MSG_DELSETELEM, "dcol", &e6, None)
            .unwrap()
            .finish("t")
            .unwrap();
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x0a0e);
        let decoded: Vec<_> = Attrs::new("t", &payload(&b)[4..])
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(decoded[1].str().unwrap(), "nat6");
        let inner: Vec<_> = decoded[2]
            .nested()
            .next()
            .unwrap()
            .unwrap()
            .nested()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(inner.len(), 1);
        assert_eq!(inner[0].ty, NFTA_SET_ELEM_KEY);
        // Mixed families are refused before reaching the kernel.
        assert!(setelem_msg(
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
        assert!(r.contains("tcp dport 40000-40999 ct mark set ct mark | 0x00dc0000 dnat ip to ip saddr . tcp dport map @nat4"));
        assert!(r.contains("dnat ip6 to ip6 saddr . tcp dport map @nat6"));
        // Kernels before 6.5 refuse a map used as a set (`... @nat4` without
        // `map`): OpenWrt 23.05 runs 5.15. No rule may do that.
        assert!(!r.contains("dport @"), "{r}");
        assert!(
            r.contains("priority dstnat")
                && r.contains("priority srcnat")
                && r.contains("priority filter")
        );
    }

    const PORTS: (u16, u16) = (40000, 40099);

    fn root() -> bool {
        if !is_root() {
            eprintln!("SKIP: needs root");
        }
        is_root()
    }

    /// Root: a child process spawned by a thread that unshared its network
    /// namespace lives in that namespace (what `NatTable::create` relies on).
    #[test]
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

    /// Root, in a fresh namespace: create, add (v4 and v6), list via netlink
    /// and via `nft`, refresh (the timeout really restarts), remove, crash
    /// reconciliation, destroy.
    #[test]
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
        let e4 = el("10.99.0.1", 40000, "10.98.0.2:443");
        let e6 = el("fd00:99::1", 40001, "[fd00:98::2]:8443");
        t.add(&e4, Duration::from_secs(30)).expect("add v4");
        t.add(&e6, Duration::from_secs(30)).expect("add v6");

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

        // Adding the same key again replaces it (no EEXIST).
        t.add(
            &el("10.99.0.1", 40000, "10.98.0.3:443"),
            Duration::from_secs(30),
        )
        .expect("re-add");
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
        // Refresh of an expired (here: removed) element adds it back.
        t.remove(e4.client, e4.port).unwrap();
        t.refresh(&e4, Duration::from_secs(10))
            .expect("refresh after expiry");
        assert_eq!(t.elements().unwrap().len(), 2);

        t.remove(e4.client, e4.port).expect("remove");
        t.remove(e4.client, e4.port).expect("remove twice is fine");
        let got = t.elements().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].port, 40001);

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

        t2.destroy().expect("destroy");
        assert!(!ns.run(move || table_exists(name)).unwrap());
        assert!(!ns.out(&["nft", "list", "tables"]).contains(name));
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

    /// Root, three namespaces: client ── waypoint ── server. A tunnel through
    /// the map is DNATed to the server and masqueraded; unrelated forwarded
    /// traffic is not masqueraded.
    #[test]
    fn root_nat_forwarding_and_masquerade() {
        if !root() {
            return;
        }
        let (c, w, s) = (NsThread::new(), NsThread::new(), NsThread::new());
        w.cmd(&[
            "ip", "link", "add", "wc", "type", "veth", "peer", "name", "cw", "netns", &c.tid,
        ]);
        w.cmd(&[
            "ip", "link", "add", "ws", "type", "veth", "peer", "name", "sw", "netns", &s.tid,
        ]);
        for (ns, dev, addr) in [
            (&w, "wc", "10.99.0.2/24"),
            (&w, "ws", "10.98.0.1/24"),
            (&c, "cw", "10.99.0.1/24"),
            (&s, "sw", "10.98.0.2/24"),
        ] {
            ns.cmd(&["ip", "addr", "add", addr, "dev", dev]);
            ns.cmd(&["ip", "link", "set", dev, "up"]);
        }
        c.cmd(&["ip", "route", "add", "10.98.0.0/24", "via", "10.99.0.2"]);
        s.cmd(&["ip", "route", "add", "default", "via", "10.98.0.1"]);
        w.run(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .expect("ip_forward in the namespace")
        });
        let (mut t, _) = w.run(|| NatTable::create("dcolfw", PORTS)).expect("create");
        t.add(
            &el("10.99.0.1", 40000, "10.98.0.2:5000"),
            Duration::from_secs(60),
        )
        .unwrap();
        let listener = s
            .run(|| testsock::listen("10.98.0.2:5000".parse().unwrap(), false))
            .unwrap();

        let tunnel = c
            .run(|| testsock::connect(None, "10.99.0.2:40000".parse().unwrap(), false))
            .expect("tunnel");
        let (_srv1, peer1) = listener.accept().unwrap();
        assert_eq!(
            peer1.ip(),
            "10.98.0.1".parse::<IpAddr>().unwrap(),
            "tunnel flows are masqueraded"
        );
        let direct = c
            .run(|| testsock::connect(None, "10.98.0.2:5000".parse().unwrap(), false))
            .expect("direct");
        let (_srv2, peer2) = listener.accept().unwrap();
        assert_eq!(
            peer2.ip(),
            "10.99.0.1".parse::<IpAddr>().unwrap(),
            "unrelated forwarded flows are not"
        );

        let ct = w.out(&["conntrack", "-L", "-p", "tcp", "--orig-port-dst", "40000"]);
        assert!(ct.contains("dport=40000"), "{ct}");
        assert!(ct.contains("mark=14417920"), "detour flow not marked: {ct}");
        let ct = w.out(&["conntrack", "-L", "-p", "tcp", "--orig-port-dst", "5000"]);
        assert!(ct.contains("mark=0 "), "unrelated flow marked: {ct}");
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
    }
}
