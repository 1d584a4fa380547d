//! The LAN proxy's TLS record follower: never panics, and the verdict does not
//! depend on how the stream is cut into reads (first byte of the input picks
//! the cut points).
#![no_main]

use dcol::proxy::tls::{TlsWatch, Verdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let whole = TlsWatch::default().feed(stream);
    let mut w = TlsWatch::default();
    let mut v = Verdict::Pending;
    for chunk in stream.chunks(usize::from(step).max(1)) {
        v = w.feed(chunk);
    }
    assert_eq!(v, whole);
});
