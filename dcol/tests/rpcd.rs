// Needs: no root; `sh` and busybox (package busybox-static, tests/setup.sh
// installs it); runs the real rpcd plugin with the real `dcol` binary.
//
//! luci-app-dcol's rpcd plugin (`root/usr/libexec/rpcd/luci.dcol`), called the
//! way rpcd calls it (`call METHOD`, arguments on stdin), under Debian's dash
//! and under busybox ash with busybox's awk, readlink and sed (what OpenWrt
//! runs). A user the owner delegated the web page to can change the paths
//! in the UCI file; the plugin must then refuse to read or write membership
//! files outside the membership directory (`/etc/dcol`; `DCOL_DIR` here),
//! before it calls dcol (its errors start with "luci.dcol: "; dcol refuses
//! them too, see tests/cli.rs), and write nothing.

use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn plugin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../luci-app-dcol/root/usr/libexec/rpcd/luci.dcol")
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dcol-rpcd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The shells the plugin runs under: dash with the system's tools, and
/// busybox ash with busybox's applets first in PATH (as on OpenWrt).
fn shells(d: &Path) -> Vec<(&'static str, Vec<String>, String)> {
    let busybox = Path::new("/usr/bin/busybox");
    assert!(
        busybox.exists(),
        "/usr/bin/busybox missing: run tests/setup.sh (package busybox-static)"
    );
    let applets = d.join("applets");
    std::fs::create_dir_all(&applets).unwrap();
    for a in ["awk", "readlink", "sed", "tr", "mktemp", "cat", "rm"] {
        let _ = symlink(busybox, applets.join(a));
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_dcol")).parent().unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    vec![
        (
            "dash",
            vec!["sh".into()],
            format!("{}:{path}", bin.display()),
        ),
        (
            "busybox ash",
            vec![busybox.display().to_string(), "sh".into()],
            format!("{}:{}:{path}", applets.display(), bin.display()),
        ),
    ]
}

