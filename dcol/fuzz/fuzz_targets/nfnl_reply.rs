//! Netfilter netlink answers and notifications, and the error payloads
//! rtnetlink keeps: nf_tables set-element listings (IPv4 and IPv6 layouts)
//! and quota objects, ctnetlink entries, ruleset notifications as whole
//! datagrams (framing, then neli's decoding), the extended-ack text after an
//! echoed request. Decoding never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dcol::sys::nft::decode_setelems(data, false);
    let _ = dcol::sys::nft::decode_setelems(data, true);
    let _ = dcol::sys::nft::quota_consumed(data);
    let _ = dcol::sys::conntrack::parse_flow(data);
    let own = ["dcol".to_owned()];
    for m in dcol::sys::netlink::Messages::new("fuzz", data).flatten() {
        let _ = dcol::sys::lan::foreign_change(&m, &own);
    }
    let _ = dcol::sys::netlink::extack_after_echo(data);
});
