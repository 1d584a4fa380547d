//! RFC 8803 Convert messages (what a converter reads off a connection, and
//! the answer a client reads): parsing never panics, never claims more
//! bytes than it was given, agrees with the fixed header's length, and what
//! parses re-encodes to a message that parses to the same TLVs; a Cookie
//! TLV's content is read as a signed request without panicking.
#![no_main]

use dcol::convert::cookie;
use dcol::convert::wire::{encode, message_len, parse, Tlv};
use dcol::proxy::convert::Converters;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Converters::answer(data);
    match parse(data) {
        Ok((m, n)) => {
            assert!(n <= data.len() && n % 4 == 0 && n >= 4);
            assert_eq!(message_len(data), Ok(Some(n)));
            let again = encode(&m);
            assert_eq!(parse(&again), Ok((m.clone(), again.len())));
            for t in &m.0 {
                if let Tlv::Cookie(c) = t {
                    let _ = cookie::read(c);
                }
            }
        }
        Err(e) => {
            let _ = e.code();
            let _ = e.to_string();
        }
    }
});
