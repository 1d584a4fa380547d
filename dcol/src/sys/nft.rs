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
//!
//! Here: the table's handle and its batches; `script` writes the `nft -f`
//! scripts (ruleset, caps); `elements` encodes and decodes set elements.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use neli::consts::nl::NlmF;

use super::netlink::{attr, attr_str, be64, nest, nested, ty, Attr};
use super::nfnl::{msg_type, NfMsg, NfSocket, Nfgenmsg};
use super::SysError;

mod elements;
mod script;

use elements::*;
pub use elements::{decode_setelems, quota_consumed};
pub(crate) use elements::{flush_set_msg, set_key_msg, set_names_msgs};
pub use script::{caps_script, ruleset, Caps, DETOUR_CT_MARK, DETOUR_PACKET_MARK};

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

/// The nf_tables netlink subsystem, for batches.
pub(crate) const SUBSYS: u8 = NFNL_SUBSYS_NFTABLES;

/// The bytes of a message's payload after the netlink header (for tests).
#[cfg(test)]
fn payload(b: &[u8]) -> &[u8] {
    &b[super::netlink::NLMSG_HDRLEN..]
}

#[cfg(test)]
mod tests;
