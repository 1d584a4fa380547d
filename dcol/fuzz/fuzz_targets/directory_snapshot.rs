//! Snapshots from arbitrary bytes: parsing, verification, entry iteration,
//! freshness and the waypoint choice never panic, and iteration ends.
#![no_main]

use dcol::directory::{choose, freshness, Selection, Snapshot};
use dcol::trust::{MemberId, Revocations, SecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = SecretKey::from_seed([1; 32]).public();
    let _ = Snapshot::verify(data, &root);
    if let Ok(s) = Snapshot::parse_unverified(data) {
        let n = s.entries().take(1 << 20).count();
        assert!(n <= data.len() + 1);
        let _ = freshness(&s.head, data, Some((&s.head, data)), 1_800_000_000);
        let sel = Selection {
            own: MemberId([0; 8]),
            max_peers: 3,
            vpn: data.first().is_some_and(|b| b & 1 == 1),
        };
        let c = choose(&s, &sel, &Revocations::default(), 1_800_000_000);
        assert!(c.peers.len() <= 6);
    }
});
