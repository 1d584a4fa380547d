//! Signaling datagrams: decode never panics; what decodes re-encodes to a
//! datagram that decodes to the same message.
#![no_main]

use dcol::proto::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode(data) {
        let again = encode(&m);
        assert_eq!(decode(&again).expect("re-encoded message decodes"), m);
    }
});
