//! OpenWrt's own userland for the root network-namespace tests, and the real
//! firewall4 (`fw4`) on a test's router namespace.
//!
//! No OpenWrt image can be downloaded here; the shared folder `openwrt/`
//! holds OpenWrt's sources (procd, ubus, uci, ucode, firewall4, LuCI, ...)
//! and its `build.sh`, which builds them natively into a chroot-able root
//! (see that folder's README). The folder is `$OPENWRT_SRC` (or
//! `$DCOL_OPENWRT_SRC`), else the
//! first `shared/openwrt` beside the workspace or one of its ancestors
//! (`/work/main` and a worktree `/work/wt/x` both find `/work/shared/openwrt`);
//! without it the tests panic naming the paths they tried. This module:
//!
//! - [`Userland::get`] builds that root once into `target/owrt/` and reuses
//!   it while the tarball and `build.sh` are unchanged (~30 s cold, a few
//!   milliseconds cached; safe when several test binaries start at once).
//! - [`Sandbox`] runs a command from the root, chrooted, inside a test's
//!   network namespace, with private writable `/etc/config`, `/tmp` (= `/var`)
//!   and `/usr/share/nftables.d`; the built root itself is mounted read-only
//!   (a test that must change it, e.g. with opkg, copies
//!   [`Userland::root`] as the shared `smoke.sh` does).
//! - [`Fw4`] writes OpenWrt's shipped `/etc/config/firewall` with the zones
//!   bound to the test's devices ([`ZoneSetup`]), installs the feed's nftables
//!   includes (`openwrt-feed/net/dcol/files/nftables.d/`, read from the
//!   repository at every load), checks the rendered ruleset with `fw4 check`
//!   and loads it with `fw4 start`, so the namespace holds `table inet fw4`
//!   as a router's would.
//!
//! ```no_run
//! use dcol_tests::openwrt::{Fw4, ZoneSetup};
//! use dcol_tests::Netns;
//!
//! let router = Netns::new("router");
//! // ... veths named `lan` and `wan` in `router`, forwarding on ...
//! let fw = Fw4::load(&router, &ZoneSetup::new(&["lan"], &["wan"]).dcol_signaling(7447));
//! assert!(fw.chain("forward").contains("dcol: accept detour flows"));
//! // A test changes the firewall like an owner would, then reloads:
//! fw.uci(
//!     "add firewall rule\n\
//!      set firewall.@rule[-1].name=Allow-web\n\
//!      set firewall.@rule[-1].src=wan\n\
//!      set firewall.@rule[-1].proto=tcp\n\
//!      set firewall.@rule[-1].dest_port=80\n\
//!      set firewall.@rule[-1].target=ACCEPT",
//! );
//! fw.reload();
//! ```
//!
//! What is real: fw4 itself (ucode, its templates, the zone/rule logic),
//! OpenWrt's shipped firewall config from the firewall4 sources, uci, and the
//! feed's include files as the package installs them. What differs from a
//! router:
//! - **No netifd.** Zones list `device`s instead of `network`s (a router's
//!   netifd resolves `lan` to `br-lan`): [`ZoneSetup`] replaces each zone's
//!   `network` list with the test's device names; subnets that fw4 would learn
//!   from netifd (e.g. for `masq_src`) are unknown.
//! - **No ubus, procd or hotplug.** fw4 warns "Unable to connect to ubus" and
//!   sees no procd service data, so the rule `dcol.init` publishes for the
//!   waypoint's signaling port must be added as UCI
//!   ([`ZoneSetup::dcol_signaling`]); nothing reloads the firewall on
//!   interface events: call [`Fw4::reload`].
//! - Debian's `nft` (and its libnftables) loads the ruleset instead of
//!   OpenWrt's nftables build; glibc instead of musl; x86_64 only; no
//!   flow-offloading hardware.
//! - The kernel is the host's, not an OpenWrt kernel: conntrack helpers and
//!   nftables features are whatever it has.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};

use crate::Netns;

