//! The table's `nft -f` scripts: the ruleset that creates it (see the
//! module docs of [`super`]) and the donation caps, with the mark bits they
//! match.

use super::*;

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
