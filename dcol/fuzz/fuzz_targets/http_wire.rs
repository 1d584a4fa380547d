//! HTTP heads, chunked bodies and URLs from arbitrary bytes (the directory
//! server's request reader, SSDP answers, configured URLs): never panic, and
//! the chunked decoder's output does not depend on how its input is cut.
#![no_main]

use dcol::http::wire::{parse_head, Dechunker, Url};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((h, n))) = parse_head(data) {
        assert!(n <= data.len());
        let _ = h.body_kind();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(u) = Url::parse(s) {
            let _ = u.join(s);
            assert!(Url::parse(&u.to_string()).is_ok());
        }
    }
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let mut whole = Vec::new();
    let all = Dechunker::default().feed(body, &mut whole, 1 << 16);
    let mut d = Dechunker::default();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut err = None;
    for piece in body.chunks(usize::from(step).max(1)) {
        buf.extend_from_slice(piece);
        match d.feed(&buf, &mut out, 1 << 16) {
            Ok(n) => {
                buf.drain(..n);
            }
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    if all.is_ok() && err.is_none() {
        assert_eq!(out, whole);
    }
});
