//! STUN answers from arbitrary bytes: parsing never panics, and whatever the
//! first 12 bytes after the cookie are, only a message of that transaction
//! can yield an address.
#![no_main]

use dcol::traversal::stun;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut tid = [0u8; 12];
    if data.len() >= 20 {
        tid.copy_from_slice(&data[8..20]);
    }
    let _ = stun::parse_response(data, &tid);
    if let Ok(a) = stun::parse_response(data, &[0xEE; 12]) {
        assert!(data[8..20] == [0xEE; 12], "{a} from another transaction");
    }
});
