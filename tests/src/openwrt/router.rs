//! A router made of OpenWrt's userland: a writable copy of the built root
//! ([`Image`]) booted by procd as PID 1 of fresh mount and pid namespaces in
//! a test's network namespace ([`Router`]), and the project's packages
//! ([`packages`]) for it.
//!
//! Booting is what OpenWrt does after preinit: procd reads `/etc/inittab`
//! (`::sysinit:/etc/init.d/rcS S boot`), starts ubusd, runs every
//! `/etc/rc.d/S*` script (logd, rpcd, uhttpd, and whatever a test enabled:
//! the firewall, dcol) and logs `- init complete -`. A command given to
//! [`Router::sh`] runs in the router's namespaces and root, as if typed on its
//! console: `uci`, `ubus`, `opkg`, `/etc/init.d/dcol`, `logread` are the real
//! programs talking to the real procd and ubusd. [`Router::poweroff`] is
//! procd's poweroff (SIGUSR2: `rcS K shutdown`, every service stopped).
//!
//! ```no_run
//! use dcol_tests::openwrt::{packages, Image};
//! use dcol_tests::Netns;
//!
//! let ns = Netns::new("router");
//! let img = Image::new("example");
//! let router = img.boot(&ns);
//! router.put("/root/dcol.ipk", &std::fs::read(&packages().dcol).unwrap());
//! router.ok("opkg install /root/dcol.ipk");
//! assert!(router.ok("/etc/init.d/dcol enabled && echo on").contains("on"));
//! ```
//!
//! What differs from a router running an OpenWrt image (beyond the userland
//! differences listed in the shared README: glibc, Debian's busybox and nft):
//! - **Container mode**: procd runs with `container` set in its environment
//!   (as under LXC), so it mounts nothing itself; the boot script gives it a
//!   private `/proc`, a tmpfs `/tmp` (= `/var`) and `/dev` (null, zero, full,
//!   random, urandom, tty only), a read-only `/sys`. No preinit, no kernel
//!   modules loaded (the host kernel's are used), no netifd: the test
//!   configures the interfaces from outside.
//! - The files of `tests/openwrt/image/` stand in for what the shared sources
//!   lack (see its README): base-files' inittab and `/etc/init.d/boot` (the
//!   `/var` directories and the first `reload_config`, which records the
//!   configs' checksums so that the next one sees what changed), ubox's `log`
//!   init script (logd under procd), and opkg's status entries for the
//!   image-provided packages ours depend on (their files are what the built
//!   root has: Debian's `nft` for `nftables-json`, the host kernel for the
//!   kmods). logd also reads the host kernel's message buffer, so `logread`
//!   shows the host's kernel lines.
//! - Debian's busybox runs its applets before `$PATH`: `logread` in a shell
//!   is busybox's; [`Router::logread`] calls ubox's `/sbin/logread`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{target_dir, utf8, workspace, FileLock, Userland, ZoneSetup};
use crate::Netns;

/// root's password in every image (LuCI's login; LuCI master throws on
/// every page while root has none, see the shared README).
pub const ROOT_PASSWORD: &str = "dcoltest";

/// Where the files laid over the built root are (`tests/openwrt/image/`).
fn image_files() -> PathBuf {
    workspace().join("tests/openwrt/image")
}

/// Runs inside the router's new mount and pid namespaces as their PID 1's
/// parent shell, then becomes procd: `$1` is the image's root.
const BOOT_SH: &str = r#"set -e
R=$1
mount -t proc proc "$R/proc"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mount -t tmpfs -o mode=755 tmpfs "$R/dev"
for d in null zero full random urandom tty; do : > "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t sysfs -o ro sysfs "$R/sys" 2>/dev/null || true
mkdir -p "$R/tmp/run/ubus" "$R/tmp/lock" "$R/tmp/state" "$R/tmp/.uci"
exec chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb container=dcol-test /sbin/procd
"#;

static IMAGES: AtomicU32 = AtomicU32::new(0);

/// A writable copy of the built root, prepared as an image: the files of
/// `tests/openwrt/image/` laid over it, the `boot`, `log`, `rpcd` and
/// `uhttpd` init scripts enabled, root's password set. Change it on the host
/// before booting ([`Image::path`], [`Image::uci`], [`Image::opkg`]); a
/// [`Router`] powered off gives it back. Removed on drop.
#[derive(Debug)]
pub struct Image {
    name: String,
    dir: PathBuf,
    last_log: String,
}

