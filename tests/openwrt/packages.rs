//! The packages with OpenWrt's opkg: installed on a running router (as
//! `opkg install` on a home router does), upgraded to a second version,
//! removed, reinstalled; and installed into an image before its first boot
//! (as an image build does).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dcol_tests::lab::need_root;
use dcol_tests::openwrt::{packages, packages_with_release, Image};
use dcol_tests::Netns;

use crate::{
    dcol_log, install_offline, install_online, put_file, wait_running, wait_stopped, Admin,
};

/// The release of the second version the test upgrades to.
const NEXT_RELEASE: u32 = 2;

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn opkg_install_upgrade_remove_reinstall() {
    if !need_root() {
        return;
    }
    let first = packages();
    let second = packages_with_release(NEXT_RELEASE);
    assert_ne!(first.version, second.version);
    let ns = Netns::new("opkg");
    let router = Image::new("opkg").boot(&ns);

    // ---- install: both packages, the service enabled but off as shipped ----
    install_online(&router);
    let installed = router.ok("opkg list-installed");
    assert!(
        installed.contains(&format!("dcol - {}\n", first.version)),
        "opkg list-installed:\n{installed}"
    );
    assert!(installed.contains("luci-app-dcol - "), "{installed}");
    router.ok("/etc/init.d/dcol enabled");
    router.ok("test -L /etc/rc.d/S95dcol && test -L /etc/rc.d/K10dcol");
    assert!(router.pids("dcol").is_empty(), "installed off, yet running");
    assert_eq!(
        router.ok("/etc/init.d/dcol status").trim(),
        "active with no instances",
        "procd knows the service (postinst started it) and runs nothing"
    );
    assert_eq!(router.ok("stat -c %a /etc/config/dcol").trim(), "600");
    assert_eq!(router.ok("uci get dcol.main.enabled").trim(), "0");
    router.ok("test -s /usr/share/nftables.d/chain-pre/forward/dcol.nft");
    // luci.mk's postinst reloaded rpcd: the app's rpcd plugin is on ubus.
    router.ok("ubus list luci.dcol");
    assert!(
        router
            .ok("ubus call luci.dcol status")
            .contains("\"error\""),
        "a stopped daemon: luci.dcol status answers with an error"
    );

    // ---- the owner joins, turns it on and edits the conffile ----
    let admin = Admin::new();
    admin.join(&router, "opkg-router", "client");
    router.ok("uci set dcol.main.enabled=1; uci set dcol.main.log_level=debug; uci set dcol.client.enabled=1; uci commit dcol");
    router.ok("/etc/init.d/dcol start");
    let old = wait_running(&router, None, Duration::from_secs(10));
    let before_conf = router.ok("cat /etc/config/dcol");
    let key_before = router.ok("md5sum /etc/dcol/member.key");

    // ---- upgrade to the second version: prerm stops, postinst starts ----
    put_file(&router, "/root/next", &second.dcol);
    let out = router.ok("opkg install /root/next/dcol_*.ipk 2>&1");
    assert!(
        out.contains(&format!(
            "Upgrading dcol on root from {} to {}",
            first.version, second.version
        )),
        "opkg install of the newer package:\n{out}"
    );
    let installed = router.ok("opkg list-installed dcol");
    assert_eq!(installed.trim(), format!("dcol - {}", second.version));
    assert_eq!(
        router.ok("cat /etc/config/dcol"),
        before_conf,
        "the edited conffile is kept as it was"
    );
    // opkg's way with an edited conffile: the package's version beside it.
    assert!(
        out.contains("The new conffile will be placed at /etc/config/dcol-opkg"),
        "{out}"
    );
    assert!(router
        .ok("cat /etc/config/dcol-opkg")
        .contains("option enabled '0'"));
    assert_eq!(router.ok("md5sum /etc/dcol/member.key"), key_before);
    router.ok("/etc/init.d/dcol enabled");
    let new = wait_running(&router, Some(old), Duration::from_secs(10));
    router.ok(&format!("test ! -e /proc/{old}"));
    let log = dcol_log(&router);
    assert!(
        log.contains(&format!("dcol[{old}]: [INFO] signal 15: shutting down"))
            && log.contains(&format!(
                "dcol[{old}]: [INFO] stopped; kernel state removed"
            )),
        "the old daemon was stopped by prerm (SIGTERM) and cleaned up:\n{log}"
    );
    assert!(router.ok("dcol status").contains("opkg-router"));

    // ---- remove: prerm stops and disables, the files go ----
    let out = router.ok("opkg remove luci-app-dcol dcol 2>&1");
    assert!(out.contains("Removing package dcol"), "{out}");
    wait_stopped(&router, Duration::from_secs(5));
    router.ok(&format!("test ! -e /proc/{new}"));
    router.ok("test ! -e /etc/rc.d/S95dcol && test ! -e /etc/rc.d/K10dcol");
    router.ok("test ! -e /usr/sbin/dcol && test ! -e /etc/init.d/dcol");
    router.ok("test ! -e /usr/share/nftables.d/chain-pre/forward/dcol.nft");
    router.ok("test ! -e /www/luci-static/resources/view/dcol/overview.js");
    assert!(
        !router.ok("opkg list-installed").contains("dcol"),
        "both packages gone"
    );
    assert!(
        !router.ok("nft list tables").contains("dcol"),
        "the daemon removed its nftables tables when prerm stopped it"
    );
    // The member's key is the owner's, not the package's.
    assert_eq!(router.ok("md5sum /etc/dcol/member.key"), key_before);

    // ---- reinstall the first version: still a member ----
    router.ok("opkg install /root/pkgs/dcol_*.ipk");
    assert_eq!(
        router.ok("opkg list-installed dcol").trim(),
        format!("dcol - {}", first.version)
    );
    router.ok("/etc/init.d/dcol enabled");
    let member = router.ok("dcol member show");
    assert!(member.contains("opkg-router"), "{member}");
}

