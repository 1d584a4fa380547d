//! PCP answers and `/proc/net/ipv6_route` text from arbitrary bytes: parsing
//! never panics, and a MAP answer is only ever accepted for the nonce,
//! protocol and port asked about.
#![no_main]

use dcol::traversal::pcp;
use dcol::traversal::Protocol;
use libfuzzer_sys::fuzz_target;

const NONCE: [u8; 12] = [7; 12];

fuzz_target!(|data: &[u8]| {
    for (proto, number) in [(Protocol::Tcp, 6u8), (Protocol::Udp, 17u8)] {
        if pcp::parse_map(data, &NONCE, proto, 40000).is_ok() {
            assert_eq!(&data[24..36], &NONCE);
            assert_eq!(data[36], number);
            assert_eq!(&data[40..42], &40000u16.to_be_bytes());
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pcp::default_router6(text);
    }
});
