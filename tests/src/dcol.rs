//! Driving the real `dcol` binary in tests: a collective with members made by
//! `dcol collective init` / `key generate` / `collective admit`, UCI files, and
//! daemons running in network namespaces, queried with `dcol status --json`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

static DIRS: AtomicU32 = AtomicU32::new(0);

/// Where scratch directories go: `$DCOL_SCRATCH_DIR`, else the workspace's
/// `target/scratch/`.
pub fn scratch_base() -> PathBuf {
    std::env::var_os("DCOL_SCRATCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::openwrt::target_dir().join("scratch"))
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A fresh directory under `$DCOL_SCRATCH_DIR`, else the workspace's
    /// `target/scratch/` (not the shared `/tmp`, where another program's
    /// sweep removed files of running tests on a busy machine).
    pub fn new(tag: &str) -> Scratch {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let path = scratch_base().join(format!("dcol-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create scratch dir");
        Scratch { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("DCOL_KEEP_SCRATCH").is_none() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Where the `dcol` binary is: `$DCOL_BIN`, else `target/{release,debug}/dcol`
/// next to this workspace, whichever is newer.
pub fn dcol_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DCOL_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cands = [target.join("debug/dcol"), target.join("release/dcol")];
    cands
        .iter()
        .filter_map(|p| {
            fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .map(|t| (t, p.clone()))
        })
        .max()
        .map(|(_, p)| p)
        .expect("dcol binary not built: run `cargo build -p dcol` first or set DCOL_BIN")
}

/// Runs `dcol ARGS` and returns stdout; panics with stderr on failure.
pub fn dcol(args: &[&str]) -> String {
    let out = Command::new(dcol_bin())
        .args(args)
        .output()
        .expect("run dcol");
    assert!(
        out.status.success(),
        "dcol {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A member's files.
#[derive(Debug, Clone)]
pub struct Member {
    /// Certificate name.
    pub name: String,
    /// Secret key file.
    pub key: PathBuf,
    /// Certificate file.
    pub cert: PathBuf,
}

/// A collective made with the real CLI.
#[derive(Debug)]
pub struct Collective {
    /// Directory holding every file.
    pub dir: PathBuf,
    /// `collective.key`.
    pub root_key: PathBuf,
    /// `collective.pub`.
    pub root_pub: PathBuf,
}

impl Collective {
    /// `dcol collective init --out-dir DIR/<tag>`.
    pub fn new(dir: &Path, tag: &str) -> Collective {
        let dir = dir.join(tag);
        dcol(&[
            "collective",
            "init",
            "--out-dir",
            dir.to_str().expect("utf-8 path"),
        ]);
        Collective {
            root_key: dir.join("collective.key"),
            root_pub: dir.join("collective.pub"),
            dir,
        }
    }

    /// `dcol key generate` + `dcol collective admit` for `name` with `roles`.
    pub fn admit(&self, name: &str, roles: &str, days: u32) -> Member {
        let key = self.dir.join(format!("{name}.key"));
        let cert = self.dir.join(format!("{name}.cert"));
        dcol(&[
            "key",
            "generate",
            "--out",
            key.to_str().expect("utf-8 path"),
        ]);
        let days = days.to_string();
        dcol(&[
            "collective",
            "admit",
            "--collective-key",
            self.root_key.to_str().expect("utf-8"),
            "--member-pub",
            &format!("{}.pub", key.display()),
            "--name",
            name,
            "--days",
            &days,
            "--roles",
            roles,
            "--wg-pub",
            &format!("{}.wgpub", key.display()),
            "--out",
            cert.to_str().expect("utf-8"),
        ]);
        Member {
            name: name.to_owned(),
            key,
            cert,
        }
    }
}

/// The `config dcol 'main'` section for a member.
pub fn main_section(m: &Member, c: &Collective, sock: &Path, state: &Path) -> String {
    format!(
        "config dcol 'main'\n\toption enabled '1'\n\toption key '{}'\n\toption cert '{}'\n\toption collective '{}'\n\toption control_socket '{}'\n\toption state_dir '{}'\n\toption log_level 'debug'\n\n",
        m.key.display(),
        m.cert.display(),
        c.root_pub.display(),
        sock.display(),
        state.display()
    )
}

/// A `dcol run` process inside a network namespace.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    /// Control socket path.
    pub socket: PathBuf,
    /// The UCI file it runs with.
    pub config: PathBuf,
    /// Its stderr.
    pub log: PathBuf,
    netns: String,
}

impl Daemon {
    /// Writes `uci` to `dir/<tag>.conf` and starts `dcol run` in `netns`; waits
    /// until the control socket answers (or the process exits: panics with its log).
    pub fn start(netns: &str, dir: &Path, tag: &str, uci: &str, socket: &Path) -> Daemon {
        Daemon::start_with_nofile(netns, dir, tag, uci, socket, None)
    }

    /// [`Daemon::start`] under an open-file limit of `nofile` (soft and hard,
    /// as procd's `limits nofile` sets it; `prlimit` execs the daemon, so the
    /// pid stays dcol's).
    pub fn start_with_nofile(
        netns: &str,
        dir: &Path,
        tag: &str,
        uci: &str,
        socket: &Path,
        nofile: Option<u64>,
    ) -> Daemon {
        let config = dir.join(format!("{tag}.conf"));
        fs::write(&config, uci).expect("write config");
        let log = dir.join(format!("{tag}.log"));
        let err = fs::File::create(&log).expect("create log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]);
        if let Some(n) = nofile {
            cmd.arg("prlimit")
                .arg(format!("--nofile={n}:{n}"))
                .arg("--");
        }
        let child = cmd
            .arg(dcol_bin())
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn dcol run");
        let mut d = Daemon {
            child: Some(child),
            socket: socket.to_owned(),
            config,
            log,
            netns: netns.to_owned(),
        };
        d.wait_ready(Duration::from_secs(10));
        d
    }

    fn wait_ready(&mut self, limit: Duration) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "dcol in {} exited early ({st}):\n{}",
                    self.netns,
                    self.log_text()
                );
            }
            if self.try_status().is_some() {
                return;
            }
            assert!(
                t0.elapsed() < limit,
                "dcol in {} not ready after {limit:?}:\n{}",
                self.netns,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id (`ip netns exec` execs `dcol`, so it is dcol's own).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's stderr so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `dcol status --json`, parsed, or `None` if it does not answer.
    pub fn try_status(&self) -> Option<Value> {
        let out = Command::new(dcol_bin())
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `dcol status` as people read it; panics with the log if it fails.
    pub fn status_text(&self) -> String {
        let out = Command::new(dcol_bin())
            .args(["status", "--socket"])
            .arg(&self.socket)
            .output()
            .expect("run dcol status");
        assert!(
            out.status.success(),
            "dcol status failed; log:\n{}",
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `dcol status --json`, parsed; panics with the log if it does not answer.
    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("dcol status failed; log:\n{}", self.log_text()))
    }

    /// Polls `status` until `pred` holds or `limit` passes; returns the last status.
    pub fn wait_status(
        &self,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, Value> {
        let t0 = Instant::now();
        loop {
            let s = self.status();
            if pred(&s) {
                return Ok(s);
            }
            if t0.elapsed() > limit {
                return Err(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            // `ip netns exec` execs the program, so the child's pid is dcol's.
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// Rewrites the daemon's UCI file with `uci` and sends SIGHUP; waits until
    /// the log says the reload was handled (or refused), returns that line.
    pub fn reload(&self, uci: &str) -> String {
        let before = self
            .log_text()
            .lines()
            .filter(|l| l.contains("reload"))
            .count();
        fs::write(&self.config, uci).expect("write config");
        self.signal("-HUP");
        let t0 = Instant::now();
        loop {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains("reload")).collect();
            if lines.len() > before {
                return lines[before].to_owned();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no reload logged:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait (at most 10 s, then SIGKILL and panic).
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        self.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| {
            self.signal("-KILL");
            panic!("dcol did not stop on SIGTERM:\n{}", self.log_text())
        })
    }

    /// SIGKILL and wait: a crash.
    pub fn kill9(&mut self) {
        self.signal("-KILL");
        let _ = self.wait_exit(Duration::from_secs(10));
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        let mut c = self.child.take()?;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if t0.elapsed() > limit {
                self.child = Some(c);
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal("-TERM");
            if self.wait_exit(Duration::from_secs(5)).is_none() {
                self.signal("-KILL");
                let _ = self.wait_exit(Duration::from_secs(5));
            }
        }
        if std::thread::panicking() {
            let mut s = String::new();
            if let Ok(mut f) = fs::File::open(&self.log) {
                let _ = f.read_to_string(&mut s);
            }
            eprintln!("---- dcol log ({}) ----\n{s}", self.netns);
        }
    }
}

/// Runs a command in `netns` and returns stdout (panics on failure).
pub fn in_ns(netns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "in {netns}: {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nft list tables` in `netns` contains `inet <table>`.
pub fn has_table(netns: &str, table: &str) -> bool {
    in_ns(netns, &["nft", "list", "tables"])
        .lines()
        .any(|l| l.trim() == format!("table inet {table}"))
}

/// Number of elements in `inet <table>` map `map` in `netns` (0 if absent).
pub fn map_elements(netns: &str, table: &str, map: &str) -> usize {
    let out = Command::new("ip")
        .args([
            "netns", "exec", netns, "nft", "-j", "list", "map", "inet", table, map,
        ])
        .output()
        .expect("nft");
    if !out.status.success() {
        return 0;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("map"))
        .map(|m| {
            m.get("elem")
                .and_then(|e| e.as_array())
                .map_or(0, |a| a.len())
        })
        .sum()
}
