// Needs: nothing special (no root); runs the real `dcol` binary.
//
//! The CLI contract: exit codes 0 / 1 / 2, messages that say what and where,
//! key files with the right modes.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

fn dcol(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dcol"))
        .args(args)
        .output()
        .expect("run dcol")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dcol-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn version_help_and_usage_errors() {
    let o = dcol(&["--version"]);
    assert_eq!(code(&o), 0);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("dcol {}", env!("CARGO_PKG_VERSION"))
    );
    let o = dcol(&["--help"]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("dcol collective admit"));
    assert_eq!(code(&dcol(&["run", "--help"])), 0);
    for bad in [
        &[][..],
        &["frobnicate"],
        &["run", "--bogus"],
        &["key"],
        &["collective", "admit"],
        &["key", "generate"],
    ] {
        let o = dcol(bad);
        assert_eq!(code(&o), 2, "{bad:?}: {}", stderr(&o));
        assert!(stderr(&o).starts_with("dcol: "), "{bad:?}: {}", stderr(&o));
    }
}

#[test]
fn bad_configuration_is_exit_2_with_file_line_option() {
    let d = scratch("cfg");
    let f = d.join("dcol");
    std::fs::write(&f, "config dcol 'main'\n\toption enabled '1'\n\nconfig client 'client'\n\toption max_detours 'lots'\n").unwrap();
    let path = f.to_str().unwrap();
    for args in [
        vec!["config", "check", "--config", path],
        vec!["run", "--config", path],
    ] {
        let o = dcol(&args);
        assert_eq!(code(&o), 2, "{args:?}");
        let e = stderr(&o);
        assert!(
            e.contains(&format!("{path}:5: option 'max_detours'")),
            "{e}"
        );
    }
    let o = dcol(&["run", "--config", d.join("missing").to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("missing"), "{}", stderr(&o));
    // Disabled: nothing to do, success.
    std::fs::write(&f, "config dcol 'main'\n\toption enabled '0'\n").unwrap();
    assert_eq!(code(&dcol(&["run", "--config", path])), 0);
    // Missing key files with the daemon enabled: a configuration error.
    std::fs::write(
        &f,
        format!("config dcol 'main'\n\toption key '{}/nokey'\n", d.display()),
    )
    .unwrap();
    let o = dcol(&["run", "--config", path]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("nokey"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn keys_collective_and_admission() {
    let d = scratch("keys");
    let s = |p: &str| d.join(p).to_str().unwrap().to_owned();
    assert_eq!(
        code(&dcol(&["collective", "init", "--out-dir", &s("coop")])),
        0
    );
    let mode = |p: &str| std::fs::metadata(d.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("coop/collective.key"), 0o600);
    assert_eq!(code(&dcol(&["key", "generate", "--out", &s("m.key")])), 0);
    assert_eq!(mode("m.key"), 0o600);
    // Never overwrites a key.
    let o = dcol(&["key", "generate", "--out", &s("m.key")]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let admit = |days: &str, out: &str| {
        dcol(&[
            "collective",
            "admit",
            "--collective-key",
            &s("coop/collective.key"),
            "--member-pub",
            &s("m.key.pub"),
            "--name",
            "bob",
            "--days",
            days,
            "--out",
            &s(out),
        ])
    };
    assert_eq!(code(&admit("0", "a.cert")), 2);
    assert_eq!(code(&admit("x", "a.cert")), 2);
    let o = admit("30", "a.cert");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(std::fs::read_to_string(d.join("a.cert"))
        .unwrap()
        .starts_with("dcol-cert-v1 "));
    // A member key given where the collective key belongs: a clear error.
    let o = dcol(&[
        "collective",
        "admit",
        "--collective-key",
        &s("m.key.pub"),
        "--member-pub",
        &s("m.key.pub"),
        "--name",
        "bob",
        "--out",
        &s("b.cert"),
    ]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("dcol-secret-v1"), "{}", stderr(&o));
    // No daemon: status is a runtime failure.
    let o = dcol(&["status", "--socket", &s("none.sock")]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("none.sock"));
    let _ = std::fs::remove_dir_all(&d);
}
