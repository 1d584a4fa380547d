//! sock_diag replies and the scoreboard file: parsing never panics, and a
//! scoreboard that parses writes back to a file that parses to the same board.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dcol::sys::diag::parse_diag_msg(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok((board, _)) = dcol::client::strategy::Scoreboard::from_file(text) {
            let again = dcol::client::strategy::Scoreboard::from_file(&board.to_file());
            assert!(again.is_ok_and(|(b, bad)| bad.is_empty() && b == board));
        }
    }
});
