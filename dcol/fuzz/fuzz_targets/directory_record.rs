//! Directory uploads from arbitrary bytes: member records, certificate
//! renewal requests and revocation lists decode or fail, never panic; a record that decodes re-encodes to bytes
//! that decode to the same value (postcard accepts overlong varints, so not
//! always the same bytes; signatures cover the canonical encoding) and
//! verifies or fails cleanly.
#![no_main]

use dcol::directory::registry::{Limits, Registry};
use dcol::directory::renew::RenewalRequest;
use dcol::directory::Record;
use dcol::trust::{Revocations, SecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = SecretKey::from_seed([1; 32]).public();
    if let Ok(r) = Record::decode(data) {
        assert_eq!(Record::decode(&r.encode()).as_ref(), Ok(&r));
        let _ = r.verify(&root, &Revocations::default(), 1_800_000_000);
        let _ = r.entry();
    }
    if let Ok(r) = RenewalRequest::decode(data) {
        assert_eq!(RenewalRequest::decode(&r.encode()).as_ref(), Ok(&r));
        let _ = r.verify(&root, &Revocations::default(), 1_800_000_000_000);
    }
    let mut reg = Registry::new(root, Limits::default());
    let _ = reg.check_list(data);
    let _ = reg.check_renewal(1_800_000_000_000, data);
});
