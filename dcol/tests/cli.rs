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

/// `dcol member`: key, join request, install (file and --rpc), show.
#[test]
fn member_key_install_and_show() {
    let d = scratch("member");
    let p = |f: &str| d.join(f).to_str().unwrap().to_owned();
    let conf = p("dcol.conf");
    std::fs::write(
        &conf,
        format!(
            "config dcol 'main'\n\toption key '{}'\n\toption cert '{}'\n\toption collective '{}'\n",
            p("etc/member.key"),
            p("etc/member.cert"),
            p("etc/collective.pub")
        ),
    )
    .unwrap();
    let o = dcol(&["member", "show", "--config", &conf, "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["ready"].as_bool(), v["key"]["present"].as_bool()),
        (Some(false), Some(false))
    );
    // The key, and its join request.
    let o = dcol(&["member", "key", "--config", &conf]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let request: String = out.lines().skip(1).map(|l| format!("{l}\n")).collect();
    assert!(
        request.starts_with("dcol-public-v1 ") && request.contains("\ndcol-wg-v1 "),
        "{out}"
    );
    let mode = std::fs::metadata(p("etc/member.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Asking again keeps the key.
    let o = dcol(&["member", "key", "--config", &conf]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("already there"));
    // The administrator admits the join request (WireGuard key included).
    assert_eq!(
        code(&dcol(&["collective", "init", "--out-dir", &p("admin")])),
        0
    );
    let admit = |request: &str, name: &str| {
        std::fs::write(p(&format!("{name}.request")), request).unwrap();
        dcol(&[
            "collective",
            "admit",
            "--collective-key",
            &p("admin/collective.key"),
            "--member-pub",
            &p(&format!("{name}.request")),
            "--name",
            name,
            "--out",
            &p(&format!("{name}.cert")),
        ])
    };
    let o = admit(&request, "carol");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // A damaged join request is refused, naming the line.
    let first = request.lines().next().unwrap();
    let o = admit(&format!("{first}\ndcol-wg-v1 nope\n"), "x");
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("x.request: line 2"), "{}", stderr(&o));
    // --rpc: errors are JSON on stdout too, exit 2, nothing written.
    let rpc = |input: &str| {
        use std::io::Write;
        let mut c = Command::new(env!("CARGO_BIN_EXE_dcol"))
            .args(["member", "install", "--rpc", "--config", &conf])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let o = c.wait_with_output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON out");
        (code(&o), v)
    };
    let cert = std::fs::read_to_string(p("carol.cert")).unwrap();
    let coll = std::fs::read_to_string(p("admin/collective.pub")).unwrap();
    for (input, want) in [
        ("not json", "the arguments are not JSON"),
        ("{}", "argument 'cert' missing"),
        (r#"{"cert": 1}"#, "argument 'cert' is not a string"),
        (
            &serde_json::json!({ "cert": cert }).to_string(),
            "paste the collective's public key too",
        ),
        (
            &serde_json::json!({ "cert": "dcol-cert-v1 00", "collective": coll }).to_string(),
            "not a certificate",
        ),
    ] {
        let (c, v) = rpc(input);
        assert_eq!(c, 2, "{input}: {v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{input}: {v}");
    }
    assert!(!d.join("etc/member.cert").exists());
    let (c, v) = rpc(&serde_json::json!({ "cert": cert, "collective": coll }).to_string());
    assert_eq!(c, 0, "{v}");
    assert_eq!(
        (v["installed"].as_bool(), v["name"].as_str()),
        (Some(true), Some("carol"))
    );
    assert_eq!(v["membership"]["ready"], true, "{v}");
    // The file form, for a renewal; and show.
    let o = dcol(&[
        "member",
        "install",
        "--config",
        &conf,
        "--cert",
        &p("carol.cert"),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = dcol(&[
        "member",
        "install",
        "--config",
        &conf,
        "--cert",
        &p("nothing"),
    ]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("nothing"), "{}", stderr(&o));
    let o = dcol(&["member", "show", "--config", &conf]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("'carol' (client,waypoint)") && text.ends_with("ready\n"),
        "{text}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// `dcol member ... --within DIR` (how the web page's rpcd plugin calls it):
/// a key, certificate or collective path outside DIR, given with `..`, or
/// leading out through a symbolic link is refused (exit 2, naming the option
/// and DIR; JSON for --rpc) before anything is read or written.
#[test]
fn member_paths_are_confined_within_dir() {
    use std::os::unix::fs::symlink;
    let d = scratch("within");
    let p = |f: &str| d.join(f).to_str().unwrap().to_owned();
    let etc = p("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(p("out")).unwrap();
    std::fs::write(p("out/shadow"), "root:x:0:0\n").unwrap();
    let conf = p("dcol.conf");
    let config = |key: &str, cert: &str, coll: &str| {
        std::fs::write(
            &conf,
            format!(
                "config dcol 'main'\n\toption key '{key}'\n\toption cert '{cert}'\n\toption collective '{coll}'\n"
            ),
        )
        .unwrap();
    };
    let (key, cert, coll) = (
        p("etc/member.key"),
        p("etc/member.cert"),
        p("etc/collective.pub"),
    );
    let rpc = |args: &[&str]| {
        use std::io::Write;
        let mut c = Command::new(env!("CARGO_BIN_EXE_dcol"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // dcol refuses before it reads its arguments: the pipe may be closed.
        let _ = c
            .stdin
            .take()
            .unwrap()
            .write_all(br#"{"cert": "dcol-cert-v1 00"}"#);
        c.wait_with_output().unwrap()
    };
    let cases: Vec<(String, String, String, &str)> = vec![
        (
            p("out/member.key"),
            cert.clone(),
            coll.clone(),
            "option key",
        ),
        (key.clone(), p("out/shadow"), coll.clone(), "option cert"),
        (
            key.clone(),
            cert.clone(),
            p("etc/../out/c.pub"),
            "option collective",
        ),
        (
            key.clone(),
            "member.cert".into(),
            coll.clone(),
            "option cert",
        ),
        (
            key.clone(),
            p("etcetera/member.cert"),
            coll.clone(),
            "option cert",
        ),
    ];
    for (k, c, l, want) in cases {
        config(&k, &c, &l);
        for args in [
            vec!["member", "show", "--json"],
            vec!["member", "key"],
            vec!["member", "install", "--cert", "/dev/null"],
        ] {
            let mut args = args.clone();
            args.extend(["--config", &conf, "--within", &etc]);
            let o = dcol(&args);
            assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
            let e = stderr(&o);
            assert!(
                e.contains(want) && e.contains(&format!("under {etc}")),
                "{args:?}: {e}"
            );
        }
        let o = rpc(&[
            "member", "install", "--rpc", "--config", &conf, "--within", &etc,
        ]);
        assert_eq!(code(&o), 2);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON out");
        let e = v["error"].as_str().unwrap();
        assert!(
            e.contains(want) && e.ends_with(&format!("only under {etc}")),
            "{e}"
        );
    }
    // Symbolic links out: the certificate itself, a directory on the way.
    symlink(p("out/shadow"), &cert).unwrap();
    config(&key, &cert, &coll);
    let o = rpc(&[
        "member", "install", "--rpc", "--config", &conf, "--within", &etc,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON out");
    assert!(
        v["error"].as_str().unwrap().contains(&format!(
            "through a symbolic link, it is {}",
            p("out/shadow")
        )),
        "{v}"
    );
    std::fs::remove_file(&cert).unwrap();
    symlink(p("out"), p("etc/sub")).unwrap();
    config(&p("etc/sub/member.key"), &cert, &coll);
    let o = dcol(&["member", "key", "--config", &conf, "--within", &etc]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("is outside"), "{}", stderr(&o));
    // Nothing was written: no key, the target untouched.
    let entries: Vec<String> = std::fs::read_dir(p("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["shadow"]);
    assert_eq!(
        std::fs::read_to_string(p("out/shadow")).unwrap(),
        "root:x:0:0\n"
    );
    // Inside DIR, the same commands work.
    config(&key, &cert, &coll);
    let o = dcol(&["member", "key", "--config", &conf, "--within", &etc]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(std::path::Path::new(&key).exists());
    std::fs::remove_dir_all(&d).unwrap();
}
