//! Evidence log files: parsing never panics, the good prefix re-frames to the
//! same bytes, and a record that parses can be verified without panicking.
#![no_main]

use dcol::waypoint::evidence::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = parse(data);
    let good: Vec<u8> = p.records.iter().flat_map(|r| r.frame()).collect();
    assert_eq!(&data[..good.len()], &good[..]);
    assert_eq!(p.bad_at.unwrap_or(data.len()), good.len());
    let root = dcol::trust::SecretKey::from_seed([7; 32]).public();
    for r in &p.records {
        let _ = r.verify(&root);
    }
});
