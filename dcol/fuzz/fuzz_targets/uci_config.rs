//! UCI configuration text: parse never panics, errors name a line inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = dcol::config::parse(&text, std::path::Path::new("fuzz")) {
        assert!(e.line <= text.lines().count().max(1));
    }
});
