//! Signaling datagrams: decode never panics; what decodes re-encodes to a
//! datagram that decodes to the same message; the message without its
//! padding (what the evidence log keeps) decodes to it too.
#![no_main]

use dcol::proto::{decode, encode, other_version_request, unpadded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = other_version_request(data);
    match decode(data) {
        Ok(m) => {
            let again = encode(&m);
            assert_eq!(decode(&again).expect("re-encoded message decodes"), m);
            let bare = unpadded(data).expect("a decoded datagram has a message");
            assert!(data[bare.len()..].iter().all(|&b| b == 0));
            assert_eq!(decode(bare).expect("the bare message decodes"), m);
        }
        Err(_) => assert!(unpadded(data).is_none()),
    }
});
