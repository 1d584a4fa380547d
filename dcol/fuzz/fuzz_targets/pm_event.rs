//! MPTCP path-manager events: whole datagrams of the event group (netlink
//! framing, then neli's generic netlink decoding) and bare event bodies
//! (generic netlink header + attributes): decoding never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dcol::sys::mptcp_pm::decode_datagram(0x1c, data);
    let _ = dcol::sys::mptcp_pm::decode_event_bytes(data);
});