impl Image {
    /// A fresh image named `name` (the name of its artifacts directory,
    /// `target/openwrt-artifacts/NAME/`).
    pub fn new(name: &str) -> Image {
        let built = Userland::get().root();
        let n = IMAGES.fetch_add(1, Ordering::SeqCst);
        let dir = target_dir()
            .join("owrt/run")
            .join(format!("{}-r{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        crate::run(&["cp", "-a", utf8(&built), utf8(&dir.join("root"))]);
        // A fresh artifacts directory: nothing from an earlier run.
        let _ = fs::remove_dir_all(target_dir().join("openwrt-artifacts").join(name));
        let img = Image {
            name: name.to_owned(),
            dir,
            last_log: String::new(),
        };
        crate::run(&[
            "cp",
            "-a",
            "--no-preserve=ownership",
            &format!("{}/etc", utf8(&image_files())),
            &format!("{}/usr", utf8(&image_files())),
            utf8(&img.root()),
        ]);
        for s in ["boot", "log", "rpcd", "uhttpd"] {
            img.enable(s);
        }
        let hash = crate::run(&["openssl", "passwd", "-5", ROOT_PASSWORD]);
        let hash = String::from_utf8_lossy(&hash.stdout).trim().to_owned();
        let shadow = fs::read_to_string(img.path("/etc/shadow")).expect("read /etc/shadow");
        let shadow: String = shadow
            .lines()
            .map(|l| match l.strip_prefix("root:") {
                Some(rest) => {
                    let after = rest.split_once(':').map_or("", |(_, a)| a);
                    format!("root:{hash}:{after}\n")
                }
                None => format!("{l}\n"),
            })
            .collect();
        img.write("/etc/shadow", shadow.as_bytes());
        img.chmod("/etc/shadow", 0o600);
        // opkg -o locks ROOT/var/lock/opkg.lock (/var is /tmp; the running
        // router mounts its own tmpfs over it).
        fs::create_dir_all(img.path("/tmp/lock")).expect("create /tmp/lock");
        img
    }

    /// The root on the host.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Where `path` (absolute, inside the root) is on the host. Under `/tmp`
    /// (= `/var`) it is only meaningful before booting: the running router
    /// has its own tmpfs there.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root().join(path.trim_start_matches('/'))
    }

    /// Writes a file into the root (directories made as needed).
    pub fn write(&self, path: &str, contents: &[u8]) {
        let p = self.path(path);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }

    /// Sets a file's mode.
    pub fn chmod(&self, path: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(path);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
    }

    /// `/etc/init.d/NAME enable`, the offline way an image build does it
    /// (`IPKG_INSTROOT=root rc.common ... enable`).
    pub fn enable(&self, name: &str) {
        let root = self.root();
        let out = Command::new("bash")
            .arg(root.join("etc/rc.common"))
            .arg(root.join("etc/init.d").join(name))
            .arg("enable")
            .env("IPKG_INSTROOT", &root)
            .output()
            .expect("run rc.common");
        assert!(
            out.status.success(),
            "enable {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The userland's `uci` on the host, on the image's `/etc/config`:
    /// runs `uci batch` with `commands`, then commits.
    pub fn uci(&self, commands: &str) {
        let root = self.root();
        let script = format!("{commands}\ncommit\n");
        let out = host_tool(&root, "usr/bin/uci")
            .args(["-c", utf8(&root.join("etc/config")), "batch"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .expect("piped")
                    .write_all(script.as_bytes())?;
                c.wait_with_output()
            })
            .expect("run uci");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "uci batch on the image failed: {}{}\ninput:\n{script}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `uci -X show CONFIG` on the host, on the image's `/etc/config`.
    pub fn uci_show(&self, config: &str) -> String {
        let root = self.root();
        let out = host_tool(&root, "usr/bin/uci")
            .args(["-c", utf8(&root.join("etc/config")), "-X", "show", config])
            .output()
            .expect("run uci");
        assert!(
            out.status.success(),
            "uci show {config}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The image's firewall: OpenWrt's shipped `/etc/config/firewall` with
    /// the zones of `setup` bound to its devices (as [`super::Fw4`] does, see
    /// [`ZoneSetup`]), and `/etc/init.d/firewall` enabled: fw4 starts at
    /// boot (START=19) and procd reloads it when a service's firewall data
    /// changes.
    pub fn firewall(&self, setup: &ZoneSetup) {
        let show = self.uci_show("firewall");
        self.uci(&setup.binding(&show));
        let (sections, batch) = setup.extra();
        if !sections.is_empty() {
            let conf = self.path("/etc/config/firewall");
            let mut text = fs::read_to_string(&conf).expect("read the firewall config");
            text.push_str(sections);
            fs::write(&conf, text).expect("write the firewall config");
        }
        if !batch.is_empty() {
            self.uci(batch);
        }
        self.uci_show("firewall");
        self.enable("firewall");
    }

    /// The userland's `opkg` on the host with the image as its offline root
    /// (`opkg -o ROOT -f ROOT/etc/opkg.conf ARGS`), what an image build runs;
    /// the packages' postinst scripts then run with `IPKG_INSTROOT` set
    /// ([`Image::run_postinst`]). Returns the output whatever the status.
    pub fn opkg(&self, args: &[&str]) -> Output {
        let root = self.root();
        host_tool(&root, "usr/bin/opkg-cl")
            .args(["-o", utf8(&root), "-f", utf8(&root.join("etc/opkg.conf"))])
            .args(args)
            .output()
            .expect("run opkg")
    }

    /// Puts a host program into the image at `path` (e.g. apk-tools' `apk`),
    /// with the shared libraries it needs that the root lacks (the root's
    /// C library is the host's).
    pub fn install_host_program(&self, program: &Path, path: &str) {
        self.write(
            path,
            &fs::read(program).unwrap_or_else(|e| panic!("read {}: {e}", program.display())),
        );
        self.chmod(path, 0o755);
        let ldd = crate::run(&["ldd", utf8(program)]);
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .lines()
            .filter_map(|l| l.split("=>").nth(1))
            .filter_map(|r| r.split_whitespace().next())
            .filter(|p| p.starts_with('/'))
        {
            let name = Path::new(lib)
                .file_name()
                .and_then(|n| n.to_str())
                .expect("library name");
            if !self.path(&format!("/usr/lib/{name}")).exists() && !self.path(lib).exists() {
                self.write(
                    &format!("/usr/lib/{name}"),
                    &fs::read(lib).unwrap_or_else(|e| panic!("read {lib}: {e}")),
                );
            }
        }
    }

    /// Runs every package's postinst as an image build does after `opkg -o`
    /// (OpenWrt's include/rootfs.mk: `IPKG_INSTROOT=ROOT bash postinst`).
    pub fn run_postinst(&self) {
        let info = self.path("/usr/lib/opkg/info");
        let mut scripts: Vec<PathBuf> = fs::read_dir(&info)
            .expect("read opkg info")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "postinst"))
            .collect();
        scripts.sort();
        for s in scripts {
            let out = Command::new("bash")
                .arg(&s)
                .env("IPKG_INSTROOT", self.root())
                .output()
                .expect("run postinst");
            assert!(
                out.status.success(),
                "{}: {}",
                s.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Boots the image in `ns`: procd as PID 1, until `- init complete -`.
    pub fn boot(self, ns: &Netns) -> Router {
        Router::start(ns, self)
    }

    /// The system log as it was just before the router was last powered
    /// off (empty before the first boot).
    pub fn last_log(&self) -> &str {
        &self.last_log
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A program of the built userland run on the host (its libraries from the
/// root).
fn host_tool(root: &Path, rel: &str) -> Command {
    let mut c = Command::new(root.join(rel));
    c.env("LD_LIBRARY_PATH", root.join("usr/lib"));
    c
}

/// A booted [`Image`]: procd is PID 1 of the router's own pid namespace.
/// Dropping it powers the router off (then kills what is left), saves
/// `logread`, procd's console and the service list into its artifacts
/// directory, and removes the root.
#[derive(Debug)]
pub struct Router {
    name: String,
    ns: String,
    dir: PathBuf,
    unshare: Option<Child>,
    pid1: u32,
    /// The root; given back by [`Router::poweroff`].
    image: Option<Image>,
}

impl Router {
    fn start(ns: &Netns, image: Image) -> Router {
        let (name, dir) = (image.name.clone(), image.dir.clone());
        let console = fs::File::create(dir.join("console.log")).expect("create console log");
        let unshare = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .args(["unshare", "--mount", "--pid", "--fork", "--kill-child"])
            .args(["--propagation", "private", "sh", "-c", BOOT_SH, "boot"])
            .arg(dir.join("root"))
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("dup console"))
            .stderr(console)
            .spawn()
            .expect("spawn unshare");
        let mut router = Router {
            name,
            ns: ns.name().to_owned(),
            dir,
            pid1: 0,
            unshare: Some(unshare),
            image: Some(image),
        };
        router.pid1 = router.find_pid1();
        router.wait_booted();
        router
    }

    /// The host pid of procd: the child of unshare, once it runs procd.
    fn find_pid1(&mut self) -> u32 {
        let upid = self.unshare.as_ref().expect("started").id();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            let kids = fs::read_to_string(format!("/proc/{upid}/task/{upid}/children"))
                .unwrap_or_default();
            if let Some(pid) = kids.split_whitespace().next().and_then(|p| p.parse().ok()) {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "procd" {
                    return pid;
                }
            }
            if let Ok(Some(st)) = self.unshare.as_mut().expect("started").try_wait() {
                panic!(
                    "router {}: the boot script exited ({st}):\n{}",
                    self.name,
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "router {}: procd did not start:\n{}",
            self.name,
            self.console()
        );
    }

    /// Waits for procd's `- init complete -` (every S* script has run).
    fn wait_booted(&self) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if self.logread().contains("procd: - init complete -") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "router {}: no '- init complete -' within 60 s\nconsole:\n{}\nlogread:\n{}",
            self.name,
            self.console(),
            self.logread()
        );
    }

    /// The router's name (of its artifacts directory).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host pid of its PID 1 (procd), for `nsenter -t PID -m -p -n -r`.
    pub fn pid1(&self) -> u32 {
        self.pid1
    }

    /// The network namespace it runs in.
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// Where `path` (absolute, inside the root, not under `/tmp` or `/dev`)
    /// is on the host.
    pub fn path(&self, path: &str) -> PathBuf {
        let rel = path.trim_start_matches('/');
        assert!(
            !["tmp", "var", "dev", "proc", "sys"]
                .iter()
                .any(|d| rel == *d || rel.starts_with(&format!("{d}/"))),
            "{path} is private to the running router: read it with Router::sh"
        );
        self.dir.join("root").join(rel)
    }

    /// Writes a file into the router's root (not under `/tmp`).
    pub fn put(&self, path: &str, contents: &[u8]) {
        let p = self.path(path);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }

    /// Runs `script` with the router's shell (busybox ash) in its namespaces
    /// and root, as on its console; returns the output whatever the status.
    /// Killed after 120 s.
    pub fn sh(&self, script: &str) -> Output {
        Command::new("timeout")
            .args(["120", "nsenter", "-t", &self.pid1.to_string()])
            .args(["-m", "-p", "-n", "-r", "-w"])
            .args(["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
            .args(["HOME=/root", "TERM=dumb", "/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// [`Router::sh`]; panics with the output unless it exits 0. Returns stdout.
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "router {}: `{script}` failed ({}):\n{}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The system log (ubox's `logread`, from logd).
    pub fn logread(&self) -> String {
        let out = self.sh("/sbin/logread");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// procd's console output (before it switched to syslog, and from
    /// processes that wrote to it).
    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// `ubus call service list` for one service: its instances as procd
    /// holds them (`{}` when procd has none).
    pub fn service(&self, name: &str) -> serde_json::Value {
        let out = self.sh(&format!(
            "ubus call service list '{{\"name\":\"{name}\",\"verbose\":true}}'"
        ));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.get(name).cloned().unwrap_or_default()
    }

    /// The pids of a service's running instances (procd's view).
    pub fn pids(&self, name: &str) -> Vec<u32> {
        self.service(name)["instances"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|i| i["running"] == true)
            .filter_map(|i| i["pid"].as_u64())
            .filter_map(|p| u32::try_from(p).ok())
            .collect()
    }

    /// Polls `f` every 100 ms until it returns `Some`, for at most `limit`.
    pub fn wait_for<T>(
        &self,
        limit: Duration,
        mut f: impl FnMut(&Router) -> Option<T>,
    ) -> Option<T> {
        let t0 = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return Some(v);
            }
            if t0.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The artifacts directory of this router.
    pub fn artifacts(&self) -> PathBuf {
        let d = target_dir().join("openwrt-artifacts").join(&self.name);
        fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        d
    }

    /// procd's poweroff (SIGUSR2 to PID 1: `rcS K shutdown`, every service
    /// stopped, then the pid namespace ends). Waits up to 30 s; returns
    /// whether it ended by itself. The log is saved when it has ended.
    fn shutdown(&mut self) -> bool {
        if self.unshare.is_none() {
            return true;
        }
        self.save_artifacts();
        let mut child = self.unshare.take().expect("running");
        let ended = self.signal_and_wait(&mut child);
        let _ = fs::write(self.artifacts().join("console.log"), self.console());
        ended
    }

    fn signal_and_wait(&self, child: &mut Child) -> bool {
        // The pid this router started; it may have ended already.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid1 as i32),
            nix::sys::signal::Signal::SIGUSR2,
        );
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Powers the router off (see the docs of [`Router`]) and gives the
    /// image back ([`Image::last_log`] has the log as it was; booting it
    /// again is a reboot: a fresh `/tmp`). Panics if procd did not end by
    /// itself within 30 s.
    pub fn poweroff(mut self) -> Image {
        assert!(
            self.shutdown(),
            "router {}: poweroff did not end procd within 30 s",
            self.name
        );
        self.image.take().expect("the image until poweroff")
    }

    /// Keeps what a failed test needs (the log, the services) in the
    /// artifacts directory, and the log for [`Image::last_log`]: read just
    /// before the poweroff (logd is gone after it).
    fn save_artifacts(&mut self) {
        let a = self.artifacts();
        let log = self.logread();
        let _ = fs::write(a.join("logread.txt"), &log);
        let _ = fs::write(
            a.join("services.json"),
            self.sh("ubus call service list '{\"verbose\":true}'")
                .stdout,
        );
        if let Some(img) = self.image.as_mut() {
            img.last_log = log;
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The project's packages for the x86_64 router, as `cross/package` builds
/// them.
#[derive(Debug, Clone)]
pub struct Packages {
    /// `dcol_VERSION-rRELEASE_x86_64.ipk`.
    pub dcol: PathBuf,
    /// `luci-app-dcol_VERSION_all.ipk`.
    pub luci: PathBuf,
    /// The dcol package's version (`0.1.0-r1`).
    pub version: String,
    /// The same as `.apk` files for OpenWrt 25.x, when apk-tools could be
    /// built (`cross/apk-tools`: its sources are not a Debian package).
    pub apk: Option<ApkPackages>,
}

/// The `.apk` packages (apk-tools 3, OpenWrt 25.x) and the `apk` that made
/// them.
#[derive(Debug, Clone)]
pub struct ApkPackages {
    /// `dcol-VERSION-rRELEASE.apk` (arch x86_64).
    pub dcol: PathBuf,
    /// `luci-app-dcol-VERSION.apk` (noarch).
    pub luci: PathBuf,
    /// apk-tools' `apk` (host build, `target/apk-tools/apk`).
    pub tool: PathBuf,
}

/// The packages of this tree (built once per test process by `cross/package
/// x86_64-unknown-linux-musl`, which builds the static binary when it is
/// missing or older than the sources).
pub fn packages() -> &'static Packages {
    static P: OnceLock<Packages> = OnceLock::new();
    P.get_or_init(|| build_packages(None))
}

/// The same packages with release `release` instead of the feed Makefile's
/// `PKG_RELEASE` (a second version to upgrade to), in their own directory.
pub fn packages_with_release(release: u32) -> Packages {
    build_packages(Some(release))
}

fn build_packages(release: Option<u32>) -> Packages {
    let out_dir = match release {
        None => target_dir().join("packages"),
        Some(r) => target_dir().join(format!("openwrt-packages/r{r}")),
    };
    let _lock = FileLock::exclusive(&target_dir().join("packages.lock"));
    let mut cmd = Command::new("bash");
    cmd.arg(workspace().join("cross/package"))
        .arg("x86_64-unknown-linux-musl")
        .env("DCOL_PACKAGE_OUT", &out_dir);
    if let Some(r) = release {
        cmd.env("DCOL_PACKAGE_RELEASE", r.to_string());
    }
    let t0 = Instant::now();
    let out = cmd.output().expect("run cross/package");
    assert!(
        out.status.success(),
        "cross/package x86_64-unknown-linux-musl failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    super::say(&format!(
        "packages in {} ({:.1} s)",
        out_dir.display(),
        t0.elapsed().as_secs_f64()
    ));
    let find_opt = |dir: &Path, prefix: &str, suffix: &str| -> Option<PathBuf> {
        fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
            })
    };
    let find = |dir: &Path, prefix: &str| -> PathBuf {
        find_opt(dir, prefix, ".ipk")
            .unwrap_or_else(|| panic!("no {prefix}*.ipk in {}", dir.display()))
    };
    let dcol = find(&out_dir.join("x86_64"), "dcol_");
    let luci = find(&out_dir.join("all"), "luci-app-dcol_");
    let tool = target_dir().join("apk-tools/apk");
    let apk = match (
        find_opt(&out_dir.join("x86_64"), "dcol-", ".apk"),
        find_opt(&out_dir.join("all"), "luci-app-dcol-", ".apk"),
    ) {
        (Some(dcol), Some(luci)) if tool.is_file() => Some(ApkPackages { dcol, luci, tool }),
        _ => None,
    };
    let version = dcol
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("dcol_"))
        .and_then(|n| n.strip_suffix("_x86_64.ipk"))
        .expect("dcol_VERSION_x86_64.ipk")
        .to_owned();
    Packages {
        dcol,
        luci,
        version,
        apk,
    }
}