/// An empty `.apk` providing what the image provides (the packages of the
/// image's opkg status file): apk's counterpart of those status entries.
fn image_base_apk(tool: &Path, out: &Path) -> PathBuf {
    let status = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("image/usr/lib/opkg/status"),
    )
    .expect("read the image's opkg status");
    let provides: Vec<&str> = status
        .lines()
        .filter_map(|l| l.strip_prefix("Package: "))
        .collect();
    let files = out.join("image-base-files");
    std::fs::create_dir_all(&files).expect("create the files directory");
    let apk = out.join("image-base-1.apk");
    let r = Command::new(tool)
        .args(["mkpkg", "--info", "name:image-base", "--info", "version:1"])
        .args(["--info", "arch:noarch", "--info"])
        .arg(format!("provides:{}", provides.join(" ")))
        .arg("--files")
        .arg(&files)
        .arg("--output")
        .arg(&apk)
        .output()
        .expect("run apk mkpkg");
    assert!(
        r.status.success(),
        "apk mkpkg image-base: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    apk
}

/// OpenWrt 25.x's way: the `.apk` packages with apk-tools 3 (built from its
/// sources by cross/apk-tools, when they are there).
#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn apk_install_upgrade_remove() {
    if !need_root() {
        return;
    }
    let (Some(first), Some(second)) = (
        packages().apk.clone(),
        packages_with_release(NEXT_RELEASE).apk,
    ) else {
        eprintln!(
            "SKIP: no .apk packages: cross/apk-tools found no apk-tools sources \
             (APK_TOOLS_SRC, or shared/apk-tools); the .ipk tests ran"
        );
        return;
    };
    let scratch = dcol_tests::dcol::Scratch::new("apk");
    let base = image_base_apk(&first.tool, scratch.path());
    let ns = Netns::new("apk");
    let img = Image::new("apk");
    img.install_host_program(&first.tool, "/usr/bin/apk");
    let router = img.boot(&ns);
    for f in [&base, &first.dcol, &first.luci] {
        put_file(&router, "/root/apk", f);
    }
    put_file(&router, "/root/apk-next", &second.dcol);

    // ---- install: apk runs the post-install scripts under procd ----
    router.ok("apk add --initdb --no-network --allow-untrusted /root/apk/image-base-1.apk");
    let out = router.ok(
        "apk add --no-network --allow-untrusted /root/apk/dcol-*.apk /root/apk/luci-app-dcol-*.apk 2>&1",
    );
    let info = router.ok("apk info -v 2>/dev/null");
    assert!(
        info.contains(&format!("dcol-{}", packages().version)) && info.contains("luci-app-dcol-"),
        "apk info:\n{info}\napk add:\n{out}"
    );
    router.ok("test -s /lib/apk/packages/dcol.list && grep -qx /usr/sbin/dcol /lib/apk/packages/dcol.list");
    router.ok("grep -q '^/etc/config/dcol ' /lib/apk/packages/dcol.conffiles_static");
    router.ok("/etc/init.d/dcol enabled");
    assert_eq!(
        router.ok("/etc/init.d/dcol status").trim(),
        "active with no instances",
        "post-install started the service, which runs nothing as shipped"
    );
    router.ok("ubus list luci.dcol");

    // ---- on, then an upgrade to the second version ----
    let admin = Admin::new();
    admin.join(&router, "apk-router", "client");
    router.ok("uci set dcol.main.enabled=1; uci set dcol.client.enabled=1; uci set dcol.main.log_level=debug; uci commit dcol");
    router.ok("/etc/init.d/dcol start");
    let old = wait_running(&router, None, Duration::from_secs(10));
    let conf = router.ok("cat /etc/config/dcol");
    let out = router.ok("apk add --no-network --allow-untrusted /root/apk-next/dcol-*.apk 2>&1");
    let info = router.ok("apk info -v 2>/dev/null");
    assert!(
        info.contains(&format!(
            "dcol-{}",
            second
                .dcol
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.strip_prefix("dcol-"))
                .expect("version")
        )),
        "apk info after the upgrade:\n{info}\n{out}"
    );
    assert_eq!(
        router.ok("cat /etc/config/dcol"),
        conf,
        "the edited conffile is kept"
    );
    router.ok("/etc/init.d/dcol enabled");
    // apk runs no script of the old version on an upgrade: the package's
    // pre-upgrade (its preinst) stopped the old daemon, post-upgrade
    // started the new binary.
    let now = wait_running(&router, Some(old), Duration::from_secs(10));
    let exe = router.ok(&format!("readlink /proc/{now}/exe"));
    assert_eq!(
        exe.trim(),
        "/usr/sbin/dcol",
        "the new binary runs (pid {old} -> {now})"
    );
    assert!(
        dcol_log(&router).contains(&format!(
            "dcol[{old}]: [INFO] stopped; kernel state removed"
        )),
        "the old daemon was stopped cleanly before its binary was replaced"
    );

    // ---- remove: pre-deinstall stops and disables ----
    router.ok("apk del luci-app-dcol dcol 2>&1");
    wait_stopped(&router, Duration::from_secs(12));
    router.ok("test ! -e /etc/rc.d/S95dcol && test ! -e /usr/sbin/dcol");
    assert!(!router.ok("nft list tables").contains("dcol"));
    let log = dcol_log(&router);
    assert!(
        log.contains(&format!(
            "dcol[{now}]: [INFO] stopped; kernel state removed"
        )),
        "pre-deinstall stopped the daemon with SIGTERM:\n{log}"
    );
}

#[test]
#[cfg_attr(
    not(dcol_root),
    ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
)]
fn image_built_offline_boots_with_dcol_enabled_and_off() {
    if !need_root() {
        return;
    }
    let ns = Netns::new("image");
    let img = Image::new("image");
    install_offline(&img);
    // What the image build's postinst (IPKG_INSTROOT) did: enabled, not started.
    assert!(img.path("/etc/rc.d/S95dcol").is_symlink());
    let router = img.boot(&ns);
    let installed = router.ok("opkg list-installed");
    assert!(installed.contains("dcol - ") && installed.contains("luci-app-dcol - "));
    // S95dcol ran at boot and declared nothing: dcol is off as shipped.
    assert_eq!(
        router.ok("/etc/init.d/dcol status").trim(),
        "active with no instances"
    );
    router.ok("ubus list luci.dcol");
}
