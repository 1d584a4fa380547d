// Needs: root, network namespaces, kernel MPTCP (userspace path manager),
// nftables (NAT, maps, fib), conntrack; programs ip, nft, nsenter, unshare,
// chroot, openssl, iperf3, mptcpize; the OpenWrt userland sources in
// ../shared/openwrt or $OPENWRT_SRC and the build tools of tests/setup.sh
// (tests/src/openwrt.rs builds the userland under target/owrt on first use);
// cross/'s toolchain (cross/package builds the static x86_64 .ipk); for the
// browser part Debian's chromium and Node.js with tests/luci's npm packages
// (tests/luci/setup.sh). tests/run-tests.sh runs this suite when the sources
// are present and says so when it skips it.
//
//! The OpenWrt suite (issue 16): the product as a router owner gets it —
//! the x86_64 `.ipk` files of `dcol` and `luci-app-dcol` installed with
//! OpenWrt's own opkg into OpenWrt's own userland (built from
//! ../shared/openwrt), booted with procd as PID 1 of a network namespace,
//! configured with uci, firewalled by fw4, and driven through LuCI (uhttpd,
//! rpcd, the real luci.js runtime) in headless Chromium. Nothing here stands
//! in for an OpenWrt component; what differs from an OpenWrt image is listed
//! in tests/openwrt/README.md.
//!
//! - [`packages`]: opkg install, upgrade to a second version, remove and
//!   reinstall; an image built offline (`opkg -o`).
//! - [`procd`]: the init script under procd: boot, refusal without
//!   membership, reload through `uci commit` + `reload_config`, respawn,
//!   stop, status, validation, a hand-broken config, shutdown.
//! - [`firewall`]: fw4 with the waypoint role on, and the waypoint's security
//!   property through fw4's real ruleset.
//! - [`luci`]: the LuCI app in headless Chromium on OpenWrt's web stack.
//!
//! Each router's `logread`, procd console and service list are kept under
//! `target/openwrt-artifacts/<test>/`, with the browser's screenshots.

mod firewall;
mod luci;
mod packages;
mod procd;

use std::path::Path;
use std::time::Duration;

use dcol_tests::dcol::{dcol_bin, Collective, Scratch};
use dcol_tests::openwrt::{packages as built_packages, Image, Router};

/// Puts both packages into `/root/pkgs/` of a running router and installs
/// them with its opkg.
fn install_online(router: &Router) {
    let p = built_packages();
    put_file(router, "/root/pkgs", &p.dcol);
    put_file(router, "/root/pkgs", &p.luci);
    router.ok("opkg install /root/pkgs/dcol_*.ipk && opkg install /root/pkgs/luci-app-dcol_*.ipk");
}

/// Installs both packages into an image before its first boot, as an image
/// build does (`opkg -o`, then the postinst scripts with `IPKG_INSTROOT`).
fn install_offline(img: &Image) {
    let p = built_packages();
    for ipk in [&p.dcol, &p.luci] {
        let out = img.opkg(&["install", ipk.to_str().expect("utf-8 path")]);
        assert!(
            out.status.success(),
            "opkg -o install {}: {}{}",
            ipk.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    img.run_postinst();
}

/// Copies a host file into directory `dir` of the router.
fn put_file(router: &Router, dir: &str, file: &Path) {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name");
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    router.put(&format!("{dir}/{name}"), &bytes);
}

/// A collective's administrator on the host (the host's `dcol`).
struct Admin {
    collective: Collective,
    scratch: Scratch,
}

impl Admin {
    fn new() -> Admin {
        let scratch = Scratch::new("owrt-admin");
        Admin {
            collective: Collective::new(scratch.path(), "coop"),
            scratch,
        }
    }

    /// Admits the join request `request` (two lines, as `dcol member key`
    /// prints it) as `name` with `roles`; returns the certificate line.
    fn admit(&self, request: &str, name: &str, roles: &str) -> String {
        let req = self.scratch.path().join(format!("{name}.request"));
        let cert = self.scratch.path().join(format!("{name}.cert"));
        std::fs::write(&req, request).expect("write the join request");
        let out = std::process::Command::new(dcol_bin())
            .args(["collective", "admit", "--collective-key"])
            .arg(&self.collective.root_key)
            .arg("--member-pub")
            .arg(&req)
            .args(["--name", name, "--roles", roles, "--days", "30", "--out"])
            .arg(&cert)
            .output()
            .expect("run dcol collective admit");
        assert!(
            out.status.success(),
            "dcol collective admit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(&cert).expect("read the certificate")
    }

    /// The collective's public key file's text.
    fn collective_pub(&self) -> String {
        std::fs::read_to_string(&self.collective.root_pub).expect("read collective.pub")
    }

    /// Makes the router a member the way its owner would without the web
    /// page: `dcol member key` on the router, the administrator admits the
    /// request, `dcol member install` on the router. (Unlike the web page's
    /// install, the command does not reload the service.)
    fn join(&self, router: &Router, name: &str, roles: &str) {
        let request = router.ok("dcol member key");
        let request: String = request
            .lines()
            .filter(|l| l.starts_with("dcol-"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            !request.is_empty(),
            "dcol member key printed no join request"
        );
        let cert = self.admit(&request, name, roles);
        router.put("/root/member.cert", cert.as_bytes());
        router.put("/root/collective.pub", self.collective_pub().as_bytes());
        router.ok("dcol member install --cert /root/member.cert --collective /root/collective.pub");
    }
}

/// Waits until `dcol` has exactly one running instance other than `not`;
/// returns its pid.
fn wait_running(router: &Router, not: Option<u32>, limit: Duration) -> u32 {
    router
        .wait_for(limit, |r| {
            let p = r.pids("dcol");
            (p.len() == 1 && Some(p[0]) != not).then(|| p[0])
        })
        .unwrap_or_else(|| {
            panic!(
                "dcol not running (other than {not:?}) within {limit:?}: {}\nlogread:\n{}",
                router.service("dcol"),
                tail(&dcol_log(router), 40)
            )
        })
}

/// Waits until procd runs no `dcol` instance.
fn wait_stopped(router: &Router, limit: Duration) {
    let stopped = router.wait_for(limit, |r| r.pids("dcol").is_empty().then_some(()));
    assert!(
        stopped.is_some(),
        "dcol still running after {limit:?}: {}",
        router.service("dcol")
    );
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The lines of the router's log from dcol (the daemon via procd, and the
/// init script's `logger -t dcol`), without the host kernel's.
fn dcol_log(router: &Router) -> String {
    router
        .logread()
        .lines()
        .filter(|l| l.contains(" dcol[") || l.contains(" dcol:"))
        .map(|l| format!("{l}\n"))
        .collect()
}
