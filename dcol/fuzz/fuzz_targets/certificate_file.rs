//! Certificate files: reading never panics; a certificate that reads back
//! verifies or fails with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("dcol-fuzz-cert-{}", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        if let Ok(c) = dcol::trust::files::read_certificate(&path) {
            let _ = c.verify(&c.collective, 0);
        }
    }
});