mod router;
pub use router::{
    packages, packages_with_release, ApkPackages, Image, Packages, Router, ROOT_PASSWORD,
};

/// Bumped when this module's build steps change, so caches rebuild.
const RECIPE: &str = "r1";

/// Host programs the build needs, with the Debian package that has each.
const HOST_TOOLS: [(&str, &str); 8] = [
    ("cc", "build-essential"),
    ("make", "build-essential"),
    ("cmake", "cmake"),
    ("pkg-config", "pkg-config"),
    ("busybox", "busybox-static"),
    ("nft", "nftables"),
    ("file", "file"),
    ("flock", "util-linux"),
];

/// Directories of the root a [`Sandbox`] gives its own writable copy of.
const WRITABLE: [&str; 3] = ["etc/config", "tmp", "usr/share/nftables.d"];

/// Runs inside the test's network namespace, in fresh mount and pid
/// namespaces (like the shared `inroot.sh`, minus the network namespace):
/// `$1` the built root, `$2` the sandbox's directory, `$3` the [`WRITABLE`]
/// directories, then the command.
const SANDBOX_SH: &str = r#"set -e
R=$1 S=$2 W=$3; shift 3
mount --bind "$R" "$R"
mount -o remount,bind,ro "$R"
mount -t proc proc "$R/proc"
mount -t tmpfs -o mode=755 tmpfs "$R/dev"
for d in null zero full random urandom; do : > "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
mount -t sysfs -o ro sysfs "$R/sys" 2>/dev/null || true
for w in $W; do mount --bind "$S/$w" "$R/$w"; done
exec chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb "$@"
"#;

/// The natively built OpenWrt userland: a chroot-able root with procd, ubus,
/// uci, ucode, fw4, rpcd, uhttpd, opkg and LuCI (see the shared README).
#[derive(Debug)]
pub struct Userland {
    dir: PathBuf,
}