/// `luci.dcol call METHOD` with `input` on stdin: its JSON answer.
fn call(
    shell: &(&str, Vec<String>, String),
    conf: &Path,
    dir: &Path,
    method: &str,
    input: &str,
) -> serde_json::Value {
    let mut c = Command::new(&shell.1[0])
        .args(&shell.1[1..])
        .arg(plugin())
        .args(["call", method])
        .env("DCOL_CONFIG", conf)
        .env("DCOL_DIR", dir)
        .env("PATH", &shell.2)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the plugin");
    // A refusal comes before the arguments are read: the pipe may be closed.
    let _ = c.stdin.take().unwrap().write_all(input.as_bytes());
    let o = c.wait_with_output().unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{}: {method}: not JSON ({e}): {}{}",
            shell.0,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn config(conf: &Path, key: &str, cert: &str, collective: &str) {
    std::fs::write(
        conf,
        format!(
            "config dcol 'main'\n\toption key '{key}'\n\toption cert '{cert}'\n\toption collective '{collective}'\n"
        ),
    )
    .unwrap();
}

/// Every directory entry below `d`, for "nothing was written".
fn tree(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![d.to_owned()];
    while let Some(p) = todo.pop() {
        for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn membership_paths_outside_the_directory_are_refused() {
    let d = scratch("confine");
    let etc = d.join("etc");
    let out = d.join("out");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let shadow = out.join("shadow");
    std::fs::write(&shadow, "root:x:0:0\n").unwrap();
    let conf = d.join("dcol.conf");
    let s = |p: &Path| p.display().to_string();
    let (key, cert, coll) = (
        s(&etc.join("member.key")),
        s(&etc.join("member.cert")),
        s(&etc.join("collective.pub")),
    );
    // The administrator's side: a collective and a certificate for a key.
    let dcol = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_dcol"))
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {o:?}");
    };
    let admin = d.join("admin");
    dcol(&["collective", "init", "--out-dir", &s(&admin)]);
    let collective = std::fs::read_to_string(admin.join("collective.pub")).unwrap();
    let install =
        |cert: &str| serde_json::json!({ "cert": cert, "collective": collective }).to_string();

    for shell in shells(&d) {
        let name = shell.0;
        for f in [&key, &cert, &coll] {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_file(format!("{key}.pub"));
        let _ = std::fs::remove_file(format!("{key}.wgpub"));
        // Refused by the plugin itself, before dcol runs: the error is its
        // own ("...; the web page reads and writes membership files only
        // under DIR"), and nothing is written anywhere.
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "create_key",
                format!(
                    "config dcol 'main'\n\toption key '{}'\n",
                    s(&out.join("member.key"))
                ),
                "option key",
            ),
            (
                "install",
                format!(
                    "config dcol 'main'\n\toption key '{key}'\n\toption cert '{}'\n\toption collective '{coll}'\n",
                    s(&shadow)
                ),
                "is outside",
            ),
            (
                "install",
                format!(
                    "config dcol 'main'\n\toption key '{key}'\n\toption cert '{}/../out/shadow'\n\toption collective '{coll}'\n",
                    s(&etc)
                ),
                "is not an absolute path without '.' or '..'",
            ),
            (
                "install",
                format!(
                    "config dcol 'main'\n\toption key '{key}'\n\toption cert 'member.cert'\n\toption collective '{coll}'\n"
                ),
                "option cert 'member.cert' is not an absolute path",
            ),
            (
                "membership",
                format!(
                    "config dcol 'main'\n\toption key '{key}'\n\toption cert \"{}\"'x'\n\toption collective '{coll}'\n",
                    s(&etc)
                ),
                "line 3: cannot read this membership path plainly",
            ),
            // Not set: the default, /etc/dcol/member.cert, is outside DCOL_DIR.
            (
                "membership",
                format!("config dcol 'main'\n\toption key '{key}'\n\toption collective '{coll}'\n"),
                "option cert '/etc/dcol/member.cert' is outside",
            ),
        ];
        let before = tree(&d);
        for (method, text, want) in cases {
            std::fs::write(&conf, &text).unwrap();
            let v = call(&shell, &conf, &etc, method, &install("dcol-cert-v1 00"));
            let e = v["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: {method} {text}: {v}"));
            assert!(e.contains(want), "{name}: {method}: '{e}' lacks '{want}'");
            assert!(
                e.starts_with("luci.dcol: ")
                    && e.ends_with(&format!(
                        "; the web page reads and writes membership files only under {}",
                        etc.display()
                    )),
                "{name}: not refused by the plugin: {e}"
            );
        }
        // Symbolic links out of the directory: the file itself, a directory
        // on the way, the key's .pub.
        symlink(&shadow, &cert).unwrap();
        config(&conf, &key, &cert, &coll);
        let e = call(&shell, &conf, &etc, "install", &install("x"))["error"].to_string();
        assert!(e.contains("through a symbolic link"), "{name}: {e}");
        std::fs::remove_file(&cert).unwrap();
        symlink(&out, etc.join("sub")).unwrap();
        config(&conf, &key, &s(&etc.join("sub/member.cert")), &coll);
        let e = call(&shell, &conf, &etc, "install", &install("x"))["error"].to_string();
        assert!(
            e.contains("option cert") && e.contains("is outside"),
            "{name}: {e}"
        );
        std::fs::remove_file(etc.join("sub")).unwrap();
        symlink(&shadow, format!("{key}.pub")).unwrap();
        config(&conf, &key, &cert, &coll);
        let e = call(&shell, &conf, &etc, "create_key", "{}")["error"].to_string();
        assert!(
            e.contains(&format!("option key '{key}.pub'")),
            "{name}: {e}"
        );
        std::fs::remove_file(format!("{key}.pub")).unwrap();
        let ours = |p: &PathBuf| p != &conf && !p.starts_with(d.join("applets"));
        let (mut after, mut was) = (tree(&d), before);
        after.retain(ours);
        was.retain(ours);
        assert_eq!(after, was, "{name}: something was written");
        assert_eq!(std::fs::read_to_string(&shadow).unwrap(), "root:x:0:0\n");

        // Inside the directory: the join works through the plugin.
        config(&conf, &key, &cert, &coll);
        let v = call(&shell, &conf, &etc, "create_key", "{}");
        let request = v["key"]["request"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {v}"))
            .to_owned();
        std::fs::write(d.join("request"), &request).unwrap();
        let cert_file = d.join(format!("{}.cert", name.replace(' ', "-")));
        dcol(&[
            "collective",
            "admit",
            "--collective-key",
            &s(&admin.join("collective.key")),
            "--member-pub",
            &s(&d.join("request")),
            "--name",
            "bob",
            "--out",
            &s(&cert_file),
        ]);
        let text = std::fs::read_to_string(&cert_file).unwrap();
        let v = call(&shell, &conf, &etc, "install", &install(&text));
        assert_eq!(v["installed"], true, "{name}: {v}");
        assert_eq!(v["membership"]["ready"], true, "{name}: {v}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}
