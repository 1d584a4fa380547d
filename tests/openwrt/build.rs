// The same check as the daemon crate's tests (cfg dcol_root): see there.
include!("../../dcol/build.rs");
