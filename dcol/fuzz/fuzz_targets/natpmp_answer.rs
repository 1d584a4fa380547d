//! NAT-PMP answers and `/proc/net/route` text from arbitrary bytes: parsing
//! never panics, and a mapping answer is only ever for the port asked about.
#![no_main]

use dcol::traversal::natpmp;
use dcol::traversal::Protocol;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = natpmp::parse_address(data);
    for proto in [Protocol::Tcp, Protocol::Udp] {
        if natpmp::parse_map(data, proto, 40000).is_ok() {
            assert_eq!(&data[8..10], &40000u16.to_be_bytes());
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = natpmp::default_gateway(text);
    }
});
