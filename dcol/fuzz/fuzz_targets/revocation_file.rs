//! Revocation list files: reading never panics; whatever reads back was
//! signed by the key it was checked against.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("dcol-fuzz-rev-{}", std::process::id()));
    let root = dcol::trust::SecretKey::from_seed([7; 32]).public();
    if std::fs::write(&path, data).is_ok() {
        if let Ok(l) = dcol::trust::files::read_revocations(&path, &root) {
            assert!(l.verify(&root).is_ok());
        }
    }
});
