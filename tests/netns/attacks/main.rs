// Needs: root, network namespaces, kernel MPTCP (userspace path manager),
// nftables (NAT, maps, fib), conntrack; programs ip, nft, conntrack, iperf3,
// mptcpize; OpenWrt's firewall4 built from ../shared/openwrt (tests/src/openwrt.rs
// builds it under target/). tests/setup.sh installs the rest.
//
//! Issue 14, "A waypoint is safe to run at home": every attack a hostile
//! Internet host, a hostile member or a hostile LAN host can try against a
//! waypoint router, each run against the real daemon in namespaces, with the
//! router's firewall made by the real firewall4 plus the feed's include.
//!
//! - [`firewall`]: WAN→LAN through the NAT port range (IPv4, IPv6), detour
//!   flows the kernel must drop whatever the policy said, the owner's own
//!   LAN→WAN flows to ports in the range.
//! - [`policy`]: members asking for LAN destinations and for the router's
//!   own (changed) address.
//! - [`signaling`]: replay-cache lockout, forged-signature flood, replay from
//!   another address, evidence washing.
//! - [`lan`]: the LAN proxy and private destinations, fd exhaustion.
//! - [`control`]: stuck local clients of the control socket, a burst
//!   beyond its cap.

mod control;
mod firewall;
mod lan;
mod policy;
mod signaling;
