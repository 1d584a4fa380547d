//! The common start of a lab command: its options parsed, root checked, the
//! output directory made, the `dcol` binary built, the namespaces removed
//! on Ctrl-C or a panic.

use std::path::Path;
use std::process::ExitCode;

use dcol_tests::lab::need_root;

/// Checks `parsed` (the options of `dcol-lab CMD`) and prepares the run;
/// the exit code to leave with when it cannot go on.
pub fn begin<A>(
    cmd: &str,
    parsed: Result<A, lexopt::Error>,
    out: impl Fn(&A) -> &Path,
) -> Result<A, ExitCode> {
    let a = parsed.map_err(|e| {
        eprintln!("dcol-lab {cmd}: {e}");
        ExitCode::from(2)
    })?;
    if !need_root() {
        return Err(ExitCode::from(1));
    }
    let dir = out(&a);
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("dcol-lab: cannot create {}: {e}", dir.display());
        return Err(ExitCode::from(1));
    }
    crate::ensure_dcol_bin();
    crate::install_cleanup();
    Ok(a)
}