impl Userland {
    /// The userland, built on first use in this process (or found in the
    /// cache `target/owrt/userland-<key>/`, where the key names the hashes of
    /// the tarball and `build.sh`). Panics, naming the path and the packages,
    /// when the sources or the build tools are missing or the build fails.
    pub fn get() -> &'static Userland {
        static USERLAND: OnceLock<Userland> = OnceLock::new();
        USERLAND.get_or_init(Userland::build_or_reuse)
    }

    /// The root: an OpenWrt-shaped tree (`/usr/sbin`, `/etc/config`, ...).
    /// Treat it as read-only: it is shared by every test.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The exported upstream trees the root was built from (`src/<name>/`).
    pub fn sources(&self) -> PathBuf {
        self.dir.join("src")
    }

    fn build_or_reuse() -> Userland {
        let shared = shared_dir();
        let tarball = shared.join("openwrt-userland-src.tar.gz");
        let build_sh = shared.join("build.sh");
        let owrt = target_dir().join("owrt");
        fs::create_dir_all(&owrt).unwrap_or_else(|e| panic!("create {}: {e}", owrt.display()));
        let key = cache_key(&tarball, &build_sh);
        let dir = owrt.join(format!("userland-{key}"));
        let done = dir.join("complete");
        let lock = FileLock::exclusive(&owrt.join("userland.lock"));
        clean_stale_sandboxes(&owrt.join("run"));
        if !done.exists() {
            build(&tarball, &build_sh, &dir, &lock);
            fs::write(&done, format!("{key}\n")).expect("write the cache's complete mark");
            // Older builds (another tarball or build.sh) are no longer used.
            for e in fs::read_dir(&owrt).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("userland-") && e.path() != dir {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        Userland { dir }
    }
}

/// `$OPENWRT_SRC` (or `$DCOL_OPENWRT_SRC`), else the first `shared/openwrt`
/// found beside the workspace or one of its ancestors (`/work/main` and
/// worktrees such as `/work/wt/x` both find `/work/shared/openwrt`).
/// `tests/run-tests.sh` looks in the same places.
fn shared_dir() -> PathBuf {
    let has_files =
        |d: &Path| d.join("openwrt-userland-src.tar.gz").is_file() && d.join("build.sh").is_file();
    for var in ["OPENWRT_SRC", "DCOL_OPENWRT_SRC"] {
        if let Some(d) = std::env::var_os(var).filter(|d| !d.is_empty()) {
            let d = PathBuf::from(d);
            assert!(
                has_files(&d),
                "{var}={} has no openwrt-userland-src.tar.gz and build.sh",
                d.display()
            );
            return d;
        }
    }
    let ws = workspace();
    let tried: Vec<PathBuf> = ws
        .ancestors()
        .skip(1)
        .map(|a| a.join("shared/openwrt"))
        .collect();
    tried
        .iter()
        .find(|d| has_files(d))
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "OpenWrt userland sources not found: looked for openwrt-userland-src.tar.gz and \
             build.sh in {}; set OPENWRT_SRC to the folder that has them",
                tried
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// The Cargo workspace (this crate's parent).
pub(crate) fn workspace() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// `$CARGO_TARGET_DIR` (relative: to the workspace), else the workspace's
/// `target/` (as `dcol_bin` finds it).
pub fn target_dir() -> PathBuf {
    let ws = workspace();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| ws.join(d))
        .unwrap_or_else(|| ws.join("target"))
}

/// 12 hex digits of each file's SHA-256, and [`RECIPE`].
fn cache_key(tarball: &Path, build_sh: &Path) -> String {
    let out = crate::run(&["sha256sum", utf8(tarball), utf8(build_sh)]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut key: Vec<&str> = text.lines().filter_map(|l| l.get(..12)).collect();
    assert_eq!(key.len(), 2, "sha256sum output: {text}");
    key.push(RECIPE);
    key.join("-")
}

/// Unpacks the sources into `dir` and runs `build.sh` there.
fn build(tarball: &Path, build_sh: &Path, dir: &Path, lock: &FileLock) {
    let missing: Vec<String> = HOST_TOOLS
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(tool, pkg)| format!("{tool} (package {pkg})"))
        .chain(
            [("json-c", "libjson-c-dev"), ("zlib", "zlib1g-dev")]
                .iter()
                .filter(|(lib, _)| !pkg_config_has(lib))
                .map(|(lib, pkg)| format!("{lib}.pc (package {pkg})")),
        )
        .collect();
    assert!(
        missing.is_empty(),
        "building the OpenWrt userland needs {}: run tests/setup.sh (as root)",
        missing.join(", ")
    );
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let t0 = Instant::now();
    say(&format!(
        "building the userland from {} into {} (about 30 s)",
        tarball.display(),
        dir.display()
    ));
    crate::run(&["tar", "xzf", utf8(tarball), "-C", utf8(dir)]);
    let log = dir.join("build.log");
    let out = Command::new("bash")
        .arg(build_sh)
        .current_dir(dir)
        .env("SRC", dir.join("src"))
        .env("ROOT", dir.join("root"))
        .env("BLD", dir.join("build"))
        .env("LOG", &log)
        .env("COMPAT", dir.join("compat"))
        // Its input is the lock file: the build and everything it starts hold
        // the lock, so a build orphaned by a killed test binary finishes
        // before the next one may start in the same directory.
        .stdin(lock.inherit())
        .output()
        .unwrap_or_else(|e| panic!("bash {}: {e}", build_sh.display()));
    if !out.status.success() {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        panic!(
            "{} failed ({}); see {}:\n{}\n{}",
            build_sh.display(),
            out.status,
            log.display(),
            String::from_utf8_lossy(&out.stdout),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    // The cmake build trees (~70 MB) are not needed once installed.
    let _ = fs::remove_dir_all(dir.join("build"));
    say(&format!(
        "userland built in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
}

/// A progress line on stderr that the test harness does not capture: a
/// 30 s build should not look like a hang in CI's log.
pub(crate) fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "openwrt: {msg}");
}

pub(crate) fn utf8(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn pkg_config_has(lib: &str) -> bool {
    Command::new("pkg-config")
        .args(["--exists", lib])
        .status()
        .is_ok_and(|s| s.success())
}

/// An exclusive `flock(2)` on a file, held until dropped (and by the
/// processes given [`FileLock::inherit`]): one build at a time across test
/// binaries.
pub(crate) struct FileLock {
    file: Flock<fs::File>,
}

impl FileLock {
    pub(crate) fn exclusive(path: &Path) -> FileLock {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let file = Flock::lock(file, FlockArg::LockExclusive)
            .unwrap_or_else(|(_, e)| panic!("flock {}: {e}", path.display()));
        FileLock { file }
    }

    /// The locked file as a child's stdin: the child (and its children)
    /// share the lock until they exit.
    fn inherit(&self) -> Stdio {
        Stdio::from(self.file.try_clone().expect("dup the lock file"))
    }
}

static SANDBOXES: AtomicU32 = AtomicU32::new(0);

/// Removes sandbox directories (`run/<pid>-<n>`) of processes that are gone
/// (a test binary killed before its drops ran).
fn clean_stale_sandboxes(run: &Path) {
    for e in fs::read_dir(run).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().unwrap_or_default();
        if !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// The built root as seen from a test's network namespace: each command runs
/// chrooted in fresh mount and pid namespaces (everything it started dies
/// with it), with the root read-only except for this sandbox's own
/// `/etc/config` (a copy of the root's), `/tmp` (= `/var`) and
/// `/usr/share/nftables.d`, which persist between commands. Those are plain
/// directories on the host ([`Sandbox::host_path`]); they are removed on drop.
///
/// Each command is its own pid namespace: a daemon it starts (ubusd, procd,
/// rpcd) lives only as long as that command, so run daemons and what talks
/// to them in one script, as the shared `smoke.sh` does:
/// `sb.exec(&["sh", "-c", "ubusd & sleep 0.3; procd -S & sleep 0.3; ubus list"])`.
#[derive(Debug)]
pub struct Sandbox {
    ns: String,
    root: PathBuf,
    dir: PathBuf,
}

impl Sandbox {
    /// A sandbox in `ns`, building the userland first if needed.
    pub fn new(ns: &Netns) -> Sandbox {
        let root = Userland::get().root();
        let n = SANDBOXES.fetch_add(1, Ordering::SeqCst);
        let dir = target_dir()
            .join("owrt/run")
            .join(format!("{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for w in WRITABLE {
            fs::create_dir_all(dir.join(w))
                .unwrap_or_else(|e| panic!("create {}: {e}", dir.join(w).display()));
        }
        let sb = Sandbox {
            ns: ns.name().to_owned(),
            root,
            dir,
        };
        copy_tree(&sb.root.join("etc/config"), &sb.host_path("/etc/config"));
        for d in ["run", "lock", "state", ".uci"] {
            fs::create_dir_all(sb.host_path("/tmp").join(d)).expect("create /tmp dirs");
        }
        sb
    }

    /// Where `path` (absolute, inside the root, under one of the writable
    /// directories) is on the host. Panics for any other path.
    pub fn host_path(&self, path: &str) -> PathBuf {
        let rel = path.trim_start_matches('/');
        assert!(
            WRITABLE
                .iter()
                .any(|w| rel == *w || rel.starts_with(&format!("{w}/"))),
            "{path} is not writable in a sandbox (only /{})",
            WRITABLE.join(", /")
        );
        self.dir.join(rel)
    }

    /// Runs `args` in the sandbox with `stdin` as its input; returns its
    /// output whatever the exit status. Killed after 60 s.
    pub fn output_with_input(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "timeout", "60"])
            .args(["unshare", "--mount", "--pid", "--fork", "--kill-child"])
            .args([
                "--propagation",
                "private",
                "sh",
                "-c",
                SANDBOX_SH,
                "sandbox",
            ])
            .arg(&self.root)
            .arg(&self.dir)
            .arg(WRITABLE.join(" "))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("sandbox {args:?}: {e}"));
        let mut input = child.stdin.take().expect("piped stdin");
        // A command that does not read its input closes the pipe early.
        let _ = input.write_all(stdin.as_bytes());
        drop(input);
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("sandbox {args:?}: {e}"))
    }

    /// Runs `args` in the sandbox; returns its output whatever the exit status.
    pub fn output(&self, args: &[&str]) -> Output {
        self.output_with_input(args, "")
    }

    /// Runs `args` in the sandbox; panics with its output if it fails.
    pub fn exec(&self, args: &[&str]) -> Output {
        let out = self.output(args);
        assert!(out.status.success(), "{}", failure(args, &out));
        out
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// "args failed (status): stdout stderr", for panics.
fn failure(args: &[&str], out: &Output) -> String {
    format!(
        "in the OpenWrt sandbox: {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Copies the files of `from` (recursively) into `to`.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for e in fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let e = e.expect("directory entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            fs::copy(e.path(), &dest)
                .unwrap_or_else(|err| panic!("copy {}: {err}", e.path().display()));
        }
    }
}

/// The router's firewall configuration: OpenWrt's shipped
/// `/etc/config/firewall` (from the firewall4 sources: defaults input REJECT,
/// output ACCEPT, forward REJECT, syn_flood; zone lan ACCEPT/ACCEPT/ACCEPT;
/// zone wan input REJECT, output ACCEPT, forward DROP, masq, mtu_fix;
/// forwarding lan→wan; Allow-DHCP-Renew, Allow-Ping, Allow-IGMP,
/// Allow-DHCPv6, Allow-MLD, Allow-ICMPv6-Input, Allow-ICMPv6-Forward,
/// Allow-IPSec-ESP, Allow-ISAKMP), with the zones bound to the test's
/// devices, plus what a test adds.
#[derive(Debug, Clone, Default)]
pub struct ZoneSetup {
    lan: Vec<String>,
    wan: Vec<String>,
    sections: String,
    batch: String,
}

impl ZoneSetup {
    /// The shipped config with zone `lan` on the devices `lan` and zone
    /// `wan` on `wan` (each zone's `network` list replaced by `device`s).
    pub fn new(lan: &[&str], wan: &[&str]) -> ZoneSetup {
        ZoneSetup {
            lan: lan.iter().map(|s| s.to_string()).collect(),
            wan: wan.iter().map(|s| s.to_string()).collect(),
            ..ZoneSetup::default()
        }
    }

    /// Appends sections in UCI file syntax (`config rule` ..., a guest
    /// `config zone` ...) after the shipped ones.
    pub fn sections(mut self, uci: &str) -> ZoneSetup {
        self.sections.push('\n');
        self.sections.push_str(uci);
        self.sections.push('\n');
        self
    }

    /// `uci batch` commands run on the config after the zones are bound and
    /// the sections appended (`set firewall.@defaults[0].input=ACCEPT`).
    pub fn batch(mut self, commands: &str) -> ZoneSetup {
        self.batch.push_str(commands);
        self.batch.push('\n');
        self
    }

    /// A rule the feed's `dcol.init` publishes as procd service data
    /// (`add_udp_rule PORT NAME`: `Allow-dcol-NAME`, accept UDP to `port`
    /// from any zone), written as a UCI section because there is no procd
    /// here. fw4 renders it into `chain input` as it would the procd rule,
    /// under the comment `!fw4: Allow-dcol-NAME` instead of
    /// `ubus:dcol[dcol] rule N`.
    pub fn dcol_udp_rule(self, name: &str, port: u16) -> ZoneSetup {
        self.sections(&format!(
            "config rule\n\toption name 'Allow-dcol-{name}'\n\toption src '*'\n\
             \toption proto 'udp'\n\toption dest_port '{port}'\n\toption target 'ACCEPT'\n"
        ))
    }

    /// `uci batch` commands binding zone `lan` and zone `wan` of the config
    /// `show` (`uci -X show firewall`) to this setup's devices.
    pub(crate) fn binding(&self, show: &str) -> String {
        let mut batch = String::new();
        for (zone, devices) in [("lan", &self.lan), ("wan", &self.wan)] {
            let id = zone_section(show, zone)
                .unwrap_or_else(|| panic!("the shipped firewall config has no zone '{zone}'"));
            batch.push_str(&format!("delete firewall.{id}.network\n"));
            for d in devices {
                batch.push_str(&format!("add_list firewall.{id}.device='{d}'\n"));
            }
        }
        batch
    }

    /// The sections appended after the shipped ones, and the batch run after.
    pub(crate) fn extra(&self) -> (&str, &str) {
        (&self.sections, &self.batch)
    }

    /// What `dcol.init` opens for a waypoint listening on UDP `port` (not on
    /// loopback): [`ZoneSetup::dcol_udp_rule`] `signaling-PORT`. With
    /// `vpn_subnet` set it also opens the WireGuard port:
    /// `.dcol_udp_rule("wireguard", 51820)`.
    pub fn dcol_signaling(self, port: u16) -> ZoneSetup {
        self.dcol_udp_rule(&format!("signaling-{port}"), port)
    }
}

/// firewall4 loaded into a test's router namespace. Dropping it removes its
/// sandbox; the ruleset stays in the namespace until the namespace goes.
#[derive(Debug)]
pub struct Fw4 {
    sandbox: Sandbox,
}

impl Fw4 {
    /// Writes the config of `setup`, installs the feed's includes, checks the
    /// rendered ruleset (`fw4 check`) and loads it into `ns` (`fw4 start`).
    /// Panics with fw4's output if any step fails or fw4 warns about the
    /// config (an ignored section would make a test pass for the wrong reason).
    pub fn load(ns: &Netns, setup: &ZoneSetup) -> Fw4 {
        let fw = Fw4 {
            sandbox: Sandbox::new(ns),
        };
        fw.configure(setup);
        fw.apply("start");
        fw
    }

    /// Reinstalls the feed's includes from the repository and reloads the
    /// ruleset from the current config (`fw4 reload`), after a check.
    pub fn reload(&self) {
        self.apply("reload");
    }

    /// Replaces the config with `setup`'s (dropping [`Fw4::uci`] changes) and
    /// reloads.
    pub fn reconfigure(&self, setup: &ZoneSetup) {
        self.configure(setup);
        self.reload();
    }

    /// Runs `uci batch` `commands` on the config and commits them; takes
    /// effect at the next [`Fw4::reload`].
    pub fn uci(&self, commands: &str) {
        let script = format!("{commands}\ncommit firewall\n");
        let out = self.sandbox.output_with_input(&["uci", "batch"], &script);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}\ninput:\n{script}",
            failure(&["uci", "batch"], &out)
        );
    }

    /// `fw4 check`: the rendered ruleset passes `nft --check`. `Err` holds
    /// fw4's and nft's messages.
    pub fn check(&self) -> Result<(), String> {
        let out = self.sandbox.output(&["fw4", "check"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(failure(&["fw4", "check"], &out))
        }
    }

    /// `fw4 print`: the ruleset the current config renders to.
    pub fn print(&self) -> String {
        let out = self.sandbox.exec(&["fw4", "-q", "print"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The loaded `table inet fw4`, as `nft list table inet fw4` in the
    /// namespace shows it.
    pub fn ruleset(&self) -> String {
        self.list(&["table", "inet", "fw4"])
    }

    /// One chain of the loaded table (`forward`, `input_wan`, `srcnat`, ...).
    pub fn chain(&self, name: &str) -> String {
        self.list(&["chain", "inet", "fw4", name])
    }

    /// `/etc/config/firewall` as fw4 reads it.
    pub fn config(&self) -> String {
        let path = self.sandbox.host_path("/etc/config/firewall");
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// The sandbox fw4 runs in (for other commands of the userland).
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    fn list(&self, what: &[&str]) -> String {
        let mut args = vec!["ip", "netns", "exec", &self.sandbox.ns, "nft", "list"];
        args.extend_from_slice(what);
        String::from_utf8_lossy(&crate::run(&args).stdout).into_owned()
    }

    /// Writes the shipped config with the zones bound, `setup`'s sections
    /// appended and its batch applied.
    fn configure(&self, setup: &ZoneSetup) {
        let sb = &self.sandbox;
        let conf = sb.host_path("/etc/config/firewall");
        fs::copy(Userland::get().root().join("etc/config/firewall"), &conf)
            .unwrap_or_else(|e| panic!("copy the shipped firewall config: {e}"));
        let show = String::from_utf8_lossy(&sb.exec(&["uci", "-X", "show", "firewall"]).stdout)
            .into_owned();
        self.uci(&setup.binding(&show));
        if !setup.sections.is_empty() {
            let mut text = fs::read_to_string(&conf).expect("read the firewall config");
            text.push_str(&setup.sections);
            fs::write(&conf, text).expect("write the firewall config");
        }
        if !setup.batch.is_empty() {
            self.uci(&setup.batch);
        }
        // uci parses the result: a syntax error in the sections shows here.
        sb.exec(&["uci", "show", "firewall"]);
    }

    /// Installs the includes, checks, then `fw4 start` or `fw4 reload`.
    fn apply(&self, action: &str) {
        self.install_includes();
        let out = self.sandbox.output(&["fw4", "check"]);
        let warnings: Vec<&str> = std::str::from_utf8(&out.stderr)
            .unwrap_or_default()
            .lines()
            .filter(|l| !expected_notice(l))
            .collect();
        if !out.status.success() || !warnings.is_empty() {
            panic!(
                "{}\nthe rendered ruleset:\n{}\nthe config:\n{}",
                failure(&["fw4", "check"], &out),
                numbered(&self.print()),
                self.config()
            );
        }
        self.sandbox.exec(&["fw4", "-q", action]);
        // What was loaded: fw4 pipes into nft; make sure the table is there.
        self.ruleset();
    }

    /// Replaces the sandbox's `/usr/share/nftables.d` with the root's (fw4's
    /// README) plus the feed's `files/nftables.d/` tree, as read now.
    fn install_includes(&self) {
        let dest = self.sandbox.host_path("/usr/share/nftables.d");
        let _ = fs::remove_dir_all(&dest);
        copy_tree(&Userland::get().root().join("usr/share/nftables.d"), &dest);
        copy_tree(&feed_includes(), &dest);
    }
}

/// The feed's nftables includes in this repository.
pub fn feed_includes() -> PathBuf {
    workspace().join("openwrt-feed/net/dcol/files/nftables.d")
}

/// The section id (`cfg0a1b2c`) of the zone named `name` in `uci -X show`.
fn zone_section(show: &str, name: &str) -> Option<String> {
    show.lines().find_map(|l| {
        let (key, value) = l.split_once('=')?;
        let id = key.strip_prefix("firewall.")?.strip_suffix(".name")?;
        let is_zone = show.lines().any(|z| z == format!("firewall.{id}=zone"));
        (is_zone && value.trim_matches('\'') == name).then(|| id.to_owned())
    })
}

/// What fw4 always says here: no ubus (no procd/netifd), and one line per
/// automatic include.
fn expected_notice(line: &str) -> bool {
    line.starts_with("Unable to connect to ubus")
        || line.starts_with("[!] Automatically including")
        || line.is_empty()
}

fn numbered(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| format!("{:4} {l}\n", i + 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_section_finds_zone_by_name() {
        let show = "firewall.cfg01e63d=defaults\nfirewall.cfg01e63d.input='REJECT'\n\
                    firewall.cfg02dc81=zone\nfirewall.cfg02dc81.name='lan'\n\
                    firewall.cfg03dc81=zone\nfirewall.cfg03dc81.name='wan'\n\
                    firewall.cfg0a92bd=rule\nfirewall.cfg0a92bd.name='lan'\n";
        assert_eq!(zone_section(show, "wan").as_deref(), Some("cfg03dc81"));
        assert_eq!(zone_section(show, "lan").as_deref(), Some("cfg02dc81"));
        assert_eq!(zone_section(show, "guest"), None);
    }
}
