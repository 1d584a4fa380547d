// Tells the tests whether they are built to run as root: the tests that need
// root (network namespaces, nftables, the MPTCP path manager) carry
// `#[cfg_attr(not(dcol_root), ignore = "needs root: ...")]`, so without root
// they show as ignored instead of passing without testing anything.

use std::os::unix::fs::MetadataExt;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(dcol_root)");
    println!("cargo::rerun-if-changed=build.rs");
    // A build by another user (sudo, su) runs this again.
    println!("cargo::rerun-if-env-changed=USER");
    println!("cargo::rerun-if-env-changed=SUDO_UID");
    // /proc/self belongs to the process's effective user.
    if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        println!("cargo::rustc-cfg=dcol_root");
    }
}
