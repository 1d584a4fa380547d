//! MPTCP path-manager events (generic netlink header + attributes): decoding
//! never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dcol::sys::mptcp_pm::decode_event_bytes(data);
});
